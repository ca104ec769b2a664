//! The JSON path of the value a walk stands on (`result.content[0].text`,
//! `tools[2].inputSchema.properties["file path"].description`), built in one buffer as the
//! walk goes down and cut back as it comes up, so that only a hit allocates its field.

/// A JSON path under construction.
pub(crate) struct FieldPath {
    buf: String,
}

/// Where a [`FieldPath`] stood before a step: what [`FieldPath::back`] returns to.
#[derive(Clone, Copy)]
pub(crate) struct Mark(usize);

impl FieldPath {
    /// A path starting at `prefix` (`""` for the root).
    pub(crate) fn new(prefix: &str) -> Self {
        let mut buf = String::with_capacity(prefix.len() + 48);
        buf.push_str(prefix);
        FieldPath { buf }
    }

    /// The path as text.
    pub(crate) fn as_str(&self) -> &str {
        &self.buf
    }

    /// Step into an object's member: `.key`, or `key` at the root, or `["key"]` (JSON
    /// string syntax) when the key is not an identifier.
    pub(crate) fn key(&mut self, key: &str) -> Mark {
        let mark = Mark(self.buf.len());
        if is_identifier(key) {
            if !self.buf.is_empty() {
                self.buf.push('.');
            }
            self.buf.push_str(key);
        } else {
            self.buf.push('[');
            // Serialising a string cannot fail.
            self.buf
                .push_str(&serde_json::to_string(key).unwrap_or_default());
            self.buf.push(']');
        }
        mark
    }

    /// Step into an array's element: `[i]`.
    pub(crate) fn index(&mut self, i: usize) -> Mark {
        let mark = Mark(self.buf.len());
        self.buf.push('[');
        self.buf.push_str(itoa::Buffer::new().format(i));
        self.buf.push(']');
        mark
    }

    /// Return to where the path stood at `mark`.
    pub(crate) fn back(&mut self, mark: Mark) {
        self.buf.truncate(mark.0);
    }
}

/// Whether a key can follow a dot: an ASCII identifier as JavaScript writes them
/// (`inputSchema`, `_meta`, `$ref`).
fn is_identifier(key: &str) -> bool {
    let mut chars = key.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == '$')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_indexes_and_odd_keys() {
        let mut p = FieldPath::new("");
        let root = p.key("tools");
        p.index(2);
        let schema = p.key("inputSchema");
        p.key("file path");
        assert_eq!(p.as_str(), r#"tools[2].inputSchema["file path"]"#);
        p.back(schema);
        p.key("$ref");
        assert_eq!(p.as_str(), "tools[2].$ref");
        p.back(root);
        assert_eq!(p.as_str(), "");
        p.key("a\"b");
        assert_eq!(p.as_str(), r#"["a\"b"]"#);

        let mut p = FieldPath::new("params.arguments");
        p.key("9lives");
        assert_eq!(p.as_str(), r#"params.arguments["9lives"]"#);
        let mut p = FieldPath::new("result");
        p.key("");
        assert_eq!(p.as_str(), r#"result[""]"#);
    }
}

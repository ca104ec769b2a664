//! Paths against roots: the file paths and `file://` URIs a request names, and whether each
//! lies within the roots its client declared (`roots/list`).
//!
//! All of it is by the text alone: `..` is resolved lexically, symbolic links are not
//! followed, and `~` is not expanded (whose home it is, is the server's business), so a
//! `~/` path is never within a root.

use serde_json::Value;

use super::field::FieldPath;

/// The longest string taken for a path: longer ones are content, not paths.
const MAX_PATH: usize = 4096;

/// The paths a tool call's arguments (JSON text `raw`) name, each with its field path below
/// `prefix`: every `file://` URI, and every absolute path (`/...`) under a key that names a
/// path (`path`, `file`, `dir`, `source`, `destination`, ...), in arrays under such keys too.
/// URIs come back as decoded paths.
///
/// A key names a path when, lower-cased, it contains `path`, `file`, `dir`, `folder`,
/// `source`, `src`, `destination`, `dest`, `target`, `root`, `location`, `uri` or `cwd`, or
/// is `from` or `to`; `~/` paths under such keys count too. Strings with a line break or
/// longer than 4096 bytes are not paths. Strings holding JSON documents are not read.
pub fn in_arguments(raw: &str, prefix: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    if !may_name_a_path(raw.as_bytes()) {
        return out;
    }
    let Ok(args) = serde_json::from_str::<Value>(raw) else {
        return out;
    };
    let mut path = FieldPath::new(prefix);
    collect(&args, false, &mut path, &mut out);
    out
}

/// Whether JSON text has a string that starts like a path: `"/`, `"~/` (either with its
/// slash escaped, `\/`) or `"file:` (in the three cases people write it). Without one there
/// is nothing to parse for.
fn may_name_a_path(raw: &[u8]) -> bool {
    const STARTS: &[&[u8]] = &[
        b"\"/", b"\"\\/", b"\"~/", b"\"~\\/", b"\"file:", b"\"FILE:", b"\"File:",
    ];
    STARTS
        .iter()
        .any(|start| memchr::memmem::find(raw, start).is_some())
}

/// The paths in `value`; `path_key`: whether the nearest key above it names a path.
fn collect(value: &Value, path_key: bool, at: &mut FieldPath, out: &mut Vec<(String, String)>) {
    match value {
        Value::String(s) => {
            if let Some(p) = path_in(s, path_key) {
                out.push((at.as_str().to_owned(), p));
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                let mark = at.index(i);
                collect(item, path_key, at, out);
                at.back(mark);
            }
        }
        Value::Object(members) => {
            for (key, member) in members {
                let mark = at.key(key);
                collect(member, names_a_path(key), at, out);
                at.back(mark);
            }
        }
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
}

/// The path a string names, if it names one.
fn path_in(s: &str, path_key: bool) -> Option<String> {
    if s.len() > MAX_PATH || s.contains(['\n', '\r']) {
        return None;
    }
    if s.get(..7)
        .is_some_and(|p| p.eq_ignore_ascii_case("file://"))
    {
        return from_file_uri(s);
    }
    (path_key && (s.starts_with('/') || s.starts_with("~/"))).then(|| s.to_owned())
}

/// Whether an argument's key says its value is a path.
fn names_a_path(key: &str) -> bool {
    const PARTS: &[&str] = &[
        "path",
        "file",
        "dir",
        "folder",
        "source",
        "src",
        "destination",
        "dest",
        "target",
        "root",
        "location",
        "uri",
        "cwd",
    ];
    let key = key.to_ascii_lowercase();
    key == "from" || key == "to" || PARTS.iter().any(|p| key.contains(p))
}

/// The path of a `file://` URI, percent-decoded; `None` for any other URI.
///
/// The host must be empty or `localhost` (`file:///x`, `file://localhost/x`); a URI naming
/// another host is not a local path. A query or fragment is dropped. `None` too when the
/// decoded bytes are not UTF-8.
pub fn from_file_uri(uri: &str) -> Option<String> {
    let scheme = uri.get(..7)?;
    if !scheme.eq_ignore_ascii_case("file://") {
        return None;
    }
    let rest = &uri[7..];
    let rest = &rest[..rest.find(['?', '#']).unwrap_or(rest.len())];
    let slash = rest.find('/')?;
    let host = &rest[..slash];
    if !(host.is_empty() || host.eq_ignore_ascii_case("localhost")) {
        return None;
    }
    percent_decode(&rest[slash..])
}

/// `%XX` escapes decoded; `None` when the result is not UTF-8. A `%` without two hex digits
/// after it stays as it is.
fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = (bytes[i] == b'%')
            .then(|| bytes.get(i + 1..i + 3))
            .flatten()
            .and_then(|hex| std::str::from_utf8(hex).ok())
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match escaped {
            Some(b) => {
                out.push(b);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// Whether `path` (absolute) lies within one of `roots` (absolute paths), after resolving
/// `.` and `..` by the text alone (symbolic links are not followed: the server's filesystem
/// is not read).
///
/// A path is within a root when, both normalised (`//` collapsed, `.` dropped, `..` taking
/// off the part before it and staying at `/` at the top, a trailing `/` dropped), it equals
/// the root or starts with the root and `/`. A root may be given as a `file://` URI. A path
/// that is not absolute (`~/...`, relative) is never within: what it names is not known
/// here. No roots, nothing within.
pub fn within(path: &str, roots: &[String]) -> bool {
    if !path.starts_with('/') {
        return false;
    }
    let path = normalize(path);
    roots.iter().any(|root| {
        let root = match from_file_uri(root) {
            Some(decoded) => decoded,
            None if root.starts_with('/') => root.clone(),
            None => return false,
        };
        let root = normalize(&root);
        root == "/"
            || path == root
            || (path.starts_with(&root) && path.as_bytes().get(root.len()) == Some(&b'/'))
    })
}

/// An absolute path with `//`, `.` and `..` resolved by the text, without a trailing `/`.
pub fn normalize(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            name => parts.push(name),
        }
    }
    let mut out = String::with_capacity(path.len());
    for part in &parts {
        out.push('/');
        out.push_str(part);
    }
    if out.is_empty() {
        out.push('/');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roots(r: &[&str]) -> Vec<String> {
        r.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn paths_in_arguments_by_key_and_by_scheme() {
        let raw = serde_json::json!({
            "path": "/home/u/a.txt",
            "sourcePath": "~/notes",
            "files": ["/a", "relative/b", ["/c"]],
            "from": "/x", "to": "/y",
            "edits": [{"oldText": "/not/a/path", "newText": "file:///tmp/a%20b.txt"}],
            "query": "/also/not",
            "config file": "/etc/app.conf",
            "Target_Dir": "/srv",
            "path2": "/multi\nline",
            "uri": "file://otherhost/share",
            "n": 3,
        })
        .to_string();
        let mut got = in_arguments(&raw, "params.arguments");
        got.sort();
        let want = [
            ("params.arguments.Target_Dir", "/srv"),
            ("params.arguments.edits[0].newText", "/tmp/a b.txt"),
            ("params.arguments.files[0]", "/a"),
            ("params.arguments.files[2][0]", "/c"),
            ("params.arguments.from", "/x"),
            ("params.arguments.path", "/home/u/a.txt"),
            ("params.arguments.sourcePath", "~/notes"),
            ("params.arguments.to", "/y"),
            (r#"params.arguments["config file"]"#, "/etc/app.conf"),
        ];
        let want: Vec<_> = want
            .iter()
            .map(|(f, p)| (f.to_string(), p.to_string()))
            .collect();
        assert_eq!(got, want);
        assert!(in_arguments(r#"{"a":1}"#, "").is_empty());
        assert!(in_arguments("not json /x", "").is_empty());
        assert_eq!(
            in_arguments(r#"{"dir":"\/srv","u":"FILE:\/\/\/a"}"#, ""),
            [("dir".into(), "/srv".into()), ("u".into(), "/a".into())]
        );
        let long = format!("/{}", "a".repeat(4096));
        assert!(in_arguments(&serde_json::json!({ "path": long }).to_string(), "").is_empty());
    }

    #[test]
    fn file_uris() {
        assert_eq!(from_file_uri("file:///a%20b").as_deref(), Some("/a b"));
        assert_eq!(from_file_uri("file://localhost/x").as_deref(), Some("/x"));
        assert_eq!(from_file_uri("FILE://LocalHost/x").as_deref(), Some("/x"));
        assert_eq!(from_file_uri("file:///x?y=1#z").as_deref(), Some("/x"));
        assert_eq!(
            from_file_uri("file:///%E2%82%AC%zz").as_deref(),
            Some("/€%zz")
        );
        assert_eq!(from_file_uri("file://server/share"), None);
        assert_eq!(from_file_uri("file:///%ff"), None);
        assert_eq!(from_file_uri("https:///x"), None);
        assert_eq!(from_file_uri("file://"), None);
    }

    #[test]
    fn normalization() {
        assert_eq!(normalize("/a//b/./c/"), "/a/b/c");
        assert_eq!(normalize("/a/b/../../.."), "/");
        assert_eq!(normalize("/../etc/passwd"), "/etc/passwd");
        assert_eq!(normalize("/"), "/");
        assert_eq!(normalize("/a/..b/c"), "/a/..b/c");
    }

    #[test]
    fn within_roots() {
        let r = roots(&["/home/u/proj/", "file:///srv/data%201"]);
        assert!(within("/home/u/proj", &r));
        assert!(within("/home/u/proj/src/main.rs", &r));
        assert!(within("/home/u/proj/./a/../b", &r));
        assert!(within("/srv/data 1/x", &r));
        assert!(
            !within("/home/u/project2/x", &r),
            "a prefix is not a parent"
        );
        assert!(!within("/home/u/proj/../secrets", &r));
        assert!(!within("/home/u/proj/../../../../etc/passwd", &r));
        assert!(!within("~/proj/a", &r), "home is not expanded");
        assert!(!within("proj/a", &r));
        assert!(!within("/home/u/proj/a", &[]));
        assert!(within("/anything", &roots(&["/"])));
        assert!(!within(
            "/home/u/proj/a",
            &roots(&["relative", "file://host/home/u/proj"])
        ));
    }
}

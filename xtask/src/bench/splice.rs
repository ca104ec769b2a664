//! A partial run's sections put into BENCHMARKS.md: each numbered section (`## N. ...`) of
//! the partial report replaces the section of the same number, or goes in before the first
//! with a higher number (or an unnumbered one, such as "Before and after"), or at the end;
//! every other line of the file stays as it was. Each spliced section says, under its
//! heading, which run it comes from.

/// A report cut at its `## ` headings: the text before the first, then each section.
struct Cut<'a> {
    head: &'a str,
    sections: Vec<&'a str>,
}

fn cut(text: &str) -> Cut<'_> {
    let mut starts: Vec<usize> = Vec::new();
    let mut at = 0;
    for line in text.split_inclusive('\n') {
        if line.starts_with("## ") {
            starts.push(at);
        }
        at += line.len();
    }
    let head = &text[..starts.first().copied().unwrap_or(text.len())];
    let mut sections = Vec::new();
    for (i, &s) in starts.iter().enumerate() {
        let end = starts.get(i + 1).copied().unwrap_or(text.len());
        sections.push(&text[s..end]);
    }
    Cut { head, sections }
}

/// The number of a `## N. Title` section.
fn number(section: &str) -> Option<u32> {
    let title = section.strip_prefix("## ")?;
    let (n, _) = title.split_once('.')?;
    n.trim().parse().ok()
}

/// `old` (BENCHMARKS.md) with the numbered sections of `partial` put in, each with `from`
/// as its first paragraph.
pub fn splice(old: &str, partial: &str, from: &str) -> String {
    let old = cut(old);
    let mut sections: Vec<String> = old.sections.iter().map(|s| s.to_string()).collect();
    for new in cut(partial).sections {
        let Some(n) = number(new) else { continue };
        let (heading, body) = new.split_once('\n').unwrap_or((new, ""));
        let mut text = format!("{heading}\n\n{from}\n{body}");
        if !text.ends_with("\n\n") {
            text.push('\n');
        }
        if let Some(i) = sections.iter().position(|s| number(s) == Some(n)) {
            sections[i] = text;
        } else {
            let i = sections
                .iter()
                .position(|s| number(s).is_none_or(|m| m > n))
                .unwrap_or(sections.len());
            if let Some(before) = i.checked_sub(1).map(|b| &mut sections[b]) {
                while !before.ends_with("\n\n") {
                    before.push('\n');
                }
            }
            sections.insert(i, text);
        }
    }
    let mut out = old.head.to_string();
    for s in sections {
        out.push_str(&s);
    }
    while out.ends_with("\n\n") {
        out.pop();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::splice;

    const OLD: &str = "# mcptap benchmarks\n\nWritten by a full run.\n\n## 1. One\n\nold one\n\n## 2. Two\n\nold two\n\n## Before and after\n\nba\n";

    #[test]
    fn a_section_is_replaced_in_place_and_the_rest_kept() {
        let partial = "# mcptap benchmarks\n\nWritten by a partial run.\n\n## 2. Two\n\nnew two\n";
        let out = splice(OLD, partial, "*from X*");
        assert_eq!(
            out,
            "# mcptap benchmarks\n\nWritten by a full run.\n\n## 1. One\n\nold one\n\n## 2. Two\n\n*from X*\n\nnew two\n\n## Before and after\n\nba\n"
        );
    }

    #[test]
    fn a_new_section_goes_in_number_order_or_at_the_end() {
        let partial = "# h\n\n## 7. Seven\n\nseven\n\n## 8. Eight\n\neight\n";
        let out = splice(OLD, partial, "*from X*");
        assert!(
            out.contains("old two\n\n## 7. Seven\n\n*from X*\n\nseven\n\n## 8. Eight\n\n*from X*\n\neight\n\n## Before and after"),
            "{out}"
        );
        let no_tail = "# h\n\n## 1. One\n\none";
        let out = splice(no_tail, partial, "*f*");
        assert_eq!(
            out,
            "# h\n\n## 1. One\n\none\n\n## 7. Seven\n\n*f*\n\nseven\n\n## 8. Eight\n\n*f*\n\neight\n"
        );
        // Spliced again, the same sections are replaced, not added.
        assert_eq!(splice(&out, partial, "*f*"), out);
    }
}

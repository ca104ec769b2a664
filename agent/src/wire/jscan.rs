//! A strict JSON scanner that builds nothing: a cursor over JSON text that walks objects
//! member by member, hands back strings and numbers as the slices they were written as, and
//! skips whole values, checking them on the way.
//!
//! It is the fast path in front of serde_json (see `mcp::message`), so its rule is to accept
//! only what serde_json accepts and read it the same way: the same number grammar, escapes,
//! whitespace, and no control characters inside strings. Where it cannot be sure cheaply it
//! refuses ([`Refused`]) instead of guessing, and its caller reads the text the slow way:
//! nesting deeper than [`MAX_DEPTH`] (serde_json skips any depth), a `\u` escape of a UTF-16
//! surrogate (serde_json's rules for those depend on what is being read). A refusal says
//! nothing of whether the text is JSON.

use std::borrow::Cow;

/// The scanner gave up on the text: serde_json must decide what it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Refused;

/// What a scan returns.
pub type Scan<T> = Result<T, Refused>;

/// Nesting the scanner follows inside a skipped value; deeper is refused.
pub const MAX_DEPTH: u32 = 64;

/// A JSON string as written: the text between its quotes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JsonStr<'a> {
    raw: &'a str,
    escaped: bool,
}

impl<'a> JsonStr<'a> {
    /// The text between the quotes, escapes as written.
    pub fn raw(&self) -> &'a str {
        self.raw
    }

    /// Whether it holds a backslash escape (then [`raw`](Self::raw) is not its value).
    pub fn has_escapes(&self) -> bool {
        self.escaped
    }

    /// Its value: borrowed unless it holds escapes. A `\u` escape of a surrogate is refused.
    pub fn unescape(&self) -> Scan<Cow<'a, str>> {
        if !self.escaped {
            return Ok(Cow::Borrowed(self.raw));
        }
        let mut out = String::with_capacity(self.raw.len());
        let mut rest = self.raw;
        while let Some(i) = rest.find('\\') {
            out.push_str(&rest[..i]);
            let b = rest.as_bytes();
            let c = match b[i + 1] {
                b'"' => '"',
                b'\\' => '\\',
                b'/' => '/',
                b'b' => '\u{8}',
                b'f' => '\u{c}',
                b'n' => '\n',
                b'r' => '\r',
                b't' => '\t',
                // `u`, the only other escape the scan lets through: four hex digits.
                _ => {
                    let code = u32::from_str_radix(&rest[i + 2..i + 6], 16).map_err(|_| Refused)?;
                    rest = &rest[i + 6..];
                    out.push(char::from_u32(code).ok_or(Refused)?);
                    continue;
                }
            };
            out.push(c);
            rest = &rest[i + 2..];
        }
        out.push_str(rest);
        Ok(Cow::Owned(out))
    }
}

/// Eight copies of a byte.
const fn splat(b: u8) -> u64 {
    0x0101_0101_0101_0101 * b as u64
}

/// The first byte of `w` (little-endian) that is `"`, `\` or a control character, as a bit
/// mask whose lowest set bit marks it (bits above it may be false positives).
#[inline]
fn specials(w: u64) -> u64 {
    let hi = splat(0x80);
    let zero = |x: u64| x.wrapping_sub(splat(1)) & !x & hi;
    zero(w ^ splat(b'"')) | zero(w ^ splat(b'\\')) | (w.wrapping_sub(splat(0x20)) & !w & hi)
}

/// A cursor over one JSON text.
#[derive(Clone, Debug)]
pub struct Cursor<'a> {
    text: &'a str,
    at: usize,
}

impl<'a> Cursor<'a> {
    /// A cursor at the start of `text`.
    pub fn new(text: &'a str) -> Self {
        Cursor { text, at: 0 }
    }

    /// The offset of the cursor in the text.
    pub fn offset(&self) -> usize {
        self.at
    }

    /// The text from `from` to the cursor.
    pub fn since(&self, from: usize) -> &'a str {
        &self.text[from..self.at]
    }

    fn bytes(&self) -> &'a [u8] {
        self.text.as_bytes()
    }

    /// Skip whitespace (serde_json's four characters) and look at the next byte.
    #[inline]
    pub fn peek(&mut self) -> Option<u8> {
        let b = self.bytes();
        // Compact JSON, what nearly every sender writes, has no whitespace: every byte after
        // a token is above the space.
        match b.get(self.at) {
            Some(&c) if c > b' ' => return Some(c),
            None => return None,
            _ => {}
        }
        while let Some(&c) = b.get(self.at) {
            if !matches!(c, b' ' | b'\n' | b'\t' | b'\r') {
                return Some(c);
            }
            self.at += 1;
        }
        None
    }

    /// Consume `c` after whitespace, or refuse.
    #[inline]
    fn expect(&mut self, c: u8) -> Scan<()> {
        if self.peek() != Some(c) {
            return Err(Refused);
        }
        self.at += 1;
        Ok(())
    }

    /// Only whitespace remains.
    pub fn end(&mut self) -> Scan<()> {
        match self.peek() {
            None => Ok(()),
            Some(_) => Err(Refused),
        }
    }

    /// `null`, consumed if it is next.
    pub fn null(&mut self) -> bool {
        if self.peek() == Some(b'n') && self.bytes()[self.at..].starts_with(b"null") {
            self.at += 4;
            return true;
        }
        false
    }

    /// A `true` or `false`.
    pub fn boolean(&mut self) -> Scan<bool> {
        let v = match self.peek() {
            Some(b't') => true,
            Some(b'f') => false,
            _ => return Err(Refused),
        };
        self.literal()?;
        Ok(v)
    }

    /// An integer that fits an `i64`, written without fraction or exponent.
    pub fn integer(&mut self) -> Scan<i64> {
        if !matches!(self.peek(), Some(b'-' | b'0'..=b'9')) {
            return Err(Refused);
        }
        let n = self.number()?;
        // "-0" and digits at the edge of the range are left to serde_json's own reading.
        if n == "-0" || n.len() > 18 || n.contains(['.', 'e', 'E']) {
            return Err(Refused);
        }
        n.parse().map_err(|_| Refused)
    }

    /// A string.
    pub fn string(&mut self) -> Scan<JsonStr<'a>> {
        self.expect(b'"')?;
        let start = self.at;
        let escaped = self.string_tail()?;
        Ok(JsonStr {
            raw: &self.text[start..self.at - 1],
            escaped,
        })
    }

    /// The rest of a string whose opening quote was consumed, up to and past its closing
    /// quote; true if it held an escape. Inlined everywhere: most strings are short keys, for
    /// which the call cost as much as the scan.
    #[inline(always)]
    fn string_tail(&mut self) -> Scan<bool> {
        let b = self.bytes();
        let mut escaped = false;
        loop {
            // Eight bytes at a time to the next quote, backslash or control character.
            while let Some(chunk) = b.get(self.at..self.at + 8) {
                let m = specials(u64::from_le_bytes(chunk.try_into().expect("8 bytes")));
                if m != 0 {
                    self.at += (m.trailing_zeros() / 8) as usize;
                    break;
                }
                self.at += 8;
            }
            let c = *b.get(self.at).ok_or(Refused)?;
            self.at += 1;
            match c {
                b'"' => return Ok(escaped),
                b'\\' => {
                    escaped = true;
                    self.escape()?;
                }
                0..=0x1f => return Err(Refused),
                _ => {}
            }
        }
    }

    /// One escape after its backslash, as serde_json checks it.
    fn escape(&mut self) -> Scan<()> {
        let b = self.bytes();
        match b.get(self.at).ok_or(Refused)? {
            b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => self.at += 1,
            b'u' => {
                let hex = b.get(self.at + 1..self.at + 5).ok_or(Refused)?;
                if !hex.iter().all(u8::is_ascii_hexdigit) {
                    return Err(Refused);
                }
                // Surrogates: serde_json's verdict depends on what reads them.
                if matches!(hex[0], b'd' | b'D')
                    && matches!(hex[1], b'8'..=b'9' | b'a'..=b'f' | b'A'..=b'F')
                {
                    return Err(Refused);
                }
                self.at += 5;
            }
            _ => return Err(Refused),
        }
        Ok(())
    }

    /// A number, by JSON's grammar, as written.
    fn number(&mut self) -> Scan<&'a str> {
        let b = self.bytes();
        let start = self.at;
        let digits = |at: &mut usize| {
            let from = *at;
            while b.get(*at).is_some_and(u8::is_ascii_digit) {
                *at += 1;
            }
            *at > from
        };
        let mut at = self.at;
        if b.get(at) == Some(&b'-') {
            at += 1;
        }
        match b.get(at) {
            Some(b'0') => at += 1,
            Some(b'1'..=b'9') => {
                digits(&mut at);
            }
            _ => return Err(Refused),
        }
        if b.get(at) == Some(&b'.') {
            at += 1;
            if !digits(&mut at) {
                return Err(Refused);
            }
        }
        if matches!(b.get(at), Some(b'e' | b'E')) {
            at += 1;
            if matches!(b.get(at), Some(b'+' | b'-')) {
                at += 1;
            }
            if !digits(&mut at) {
                return Err(Refused);
            }
        }
        self.at = at;
        Ok(&self.text[start..at])
    }

    /// `true`, `false` or `null`.
    fn literal(&mut self) -> Scan<()> {
        let rest = &self.bytes()[self.at..];
        for word in [&b"true"[..], b"false", b"null"] {
            if rest.starts_with(word) {
                self.at += word.len();
                return Ok(());
            }
        }
        Err(Refused)
    }

    /// One scalar (string, number, literal) at the cursor, whitespace skipped; false if the
    /// next value is an array or object instead.
    #[inline]
    fn scalar(&mut self) -> Scan<bool> {
        match self.peek().ok_or(Refused)? {
            b'"' => {
                self.at += 1;
                self.string_tail()?;
            }
            b'-' | b'0'..=b'9' => {
                self.number()?;
            }
            b't' | b'f' | b'n' => self.literal()?,
            b'{' | b'[' => return Ok(false),
            _ => return Err(Refused),
        }
        Ok(true)
    }

    /// Skip one whole value, checked, and return its text (whitespace around it excluded).
    pub fn skip(&mut self) -> Scan<&'a str> {
        self.peek();
        let start = self.at;
        if !self.scalar()? {
            self.skip_nested()?;
        }
        Ok(&self.text[start..self.at])
    }

    /// Skip the array or object at the cursor without recursion: `open` holds one bit per
    /// enclosing container, set for an object.
    fn skip_nested(&mut self) -> Scan<()> {
        let mut open: u64 = 0;
        let mut depth = 0u32;
        loop {
            // At the start of a value.
            let c = self.peek().ok_or(Refused)?;
            if c == b'{' || c == b'[' {
                depth += 1;
                if depth > MAX_DEPTH {
                    return Err(Refused);
                }
                self.at += 1;
                let object = c == b'{';
                open = open << 1 | object as u64;
                let close = if object { b'}' } else { b']' };
                if self.peek() == Some(close) {
                    self.at += 1;
                    depth -= 1;
                    open >>= 1;
                } else {
                    if object {
                        self.key_colon()?;
                    }
                    continue;
                }
            } else {
                self.scalar()?;
            }
            // After a value: close what ends here, then on to the next value, if any.
            loop {
                if depth == 0 {
                    return Ok(());
                }
                let object = open & 1 == 1;
                match self.peek() {
                    Some(b',') => {
                        self.at += 1;
                        if object {
                            self.key_colon()?;
                        }
                        break;
                    }
                    Some(b'}') if object => {}
                    Some(b']') if !object => {}
                    _ => return Err(Refused),
                }
                self.at += 1;
                depth -= 1;
                open >>= 1;
            }
        }
    }

    /// A member's key and the colon after it.
    #[inline]
    fn key_colon(&mut self) -> Scan<JsonStr<'a>> {
        let k = self.string()?;
        self.expect(b':')?;
        Ok(k)
    }

    /// Walk the object at the cursor: `member` is called with each key and the cursor at its
    /// value, which it must consume (read or [`skip`](Self::skip)).
    pub fn object(
        &mut self,
        mut member: impl FnMut(JsonStr<'a>, &mut Self) -> Scan<()>,
    ) -> Scan<()> {
        self.expect(b'{')?;
        if self.peek() == Some(b'}') {
            self.at += 1;
            return Ok(());
        }
        loop {
            let k = self.key_colon()?;
            member(k, self)?;
            match self.peek() {
                Some(b',') => self.at += 1,
                Some(b'}') => {
                    self.at += 1;
                    return Ok(());
                }
                _ => return Err(Refused),
            }
        }
    }

    /// Walk the array at the cursor: `item` is called with the cursor at each item, which it
    /// must consume.
    pub fn array(&mut self, mut item: impl FnMut(&mut Self) -> Scan<()>) -> Scan<()> {
        self.expect(b'[')?;
        if self.peek() == Some(b']') {
            self.at += 1;
            return Ok(());
        }
        loop {
            item(self)?;
            match self.peek() {
                Some(b',') => self.at += 1,
                Some(b']') => {
                    self.at += 1;
                    return Ok(());
                }
                _ => return Err(Refused),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether the scanner takes `text` as one JSON value.
    fn accepts(text: &str) -> bool {
        let mut c = Cursor::new(text);
        c.skip().is_ok() && c.end().is_ok()
    }

    #[test]
    fn whatever_it_accepts_serde_json_accepts() {
        let cases = [
            "{}",
            "[]",
            " { \"a\" : [ 1 , -2.5e+3 , true , false , null , \"x\\\"y\\u00e9\" ] } ",
            "0",
            "-0.0",
            "1E9",
            "\"\\/\\b\\f\\n\\r\\t\"",
            "{\"\\u0041\":{}}",
            "\"é∑😀\"",
            // Refused or rejected, each for its own reason.
            "01",
            "1.",
            ".5",
            "-",
            "1e",
            "+1",
            "tru",
            "nul",
            "[1,]",
            "{\"a\":1,}",
            "{\"a\" 1}",
            "{1:2}",
            "[1 2]",
            "\"\\x\"",
            "\"\\u12g4\"",
            "\"\\ud800\"",
            "\"a\tb\"",
            "\"open",
            "[",
            "{\"a\":1}}",
            "\u{1}",
        ];
        for text in cases {
            if accepts(text) {
                assert!(
                    serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok(),
                    "{text:?}"
                );
            }
        }
        assert!(accepts(cases[2]) && accepts(cases[8]) && !accepts("01") && !accepts("[1,]"));
    }

    #[test]
    fn strings_come_back_as_written_and_unescape_like_serde_json() {
        for raw in ["plain", "a\\\"b", "\\u00e9t\\u00E9\\n", "\\/\\\\", "😀 \\t"] {
            let text = format!("\"{raw}\"");
            let s = Cursor::new(&text).string().unwrap();
            assert_eq!(s.raw(), raw);
            assert_eq!(s.has_escapes(), raw.contains('\\'));
            let want: String = serde_json::from_str(&text).unwrap();
            assert_eq!(s.unescape().unwrap(), want);
        }
        // Every position of a special byte relative to the eight-byte steps.
        for n in 0..20 {
            let text = format!("\"{}\\n{}\"", "x".repeat(n), "y".repeat(n));
            let s = Cursor::new(&text).string().unwrap();
            assert_eq!(
                s.unescape().unwrap(),
                format!("{}\n{}", "x".repeat(n), "y".repeat(n))
            );
            let ctl = format!("\"{}\u{1f}\"", "x".repeat(n));
            assert_eq!(Cursor::new(&ctl).string(), Err(Refused));
        }
    }

    #[test]
    fn objects_walk_members_and_skip_returns_the_text() {
        let text = r#"{"a": {"b":[1,{"c":null}]} , "d":"e", "f":[]}"#;
        let mut c = Cursor::new(text);
        let mut seen = Vec::new();
        c.object(|k, c| {
            seen.push((k.raw(), c.skip()?));
            Ok(())
        })
        .unwrap();
        assert_eq!(
            seen,
            [
                ("a", r#"{"b":[1,{"c":null}]}"#),
                ("d", "\"e\""),
                ("f", "[]")
            ]
        );
        assert_eq!(
            Cursor::new("12345678901234567").integer(),
            Ok(12345678901234567)
        );
        assert_eq!(Cursor::new("-32602").integer(), Ok(-32602));
        for n in [
            "1.0",
            "1e3",
            "-0",
            "9223372036854775808",
            "1234567890123456789",
        ] {
            assert_eq!(Cursor::new(n).integer(), Err(Refused), "{n}");
        }
    }

    #[test]
    fn deep_nesting_is_refused_not_recursed() {
        let ok = format!(
            "{}{}",
            "[".repeat(MAX_DEPTH as usize),
            "]".repeat(MAX_DEPTH as usize)
        );
        assert!(accepts(&ok));
        let deep = format!("{}{}", "[{\"a\":".repeat(100_000), "1}]".repeat(100_000));
        assert!(!accepts(&deep));
        assert!(!accepts(&"[".repeat(100_000)));
    }
}

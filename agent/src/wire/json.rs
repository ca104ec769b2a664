//! JSON facts that do not need the value built: a canonical hash of a JSON text, the same
//! for two encodings that differ only in key order and whitespace. MCP's derived signals
//! (repeated calls, schema identity) and the agentic layer (a model's tool call matched to
//! the MCP call it became) hash arguments the same way.

use xxhash_rust::xxh3::xxh3_64;

/// A JSON value's hash, independent of key order and whitespace; `None` for text that is not
/// one JSON value. Strings and numbers are hashed as written (two spellings of one string,
/// such as `"A"` and `"\u0041"`, hash apart), which is how one client repeats itself.
///
/// It walks the text once without building the value: arguments can be megabytes, and this
/// runs for every call.
pub fn canonical_hash(json: &str) -> Option<u64> {
    let b = json.as_bytes();
    let mut at = 0;
    let h = hash_value(b, &mut at, 0)?;
    skip_ws(b, &mut at);
    (at == b.len()).then_some(h)
}

/// Nesting deeper than this is not hashed (the parser refuses it too).
const MAX_DEPTH: u32 = 128;

fn skip_ws(b: &[u8], at: &mut usize) {
    while *at < b.len() && matches!(b[*at], b' ' | b'\t' | b'\n' | b'\r') {
        *at += 1;
    }
}

/// Mix two hashes in order (for arrays and key/value pairs).
fn mix(a: u64, b: u64) -> u64 {
    (a ^ b.rotate_left(23)).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (a >> 29)
}

fn hash_value(b: &[u8], at: &mut usize, depth: u32) -> Option<u64> {
    if depth > MAX_DEPTH {
        return None;
    }
    skip_ws(b, at);
    match *b.get(*at)? {
        b'{' => hash_object(b, at, depth),
        b'[' => hash_array(b, at, depth),
        b'"' => hash_string(b, at),
        _ => hash_scalar(b, at),
    }
}

/// The object at `*at` (its `{`), members hashed at `depth + 1`.
#[inline]
fn hash_object(b: &[u8], at: &mut usize, depth: u32) -> Option<u64> {
    *at += 1;
    // Members combine by addition, so their order does not matter.
    let mut sum = 0u64;
    let mut n = 0u64;
    skip_ws(b, at);
    if b.get(*at) == Some(&b'}') {
        *at += 1;
        return Some(mix(0x6f, 0));
    }
    loop {
        skip_ws(b, at);
        if b.get(*at) != Some(&b'"') {
            return None;
        }
        let k = hash_value(b, at, depth + 1)?;
        skip_ws(b, at);
        if b.get(*at) != Some(&b':') {
            return None;
        }
        *at += 1;
        let v = hash_value(b, at, depth + 1)?;
        sum = sum.wrapping_add(mix(k, v));
        n += 1;
        skip_ws(b, at);
        match b.get(*at)? {
            b',' => *at += 1,
            b'}' => {
                *at += 1;
                return Some(mix(mix(0x6f, n), sum));
            }
            _ => return None,
        }
    }
}

/// The array at `*at` (its `[`), items hashed in order at `depth + 1`.
#[inline]
fn hash_array(b: &[u8], at: &mut usize, depth: u32) -> Option<u64> {
    *at += 1;
    let mut h = mix(0x61, 0);
    skip_ws(b, at);
    if b.get(*at) == Some(&b']') {
        *at += 1;
        return Some(h);
    }
    loop {
        h = mix(h, hash_value(b, at, depth + 1)?);
        skip_ws(b, at);
        match b.get(*at)? {
            b',' => *at += 1,
            b']' => {
                *at += 1;
                return Some(h);
            }
            _ => return None,
        }
    }
}

/// The string at `*at` (its opening quote), hashed as written, quotes and escapes included.
#[inline]
fn hash_string(b: &[u8], at: &mut usize) -> Option<u64> {
    let start = *at;
    *at += 1;
    loop {
        let i = memchr::memchr2(b'"', b'\\', b.get(*at..)?)?;
        *at += i;
        if b[*at] == b'"' {
            *at += 1;
            return Some(xxh3_64(&b[start..*at]));
        }
        // An escape: skip it and the escaped byte.
        *at += 2;
    }
}

/// A number, true, false or null at `*at`: hashed as written.
#[inline]
fn hash_scalar(b: &[u8], at: &mut usize) -> Option<u64> {
    let start = *at;
    while *at < b.len() && !matches!(b[*at], b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r') {
        *at += 1;
    }
    let token = &b[start..*at];
    let ok = matches!(token, b"true" | b"false" | b"null")
        || (token
            .first()
            .is_some_and(|c| *c == b'-' || c.is_ascii_digit())
            && token
                .iter()
                .all(|c| c.is_ascii_digit() || matches!(c, b'-' | b'+' | b'.' | b'e' | b'E')));
    ok.then(|| xxh3_64(token))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_hash_of_text_cut_inside_a_string_is_none_not_a_panic() {
        for cut in [r#""\"#, r#"{"a":"x\"#, r#"["\""#, r#""abc"#] {
            assert_eq!(canonical_hash(cut), None, "{cut}");
        }
    }

    #[test]
    fn canonical_hash_ignores_key_order_and_whitespace_only() {
        let h = |s: &str| canonical_hash(s);
        let a = h(r#"{"a":1,"b":[true,null,{"c":"x\"y"}]}"#);
        assert!(a.is_some());
        assert_eq!(
            a,
            h(" {\n \"b\" : [ true , null , {\"c\":\"x\\\"y\"} ] , \"a\":1 } ")
        );
        assert_ne!(a, h(r#"{"a":2,"b":[true,null,{"c":"x\"y"}]}"#));
        // Arrays keep their order; keys and values do not swap.
        assert_ne!(h("[1,2]"), h("[2,1]"));
        assert_ne!(h(r#"{"a":"b"}"#), h(r#"{"b":"a"}"#));
        assert_ne!(h("{}"), h("[]"));
        assert_ne!(h(r#"{"a":[]}"#), h(r#"{"a":{}}"#));
        assert_ne!(h(r#"{"a":1}"#), h(r#"{"a":1,"a":1}"#));
        for bad in [
            "",
            "{",
            r#"{"a"}"#,
            "[1,]",
            "tru",
            "1 2",
            r#""open"#,
            "{\"a\":1}}",
        ] {
            assert_eq!(h(bad), None, "{bad:?}");
        }
        let deep = "[".repeat(200) + &"]".repeat(200);
        assert_eq!(h(&deep), None);
    }
}

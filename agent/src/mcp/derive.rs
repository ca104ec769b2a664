//! What mcptap works out about calls beyond their outcome, without exporting any value:
//! whether arguments match the tool's advertised `inputSchema` (checked with a real JSON
//! Schema validator; only the failing path is kept), whether the tool was ever advertised,
//! whether a call repeats an identical earlier one (a hash of the canonical arguments), how a
//! server's tool definitions drifted, how to classify an error, and an estimate of the tokens
//! a result costs the model.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use serde_json::Value;
use xxhash_rust::xxh3::xxh3_64;

use super::message::ToolDef;
use crate::signal::Status;

/// Compiled schemas kept at most.
const VALIDATORS: usize = 4096;
/// Servers whose last tool definitions are remembered (for drift) at most; the name comes
/// from the wire (`serverInfo.name`), so it is bounded like everything a peer controls.
pub const MAX_SERVERS: usize = 4096;
/// Earlier calls remembered per session to find repeats.
const REMEMBERED_CALLS: usize = 512;

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

/// A tool as a session's latest `tools/list` advertised it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdvertisedTool {
    /// Hash of the canonical `inputSchema`, when there is one.
    pub schema: Option<u64>,
    /// Hash of the whole definition (description and schema), for drift.
    pub definition: u64,
}

/// The tools a session's server advertised.
pub type Advertised = HashMap<String, AdvertisedTool>;

/// How a server's tool definitions changed since it last listed them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Drift {
    /// New tools.
    pub added: Vec<String>,
    /// Tools gone.
    pub removed: Vec<String>,
    /// Tools whose description or schema changed.
    pub changed: Vec<String>,
}

/// Schemas compiled once, and every server's last tool definitions.
#[derive(Default)]
pub struct ToolBook {
    validators: HashMap<u64, Option<Arc<jsonschema::Validator>>>,
    schemas: HashMap<u64, String>,
    /// Each server's tool definitions, and when (the book's own count of `tools/list`s) they
    /// were last advertised.
    servers: HashMap<String, (BTreeMap<String, u64>, u64)>,
    lists: u64,
    /// Schemas that did not compile (the call is then not checked).
    pub bad_schemas: u64,
    /// Entries forgotten to stay within the caps (servers, schemas, compiled validators).
    pub evicted: u64,
}

/// What checking a call's arguments found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ArgCheck {
    /// The tool was not in the server's advertised list (`None`: no list seen).
    pub unknown_tool: Option<bool>,
    /// The arguments satisfy the advertised schema (`None`: nothing to check against).
    pub schema_valid: Option<bool>,
    /// Where they fail: the instance path and the schema keyword, e.g. `/a: type`.
    pub schema_error: Option<String>,
}

impl ToolBook {
    /// Read a `tools/list` result: the session's advertised tools, and the drift from what
    /// `server` advertised before (`None` the first time or when nothing changed).
    pub fn advertise(&mut self, server: &str, tools: &[ToolDef]) -> (Advertised, Option<Drift>) {
        let mut adv = Advertised::new();
        let mut defs = BTreeMap::new();
        for t in tools {
            let schema = t.input_schema.as_deref().and_then(|s| {
                let h = canonical_hash(s)?;
                if !self.schemas.contains_key(&h) {
                    if self.schemas.len() >= VALIDATORS {
                        // Wholesale: the schemas still advertised come back with the next list.
                        self.evicted += self.schemas.len() as u64;
                        self.schemas.clear();
                    }
                    self.schemas.insert(h, s.to_string());
                }
                Some(h)
            });
            let definition = xxh3_64(
                format!(
                    "{}\u{0}{}\u{0}{}",
                    t.name,
                    t.description.as_deref().unwrap_or(""),
                    schema.unwrap_or(0)
                )
                .as_bytes(),
            );
            adv.insert(t.name.clone(), AdvertisedTool { schema, definition });
            defs.insert(t.name.clone(), definition);
        }
        self.lists += 1;
        if !self.servers.contains_key(server) && self.servers.len() >= MAX_SERVERS {
            let victims = crate::bounded::least_recent(
                self.servers
                    .iter()
                    .map(|(k, (_, at))| (*at, k.clone()))
                    .collect::<Vec<_>>()
                    .into_iter(),
                MAX_SERVERS - 1,
            );
            self.evicted += victims.len() as u64;
            for k in victims {
                self.servers.remove(&k);
            }
        }
        let previous = self
            .servers
            .insert(server.to_string(), (defs.clone(), self.lists));
        let drift = match previous.map(|(d, _)| d) {
            None => None,
            Some(old) => {
                let mut d = Drift::default();
                for (name, def) in &defs {
                    match old.get(name) {
                        None => d.added.push(name.clone()),
                        Some(o) if o != def => d.changed.push(name.clone()),
                        Some(_) => {}
                    }
                }
                d.removed = old
                    .keys()
                    .filter(|n| !defs.contains_key(*n))
                    .cloned()
                    .collect();
                (!d.added.is_empty() || !d.removed.is_empty() || !d.changed.is_empty()).then_some(d)
            }
        };
        (adv, drift)
    }

    fn validator(&mut self, schema: u64) -> Option<Arc<jsonschema::Validator>> {
        if let Some(v) = self.validators.get(&schema) {
            return v.clone();
        }
        let text = self.schemas.get(&schema)?;
        let compiled = serde_json::from_str::<Value>(text)
            .ok()
            .and_then(|v| jsonschema::validator_for(&v).ok())
            .map(Arc::new);
        if compiled.is_none() {
            self.bad_schemas += 1;
        }
        if self.validators.len() >= VALIDATORS {
            self.evicted += self.validators.len() as u64;
            self.validators.clear();
        }
        self.validators.insert(schema, compiled.clone());
        compiled
    }

    /// The book's size (servers remembered), cap and evictions.
    pub fn table(&self) -> crate::bounded::TableStat {
        crate::bounded::TableStat::new(
            "tool_servers",
            self.servers.len(),
            MAX_SERVERS,
            self.evicted,
        )
    }

    /// Check a `tools/call` against what the session's server advertised.
    pub fn check(
        &mut self,
        advertised: Option<&Advertised>,
        tool: &str,
        arguments: Option<&str>,
    ) -> ArgCheck {
        let Some(adv) = advertised else {
            return ArgCheck::default();
        };
        let Some(t) = adv.get(tool) else {
            return ArgCheck {
                unknown_tool: Some(true),
                ..ArgCheck::default()
            };
        };
        let mut check = ArgCheck {
            unknown_tool: Some(false),
            ..ArgCheck::default()
        };
        let Some(validator) = t.schema.and_then(|s| self.validator(s)) else {
            return check;
        };
        // Absent arguments are checked as an empty object, as servers treat them.
        let instance: Value = match arguments {
            Some(a) => match serde_json::from_str(a) {
                Ok(v) => v,
                Err(_) => {
                    check.schema_valid = Some(false);
                    check.schema_error = Some(": not JSON".into());
                    return check;
                }
            },
            None => Value::Object(Default::default()),
        };
        match validator.validate(&instance) {
            Ok(()) => check.schema_valid = Some(true),
            Err(e) => {
                check.schema_valid = Some(false);
                check.schema_error = Some(format!("{}: {}", e.instance_path(), e.kind().keyword()));
            }
        }
        check
    }
}

/// Earlier identical calls of one session, by the hash of (method, target, canonical args).
#[derive(Default, Debug)]
pub struct Repeats {
    recent: VecDeque<(u64, String)>,
}

impl Repeats {
    /// The id of the latest identical earlier call, remembering this one as `id`.
    pub fn seen(&mut self, key: u64, id: &str) -> Option<String> {
        let earlier = self
            .recent
            .iter()
            .rev()
            .find(|(k, _)| *k == key)
            .map(|(_, id)| id.clone());
        if self.recent.len() == REMEMBERED_CALLS {
            self.recent.pop_front();
        }
        self.recent.push_back((key, id.to_string()));
        earlier
    }
}

/// The hash that identifies a repeat: same method, same target, same canonical arguments.
pub fn call_key(method: &str, target: &str, arguments: Option<&str>) -> u64 {
    let args = arguments.and_then(canonical_hash).unwrap_or(0);
    // Each part hashed on its own, seeded with the hash of the ones before: no text is built.
    let seeded = xxhash_rust::xxh3::xxh3_64_with_seed;
    seeded(target.as_bytes(), seeded(method.as_bytes(), args))
}

/// Whose fault a failed call is: `client_misuse` (malformed or invalid requests, schema
/// violations, unknown tools, HTTP 4xx), `server_failure` (internal errors, server-defined
/// errors, tool errors, no response, HTTP 5xx), or `other` (any other error code).
pub fn error_class(
    status: Status,
    error_code: Option<i64>,
    http_status: Option<u16>,
    schema_valid: Option<bool>,
    unknown_tool: Option<bool>,
) -> Option<&'static str> {
    let failed = matches!(
        status,
        Status::Error | Status::ToolError | Status::NoResponse
    );
    if !failed {
        return None;
    }
    if unknown_tool == Some(true) || schema_valid == Some(false) {
        return Some("client_misuse");
    }
    Some(match (status, error_code, http_status) {
        (Status::Error, Some(-32700 | -32600 | -32601 | -32602), _) => "client_misuse",
        (Status::Error, Some(c), _) if c == -32603 || (-32099..=-32000).contains(&c) => {
            "server_failure"
        }
        (Status::Error, None, Some(h)) if (400..500).contains(&h) => "client_misuse",
        (Status::Error, None, Some(h)) if h >= 500 => "server_failure",
        (Status::ToolError | Status::NoResponse, ..) => "server_failure",
        _ => "other",
    })
}

/// Tokens a result costs a model, estimated as one per four bytes of its JSON-encoded text
/// (the usual rule of thumb for English text with BPE tokenizers; images and blobs are not
/// counted).
pub fn tokens_estimate(text_bytes: u64) -> u64 {
    text_bytes.div_ceil(4)
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

    fn tool(name: &str, desc: &str, schema: &str) -> ToolDef {
        ToolDef {
            name: name.into(),
            description: Some(desc.into()),
            input_schema: Some(schema.into()),
        }
    }

    const ADD: &str = r#"{"type":"object","properties":{"a":{"type":"integer"},"b":{"type":"integer"}},"required":["a","b"]}"#;

    #[test]
    fn arguments_are_checked_against_the_advertised_schema() {
        let mut book = ToolBook::default();
        let (adv, drift) = book.advertise("srv", &[tool("add", "Add", ADD)]);
        assert!(drift.is_none());
        let ok = book.check(Some(&adv), "add", Some(r#"{"b":2,"a":1}"#));
        assert_eq!(ok.schema_valid, Some(true));
        assert_eq!(ok.unknown_tool, Some(false));
        let bad = book.check(Some(&adv), "add", Some(r#"{"a":"one","b":2}"#));
        assert_eq!(bad.schema_valid, Some(false));
        assert_eq!(bad.schema_error.as_deref(), Some("/a: type"));
        let missing = book.check(Some(&adv), "add", None);
        assert_eq!(missing.schema_error.as_deref(), Some(": required"));
        let unknown = book.check(Some(&adv), "nope", Some("{}"));
        assert_eq!(unknown.unknown_tool, Some(true));
        assert_eq!(book.check(None, "add", Some("{}")), ArgCheck::default());
    }

    #[test]
    fn drift_names_what_changed() {
        let mut book = ToolBook::default();
        book.advertise("srv", &[tool("a", "A", "{}"), tool("b", "B", "{}")]);
        let (_, d) = book.advertise("srv", &[tool("a", "A", "{}"), tool("b", "B2", "{}")]);
        assert_eq!(d.unwrap().changed, vec!["b".to_string()]);
        let (_, d) = book.advertise("srv", &[tool("b", "B2", "{}"), tool("c", "C", "{}")]);
        let d = d.unwrap();
        assert_eq!(
            (d.added, d.removed),
            (vec!["c".to_string()], vec!["a".to_string()])
        );
        // Key order in a schema is not a change.
        book.advertise(
            "s2",
            &[tool("x", "X", r#"{"type":"object","properties":{}}"#)],
        );
        let (_, d) = book.advertise(
            "s2",
            &[tool("x", "X", r#"{"properties":{},"type":"object"}"#)],
        );
        assert!(d.is_none());
    }

    #[test]
    fn repeats_are_identical_canonical_calls() {
        let mut r = Repeats::default();
        let k1 = call_key("tools/call", "echo", Some(r#"{"a":1,"b":[1,2]}"#));
        let k2 = call_key("tools/call", "echo", Some("{ \"b\": [1, 2], \"a\": 1 }"));
        let k3 = call_key("tools/call", "echo", Some(r#"{"a":2,"b":[1,2]}"#));
        assert_eq!(k1, k2);
        assert_ne!(k1, k3);
        assert_eq!(r.seen(k1, "1"), None);
        assert_eq!(r.seen(k3, "2"), None);
        assert_eq!(r.seen(k2, "3"), Some("1".to_string()));
        assert_eq!(r.seen(k1, "4"), Some("3".to_string()));
    }

    #[test]
    fn error_classes() {
        use Status::*;
        assert_eq!(error_class(Ok, None, Some(200), None, None), None);
        assert_eq!(
            error_class(Error, Some(-32602), None, None, None),
            Some("client_misuse")
        );
        assert_eq!(
            error_class(Error, Some(-32601), None, None, None),
            Some("client_misuse")
        );
        assert_eq!(
            error_class(Error, Some(-32603), None, None, None),
            Some("server_failure")
        );
        assert_eq!(
            error_class(ToolError, None, None, Some(true), Some(false)),
            Some("server_failure")
        );
        assert_eq!(
            error_class(ToolError, None, None, Some(false), None),
            Some("client_misuse")
        );
        assert_eq!(
            error_class(ToolError, None, None, None, Some(true)),
            Some("client_misuse")
        );
        assert_eq!(
            error_class(NoResponse, None, None, None, None),
            Some("server_failure")
        );
        assert_eq!(
            error_class(Error, None, Some(404), None, None),
            Some("client_misuse")
        );
        assert_eq!(error_class(Error, Some(0), None, None, None), Some("other"));
        assert_eq!(error_class(Cancelled, None, None, None, None), None);
    }
}

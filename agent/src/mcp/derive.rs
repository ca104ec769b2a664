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
pub use crate::wire::json::canonical_hash;

/// Compiled schemas kept at most.
const VALIDATORS: usize = 4096;
/// Servers whose last tool definitions are remembered (for drift) at most; the name comes
/// from the wire (`serverInfo.name`), so it is bounded like everything a peer controls.
pub const MAX_SERVERS: usize = 4096;
/// Earlier calls remembered per session to find repeats.
const REMEMBERED_CALLS: usize = 512;

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
        // Room for one at first, not four: most sessions make one call.
        if self.recent.capacity() == 0 {
            self.recent.reserve_exact(1);
        }
        self.recent.push_back((key, id.to_string()));
        earlier
    }
}

/// The hash that identifies a repeat: same method, same target, same canonical arguments.
pub fn call_key(method: &str, target: &str, arguments: Option<&str>) -> u64 {
    call_key_of(method, target, arguments.and_then(canonical_hash))
}

/// [`call_key`] with the arguments' canonical hash already taken.
pub fn call_key_of(method: &str, target: &str, args_hash: Option<u64>) -> u64 {
    // Each part hashed on its own, seeded with the hash of the ones before: no text is built.
    let seeded = xxhash_rust::xxh3::xxh3_64_with_seed;
    seeded(
        target.as_bytes(),
        seeded(method.as_bytes(), args_hash.unwrap_or(0)),
    )
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

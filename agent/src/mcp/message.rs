//! JSON-RPC 2.0 / MCP message parsing: one frame's bytes in, the few facts mcptap needs out.
//!
//! Only the fields that matter are extracted (id, method, the tool/resource/prompt named by
//! the params, error code, `isError`, initialize identities, `_meta`); everything else is
//! skipped without being materialised. Argument and result values are never kept: the
//! security rules read them borrowed from the frame, while it is at hand.
//!
//! Each message is read once, by `message::scan`: one walk of the text that finds the envelope's
//! fields and reads params, result and error as it passes them. What the scan cannot vouch
//! for (malformed or oddly typed input, escaped keys, duplicate fields, deep nesting) goes to
//! serde_json, whose reading defines the results: the scan fills the same structures, and
//! accepts only text serde_json would read into the same values. serde_json's recursion
//! limit makes deeply nested input an error, not a stack overflow.

use std::borrow::Cow;
use std::fmt;

use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;

mod scan;

/// A JSON-RPC id exactly as it appeared on the wire (`1`, `"abc"`): the raw JSON text.
///
/// Shared, not copied: correlation keeps an exchange's id in its open and recent tables, its
/// record and the keys it is looked up by, and each copy of a `String` was an allocation.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Id(pub std::sync::Arc<str>);

impl From<&str> for Id {
    fn from(s: &str) -> Self {
        Id(s.into())
    }
}

impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Name and version from `clientInfo` or `serverInfo`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeerInfo {
    /// `name`
    pub name: String,
    /// `version`
    pub version: String,
}

/// What a request or notification is about: borrowed from the frame in a [`Message`], owned
/// (`Target<'static>`) where correlation keeps it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Target<'a> {
    /// Nothing in particular.
    #[default]
    None,
    /// `tools/call` params.name
    Tool(Cow<'a, str>),
    /// `resources/read` (and subscribe) params.uri
    Resource(Cow<'a, str>),
    /// `prompts/get` params.name
    Prompt(Cow<'a, str>),
}

impl Target<'_> {
    /// The same target, owning its name.
    pub fn to_owned(&self) -> Target<'static> {
        let own = |s: &Cow<'_, str>| Cow::Owned(String::from(&**s));
        match self {
            Target::None => Target::None,
            Target::Tool(t) => Target::Tool(own(t)),
            Target::Resource(u) => Target::Resource(own(u)),
            Target::Prompt(n) => Target::Prompt(own(n)),
        }
    }
}

/// Kind of JSON-RPC message.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Kind {
    /// Has `method` and `id`.
    Request,
    /// Has `method`, no `id`.
    #[default]
    Notification,
    /// Has `result`.
    Response,
    /// Has `error`.
    Error,
}

/// One tool as a `tools/list` result advertises it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ToolDef {
    /// `name`
    pub name: String,
    /// `description`
    pub description: Option<String>,
    /// `inputSchema`, as JSON text.
    pub input_schema: Option<String>,
}

/// The facts of one JSON-RPC message, borrowed from its frame wherever the text is: most
/// views use little past the id (the second view of a message nothing else), so what a
/// consumer keeps it copies itself ([`Message::into_owned`], or field by field).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Message<'a> {
    /// Kind.
    pub kind: Kind,
    /// Id, for requests and responses (absent for notifications and `"id": null` errors):
    /// the raw JSON text, as [`Id`] holds it.
    pub id: Option<Cow<'a, str>>,
    /// Method, for requests and notifications.
    pub method: Option<Cow<'a, str>>,
    /// Tool, resource or prompt named by the params.
    pub target: Target<'a>,
    /// `result.isError == true`.
    pub is_error: bool,
    /// `error.code`.
    pub error_code: Option<i64>,
    /// `error.message`.
    pub error_message: Option<Cow<'a, str>>,
    /// `protocolVersion` of an initialize request/result, or of 2026-07-28 `_meta`.
    pub protocol_version: Option<Cow<'a, str>>,
    /// `clientInfo` (initialize params or `_meta`) or `serverInfo` (results).
    pub peer_info: Option<PeerInfo>,
    /// Which of the two `peer_info` is: true for serverInfo.
    pub peer_info_is_server: bool,
    /// `notifications/cancelled` params.requestId, raw JSON text as `id`.
    pub cancels: Option<Cow<'a, str>>,
    /// `tools/call` and `prompts/get` params.arguments, as JSON text (kept only to check them
    /// against the tool's schema and to hash them; never exported unless `--payloads`).
    pub arguments: Option<Cow<'a, str>>,
    /// W3C `traceparent` from params._meta.
    pub traceparent: Option<Cow<'a, str>>,
    /// W3C `tracestate` from params._meta.
    pub tracestate: Option<Cow<'a, str>>,
    /// The tools of a `tools/list` result.
    pub tools: Option<Vec<ToolDef>>,
    /// JSON-encoded length of the text in a tool result (`content[].text`, or
    /// `structuredContent` when there is no text): the basis of the token estimate.
    pub result_text_bytes: Option<u64>,
    /// JSON-encoded length of a `resources/read` result's `contents[]` text and blobs.
    pub contents_bytes: Option<u64>,
    /// The whole `result`, as JSON text, when payloads are kept (`--payloads`).
    pub result: Option<Cow<'a, str>>,
    /// The whole `result` as JSON text, borrowed from the frame, for the security rules to
    /// read where it is first seen; never kept past the frame ([`Message::into_owned`]
    /// drops it).
    pub raw_result: Option<&'a str>,
}

/// An owned copy of a borrowed string.
fn owned(s: Option<Cow<'_, str>>) -> Option<Cow<'static, str>> {
    s.map(|s| Cow::Owned(s.into_owned()))
}

impl Message<'_> {
    /// The id, as correlation keeps it.
    pub fn id(&self) -> Option<Id> {
        self.id.as_deref().map(Id::from)
    }

    /// The same message, owning its text (for one held beyond its frame).
    pub fn into_owned(self) -> Message<'static> {
        Message {
            kind: self.kind,
            id: owned(self.id),
            method: owned(self.method),
            target: self.target.to_owned(),
            is_error: self.is_error,
            error_code: self.error_code,
            error_message: owned(self.error_message),
            protocol_version: owned(self.protocol_version),
            peer_info: self.peer_info,
            peer_info_is_server: self.peer_info_is_server,
            cancels: owned(self.cancels),
            arguments: owned(self.arguments),
            traceparent: owned(self.traceparent),
            tracestate: owned(self.tracestate),
            tools: self.tools,
            result_text_bytes: self.result_text_bytes,
            contents_bytes: self.contents_bytes,
            result: owned(self.result),
            raw_result: None,
        }
    }
}

/// Result of parsing one frame.
#[derive(Debug, PartialEq, Eq)]
// Boxing the single message would cost an allocation per message for the rare batch's sake.
#[allow(clippy::large_enum_variant)]
pub enum Parsed<'a> {
    /// A single message.
    One(Message<'a>),
    /// A batch (protocol 2025-03-26 only).
    Batch(Vec<Message<'a>>),
}

/// Why a frame is not a JSON-RPC message.
#[derive(Debug, PartialEq, Eq)]
pub enum ParseError {
    /// Not JSON at all (includes invalid UTF-8 and nesting beyond serde_json's limit).
    NotJson(String),
    /// Valid JSON but not a JSON-RPC 2.0 object (no `"jsonrpc": "2.0"`).
    NotJsonRpc,
    /// Claims JSON-RPC 2.0 but is malformed (e.g. neither method nor result nor error).
    Invalid(&'static str),
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParseError::NotJson(e) => write!(f, "not JSON: {e}"),
            ParseError::NotJsonRpc => f.write_str("JSON but not JSON-RPC 2.0"),
            ParseError::Invalid(why) => write!(f, "invalid JSON-RPC: {why}"),
        }
    }
}

impl ParseError {
    /// Short name used in events and metrics.
    pub fn class(&self) -> &'static str {
        match self {
            ParseError::NotJson(_) => "not_json",
            ParseError::NotJsonRpc => "not_jsonrpc",
            ParseError::Invalid(_) => "invalid_jsonrpc",
        }
    }
}

/// A string borrowed from the frame unless it holds escapes. serde borrows a `Cow` field
/// only when it is not inside an `Option` (an `Option<Cow<str>>` always allocates): this
/// newtype makes the optional fields borrow too.
#[derive(Deserialize)]
struct Str<'a>(#[serde(borrow)] Cow<'a, str>);

impl Str<'_> {
    fn into_owned(self) -> String {
        self.0.into_owned()
    }
}

impl std::ops::Deref for Str<'_> {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

/// A JSON value's text as written (`RawValue`'s, without its type, so that the scan can make
/// one from a slice of the frame).
#[derive(Clone, Copy)]
struct Raw<'a>(&'a str);

impl<'de: 'a, 'a> Deserialize<'de> for Raw<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        <&RawValue>::deserialize(d).map(|r| Raw(r.get()))
    }
}

/// A JSON-RPC envelope, its params read as `P` and its result as `R`.
#[derive(Deserialize)]
#[serde(bound(deserialize = "P: Deserialize<'de>, R: Deserialize<'de>"))]
struct Envelope<'a, P, R> {
    #[serde(borrow)]
    jsonrpc: Option<Str<'a>>,
    #[serde(borrow)]
    id: Option<Raw<'a>>,
    #[serde(borrow)]
    method: Option<Str<'a>>,
    params: Option<P>,
    result: Option<R>,
    #[serde(borrow)]
    error: Option<ErrorObject<'a>>,
}

/// The envelope with its params and result read in the same pass: what nearly every message
/// is. A message whose params or result do not fit ([`Params`], [`ResultFields`]) fails this
/// and is read again as a [`RawEnvelope`].
type Typed<'a> = Envelope<'a, Params<'a>, ResultFields<'a>>;

/// The envelope with params and result kept as raw text, each read on its own after.
type RawEnvelope<'a> = Envelope<'a, Raw<'a>, Raw<'a>>;

#[derive(Deserialize)]
struct ErrorObject<'a> {
    code: Option<i64>,
    #[serde(borrow)]
    message: Option<Str<'a>>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Params<'a> {
    #[serde(borrow)]
    name: Option<Str<'a>>,
    #[serde(borrow)]
    uri: Option<Str<'a>>,
    #[serde(rename = "protocolVersion", borrow)]
    protocol_version: Option<Str<'a>>,
    #[serde(rename = "clientInfo", borrow)]
    client_info: Option<Info<'a>>,
    #[serde(rename = "requestId", borrow)]
    request_id: Option<Raw<'a>>,
    #[serde(rename = "_meta", borrow)]
    meta: Option<Meta<'a>>,
    #[serde(borrow)]
    arguments: Option<Raw<'a>>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Meta<'a> {
    #[serde(borrow)]
    traceparent: Option<Str<'a>>,
    #[serde(borrow)]
    tracestate: Option<Str<'a>>,
    #[serde(rename = "io.modelcontextprotocol/protocolVersion", borrow)]
    protocol_version: Option<Str<'a>>,
    #[serde(rename = "io.modelcontextprotocol/clientInfo", borrow)]
    client_info: Option<Info<'a>>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Info<'a> {
    #[serde(borrow)]
    name: Option<Str<'a>>,
    #[serde(borrow)]
    version: Option<Str<'a>>,
}

impl From<Info<'_>> for PeerInfo {
    fn from(i: Info<'_>) -> Self {
        PeerInfo {
            name: i.name.map(Str::into_owned).unwrap_or_default(),
            version: i.version.map(Str::into_owned).unwrap_or_default(),
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct ResultFields<'a> {
    #[serde(rename = "isError")]
    is_error: Option<bool>,
    #[serde(rename = "protocolVersion", borrow)]
    protocol_version: Option<Str<'a>>,
    #[serde(rename = "serverInfo", borrow)]
    server_info: Option<Info<'a>>,
    #[serde(rename = "_meta", borrow)]
    meta: Option<ResultMeta<'a>>,
    #[serde(borrow)]
    tools: Option<Vec<ToolRaw<'a>>>,
    content: Option<Sizes>,
    #[serde(rename = "structuredContent", borrow)]
    structured_content: Option<Raw<'a>>,
    contents: Option<Sizes>,
}

#[derive(Deserialize)]
struct ToolRaw<'a> {
    #[serde(borrow)]
    name: Cow<'a, str>,
    #[serde(default, borrow)]
    description: Option<Str<'a>>,
    #[serde(default, rename = "inputSchema", borrow)]
    input_schema: Option<Raw<'a>>,
}

impl From<ToolRaw<'_>> for ToolDef {
    fn from(t: ToolRaw<'_>) -> Self {
        ToolDef {
            name: t.name.into_owned(),
            description: t.description.map(Str::into_owned),
            input_schema: t.input_schema.map(|s| s.0.to_string()),
        }
    }
}

/// A content item (tool results) or resource contents; only sizes are kept.
#[derive(Deserialize, Default)]
#[serde(default)]
struct ContentRaw<'a> {
    #[serde(borrow)]
    text: Option<Raw<'a>>,
    #[serde(borrow)]
    blob: Option<Raw<'a>>,
}

impl ContentRaw<'_> {
    fn len(&self) -> u64 {
        // The JSON-encoded length less the quotes: escapes make it a slight overestimate.
        let l = |r: &Option<Raw<'_>>| r.map_or(0, |r| r.0.len().saturating_sub(2) as u64);
        l(&self.text) + l(&self.blob)
    }
}

/// The summed [`ContentRaw::len`] of a list of content items: what a result's `content` and
/// `contents` are read for, without keeping the items (a `Vec` was an allocation a response).
#[derive(Clone, Copy, Default)]
struct Sizes(u64);

impl<'de> Deserialize<'de> for Sizes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Items;
        impl<'de> serde::de::Visitor<'de> for Items {
            type Value = Sizes;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a sequence")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Sizes, A::Error> {
                let mut total = 0u64;
                while let Some(item) = seq.next_element::<ContentRaw<'de>>()? {
                    total += item.len();
                }
                Ok(Sizes(total))
            }
        }
        d.deserialize_seq(Items)
    }
}

/// `_meta` of a 2026-07-28 result (`server/discover` names the server there).
#[derive(Deserialize, Default)]
#[serde(default)]
struct ResultMeta<'a> {
    #[serde(rename = "io.modelcontextprotocol/serverInfo", borrow)]
    server_info: Option<Info<'a>>,
}

/// What to keep beyond the facts every output needs.
#[derive(Clone, Copy, Debug, Default)]
pub struct Options {
    /// Keep argument and result values (`--payloads`).
    pub payloads: bool,
}

/// Results kept with `--payloads` are cut to this many bytes of JSON.
pub const PAYLOAD_LIMIT: usize = 64 * 1024;

/// Parse one frame.
pub fn parse(bytes: &[u8]) -> Result<Parsed<'_>, ParseError> {
    parse_with(bytes, Options::default())
}

/// Parse one frame, keeping what `opts` asks for.
pub fn parse_with(bytes: &[u8], opts: Options) -> Result<Parsed<'_>, ParseError> {
    // The whole frame must be UTF-8, as JSON requires and every SDK checks: serde_json skips
    // the strings of fields nobody reads without looking at them.
    let text = std::str::from_utf8(bytes)
        .map_err(|e| ParseError::NotJson(format!("invalid UTF-8: {e}")))?;
    let first = text.bytes().find(|b| !b.is_ascii_whitespace());
    match first {
        Some(b'[') => {
            let items: Vec<Raw<'_>> =
                serde_json::from_str(text).map_err(|e| ParseError::NotJson(e.to_string()))?;
            if items.is_empty() {
                return Err(ParseError::Invalid("empty batch"));
            }
            let msgs = items
                .into_iter()
                .map(|raw| parse_one(raw.0, opts))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(Parsed::Batch(msgs))
        }
        Some(b'{') => parse_one(text, opts).map(Parsed::One),
        _ => {
            // Not an object or array: a JSON scalar is still "JSON but not JSON-RPC".
            match serde_json::from_str::<serde::de::IgnoredAny>(text) {
                Ok(_) => Err(ParseError::NotJsonRpc),
                Err(e) => Err(ParseError::NotJson(e.to_string())),
            }
        }
    }
}

fn parse_one(text: &str, opts: Options) -> Result<Message<'_>, ParseError> {
    if let Ok((t, raw_result)) = scan::envelope(text) {
        return typed_message(t, raw_result, opts);
    }
    parse_serde(text, opts)
}

/// The scan's reading of `bytes` is serde_json's, with and without payloads: whatever the
/// scan accepts, serde_json reads into the same message (a panic says where they part). For
/// the fuzzer and the tests. True if the scan answered.
pub(crate) fn check_scan(bytes: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(bytes) else {
        return false;
    };
    let mut answered = false;
    for payloads in [false, true] {
        let opts = Options { payloads };
        if let Ok((t, raw_result)) = scan::envelope(text) {
            let fast = typed_message(t, raw_result, opts);
            assert_eq!(
                fast,
                parse_serde(text, opts),
                "{text:?} payloads={payloads}"
            );
            answered = true;
        }
    }
    answered
}

/// What serde_json makes of one message: the reading the scan must agree with. Only the
/// two-pass read has the result's text, which the security rules read.
fn parse_serde(text: &str, opts: Options) -> Result<Message<'_>, ParseError> {
    parse_two_pass(text, opts)
}

/// The message a typed envelope makes, with the result's text `raw_result`.
fn typed_message<'a>(
    t: Typed<'a>,
    raw_result: Option<Raw<'a>>,
    opts: Options,
) -> Result<Message<'a>, ParseError> {
    let body = match (t.method, t.error, t.result) {
        (Some(method), ..) => Body::Call(method.0, t.params.unwrap_or_default()),
        (None, Some(err), _) => Body::Error(err),
        (None, None, Some(result)) => Body::Result(result, raw_result),
        (None, None, None) => Body::Neither,
    };
    message(t.jsonrpc, t.id, body, opts)
}

/// What a message carries besides its envelope.
enum Body<'a> {
    /// A request or notification: its method and params.
    Call(Cow<'a, str>, Params<'a>),
    /// An error.
    Error(ErrorObject<'a>),
    /// A result, and its raw text.
    Result(ResultFields<'a>, Option<Raw<'a>>),
    /// None of these.
    Neither,
}

/// Read the envelope with params and result as raw text, then each of them on its own:
/// params or a result that do not parse are taken as absent.
fn parse_two_pass(text: &str, opts: Options) -> Result<Message<'_>, ParseError> {
    let env: RawEnvelope<'_> = match serde_json::from_str(text) {
        Ok(e) => e,
        Err(e) if e.is_data() => return Err(ParseError::NotJsonRpc),
        Err(e) => return Err(ParseError::NotJson(e.to_string())),
    };
    let body = match (env.method, env.error, env.result) {
        (Some(method), ..) => {
            let params = env
                .params
                .and_then(|raw| serde_json::from_str(raw.0).ok())
                .unwrap_or_default();
            Body::Call(method.0, params)
        }
        (None, Some(err), _) => Body::Error(err),
        (None, None, Some(raw)) => {
            let fields = serde_json::from_str(raw.0).unwrap_or_default();
            Body::Result(fields, Some(raw))
        }
        (None, None, None) => Body::Neither,
    };
    message(env.jsonrpc, env.id, body, opts)
}

/// The message an envelope's version, id and body make.
fn message<'a>(
    jsonrpc: Option<Str<'a>>,
    id: Option<Raw<'a>>,
    body: Body<'a>,
    opts: Options,
) -> Result<Message<'a>, ParseError> {
    if jsonrpc.as_deref() != Some("2.0") {
        return Err(ParseError::NotJsonRpc);
    }
    let mut msg = Message {
        id: id.map(|r| Cow::Borrowed(r.0)),
        ..Message::default()
    };
    match body {
        Body::Call(method, params) => read_call(&mut msg, method, params),
        Body::Error(err) => {
            msg.kind = Kind::Error;
            msg.error_code = err.code;
            msg.error_message = err.message.map(|m| m.0);
        }
        Body::Result(fields, raw) => {
            if msg.id.is_none() {
                return Err(ParseError::Invalid("response without id"));
            }
            read_result(&mut msg, fields, raw, opts);
        }
        Body::Neither => return Err(ParseError::Invalid("neither method, result nor error")),
    }
    Ok(msg)
}

/// The facts of a request or notification: its target, identities, trace context and what
/// the method says beyond that. Params that do not parse are taken as absent.
fn read_call<'a>(msg: &mut Message<'a>, method: Cow<'a, str>, params: Params<'a>) {
    msg.kind = if msg.id.is_some() {
        Kind::Request
    } else {
        Kind::Notification
    };
    if method == "initialize" {
        msg.protocol_version = params.protocol_version.map(|v| v.0);
        msg.peer_info = params.client_info.map(PeerInfo::from);
    }
    if method == "tools/call" || method == "prompts/get" {
        msg.arguments = params.arguments.map(|a| Cow::Borrowed(a.0));
    }
    if let Some(meta) = params.meta {
        msg.traceparent = meta.traceparent.map(|t| t.0);
        msg.tracestate = meta.tracestate.map(|t| t.0);
        // Protocol 2026-07-28 has no initialize: every request says who and which version.
        if msg.protocol_version.is_none() {
            msg.protocol_version = meta.protocol_version.map(|v| v.0);
        }
        if msg.peer_info.is_none() {
            msg.peer_info = meta.client_info.map(PeerInfo::from);
        }
    }
    if method == "notifications/cancelled" {
        msg.cancels = params.request_id.map(|r| Cow::Borrowed(r.0));
    }
    msg.target = target_of(&method, params.name, params.uri);
    msg.method = Some(method);
}

/// The tool, resource or prompt that a call of `method` names in its params (`name`, `uri`).
fn target_of<'a>(method: &str, name: Option<Str<'a>>, uri: Option<Str<'a>>) -> Target<'a> {
    match method {
        "tools/call" => name.map_or(Target::None, |n| Target::Tool(n.0)),
        "resources/read" | "resources/subscribe" | "resources/unsubscribe" => {
            uri.map_or(Target::None, |u| Target::Resource(u.0))
        }
        "prompts/get" => name.map_or(Target::None, |n| Target::Prompt(n.0)),
        _ => Target::None,
    }
}

/// The facts of a successful response: `isError`, the server's identity, advertised tools,
/// result sizes and (with `--payloads`) the result itself, `raw`. A result that is not an
/// object still makes a response, with none of these facts.
fn read_result<'a>(
    msg: &mut Message<'a>,
    r: ResultFields<'a>,
    raw: Option<Raw<'a>>,
    opts: Options,
) {
    msg.kind = Kind::Response;
    msg.is_error = r.is_error == Some(true);
    msg.protocol_version = r.protocol_version.map(|v| v.0);
    if let Some(info) = r.server_info.or(r.meta.and_then(|m| m.server_info)) {
        msg.peer_info = Some(info.into());
        msg.peer_info_is_server = true;
    }
    if let Some(tools) = r.tools {
        msg.tools = Some(tools.into_iter().map(ToolDef::from).collect());
    }
    if let Some(Sizes(text)) = r.content {
        let structured = r.structured_content.map_or(0, |s| s.0.len() as u64);
        msg.result_text_bytes = Some(if text > 0 { text } else { structured });
    }
    if let Some(Sizes(contents)) = r.contents {
        msg.contents_bytes = Some(contents);
    }
    msg.raw_result = raw.map(|r| r.0);
    if let Some(Raw(raw)) = raw.filter(|_| opts.payloads) {
        msg.result = Some(if raw.len() <= PAYLOAD_LIMIT {
            Cow::Borrowed(raw)
        } else {
            Cow::Owned(format!("{{\"mcptap.truncated\":{}}}", raw.len()))
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(s: &str) -> Message<'_> {
        match parse(s.as_bytes()).unwrap() {
            Parsed::One(m) => m,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn requests_in_every_sdk_key_order() {
        // Node SDK / mcp 1.x order, then mcp 2.x order.
        let a = one(
            r#"{"method":"tools/call","params":{"name":"echo","arguments":{"x":1}},"jsonrpc":"2.0","id":3}"#,
        );
        let b =
            one(r#"{"jsonrpc":"2.0","id":"s-3","method":"tools/call","params":{"name":"echo"}}"#);
        assert_eq!(a.kind, Kind::Request);
        assert_eq!(a.id.as_deref(), Some("3"));
        assert_eq!(a.target, Target::Tool("echo".into()));
        assert_eq!(b.id.as_deref(), Some("\"s-3\""));
        assert_eq!(b.method.as_deref(), Some("tools/call"));
        let r = one(
            r#"{"jsonrpc":"2.0","id":0,"method":"resources/read","params":{"uri":"file:///a b"}}"#,
        );
        assert_eq!(r.target, Target::Resource("file:///a b".into()));
        let p = one(
            r#"{"jsonrpc":"2.0","id":1,"method":"prompts/get","params":{"name":"greet","arguments":{}}}"#,
        );
        assert_eq!(p.target, Target::Prompt("greet".into()));
    }

    #[test]
    fn responses_errors_and_tool_errors() {
        let ok = one(
            r#"{"result":{"content":[{"type":"text","text":"hi"}],"isError":false},"jsonrpc":"2.0","id":3}"#,
        );
        assert_eq!((ok.kind, ok.is_error), (Kind::Response, false));
        let te = one(r#"{"jsonrpc":"2.0","id":3,"result":{"content":[],"isError":true}}"#);
        assert!(te.is_error);
        let e = one(
            r#"{"jsonrpc":"2.0","id":4,"error":{"code":-32602,"message":"Unknown tool: nope"}}"#,
        );
        assert_eq!((e.kind, e.error_code), (Kind::Error, Some(-32602)));
        let null_id =
            one(r#"{"jsonrpc":"2.0","id":null,"error":{"code":-32700,"message":"Parse error"}}"#);
        assert_eq!(null_id.id, None);
        assert_eq!(null_id.error_code, Some(-32700));
    }

    #[test]
    fn initialize_and_2026_meta_name_both_ends() {
        let init = one(
            r#"{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"mcp","version":"0.1.0"}}}"#,
        );
        assert_eq!(init.protocol_version.as_deref(), Some("2025-06-18"));
        assert_eq!(init.peer_info.as_ref().unwrap().name, "mcp");
        assert!(!init.peer_info_is_server);
        let res = one(
            r#"{"jsonrpc":"2.0","id":0,"result":{"protocolVersion":"2025-06-18","capabilities":{},"serverInfo":{"name":"demo","version":"1.2"}}}"#,
        );
        assert!(res.peer_info_is_server);
        assert_eq!(res.peer_info.unwrap().version, "1.2");
        let meta = one(
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"t","_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientInfo":{"name":"c","version":"2"}}}}"#,
        );
        assert_eq!(meta.protocol_version.as_deref(), Some("2026-07-28"));
        assert_eq!(meta.peer_info.unwrap().name, "c");
        let discover = one(
            r#"{"jsonrpc":"2.0","id":1,"result":{"capabilities":{},"resultType":"complete","supportedVersions":["2026-07-28"],"_meta":{"io.modelcontextprotocol/serverInfo":{"name":"mcptap-fixture","version":""}}}}"#,
        );
        assert!(discover.peer_info_is_server);
        assert_eq!(discover.peer_info.unwrap().name, "mcptap-fixture");
    }

    #[test]
    fn notifications_batches_and_cancellation() {
        let n = one(
            r#"{"method":"notifications/cancelled","params":{"requestId":7,"reason":"x"},"jsonrpc":"2.0"}"#,
        );
        assert_eq!(n.kind, Kind::Notification);
        assert_eq!(n.cancels.as_deref(), Some("7"));
        match parse(br#"[{"jsonrpc":"2.0","id":1,"method":"ping"},{"jsonrpc":"2.0","method":"notifications/initialized"}]"#).unwrap() {
            Parsed::Batch(v) => {
                assert_eq!(v.len(), 2);
                assert_eq!(v[1].kind, Kind::Notification);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bad_input_is_classified_not_crashed() {
        assert!(matches!(parse(b"hello world"), Err(ParseError::NotJson(_))));
        assert!(matches!(parse(b"{\"a\":"), Err(ParseError::NotJson(_))));
        assert_eq!(
            parse(br#"{"level":"info","msg":"started"}"#),
            Err(ParseError::NotJsonRpc)
        );
        assert_eq!(
            parse(br#"{"jsonrpc":"1.0","id":1,"method":"x"}"#),
            Err(ParseError::NotJsonRpc)
        );
        assert_eq!(parse(b"42"), Err(ParseError::NotJsonRpc));
        assert_eq!(
            parse(br#"{"jsonrpc":"2.0","id":1}"#),
            Err(ParseError::Invalid("neither method, result nor error"))
        );
        assert!(matches!(parse(b"[]"), Err(ParseError::Invalid(_))));
        assert!(matches!(parse(b"\xff\xfe{}"), Err(ParseError::NotJson(_))));
        assert!(matches!(
            parse(b"{\"jsonrpc\":\"2.0\",\"method\":\"\xff\"}"),
            Err(ParseError::NotJson(_))
        ));
        // 100k levels of nesting: skipped without recursion (params are never materialised),
        // so no stack overflow; nested where serde would recurse, an error.
        let deep = format!(
            "{{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"x\",\"params\":{}{}}}",
            "[".repeat(100_000),
            "]".repeat(100_000)
        );
        assert!(
            matches!(parse(deep.as_bytes()), Ok(Parsed::One(m)) if m.method.as_deref() == Some("x"))
        );
        let deep_info = format!(
            "{{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"initialize\",\"params\":{{\"clientInfo\":{{\"name\":{}1{}}}}}}}",
            "[".repeat(100_000),
            "]".repeat(100_000)
        );
        assert!(parse(deep_info.as_bytes()).is_ok());
        let deep_batch = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert!(parse(deep_batch.as_bytes()).is_err());
        // A mid-message fragment, as after a hole in the stream.
        assert!(parse(br#""x":1}}"#).is_err());
    }

    /// The one-pass read must say exactly what the two-pass read says, whatever the shape of
    /// the params and result: pieces of messages, well and badly typed, combined at random and
    /// then cut and bitten at random.
    #[test]
    fn one_pass_and_two_pass_reads_agree() {
        const VALUES: &[&str] = &[
            "null",
            "1",
            "\"x\"",
            "[]",
            "[\"echo\"]",
            "{}",
            "true",
            "\"a\\\"b\"",
            "{\"a\":[1,{}]}",
        ];
        const FIELDS: &[&str] = &[
            "\"jsonrpc\":\"2.0\"",
            "\"jsonrpc\":\"2\\u002e0\"",
            "\"jsonrpc\":2",
            "\"id\":7",
            "\"id\":\"s-1\"",
            "\"method\":\"tools/call\"",
            "\"method\":\"initialize\"",
            "\"method\":\"notifications/cancelled\"",
            "\"params\":{\"name\":\"echo\",\"arguments\":{\"x\":1},\"_meta\":{\"traceparent\":\"t\"}}",
            "\"params\":{\"protocolVersion\":\"2025-06-18\",\"clientInfo\":{\"name\":\"c\",\"version\":\"1\"}}",
            "\"params\":{\"requestId\":3}",
            "\"params\":{\"name\":VALUE}",
            "\"params\":VALUE",
            "\"result\":{\"content\":[{\"type\":\"text\",\"text\":\"hi\"}],\"isError\":VALUE}",
            "\"result\":{\"tools\":[{\"name\":\"echo\",\"inputSchema\":VALUE}]}",
            "\"result\":{\"serverInfo\":VALUE,\"protocolVersion\":\"2025-06-18\"}",
            "\"result\":VALUE",
            "\"error\":{\"code\":-32602,\"message\":\"bad\"}",
            "\"error\":VALUE",
            "\"extra\":VALUE",
        ];
        random_messages(VALUES, FIELDS, 200_000, |text| {
            let opts = Options::default();
            assert_eq!(parse_one(text, opts), parse_two_pass(text, opts), "{text}");
        });
    }

    /// Messages made at random from `fields` (each `VALUE` in them one of `values`), then cut
    /// or bitten at random; `check` sees each that is still UTF-8.
    fn random_messages(
        values: &[&str],
        fields: &[&str],
        count: usize,
        mut check: impl FnMut(&str),
    ) {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move |n: usize| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % n as u64) as usize
        };
        for _ in 0..count {
            let mut text = String::from("{");
            for i in 0..1 + next(5) {
                if i > 0 {
                    text.push(',');
                }
                let value = values[next(values.len())];
                text.push_str(&fields[next(fields.len())].replace("VALUE", value));
            }
            text.push('}');
            let mut bytes = text.into_bytes();
            match next(4) {
                0 => bytes.truncate(next(bytes.len() + 1)),
                1 => {
                    let i = next(bytes.len());
                    bytes[i] = b"{}[],:\"1 "[next(9)];
                }
                _ => {}
            }
            if let Ok(text) = std::str::from_utf8(&bytes) {
                check(text);
            }
        }
    }

    /// The scan answers exactly as serde_json does whenever it answers: on every field
    /// mcptap reads, well and badly typed, duplicated, null, escaped (keys too), with huge
    /// numbers, deep nesting, stray whitespace and control characters, cut and bitten.
    #[test]
    fn the_scan_reads_as_serde_json_does() {
        const VALUES: &[&str] = &[
            "null",
            "1",
            "-0",
            "1.5e3",
            "123456789012345678901234567890",
            "-9223372036854775808",
            "\"x\"",
            "\"\\u00e9\\n\\/\"",
            "\"\\ud83d\\ude00\"",
            "\"\\ud800\"",
            "\"\\x\"",
            "\"tab\there\"",
            "[]",
            "{}",
            "true",
            "false",
            " { \"name\" : \"n\" , \"version\" : \"v\" } ",
            "[\"n\",\"v\"]",
            "{\"a\":[1,{\"b\":[[[[[[[[[[[[]]]]]]]]]]]]}]}",
            "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]",
            "01",
            "tru",
        ];
        const FIELDS: &[&str] = &[
            "\"jsonrpc\":\"2.0\"",
            "\"jsonrpc\":\"2\\u002e0\"",
            "\"json\\u0072pc\":\"2.0\"",
            "\"jsonrpc\":VALUE",
            "\"id\":7",
            "\"id\":VALUE",
            " \"method\" : \"tools/call\" ",
            "\"method\":\"initialize\"",
            "\"method\":\"notifications/cancelled\"",
            "\"method\":VALUE",
            "\"params\":{\"name\":\"echo\",\"arguments\":{\"x\":VALUE},\"_meta\":{\"traceparent\":VALUE,\"tracestate\":\"s\"}}",
            "\"params\":{\"protocolVersion\":VALUE,\"clientInfo\":VALUE}",
            "\"params\":{\"_meta\":{\"io.modelcontextprotocol/protocolVersion\":\"2026-07-28\",\"io.modelcontextprotocol/clientInfo\":VALUE}}",
            "\"params\":{\"requestId\":VALUE,\"uri\":VALUE}",
            "\"params\":{\"name\":VALUE,\"name\":\"x\"}",
            "\"params\":{\"na\\u006de\":\"x\"}",
            "\"params\":VALUE",
            "\"result\":{\"content\":[{\"type\":\"text\",\"text\":VALUE}],\"isError\":VALUE}",
            "\"result\":{\"content\":VALUE,\"structuredContent\":VALUE}",
            "\"result\":{\"contents\":[{\"blob\":VALUE},VALUE]}",
            "\"result\":{\"tools\":[{\"name\":\"echo\",\"description\":VALUE,\"inputSchema\":VALUE}]}",
            "\"result\":{\"tools\":[{\"name\":VALUE}]}",
            "\"result\":{\"serverInfo\":VALUE,\"protocolVersion\":\"2025-06-18\"}",
            "\"result\":{\"_meta\":{\"io.modelcontextprotocol/serverInfo\":VALUE}}",
            "\"result\":VALUE",
            "\"error\":{\"code\":-32602,\"message\":\"bad \\\"x\\\"\"}",
            "\"error\":{\"code\":VALUE,\"message\":VALUE}",
            "\"error\":VALUE",
            "\"extra\":VALUE",
        ];
        let (mut all, mut answered) = (0, 0);
        random_messages(VALUES, FIELDS, 300_000, |text| {
            all += 1;
            answered += check_scan(text.as_bytes()) as u32;
        });
        // Both ways are exercised: most of these messages are broken on purpose, so the scan
        // answers for a few percent (some 20,000), serde_json for the rest.
        assert!(
            answered > all / 25 && answered < all / 2,
            "{answered} of {all}"
        );
    }

    /// The scan itself answers the messages every SDK sends, not serde_json behind it.
    #[test]
    fn the_scan_reads_ordinary_messages_itself() {
        for text in [
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"text":"x\"y"}}}"#,
            r#"{"method":"notifications/cancelled","params":{"requestId":7},"jsonrpc":"2.0"}"#,
            r#"{"jsonrpc":"2.0","id":"a","result":{"content":[{"type":"text","text":"ok"}],"isError":false}}"#,
            r#"{"jsonrpc":"2.0","id":null,"error":{"code":-32700,"message":"Parse error"}}"#,
            r#"{"jsonrpc":"2.0","id":0,"result":{"tools":[{"name":"echo","inputSchema":{"type":"object"}}]}}"#,
            "{\"jsonrpc\":\"2.0\",\"method\":\"x\"}  \r\n",
        ] {
            assert!(check_scan(text.as_bytes()), "{text}");
        }
        for refused in [
            r#"{"jsonrpc":"2.0","jsonrpc":"2.0","method":"x"}"#,
            r#"{"json\u0072pc":"2.0","method":"x"}"#,
            r#"{"jsonrpc":"2.0","method":"x","params":{"name":null}}"#,
            r#"{"jsonrpc":"2.0","id":1,"error":{"code":1.5}}"#,
            r#"{"jsonrpc":"2.0","id":1,"error":["x"]}"#,
            r#"{"jsonrpc":"2.0","method":"x"} x"#,
        ] {
            assert!(!check_scan(refused.as_bytes()), "{refused}");
        }
    }
}

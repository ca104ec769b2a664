//! What the four API readers share: a shallow JSON reader that borrows from the body
//! ([`Obj`], [`List`], [`Body`]), the fingerprints ([`Fp`] and the part hashes), the tool
//! calls a reply is gathering ([`Calls`]), its generated text ([`Gen`]), error bodies and stop
//! reasons, and what `--payloads` keeps.
//!
//! The reader never builds a `serde_json::Value`: each level of a body is one object whose
//! members stay raw text until a reader asks for one, so a request of megabytes costs a few
//! passes over its bytes and allocations per message, not per value.

use std::borrow::Cow;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;
use xxhash_rust::xxh3::{Xxh3, xxh3_64};

use super::{NotThisApi, Options, api_error, cut, error_kind};
use crate::llm::{ApiError, MAX_PAYLOAD_TEXT, Response, Stop, ToolCall, Usage};
use crate::mcp::privacy;
use crate::wire::json::canonical_hash;

/// A string, borrowed from the JSON text unless it had escapes.
struct Str<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Str<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Str<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Str<'de>, E> {
                Ok(Str(Cow::Borrowed(s)))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Str<'de>, E> {
                Ok(Str(Cow::Owned(s.to_owned())))
            }
        }
        d.deserialize_str(V)
    }
}

/// The visitor methods for the scalars a lenient reader takes and drops.
macro_rules! drop_scalars {
    ($out:expr) => {
        fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
            Ok($out)
        }
        fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
            Ok($out)
        }
        fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
            Ok($out)
        }
        fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
            Ok($out)
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok($out)
        }
    };
}

/// One JSON object's members, each value left as its raw text: one level of a body, read
/// without building anything below it. Anything that is not an object reads as an empty one
/// (a malformed part of a body is skipped, not fatal).
#[derive(Debug, Default)]
pub(crate) struct Obj<'a> {
    fields: Vec<(Cow<'a, str>, &'a RawValue)>,
}

struct ObjVisitor;

impl<'de> Visitor<'de> for ObjVisitor {
    type Value = Obj<'de>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }
    drop_scalars!(Obj::default());
    fn visit_str<E: de::Error>(self, _: &str) -> Result<Obj<'de>, E> {
        Ok(Obj::default())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Obj<'de>, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Obj::default())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Obj<'de>, A::Error> {
        let mut fields = Vec::new();
        while let Some(Str(k)) = map.next_key::<Str<'de>>()? {
            fields.push((k, map.next_value::<&'de RawValue>()?));
        }
        Ok(Obj { fields })
    }
}

impl<'de> Deserialize<'de> for Obj<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ObjVisitor)
    }
}

impl<'a> Obj<'a> {
    /// The object `text` holds; `None` when it is not one.
    pub fn parse(text: &'a str) -> Option<Self> {
        if !text.trim_start().starts_with('{') {
            return None;
        }
        serde_json::from_str(text).ok()
    }

    /// The object a raw value holds; `None` when it is not one.
    pub fn of(raw: &'a RawValue) -> Option<Self> {
        Self::parse(raw.get())
    }

    /// The raw value of member `key` (the last, as most servers read duplicates); `None`
    /// when absent or `null`.
    pub fn raw(&self, key: &str) -> Option<&'a RawValue> {
        self.fields
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| *v)
            .filter(|v| v.get() != "null")
    }

    /// The first of `keys` present: for APIs that take both spellings (Gemini's camelCase
    /// and snake_case).
    pub fn raw_any(&self, keys: &[&str]) -> Option<&'a RawValue> {
        keys.iter().find_map(|k| self.raw(k))
    }

    /// Member `key` when it is a string.
    pub fn str(&self, key: &str) -> Option<Cow<'a, str>> {
        str_of(self.raw(key)?)
    }

    /// Member `key` when it is a non-negative integer.
    pub fn u64(&self, key: &str) -> Option<u64> {
        serde_json::from_str(self.raw(key)?.get()).ok()
    }

    /// Member `key` when it is a boolean.
    pub fn bool(&self, key: &str) -> Option<bool> {
        serde_json::from_str(self.raw(key)?.get()).ok()
    }

    /// Member `key` when it is an object.
    pub fn obj(&self, key: &str) -> Option<Obj<'a>> {
        Obj::of(self.raw(key)?)
    }

    /// Member `key` read as a [`List`].
    pub fn list(&self, key: &str) -> List<'a> {
        self.raw(key).map_or(List::Other, List::of)
    }

    /// The objects of array member `key`; empty when it is not an array.
    pub fn items(&self, key: &str) -> Vec<Obj<'a>> {
        match self.list(key) {
            List::Items(v) => v,
            _ => Vec::new(),
        }
    }

    /// A hash of the object's members but `skip`, independent of their order and of
    /// whitespace: what identifies a block mcptap does not read further.
    pub fn hash_except(&self, skip: &[&str]) -> u64 {
        let (mut sum, mut n) = (0u64, 0u64);
        for (k, v) in &self.fields {
            if !skip.contains(&k.as_ref()) {
                sum = sum.wrapping_add(Fp::new(b'k').str(k).u64(value_hash(v)).finish());
                n += 1;
            }
        }
        Fp::new(b'o').u64(n).u64(sum).finish()
    }
}

/// A raw value's string; `None` when it is not a string.
pub(crate) fn str_of(raw: &RawValue) -> Option<Cow<'_, str>> {
    serde_json::from_str::<Str>(raw.get()).ok().map(|s| s.0)
}

/// A value that APIs give as a list of objects, or as a plain string (content `"hi"` for
/// `[{"type": "text", "text": "hi"}]`, Responses' `input`).
#[derive(Debug)]
pub(crate) enum List<'a> {
    /// An array; elements that are not objects read as empty objects.
    Items(Vec<Obj<'a>>),
    /// A string.
    Text(Cow<'a, str>),
    /// Anything else.
    Other,
}

struct ListVisitor;

impl<'de> Visitor<'de> for ListVisitor {
    type Value = List<'de>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }
    drop_scalars!(List::Other);
    fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<List<'de>, E> {
        Ok(List::Text(Cow::Borrowed(s)))
    }
    fn visit_str<E: de::Error>(self, s: &str) -> Result<List<'de>, E> {
        Ok(List::Text(Cow::Owned(s.to_owned())))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<List<'de>, A::Error> {
        let mut items = Vec::new();
        while let Some(o) = seq.next_element::<Obj<'de>>()? {
            items.push(o);
        }
        Ok(List::Items(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<List<'de>, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(List::Other)
    }
}

impl<'de> Deserialize<'de> for List<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ListVisitor)
    }
}

impl<'a> List<'a> {
    /// The list a raw value holds.
    pub fn of(raw: &'a RawValue) -> Self {
        serde_json::from_str(raw.get()).unwrap_or(List::Other)
    }
}

/// A request body: its top-level members, with the one big list (`messages`, `input`,
/// `contents`) read into objects in the same pass.
pub(crate) struct Body<'a> {
    /// The other members.
    pub obj: Obj<'a>,
    /// The list member, if present.
    pub list: Option<List<'a>>,
}

struct BodySeed(&'static str);

impl<'de> DeserializeSeed<'de> for BodySeed {
    type Value = Body<'de>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Body<'de>, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for BodySeed {
    type Value = Body<'de>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Body<'de>, A::Error> {
        let mut body = Body {
            obj: Obj::default(),
            list: None,
        };
        while let Some(Str(k)) = map.next_key::<Str<'de>>()? {
            if k == self.0 {
                body.list = Some(map.next_value::<List<'de>>()?);
            } else {
                body.obj
                    .fields
                    .push((k, map.next_value::<&'de RawValue>()?));
            }
        }
        Ok(body)
    }
}

impl<'a> Body<'a> {
    /// Parse a request body whose big list is member `list`.
    pub fn parse(body: &'a [u8], list: &'static str) -> Result<Self, NotThisApi> {
        let text = std::str::from_utf8(body).map_err(|_| NotThisApi::NotJson)?;
        if !text.trim_start().starts_with('{') {
            return Err(NotThisApi::NotJson);
        }
        let mut de = serde_json::Deserializer::from_str(text);
        let body = BodySeed(list)
            .deserialize(&mut de)
            .map_err(|_| NotThisApi::NotJson)?;
        de.end().map_err(|_| NotThisApi::NotJson)?;
        Ok(body)
    }
}

/// A reply body or an event's data as an object; `None` when it is not one.
pub(crate) fn obj_of(bytes: &[u8]) -> Option<Obj<'_>> {
    Obj::parse(std::str::from_utf8(bytes).ok()?)
}

/// A fingerprint under construction: xxh3 over tagged, length-prefixed pieces, in order.
pub(crate) struct Fp(Xxh3);

impl Fp {
    /// A fingerprint of a thing of kind `tag`.
    pub fn new(tag: u8) -> Self {
        let mut h = Xxh3::new();
        h.update(&[tag]);
        Fp(h)
    }

    /// Add a string.
    pub fn str(&mut self, s: &str) -> &mut Self {
        self.0.update(&(s.len() as u64).to_le_bytes());
        self.0.update(s.as_bytes());
        self
    }

    /// Add a string that may be absent (absent and empty differ).
    pub fn opt(&mut self, s: Option<&str>) -> &mut Self {
        match s {
            None => self.0.update(&[0]),
            Some(s) => {
                self.0.update(&[1]);
                self.str(s);
            }
        }
        self
    }

    /// Add a number (or another hash).
    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.0.update(&v.to_le_bytes());
        self
    }

    /// The fingerprint.
    pub fn finish(&self) -> u64 {
        self.0.digest()
    }
}

/// The hash of a text part: its decoded text, so two escapings of it agree.
pub(crate) fn text_hash(s: &str) -> u64 {
    Fp::new(b't').str(s).finish()
}

/// The hash of a raw JSON value, canonical (key order and whitespace do not count).
pub(crate) fn value_hash(raw: &RawValue) -> u64 {
    canonical_hash(raw.get()).unwrap_or_else(|| xxh3_64(raw.get().as_bytes()))
}

/// The hash of arguments given as a JSON string (Chat Completions, Responses): the canonical
/// hash of its decoded text, or of the text itself when that is not JSON.
pub(crate) fn json_text_hash(s: &str) -> u64 {
    canonical_hash(s).unwrap_or_else(|| xxh3_64(s.as_bytes()))
}

/// Arguments given as a JSON string (Chat Completions, Responses), or by some clients as
/// the object itself: their text.
pub(crate) fn args_text(raw: Option<&RawValue>) -> Cow<'_, str> {
    match raw {
        None => Cow::Borrowed(""),
        Some(r) => str_of(r).unwrap_or(Cow::Borrowed(r.get())),
    }
}

/// The hash of arguments given as a JSON string, for a message fingerprint.
pub(crate) fn string_args_hash(raw: Option<&RawValue>) -> u64 {
    raw.map_or(0, |r| json_text_hash(&args_text(Some(r))))
}

/// The hash of content given as a plain string: the same as one text part.
pub(crate) fn string_content_hash(s: &str) -> u64 {
    Fp::new(b'p').u64(text_hash(s)).finish()
}

/// The hash of content given as a string or a list of parts (a string is one text part),
/// each part hashed by `part`.
pub(crate) fn content_hash(content: Option<&RawValue>, mut part: impl FnMut(&Obj) -> u64) -> u64 {
    let mut fp = Fp::new(b'p');
    if let Some(raw) = content {
        match List::of(raw) {
            List::Text(t) => return string_content_hash(&t),
            List::Items(parts) => {
                for p in &parts {
                    fp.u64(part(p));
                }
            }
            List::Other => {
                fp.u64(value_hash(raw));
            }
        }
    }
    fp.finish()
}

/// The text of content given as a string or as parts, for `--payloads`: the string, or the
/// parts' `text_of` joined by newlines, gathered into `out`.
pub(crate) fn content_text(
    content: Option<&RawValue>,
    out: &mut Gen,
    mut text_of: impl FnMut(&Obj, &mut Gen),
) {
    match content.map(List::of) {
        Some(List::Text(t)) => out.part(&t),
        Some(List::Items(parts)) => parts.iter().for_each(|p| text_of(p, out)),
        _ => {}
    }
}

/// An OpenAI content part's hash: `text`, `input_text`, `output_text` and `refusal` parts by
/// their text, any other part by all its members but `cache_control` (which gateways such as
/// OpenRouter pass on to Anthropic models).
pub(crate) fn part_hash(p: &Obj) -> u64 {
    match p.str("type").as_deref() {
        Some("text" | "input_text" | "output_text") => {
            text_hash(&p.str("text").unwrap_or_default())
        }
        Some("refusal") => text_hash(&p.str("refusal").unwrap_or_default()),
        _ => p.hash_except(&["cache_control"]),
    }
}

/// An OpenAI content part's text, for `--payloads`.
pub(crate) fn part_text(p: &Obj, out: &mut Gen) {
    match p.str("type").as_deref() {
        Some("text" | "input_text" | "output_text") => out.part(&p.str("text").unwrap_or_default()),
        Some("refusal") => out.part(&p.str("refusal").unwrap_or_default()),
        _ => {}
    }
}

/// The most text gathered for `--payloads` before redaction (room for the redaction to
/// shorten it to [`MAX_PAYLOAD_TEXT`]).
const KEEP_TEXT: usize = 2 * MAX_PAYLOAD_TEXT;

/// Generated text: counted always, kept (up to a bound) only with `--payloads`.
#[derive(Debug)]
pub(crate) struct Gen {
    /// Bytes of text and reasoning.
    pub bytes: u64,
    keep: Option<String>,
}

impl Gen {
    /// Count text, and keep it when `opts` asks for payloads.
    pub fn new(opts: Options) -> Self {
        Gen {
            bytes: 0,
            keep: opts.payloads.then(String::new),
        }
    }

    /// Generated answer text: counted and kept.
    pub fn text(&mut self, s: &str) {
        self.bytes += s.len() as u64;
        if let Some(k) = &mut self.keep {
            let room = KEEP_TEXT.saturating_sub(k.len());
            k.push_str(cut(s, room));
        }
    }

    /// Reasoning (thinking) text: counted, not kept (the completion is the answer).
    pub fn reasoning(&mut self, s: &str) {
        self.bytes += s.len() as u64;
    }

    /// A part of a prompt: kept, after a newline when it is not the first.
    pub fn part(&mut self, s: &str) {
        if self.keep.as_ref().is_some_and(|k| !k.is_empty()) {
            self.text("\n");
        }
        self.text(s);
    }

    /// Bytes held.
    pub fn held(&self) -> usize {
        self.keep.as_ref().map_or(0, String::len)
    }

    /// The kept text, redacted and cut; `None` without payloads or text.
    pub fn payload(&self) -> Option<String> {
        self.keep
            .as_deref()
            .filter(|t| !t.is_empty())
            .map(payload_text)
    }
}

/// A plain string with secrets redacted. `mcp::privacy` redacts JSON documents; a string is
/// handed to it as a JSON string, which it scrubs of secret-shaped parts (or, when the text
/// is itself a JSON document, redacts by key).
pub(crate) fn redact_text(s: &str) -> String {
    let json = serde_json::to_string(s).unwrap_or_default();
    match privacy::redact(&json) {
        serde_json::Value::String(t) => t,
        _ => privacy::REDACTED.to_string(),
    }
}

/// Text kept with `--payloads`: redacted, then cut to [`MAX_PAYLOAD_TEXT`].
pub(crate) fn payload_text(s: &str) -> String {
    cut(&redact_text(s), MAX_PAYLOAD_TEXT).to_string()
}

/// Arguments kept with `--payloads`: the redacted value when they are one JSON value of at
/// most [`MAX_PAYLOAD_TEXT`] bytes, else their text, redacted and cut, as a string.
pub(crate) fn payload_args(text: &str) -> serde_json::Value {
    if text.len() <= MAX_PAYLOAD_TEXT && canonical_hash(text).is_some() {
        privacy::redact(text)
    } else {
        serde_json::Value::String(payload_text(cut(text, KEEP_TEXT)))
    }
}

/// Most tool calls kept per reply; later ones are dropped.
pub(crate) const MAX_CALLS: usize = 128;
/// Most argument text kept per call until it is hashed; past it bytes are only counted and
/// the call has no hash.
pub(crate) const MAX_ARGS: usize = 1024 * 1024;

/// How a call's arguments are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ArgsKind {
    /// A JSON value (function tools).
    Json,
    /// Free text (custom tools): hashed as the JSON string that holds it.
    Text,
}

/// A tool call from a whole reply, its arguments complete: an empty text stands for `{}`,
/// which is how a stream ends a call whose tool takes no arguments.
pub(crate) fn whole_call(
    mut call: ToolCall,
    args: &str,
    kind: ArgsKind,
    opts: Options,
) -> ToolCall {
    let args = if args.is_empty() && kind == ArgsKind::Json {
        "{}"
    } else {
        args
    };
    call.args_bytes = args.len() as u64;
    call.args_hash = args_hash(args, kind);
    if opts.payloads {
        call.arguments = Some(match kind {
            ArgsKind::Json => payload_args(args),
            ArgsKind::Text => serde_json::Value::String(payload_text(cut(args, KEEP_TEXT))),
        });
    }
    call
}

fn args_hash(args: &str, kind: ArgsKind) -> Option<u64> {
    match kind {
        ArgsKind::Json => canonical_hash(args),
        ArgsKind::Text => canonical_hash(&serde_json::to_string(args).ok()?),
    }
}

/// A call being gathered from a stream.
#[derive(Debug)]
struct Open {
    /// The stream's key for it (block index, tool call index, output index).
    key: u64,
    /// The Responses API's item id.
    item: Option<String>,
    call: ToolCall,
    kind: ArgsKind,
    text: String,
    /// The text passed [`MAX_ARGS`]: only counted.
    over: bool,
    closed: bool,
}

impl Open {
    fn close(&mut self, complete: bool, opts: Options) {
        if self.closed {
            return;
        }
        self.closed = true;
        let text = std::mem::take(&mut self.text);
        if self.over {
            return;
        }
        if complete {
            self.call = whole_call(std::mem::take(&mut self.call), &text, self.kind, opts);
        } else {
            // Cut off: hashed only if what came is one whole value.
            self.call.args_hash = canonical_hash(&text).filter(|_| self.kind == ArgsKind::Json);
            if opts.payloads {
                let kept = payload_text(cut(&text, KEEP_TEXT));
                self.call.arguments = Some(serde_json::Value::String(kept));
            }
        }
    }
}

/// The tool calls of one streamed reply, in the order they started: each call's argument
/// text is held (at most [`MAX_ARGS`]) until it is complete and hashed.
#[derive(Debug)]
pub(crate) struct Calls {
    list: Vec<Open>,
    opts: Options,
}

impl Calls {
    /// No calls yet.
    pub fn new(opts: Options) -> Self {
        Calls {
            list: Vec::new(),
            opts,
        }
    }

    /// A call starts; false when [`MAX_CALLS`] are kept already.
    pub fn start(&mut self, key: u64, item: Option<&str>, call: ToolCall, kind: ArgsKind) -> bool {
        if self.list.len() >= MAX_CALLS {
            return false;
        }
        self.list.push(Open {
            key,
            item: item.map(str::to_string),
            call,
            kind,
            text: String::new(),
            over: false,
            closed: false,
        });
        true
    }

    /// A whole call (Gemini sends each call in one piece).
    pub fn add(&mut self, call: ToolCall) {
        if self.list.len() < MAX_CALLS {
            self.list.push(Open {
                key: u64::MAX,
                item: None,
                call,
                kind: ArgsKind::Json,
                text: String::new(),
                over: false,
                closed: true,
            });
        }
    }

    /// The open call with `key` (or, without one, item id `item`).
    fn find(&mut self, key: Option<u64>, item: Option<&str>) -> Option<&mut Open> {
        self.list.iter_mut().rev().find(|o| {
            !o.closed
                && match key {
                    Some(k) => o.key == k,
                    None => item.is_some() && o.item.as_deref() == item,
                }
        })
    }

    /// Whether an open call has `key`.
    pub fn is_open(&mut self, key: u64) -> bool {
        self.find(Some(key), None).is_some()
    }

    /// The key of the open call with item id `item`.
    pub fn key_of(&mut self, item: &str) -> Option<u64> {
        self.find(None, Some(item)).map(|o| o.key)
    }

    /// The key of the last call that started, open or not.
    pub fn last_key(&self) -> Option<u64> {
        self.list.last().map(|o| o.key)
    }

    /// A piece of an open call's arguments; false when no open call matches.
    pub fn append(&mut self, key: Option<u64>, item: Option<&str>, piece: &str) -> bool {
        let Some(o) = self.find(key, item) else {
            return false;
        };
        o.call.args_bytes += piece.len() as u64;
        if o.over {
            return true;
        }
        if o.text.len() + piece.len() > MAX_ARGS {
            o.over = true;
            o.text = String::new();
        } else {
            o.text.push_str(piece);
        }
        true
    }

    /// An open call's whole arguments, as the API repeats them at its end: they replace the
    /// pieces, and the call is complete.
    pub fn complete(&mut self, key: Option<u64>, item: Option<&str>, whole: Option<&str>) {
        let opts = self.opts;
        let Some(o) = self.find(key, item) else {
            return;
        };
        if let Some(whole) = whole {
            o.text.clear();
            o.over = whole.len() > MAX_ARGS;
            o.call.args_bytes = whole.len() as u64;
            if !o.over {
                o.text.push_str(whole);
            }
        }
        o.close(true, opts);
    }

    /// Every open call is complete (the reply said why it stopped).
    pub fn complete_all(&mut self) {
        for o in &mut self.list {
            o.close(true, self.opts);
        }
    }

    /// Bytes of argument text held.
    pub fn held(&self) -> usize {
        self.list.iter().map(|o| o.text.len()).sum()
    }

    /// The calls; those still open were cut off.
    pub fn finish(mut self) -> Vec<ToolCall> {
        for o in &mut self.list {
            o.close(false, self.opts);
        }
        self.list.into_iter().map(|o| o.call).collect()
    }
}

/// A tool call's identity, its arguments still to come.
pub(crate) fn call(id: Option<Cow<str>>, name: Option<Cow<str>>, ns: Option<Cow<str>>) -> ToolCall {
    ToolCall {
        id: id.map(Cow::into_owned),
        name: name.map(Cow::into_owned).unwrap_or_default(),
        namespace: ns.map(Cow::into_owned),
        ..ToolCall::default()
    }
}

/// Whether an error message says the prompt did not fit: Anthropic's "prompt is too long",
/// OpenAI's "maximum context length" / "exceeds the context window", Gemini's "input token
/// count ... exceeds the maximum".
pub(crate) fn says_too_long(message: &str) -> bool {
    let m = cut(message, 1024).to_ascii_lowercase();
    m.contains("prompt is too long")
        || m.contains("maximum context length")
        || m.contains("context window")
        || m.contains("context length")
        || (m.contains("input token count") && m.contains("exceeds"))
}

/// The error an error object names: its code from the first of `code_keys` that is a
/// string, its kind from that, the status and the message (which is not kept).
pub(crate) fn error_of(status: u16, err: Option<&Obj>, code_keys: &[&str]) -> ApiError {
    let code = err.and_then(|e| code_keys.iter().find_map(|k| e.str(k)));
    let long = err
        .and_then(|e| e.str("message"))
        .is_some_and(|m| says_too_long(&m));
    api_error(error_kind(status, code.as_deref(), long), code.as_deref())
}

/// What a reply body that is not JSON says: an error when its status is.
pub(crate) fn not_json(status: u16) -> Response {
    Response {
        error: (status >= 400).then(|| api_error(error_kind(status, None, false), None)),
        ..Response::default()
    }
}

/// A streamed reply once its events are in: the tool calls completed, the stop reason
/// normalised, the generated text counted (and kept with payloads).
pub(crate) fn finish_reply(mut r: Response, text: &Gen, calls: Calls) -> Response {
    r.tool_calls = calls.finish();
    r.stop = stop_of(r.finish_reason.as_deref(), !r.tool_calls.is_empty());
    r.text_bytes = text.bytes;
    r.completion = text.payload();
    r
}

/// The provider's stop reason as kept: at most 64 bytes.
pub(crate) fn reason(s: &str) -> String {
    cut(s, 64).to_string()
}

/// The stop reason normalised; a reply with tool calls stopped for them, whatever it says.
pub(crate) fn stop_of(reason: Option<&str>, tool_calls: bool) -> Stop {
    if tool_calls {
        return Stop::ToolUse;
    }
    match reason.unwrap_or("") {
        "end_turn" | "stop" | "stop_sequence" | "STOP" | "completed" => Stop::EndTurn,
        "tool_use" | "tool_calls" | "function_call" => Stop::ToolUse,
        "max_tokens" | "length" | "MAX_TOKENS" | "incomplete:max_output_tokens" => Stop::MaxTokens,
        "model_context_window_exceeded" => Stop::ContextOverflow,
        "refusal"
        | "content_filter"
        | "incomplete:content_filter"
        | "SAFETY"
        | "RECITATION"
        | "PROHIBITED_CONTENT"
        | "BLOCKLIST"
        | "SPII"
        | "IMAGE_SAFETY" => Stop::Filtered,
        _ => Stop::Other,
    }
}

/// Where a usage object holds each count: a path of members (`[]`: the API has no such
/// count).
pub(crate) struct UsageKeys {
    /// Input tokens.
    pub input: &'static [&'static str],
    /// Output tokens.
    pub output: &'static [&'static str],
    /// Tokens read from the prompt cache.
    pub cache_read: &'static [&'static str],
    /// Tokens written to the prompt cache.
    pub cache_write: &'static [&'static str],
    /// Reasoning tokens.
    pub reasoning: &'static [&'static str],
}

/// The count at `path` under `o`.
pub(crate) fn count_at(o: &Obj, path: &[&str]) -> Option<u64> {
    match path {
        [] => None,
        [k] => o.u64(k),
        [k, rest @ ..] => count_at(&o.obj(k)?, rest),
    }
}

/// Take the counts `usage` reports into `u`: each count that is there replaces the one
/// before (streams report some counts more than once, the last being right).
pub(crate) fn take_usage(u: &mut Usage, usage: &Obj, keys: &UsageKeys) {
    for (slot, path) in [
        (&mut u.input, keys.input),
        (&mut u.output, keys.output),
        (&mut u.cache_read, keys.cache_read),
        (&mut u.cache_write, keys.cache_write),
        (&mut u.reasoning, keys.reasoning),
    ] {
        if let Some(v) = count_at(usage, path) {
            *slot = Some(v);
        }
    }
}

/// What the API modules' tests share: replies fed through the HTTP/1.1 and SSE framing the
/// way they arrive.
#[cfg(test)]
pub(crate) mod testing {
    use super::super::{ModelApi, Options};
    use crate::capture::Dir;
    use crate::llm::Response;
    use crate::wire::http1::{Conn, ConnEvent};

    const REQUEST: &[u8] = b"POST /v1/call HTTP/1.1\r\nHost: api.example.com\r\n\
Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{}";

    /// An event-stream reply as a server writes it: the head, then each of `writes` as one
    /// chunk of the chunked body, then the last chunk.
    pub fn sse_reply(writes: &[&str]) -> Vec<u8> {
        let mut out = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\n\
Transfer-Encoding: chunked\r\nCache-Control: no-cache\r\nConnection: keep-alive\r\n\r\n"
            .to_vec();
        for w in writes {
            out.extend_from_slice(format!("{:x}\r\n{w}\r\n", w.len()).as_bytes());
        }
        out.extend_from_slice(b"0\r\n\r\n");
        out
    }

    /// The events of a reply, in order, and whether each carried content; the reply's bytes
    /// arrive in `pieces` and the connection closes after the last.
    pub fn replay_events(
        api: &dyn ModelApi,
        opts: Options,
        pieces: &[&[u8]],
    ) -> (Response, Vec<bool>) {
        let mut conn = Conn::detect(Dir::Out, REQUEST, 1 << 20).expect("an HTTP request");
        conn.push(Dir::Out, REQUEST, 1, 2, &mut |_| {});
        let mut acc = api.stream(opts);
        let mut content = Vec::new();
        let mut feed = |e: ConnEvent<'_>| {
            if let ConnEvent::Sse { event, .. } = e {
                content.push(acc.event(event.event, event.data));
                assert!(acc.held() <= 2 * super::MAX_ARGS, "held past its bound");
            }
        };
        for (i, p) in pieces.iter().enumerate() {
            let t = 10 + 10 * i as u64;
            conn.push(Dir::In, p, t, t + 5, &mut feed);
        }
        conn.finish(u64::MAX / 2, &mut feed);
        (acc.finish(), content)
    }

    /// The reply `pieces` make.
    pub fn replay(api: &dyn ModelApi, opts: Options, pieces: &[&[u8]]) -> Response {
        replay_events(api, opts, pieces).0
    }

    /// The reply from `bytes` whole, checked to be the same when they arrive in two pieces
    /// split at every byte, and byte by byte.
    pub fn same_however_split(api: &dyn ModelApi, opts: Options, bytes: &[u8]) -> Response {
        let whole = replay(api, opts, &[bytes]);
        for i in 0..=bytes.len() {
            let split = replay(api, opts, &[&bytes[..i], &bytes[i..]]);
            assert_eq!(split, whole, "split at byte {i}");
        }
        let bytewise: Vec<&[u8]> = bytes.chunks(1).collect();
        assert_eq!(replay(api, opts, &bytewise), whole, "byte by byte");
        whole
    }

    /// The reply when the connection closes right after the first occurrence of `marker`
    /// (or right before it, with `before`).
    pub fn cut_after(api: &dyn ModelApi, bytes: &[u8], marker: &str, before: bool) -> Response {
        let at = bytes
            .windows(marker.len())
            .position(|w| w == marker.as_bytes())
            .unwrap_or_else(|| panic!("{marker} not in the transcript"));
        let end = if before { at } else { at + marker.len() };
        replay(api, Options::default(), &[&bytes[..end]])
    }
}

#[cfg(test)]
mod tests {
    use super::super::{ModelApi, NotThisApi, Options, recognise};
    use super::*;
    use crate::llm::ErrorKind;

    #[test]
    fn obj_reads_members_lazily_and_leniently() {
        let o = Obj::parse(r#" {"a":"x\"y","n":7,"b":true,"z":null,"o":{"k":[1]},"a2":"plain"} "#)
            .unwrap();
        assert_eq!(o.str("a").as_deref(), Some("x\"y"));
        assert!(matches!(o.str("a2"), Some(Cow::Borrowed("plain"))));
        assert_eq!(o.u64("n"), Some(7));
        assert_eq!(o.bool("b"), Some(true));
        assert_eq!(o.raw("z").map(|r| r.get()), None, "null reads as absent");
        assert_eq!(o.str("n"), None, "mistyped reads as absent");
        assert_eq!(o.u64("a"), None);
        assert_eq!(o.obj("o").unwrap().raw("k").unwrap().get(), "[1]");
        assert!(o.items("o").is_empty());
        for not_obj in ["[1]", "\"s\"", "1", "", "{", "{\"a\":}", "nul"] {
            assert!(Obj::parse(not_obj).is_none(), "{not_obj}");
        }
        // The last of duplicate members counts, as most servers read them.
        assert_eq!(Obj::parse(r#"{"a":1,"a":2}"#).unwrap().u64("a"), Some(2));
    }

    #[test]
    fn lists_are_arrays_of_objects_or_strings() {
        let o =
            Obj::parse(r#"{"l":[{"a":1},2,"s",[3],null,{"b":2}],"s":"text","m":{"x":1}}"#).unwrap();
        let List::Items(items) = o.list("l") else {
            panic!("an array")
        };
        assert_eq!(items.len(), 6);
        assert_eq!(items[0].u64("a"), Some(1));
        assert_eq!(items[1].hash_except(&[]), Obj::default().hash_except(&[]));
        assert!(matches!(o.list("s"), List::Text(t) if t == "text"));
        assert!(matches!(o.list("m"), List::Other));
        assert!(matches!(o.list("missing"), List::Other));
    }

    #[test]
    fn bodies_that_are_not_json_objects_are_not_json() {
        for bad in [
            &b""[..],
            b"[]",
            b"\"x\"",
            b"{\"a\":",
            b"{} {}",
            b"\xff\xfe",
            b"null",
        ] {
            assert_eq!(
                Body::parse(bad, "messages").err(),
                Some(NotThisApi::NotJson)
            );
        }
        let b = Body::parse(br#"{"model":"m","messages":[{"role":"user"}]}"#, "messages").unwrap();
        assert!(matches!(b.list, Some(List::Items(ref v)) if v.len() == 1));
        assert_eq!(b.obj.str("model").as_deref(), Some("m"));
        assert!(b.obj.raw("messages").is_none(), "the list is read apart");
    }

    #[test]
    fn object_hashes_ignore_order_whitespace_and_skipped_members() {
        let h = |s: &str, skip: &[&str]| Obj::parse(s).unwrap().hash_except(skip);
        let a = h(
            r#"{"type":"image","source":{"data":"QUJD","type":"base64"}}"#,
            &[],
        );
        assert_eq!(
            a,
            h(
                "{ \"source\" : { \"type\":\"base64\", \"data\":\"QUJD\" },\n \"type\":\"image\" }",
                &[]
            )
        );
        assert_eq!(
            a,
            h(
                r#"{"type":"image","cache_control":{"type":"ephemeral"},"source":{"data":"QUJD","type":"base64"}}"#,
                &["cache_control"]
            )
        );
        assert_ne!(
            a,
            h(
                r#"{"type":"image","source":{"data":"QUJE","type":"base64"}}"#,
                &[]
            )
        );
        assert_ne!(h(r#"{"a":"b"}"#, &[]), h(r#"{"b":"a"}"#, &[]));
    }

    #[test]
    fn fingerprint_pieces_do_not_run_together() {
        let two = |a: &str, b: &str| Fp::new(b'x').str(a).str(b).finish();
        assert_ne!(two("ab", "c"), two("a", "bc"));
        assert_ne!(
            Fp::new(b'x').opt(None).finish(),
            Fp::new(b'x').opt(Some("")).finish()
        );
        assert_ne!(Fp::new(b'x').finish(), Fp::new(b'y').finish());
        // A string is one text part.
        let raw = serde_json::from_str::<&RawValue>(r#""hi""#).unwrap();
        assert_eq!(content_hash(Some(raw), |_| 0), string_content_hash("hi"));
        assert_eq!(
            text_hash("a\nb"),
            text_hash(&str_of(serde_json::from_str(r#""a\u000ab""#).unwrap()).unwrap())
        );
    }

    #[test]
    fn arguments_are_hashed_canonically_and_empty_stands_for_no_arguments() {
        let opts = Options::default();
        let args = r#"{ "b": 1, "a": [true] }"#;
        let c = whole_call(ToolCall::default(), args, ArgsKind::Json, opts);
        assert_eq!(c.args_hash, canonical_hash(r#"{"a":[true],"b":1}"#));
        assert_eq!(c.args_bytes, args.len() as u64);
        assert_eq!(c.arguments, None);
        let empty = whole_call(ToolCall::default(), "", ArgsKind::Json, opts);
        assert_eq!(empty.args_hash, canonical_hash("{}"));
        assert_eq!(empty.args_bytes, 2);
        let text = whole_call(ToolCall::default(), "print(1)", ArgsKind::Text, opts);
        assert_eq!(text.args_hash, canonical_hash(r#""print(1)""#));
        assert_eq!(
            whole_call(ToolCall::default(), "{", ArgsKind::Json, opts).args_hash,
            None
        );
    }

    #[test]
    fn stream_calls_are_bounded_and_cut_calls_have_no_hash() {
        let mut calls = Calls::new(Options::default());
        assert!(calls.start(0, Some("fc_1"), ToolCall::default(), ArgsKind::Json));
        assert!(calls.append(Some(0), None, r#"{"a":"#));
        assert!(calls.append(None, Some("fc_1"), "1}"));
        assert!(!calls.append(Some(9), None, "x"), "no such call");
        assert_eq!(calls.held(), 7);
        calls.complete(Some(0), None, None);
        assert_eq!(calls.held(), 0, "text is dropped once hashed");
        assert!(
            !calls.append(Some(0), None, "more"),
            "a closed call takes no more"
        );
        assert!(calls.start(1, None, ToolCall::default(), ArgsKind::Json));
        let piece = "x".repeat(64 * 1024);
        for _ in 0..17 {
            calls.append(Some(1), None, &piece);
        }
        assert!(calls.held() <= MAX_ARGS);
        assert!(calls.start(2, None, ToolCall::default(), ArgsKind::Json));
        calls.append(Some(2), None, r#"{"cut":"#);
        let got = calls.finish();
        assert_eq!(got[0].args_hash, canonical_hash(r#"{"a":1}"#));
        assert_eq!(got[1].args_hash, None);
        assert_eq!(got[1].args_bytes, 17 * 64 * 1024, "counted past the bound");
        assert_eq!(got[2].args_hash, None);
        assert_eq!(got[2].args_bytes, 7);
        let mut many = Calls::new(Options::default());
        for i in 0..MAX_CALLS as u64 {
            assert!(many.start(i, None, ToolCall::default(), ArgsKind::Json));
        }
        assert!(!many.start(999, None, ToolCall::default(), ArgsKind::Json));
        many.add(ToolCall::default());
        assert_eq!(many.finish().len(), MAX_CALLS);
    }

    #[test]
    fn payload_text_is_redacted_and_cut() {
        let t = redact_text("use key sk-ant-api03-ABCDEFGHIJKLMNOPQRSTUVWX please");
        assert!(!t.contains("ABCDEFGHIJ"), "{t}");
        assert!(t.contains("[REDACTED]") && t.starts_with("use key"));
        assert_eq!(redact_text("plain"), "plain");
        let long = "é".repeat(MAX_PAYLOAD_TEXT);
        let p = payload_text(&long);
        assert!(p.len() <= MAX_PAYLOAD_TEXT && p.len() >= MAX_PAYLOAD_TEXT - 1);
        let v = payload_args(r#"{"path":"/tmp","api_key":"abc"}"#);
        assert_eq!(v["api_key"], "[REDACTED]");
        assert_eq!(v["path"], "/tmp");
        let big = format!(r#"{{"data":"{}"}}"#, "a".repeat(MAX_PAYLOAD_TEXT));
        assert!(
            payload_args(&big)
                .as_str()
                .is_some_and(|s| s.len() <= MAX_PAYLOAD_TEXT)
        );
        let mut g = Gen::new(Options { payloads: true });
        g.part("a");
        g.part("b");
        g.reasoning("thought");
        assert_eq!(g.payload().as_deref(), Some("a\nb"));
        assert_eq!(g.bytes, 10);
        let mut quiet = Gen::new(Options::default());
        quiet.text("x");
        assert_eq!((quiet.payload(), quiet.held(), quiet.bytes), (None, 0, 1));
    }

    #[test]
    fn error_bodies_are_classified_without_their_message() {
        let e = |status, body: &str, keys: &[&str]| {
            let o = Obj::parse(body).unwrap();
            error_of(status, o.obj("error").as_ref(), keys)
        };
        let long = e(
            400,
            r#"{"error":{"type":"invalid_request_error","message":"prompt is too long: 208310 tokens > 200000 maximum"}}"#,
            &["type"],
        );
        assert_eq!(long.kind, ErrorKind::ContextOverflow);
        assert_eq!(long.code.as_deref(), Some("invalid_request_error"));
        let code = "x".repeat(100);
        let cut = e(
            500,
            &format!(r#"{{"error":{{"code":"{code}"}}}}"#),
            &["code"],
        );
        assert_eq!(cut.code.map(|c| c.len()), Some(64));
        assert_eq!(not_json(502).error.map(|e| e.kind), Some(ErrorKind::Server));
        assert_eq!(not_json(200).error, None);
        assert!(!not_json(502).complete);
        for (msg, long) in [
            (
                "This model's maximum context length is 128000 tokens.",
                true,
            ),
            ("Your input exceeds the context window of this model.", true),
            (
                "The input token count (1200000) exceeds the maximum number of tokens allowed (1048576).",
                true,
            ),
            ("Rate limit reached for gpt-4o", false),
            ("Overloaded", false),
        ] {
            assert_eq!(says_too_long(msg), long, "{msg}");
        }
    }

    #[test]
    fn stop_reasons_normalise_and_tool_calls_win() {
        for (why, stop) in [
            ("end_turn", Stop::EndTurn),
            ("stop", Stop::EndTurn),
            ("STOP", Stop::EndTurn),
            ("completed", Stop::EndTurn),
            ("stop_sequence", Stop::EndTurn),
            ("tool_calls", Stop::ToolUse),
            ("max_tokens", Stop::MaxTokens),
            ("length", Stop::MaxTokens),
            ("MAX_TOKENS", Stop::MaxTokens),
            ("incomplete:max_output_tokens", Stop::MaxTokens),
            ("model_context_window_exceeded", Stop::ContextOverflow),
            ("refusal", Stop::Filtered),
            ("content_filter", Stop::Filtered),
            ("incomplete:content_filter", Stop::Filtered),
            ("SAFETY", Stop::Filtered),
            ("RECITATION", Stop::Filtered),
            ("PROHIBITED_CONTENT", Stop::Filtered),
            ("BLOCKLIST", Stop::Filtered),
            ("pause_turn", Stop::Other),
            ("MALFORMED_FUNCTION_CALL", Stop::Other),
        ] {
            assert_eq!(stop_of(Some(why), false), stop, "{why}");
        }
        assert_eq!(stop_of(None, false), Stop::Other);
        assert_eq!(stop_of(Some("end_turn"), true), Stop::ToolUse);
        assert_eq!(stop_of(Some("STOP"), true), Stop::ToolUse);
    }

    #[test]
    fn recognise_takes_model_calls_by_method_and_path() {
        use crate::llm::Api::*;
        let api = |m: &str, t: &str| recognise(m, t).map(|a| a.api());
        for (target, want) in [
            ("/v1/messages", Messages),
            ("/v1/messages?beta=true", Messages),
            ("/anthropic/v1/messages/", Messages),
            ("/v1/chat/completions", ChatCompletions),
            (
                "/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21",
                ChatCompletions,
            ),
            ("/api/v1/chat/completions", ChatCompletions),
            ("/v1/responses", Responses),
            ("/openai/v1/responses?x=1", Responses),
            (
                "/v1beta/models/gemini-2.5-flash:generateContent",
                GenerateContent,
            ),
            (
                "/v1beta/models/gemini-2.5-pro:streamGenerateContent?alt=sse",
                GenerateContent,
            ),
            (
                "/v1/projects/p/locations/us-central1/publishers/google/models/gemini-2.5-pro:streamGenerateContent?alt=sse",
                GenerateContent,
            ),
        ] {
            assert_eq!(api("POST", target), Some(want), "{target}");
        }
        for target in [
            "/v1/messages/count_tokens",
            "/v1/messages/batches",
            "/v1/messages/batches/msgbatch_1/results",
            "/v1/responses/resp_1",
            "/v1/responses/resp_1/input_items",
            "/v1/chat/completions/chatcmpl-1",
            "/v1/completions",
            "/v1/embeddings",
            "/v1beta/models/gemini-2.5-flash:countTokens",
            "/v1beta/models/gemini-2.5-flash:embedContent",
            "/v1beta/models/gemini-2.5-flash",
            "/v1beta/models/:generateContent",
            "/generateContent",
            "/mcp",
            "/v1/chat/messages",
            "/search?q=/v1/messages",
        ] {
            assert_eq!(api("POST", target), None, "{target}");
        }
        assert_eq!(api("GET", "/v1/messages"), None);
        assert_eq!(api("GET", "/v1/responses"), None);
        assert_eq!(api("HEAD", "/v1/chat/completions"), None);
    }

    #[test]
    fn every_api_survives_garbage_events() {
        let apis: [&dyn ModelApi; 4] = [
            &super::super::anthropic::API,
            &super::super::openai_chat::API,
            &super::super::openai_responses::API,
            &super::super::gemini::API,
        ];
        let garbage: [&[u8]; 14] = [
            b"",
            b"{",
            b"[]",
            b"null",
            b"\xff",
            br#"{"type":"content_block_delta","index":"x","delta":[]}"#,
            br#"{"type":"content_block_start","content_block":{"type":"tool_use"}}"#,
            br#"{"type":"content_block_delta","index":5,"delta":{"type":"input_json_delta","partial_json":7}}"#,
            br#"{"choices":[{"delta":{"tool_calls":[{"function":{"arguments":"x"}}]}}]}"#,
            br#"{"choices":{"delta":1},"usage":[1]}"#,
            br#"{"type":"response.function_call_arguments.delta","delta":"x"}"#,
            br#"{"type":"response.completed","response":7}"#,
            br#"{"candidates":[{"content":{"parts":[{"functionCall":3},{"text":null}]}}],"usageMetadata":"x"}"#,
            br#"{"error":"boom"}"#,
        ];
        for api in apis {
            let mut acc = api.stream(Options { payloads: true });
            for (i, g) in garbage.iter().enumerate() {
                assert!(
                    !acc.event(["message", "error", "ping"][i % 3], g),
                    "{}",
                    String::from_utf8_lossy(g)
                );
            }
            let r = acc.finish();
            assert!(r.tool_calls.is_empty(), "{:?}: {r:?}", api.api());
            assert_eq!(r.text_bytes, 0);
            for g in garbage {
                let w = api.response(200, g, Options { payloads: true });
                assert!(w.tool_calls.is_empty());
                let _ = api.request(
                    "/v1beta/models/m:generateContent",
                    g,
                    Options { payloads: true },
                );
            }
        }
    }
}

//! One scan per message: the envelope's fields found, and params, result and error read
//! into the same structures serde_json fills, in a single walk of the text with no value
//! built on the way (arguments, schemas and content are passed over as slices).
//!
//! The scan takes only text that serde_json would read into the same values, so its answer
//! can replace serde_json's; anything else is refused and read by serde_json, whose verdict
//! (and error classification) therefore stays the only one. Refused besides what
//! [`jscan`](crate::wire::jscan) refuses: keys written with escapes where keys are matched
//! (they could spell a field), a field twice (serde_json rejects that), `null` where a field is
//! read (serde_json's `None`; rare enough to leave to it), a value of another type than the
//! field's, and a structure written as an array (serde_json reads a struct from a sequence).

use super::{
    ContentRaw, Envelope, ErrorObject, Info, Meta, Params, Raw, ResultFields, ResultMeta, Sizes,
    Str, ToolRaw, Typed,
};
use crate::wire::jscan::{Cursor, JsonStr, Refused, Scan};

/// The envelope of the JSON-RPC object `text`, and the text of its result (for the security
/// rules, and `--payloads`).
pub(super) fn envelope(text: &str) -> Scan<(Typed<'_>, Option<Raw<'_>>)> {
    let mut c = Cursor::new(text);
    let mut t = Envelope {
        jsonrpc: None,
        id: None,
        method: None,
        params: None,
        result: None,
        error: None,
    };
    let mut id_seen = false;
    let mut raw_result = None;
    c.object(|k, c| match key(k)? {
        "jsonrpc" => once(&mut t.jsonrpc, string(c)?),
        "id" => {
            // `"id": null` (errors answering what could not be read) is no id.
            if std::mem::replace(&mut id_seen, true) {
                return Err(Refused);
            }
            if !c.null() {
                t.id = Some(Raw(c.skip()?));
            }
            Ok(())
        }
        "method" => once(&mut t.method, string(c)?),
        // Read in place: params and result are the envelope's largest parts.
        "params" => params(c, fresh(&mut t.params)?),
        "result" => {
            c.peek();
            let from = c.offset();
            result(c, fresh(&mut t.result)?)?;
            raw_result = Some(Raw(c.since(from)));
            Ok(())
        }
        "error" => once(&mut t.error, error(c)?),
        _ => skip(c),
    })?;
    c.end()?;
    Ok((t, raw_result))
}

/// A key to match against field names.
fn key(k: JsonStr<'_>) -> Scan<&str> {
    if k.has_escapes() {
        return Err(Refused);
    }
    Ok(k.raw())
}

/// Fill a field seen for the first time.
fn once<T>(slot: &mut Option<T>, v: T) -> Scan<()> {
    if slot.is_some() {
        return Err(Refused);
    }
    *slot = Some(v);
    Ok(())
}

/// A field seen for the first time, made empty to be filled in place.
fn fresh<T: Default>(slot: &mut Option<T>) -> Scan<&mut T> {
    if slot.is_some() {
        return Err(Refused);
    }
    Ok(slot.insert(T::default()))
}

/// A value passed over.
fn skip(c: &mut Cursor<'_>) -> Scan<()> {
    c.skip().map(drop)
}

/// A string field.
fn string<'a>(c: &mut Cursor<'a>) -> Scan<Str<'a>> {
    Ok(Str(c.string()?.unescape()?))
}

/// A field kept as text.
fn raw<'a>(c: &mut Cursor<'a>) -> Scan<Raw<'a>> {
    if c.null() {
        return Err(Refused);
    }
    Ok(Raw(c.skip()?))
}

/// A request's or notification's params.
fn params<'a>(c: &mut Cursor<'a>, p: &mut Params<'a>) -> Scan<()> {
    c.object(|k, c| match key(k)? {
        "name" => once(&mut p.name, string(c)?),
        "uri" => once(&mut p.uri, string(c)?),
        "protocolVersion" => once(&mut p.protocol_version, string(c)?),
        "clientInfo" => once(&mut p.client_info, info(c)?),
        "requestId" => once(&mut p.request_id, raw(c)?),
        "_meta" => once(&mut p.meta, meta(c)?),
        "arguments" => once(&mut p.arguments, raw(c)?),
        _ => skip(c),
    })
}

/// `params._meta`.
fn meta<'a>(c: &mut Cursor<'a>) -> Scan<Meta<'a>> {
    let mut m = Meta::default();
    c.object(|k, c| match key(k)? {
        "traceparent" => once(&mut m.traceparent, string(c)?),
        "tracestate" => once(&mut m.tracestate, string(c)?),
        "io.modelcontextprotocol/protocolVersion" => once(&mut m.protocol_version, string(c)?),
        "io.modelcontextprotocol/clientInfo" => once(&mut m.client_info, info(c)?),
        _ => skip(c),
    })?;
    Ok(m)
}

/// `clientInfo` or `serverInfo`.
fn info<'a>(c: &mut Cursor<'a>) -> Scan<Info<'a>> {
    let mut i = Info::default();
    c.object(|k, c| match key(k)? {
        "name" => once(&mut i.name, string(c)?),
        "version" => once(&mut i.version, string(c)?),
        _ => skip(c),
    })?;
    Ok(i)
}

/// A result's fields.
fn result<'a>(c: &mut Cursor<'a>, r: &mut ResultFields<'a>) -> Scan<()> {
    c.object(|k, c| match key(k)? {
        "isError" => once(&mut r.is_error, c.boolean()?),
        "protocolVersion" => once(&mut r.protocol_version, string(c)?),
        "serverInfo" => once(&mut r.server_info, info(c)?),
        "_meta" => {
            let mut m = ResultMeta::default();
            c.object(|k, c| match key(k)? {
                "io.modelcontextprotocol/serverInfo" => once(&mut m.server_info, info(c)?),
                _ => skip(c),
            })?;
            once(&mut r.meta, m)
        }
        "tools" => once(&mut r.tools, list(c, tool)?),
        "content" => once(&mut r.content, sizes(c)?),
        "structuredContent" => once(&mut r.structured_content, raw(c)?),
        "contents" => once(&mut r.contents, sizes(c)?),
        _ => skip(c),
    })
}

/// An array, each item read by `item`.
fn list<'a, T>(c: &mut Cursor<'a>, item: fn(&mut Cursor<'a>) -> Scan<T>) -> Scan<Vec<T>> {
    let mut v = Vec::new();
    c.array(|c| {
        v.push(item(c)?);
        Ok(())
    })?;
    Ok(v)
}

/// A list of content items, as their summed sizes.
fn sizes(c: &mut Cursor<'_>) -> Scan<Sizes> {
    let mut total = 0;
    c.array(|c| {
        total += content(c)?.len();
        Ok(())
    })?;
    Ok(Sizes(total))
}

/// One tool of a `tools/list` result; its name is required.
fn tool<'a>(c: &mut Cursor<'a>) -> Scan<ToolRaw<'a>> {
    let (mut name, mut description, mut input_schema) = (None, None, None);
    c.object(|k, c| match key(k)? {
        "name" => once(&mut name, c.string()?.unescape()?),
        "description" => once(&mut description, string(c)?),
        "inputSchema" => once(&mut input_schema, raw(c)?),
        _ => skip(c),
    })?;
    Ok(ToolRaw {
        name: name.ok_or(Refused)?,
        description,
        input_schema,
    })
}

/// A content item or resource contents.
fn content<'a>(c: &mut Cursor<'a>) -> Scan<ContentRaw<'a>> {
    let mut item = ContentRaw::default();
    c.object(|k, c| match key(k)? {
        "text" => once(&mut item.text, raw(c)?),
        "blob" => once(&mut item.blob, raw(c)?),
        _ => skip(c),
    })?;
    Ok(item)
}

/// An error object.
fn error<'a>(c: &mut Cursor<'a>) -> Scan<ErrorObject<'a>> {
    let (mut code, mut message) = (None, None);
    c.object(|k, c| match key(k)? {
        "code" => once(&mut code, c.integer()?),
        "message" => once(&mut message, string(c)?),
        _ => skip(c),
    })?;
    Ok(ErrorObject { code, message })
}

//! The Streamable HTTP binding (protocol 2025-03-26 and later): a POST carries a message or a
//! batch; its response is JSON or an event stream (progress notifications, then the result);
//! a GET opens the server-to-client stream; the session is named by `Mcp-Session-Id`, which
//! the initialize response assigns, so an initialize request is held until that response's
//! head arrives; a DELETE ends the session. Without a session id (stateless servers, protocol
//! 2026-07-28) the connection is the scope.

use crate::mcp::message::{Message, Parsed};
use crate::wire::http::{Headers, Txn};

/// A request head that names MCP itself: a session id, a protocol version, or (2026-07-28)
/// the method.
pub fn mcp_headers(h: &Headers) -> bool {
    h.session_id.is_some() || h.protocol_version.is_some() || h.mcp_method.is_some()
}

/// A request that may still turn out to be MCP by its body (a POST) or by its event stream
/// (a GET that accepts one).
pub fn may_be_mcp(method: &str, h: &Headers) -> bool {
    method == "POST" || (method == "GET" && h.accept_sse)
}

/// Whether a request body must wait for its response's head: an initialize whose session is
/// not named yet (the response assigns it).
pub fn held_for_session(parsed: &Parsed<'_>, named: bool, answered: bool) -> bool {
    let one = |m: &Message<'_>| m.method.as_deref() == Some("initialize");
    let initialize = match parsed {
        Parsed::One(m) => one(m),
        Parsed::Batch(ms) => ms.iter().any(one),
    };
    !named && initialize && !answered
}

/// A finished transaction by which the client ended its session: a DELETE with the session
/// id, answered with success.
pub fn ends_session(txn: &Txn) -> bool {
    let status = txn.response.as_ref().and_then(|r| r.status);
    txn.request.method.as_deref() == Some("DELETE")
        && txn.request.headers.session_id.is_some()
        && status.is_some_and(|s| (200..300).contains(&s))
}

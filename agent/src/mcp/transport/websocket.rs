//! MCP over WebSocket: one JSON-RPC message per text message (subprotocol `mcp`), both
//! directions of one connection that started as HTTP/1.1 (`wire::websocket` frames it).
//! Sessions are the connection's: WebSocket carries no session id.

use super::route::{HttpEnd, HttpNaming, Route, http_route};
use super::{At, Deliver, Oversize, Stray};
use crate::capture::{Dir, FdKind};
use crate::conn::verdict::{Stray as StrayKind, Verdict};
use crate::mcp::message::{self, ParseError};
use crate::signal::Transport;
use crate::wire::http::Role;

/// One whole message (its fragments joined, inflated), and who sent it.
#[derive(Clone, Copy, Debug)]
pub struct WsMessage<'a> {
    /// Its bytes; `None` for a message over the size limit.
    pub data: Option<&'a [u8]>,
    /// Its length.
    pub len: u64,
    /// Whether it was a text message (MCP's are).
    pub text: bool,
    /// The client sent it.
    pub from_client: bool,
    /// Entry time of the syscall that carried its first byte.
    pub first_enter_ns: u64,
    /// Exit time of the syscall that carried its last byte.
    pub last_exit_ns: u64,
}

/// The route of a message on a WebSocket connection seen by a process at `role`.
fn route_of<D: Deliver + ?Sized>(at: &At<'_, '_, D>, role: Role, from_client: bool) -> Route {
    let mut r = http_route(&HttpNaming {
        tgid: at.base.tgid,
        inode: at.base.inode,
        peer_inode: at.base.peer_inode,
        socket: at.socket,
        unix: at.socket.is_some_and(|s| s.unix) || at.base.kind == FdKind::Unix,
        end: match role {
            Role::Client => HttpEnd::Client,
            Role::Server => HttpEnd::Server,
        },
        session_id: None,
        legacy: None,
        from_client,
        http_status: None,
        protocol_version: None,
        raw_ids: at.cfg.raw_session_ids,
    });
    r.transport = Transport::WebSocket;
    r
}

/// One message of a connection whose verdict so far is `verdict`; returns the verdict after
/// it.
pub fn message<D: Deliver + ?Sized>(
    at: &mut At<'_, '_, D>,
    role: Role,
    m: &WsMessage<'_>,
    verdict: Verdict,
) -> Verdict {
    let mine = m.from_client == (role == Role::Client);
    let dir = if mine { Dir::Out } else { Dir::In };
    let view = at.view(dir, m.first_enter_ns, m.last_exit_ns);
    let route = route_of(at, role, m.from_client);
    let Some(data) = m.data else {
        let big = Oversize {
            view: &view,
            route: &route,
            len: m.len,
            prefix: &[],
        };
        return at.oversize(&big, verdict);
    };
    at.stats.frames += 1;
    let err = if m.text {
        match message::parse_with(data, at.parse_opts()) {
            Ok(parsed) => {
                at.deliver(&route, &view, &parsed, data, m.len);
                return verdict.message();
            }
            Err(err) => err,
        }
    } else {
        ParseError::NotJson("a binary message".into())
    };
    let (after, what) = verdict.stray(err == ParseError::NotJsonRpc);
    if what == StrayKind::Corrupts {
        at.stray(&Stray::of(view, data, err.class()), &route, false);
    }
    after
}

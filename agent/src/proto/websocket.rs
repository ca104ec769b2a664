//! WebSocket after HTTP/1.1's `Upgrade`: both directions' frames ([`crate::wire::websocket`],
//! masking, fragments, permessage-deflate as the `101` negotiated it), each message handed
//! to MCP's WebSocket binding ([`crate::mcp::transport::websocket`]).

use super::AppCx;
use super::framing::{ConnFraming, Parts};
use crate::capture::Dir;
use crate::conn::Bytes;
use crate::conn::verdict::{Reason, Verdict};
use crate::mcp::transport::At;
use crate::mcp::transport::websocket::{self as binding, WsMessage};
use crate::wire::http::{Role, Upgrade};
use crate::wire::websocket::{self as ws, Message, Reader};

/// One process's view of one WebSocket connection.
#[derive(Debug)]
pub struct WsConn {
    role: Role,
    /// What the client wrote (masked).
    client: Reader,
    /// What the server wrote.
    server: Reader,
    verdict: Verdict,
}

/// The framing that follows a protocol switch, if it is WebSocket: it reads the bytes each
/// direction carried past the switch at once.
pub fn after_upgrade(
    up: Upgrade,
    role: Role,
    parts: &mut Parts<'_>,
    cx: &mut AppCx<'_, '_>,
) -> Option<Box<dyn ConnFraming>> {
    let sw = up.txn.response.as_ref()?.headers.upgrade.as_deref()?;
    if sw.protocol != "websocket" {
        return None;
    }
    let (to_server, to_client) = ws::negotiated(sw.ws_extensions.as_deref());
    log::debug!(
        "{:?} switched to WebSocket (subprotocol {:?}): permessage-deflate {} to the server, {} \
         to the client",
        cx.key,
        sw.ws_protocol.as_deref().unwrap_or(""),
        deflate_name(&to_server),
        deflate_name(&to_client),
    );
    let max = parts.protocols.mcp.cfg.max_message_bytes;
    let mut conn = WsConn {
        role,
        client: Reader::new(true, to_server, max),
        server: Reader::new(false, to_client, max),
        verdict: Verdict::default(),
    };
    let (req_dir, resp_dir) = match role {
        Role::Client => (Dir::Out, Dir::In),
        Role::Server => (Dir::In, Dir::Out),
    };
    let now = cx.now;
    for (dir, rest) in [(req_dir, &up.request_rest), (resp_dir, &up.response_rest)] {
        if !rest.is_empty() {
            cx.key.dir = dir;
            let data = Bytes {
                data: rest,
                enter_ns: now,
                exit_ns: now,
            };
            conn.push(parts, cx, data);
        }
    }
    Some(Box::new(conn))
}

fn deflate_name(d: &ws::Deflate) -> &'static str {
    match (d.on, d.no_context_takeover) {
        (false, _) => "off",
        (true, false) => "on",
        (true, true) => "on without context takeover",
    }
}

impl ConnFraming for WsConn {
    fn name(&self) -> &'static str {
        "websocket"
    }

    fn push(&mut self, parts: &mut Parts<'_>, cx: &mut AppCx<'_, '_>, data: Bytes<'_>) -> Verdict {
        if self.verdict.rejected().is_some() {
            return self.verdict;
        }
        let mine_out = cx.key.dir == Dir::Out;
        let from_client = mine_out == (self.role == Role::Client);
        let reader = if from_client {
            &mut self.client
        } else {
            &mut self.server
        };
        // Its handshake was HTTP/1.1 (RFC 8441's WebSocket over HTTP/2 is not read).
        cx.base.http = Some(crate::signal::HttpVersion::Http11);
        let p = &mut *parts.protocols;
        let mut at = At {
            cx: &mut *cx.cx,
            tracker: &mut *parts.tracker,
            links: &mut p.mcp.links,
            stats: &mut p.mcp.stats,
            cfg: &p.mcp.cfg,
            key: cx.key,
            base: cx.base,
            socket: cx.socket,
            now: cx.now,
        };
        let (role, verdict) = (self.role, &mut self.verdict);
        let r = reader.push(data.data, data.enter_ns, data.exit_ns, &mut |m| {
            let msg = match m {
                Message::Text {
                    data,
                    first_enter_ns,
                    last_exit_ns,
                }
                | Message::Binary {
                    data,
                    first_enter_ns,
                    last_exit_ns,
                } => WsMessage {
                    data: Some(data),
                    len: data.len() as u64,
                    text: matches!(m, Message::Text { .. }),
                    from_client,
                    first_enter_ns,
                    last_exit_ns,
                },
                Message::Oversize { len, exit_ns } => WsMessage {
                    data: None,
                    len,
                    text: true,
                    from_client,
                    first_enter_ns: exit_ns,
                    last_exit_ns: exit_ns,
                },
                Message::Close { .. } | Message::Control { .. } => return,
            };
            if verdict.rejected().is_none() {
                *verdict = binding::message(&mut at, role, &msg, *verdict);
            }
        });
        if r.is_err() {
            // Nothing more can be framed on it, kept or not: the kernel may stop shipping it.
            p.mcp.stats.http_errors += 1;
            self.verdict = Verdict::Rejected(Reason::WebSocketBroken);
        }
        self.verdict
    }

    fn close(self: Box<Self>, _parts: &mut Parts<'_>, _cx: &mut AppCx<'_, '_>, _ts: u64) {}

    fn held(&self) -> usize {
        self.client.buffered() + self.server.buffered()
    }
}

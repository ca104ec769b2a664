//! What the server health stage reports: the processes that serve MCP, what they use, and
//! whether each server name is up; and the HTTP requests MCP servers serve.

use serde::Serialize;

use super::{Endpoint, Role, Transport};
use crate::capture::host::ProcessUsage;

/// One process that serves MCP, sampled from `/proc`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ProcessSample {
    /// The process: pid, comm, exe, container and pod; `name` is the server name it serves
    /// under (its `serverInfo.name`, else its comm).
    pub process: Endpoint,
    /// What it uses.
    #[serde(flatten)]
    pub usage: ProcessUsage,
}

/// What the processes of one server name in one container use together: the metrics' unit.
#[derive(Clone, Debug, PartialEq)]
pub struct ServerUsage {
    /// The server name, and the container and pod of its processes (no pid).
    pub server: Endpoint,
    /// Live processes.
    pub processes: u32,
    /// CPU seconds of the live processes, plus those of the group's processes that exited
    /// since the group appeared: monotonic while the group lives.
    pub cpu_seconds: f64,
    /// Resident memory, summed.
    pub resident_bytes: u64,
    /// Open file descriptors, summed.
    pub open_fds: u64,
    /// The highest share of its descriptor limit a process uses (0 when none is limited).
    pub fd_usage_ratio: f64,
    /// Threads, summed.
    pub threads: u64,
}

/// One server name's liveness.
#[derive(Clone, Debug, PartialEq)]
pub struct ServerState {
    /// The server name.
    pub server: String,
    /// Live processes serving it.
    pub processes: u32,
    /// Whether one lives.
    pub up: bool,
    /// Times a process of it was replaced by a new one.
    pub restarts: u64,
}

/// One round of the health stage: every server name's state, and (when it sampled) what
/// each process uses.
#[derive(Clone, Debug, PartialEq)]
pub struct ServerReport {
    /// Wall-clock ns.
    pub ts_ns: u64,
    /// Processes sampled this round (empty when the round only reports a change of state).
    pub samples: Vec<ProcessSample>,
    /// What each (server, container) group uses; `None` when nothing was sampled.
    pub usage: Option<Vec<ServerUsage>>,
    /// Every server name known.
    pub servers: Vec<ServerState>,
}

/// An HTTP request to an MCP server (Streamable HTTP or legacy SSE), whatever it carried:
/// a POST of messages, the GET of an event stream, the DELETE that ends a session.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct HttpRequest {
    /// Wall-clock ns of the request's first byte.
    #[serde(skip)]
    pub ts_ns: u64,
    /// `http` or `sse`.
    pub transport: Transport,
    /// The session, as in the exchange records.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    /// Request method.
    pub http_method: String,
    /// The request path, with query and identifiers collapsed (`/messages/`, `/mcp`).
    pub endpoint: String,
    /// Response status; absent when the connection ended without one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_status: Option<u16>,
    /// First byte of the request to the last of the response (or to the connection's end).
    pub duration_ms: f64,
    /// Whose view it is: `server` when the server process is watched, else `client`.
    pub seen_by: Role,
    /// The MCP client.
    pub client: Endpoint,
    /// The MCP server.
    pub server: Endpoint,
}

/// The path of a request target, bounded for a label: the query goes, and each segment that
/// looks like an identifier (a number, a UUID, a long run of hex or base64 characters)
/// becomes `{id}`; at most four segments are kept.
pub fn endpoint_of(target: &str) -> String {
    let path = target.split(['?', '#']).next().unwrap_or("");
    let path = match path.find("://") {
        // An absolute-form target: its path only.
        Some(i) => path[i + 3..].find('/').map_or("/", |j| &path[i + 3 + j..]),
        None => path,
    };
    if path.is_empty() || !path.starts_with('/') {
        return if path == "*" { "*".into() } else { "/".into() };
    }
    let mut out = String::new();
    let segments: Vec<&str> = path[1..].split('/').collect();
    for (n, seg) in segments.iter().enumerate() {
        if n == 4 {
            out.push_str("/…");
            break;
        }
        out.push('/');
        out.push_str(if looks_like_id(seg) { "{id}" } else { seg });
    }
    out
}

fn looks_like_id(seg: &str) -> bool {
    let b = seg.as_bytes();
    if b.is_empty() {
        return false;
    }
    let digits = b.iter().all(u8::is_ascii_digit);
    let hexish = b.iter().all(|c| c.is_ascii_hexdigit() || *c == b'-');
    let has_digit = b.iter().any(u8::is_ascii_digit);
    let token = b
        .iter()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.' | b'~' | b'%'));
    digits || (hexish && b.len() >= 8) || (token && has_digit && b.len() >= 16) || b.len() > 64
}

#[cfg(test)]
mod tests {
    use super::endpoint_of;

    #[test]
    fn endpoints_collapse_identifiers_and_drop_queries() {
        for (target, want) in [
            ("/mcp", "/mcp"),
            ("/mcp/", "/mcp/"),
            ("/messages/?session_id=4f9c0d8e1a2b", "/messages/"),
            ("/sessions/123/stream", "/sessions/{id}/stream"),
            ("/s/0b8e6f7a-55f1-4c1e-9d7a-3f0a9c2e4b11/mcp", "/s/{id}/mcp"),
            ("/t/aGVsbG8gd29ybGQgMTIzNDU2/x", "/t/{id}/x"),
            ("/healthz", "/healthz"),
            ("/a/b/c/d/e/f", "/a/b/c/d/…"),
            ("http://127.0.0.1:3001/mcp?x=1", "/mcp"),
            ("", "/"),
            ("*", "*"),
            ("/deadbeef", "/{id}"),
            ("/feed", "/feed"),
        ] {
            assert_eq!(endpoint_of(target), want, "{target}");
        }
    }
}

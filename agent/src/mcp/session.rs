//! Sessions: the conversation between two ends, who is client and who is server, and how
//! each end is named in outputs.

use super::message::PeerInfo;
use super::transport::route::{Route, SessionKey, Side, other};
use crate::signal::process::Processes;
use crate::signal::{Endpoint, Role};

/// One end of a session.
#[derive(Clone, Debug, Default)]
pub struct End {
    /// Its process, when known.
    pub pid: Option<u32>,
    /// Its MCP role, once known.
    pub role: Option<Role>,
    /// `clientInfo` or `serverInfo`.
    pub info: Option<PeerInfo>,
    /// Whether any of this end's own records were seen (it is watched).
    pub observed: bool,
    /// Monotonic time it exited, if it did.
    pub exited_ns: Option<u64>,
    /// The TLS library its own views were read from.
    pub tls_library: Option<crate::signal::TlsLibrary>,
}

/// A session: the conversation between two ends.
#[derive(Debug)]
pub struct Session {
    /// Key.
    pub key: SessionKey,
    /// Sides are fixed roles (0 client, 1 server).
    pub roles_fixed: bool,
    /// Ends, by side.
    pub ends: [End; 2],
    /// Transport name.
    pub transport: crate::signal::Transport,
    /// Negotiated protocol version.
    pub protocol_version: Option<String>,
    /// Its messages travelled inside TLS.
    pub tls: bool,
    /// The HTTP version that carried its messages (HTTP and WebSocket).
    pub http_version: Option<crate::signal::HttpVersion>,
    /// Label used in outputs, fixed once first used.
    label: Option<String>,
    /// Monotonic time of the first message.
    pub started_ns: u64,
    /// Monotonic time of the latest message.
    pub last_ns: u64,
}

impl Session {
    /// A session for `route`.
    pub fn new(route: &Route, now: u64) -> Self {
        let mut ends: [End; 2] = Default::default();
        if let SessionKey::Procs { lo, hi } = route.key {
            ends[0].pid = (lo != 0).then_some(lo);
            ends[1].pid = (hi != 0).then_some(hi);
        }
        if route.roles_fixed {
            ends[0].role = Some(Role::Client);
            ends[1].role = Some(Role::Server);
        }
        Session {
            key: route.key.clone(),
            roles_fixed: route.roles_fixed,
            ends,
            transport: route.transport,
            protocol_version: None,
            tls: false,
            http_version: None,

            label: route.label.clone(),
            started_ns: now,
            last_ns: now,
        }
    }

    /// The session is now known by `key` (a stdio link whose far end was named late): the
    /// label is worked out again.
    pub fn rename(&mut self, key: SessionKey) {
        self.key = key;
        self.label = None;
    }

    /// Record that `side` has the MCP role `role` (first evidence wins).
    pub fn set_role(&mut self, side: Side, role: Role) {
        if self.ends[side].role.is_none() && self.ends[other(side)].role != Some(role) {
            self.ends[side].role = Some(role);
            let opposite = match role {
                Role::Client => Role::Server,
                Role::Server => Role::Client,
                Role::Unknown => return,
            };
            if self.ends[other(side)].role.is_none() {
                self.ends[other(side)].role = Some(opposite);
            }
        }
    }

    /// The side playing `role`, deciding it if nothing has yet: stdio servers are the
    /// children of their clients, so a parent is the client.
    pub fn side_with_role(&mut self, role: Role, procs: &Processes, requester: Side) -> Side {
        if self.ends[0].role.is_none() && self.ends[1].role.is_none() {
            let parent_of = |a: Side, b: Side| -> bool {
                match (self.ends[a].pid, self.ends[b].pid) {
                    (Some(pa), Some(pb)) => procs.get(pb).is_some_and(|p| p.ppid == pa),
                    _ => false,
                }
            };
            let client = if parent_of(0, 1) {
                0
            } else if parent_of(1, 0) {
                1
            } else {
                requester
            };
            self.set_role(client, Role::Client);
        }
        if self.ends[0].role == Some(role) {
            0
        } else {
            1
        }
    }

    /// The label used in outputs: `stdio:CLIENTPID-SERVERPID` for process pairs, the session
    /// id for HTTP sessions, none for single connections.
    pub fn label(&mut self, procs: &Processes) -> Option<String> {
        if self.label.is_some() || !matches!(self.key, SessionKey::Procs { .. }) {
            return self.label.clone();
        }
        let c = self.side_with_role(Role::Client, procs, 0);
        let pid = |s: Side| {
            self.ends[s]
                .pid
                .map_or_else(|| "?".to_string(), |p| p.to_string())
        };
        let l = format!("{}:{}-{}", self.transport, pid(c), pid(other(c)));
        self.label = Some(l.clone());
        Some(l)
    }

    /// The reported identity of one side.
    pub fn endpoint(&self, side: Side, procs: &Processes) -> Endpoint {
        let end = &self.ends[side];
        let proc = end.pid.and_then(|p| procs.get(p));
        Endpoint {
            pid: end.pid,
            comm: proc.map(|p| p.comm.clone()).unwrap_or_default(),
            exe: proc.map(|p| p.exe.clone()).unwrap_or_default(),
            name: end.info.as_ref().map(|i| i.name.clone()),
            version: end.info.as_ref().map(|i| i.version.clone()),
            k8s: proc.and_then(|p| p.k8s.clone()),
        }
    }
}

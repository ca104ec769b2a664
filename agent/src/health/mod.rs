//! Stage 6, beside the agentic layer: the health of the processes that serve MCP.
//!
//! It reads the signals the stages below made for the processes they name as servers (the
//! server end of a session or exchange, whose pid is on this host), and follows each such
//! process: what it uses, sampled from `/proc` every `--process-interval` through
//! [`Host::usage`]; its exit (the kernel's exit record, or a sample that finds it gone); and
//! so whether each server name is up and how often a process of it was replaced by a new one.
//!
//! A process serves under its `serverInfo.name` once a handshake or exchange names it, and
//! under its comm until then; moving from its comm to its name is neither an exit nor a
//! restart. A restart is a new process serving a name after one of the name's processes
//! exited (a stdio server its client spawns afresh for each session restarts each time).
//!
//! Bounded: at most [`MAX_PROCESSES`] processes and [`MAX_SERVERS`] names; past either cap
//! the least recently seen go, counted. A name no process serves is forgotten
//! `--server-forget` after its last exit.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::bounded::TableStat;
use crate::capture::host::{Host, ProcInfo, ProcessUsage};
use crate::capture::recording::ClockAnchor;
use crate::signal::health::{ProcessSample, ServerReport, ServerState, ServerUsage};
use crate::signal::process::Processes;
use crate::signal::{Endpoint, Event, Signal, What};

/// Server processes followed at most.
pub const MAX_PROCESSES: usize = 16_384;
/// Server names known at most.
pub const MAX_SERVERS: usize = 4_096;

/// Settings of the stage.
#[derive(Clone, Copy, Debug)]
pub struct Config {
    /// How often processes are sampled (ns); 0 never.
    pub interval_ns: u64,
    /// How long a name no process serves is kept (and reported down), in ns.
    pub forget_ns: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            interval_ns: 15_000_000_000,
            forget_ns: 3_600_000_000_000,
        }
    }
}

/// What the stage counted.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    /// Process samples taken.
    pub samples: u64,
    /// Processes found gone by a sample, their exit not seen (an unwatched process, or a
    /// lost record).
    pub vanished: u64,
    /// Processes forgotten to hold the cap.
    pub evicted_processes: u64,
    /// Names forgotten to hold the cap.
    pub evicted_servers: u64,
}

/// One process followed.
struct Proc {
    /// The name it serves under.
    server: String,
    /// Whether that is its MCP name (not its comm).
    named: bool,
    info: Arc<ProcInfo>,
    /// Wall ns it was first seen serving, and last.
    first_ns: u64,
    seen_ns: u64,
    last: Option<ProcessUsage>,
}

impl Proc {
    /// Its (server, container) group.
    fn group(&self) -> Group {
        let k = self.info.k8s.as_deref();
        let container = k
            .and_then(|k| k.container_id.clone().or_else(|| k.pod_uid.clone()))
            .unwrap_or_default();
        (self.server.clone(), container)
    }
}

/// A server name and the container its processes run in.
type Group = (String, String);

/// One server name.
#[derive(Default)]
struct Name {
    live: u32,
    /// Exits not yet followed by a new process: the next one is a restart.
    unreplaced: u32,
    restarts: u64,
    /// Wall ns its last process exited, while none serves it.
    down_since: Option<u64>,
    /// Wall ns it was last touched.
    seen_ns: u64,
}

impl Name {
    /// Only ever a comm, left by a process that took its MCP name: nothing to report.
    fn is_empty(&self) -> bool {
        self.live == 0 && self.restarts == 0 && self.unreplaced == 0 && self.down_since.is_none()
    }
}

/// The stage.
pub struct Health {
    cfg: Config,
    clock: ClockAnchor,
    procs: crate::FastMap<u32, Proc>,
    names: BTreeMap<String, Name>,
    /// CPU seconds of each group's exited processes, while the group lives.
    carried: BTreeMap<Group, f64>,
    /// The last pid seen named: most signals name the same server as the one before.
    last_named: Option<u32>,
    /// Monotonic ns of the last sample.
    sampled_ns: Option<u64>,
    /// Wall ns, moved on by what passes.
    now: u64,
    /// A state changed since the last report.
    changed: bool,
    /// What it counted.
    pub stats: Stats,
}

impl Health {
    /// An empty stage.
    pub fn new(cfg: Config, clock: ClockAnchor) -> Self {
        Health {
            cfg,
            clock,
            procs: Default::default(),
            names: BTreeMap::new(),
            carried: BTreeMap::new(),
            last_named: None,
            sampled_ns: None,
            now: 0,
            changed: false,
            stats: Stats::default(),
        }
    }

    /// Look at signals on their way out for the servers they name; events this makes go to
    /// `out`.
    pub fn observe(&mut self, signals: &[Signal], procs: &Processes, out: &mut Vec<Signal>) {
        for s in signals {
            let server = match s {
                Signal::Exchange(x) => &x.server,
                Signal::Event(e) => match &e.what {
                    What::SessionStart { server, .. }
                    | What::Handshake(crate::signal::Handshake { server, .. }) => server,
                    What::SessionEnd(end) => &end.server,
                    _ => continue,
                },
                _ => continue,
            };
            let Some(pid) = server.pid else {
                continue;
            };
            if self.last_named == Some(pid) {
                continue;
            }
            let ts = match s {
                Signal::Exchange(x) => x.ts_ns,
                Signal::Event(e) => e.ts_ns,
                _ => 0,
            };
            self.now = self.now.max(ts);
            self.serves(pid, server, procs, out);
        }
    }

    /// `pid` serves MCP as `server` names it.
    fn serves(&mut self, pid: u32, server: &Endpoint, procs: &Processes, out: &mut Vec<Signal>) {
        let mcp_name = server.name.as_deref().filter(|n| !n.is_empty());
        if let Some(p) = self.procs.get_mut(&pid) {
            p.seen_ns = self.now;
            match mcp_name {
                Some(n) if !p.named || p.server != n => {}
                _ => {
                    if p.named {
                        self.last_named = Some(pid);
                    }
                    return;
                }
            }
            // It has its MCP name now: it moves, without an exit.
            let p = self.procs.remove(&pid).expect("just found");
            self.leave(&p.server, false);
            self.join(pid, p.info, mcp_name.map(str::to_string), p.first_ns, out);
            return;
        }
        // Signals about a process can follow its exit (its sessions end after it): they
        // do not bring it back.
        let Some(info) = procs.get(pid).filter(|_| !procs.has_exited(pid)) else {
            return;
        };
        if self.procs.len() >= MAX_PROCESSES {
            self.evict_process();
        }
        let info = info.clone();
        self.join(pid, info, mcp_name.map(str::to_string), self.now, out);
    }

    /// Process `pid` joins the name it serves under.
    fn join(
        &mut self,
        pid: u32,
        info: Arc<ProcInfo>,
        mcp_name: Option<String>,
        first_ns: u64,
        out: &mut Vec<Signal>,
    ) {
        let named = mcp_name.is_some();
        let server = mcp_name.unwrap_or_else(|| match info.comm.as_str() {
            "" => "unknown".to_string(),
            c => c.to_string(),
        });
        if !self.names.contains_key(&server) && self.names.len() >= MAX_SERVERS {
            self.evict_name();
        }
        let now = self.now;
        let name = self.names.entry(server.clone()).or_default();
        name.live += 1;
        name.seen_ns = now;
        let down_s = name
            .down_since
            .take()
            .map_or(0.0, |t| now.saturating_sub(t) as f64 / 1e9);
        let restart = (name.unreplaced > 0).then(|| {
            name.unreplaced -= 1;
            name.restarts += 1;
            What::ServerRestart {
                server: server.clone(),
                restarts: name.restarts,
                down_s,
            }
        });
        self.changed = true;
        if named {
            self.last_named = Some(pid);
        }
        let p = Proc {
            server,
            named,
            info,
            first_ns,
            seen_ns: now,
            last: None,
        };
        self.procs.insert(pid, p);
        if let Some(what) = restart {
            out.push(self.event(what, pid));
        }
    }

    /// A process leaves `server`: by its exit (`exited`), or to serve under its MCP name.
    /// Returns whether the name is now down.
    fn leave(&mut self, server: &str, exited: bool) -> bool {
        let now = self.now;
        let Some(name) = self.names.get_mut(server) else {
            return false;
        };
        name.live = name.live.saturating_sub(1);
        name.seen_ns = now;
        self.changed = true;
        if exited {
            name.unreplaced += 1;
        }
        if name.live > 0 {
            return false;
        }
        if name.is_empty() {
            self.names.remove(server);
            return false;
        }
        if exited {
            name.down_since = Some(now);
        }
        exited
    }

    fn event(&self, what: What, pid: u32) -> Signal {
        let mut e = Event::new(self.now, what);
        e.pid = Some(pid);
        e.comm = self.procs.get(&pid).map(|p| p.info.comm.clone());
        Signal::Event(e)
    }

    /// Process `pid` exited at monotonic `ts`.
    pub fn exited(&mut self, pid: u32, ts: u64, out: &mut Vec<Signal>) {
        self.now = self.now.max(self.clock.wall_ns(ts));
        self.gone(pid, out);
    }

    fn gone(&mut self, pid: u32, out: &mut Vec<Signal>) {
        let Some(p) = self.procs.get(&pid) else {
            return;
        };
        let event = self.event(
            What::ServerDown {
                server: p.server.clone(),
                served_s: self.now.saturating_sub(p.first_ns) as f64 / 1e9,
            },
            pid,
        );
        let p = self.procs.remove(&pid).expect("just found");
        if self.last_named == Some(pid) {
            self.last_named = None;
        }
        if let Some(u) = p.last {
            *self.carried.entry(p.group()).or_default() += u.cpu_seconds;
        }
        if self.leave(&p.server, true) {
            out.push(event);
        }
    }

    /// Time passes (monotonic `now`): sample the processes when due (with `host`; `None`
    /// never samples), forget names down too long, and report what changed.
    pub fn tick(&mut self, now: u64, host: Option<&mut dyn Host>, out: &mut Vec<Signal>) {
        self.now = self.now.max(self.clock.wall_ns(now));
        self.forget_down();
        let due = self.cfg.interval_ns > 0
            && self
                .sampled_ns
                .is_none_or(|t| now.saturating_sub(t) >= self.cfg.interval_ns);
        let mut samples = None;
        if let (true, Some(host)) = (due, host) {
            self.sampled_ns = Some(now);
            samples = Some(self.sample(host, out));
        }
        if samples.is_none() && !self.changed {
            return;
        }
        self.changed = false;
        let usage = samples.as_ref().map(|s| self.usage(s));
        let report = ServerReport {
            ts_ns: self.now,
            samples: samples.unwrap_or_default(),
            usage,
            servers: self.states(),
        };
        out.push(Signal::Servers(Box::new(report)));
    }

    /// Read what every process uses; those gone are exits.
    fn sample(&mut self, host: &mut dyn Host, out: &mut Vec<Signal>) -> Vec<ProcessSample> {
        let mut samples = Vec::with_capacity(self.procs.len());
        let mut vanished = Vec::new();
        for (&pid, p) in &mut self.procs {
            match host.usage(pid, p.info.start_time) {
                Some(u) => {
                    p.last = Some(u);
                    samples.push(ProcessSample {
                        process: Endpoint {
                            name: Some(p.server.clone()),
                            ..Endpoint::of_info(&p.info)
                        },
                        usage: u,
                    });
                }
                None => vanished.push(pid),
            }
        }
        self.stats.samples += samples.len() as u64;
        self.stats.vanished += vanished.len() as u64;
        for pid in vanished {
            self.gone(pid, out);
        }
        samples.sort_by_key(|s| s.process.pid);
        samples
    }

    /// What each (server, container) group uses, from this round's samples; groups with no
    /// live process drop what they carried.
    fn usage(&mut self, samples: &[ProcessSample]) -> Vec<ServerUsage> {
        let mut groups: BTreeMap<Group, ServerUsage> = BTreeMap::new();
        for s in samples {
            let Some(p) = s.process.pid.and_then(|pid| self.procs.get(&pid)) else {
                continue;
            };
            let u = &s.usage;
            let g = groups.entry(p.group()).or_insert_with(|| ServerUsage {
                server: Endpoint {
                    pid: None,
                    ..s.process.clone()
                },
                processes: 0,
                cpu_seconds: 0.0,
                resident_bytes: 0,
                open_fds: 0,
                fd_usage_ratio: 0.0,
                threads: 0,
            });
            g.processes += 1;
            g.cpu_seconds += u.cpu_seconds;
            g.resident_bytes += u.resident_bytes;
            g.open_fds += u.open_fds;
            g.threads += u.threads;
            if let Some(max) = u.max_fds.filter(|m| *m > 0) {
                g.fd_usage_ratio = g.fd_usage_ratio.max(u.open_fds as f64 / max as f64);
            }
        }
        self.carried.retain(|k, _| groups.contains_key(k));
        for (k, g) in &mut groups {
            g.cpu_seconds += self.carried.get(k).copied().unwrap_or(0.0);
        }
        groups.into_values().collect()
    }

    fn states(&self) -> Vec<ServerState> {
        self.names
            .iter()
            .map(|(server, n)| ServerState {
                server: server.clone(),
                processes: n.live,
                up: n.live > 0,
                restarts: n.restarts,
            })
            .collect()
    }

    /// Names no process has served for `forget_ns` go.
    fn forget_down(&mut self) {
        let (now, keep) = (self.now, self.cfg.forget_ns);
        let before = self.names.len();
        self.names
            .retain(|_, n| n.down_since.is_none_or(|t| now.saturating_sub(t) < keep));
        self.changed |= self.names.len() != before;
    }

    fn evict_process(&mut self) {
        let seen = self.procs.iter().map(|(pid, p)| (p.seen_ns, *pid));
        let victims = crate::bounded::least_recent(seen, MAX_PROCESSES - 1);
        log::warn!(
            "{} server processes followed (cap {MAX_PROCESSES}): forgetting the {} least recently seen",
            self.procs.len(),
            victims.len()
        );
        self.stats.evicted_processes += victims.len() as u64;
        for pid in victims {
            if let Some(p) = self.procs.remove(&pid) {
                self.leave(&p.server, false);
            }
        }
        self.last_named = None;
    }

    fn evict_name(&mut self) {
        let seen = self.names.iter().map(|(n, s)| (s.seen_ns, n.clone()));
        let victims = crate::bounded::least_recent(seen, MAX_SERVERS - 1);
        log::warn!(
            "{} server names known (cap {MAX_SERVERS}): forgetting the {} least recently seen",
            self.names.len(),
            victims.len()
        );
        self.stats.evicted_servers += victims.len() as u64;
        for name in victims {
            self.names.remove(&name);
            self.procs.retain(|_, p| p.server != name);
        }
        self.last_named = None;
        self.changed = true;
    }

    /// The stage's tables.
    pub fn tables(&self) -> Vec<TableStat> {
        vec![
            TableStat::new(
                "server_processes",
                self.procs.len(),
                MAX_PROCESSES,
                self.stats.evicted_processes,
            ),
            TableStat::new(
                "server_names",
                self.names.len(),
                MAX_SERVERS,
                self.stats.evicted_servers,
            ),
        ]
    }
}

#[cfg(test)]
mod tests;

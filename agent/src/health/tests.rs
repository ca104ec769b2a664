//! The health stage on made-up processes: names, exits, restarts, samples and the CPU a
//! group keeps across an exit.

use std::collections::HashMap;

use super::*;
use crate::capture::host::{FixedHost, Holder, HolderKind};
use crate::signal::Exchange;

const S: u64 = 1_000_000_000;

/// A host whose processes use what the test says; a pid it does not know is gone.
#[derive(Default)]
struct Usage {
    procs: FixedHost,
    usage: HashMap<u32, ProcessUsage>,
}

impl Host for Usage {
    fn process(&mut self, pid: u32) -> Option<ProcInfo> {
        self.procs.process(pid)
    }
    fn holders(&mut self, _kind: HolderKind, _inode: u64) -> Vec<Holder> {
        Vec::new()
    }
    fn usage(&mut self, pid: u32, _start: u64) -> Option<ProcessUsage> {
        self.usage.get(&pid).copied()
    }
}

struct World {
    host: Usage,
    procs: Processes,
    health: Health,
    out: Vec<Signal>,
}

impl World {
    fn new() -> Self {
        World {
            host: Usage::default(),
            procs: Processes::default(),
            health: Health::new(
                Config {
                    interval_ns: 10 * S,
                    forget_ns: 600 * S,
                },
                ClockAnchor::default(),
            ),
            out: Vec::new(),
        }
    }

    /// Process `pid` (comm `comm`) exists and uses `cpu` seconds and `rss` bytes.
    fn process(&mut self, pid: u32, comm: &str, cpu: f64, rss: u64) {
        self.host.procs.processes.insert(
            pid,
            ProcInfo {
                pid,
                comm: comm.into(),
                ..Default::default()
            },
        );
        self.host.usage.insert(
            pid,
            ProcessUsage {
                cpu_seconds: cpu,
                resident_bytes: rss,
                open_fds: 10,
                max_fds: Some(100),
                threads: 2,
            },
        );
        self.procs.note(&mut self.host, pid, comm);
    }

    /// An exchange served by `pid`, under `name` if it has one yet, at `t` seconds.
    fn served(&mut self, pid: u32, name: Option<&str>, t: u64) {
        let x = Exchange {
            ts_ns: t * S,
            server: Endpoint {
                pid: Some(pid),
                name: name.map(str::to_string),
                ..Default::default()
            },
            ..Default::default()
        };
        self.health
            .observe(&[Signal::Exchange(x)], &self.procs, &mut self.out);
    }

    fn exit(&mut self, pid: u32, t: u64) {
        self.host.usage.remove(&pid);
        self.health.exited(pid, t * S, &mut self.out);
    }

    /// Tick at `t` seconds with the host; the report it made, if any.
    fn tick(&mut self, t: u64) -> Option<ServerReport> {
        self.health.tick(t * S, Some(&mut self.host), &mut self.out);
        self.take().1
    }

    /// The events made since the last look, by name, and the last report.
    fn take(&mut self) -> (Vec<&'static str>, Option<ServerReport>) {
        let mut events = Vec::new();
        let mut report = None;
        for s in self.out.drain(..) {
            match s {
                Signal::Event(e) => events.push(e.name()),
                Signal::Servers(r) => report = Some(*r),
                _ => {}
            }
        }
        (events, report)
    }
}

fn state(r: &ServerReport, name: &str) -> Option<(bool, u32, u64)> {
    r.servers
        .iter()
        .find(|s| s.server == name)
        .map(|s| (s.up, s.processes, s.restarts))
}

#[test]
fn a_server_goes_down_at_its_exit_and_a_new_process_is_a_restart() {
    let mut w = World::new();
    w.process(10, "python3", 1.5, 4096);
    w.served(10, Some("files"), 1);
    let r = w.tick(1).expect("a first sample");
    assert_eq!(state(&r, "files"), Some((true, 1, 0)));
    assert_eq!(r.samples.len(), 1);
    assert_eq!(r.samples[0].process.name.as_deref(), Some("files"));
    assert_eq!(r.samples[0].usage.resident_bytes, 4096);

    w.exit(10, 2);
    let (events, _) = w.take();
    assert_eq!(events, ["server_down"]);
    let r = w.tick(3).expect("the change is reported");
    assert_eq!(state(&r, "files"), Some((false, 0, 0)));
    assert!(r.usage.is_none(), "not a sampling round");

    w.process(11, "python3", 0.1, 2048);
    w.served(11, Some("files"), 5);
    let (events, _) = w.take();
    assert_eq!(events, ["server_restart"]);
    let r = w.tick(11).unwrap();
    assert_eq!(state(&r, "files"), Some((true, 1, 1)));
}

#[test]
fn taking_its_mcp_name_is_neither_an_exit_nor_a_restart() {
    let mut w = World::new();
    w.process(20, "node", 1.0, 1000);
    w.served(20, None, 1);
    let r = w.tick(1).unwrap();
    assert_eq!(state(&r, "node"), Some((true, 1, 0)));
    w.served(20, Some("everything"), 2);
    let (events, _) = w.take();
    assert!(events.is_empty(), "{events:?}");
    let r = w.tick(2).unwrap();
    assert_eq!(state(&r, "node"), None, "the comm goes quietly");
    assert_eq!(state(&r, "everything"), Some((true, 1, 0)));
}

#[test]
fn a_group_keeps_the_cpu_of_a_process_that_exited_while_others_live() {
    let mut w = World::new();
    w.process(30, "python3", 5.0, 100);
    w.process(31, "python3", 7.0, 200);
    w.served(30, Some("git"), 1);
    w.served(31, Some("git"), 1);
    let r = w.tick(1).unwrap();
    let u = &r.usage.unwrap()[0];
    assert_eq!(
        (
            u.processes,
            u.cpu_seconds,
            u.resident_bytes,
            u.fd_usage_ratio
        ),
        (2, 12.0, 300, 0.1)
    );
    w.exit(30, 5);
    let (events, _) = w.take();
    assert!(
        events.is_empty(),
        "another process still serves: {events:?}"
    );
    let r = w.tick(11).unwrap();
    let u = &r.usage.as_ref().unwrap()[0];
    assert_eq!((u.processes, u.cpu_seconds), (1, 12.0), "monotonic");
    assert_eq!(state(&r, "git"), Some((true, 1, 0)));
}

#[test]
fn a_process_a_sample_finds_gone_exited_and_a_name_down_long_enough_is_forgotten() {
    let mut w = World::new();
    w.process(40, "srv", 1.0, 1);
    w.served(40, Some("time"), 1);
    w.tick(1).unwrap();
    w.host.usage.remove(&40);
    let r = w.tick(11).unwrap();
    assert_eq!(w.health.stats.vanished, 1);
    assert_eq!(state(&r, "time"), Some((false, 0, 0)));
    // Down from 11 s; forgotten 600 s later.
    let r = w.tick(600).unwrap();
    assert_eq!(state(&r, "time"), Some((false, 0, 0)));
    let r = w.tick(612).unwrap();
    assert_eq!(state(&r, "time"), None);
}

#[test]
fn nothing_is_reported_without_servers_or_changes_between_samples() {
    let mut w = World::new();
    let r = w.tick(1).expect("an empty first round");
    assert!(r.servers.is_empty() && r.samples.is_empty());
    assert!(w.tick(2).is_none(), "nothing due, nothing changed");
    w.health.tick(20 * S, None, &mut w.out);
    assert!(w.take().1.is_none(), "no host, no sample");
}

//! What the host can tell about a process or a pipe, behind one trait so that the pipeline
//! runs the same live (procfs), recorded (answers saved to the `--record` file) and replayed.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// Metadata of one process.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcInfo {
    /// Process id.
    pub pid: u32,
    /// Parent process id (0 when unknown).
    pub ppid: u32,
    /// Short command name.
    pub comm: String,
    /// Path of the executable ("" when unreadable).
    pub exe: String,
    /// Command line.
    pub cmdline: Vec<String>,
    /// Cgroup path: the one that names a container, else the unified hierarchy's (see
    /// [`crate::capture::cgroup::select`]).
    pub cgroup: String,
    /// When the process started (clock ticks after boot, `/proc/PID/stat`): tells a reused
    /// pid from the process that had it before. 0 when unknown.
    #[serde(default)]
    pub start_time: u64,
    /// Container and pod derived from `cgroup`; not saved by `--record` (replay derives it
    /// again from the path).
    #[serde(skip)]
    pub k8s: Option<Arc<crate::capture::cgroup::Identity>>,
}

impl ProcInfo {
    /// Derive [`ProcInfo::k8s`] from the cgroup path.
    pub fn with_k8s(mut self) -> Self {
        if self.k8s.is_none() {
            self.k8s = crate::capture::cgroup::parse(&self.cgroup).map(Arc::new);
        }
        self
    }
}

/// What a process is using, read from `/proc/PID` (stat, fd, limits).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ProcessUsage {
    /// CPU time, user and system, in seconds since the process started.
    pub cpu_seconds: f64,
    /// Resident memory in bytes.
    pub resident_bytes: u64,
    /// Open file descriptors.
    pub open_fds: u64,
    /// The soft limit on open file descriptors (`RLIMIT_NOFILE`); absent when unlimited or
    /// unreadable.
    pub max_fds: Option<u64>,
    /// Threads.
    pub threads: u64,
}

/// What kind of inode a holder holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HolderKind {
    /// `pipe:[N]`
    Pipe,
    /// `socket:[N]`
    Socket,
}

/// A process holding a pipe or socket open.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    /// Process id.
    pub pid: u32,
    /// True when its fd is open for writing (for a pipe: it holds the write end).
    pub writes: bool,
}

/// Questions the pipeline asks about the host.
pub trait Host {
    /// Metadata of a process, if it still exists (or was recorded).
    fn process(&mut self, pid: u32) -> Option<ProcInfo>;
    /// Processes that hold pipe or socket `inode` open.
    fn holders(&mut self, kind: HolderKind, inode: u64) -> Vec<Holder>;
    /// The TLS library the probes found in process `pid`, if any (not recorded: a replay
    /// knows none).
    fn tls_library(&mut self, _pid: u32) -> Option<crate::signal::TlsLibrary> {
        None
    }
    /// What process `pid` uses now, if it is still the process that started at
    /// `start_time` (0: whichever it is). Not recorded: a replay knows none.
    fn usage(&mut self, _pid: u32, _start_time: u64) -> Option<ProcessUsage> {
        None
    }
}

/// What the TLS probes found in each process, shared by the probes (which fill it) and the
/// live host (which answers from it); same thread, so a `RefCell`.
pub type TlsLibraries =
    std::rc::Rc<std::cell::RefCell<crate::FastMap<u32, crate::signal::TlsLibrary>>>;

/// A host that knows nothing: for work that happens without a record to answer for (timers).
pub struct NoHost;

impl Host for NoHost {
    fn process(&mut self, _pid: u32) -> Option<ProcInfo> {
        None
    }
    fn holders(&mut self, _kind: HolderKind, _inode: u64) -> Vec<Holder> {
        Vec::new()
    }
}

/// Read what process `pid` uses from /proc (four small files): `None` when it is gone, or
/// the pid now names a process that started at another time than `start_time`.
pub fn proc_usage(pid: u32, start_time: u64) -> Option<ProcessUsage> {
    use procfs::process::LimitValue;
    let p = procfs::process::Process::new(pid as i32).ok()?;
    let stat = p.stat().ok()?;
    if start_time != 0 && stat.starttime != start_time {
        return None;
    }
    let ticks = procfs::ticks_per_second().max(1) as f64;
    let max_fds = p
        .limits()
        .ok()
        .and_then(|l| match l.max_open_files.soft_limit {
            LimitValue::Value(n) => Some(n),
            LimitValue::Unlimited => None,
        });
    Some(ProcessUsage {
        cpu_seconds: (stat.utime + stat.stime) as f64 / ticks,
        resident_bytes: stat.rss.saturating_mul(procfs::page_size()),
        open_fds: p.fd_count().ok()? as u64,
        max_fds,
        threads: stat.num_threads.max(0) as u64,
    })
}

/// Most pipe and socket inodes one scan of `/proc/*/fd` indexes: a host with millions of
/// sockets costs a bounded map, and the inode asked about is indexed whatever the count.
const MAX_INDEXED: usize = 65_536;

/// The live host, read through /proc.
#[derive(Default)]
pub struct ProcHost {
    /// Holders by inode, from the last full scan of /proc/*/fd.
    index: HashMap<(HolderKind, u64), Vec<Holder>>,
    scanned_at: Option<Instant>,
    /// Inodes a scan was forced for although the last one was recent (each gets one).
    forced: std::collections::HashSet<(HolderKind, u64)>,
    /// Scans forced in the current second, and when it began.
    forced_window: Option<(Instant, u32)>,
    /// What the TLS probes found in each process.
    pub tls_libraries: TlsLibraries,
}

/// Minimum time between two scans of every process's fd table, so that a burst of questions
/// about new links costs one scan...
const RESCAN_AFTER: Duration = Duration::from_millis(5);
/// ...except for an inode the last scan did not know (a link made since): it gets one scan
/// of its own, up to this many a second (a scan reads every process's fd table).
const FORCED_PER_SECOND: u32 = 20;

impl ProcHost {
    fn scan(&mut self, wanted: (HolderKind, u64)) {
        self.index.clear();
        let Ok(dir) = std::fs::read_dir("/proc") else {
            return;
        };
        for pid in pids_in(dir) {
            let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
                continue;
            };
            for fd in fds.flatten() {
                let Ok(target) = std::fs::read_link(fd.path()) else {
                    continue;
                };
                let Some((kind, ino)) = target.to_str().and_then(parse_fd_target) else {
                    continue;
                };
                if self.index.len() >= MAX_INDEXED
                    && (kind, ino) != wanted
                    && !self.index.contains_key(&(kind, ino))
                {
                    continue;
                }
                let writes = fd_writes(pid, &fd.file_name().to_string_lossy());
                let holders = self.index.entry((kind, ino)).or_default();
                let h = Holder { pid, writes };
                if !holders.contains(&h) {
                    holders.push(h);
                }
            }
        }
        self.scanned_at = Some(Instant::now());
    }
}

impl ProcHost {
    /// Whether a scan may be forced for `key`, an inode the recent scan did not find: once
    /// per inode, and at most [`FORCED_PER_SECOND`] a second.
    fn may_force(&mut self, key: (HolderKind, u64)) -> bool {
        if self.forced.contains(&key) {
            return false;
        }
        let now = Instant::now();
        let (began, n) = match self.forced_window {
            Some((t, n)) if now.duration_since(t) < Duration::from_secs(1) => (t, n),
            _ => (now, 0),
        };
        if n >= FORCED_PER_SECOND {
            return false;
        }
        self.forced_window = Some((began, n + 1));
        if self.forced.len() >= MAX_INDEXED {
            self.forced.clear();
        }
        self.forced.insert(key);
        true
    }
}

/// The pids among the entries of a /proc listing (its numbered directories).
pub fn pids_in(dir: std::fs::ReadDir) -> impl Iterator<Item = u32> {
    dir.flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()))
}

/// `pipe:[123]` or `socket:[456]`, as /proc/PID/fd links read.
fn parse_fd_target(t: &str) -> Option<(HolderKind, u64)> {
    let (kind, rest) = if let Some(r) = t.strip_prefix("pipe:[") {
        (HolderKind::Pipe, r)
    } else {
        (HolderKind::Socket, t.strip_prefix("socket:[")?)
    };
    Some((kind, rest.strip_suffix(']')?.parse().ok()?))
}

/// Whether /proc/PID/fdinfo/FD says the fd is open for writing.
fn fd_writes(pid: u32, fd: &str) -> bool {
    let Ok(info) = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")) else {
        return false;
    };
    info.lines()
        .find_map(|l| l.strip_prefix("flags:"))
        .and_then(|f| u32::from_str_radix(f.trim(), 8).ok())
        .map(|flags| flags & libc::O_ACCMODE as u32 != libc::O_RDONLY as u32)
        .unwrap_or(false)
}

impl Host for ProcHost {
    fn tls_library(&mut self, pid: u32) -> Option<crate::signal::TlsLibrary> {
        self.tls_libraries.borrow().get(&pid).copied()
    }

    fn usage(&mut self, pid: u32, start_time: u64) -> Option<ProcessUsage> {
        proc_usage(pid, start_time)
    }

    fn process(&mut self, pid: u32) -> Option<ProcInfo> {
        let p = procfs::process::Process::new(pid as i32).ok()?;
        let stat = p.stat().ok()?;
        Some(
            ProcInfo {
                pid,
                ppid: stat.ppid.max(0) as u32,
                comm: stat.comm,
                exe: p
                    .exe()
                    .map(|e| e.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                cmdline: p.cmdline().unwrap_or_default(),
                cgroup: std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
                    .map(|c| crate::capture::cgroup::select(&c).to_string())
                    .unwrap_or_default(),
                start_time: stat.starttime,
                k8s: None,
            }
            .with_k8s(),
        )
    }

    fn holders(&mut self, kind: HolderKind, inode: u64) -> Vec<Holder> {
        let key = (kind, inode);
        if !self.index.contains_key(&key) {
            let fresh = self.scanned_at.is_some_and(|t| t.elapsed() < RESCAN_AFTER);
            if !fresh || self.may_force(key) {
                self.scan(key);
            }
        }
        self.index.get(&key).cloned().unwrap_or_default()
    }
}

/// A host whose answers are fixed: replay files and tests.
#[derive(Default)]
pub struct FixedHost {
    /// Processes by pid.
    pub processes: HashMap<u32, ProcInfo>,
    /// Holders by inode.
    pub holders: HashMap<(HolderKind, u64), Vec<Holder>>,
    /// Answers a live host gave, per pid, in the order the pipeline asked (see
    /// [`FixedHost::recorded`]); they take precedence over `processes`.
    sequence: HashMap<u32, VecDeque<ProcInfo>>,
}

impl FixedHost {
    /// A client (comm `client`) and the server it spawned (comm `server`), talking over two
    /// pipes: the client writes `requests` and the server reads it; the server writes
    /// `responses` and the client reads it. For tests and fuzzing.
    pub fn stdio_pair(client: u32, server: u32, requests: u64, responses: u64) -> Self {
        let mut h = FixedHost::default();
        for (pid, ppid, comm) in [(client, 1, "client"), (server, client, "server")] {
            h.processes.insert(
                pid,
                ProcInfo {
                    pid,
                    ppid,
                    comm: comm.into(),
                    ..Default::default()
                },
            );
        }
        let hold = |pid, writes| Holder { pid, writes };
        h.holders.insert(
            (HolderKind::Pipe, requests),
            vec![hold(client, true), hold(server, false)],
        );
        h.holders.insert(
            (HolderKind::Pipe, responses),
            vec![hold(server, true), hold(client, false)],
        );
        h
    }

    /// Add an answer saved by `--record`. A process is described again after it execs (a
    /// wrapper that moves itself into a container's cgroup, then execs the server), so each
    /// question gets the next answer in recorded order, and the last answer stays.
    pub fn recorded(&mut self, info: ProcInfo) {
        self.sequence.entry(info.pid).or_default().push_back(info);
    }
}

impl Host for FixedHost {
    fn process(&mut self, pid: u32) -> Option<ProcInfo> {
        let info = match self.sequence.get_mut(&pid) {
            Some(q) if q.len() > 1 => q.pop_front(),
            Some(q) => q.front().cloned(),
            None => self.processes.get(&pid).cloned(),
        };
        info.map(ProcInfo::with_k8s)
    }
    fn holders(&mut self, kind: HolderKind, inode: u64) -> Vec<Holder> {
        self.holders
            .get(&(kind, inode))
            .cloned()
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_itself_and_finds_its_own_pipe() {
        let mut host = ProcHost::default();
        let me = host.process(std::process::id()).expect("own process");
        assert_eq!(me.pid, std::process::id());
        assert!(!me.comm.is_empty());

        let mut fds = [0; 2];
        // SAFETY: a valid two-int array.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        let target = std::fs::read_link(format!("/proc/self/fd/{}", fds[0])).unwrap();
        let ino: u64 = target.to_str().unwrap()[6..]
            .trim_end_matches(']')
            .parse()
            .unwrap();
        let holders = host.holders(HolderKind::Pipe, ino);
        assert!(holders.contains(&Holder {
            pid: me.pid,
            writes: false
        }));
        assert!(holders.contains(&Holder {
            pid: me.pid,
            writes: true
        }));
        // SAFETY: closing fds we opened.
        unsafe {
            libc::close(fds[0]);
            libc::close(fds[1]);
        }
    }

    #[test]
    fn a_replayed_process_gets_its_container_back_from_the_path() {
        let id = "4bdee9905cf11e6fa2c73ecb7eed4550c41bc1946a2ed47ca96c1dc79dfbbe10";
        let uid = "8f1c2a3b-4d5e-4f60-8a7b-9c0d1e2f3a4b";
        let info = ProcInfo {
            pid: 7,
            cgroup: format!("/kubepods/besteffort/pod{uid}/{id}"),
            ..Default::default()
        }
        .with_k8s();
        // What --record saves has no k8s field; replay derives it again.
        let saved = serde_json::to_string(&info).unwrap();
        assert!(!saved.contains("k8s"), "{saved}");
        let mut host = FixedHost::default();
        // First described before it moved into the container and exec'd, then after.
        host.recorded(ProcInfo {
            pid: 7,
            comm: "sh".into(),
            cgroup: "/".into(),
            ..Default::default()
        });
        host.recorded(serde_json::from_str(&saved).unwrap());
        let before = host.process(7).unwrap();
        assert_eq!((before.comm.as_str(), before.k8s), ("sh", None));
        for _ in 0..2 {
            let k = host
                .process(7)
                .unwrap()
                .k8s
                .expect("identity from the path");
            assert_eq!(k.container_id.as_deref(), Some(id));
            assert_eq!(k.pod_uid.as_deref(), Some(uid));
        }
        // This test's own process is on the host (or in whatever container runs it): its
        // identity is exactly what its cgroup path says.
        let me = ProcHost::default().process(std::process::id()).unwrap();
        assert_eq!(
            me.k8s.as_deref(),
            crate::capture::cgroup::parse(&me.cgroup).as_ref()
        );
    }
}

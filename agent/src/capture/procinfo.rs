//! What the host can tell about a process or a pipe, behind one trait so that the pipeline
//! runs the same live (procfs), recorded (answers saved to the `--record` file) and replayed.

use std::collections::HashMap;
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
    /// First cgroup path.
    pub cgroup: String,
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
}

/// The live host, read through /proc.
#[derive(Default)]
pub struct ProcHost {
    /// Holders by inode, from the last full scan of /proc/*/fd.
    index: HashMap<(HolderKind, u64), Vec<Holder>>,
    scanned_at: Option<Instant>,
}

/// Minimum time between two scans of every process's fd table, so that a burst of questions
/// about new links costs one scan.
const RESCAN_AFTER: Duration = Duration::from_millis(5);

impl ProcHost {
    fn scan(&mut self) {
        self.index.clear();
        let Ok(dir) = std::fs::read_dir("/proc") else {
            return;
        };
        for entry in dir.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
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
    fn process(&mut self, pid: u32) -> Option<ProcInfo> {
        let p = procfs::process::Process::new(pid as i32).ok()?;
        let stat = p.stat().ok()?;
        Some(ProcInfo {
            pid,
            ppid: stat.ppid.max(0) as u32,
            comm: stat.comm,
            exe: p
                .exe()
                .map(|e| e.to_string_lossy().into_owned())
                .unwrap_or_default(),
            cmdline: p.cmdline().unwrap_or_default(),
            cgroup: p
                .cgroups()
                .ok()
                .and_then(|c| c.into_iter().next())
                .map(|c| c.pathname)
                .unwrap_or_default(),
        })
    }

    fn holders(&mut self, kind: HolderKind, inode: u64) -> Vec<Holder> {
        let fresh = self.scanned_at.is_some_and(|t| t.elapsed() < RESCAN_AFTER);
        if !fresh && !self.index.contains_key(&(kind, inode)) {
            self.scan();
        }
        self.index.get(&(kind, inode)).cloned().unwrap_or_default()
    }
}

/// A host whose answers are fixed: replay files and tests.
#[derive(Default)]
pub struct FixedHost {
    /// Processes by pid.
    pub processes: HashMap<u32, ProcInfo>,
    /// Holders by inode.
    pub holders: HashMap<(HolderKind, u64), Vec<Holder>>,
}

impl Host for FixedHost {
    fn process(&mut self, pid: u32) -> Option<ProcInfo> {
        self.processes.get(&pid).cloned()
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
}

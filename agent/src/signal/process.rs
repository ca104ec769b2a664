//! Process identity: what the host said of each process the signals name, asked once and
//! remembered while it is needed.
//!
//! Bounded: a process is forgotten once it exited (or has gone unused for a while) and no
//! session names it; past [`MAX_PROCESSES`] the least recently used go, counted.

use std::sync::Arc;

use crate::capture::host::{Host, ProcInfo};

/// Processes known at most.
pub const MAX_PROCESSES: usize = 65_536;

/// A process as the table knows it.
struct Known {
    info: Arc<ProcInfo>,
    /// When it was last asked about (the table's clock).
    used_ns: u64,
    /// Its exit was seen: forgotten once no session names it.
    exited: bool,
    /// Questions left to ask the host again: it runs its parent's program or bears its
    /// parent's comm, so it may have been described between its fork and its exec, or inside
    /// the exec (an exec into a program no longer watched sends no record), and the next
    /// notes ask again until that changes.
    rechecks: u8,
}

/// How many more times a process described with its parent's program is asked about.
const RECHECKS: u8 = 8;

/// Processes seen, by pid, from the host and, failing that, from the kernel's comm.
#[derive(Default)]
pub struct Processes {
    procs: crate::FastMap<u32, Known>,
    /// Monotonic ns, moved on by the tracker.
    now: u64,
    /// Forgotten because the cap was reached.
    pub evicted: u64,
}

/// Ask the host about `p` again: if it now runs another program or has another comm (the
/// same process, by its start time), that is what it is.
fn recheck(host: &mut dyn Host, p: &mut Known) {
    p.rechecks -= 1;
    if let Some(fresh) = host.process(p.info.pid)
        && fresh.start_time == p.info.start_time
        && (fresh.exe != p.info.exe || fresh.comm != p.info.comm)
    {
        p.info = Arc::new(fresh);
        p.rechecks = 0;
    }
}

impl Processes {
    /// Make sure `pid` is known; `comm` is the kernel's word for it if /proc has none.
    pub fn note(&mut self, host: &mut dyn Host, pid: u32, comm: &str) {
        self.note_with(host, pid, || comm.into());
    }

    /// [`Processes::note`], the comm worked out only if it is needed: the pipeline notes the
    /// process of every record, and nearly always knows it and its name already.
    pub fn note_with<'c>(
        &mut self,
        host: &mut dyn Host,
        pid: u32,
        comm: impl FnOnce() -> std::borrow::Cow<'c, str>,
    ) {
        if let Some(p) = self.procs.get_mut(&pid)
            && !p.exited
        {
            p.used_ns = self.now;
            if p.rechecks > 0 {
                recheck(host, p);
            }
            if p.info.comm.is_empty() {
                let comm = comm();
                if !comm.is_empty() {
                    Arc::make_mut(&mut p.info).comm = comm.into_owned();
                }
            }
            return;
        }
        let info = host.process(pid).unwrap_or_else(|| ProcInfo {
            pid,
            comm: comm().into_owned(),
            ..Default::default()
        });
        self.insert(info);
    }

    fn insert(&mut self, info: ProcInfo) {
        // Its parent's program, or its parent's comm with another program: the host read
        // it before its exec, or inside it (the kernel switches the executable before the
        // comm).
        let parent = self.procs.get(&info.ppid).filter(|_| info.ppid != 0);
        let forked = parent.is_some_and(|p| {
            (!info.exe.is_empty() && p.info.exe == info.exe)
                || (!info.comm.is_empty() && p.info.comm == info.comm)
        });
        let known = Known {
            info: Arc::new(info),
            used_ns: self.now,
            exited: false,
            rechecks: if forked { RECHECKS } else { 0 },
        };
        self.procs.insert(known.info.pid, known);
    }

    /// The process called exec: forget what we knew.
    pub fn exec(&mut self, host: &mut dyn Host, pid: u32, comm: &str) {
        self.procs.remove(&pid);
        self.note(host, pid, comm);
    }

    /// The process exited: what is known stays until no session names it.
    pub fn exited(&mut self, pid: u32) {
        if let Some(p) = self.procs.get_mut(&pid) {
            p.exited = true;
        }
    }

    /// `pid` is about to name a new session: if the process now behind it started at
    /// another time than the one known, the pid was reused, and it is described afresh.
    pub fn revalidate(&mut self, host: &mut dyn Host, pid: u32) {
        let Some(known) = self.procs.get(&pid) else {
            return;
        };
        let was = known.info.start_time;
        if let Some(now) = host.process(pid)
            && now.start_time != was
            && now.start_time != 0
        {
            self.insert(now);
        }
    }

    /// Whether the process known as `pid` exited (signals about it may still follow).
    pub fn has_exited(&self, pid: u32) -> bool {
        self.procs.get(&pid).is_some_and(|p| p.exited)
    }

    /// The process is gone.
    pub fn forget(&mut self, pid: u32) {
        self.procs.remove(&pid);
    }

    /// Move the table's clock on.
    pub fn set_now(&mut self, now: u64) {
        self.now = self.now.max(now);
    }

    /// Forget the processes no session names (`named`) that exited or went unused for
    /// `idle_ns`; past `cap`, the least recently used of the others too (counted).
    pub fn collect(&mut self, named: impl Fn(u32) -> bool, idle_ns: u64, cap: usize) {
        let now = self.now;
        self.procs
            .retain(|pid, p| named(*pid) || (!p.exited && now.saturating_sub(p.used_ns) < idle_ns));
        if self.procs.len() <= cap {
            return;
        }
        let unnamed: Vec<(u64, u32)> = self
            .procs
            .iter()
            .filter(|(pid, _)| !named(**pid))
            .map(|(pid, p)| (p.used_ns, *pid))
            .collect();
        let room = cap.saturating_sub(self.procs.len() - unnamed.len());
        let victims = crate::bounded::least_recent(unnamed.into_iter(), room);
        if !victims.is_empty() {
            log::warn!(
                "{} processes known (cap {cap}): forgetting the {} least recently used",
                self.procs.len(),
                victims.len()
            );
        }
        self.evicted += victims.len() as u64;
        for pid in victims {
            self.procs.remove(&pid);
        }
    }

    /// What we know of `pid`.
    pub fn get(&self, pid: u32) -> Option<&Arc<ProcInfo>> {
        self.procs.get(&pid).map(|p| &p.info)
    }

    /// Number of processes known.
    pub fn len(&self) -> usize {
        self.procs.len()
    }

    /// True when no process is known.
    pub fn is_empty(&self) -> bool {
        self.procs.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::host::FixedHost;

    fn info(pid: u32, ppid: u32, comm: &str, exe: &str) -> ProcInfo {
        ProcInfo {
            pid,
            ppid,
            comm: comm.into(),
            exe: exe.into(),
            start_time: 7,
            ..Default::default()
        }
    }

    /// A child described between its fork and its exec (its parent's program) is asked about
    /// again until it runs its own: an exec into a program no longer watched sends no record.
    #[test]
    fn a_child_seen_before_its_exec_is_described_again() {
        let mut host = FixedHost::default();
        host.recorded(info(10, 1, "node", "/usr/bin/node"));
        host.recorded(info(11, 10, "node", "/usr/bin/node"));
        host.recorded(info(11, 10, "node", "/usr/bin/node"));
        host.recorded(info(11, 10, "mcpsrv-py", "/usr/bin/python3"));
        let mut procs = Processes::default();
        procs.note(&mut host, 10, "");
        procs.note(&mut host, 11, "");
        assert_eq!(procs.get(11).unwrap().comm, "node");
        procs.note(&mut host, 11, "");
        assert_eq!(procs.get(11).unwrap().comm, "node", "not yet");
        procs.note(&mut host, 11, "");
        assert_eq!(procs.get(11).unwrap().comm, "mcpsrv-py");
        // Its own program now: not asked about again.
        host.recorded(info(11, 10, "other", "/bin/other"));
        procs.note(&mut host, 11, "");
        assert_eq!(procs.get(11).unwrap().comm, "mcpsrv-py");
    }

    /// Read inside its exec: the new program, the old comm.
    #[test]
    fn a_child_read_inside_its_exec_gets_its_new_comm() {
        let mut host = FixedHost::default();
        host.recorded(info(30, 1, "mcpcli-node", "/usr/bin/node"));
        host.recorded(info(31, 30, "mcpcli-node", "/usr/bin/python3"));
        host.recorded(info(31, 30, "mcpsrv-py", "/usr/bin/python3"));
        let mut procs = Processes::default();
        procs.note(&mut host, 30, "");
        procs.note(&mut host, 31, "");
        assert_eq!(procs.get(31).unwrap().comm, "mcpcli-node");
        procs.note(&mut host, 31, "");
        assert_eq!(procs.get(31).unwrap().comm, "mcpsrv-py");
    }

    /// A child that keeps its parent's program is asked about a bounded number of times.
    #[test]
    fn a_child_running_its_parents_program_is_asked_a_few_times_only() {
        let mut host = FixedHost::default();
        host.recorded(info(20, 1, "node", "/usr/bin/node"));
        host.recorded(info(21, 20, "node", "/usr/bin/node"));
        let mut procs = Processes::default();
        procs.note(&mut host, 20, "");
        for _ in 0..100 {
            procs.note(&mut host, 21, "");
        }
        assert_eq!(procs.procs[&21].rechecks, 0);
        assert_eq!(procs.procs[&20].rechecks, 0, "a parent not known: never");
    }
}

//! The kernel's own account of what mcptap's programs cost: with `kernel.bpf_stats_enabled`
//! set, every BPF program counts its runs (`run_cnt`) and the nanoseconds they took
//! (`run_time_ns`), readable from the `fdinfo` of each program fd its loader holds. No
//! bpftool needed: the agent (and the floor) keep every program's fd open while they run.

use std::time::Instant;

/// `kernel.bpf_stats_enabled` set while this lives, restored to what it was when dropped
/// (counting costs every program on the machine a clock read per run).
pub struct Enabled {
    was: String,
}

const SYSCTL: &str = "/proc/sys/kernel/bpf_stats_enabled";

impl Enabled {
    /// Turn the counters on; `None` if the kernel does not have them (or we may not).
    pub fn on() -> Option<Enabled> {
        let was = std::fs::read_to_string(SYSCTL).ok()?.trim().to_string();
        std::fs::write(SYSCTL, "1").ok()?;
        Some(Enabled { was })
    }
}

impl Drop for Enabled {
    fn drop(&mut self) {
        let _ = std::fs::write(SYSCTL, &self.was);
    }
}

/// The counters of every BPF program process `pid` holds an fd of, summed, and when read.
#[derive(Clone, Copy, Debug)]
pub struct Snapshot {
    pub run_time_ns: u64,
    pub run_cnt: u64,
    at: Instant,
}

impl Snapshot {
    /// Read them now.
    pub fn of(pid: u32) -> Snapshot {
        let at = Instant::now();
        let (mut run_time_ns, mut run_cnt) = (0, 0);
        // A loader may hold two fds of one program (mcptap keeps its own beside aya's): each
        // program counts once, by its id.
        let mut seen = std::collections::HashSet::new();
        let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .into_iter()
            .flatten();
        for fd in fds.flatten() {
            let is_prog = std::fs::read_link(fd.path())
                .is_ok_and(|l| l.to_string_lossy() == "anon_inode:bpf-prog");
            if !is_prog {
                continue;
            }
            let info = std::fs::read_to_string(format!(
                "/proc/{pid}/fdinfo/{}",
                fd.file_name().to_string_lossy()
            ))
            .unwrap_or_default();
            let field = |k: &str| -> u64 {
                info.lines()
                    .find_map(|l| l.strip_prefix(k))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0)
            };
            if !seen.insert(field("prog_id:")) {
                continue;
            }
            run_time_ns += field("run_time_ns:");
            run_cnt += field("run_cnt:");
        }
        Snapshot {
            run_time_ns,
            run_cnt,
            at,
        }
    }

    /// Nanoseconds the programs ran since `before`, and seconds of wall time between.
    pub fn since(&self, before: &Snapshot) -> (f64, f64) {
        (
            self.run_time_ns.saturating_sub(before.run_time_ns) as f64,
            self.at.duration_since(before.at).as_secs_f64(),
        )
    }
}

/// The programs' run time over a window of `window` seconds with nothing measured running
/// (what the machine's other processes make them do), per second.
pub fn background_ns_per_s(pid: u32, window: std::time::Duration) -> f64 {
    let a = Snapshot::of(pid);
    std::thread::sleep(window);
    let (ns, secs) = Snapshot::of(pid).since(&a);
    ns / secs
}

//! Taking uprobes off without holding capture up: a thread that detaches them many at once,
//! and a child process that releases them after the agent has exited.

use anyhow::{Context as _, Result};
use aya::programs::uprobe::UProbeLink;

/// Uprobes leave off the capture thread: each detach waits for a kernel grace period (tens of
/// milliseconds here), so a watched process's exit, or the agent's stop, would otherwise hold
/// capture up for a second or more. Links are dropped (which detaches them) by a thread of
/// their own, many at once, since concurrent waits share their grace periods.
pub struct Detacher {
    tx: Option<std::sync::mpsc::Sender<Vec<UProbeLink>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Links dropped at once by the detacher.
const DETACH_AT_ONCE: usize = 8;

impl Detacher {
    /// Start the detaching thread.
    pub fn start() -> Result<Detacher> {
        let (tx, rx) = std::sync::mpsc::channel::<Vec<UProbeLink>>();
        let thread = std::thread::Builder::new()
            .name("mcptap-detach".into())
            .spawn(move || {
                for mut batch in rx {
                    while !batch.is_empty() {
                        let n = batch.len().saturating_sub(DETACH_AT_ONCE);
                        let some = batch.split_off(n);
                        std::thread::scope(|s| {
                            for link in some {
                                s.spawn(move || drop(link));
                            }
                        });
                    }
                }
            })
            .context("starting the uprobe detacher")?;
        Ok(Detacher {
            tx: Some(tx),
            thread: Some(thread),
        })
    }

    /// Detach `links`, soon.
    pub fn send(&self, links: Vec<UProbeLink>) {
        if links.is_empty() {
            return;
        }
        if let Some(tx) = &self.tx
            && let Err(back) = tx.send(links)
        {
            // The thread is gone: detach here, slowly, rather than not at all.
            drop(back.0);
        }
    }

    /// Wait for every link sent to be detached.
    pub fn finish(&mut self) {
        drop(self.tx.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The kernel detaches uprobes one after another, each waiting for a grace period: measured
/// here, eleven probes took 1.24 s to close, ~110 ms each, longer on a loaded machine, and a
/// process's exit waits for its own fds to be released. So a stopping agent forks a child
/// that keeps a copy of the probes' fds (and of nothing else) and lets go of them once the
/// agent has exited: the agent's closes are then only reference drops and its stop is
/// bounded by its drain and flush, while the kernel finishes detaching in the child (named
/// `mcptap-release`, gone a second or so later). If the fork fails the agent detaches them
/// itself, slowly.
pub fn release_after_exit() {
    let mut pipe = [0i32; 2];
    // SAFETY: pipe(2) writes two fds into the array we pass.
    if unsafe { libc::pipe(pipe.as_mut_ptr()) } != 0 {
        return;
    }
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the struct we pass.
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
    let max_fd = limit.rlim_cur.clamp(1024, 1 << 20) as i32;
    // SAFETY: the child runs only async-signal-safe calls (close, fcntl, readlink, read,
    // sigaction through signal, prctl, close_range, _exit) and never returns into Rust code.
    match unsafe { libc::fork() } {
        0 => unsafe { release_in_child(pipe[0], max_fd) },
        -1 => {
            log::debug!("stop: fork failed; the probes are detached by the agent");
            // SAFETY: closing the fds pipe(2) just gave us.
            unsafe {
                libc::close(pipe[0]);
                libc::close(pipe[1]);
            }
        }
        child => {
            log::debug!("stop: process {child} releases the probes once the agent has exited");
            // The write end stays open until this process exits: its closing is the signal.
            // SAFETY: closing our copy of the read end.
            unsafe { libc::close(pipe[0]) };
        }
    }
}

/// The child of [`release_after_exit`]: keep only the probes' fds and the pipe's read end,
/// wait for the agent to exit (end of file on the pipe), close them, exit.
///
/// # Safety
/// Only in the child of `fork`, with `read` the read end of a pipe whose write end only the
/// agent holds once every other fd is closed.
unsafe fn release_in_child(read: i32, max_fd: i32) -> ! {
    // SAFETY: plain syscalls on this process's own fds, signal dispositions and name.
    unsafe {
        for fd in 0..max_fd {
            if fd != read && libc::fcntl(fd, libc::F_GETFD) >= 0 && !is_probe_fd(fd) {
                libc::close(fd);
            }
        }
        libc::signal(libc::SIGTERM, libc::SIG_DFL);
        libc::signal(libc::SIGINT, libc::SIG_DFL);
        libc::prctl(libc::PR_SET_NAME, c"mcptap-release".as_ptr());
        let mut byte = 0u8;
        loop {
            let r = libc::read(read, (&mut byte as *mut u8).cast(), 1);
            if r == 0 || (r < 0 && *libc::__errno_location() != libc::EINTR) {
                break;
            }
        }
        libc::syscall(libc::SYS_close_range, 0u32, u32::MAX, 0u32);
        libc::_exit(0)
    }
}

/// Whether `fd` is a perf event or a BPF link: what attaches a probe. Written without
/// allocating (the caller is a forked child).
///
/// # Safety
/// Async-signal-safe; any fd number may be passed.
unsafe fn is_probe_fd(fd: i32) -> bool {
    let mut path = *b"/proc/self/fd/\0\0\0\0\0\0\0\0\0\0\0\0";
    let mut digits = [0u8; 10];
    let (mut n, mut len) = (fd as u32, 0);
    loop {
        digits[len] = b'0' + (n % 10) as u8;
        len += 1;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for i in 0..len {
        path[14 + i] = digits[len - 1 - i];
    }
    let mut target = [0u8; 64];
    // SAFETY: readlink writes at most the buffer's length; the path is NUL-terminated.
    let got = unsafe { libc::readlink(path.as_ptr().cast(), target.as_mut_ptr().cast(), 64) };
    let target = &target[..got.max(0) as usize];
    target.starts_with(b"anon_inode:[perf_event]") || target.starts_with(b"anon_inode:bpf_link")
}

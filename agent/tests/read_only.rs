//! mcptap only reads what it observes: no kernel program calls a helper that writes to a
//! process's memory, signals it or changes a syscall's result, and userspace never opens
//! another process's memory or fds, or traces it. Checked over the source, so that adding
//! such a call fails the build's tests rather than waiting for a review to notice.

use std::path::Path;

fn sources(dir: &Path, out: &mut Vec<(String, String)>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            sources(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push((
                p.display().to_string(),
                std::fs::read_to_string(&p).unwrap(),
            ));
        }
    }
}

fn assert_absent(dir: &Path, forbidden: &[&str]) {
    let mut files = Vec::new();
    sources(dir, &mut files);
    assert!(!files.is_empty(), "no sources under {}", dir.display());
    for (path, text) in &files {
        for f in forbidden {
            assert!(!text.contains(f), "{path} uses {f}");
        }
    }
}

#[test]
fn kernel_programs_never_write_to_processes() {
    let ebpf = Path::new(env!("CARGO_MANIFEST_DIR")).join("../agent-ebpf/src");
    assert_absent(
        &ebpf,
        &[
            "probe_write_user",
            "send_signal",
            "override_return",
            "copy_to_user",
        ],
    );
}

#[test]
fn userspace_never_touches_another_processs_memory_or_fds() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    assert_absent(
        &src,
        &[
            "/mem\"",
            "process_vm_writev",
            "process_vm_readv",
            "pidfd_getfd",
            "PTRACE_",
            "libc::ptrace",
        ],
    );
}

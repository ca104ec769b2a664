//! Start-up: the least privilege mcptap runs with (proved under `capsh`), and the clear,
//! one-line failure for each way it cannot start. Root, real kernel, real MCP peers.

use std::process::{Command, Output};

use mcptap_e2e::*;

/// What mcptap needs: load tracing programs (CAP_BPF), read kernel memory from them
/// (CAP_PERFMON), and read /proc/PID/fd of processes owned by others or more privileged than
/// itself, to pair pipe and socket ends into sessions (CAP_SYS_PTRACE, CAP_DAC_READ_SEARCH).
const LEAST: &[&str] = &[
    "cap_bpf",
    "cap_perfmon",
    "cap_sys_ptrace",
    "cap_dac_read_search",
];

/// A `capsh` prefix that runs its command as root with only `keep` in the bounding set (so
/// exec gives root no more than that).
fn capsh_keeping(keep: &[&str]) -> Vec<String> {
    let out = Command::new("capsh")
        .arg("--print")
        .output()
        .expect("capsh");
    let text = String::from_utf8_lossy(&out.stdout);
    let bounding = text
        .lines()
        .find_map(|l| l.strip_prefix("Bounding set ="))
        .expect("capsh --print shows the bounding set");
    let drop: Vec<&str> = bounding
        .trim()
        .split(',')
        .filter(|c| !keep.contains(c))
        .collect();
    vec![
        "capsh".into(),
        format!("--drop={}", drop.join(",")),
        "--".into(),
        "-c".into(),
        "exec \"$0\" \"$@\"".into(),
    ]
}

fn python(venv: &str) -> std::path::PathBuf {
    peers().join(venv).join("bin/python")
}

/// Run mcptap to completion (it is expected to fail at start) with `args`.
fn start_fails(wrapper: &[String], args: &[&str]) -> (Output, String) {
    let out = mcptap_command(wrapper)
        .args(args)
        .args(["--quiet", "--comm", "nothing-here"])
        .output()
        .expect("run mcptap");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    (out, err)
}

/// The one line that says why, and a non-zero exit.
fn assert_clear_failure(out: &Output, err: &str, says: &str) {
    assert!(!out.status.success(), "mcptap should not start: {err}");
    let line = err
        .lines()
        .find(|l| l.starts_with("mcptap: error:"))
        .unwrap_or_else(|| panic!("no `mcptap: error:` line in {err}"));
    assert!(line.contains(says), "{line:?} should say {says:?}");
}

/// With only the least set, a real Python SDK session is captured completely: both ends
/// named and paired, every call reported once.
#[test]
fn runs_with_only_the_least_capabilities() {
    let dir = scratch("least_privilege");
    let wrapper = capsh_keeping(LEAST);
    let wrapper: Vec<&str> = wrapper.iter().map(String::as_str).collect();
    let agent = Agent::start_under(&dir, &wrapper, &[], &[]);
    let status =
        std::fs::read_to_string(format!("/proc/{}/status", agent_pid(&agent))).unwrap_or_default();
    let run = run_client(
        &mut python_client("mcp1", &python("mcp1"), &["--echo", "3"]),
        &dir,
    );
    let log = agent.log();
    let recs = agent.stop();
    check_calls(&recs, &run, Sides::Both);
    assert!(
        !log.contains("cannot read /proc/PID/fd"),
        "the least set should name every process: {log}"
    );
    // The agent really ran with no more than that set.
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .map(|h| u64::from_str_radix(h.trim(), 16).unwrap())
        .expect("CapEff");
    let allowed: u64 = [39u32, 38, 19, 2].iter().map(|b| 1u64 << b).sum();
    assert_eq!(
        eff & !allowed,
        0,
        "CapEff {eff:#x} has more than the least set"
    );
}

/// The kernel programs' own messages (aya-log) reach the agent's log: the self-test says, at
/// info level, what it read in the agent's own process.
#[test]
fn kernel_programs_messages_reach_the_log() {
    let dir = scratch("kernel_log");
    let agent = Agent::start(&dir, &["--comm", "nothing-here"]);
    let want = format!(
        "kernel self-test: bpf_probe_read_kernel read tgid {} at task_struct offset",
        agent.pid()
    );
    let found = wait_for(10, || agent.log().contains(&want));
    let log = agent.log();
    agent.stop();
    assert!(found, "no {want:?} in the log:\n{log}");
    let line = log.lines().find(|l| l.contains(&want)).unwrap();
    assert!(line.contains(" INFO "), "{line}");
}

/// The pid of the process the agent's wrapper exec'd into (the wrapper execs, so it is the
/// child itself): found by its listen port in /proc.
fn agent_pid(agent: &Agent) -> u32 {
    let want = format!("127.0.0.1:{}", agent.port);
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline);
        if cmdline.contains(&want) && cmdline.contains("mcptap") {
            return pid;
        }
    }
    panic!("agent process not found");
}

/// Less than the set that loads programs: a one-line message naming the missing
/// capability, and a non-zero exit, before anything is loaded.
#[test]
fn fails_clearly_without_cap_perfmon_or_cap_bpf() {
    for (keep, missing) in [
        (
            &["cap_bpf", "cap_sys_ptrace", "cap_dac_read_search"][..],
            "CAP_PERFMON",
        ),
        (
            &["cap_perfmon", "cap_sys_ptrace", "cap_dac_read_search"][..],
            "CAP_BPF",
        ),
    ] {
        let (out, err) = start_fails(&capsh_keeping(keep), &[]);
        assert_clear_failure(&out, &err, missing);
        assert!(err.contains("runs as root but"), "{err}");
    }
}

/// Without the /proc capabilities it runs, and warns once about what it cannot see.
#[test]
fn warns_without_the_proc_capabilities() {
    let dir = scratch("no_ptrace");
    let wrapper = capsh_keeping(&["cap_bpf", "cap_perfmon"]);
    let wrapper: Vec<&str> = wrapper.iter().map(String::as_str).collect();
    let agent = Agent::start_under(&dir, &wrapper, &["--comm", "nothing-here"], &[]);
    let log = agent.log();
    agent.stop();
    assert!(
        log.contains("without CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH"),
        "{log}"
    );
}

/// Not root at all (nobody, no capabilities).
#[test]
fn fails_clearly_when_not_root() {
    let wrapper: Vec<String> = [
        "setpriv",
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let (out, err) = start_fails(&wrapper, &[]);
    assert_clear_failure(&out, &err, "is not root and lacks CAP_BPF and CAP_PERFMON");
}

/// A wrapper that runs mcptap in a private mount namespace after `setup` (a shell command),
/// or reports (exit 99) that `check` (a `test` expression) did not hold afterwards.
fn in_private_mounts(setup: &str, check: &str) -> Vec<String> {
    [
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        &format!(
            "{setup} || exit 98; test {check} || {{ echo 'setup did not give {check}' >&2; exit 99; }}; \
             exec \"$0\" \"$@\""
        ),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// No kernel BTF at all: an empty tmpfs over /sys/kernel/btf in a private mount namespace, so
/// that vmlinux does not exist (a kernel without CONFIG_DEBUG_INFO_BTF). The message names
/// the file, says the kernel exposes no BTF, and gives the cause.
#[test]
fn fails_clearly_without_btf() {
    let wrapper = in_private_mounts(
        "mount -t tmpfs mcptap-no-btf /sys/kernel/btf",
        "! -e /sys/kernel/btf/vmlinux",
    );
    let (out, err) = start_fails(&wrapper, &[]);
    assert_clear_failure(&out, &err, "cannot read /sys/kernel/btf/vmlinux");
    assert_clear_failure(&out, &err, "this kernel exposes no BTF");
    assert_clear_failure(&out, &err, "CONFIG_DEBUG_INFO_BTF=y");
    assert_clear_failure(&out, &err, "No such file or directory");
}

/// A start that fails its checks changes nothing: an existing `--record` file keeps its
/// bytes, no `--jsonl` file is made, and the port stays free.
#[test]
fn a_failed_start_has_no_side_effects() {
    let dir = scratch("no_side_effects");
    let record = dir.join("old.mcptap");
    std::fs::write(&record, b"an earlier recording").unwrap();
    let jsonl = dir.join("new.jsonl");
    let port = port();
    let listen = format!("127.0.0.1:{port}");
    let args = [
        "--record",
        record.to_str().unwrap(),
        "--jsonl",
        jsonl.to_str().unwrap(),
        "--listen",
        &listen,
    ];
    let not_root: Vec<String> = [
        "setpriv",
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let no_btf = in_private_mounts(
        "mount -t tmpfs mcptap-no-btf /sys/kernel/btf",
        "! -e /sys/kernel/btf/vmlinux",
    );
    for (wrapper, says) in [(not_root, "lacks CAP_BPF"), (no_btf, "no BTF")] {
        let (out, err) = start_fails(&wrapper, &args);
        assert_clear_failure(&out, &err, says);
        assert_eq!(std::fs::read(&record).unwrap(), b"an earlier recording");
        assert!(!jsonl.exists(), "--jsonl file made by a failed start");
        assert!(
            std::net::TcpListener::bind(("127.0.0.1", port)).is_ok(),
            "port left bound"
        );
    }
}

/// A `--comm` longer than the kernel's 15 bytes whose 15th byte falls inside a character is
/// truncated like the kernel does, with a warning, never a crash.
#[test]
fn a_long_non_ascii_comm_is_truncated_not_a_crash() {
    let dir = scratch("long_comm");
    let agent = Agent::start(&dir, &["--comm", "ééééééééééééé"]);
    assert!(
        agent
            .log()
            .contains("longer than the kernel's 15-byte comm"),
        "{}",
        agent.log()
    );
    let recs = agent.stop();
    assert_eq!(recs.0.last().unwrap()["event"], "agent_stop");
}

/// BTF there but unparsable (an empty file: /dev/null bound over vmlinux): the message names
/// the file and says it could not be parsed.
#[test]
fn fails_clearly_on_unparsable_btf() {
    let wrapper = in_private_mounts(
        "mount --bind /dev/null /sys/kernel/btf/vmlinux",
        "-e /sys/kernel/btf/vmlinux",
    );
    let (out, err) = start_fails(&wrapper, &[]);
    assert_clear_failure(&out, &err, "parsing /sys/kernel/btf/vmlinux");
}

/// tracefs and debugfs unmounted (in a private mount namespace): mcptap attaches raw and BTF
/// tracepoints by name through bpf(2), so it needs neither, and starts.
#[test]
fn starts_without_tracefs() {
    let dir = scratch("no_tracefs");
    let agent = Agent::start_under(
        &dir,
        &[
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            "umount -l /sys/kernel/tracing 2>/dev/null; umount -l /sys/kernel/debug 2>/dev/null; \
             test ! -e /sys/kernel/tracing/trace_pipe || exit 99; exec \"$0\" \"$@\"",
        ],
        &["--comm", "nothing-here"],
        &[],
    );
    agent.stop();
}

/// The listen port taken by someone else.
#[test]
fn fails_clearly_when_the_port_is_taken() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let (out, err) = start_fails(&[], &["--listen", &addr]);
    assert_clear_failure(&out, &err, &addr);
    assert!(err.to_lowercase().contains("in use"), "{err}");
}

/// Bad flag values: each named with what is wrong, before anything is loaded.
#[test]
fn fails_clearly_on_bad_flag_values() {
    for (args, says) in [
        (&["--ring-buffer-size", "3000"][..], "--ring-buffer-size"),
        (&["--max-message-bytes", "lots"][..], "--max-message-bytes"),
        (&["--listen", "nowhere"][..], "--listen"),
        (&["--response-timeout=-1"][..], "--response-timeout"),
        (&["--max-sessions", "0"][..], "--max-sessions"),
        (
            &["--otlp-protocol", "carrier-pigeon"][..],
            "--otlp-protocol",
        ),
    ] {
        let (out, err) = start_fails(&[], args);
        assert!(!out.status.success(), "{args:?} accepted");
        assert!(err.contains(says), "{args:?}: {err}");
        assert!(
            !err.contains("attached"),
            "{args:?} got as far as loading: {err}"
        );
    }
}

/// An OTLP endpoint nobody listens on: a warning, and capture goes on.
#[test]
fn unreachable_otlp_is_a_warning_not_an_exit() {
    let dir = scratch("otlp_unreachable");
    let dead = port();
    let agent = Agent::start(
        &dir,
        &[
            "--otlp-endpoint",
            &format!("http://127.0.0.1:{dead}"),
            "--comm",
            "python",
        ],
    );
    let run = run_client(
        &mut python_client("mcp1", &python("mcp1"), &["--echo", "2"]),
        &dir,
    );
    let warned = wait_for(30, || {
        let log = agent.log();
        log.contains("OTLP traces export failed") && log.contains("retrying")
    });
    let log = agent.log();
    let recs = agent.stop();
    check_calls(&recs, &run, Sides::Both);
    assert!(warned, "no OTLP export warning within 30 s: {log}");
}

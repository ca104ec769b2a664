//! Kubernetes identity from cgroups, end to end: a real MCP server runs inside a real cgroup
//! named the way the kubelet and containerd name a pod's container, and mcptap's records of
//! it carry that container id and pod UID.
//!
//! No cluster runs here (no API server, no kubelet, no container runtime): the cgroups are
//! made with mkdir, exactly where and how the systemd and cgroupfs drivers make them, which
//! is all mcptap reads. Pod, namespace and container names need the API server and are
//! tested in the agent's unit tests against a stand-in server.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use mcptap_e2e::*;
use serde_json::Value;

fn python(venv: &str) -> PathBuf {
    peers().join(venv).join("bin/python")
}

/// Where a hierarchy without controllers can be written: the unified (v2) one, mounted at
/// /sys/fs/cgroup on a v2 host or /sys/fs/cgroup/unified on a hybrid one; else the v1
/// `name=systemd` hierarchy. Processes are only ever moved within it, so no resource
/// controller of the test machine is touched.
fn writable_hierarchy() -> PathBuf {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let mut named_systemd = None;
    for l in mounts.lines() {
        // `... MOUNTPOINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPEROPTS`
        let (left, right) = l.split_once(" - ").unwrap_or((l, ""));
        let mount_point = left.split(' ').nth(4).unwrap_or("");
        let mut r = right.split(' ');
        let fstype = r.next().unwrap_or("");
        let superopts = r.nth(1).unwrap_or("");
        if fstype == "cgroup2" {
            return PathBuf::from(mount_point);
        }
        if fstype == "cgroup" && superopts.split(',').any(|o| o == "name=systemd") {
            named_systemd = Some(PathBuf::from(mount_point));
        }
    }
    named_systemd.expect("no cgroup2 or name=systemd hierarchy mounted")
}

/// A fresh UUID from the kernel.
fn uuid() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/uuid")
        .unwrap()
        .trim()
        .to_string()
}

/// A container's cgroup made for one test; emptied and removed (leaf to root) when dropped.
struct PodCgroup {
    root: PathBuf,
    /// Directories created, outermost first.
    made: Vec<PathBuf>,
    leaf: PathBuf,
}

impl PodCgroup {
    fn new(root: &Path, relative: &str) -> PodCgroup {
        let mut made = Vec::new();
        let mut p = root.to_path_buf();
        for part in relative.split('/').filter(|s| !s.is_empty()) {
            p.push(part);
            if !p.exists() {
                std::fs::create_dir(&p).unwrap_or_else(|e| panic!("mkdir {}: {e}", p.display()));
                made.push(p.clone());
            }
        }
        PodCgroup {
            root: root.to_path_buf(),
            made,
            leaf: p,
        }
    }

    fn pids(&self) -> Vec<String> {
        std::fs::read_to_string(self.leaf.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// A program that moves itself into this cgroup, then execs `program` with its
    /// arguments: the MCP server is in the container's cgroup before it reads a byte.
    fn wrapper(&self, dir: &Path, name: &str, program: &Path) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(
            &path,
            format!(
                "#!/bin/sh\necho $$ > '{}/cgroup.procs' || exit 97\nexec '{}' \"$@\"\n",
                self.leaf.display(),
                program.display()
            ),
        )
        .unwrap();
        Command::new("chmod")
            .arg("755")
            .arg(&path)
            .status()
            .unwrap();
        path
    }
}

impl Drop for PodCgroup {
    fn drop(&mut self) {
        // The server exits when its client closes the pipe; wait for that, then move any
        // straggler back to the root so the directories can go.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.pids().is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        for pid in self.pids() {
            let _ = std::fs::write(self.root.join("cgroup.procs"), &pid);
        }
        for d in self.made.iter().rev() {
            if let Err(e) = std::fs::remove_dir(d) {
                eprintln!("rmdir {}: {e}", d.display());
            }
        }
    }
}

/// The exchanges whose server is `pid`.
fn served_by(recs: &Records, pid: u32) -> Vec<&Value> {
    recs.kind("exchange")
        .into_iter()
        .filter(|r| r["server"]["pid"] == pid)
        .collect()
}

/// A server in a systemd-driver cgroup (containerd's scope) and one in a cgroupfs-driver
/// cgroup: each one's records carry its container id and pod UID; the clients, on the host,
/// carry none. The node name comes from K8S_NODE_NAME; nothing needs an API server, and
/// outside a cluster the agent says nothing alarming about it. `--record` keeps the cgroup
/// paths, so a replay names the same containers.
#[test]
fn records_of_a_server_in_a_pod_cgroup_carry_its_container_and_pod() {
    let dir = scratch("k8s_cgroups");
    let hierarchy = writable_hierarchy();

    let systemd_uid = uuid();
    let systemd_id = format!("{}{}", uuid(), uuid()).replace('-', "");
    assert_eq!(systemd_id.len(), 64);
    let systemd_cg = PodCgroup::new(
        &hierarchy,
        &format!(
            "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{}.slice/cri-containerd-{systemd_id}.scope",
            systemd_uid.replace('-', "_")
        ),
    );
    let cgroupfs_uid = uuid();
    let cgroupfs_id = format!("{}{}", uuid(), uuid()).replace('-', "");
    let cgroupfs_cg = PodCgroup::new(
        &hierarchy,
        &format!("kubepods/burstable/pod{cgroupfs_uid}/{cgroupfs_id}"),
    );

    let rec_file = dir.join("capture.mcptap");
    let agent = Agent::start_with_env(
        &dir,
        &["--record", rec_file.to_str().unwrap()],
        &[("K8S_NODE_NAME", "e2e-node"), ("RUST_LOG", "mcptap=debug")],
    );
    let in_systemd = systemd_cg.wrapper(&dir, "server-systemd.sh", &python("mcp2"));
    let run2 = run_client(
        &mut python_client("mcp2", &in_systemd, &["--echo", "2"]),
        &dir,
    );
    let in_cgroupfs = cgroupfs_cg.wrapper(&dir, "server-cgroupfs.sh", &python("mcp1"));
    let run1 = run_client(
        &mut python_client("mcp1", &in_cgroupfs, &["--echo", "2"]),
        &dir,
    );
    let log = agent.log();
    let recs = agent.stop();
    check_calls(&recs, &run2, Sides::Both);
    check_calls(&recs, &run1, Sides::Both);

    for (run, id, uid, runtime) in [
        (&run2, &systemd_id, &systemd_uid, Some("containerd")),
        // cgroupfs names no runtime; without the API server it stays unknown.
        (&run1, &cgroupfs_id, &cgroupfs_uid, None),
    ] {
        let server_pid = run.server_pid.expect("the client names its server");
        let mine = served_by(&recs, server_pid);
        assert!(mine.len() >= 8, "exchanges of {server_pid}: {mine:#?}");
        for r in &mine {
            let s = &r["server"];
            assert_eq!(s["container_id"], id.as_str(), "{r}");
            assert_eq!(s["k8s_pod_uid"], uid.as_str(), "{r}");
            assert_eq!(s["container_runtime"].as_str(), runtime, "{r}");
            assert_eq!(s["k8s_node"], "e2e-node", "{r}");
            // No API server: no names are made up.
            assert!(
                s.get("k8s_pod").is_none() && s.get("k8s_namespace").is_none(),
                "{r}"
            );
            let c = &r["client"];
            assert!(
                c.get("container_id").is_none() && c.get("k8s_pod_uid").is_none(),
                "{r}"
            );
        }
        // Events that name the ends say the same.
        let start = recs
            .kind("event")
            .into_iter()
            .find(|e| e["event"] == "session_start" && e["server"]["pid"] == server_pid)
            .expect("session_start");
        assert_eq!(start["server"]["container_id"], id.as_str(), "{start}");
    }
    // Outside a cluster: one debug line, nothing louder.
    let kube: Vec<&str> = log
        .lines()
        .filter(|l| l.to_lowercase().contains("kubernetes"))
        .collect();
    assert_eq!(kube.len(), 1, "{kube:#?}");
    assert!(
        kube[0].contains("DEBUG") && kube[0].contains("not in a Kubernetes pod"),
        "{kube:#?}"
    );

    let out = Command::new(mcptap_bin())
        .args([
            "replay",
            rec_file.to_str().unwrap(),
            "--quiet",
            "--jsonl",
            "-",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let replayed = dir.join("replayed.jsonl");
    std::fs::write(&replayed, &out.stdout).unwrap();
    let again = Records::read(&replayed);
    let server_pid = run2.server_pid.unwrap();
    let replayed_ids: Vec<(&Value, &Value)> = served_by(&again, server_pid)
        .iter()
        .map(|r| (&r["server"]["container_id"], &r["server"]["k8s_pod_uid"]))
        .collect();
    assert_eq!(replayed_ids.len(), served_by(&recs, server_pid).len());
    assert!(
        replayed_ids
            .iter()
            .all(|(id, uid)| *id == systemd_id.as_str() && *uid == systemd_uid.as_str()),
        "{replayed_ids:?}"
    );
}

//! Container id and pod UID from a process's cgroup path: no API server needed.
//!
//! The kubelet and the container runtimes name cgroups predictably. The systemd driver:
//!
//! ```text
//! /kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid, - as _>.slice/cri-containerd-<id>.scope
//! /kubepods.slice/kubepods-pod<uid>.slice/crio-<id>.scope            (Guaranteed QoS)
//! /kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/...   (kind)
//! ```
//!
//! The cgroupfs driver:
//!
//! ```text
//! /kubepods/burstable/pod<uid>/<id>        (containerd, docker)
//! /kubepods/pod<uid>/crio-<id>             (CRI-O, Guaranteed QoS)
//! /docker/<node>/kubepods/besteffort/pod<uid>/<id>   (nested: kind, k3d, k3s in a container)
//! ```
//!
//! A cgroup namespace shows paths outside the reader's root as `/../..`; segments are matched
//! one by one, so a prefix of any shape is fine. Outside Kubernetes, a runtime's own scope
//! (`docker-<id>.scope`, `/docker/<id>`, `libpod-<id>.scope`) still gives the container id.

use serde::Serialize;

/// Where a process runs, as far as it is known. Serialized flat into a record's
/// `client`/`server` object; absent fields are unknown.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Identity {
    /// Runtime container id (64 hex digits), from the cgroup path.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container_id: Option<String>,
    /// `containerd`, `cri-o`, `docker`, `podman`: the cgroup's prefix, or the API server's
    /// `containerID` scheme.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container_runtime: Option<String>,
    /// Pod UID, from the cgroup path (a static pod's is its manifest hash).
    #[serde(rename = "k8s_pod_uid", skip_serializing_if = "Option::is_none")]
    pub pod_uid: Option<String>,
    /// Pod name (API server).
    #[serde(rename = "k8s_pod", skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    /// Pod namespace (API server).
    #[serde(rename = "k8s_namespace", skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Container name in the pod spec (API server).
    #[serde(rename = "k8s_container", skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    /// This node (`K8S_NODE_NAME` or `NODE_NAME`).
    #[serde(rename = "k8s_node", skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

/// The path `/proc/PID/cgroup` should be known by: the first line whose path names a
/// container, else the unified (v2, `0::`) hierarchy's, else the first line's. Lines are
/// `hierarchy:controllers:path`; on a cgroup v1 or hybrid host the first line is often a
/// controller (`name=systemd`, `pids`) that is not where the runtime put the process.
pub fn select(proc_cgroup: &str) -> &str {
    let paths = || {
        proc_cgroup.lines().filter_map(|l| {
            let mut parts = l.splitn(3, ':');
            let hierarchy = parts.next()?;
            let _controllers = parts.next()?;
            Some((hierarchy, parts.next()?))
        })
    };
    paths()
        .find(|(_, p)| parse(p).is_some())
        .or_else(|| paths().find(|(h, _)| *h == "0"))
        .or_else(|| paths().next())
        .map_or("", |(_, p)| p)
}

/// The container and pod a cgroup path places a process in, if it names any. Accepts a bare
/// path or a whole `N:controllers:path` line.
pub fn parse(path: &str) -> Option<Identity> {
    // A v1 line `12:pids:/kubepods/...`: the path starts after the second colon. A path never
    // holds a colon before its first slash.
    let path = match path.find('/') {
        Some(slash) if path[..slash].contains(':') => &path[slash..],
        _ => path,
    };
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    // The innermost pod wins: kind and k3d nodes are themselves containers, so an outer
    // runtime's id can precede the pod.
    let pod_at = segments.iter().rposition(|s| pod_uid(s).is_some());
    let (pod_uid, container) = match pod_at {
        Some(i) => (
            pod_uid(segments[i]),
            // The container is the segment right under the pod; anything deeper (CRI-O's
            // `.../crio-<id>.scope/container`) is the container's own business.
            segments.get(i + 1).and_then(|s| container(s, true)),
        ),
        // No pod: a plain container (docker, podman), if any segment names one; bare hex
        // only directly under `docker`, where the cgroupfs driver puts it.
        None => (
            None,
            segments.iter().enumerate().rev().find_map(|(i, s)| {
                let bare_ok = i > 0 && segments[i - 1] == "docker";
                container(s, bare_ok)
            }),
        ),
    };
    if pod_uid.is_none() && container.is_none() {
        return None;
    }
    let (container_id, container_runtime) = match container {
        Some((id, rt)) => (Some(id), rt.map(str::to_string)),
        None => (None, None),
    };
    Some(Identity {
        container_id,
        container_runtime,
        pod_uid,
        ..Default::default()
    })
}

/// `pod<uid>` (cgroupfs) or `...kubepods...-pod<uid_with_underscores>.slice` (systemd). A UID
/// is a UUID, or 32 hex digits for static pods (the kubelet hashes their manifest).
fn pod_uid(segment: &str) -> Option<String> {
    let raw = if let Some(slice) = segment.strip_suffix(".slice") {
        // `kubepods-burstable-pod<uid>.slice`, `kubelet-kubepods-pod<uid>.slice`.
        let (prefix, uid) = slice.rsplit_once("-pod")?;
        if !prefix.contains("kubepods") {
            return None;
        }
        uid
    } else {
        segment.strip_prefix("pod")?
    };
    // systemd unit names cannot hold '-' inside a component, so the kubelet writes '_'.
    let uid = raw.replace('_', "-");
    let hex = |s: &str| s.bytes().all(|b| b.is_ascii_hexdigit());
    let uuid_shape = uid.len() == 36
        && uid.split('-').map(str::len).eq([8usize, 4, 4, 4, 12])
        && hex(&uid.replace('-', ""));
    let static_pod = uid.len() == 32 && hex(&uid);
    (uuid_shape || static_pod).then(|| uid.to_ascii_lowercase())
}

/// Runtime prefixes of container cgroups, and the runtime each means (the scheme the API
/// server uses in `containerID`).
const RUNTIMES: &[(&str, &str)] = &[
    ("cri-containerd-", "containerd"),
    ("crio-", "cri-o"),
    ("docker-", "docker"),
    ("libpod-", "podman"),
];

/// A container id: a runtime-prefixed segment (`cri-containerd-<id>.scope`, `crio-<id>`), or,
/// where `bare_ok`, 64 hex digits alone (cgroupfs; the runtime is not named there).
fn container(segment: &str, bare_ok: bool) -> Option<(String, Option<&'static str>)> {
    let s = segment.strip_suffix(".scope").unwrap_or(segment);
    let is_id = |id: &str| id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit());
    for (prefix, runtime) in RUNTIMES {
        if let Some(id) = s.strip_prefix(prefix) {
            // `crio-conmon-<id>` is CRI-O's monitor process, not the container.
            return is_id(id).then(|| (id.to_ascii_lowercase(), Some(*runtime)));
        }
    }
    (bare_ok && is_id(s)).then(|| (s.to_ascii_lowercase(), None))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "4bdee9905cf11e6fa2c73ecb7eed4550c41bc1946a2ed47ca96c1dc79dfbbe10";
    const UID: &str = "8f1c2a3b-4d5e-4f60-8a7b-9c0d1e2f3a4b";
    const UID_: &str = "8f1c2a3b_4d5e_4f60_8a7b_9c0d1e2f3a4b";

    type Ids = (Option<String>, Option<String>, Option<String>);

    /// (container id, runtime, pod UID).
    fn ids(path: &str) -> Ids {
        match parse(path) {
            Some(i) => (i.container_id, i.container_runtime, i.pod_uid),
            None => (None, None, None),
        }
    }

    fn both(runtime: Option<&str>) -> Ids {
        (
            Some(ID.into()),
            runtime.map(str::to_string),
            Some(UID.into()),
        )
    }

    fn only(id: Option<&str>, runtime: Option<&str>, uid: Option<&str>) -> Ids {
        (
            id.map(str::to_string),
            runtime.map(str::to_string),
            uid.map(str::to_string),
        )
    }

    #[test]
    fn systemd_driver_every_qos_class_and_runtime() {
        for (qos_slice, pod_prefix) in [
            ("kubepods-burstable.slice/", "kubepods-burstable"),
            ("kubepods-besteffort.slice/", "kubepods-besteffort"),
            // Guaranteed pods sit right under kubepods.slice.
            ("", "kubepods"),
        ] {
            for (scope, runtime) in [
                (format!("cri-containerd-{ID}.scope"), "containerd"),
                (format!("crio-{ID}.scope"), "cri-o"),
                (format!("docker-{ID}.scope"), "docker"),
            ] {
                let p = format!("/kubepods.slice/{qos_slice}{pod_prefix}-pod{UID_}.slice/{scope}");
                assert_eq!(ids(&p), both(Some(runtime)), "{p}");
            }
        }
    }

    #[test]
    fn cgroupfs_driver_every_qos_class_and_runtime() {
        for qos in ["burstable/", "besteffort/", ""] {
            let p = format!("/kubepods/{qos}pod{UID}/{ID}");
            assert_eq!(ids(&p), both(None), "{p}");
            let p = format!("/kubepods/{qos}pod{UID}/crio-{ID}");
            assert_eq!(ids(&p), both(Some("cri-o")), "{p}");
        }
    }

    #[test]
    fn nested_and_namespaced_paths() {
        // kind: the kubelet runs with --cgroup-root=/kubelet under systemd.
        let kind = format!(
            "/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod{UID_}.slice/cri-containerd-{ID}.scope"
        );
        assert_eq!(ids(&kind), both(Some("containerd")));
        // k3d / kind on cgroupfs: the node is a docker container; the pod's container wins.
        let outer = "0123456789abcdef".repeat(4);
        let nested = format!("/docker/{outer}/kubepods/besteffort/pod{UID}/{ID}");
        assert_eq!(ids(&nested), both(None));
        // k3s under its own prefix.
        let k3s = format!("/k3s/kubepods/burstable/pod{UID}/{ID}");
        assert_eq!(ids(&k3s), both(None));
        // Seen from inside a cgroup namespace.
        let ns = format!("/../../kubepods-besteffort-pod{UID_}.slice/cri-containerd-{ID}.scope");
        assert_eq!(ids(&ns), both(Some("containerd")));
        // CRI-O puts the workload one level further down on some setups.
        let deeper = format!("/kubepods.slice/kubepods-pod{UID_}.slice/crio-{ID}.scope/container");
        assert_eq!(ids(&deeper), both(Some("cri-o")));
    }

    #[test]
    fn cgroup_v1_lines_are_accepted() {
        let line = format!("12:cpu,cpuacct:/kubepods/burstable/pod{UID}/{ID}");
        assert_eq!(ids(&line), both(None));
        let systemd =
            format!("1:name=systemd:/kubepods.slice/kubepods-pod{UID_}.slice/docker-{ID}.scope");
        assert_eq!(ids(&systemd), both(Some("docker")));
        let v2 = format!("0::/kubepods/pod{UID}/{ID}");
        assert_eq!(ids(&v2), both(None));
    }

    #[test]
    fn static_pods_and_pause_level_paths() {
        // Static pods: the UID is the 32-hex hash of the manifest.
        let hash = "3c8f5ec1a1b12dd3e4f8c0e1aa64c0dc";
        let p = format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{hash}.slice/cri-containerd-{ID}.scope"
        );
        assert_eq!(ids(&p), only(Some(ID), Some("containerd"), Some(hash)));
        // A process in the pod's cgroup itself (no container level): the pod alone.
        let p = format!("/kubepods/besteffort/pod{UID}");
        assert_eq!(ids(&p), only(None, None, Some(UID)));
        // Upper case in a UID is normalised.
        let p = format!("/kubepods/pod{}/{ID}", UID.to_ascii_uppercase());
        assert_eq!(ids(&p).2.as_deref(), Some(UID));
    }

    #[test]
    fn plain_containers_without_kubernetes() {
        assert_eq!(
            ids(&format!("/system.slice/docker-{ID}.scope")),
            only(Some(ID), Some("docker"), None)
        );
        assert_eq!(ids(&format!("/docker/{ID}")), only(Some(ID), None, None));
        assert_eq!(
            ids(&format!("/machine.slice/libpod-{ID}.scope")),
            only(Some(ID), Some("podman"), None)
        );
    }

    #[test]
    fn ordinary_paths_name_nothing() {
        for p in [
            "",
            "/",
            "/user.slice/user-0.slice/session-3.scope",
            "/system.slice/containerd.service",
            "/process_api/1bf14ec78430badf1d9fb656dcd2ae9e",
            // A bare id outside a pod or docker directory is any hash.
            &format!("/somewhere/{ID}"),
            // Not a UUID.
            "/kubepods/besteffort/podnotauid/abc",
            "/kubepods.slice/kubepods-pod1234.slice",
            // A pod-looking slice outside kubepods.
            &format!("/user.slice/user-pod{UID_}.slice"),
            // Short or non-hex ids.
            &format!("/system.slice/docker-{}.scope", &ID[..12]),
            &format!("/system.slice/docker-{}z.scope", &ID[..63]),
        ] {
            assert_eq!(parse(p), None, "{p}");
        }
        // The monitor's cgroup still tells the pod.
        let conmon = format!("/kubepods.slice/kubepods-pod{UID_}.slice/crio-conmon-{ID}.scope");
        assert_eq!(ids(&conmon), only(None, None, Some(UID)));
    }

    #[test]
    fn select_prefers_the_line_naming_a_container() {
        // A hybrid host: name=systemd first, the runtime's path further down.
        let hybrid = format!(
            "9:name=systemd:/\n8:pids:/\n4:memory:/process_api/1bf1\n0::/kubepods/besteffort/pod{UID}/{ID}\n"
        );
        assert_eq!(
            select(&hybrid),
            format!("/kubepods/besteffort/pod{UID}/{ID}")
        );
        // None names a container: the unified hierarchy's path.
        assert_eq!(
            select("9:name=systemd:/user.slice\n4:memory:/a\n0::/system.slice/x.service\n"),
            "/system.slice/x.service"
        );
        // Pure v1 without a container: the first line.
        assert_eq!(select("3:cpu:/a\n2:pids:/b\n"), "/a");
        assert_eq!(select("0::/\n"), "/");
        assert_eq!(select(""), "");
    }
}

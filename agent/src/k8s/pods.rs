//! The pods of this node as the API server describes them, reduced to what names a process:
//! pod UID → name and namespace, container id → container name. Pure: bytes from the API
//! server in, a [`Store`] updated; the network side is [`super::api`].

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::value::RawValue;

/// How long a deleted pod stays resolvable: a process's last records (its session's end, an
/// exchange cut short) are often reported after the API server has let the pod go.
pub const DELETED_GRACE: Duration = Duration::from_secs(300);

/// One container of a pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Container {
    /// Runtime's id (without the `containerd://` scheme).
    pub id: String,
    /// The scheme: `containerd`, `cri-o`, `docker`, ...
    pub runtime: String,
    /// Name in the pod spec.
    pub name: String,
}

/// What is kept of a pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pod {
    /// `metadata.uid`.
    pub uid: String,
    /// `metadata.name`.
    pub name: String,
    /// `metadata.namespace`.
    pub namespace: String,
    /// A static pod's own UID (`kubernetes.io/config.mirror`): its cgroups carry that one, not
    /// the mirror pod's `metadata.uid`.
    pub mirror_of: Option<String>,
    /// Containers that have been started (init, regular and ephemeral).
    pub containers: Vec<Container>,
}

// The API objects, reduced to the fields read; everything else is skipped by serde.

#[derive(Deserialize)]
struct PodObject {
    #[serde(default)]
    metadata: ObjectMeta,
    #[serde(default)]
    status: Option<PodStatus>,
}

#[derive(Deserialize, Default)]
struct ObjectMeta {
    #[serde(default)]
    uid: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    namespace: String,
    #[serde(default, rename = "resourceVersion")]
    resource_version: String,
    #[serde(default)]
    annotations: Option<HashMap<String, String>>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct PodStatus {
    #[serde(default)]
    container_statuses: Option<Vec<ContainerStatus>>,
    #[serde(default)]
    init_container_statuses: Option<Vec<ContainerStatus>>,
    #[serde(default)]
    ephemeral_container_statuses: Option<Vec<ContainerStatus>>,
}

#[derive(Deserialize)]
struct ContainerStatus {
    name: String,
    #[serde(default, rename = "containerID")]
    container_id: Option<String>,
}

#[derive(Deserialize)]
struct ListMeta {
    #[serde(default, rename = "resourceVersion")]
    resource_version: String,
    #[serde(default, rename = "continue")]
    cont: Option<String>,
}

#[derive(Deserialize)]
struct PodListObject {
    metadata: ListMeta,
    #[serde(default)]
    items: Vec<PodObject>,
}

#[derive(Deserialize)]
struct WatchEvent<'a> {
    #[serde(rename = "type")]
    kind: String,
    #[serde(borrow)]
    object: &'a RawValue,
}

#[derive(Deserialize)]
struct StatusObject {
    #[serde(default)]
    code: u16,
    #[serde(default)]
    reason: String,
    #[serde(default)]
    message: String,
}

impl PodObject {
    fn into_pod(self) -> Option<Pod> {
        let m = self.metadata;
        if m.uid.is_empty() {
            return None;
        }
        let mut containers = Vec::new();
        if let Some(st) = self.status {
            for cs in [
                st.init_container_statuses,
                st.container_statuses,
                st.ephemeral_container_statuses,
            ]
            .into_iter()
            .flatten()
            .flatten()
            {
                // `containerd://<id>`; empty until the container has been created.
                let Some((runtime, id)) =
                    cs.container_id.as_deref().and_then(|c| c.split_once("://"))
                else {
                    continue;
                };
                if id.is_empty() {
                    continue;
                }
                containers.push(Container {
                    id: id.to_ascii_lowercase(),
                    runtime: runtime.to_string(),
                    name: cs.name,
                });
            }
        }
        let mirror_of = m
            .annotations
            .as_ref()
            .and_then(|a| a.get("kubernetes.io/config.mirror"))
            .map(|h| h.to_ascii_lowercase());
        Some(Pod {
            uid: m.uid.to_ascii_lowercase(),
            name: m.name,
            namespace: m.namespace,
            mirror_of,
            containers,
        })
    }
}

/// One page of a pod list.
#[derive(Debug)]
pub struct ListPage {
    /// The pods on it.
    pub pods: Vec<Pod>,
    /// The list's `resourceVersion`: where a watch starts.
    pub resource_version: String,
    /// Token for the next page, if there is one.
    pub cont: Option<String>,
}

/// Parse a `PodList` response body.
pub fn parse_list(body: &[u8]) -> Result<ListPage, String> {
    let l: PodListObject =
        serde_json::from_slice(body).map_err(|e| format!("pod list is not a PodList: {e}"))?;
    Ok(ListPage {
        pods: l
            .items
            .into_iter()
            .filter_map(PodObject::into_pod)
            .collect(),
        resource_version: l.metadata.resource_version,
        cont: l.metadata.cont.filter(|c| !c.is_empty()),
    })
}

/// What a watch stream says to do next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Next {
    /// Keep reading.
    Continue,
    /// The resource version is too old (410 Gone, `Expired`): list again.
    Relist,
    /// The server reported another error, or sent something unreadable.
    Failed(String),
}

/// The pods known, indexed for lookups by UID, static-pod hash and container id.
#[derive(Debug, Default)]
pub struct Store {
    pods: HashMap<String, Pod>,
    /// When each pod that the API server dropped was dropped (kept for [`DELETED_GRACE`]).
    deleted: HashMap<String, Instant>,
    /// Static-pod hash → mirror pod UID.
    aliases: HashMap<String, String>,
    /// Container id → pod UID.
    by_container: HashMap<String, String>,
    /// Where the next watch starts.
    pub resource_version: String,
    /// Bumped on every change, so that callers can cache what they derived.
    pub generation: u64,
}

impl Store {
    fn index(&mut self, p: &Pod) {
        if let Some(h) = &p.mirror_of {
            self.aliases.insert(h.clone(), p.uid.clone());
        }
        for c in &p.containers {
            self.by_container.insert(c.id.clone(), p.uid.clone());
        }
    }

    fn unindex(&mut self, uid: &str) {
        if let Some(old) = self.pods.get(uid) {
            if let Some(h) = &old.mirror_of {
                self.aliases.remove(h);
            }
            for c in &old.containers {
                if self.by_container.get(&c.id).map(String::as_str) == Some(uid) {
                    self.by_container.remove(&c.id);
                }
            }
        }
    }

    /// Add or replace a pod.
    pub fn upsert(&mut self, p: Pod) {
        self.unindex(&p.uid);
        self.deleted.remove(&p.uid);
        self.index(&p);
        self.pods.insert(p.uid.clone(), p);
        self.generation += 1;
    }

    /// The pod is gone; it stays resolvable for [`DELETED_GRACE`] after `now`.
    pub fn delete(&mut self, uid: &str, now: Instant) {
        if self.pods.contains_key(uid) {
            self.deleted.entry(uid.to_string()).or_insert(now);
            self.generation += 1;
        }
        self.expire(now);
    }

    /// Forget pods deleted longer than [`DELETED_GRACE`] before `now`.
    pub fn expire(&mut self, now: Instant) {
        let old: Vec<String> = self
            .deleted
            .iter()
            .filter(|(_, t)| now.saturating_duration_since(**t) >= DELETED_GRACE)
            .map(|(u, _)| u.clone())
            .collect();
        for uid in old {
            self.unindex(&uid);
            self.pods.remove(&uid);
            self.deleted.remove(&uid);
            self.generation += 1;
        }
    }

    /// A fresh list: these are the pods now; the others are deleted as of `now`.
    pub fn replace(&mut self, pods: Vec<Pod>, resource_version: String, now: Instant) {
        let present: std::collections::HashSet<&str> =
            pods.iter().map(|p| p.uid.as_str()).collect();
        let gone: Vec<String> = self
            .pods
            .keys()
            .filter(|u| !present.contains(u.as_str()))
            .cloned()
            .collect();
        for uid in gone {
            self.delete(&uid, now);
        }
        for p in pods {
            self.upsert(p);
        }
        self.resource_version = resource_version;
        self.expire(now);
    }

    /// Apply one line of a watch stream (a `WatchEvent`).
    pub fn apply_event(&mut self, line: &[u8], now: Instant) -> Next {
        let ev: WatchEvent = match serde_json::from_slice(line) {
            Ok(e) => e,
            Err(e) => return Next::Failed(format!("unreadable watch event: {e}")),
        };
        if ev.kind == "ERROR" {
            let st: StatusObject = serde_json::from_str(ev.object.get()).unwrap_or(StatusObject {
                code: 0,
                reason: String::new(),
                message: ev.object.get().chars().take(200).collect(),
            });
            return if st.code == 410 || st.reason == "Expired" || st.reason == "Gone" {
                Next::Relist
            } else {
                Next::Failed(format!(
                    "watch error {} {}: {}",
                    st.code, st.reason, st.message
                ))
            };
        }
        let obj: PodObject = match serde_json::from_str(ev.object.get()) {
            Ok(o) => o,
            Err(e) => return Next::Failed(format!("unreadable pod in {} event: {e}", ev.kind)),
        };
        let rv = obj.metadata.resource_version.clone();
        match ev.kind.as_str() {
            "ADDED" | "MODIFIED" => {
                if let Some(p) = obj.into_pod() {
                    self.upsert(p);
                }
            }
            "DELETED" => {
                let uid = obj.metadata.uid.to_ascii_lowercase();
                self.delete(&uid, now);
            }
            // Only moves the resource version forward.
            "BOOKMARK" => {}
            other => return Next::Failed(format!("unknown watch event type {other:?}")),
        }
        if !rv.is_empty() {
            self.resource_version = rv;
        }
        self.expire(now);
        Next::Continue
    }

    /// The pod whose cgroups carry `uid` (its own UID, or a static pod's hash).
    pub fn pod(&self, uid: &str) -> Option<&Pod> {
        self.pods
            .get(uid)
            .or_else(|| self.pods.get(self.aliases.get(uid)?))
    }

    /// The pod and container of container `id`.
    pub fn container(&self, id: &str) -> Option<(&Pod, &Container)> {
        let pod = self.pods.get(self.by_container.get(id)?)?;
        Some((pod, pod.containers.iter().find(|c| c.id == id)?))
    }

    /// Pods known and not deleted.
    pub fn live(&self) -> impl Iterator<Item = &Pod> {
        self.pods
            .values()
            .filter(|p| !self.deleted.contains_key(&p.uid))
    }
}

#[cfg(test)]
mod tests {
    //! On the fixtures under `testdata/`: a `PodList` in two pages, two watch streams and a
    //! re-list, written in the API server's JSON shapes (v1 `PodList`, `WatchEvent` lines,
    //! a 410 `Status`). No cluster runs here: the bytes are hand-made, not recorded.
    use super::*;

    pub(crate) const POD_A: &str = "950cff9d-7e83-4951-83dd-180d4842c861";
    const POD_B: &str = "34a2a350-b336-479f-847f-0675018c72c7";
    const POD_C: &str = "21f96aba-8fa6-482d-9219-a07bd7e058c1";
    const POD_E: &str = "22eb43d0-7280-48a7-9bde-4c1d2803817e";
    const STATIC_HASH: &str = "3c8f5ec1a1b12dd3e4f8c0e1aa64c0dc";
    const A_SERVER: &str = "e836c1363ec0d9781e860e8210cc5e7624a2332ddcb4c76fc4a5bb401494bfcf";
    const A_INIT: &str = "0ffe0a54af79020539f64e053ded45c8a2003c1dde8f511e5a306359de735116";
    const C_NOTES: &str = "dd1f8cd8c6235845fcf31a148c62af935153640237b6cf0b1cf7ec4ac50cb0a9";
    const D_RUNNER: &str = "3e88a1fce0ebec534b377e9f0b63fb11c188ebc7f66ff7448ac1ffff0f653c7a";

    fn fixture(name: &str) -> Vec<u8> {
        std::fs::read(format!(
            "{}/src/k8s/testdata/{name}",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap()
    }

    fn listed(now: Instant) -> Store {
        let p1 = parse_list(&fixture("pods-list-page1.json")).unwrap();
        let p2 = parse_list(&fixture("pods-list-page2.json")).unwrap();
        assert!(p1.cont.is_some());
        assert_eq!(p2.cont, None);
        let mut s = Store::default();
        let rv = p2.resource_version.clone();
        s.replace(p1.pods.into_iter().chain(p2.pods).collect(), rv, now);
        s
    }

    #[test]
    fn a_listed_pod_names_its_containers_and_static_pods_their_hash() {
        let s = listed(Instant::now());
        assert_eq!(s.resource_version, "1000");
        assert_eq!(s.live().count(), 3);
        let (pod, c) = s.container(A_SERVER).unwrap();
        assert_eq!(
            (pod.name.as_str(), pod.namespace.as_str(), pod.uid.as_str()),
            ("mcp-weather-7d9f8b6c5-x2kqp", "agents", POD_A)
        );
        assert_eq!(
            (c.name.as_str(), c.runtime.as_str()),
            ("server", "containerd")
        );
        // Init containers count too (a process may outlive nothing, but its records may).
        assert_eq!(s.container(A_INIT).unwrap().1.name, "fetch-config");
        // The static pod is found by the hash its cgroups carry, and by its mirror UID.
        assert_eq!(s.pod(STATIC_HASH).unwrap().name, "kube-apiserver-node-1");
        assert_eq!(s.pod(POD_B).unwrap().namespace, "kube-system");
        // A pending pod: known by UID, no container yet.
        assert_eq!(s.pod(POD_C).unwrap().name, "mcp-notes-0");
        assert!(s.pod(POD_C).unwrap().containers.is_empty());
        assert!(s.container(C_NOTES).is_none());
    }

    #[test]
    fn watch_events_update_the_store_and_the_resource_version() {
        let t0 = Instant::now();
        let mut s = listed(t0);
        let lines = fixture("watch-1.jsonl");
        let mut steps = Vec::new();
        for l in lines.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            steps.push(s.apply_event(l, t0));
        }
        assert_eq!(steps, vec![Next::Continue; 4]);
        // MODIFIED: the pending pod's container started.
        assert_eq!(s.container(C_NOTES).unwrap().1.name, "notes");
        // ADDED, on CRI-O.
        let (d, c) = s.container(D_RUNNER).unwrap();
        assert_eq!(
            (d.namespace.as_str(), c.runtime.as_str()),
            ("batch", "cri-o")
        );
        // DELETED: no longer live, still resolvable for a while.
        assert!(s.live().all(|p| p.uid != POD_A));
        assert_eq!(s.container(A_SERVER).unwrap().0.uid, POD_A);
        // BOOKMARK: only the resource version moves.
        assert_eq!(s.resource_version, "1010");
        s.expire(t0 + DELETED_GRACE);
        assert!(s.container(A_SERVER).is_none());
        assert!(s.pod(POD_A).is_none());

        let lines = fixture("watch-2.jsonl");
        let mut it = lines.split(|b| *b == b'\n').filter(|l| !l.is_empty());
        assert_eq!(s.apply_event(it.next().unwrap(), t0), Next::Continue);
        assert_eq!(s.pod(POD_E).unwrap().name, "mcp-git-1");
        assert_eq!(s.resource_version, "1011");
        // ERROR 410 Expired: list again.
        assert_eq!(s.apply_event(it.next().unwrap(), t0), Next::Relist);
    }

    #[test]
    fn a_relist_drops_what_it_no_longer_has() {
        let t0 = Instant::now();
        let mut s = listed(t0);
        let relist = parse_list(&fixture("pods-list-relist.json")).unwrap();
        s.replace(relist.pods, relist.resource_version, t0);
        assert_eq!(s.resource_version, "2000");
        let mut live: Vec<&str> = s.live().map(|p| p.name.as_str()).collect();
        live.sort();
        assert_eq!(
            live,
            [
                "kube-apiserver-node-1",
                "late-arrival-6f7d",
                "mcp-git-1",
                "mcp-notes-0",
                "tools-runner-5c4b9"
            ]
        );
        // The pod missing from the re-list was deleted meanwhile; it expires like any other.
        assert!(s.pod(POD_A).is_some());
        s.expire(t0 + DELETED_GRACE);
        assert!(s.pod(POD_A).is_none());
        assert!(
            s.pod(STATIC_HASH).is_some(),
            "static pod kept across the re-list"
        );
    }

    #[test]
    fn generation_moves_with_every_change() {
        let t0 = Instant::now();
        let mut s = Store::default();
        let g0 = s.generation;
        s.replace(
            parse_list(&fixture("pods-list-page2.json")).unwrap().pods,
            "5".into(),
            t0,
        );
        let g1 = s.generation;
        assert!(g1 > g0);
        // A bookmark changes nothing a lookup sees.
        let bm = br#"{"type":"BOOKMARK","object":{"kind":"Pod","apiVersion":"v1","metadata":{"resourceVersion":"9"},"spec":{"containers":null},"status":{}}}"#;
        assert_eq!(s.apply_event(bm, t0), Next::Continue);
        assert_eq!((s.generation, s.resource_version.as_str()), (g1, "9"));
        s.delete(POD_C, t0);
        assert!(s.generation > g1);
    }

    #[test]
    fn bad_lines_and_other_errors_fail_without_touching_the_store() {
        let t0 = Instant::now();
        let mut s = listed(t0);
        let g = s.generation;
        for line in [
            &b"not json"[..],
            br#"{"type":"ERROR","object":{"kind":"Status","code":500,"reason":"InternalError","message":"etcd is sad"}}"#,
            br#"{"type":"SOMETHING","object":{"metadata":{"uid":"x"}}}"#,
            br#"{"type":"ADDED","object":[1,2]}"#,
        ] {
            assert!(
                matches!(s.apply_event(line, t0), Next::Failed(_)),
                "{}",
                String::from_utf8_lossy(line)
            );
        }
        assert_eq!(s.generation, g);
        assert_eq!(s.resource_version, "1000");
        assert!(parse_list(b"{\"kind\":\"Status\",\"code\":403}").is_err());
    }
}

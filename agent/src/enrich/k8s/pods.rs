//! The pods of this node reduced to what names a process: pod UID → name and namespace,
//! container id → container name and runtime. Pure: the watcher's events (kube's
//! [`Event`] of `k8s_openapi` pods) in, a [`Store`] updated; reading them off the API server
//! is [`super::api`]'s part (and kube's).

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod as ApiPod;
use kube::runtime::watcher::Event;

/// How long a deleted pod stays resolvable: a process's last records (its session's end, an
/// exchange cut short) are often reported after the API server has let the pod go.
pub const DELETED_GRACE: Duration = Duration::from_secs(300);

/// The annotation a static pod's mirror carries: the static pod's own UID (its manifest's
/// hash), which is what its cgroups carry.
const MIRROR: &str = "kubernetes.io/config.mirror";

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

impl Pod {
    /// What names a process, from the API server's pod; `None` without a UID.
    pub fn from_api(p: &ApiPod) -> Option<Pod> {
        let m = &p.metadata;
        let uid = m.uid.as_deref().filter(|u| !u.is_empty())?;
        let statuses = p.status.iter().flat_map(|st| {
            [
                &st.init_container_statuses,
                &st.container_statuses,
                &st.ephemeral_container_statuses,
            ]
        });
        let containers = statuses
            .flatten()
            .flatten()
            .filter_map(|cs| {
                // `containerd://<id>`; empty until the container has been created.
                let (runtime, id) = cs.container_id.as_deref()?.split_once("://")?;
                (!id.is_empty()).then(|| Container {
                    id: id.to_ascii_lowercase(),
                    runtime: runtime.to_string(),
                    name: cs.name.clone(),
                })
            })
            .collect();
        let mirror_of = m
            .annotations
            .as_ref()
            .and_then(|a| a.get(MIRROR))
            .map(|h| h.to_ascii_lowercase());
        Some(Pod {
            uid: uid.to_ascii_lowercase(),
            name: m.name.clone().unwrap_or_default(),
            namespace: m.namespace.clone().unwrap_or_default(),
            mirror_of,
            containers,
        })
    }
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
    /// A list under way: the pods of its pages so far. Lookups keep seeing the previous state
    /// until the list is complete.
    listing: Option<Vec<Pod>>,
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

    /// A complete list: these are the pods now; the others are deleted as of `now`.
    pub fn replace(&mut self, pods: Vec<Pod>, now: Instant) {
        let present: HashSet<&str> = pods.iter().map(|p| p.uid.as_str()).collect();
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
        self.expire(now);
    }

    /// Apply one event of kube's watcher. `Some(n)` when it completed a list of `n` pods.
    ///
    /// A list arrives as `Init`, an `InitApply` per pod and `InitDone`; the store takes it
    /// whole at `InitDone` (pods missing from it were deleted meanwhile). `Init` itself is not
    /// needed: a list that fails part-way is dropped by [`Store::list_failed`], and the next
    /// `InitApply` starts a new one.
    pub fn apply(&mut self, event: Event<ApiPod>, now: Instant) -> Option<usize> {
        let mut listed = None;
        match event {
            Event::Init => self.listing = Some(Vec::new()),
            Event::InitApply(p) => {
                let listing = self.listing.get_or_insert_default();
                listing.extend(Pod::from_api(&p));
            }
            Event::InitDone => {
                let pods = self.listing.take().unwrap_or_default();
                listed = Some(pods.len());
                self.replace(pods, now);
            }
            Event::Apply(p) => {
                if let Some(p) = Pod::from_api(&p) {
                    self.upsert(p);
                }
            }
            Event::Delete(p) => {
                if let Some(uid) = p.metadata.uid.as_deref() {
                    self.delete(&uid.to_ascii_lowercase(), now);
                }
            }
        }
        self.expire(now);
        listed
    }

    /// The watcher failed: a list under way starts over (kube lists again from its first
    /// page), so the pages gathered so far are dropped. Nothing a lookup sees changes.
    pub fn list_failed(&mut self) {
        self.listing = None;
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
pub(crate) mod tests {
    //! On the fixtures under `testdata/`: a `PodList` in two pages, two watch streams and a
    //! re-list, written in the API server's JSON shapes (v1 `PodList`, `WatchEvent` lines)
    //! and decoded with kube's own types. No cluster runs here: the bytes are hand-made, not
    //! recorded. What the watcher makes of a stream (bookmarks, 410) is tested with the
    //! client, in `api/tests.rs`.
    use super::*;
    use kube::core::{ObjectList, WatchEvent};

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
            "{}/src/enrich/k8s/testdata/{name}",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap()
    }

    /// The pods of a `PodList` fixture, as kube decodes them.
    pub(crate) fn list(name: &str) -> Vec<ApiPod> {
        serde_json::from_slice::<ObjectList<ApiPod>>(&fixture(name))
            .unwrap()
            .items
    }

    /// The watcher's events for a watch-stream fixture, as kube decodes its lines: bookmarks
    /// and errors stay with the watcher.
    fn watch(name: &str) -> Vec<Event<ApiPod>> {
        fixture(name)
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .filter_map(
                |l| match serde_json::from_slice::<WatchEvent<ApiPod>>(l).unwrap() {
                    WatchEvent::Added(p) | WatchEvent::Modified(p) => Some(Event::Apply(p)),
                    WatchEvent::Deleted(p) => Some(Event::Delete(p)),
                    WatchEvent::Bookmark(_) | WatchEvent::Error(_) => None,
                },
            )
            .collect()
    }

    /// A list, as the watcher delivers it.
    fn listed(s: &mut Store, pods: Vec<ApiPod>, now: Instant) -> Option<usize> {
        s.apply(Event::Init, now);
        for p in pods {
            s.apply(Event::InitApply(p), now);
        }
        s.apply(Event::InitDone, now)
    }

    fn both_pages(now: Instant) -> Store {
        let mut s = Store::default();
        let pods = [list("pods-list-page1.json"), list("pods-list-page2.json")].concat();
        assert_eq!(listed(&mut s, pods, now), Some(3));
        s
    }

    #[test]
    fn a_listed_pod_names_its_containers_and_static_pods_their_hash() {
        let s = both_pages(Instant::now());
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
    fn watch_events_update_the_store() {
        let t0 = Instant::now();
        let mut s = both_pages(t0);
        let events = watch("watch-1.jsonl");
        assert_eq!(
            events.len(),
            3,
            "MODIFIED, ADDED, DELETED; the BOOKMARK is kube's"
        );
        for e in events {
            assert_eq!(s.apply(e, t0), None);
        }
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
        s.expire(t0 + DELETED_GRACE);
        assert!(s.container(A_SERVER).is_none());
        assert!(s.pod(POD_A).is_none());

        for e in watch("watch-2.jsonl") {
            s.apply(e, t0);
        }
        assert_eq!(s.pod(POD_E).unwrap().name, "mcp-git-1");
    }

    #[test]
    fn a_relist_drops_what_it_no_longer_has() {
        let t0 = Instant::now();
        let mut s = both_pages(t0);
        assert_eq!(listed(&mut s, list("pods-list-relist.json"), t0), Some(5));
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
    fn a_list_counts_only_when_complete_and_a_failed_one_is_dropped() {
        let t0 = Instant::now();
        let mut s = both_pages(t0);
        let g = s.generation;
        // A re-list's first page arrives, then the next page fails: lookups never see it.
        s.apply(Event::Init, t0);
        for p in list("pods-list-relist.json") {
            assert_eq!(s.apply(Event::InitApply(p), t0), None);
        }
        assert_eq!(s.generation, g, "nothing a lookup sees has changed");
        assert!(s.pod(POD_E).is_none());
        s.list_failed();
        // kube lists again from the first page: only that list counts.
        for p in list("pods-list-page2.json") {
            s.apply(Event::InitApply(p), t0);
        }
        assert_eq!(s.apply(Event::InitDone, t0), Some(1));
        assert!(
            s.pod(POD_E).is_none(),
            "the failed list's pods were dropped"
        );
        assert!(s.generation > g);
        let live: Vec<&str> = s.live().map(|p| p.name.as_str()).collect();
        assert_eq!(live, ["mcp-notes-0"]);
    }

    #[test]
    fn generation_moves_with_every_change() {
        let t0 = Instant::now();
        let mut s = Store::default();
        let g0 = s.generation;
        listed(&mut s, list("pods-list-page2.json"), t0);
        let g1 = s.generation;
        assert!(g1 > g0);
        // Deleting a pod the store never had changes nothing a lookup sees.
        let mut ghost = list("pods-list-page2.json").remove(0);
        ghost.metadata.uid = Some("00000000-0000-0000-0000-000000000000".into());
        s.apply(Event::Delete(ghost), t0);
        assert_eq!(s.generation, g1);
        s.apply(Event::Delete(list("pods-list-page2.json").remove(0)), t0);
        assert!(s.generation > g1);
    }

    #[test]
    fn a_pod_without_uid_or_started_containers_names_nothing_it_lacks() {
        let mut p = list("pods-list-page1.json").remove(0);
        let full = Pod::from_api(&p).unwrap();
        assert!(!full.containers.is_empty());
        if let Some(st) = p.status.as_mut() {
            for cs in st.container_statuses.iter_mut().flatten() {
                cs.container_id = Some("containerd://".into());
            }
            st.init_container_statuses = None;
        }
        assert!(Pod::from_api(&p).unwrap().containers.is_empty());
        p.metadata.uid = None;
        assert_eq!(Pod::from_api(&p), None);
    }
}

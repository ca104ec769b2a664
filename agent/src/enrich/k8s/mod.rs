//! Kubernetes metadata of the processes at each end of a conversation.
//!
//! Two sources, the second optional:
//!
//! 1. The process's cgroup path ([`crate::capture::cgroup`]): container id, runtime and pod UID, with no API
//!    server, read once per process with the rest of its metadata
//!    ([`crate::capture::host`]) and carried by every record's `client`/`server`.
//! 2. The API server ([`api`], [`pods`]): the pods of this node, listed and watched by the
//!    `kube` crate's watcher with the in-cluster service account, name the pod, its namespace
//!    and the container. Names are filled in when signals leave the pipeline ([`crate::enrich`]), so
//!    a pod the watch learns of after its process was first seen is still named.
//!
//! The watcher runs only in a pod (`KUBERNETES_SERVICE_HOST` and a service-account token)
//! and with `--k8s auto`; it never blocks capture and its failures are counted
//! (`mcptap_k8s_api_errors_total`) and logged once per outage.

pub mod api;
pub mod pods;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use log::{debug, warn};

use crate::signal::{Endpoint, Signal};
use pods::Store;

use crate::capture::cgroup::Identity;

/// Whether to ask the API server (`--k8s`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// Watch this node's pods when running in a pod with a service account.
    #[default]
    Auto,
    /// Never call the API server; container ids and pod UIDs still come from cgroups.
    Off,
}

/// (pod UID, container id) → (store generation, the identity it resolved to).
type Cache = HashMap<(Option<String>, Option<String>), (u64, Arc<Identity>)>;

/// Fills in names from the pod store, caching each result until the store changes.
#[derive(Default)]
pub struct Resolver {
    store: Arc<RwLock<Store>>,
    node: Option<String>,
    cache: Mutex<Cache>,
}

impl Resolver {
    /// Names from `store`; `node` is this node's name, if known.
    pub fn new(store: Arc<RwLock<Store>>, node: Option<String>) -> Self {
        Resolver {
            store,
            node,
            cache: Mutex::default(),
        }
    }

    /// `id` with whatever the store and the node name add; `id` itself when nothing.
    pub fn resolve(&self, id: &Arc<Identity>) -> Arc<Identity> {
        let key = (id.pod_uid.clone(), id.container_id.clone());
        let store = self.store.read().unwrap_or_else(|p| p.into_inner());
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((generation, hit)) = cache.get(&key)
            && *generation == store.generation
        {
            return hit.clone();
        }
        let mut out = (**id).clone();
        let by_container = id.container_id.as_deref().and_then(|c| store.container(c));
        let pod = by_container
            .map(|(p, _)| p)
            .or_else(|| id.pod_uid.as_deref().and_then(|u| store.pod(u)));
        if let Some(p) = pod {
            out.pod = Some(p.name.clone());
            out.namespace = Some(p.namespace.clone());
            // A plain cgroupfs path names no runtime; the API server does.
            if let Some((_, c)) = by_container {
                out.container = Some(c.name.clone());
                out.container_runtime
                    .get_or_insert_with(|| c.runtime.clone());
            }
        }
        if out.node.is_none() {
            out.node = self.node.clone();
        }
        let resolved = if out == **id {
            id.clone()
        } else {
            Arc::new(out)
        };
        // Bounded by the processes seen; cleared wholesale rather than tracked per entry.
        if cache.len() > 4096 {
            cache.clear();
        }
        cache.insert(key, (store.generation, resolved.clone()));
        resolved
    }

    fn endpoint(&self, e: &mut Endpoint) {
        if let Some(id) = &e.k8s {
            e.k8s = Some(self.resolve(id));
        }
    }

    /// Name the pods of both ends of a signal.
    pub fn enrich(&self, s: &mut Signal) {
        match s {
            Signal::Exchange(x) => {
                self.endpoint(&mut x.client);
                self.endpoint(&mut x.server);
                for f in &mut x.findings {
                    self.endpoint(&mut f.process);
                }
            }
            Signal::Notification(n) => {
                self.endpoint(&mut n.client);
                self.endpoint(&mut n.server);
            }
            Signal::LlmCall(c) => {
                self.endpoint(&mut c.process);
                for f in &mut c.findings {
                    self.endpoint(&mut f.process);
                }
            }
            Signal::Http(h) => {
                self.endpoint(&mut h.client);
                self.endpoint(&mut h.server);
            }
            Signal::Servers(r) => {
                for s in &mut r.samples {
                    self.endpoint(&mut s.process);
                }
                for u in r.usage.iter_mut().flatten() {
                    self.endpoint(&mut u.server);
                }
            }
            Signal::Event(e) => {
                for ep in e.endpoints_mut() {
                    self.endpoint(ep);
                }
            }
        }
    }
}

/// This node's name, from the downward API variable a DaemonSet sets.
fn node_name(env: &impl Fn(&str) -> Option<String>) -> Option<String> {
    env("K8S_NODE_NAME").or_else(|| env("NODE_NAME"))
}

/// Keep libraries' `tracing` events out of the log. kube turns on `tracing`'s `log` feature,
/// which makes the events of every crate that traces (kube, tower, h2, tonic) log records
/// while no tracing subscriber is set: kube would log each failed request of an outage, and
/// the body of each unreadable answer, besides the agent's one line per outage. A subscriber
/// that takes nothing puts things back as they were before kube: those events go nowhere.
fn quiet_tracing() {
    let _ = tracing::subscriber::set_global_default(tracing::subscriber::NoSubscriber::default());
}

/// Set up naming and return the resolver that does it: always the node name (when given),
/// and with `Mode::Auto` inside a pod, a thread that watches this node's pods. Never fails:
/// without a cluster there is nothing to do, and API trouble is handed to `count_error` by
/// reason.
pub fn start(mode: Mode, count_error: impl Fn(&'static str) + Send + 'static) -> Resolver {
    quiet_tracing();
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let node = node_name(&env);
    let store = Arc::new(RwLock::new(Store::default()));
    let resolver = Resolver::new(store.clone(), node.clone());
    if mode == Mode::Off {
        debug!("--k8s off: pod names are not looked up; container ids come from cgroups");
        return resolver;
    }
    watch_pods(env, node, store, count_error);
    resolver
}

/// Start the thread that watches this node's pods into `store`, when this is a pod.
fn watch_pods(
    env: impl Fn(&str) -> Option<String>,
    node: Option<String>,
    store: Arc<RwLock<Store>>,
    count_error: impl Fn(&'static str) + Send + 'static,
) {
    let Some(node) = node else {
        if env("KUBERNETES_SERVICE_HOST").is_some() {
            warn!(
                "running in Kubernetes but K8S_NODE_NAME is not set (downward API: spec.nodeName); pod names are not looked up, container ids come from cgroups"
            );
        } else {
            debug!("not in a Kubernetes pod: container ids and pod UIDs come from cgroups only");
        }
        return;
    };
    let Some(cfg) =
        api::Config::in_cluster(env, std::path::Path::new(api::SERVICE_ACCOUNT_DIR), &node)
    else {
        debug!(
            "not in a Kubernetes pod (no KUBERNETES_SERVICE_HOST or service-account token): container ids and pod UIDs come from cgroups only"
        );
        return;
    };
    let watcher = match api::Watcher::new(&cfg) {
        Ok(w) => w,
        Err(e) => {
            warn!("Kubernetes API client: {e}; pod names are not looked up");
            return;
        }
    };
    let count = count_error;
    let spawned = std::thread::Builder::new()
        .name("mcptap-k8s".into())
        .spawn(move || {
            match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt.block_on(watcher.run(store, count)),
                Err(e) => warn!("Kubernetes watcher: cannot start its runtime: {e}"),
            }
        });
    if let Err(e) = spawned {
        warn!("Kubernetes watcher: cannot start its thread: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signal::{Event, Exchange};
    use std::time::Instant;

    const ID: &str = "e836c1363ec0d9781e860e8210cc5e7624a2332ddcb4c76fc4a5bb401494bfcf";
    const UID: &str = "950cff9d-7e83-4951-83dd-180d4842c861";

    fn store() -> Arc<RwLock<Store>> {
        let listed = pods::tests::list("pods-list-page1.json");
        let mut s = Store::default();
        s.replace(
            listed.iter().filter_map(pods::Pod::from_api).collect(),
            Instant::now(),
        );
        Arc::new(RwLock::new(s))
    }

    fn from_cgroup(path: &str) -> Arc<Identity> {
        Arc::new(crate::capture::cgroup::parse(path).unwrap())
    }

    #[test]
    fn names_come_from_the_store_and_the_node_from_its_variable() {
        let r = Resolver::new(store(), Some("node-1".into()));
        // cgroupfs: no runtime in the path; the API server's containerID supplies it.
        let id = from_cgroup(&format!("/kubepods/burstable/pod{UID}/{ID}"));
        let got = r.resolve(&id);
        assert_eq!(got.pod.as_deref(), Some("mcp-weather-7d9f8b6c5-x2kqp"));
        assert_eq!(got.namespace.as_deref(), Some("agents"));
        assert_eq!(got.container.as_deref(), Some("server"));
        assert_eq!(got.container_runtime.as_deref(), Some("containerd"));
        assert_eq!(got.node.as_deref(), Some("node-1"));
        assert_eq!(got.container_id.as_deref(), Some(ID));
        // Cached until the store changes.
        assert!(Arc::ptr_eq(&got, &r.resolve(&id)));
        r.store.write().unwrap().delete(UID, Instant::now());
        r.store
            .write()
            .unwrap()
            .expire(Instant::now() + pods::DELETED_GRACE);
        let after = r.resolve(&id);
        assert_eq!(after.pod, None);
        assert_eq!(after.node.as_deref(), Some("node-1"));
    }

    #[test]
    fn a_pod_unknown_to_the_store_keeps_its_cgroup_identity() {
        let r = Resolver::new(Arc::default(), None);
        let id = from_cgroup(&format!(
            "/kubepods.slice/kubepods-pod{}.slice/crio-{ID}.scope",
            UID.replace('-', "_")
        ));
        let got = r.resolve(&id);
        assert!(Arc::ptr_eq(&got, &id), "nothing to add: {got:?}");
        // A static pod by its hash: pod named, container unknown to the cgroup.
        let r = Resolver::new(store(), None);
        let got = r.resolve(&from_cgroup(
            "/kubepods/burstable/pod3c8f5ec1a1b12dd3e4f8c0e1aa64c0dc",
        ));
        assert_eq!(got.pod.as_deref(), Some("kube-apiserver-node-1"));
        assert_eq!(got.container, None);
    }

    /// Log records of one target, whatever else logs meanwhile.
    struct Capture(Mutex<Vec<String>>);

    impl log::Log for Capture {
        fn enabled(&self, m: &log::Metadata) -> bool {
            m.target() == "mcptap_quiet_tracing"
        }
        fn log(&self, r: &log::Record) {
            if self.enabled(r.metadata()) {
                self.0.lock().unwrap().push(r.args().to_string());
            }
        }
        fn flush(&self) {}
    }

    #[test]
    fn tracing_events_stay_out_of_the_log() {
        let capture: &'static Capture = Box::leak(Box::new(Capture(Mutex::default())));
        log::set_logger(capture).expect("no other test sets a logger");
        log::set_max_level(log::LevelFilter::Trace);
        // As kube's would before a subscriber is set: through `tracing`'s log feature.
        tracing::warn!(target: "mcptap_quiet_tracing", "before");
        quiet_tracing();
        tracing::warn!(target: "mcptap_quiet_tracing", "after");
        assert_eq!(*capture.0.lock().unwrap(), ["before"]);
    }

    #[test]
    fn signals_get_names_in_records_and_event_details() {
        let r = Resolver::new(store(), Some("node-1".into()));
        let id = from_cgroup(&format!("/kubepods/besteffort/pod{UID}/{ID}"));
        let mut x = Exchange {
            server: Endpoint {
                pid: Some(2),
                k8s: Some(id.clone()),
                ..Default::default()
            },
            ..Default::default()
        };
        x.client.pid = Some(1);
        let mut s = Signal::Exchange(x);
        r.enrich(&mut s);
        let Signal::Exchange(x) = &s else {
            unreachable!()
        };
        assert_eq!(x.client.k8s, None, "a host process stays a host process");
        let line: serde_json::Value =
            serde_json::from_str(&crate::output::jsonl::encode(&s)).unwrap();
        let srv = &line["server"];
        assert_eq!(srv["k8s_pod"], "mcp-weather-7d9f8b6c5-x2kqp");
        assert_eq!(srv["k8s_namespace"], "agents");
        assert_eq!(srv["k8s_container"], "server");
        assert_eq!(srv["k8s_pod_uid"], UID);
        assert_eq!(srv["container_id"], ID);
        assert_eq!(srv["k8s_node"], "node-1");
        assert!(line["client"].get("k8s_pod").is_none());

        // Events carry endpoints as JSON (session_start, handshake): named the same way.
        let ep = Endpoint {
            pid: Some(2),
            k8s: Some(id),
            ..Default::default()
        };
        let mut e = Signal::Event(Event::new(
            0,
            crate::signal::What::SessionStart {
                transport: crate::signal::Transport::Stdio,
                client: Endpoint::default(),
                server: ep,
            },
        ));
        r.enrich(&mut e);
        let Signal::Event(e) = &e else { unreachable!() };
        assert_eq!(
            e.detail()["server"]["k8s_pod"],
            "mcp-weather-7d9f8b6c5-x2kqp"
        );
        assert_eq!(e.detail()["server"]["pid"], 2);
    }
}

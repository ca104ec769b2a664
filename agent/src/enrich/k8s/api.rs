//! The pod watcher, on the `kube` crate: the in-cluster service-account configuration made
//! into a [`kube::Config`], and kube's [`watcher()`] on this node's pods (field selector
//! `spec.nodeName=<node>`). kube lists them in pages, watches from the list's resource
//! version and from bookmarks, and lists again on 410 Gone; TLS is rustls with ring,
//! trusting only the cluster's CA; the bearer token is kube's token file, re-read at least
//! once a minute since the kubelet rotates it.
//!
//! Failures never reach capture: each is counted under a reason ([`reason`]), the first of an
//! outage is logged, and the watcher is retried after kube's backoff; the store keeps what it
//! knew.

use std::error::Error as StdError;
use std::fmt::Display;
use std::path::{Path, PathBuf};
use std::pin::pin;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::Pod as ApiPod;
use kube::Api;
use kube::runtime::WatchStreamExt as _;
use kube::runtime::utils::Backoff;
use kube::runtime::watcher::{self, DefaultBackoff, Event, watcher};
use log::{debug, info, warn};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject as _;

use super::pods::Store;

/// Where the service-account files are mounted in every pod.
pub const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// The server ends each watch after this long; kube then watches again from where it was.
const WATCH_SECONDS: u32 = 290;
/// Connecting, with the TLS handshake.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// A connection silent for longer than this (no response, no list bytes, no watch event or
/// bookmark, no end of a watch) is presumed dead.
const READ_TIMEOUT: Duration = Duration::from_secs(WATCH_SECONDS as u64 + 40);
/// After the API server refused a watch request itself with 410 Gone, list again after this.
const RELIST_PAUSE: Duration = Duration::from_secs(1);

/// How to reach the API server.
#[derive(Clone, Debug)]
pub struct Config {
    /// Host (IP or name).
    pub host: String,
    /// Port.
    pub port: u16,
    /// The bearer token's file, which the kubelet rotates.
    pub token_file: PathBuf,
    /// The cluster CA bundle's file.
    pub ca_file: PathBuf,
    /// The node whose pods are watched (`spec.nodeName`).
    pub node: String,
}

impl Config {
    /// The in-cluster configuration: `KUBERNETES_SERVICE_HOST`/`_PORT` and the
    /// service-account files in `dir`. `None` when this is not a pod (no host, or no token).
    pub fn in_cluster(
        env: impl Fn(&str) -> Option<String>,
        dir: &Path,
        node: &str,
    ) -> Option<Config> {
        let host = env("KUBERNETES_SERVICE_HOST")?;
        let port = env("KUBERNETES_SERVICE_PORT")
            .and_then(|p| p.parse().ok())
            .unwrap_or(443);
        let token_file = dir.join("token");
        if !token_file.exists() {
            return None;
        }
        Some(Config {
            host,
            port,
            token_file,
            ca_file: dir.join("ca.crt"),
            node: node.to_string(),
        })
    }

    /// `https://host:port`, IPv6 hosts in brackets.
    pub fn url(&self) -> String {
        if self.host.contains(':') {
            format!("https://[{}]:{}", self.host, self.port)
        } else {
            format!("https://{}:{}", self.host, self.port)
        }
    }

    /// kube's client configuration: this server, trusting only the CA bundle (which kube
    /// re-reads about once a minute, for CA rotation), the token file as credentials. Built
    /// here rather than by `kube::Config::infer`, which would also read a kubeconfig.
    pub fn kube(&self) -> Result<kube::Config, String> {
        let url: hyper::Uri = self
            .url()
            .parse()
            .map_err(|e| format!("KUBERNETES_SERVICE_HOST {:?}: {e}", self.host))?;
        let ca = self.ca_file.display();
        let roots: Vec<Vec<u8>> = CertificateDer::pem_file_iter(&self.ca_file)
            .and_then(|certs| certs.map(|c| c.map(|c| c.to_vec())).collect())
            .map_err(|e| format!("{ca}: {e}"))?;
        if roots.is_empty() {
            return Err(format!("{ca}: no CA certificate"));
        }
        let mut c = kube::Config::new(url);
        c.root_cert = Some(roots);
        c.root_cert_file = Some(self.ca_file.clone());
        c.auth_info.token_file = Some(self.token_file.to_string_lossy().into_owned());
        c.connect_timeout = Some(CONNECT_TIMEOUT);
        c.read_timeout = Some(READ_TIMEOUT);
        // Count silence from the request, not from when a pooled connection went idle.
        c.reset_reader_on_write = true;
        // kube would retry 429, 503 and 504 itself, unseen; the watcher's backoff retries
        // instead, so that every failure is counted.
        c.default_retry = false;
        Ok(c)
    }

    /// What is watched: this node's pods, in kube's pages of 500, with bookmarks.
    pub fn watcher(&self) -> watcher::Config {
        watcher::Config::default()
            .fields(&format!("spec.nodeName={}", self.node))
            .timeout(WATCH_SECONDS)
    }
}

/// The label a watcher failure is counted under in `mcptap_k8s_api_errors_total`, or `None`
/// for 410 Gone, which only says "list again" (kube does, and so does [`Watcher`] when the
/// watch request itself is refused so).
///
/// | `watcher::Error` | reason |
/// |---|---|
/// | `InitialListFailed`, `WatchStartFailed`, `WatchFailed` | that of the `kube::Error` |
/// | `WatchError` (an `ERROR` event in the watch): 410 | none |
/// | `WatchError`, any other code | `status` |
/// | `NoResourceVersion` (a list or event without one) | `decode` |
///
/// | `kube::Error` | reason |
/// |---|---|
/// | `Api` (a non-2xx answer): 410 | none |
/// | `Api`, any other code | `status` |
/// | `SerdeError`, `FromUtf8`, `LinesCodecMaxLineLengthExceeded` | `decode` |
/// | `Auth` (the token file unreadable, or not a valid header) | `token` |
/// | `RustlsTls` (the CA bundle unusable) | `tls` |
/// | `HyperError`, `Service`, `ReadEvents`: by their causes, the first that matches of: a rustls error; timed out; kube's auth error; a connection refused, reset, aborted or unreachable, or hyper's connect error (DNS too) | `tls`; `timeout`; `token`; `connect` |
/// | the same, none of those causes | `http` |
/// | anything else (`HttpError`, `BuildRequest`, proxy settings) | `http` |
pub fn reason(e: &watcher::Error) -> Option<&'static str> {
    match e {
        watcher::Error::InitialListFailed(e)
        | watcher::Error::WatchStartFailed(e)
        | watcher::Error::WatchFailed(e) => client_reason(e),
        watcher::Error::WatchError(s) => (s.code != 410).then_some("status"),
        watcher::Error::NoResourceVersion => Some("decode"),
    }
}

/// [`reason`] of a kube client error.
pub fn client_reason(e: &kube::Error) -> Option<&'static str> {
    use kube::Error as E;
    Some(match e {
        E::Api(s) if s.code == 410 => return None,
        E::Api(_) => "status",
        E::SerdeError(_) | E::FromUtf8(_) | E::LinesCodecMaxLineLengthExceeded => "decode",
        E::Auth(_) => "token",
        E::RustlsTls(_) => "tls",
        E::HyperError(_) | E::Service(_) | E::ReadEvents(_) => cause_reason(e),
        _ => "http",
    })
}

/// A transport failure, by what caused it (see [`reason`]).
fn cause_reason(e: &(dyn StdError + 'static)) -> &'static str {
    let causes = causes(e);
    let any = |f: &dyn Fn(&(dyn StdError + 'static)) -> bool| causes.iter().any(|c| f(*c));
    let io = |c: &(dyn StdError + 'static)| c.downcast_ref::<std::io::Error>().map(|e| e.kind());
    use std::io::ErrorKind as K;
    if any(&|c| c.is::<rustls::Error>()) {
        "tls"
    } else if any(&|c| {
        io(c) == Some(K::TimedOut)
            || c.downcast_ref::<hyper::Error>()
                .is_some_and(|h| h.is_timeout())
    }) {
        "timeout"
    } else if any(&|c| c.is::<kube::client::AuthError>()) {
        "token"
    } else if any(&|c| {
        matches!(
            io(c),
            Some(
                K::ConnectionRefused
                    | K::ConnectionReset
                    | K::ConnectionAborted
                    | K::NotConnected
                    | K::AddrNotAvailable
                    | K::HostUnreachable
                    | K::NetworkUnreachable
            )
        ) || c
            .downcast_ref::<hyper_util::client::legacy::Error>()
            .is_some_and(|h| h.is_connect())
    }) {
        "connect"
    } else {
        "http"
    }
}

/// `e` and everything under it: its sources, and the errors `io::Error`s wrap (whose
/// `source` skips them).
fn causes<'a>(e: &'a (dyn StdError + 'static)) -> Vec<&'a (dyn StdError + 'static)> {
    let mut out = Vec::new();
    let mut todo = vec![e];
    while let Some(e) = todo.pop() {
        if out.len() > 32 {
            break;
        }
        out.push(e);
        if let Some(inner) = e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            todo.push(inner);
        }
        todo.extend(e.source());
    }
    out
}

/// A watch request refused with 410 Gone: kube would ask again from the same resource
/// version; a fresh watcher lists instead, as the API server asks.
fn watch_refused_gone(e: &watcher::Error) -> bool {
    matches!(e, watcher::Error::WatchStartFailed(kube::Error::Api(s)) if s.code == 410)
}

/// Logs the first failure of an outage and its end; counts every failure.
pub struct Outage<F: Fn(&'static str)> {
    down: bool,
    count: F,
    url: String,
}

impl<F: Fn(&'static str)> Outage<F> {
    /// `count` is called with the reason of every failure.
    pub fn new(url: String, count: F) -> Self {
        Outage {
            down: false,
            count,
            url,
        }
    }

    fn failed(&mut self, reason: &'static str, e: &dyn Display) {
        (self.count)(reason);
        if !self.down {
            self.down = true;
            warn!(
                "Kubernetes API {}: {e}; pod and container names unavailable until it answers (counted in mcptap_k8s_api_errors_total; retrying)",
                self.url
            );
        } else {
            debug!("Kubernetes API {} ({reason}): {e}", self.url);
        }
    }

    fn ok(&mut self, what: impl FnOnce() -> String) {
        if self.down {
            self.down = false;
            info!("Kubernetes API {} reachable again: {}", self.url, what());
        }
    }
}

/// Watches this node's pods into a [`Store`], forever.
pub struct Watcher {
    kube: kube::Config,
    watch: watcher::Config,
    url: String,
    node: String,
}

impl Watcher {
    /// A watcher for `cfg`; fails when the CA bundle is unreadable or the address unusable.
    pub fn new(cfg: &Config) -> Result<Watcher, String> {
        Ok(Watcher {
            kube: cfg.kube()?,
            watch: cfg.watcher(),
            url: cfg.url(),
            node: cfg.node.clone(),
        })
    }

    /// List, then watch, forever, with kube's default backoff after failures (0.8 s doubling
    /// to 30 s, with jitter). Must run in a Tokio runtime.
    pub async fn run<F: Fn(&'static str)>(self, store: Arc<RwLock<Store>>, count: F) {
        self.run_with(store, count, DefaultBackoff::default).await
    }

    async fn run_with<F, B>(self, store: Arc<RwLock<Store>>, count: F, backoff: impl Fn() -> B)
    where
        F: Fn(&'static str),
        B: Backoff,
    {
        let mut outage = Outage::new(self.url.clone(), count);
        // The process's rustls provider, should some other crate bring a second one.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = match kube::Client::try_from(self.kube.clone()) {
            Ok(c) => c,
            Err(e) => {
                (outage.count)(client_reason(&e).unwrap_or("http"));
                warn!("Kubernetes API client: {e}; pod names are not looked up");
                return;
            }
        };
        let pods: Api<ApiPod> = Api::all(client);
        let mut listed = false;
        loop {
            // Without `Init`, which comes before each list is asked for: the backoff resets
            // on every item, and with it a list failing again and again would be retried at
            // the shortest delay forever. The store does not need it (see `Store::apply`).
            let events = watcher(pods.clone(), self.watch.clone())
                .filter(|e| std::future::ready(!matches!(e, Ok(Event::Init))))
                .backoff(backoff());
            let mut events = pin!(events);
            while let Some(item) = events.next().await {
                match item {
                    Ok(e) => self.applied(&store, e, &mut outage, &mut listed),
                    Err(e) if watch_refused_gone(&e) => break,
                    Err(e) => {
                        store
                            .write()
                            .unwrap_or_else(|p| p.into_inner())
                            .list_failed();
                        match reason(&e) {
                            Some(r) => outage.failed(r, &e),
                            None => debug!("Kubernetes API {}: {e}; listing again", self.url),
                        }
                    }
                }
            }
            debug!(
                "Kubernetes API {}: watch refused with 410 Gone; listing again",
                self.url
            );
            tokio::time::sleep(RELIST_PAUSE).await;
        }
    }

    /// One event into the store; the end of an outage, and the first list, logged.
    fn applied<F: Fn(&'static str)>(
        &self,
        store: &RwLock<Store>,
        e: Event<ApiPod>,
        outage: &mut Outage<F>,
        listed: &mut bool,
    ) {
        // A list's pages show the server answering, but only its end says how many pods.
        let page = matches!(e, Event::InitApply(_));
        let n = store
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .apply(e, Instant::now());
        let node = &self.node;
        match n {
            Some(n) => {
                outage.ok(|| format!("{n} pods on node {node}"));
                if !*listed {
                    *listed = true;
                    info!(
                        "Kubernetes: {n} pods on node {node} from {}; watching",
                        self.url
                    );
                }
            }
            None if !page => outage.ok(|| "watching".into()),
            None => {}
        }
    }
}

#[cfg(test)]
mod tests;

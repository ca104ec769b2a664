//! A small client of the Kubernetes API server: the in-cluster service-account configuration,
//! HTTPS (rustls with the cluster's CA), and the one call mcptap makes — list the pods of this
//! node, then watch them from the list's resource version, listing again on 410 Gone.
//!
//! Failures never reach capture: they are counted, logged once per outage, and retried with
//! a backoff; the store keeps what it knew.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use log::{info, warn};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::pods::{self, Next, Store};

/// Where the service-account files are mounted in every pod.
pub const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// Longest list response accepted (a node's pods come to a few MB).
const MAX_LIST_BYTES: usize = 64 << 20;
/// Longest watch event accepted.
const MAX_EVENT_BYTES: usize = 16 << 20;
/// Pods per list page.
const PAGE: u32 = 500;
/// The server ends each watch after this long; the client then watches again.
const WATCH_SECONDS: u64 = 290;
/// A watch silent for longer than this (no event, no bookmark, no end) is presumed dead.
const WATCH_IDLE: Duration = Duration::from_secs(WATCH_SECONDS + 40);
/// Connecting, the TLS handshake, and a response's head.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// A whole list response.
const LIST_TIMEOUT: Duration = Duration::from_secs(60);

/// How to reach the API server.
#[derive(Clone, Debug)]
pub struct Config {
    /// Host (IP or name) and port.
    pub host: String,
    /// Port.
    pub port: u16,
    /// The bearer token's file: read for every request, since the kubelet rotates it.
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

    /// `host:port`, IPv6 hosts in brackets: the `Host` header.
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// `https://host:port`.
    pub fn url(&self) -> String {
        format!("https://{}", self.authority())
    }
}

/// Percent-encode a query value (RFC 3986 unreserved characters pass).
fn encode(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for b in v.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Why a request failed, with the label it is counted under.
#[derive(Debug)]
pub struct Failure {
    /// `connect`, `tls`, `http`, `status`, `decode` or `timeout`.
    pub reason: &'static str,
    /// What happened.
    pub message: String,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

fn fail(reason: &'static str, message: impl Into<String>) -> Failure {
    Failure {
        reason,
        message: message.into(),
    }
}

/// An HTTPS client of one API server.
pub struct Client {
    cfg: Config,
    tls: TlsConnector,
    server_name: ServerName<'static>,
}

impl Client {
    /// Trust the CA bundle of `cfg` (and nothing else).
    pub fn new(cfg: Config) -> Result<Client, String> {
        let mut roots = rustls::RootCertStore::empty();
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cfg.ca_file)
            .and_then(|it| it.collect::<Result<_, _>>())
            .map_err(|e| format!("{}: {e}", cfg.ca_file.display()))?;
        let (added, _ignored) = roots.add_parsable_certificates(certs);
        if added == 0 {
            return Err(format!(
                "{}: no usable CA certificate",
                cfg.ca_file.display()
            ));
        }
        // ring, named explicitly: no process-wide default provider to agree on.
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let server_name = ServerName::try_from(cfg.host.clone())
            .map_err(|e| format!("KUBERNETES_SERVICE_HOST {:?}: {e}", cfg.host))?;
        Ok(Client {
            cfg,
            tls: TlsConnector::from(Arc::new(tls)),
            server_name,
        })
    }

    /// `GET path` with the service account's token; the response's status and body.
    async fn get(&self, path: &str) -> Result<(hyper::StatusCode, Incoming), Failure> {
        let token = std::fs::read_to_string(&self.cfg.token_file)
            .map_err(|e| fail("token", format!("{}: {e}", self.cfg.token_file.display())))?;
        let head = async {
            let tcp = TcpStream::connect((self.cfg.host.as_str(), self.cfg.port))
                .await
                .map_err(|e| fail("connect", format!("connecting to {}: {e}", self.cfg.url())))?;
            let _ = tcp.set_nodelay(true);
            let tls = self
                .tls
                .connect(self.server_name.clone(), tcp)
                .await
                .map_err(|e| fail("tls", format!("TLS with {}: {e}", self.cfg.url())))?;
            let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
                .await
                .map_err(|e| fail("http", e.to_string()))?;
            // The connection runs beside the request; it ends when both are dropped.
            tokio::spawn(async move {
                let _ = conn.await;
            });
            let req = hyper::Request::get(path)
                .header(hyper::header::HOST, self.cfg.authority())
                .header(
                    hyper::header::AUTHORIZATION,
                    format!("Bearer {}", token.trim()),
                )
                .header(hyper::header::ACCEPT, "application/json")
                .header(
                    hyper::header::USER_AGENT,
                    concat!("mcptap/", env!("CARGO_PKG_VERSION")),
                )
                .body(Empty::<Bytes>::new())
                .map_err(|e| fail("http", e.to_string()))?;
            send.send_request(req)
                .await
                .map_err(|e| fail("http", format!("GET {path}: {e}")))
        };
        let resp = tokio::time::timeout(CONNECT_TIMEOUT, head)
            .await
            .map_err(|_| {
                fail(
                    "timeout",
                    format!("no answer from {} in {CONNECT_TIMEOUT:?}", self.cfg.url()),
                )
            })??;
        Ok((resp.status(), resp.into_body()))
    }

    fn pods_path(&self, query: &str) -> String {
        format!(
            "/api/v1/pods?fieldSelector={}&{query}",
            encode(&format!("spec.nodeName={}", self.cfg.node))
        )
    }

    /// List this node's pods, every page, into `store`.
    pub async fn list(&self, store: &RwLock<Store>) -> Result<usize, Failure> {
        let mut pods = Vec::new();
        let mut cont: Option<String> = None;
        let resource_version = loop {
            let mut q = format!("limit={PAGE}");
            if let Some(c) = &cont {
                q.push_str(&format!("&continue={}", encode(c)));
            }
            let body = self.get_all(&self.pods_path(&q)).await?;
            let page = pods::parse_list(&body).map_err(|e| fail("decode", e))?;
            pods.extend(page.pods);
            match page.cont {
                Some(c) => cont = Some(c),
                None => break page.resource_version,
            }
        };
        let n = pods.len();
        store.write().unwrap_or_else(|p| p.into_inner()).replace(
            pods,
            resource_version,
            Instant::now(),
        );
        Ok(n)
    }

    async fn get_all(&self, path: &str) -> Result<Vec<u8>, Failure> {
        let read = async {
            let (status, mut body) = self.get(path).await?;
            let mut buf = Vec::new();
            while let Some(frame) = body.frame().await {
                let frame = frame.map_err(|e| fail("http", e.to_string()))?;
                if let Some(d) = frame.data_ref() {
                    if buf.len() + d.len() > MAX_LIST_BYTES {
                        return Err(fail("decode", format!("list over {MAX_LIST_BYTES} bytes")));
                    }
                    buf.extend_from_slice(d);
                }
            }
            if !status.is_success() {
                return Err(status_failure(status, &buf));
            }
            Ok(buf)
        };
        tokio::time::timeout(LIST_TIMEOUT, read)
            .await
            .map_err(|_| {
                fail(
                    "timeout",
                    format!("listing pods took over {LIST_TIMEOUT:?}"),
                )
            })?
    }

    /// Watch from the store's resource version until the server ends the watch (`Ok(Next::
    /// Continue)`), says the version is too old (`Ok(Next::Relist)`), or something fails.
    /// Returns how many events were applied too.
    pub async fn watch(&self, store: &RwLock<Store>) -> Result<(Next, u64), Failure> {
        let rv = store
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .resource_version
            .clone();
        let path = self.pods_path(&format!(
            "watch=true&allowWatchBookmarks=true&timeoutSeconds={WATCH_SECONDS}&resourceVersion={}",
            encode(&rv)
        ));
        let (status, mut body) = self.get(&path).await?;
        if status == hyper::StatusCode::GONE {
            return Ok((Next::Relist, 0));
        }
        if !status.is_success() {
            let mut buf = Vec::new();
            while let Ok(Some(Ok(f))) = tokio::time::timeout(CONNECT_TIMEOUT, body.frame()).await {
                if let Some(d) = f.data_ref() {
                    buf.extend_from_slice(d);
                }
                if buf.len() > 4096 {
                    break;
                }
            }
            return Err(status_failure(status, &buf));
        }
        let mut line = Vec::new();
        let mut events = 0u64;
        loop {
            let frame = match tokio::time::timeout(WATCH_IDLE, body.frame()).await {
                Err(_) => return Err(fail("timeout", format!("watch silent for {WATCH_IDLE:?}"))),
                Ok(None) => return Ok((Next::Continue, events)),
                Ok(Some(Err(e))) => return Err(fail("http", format!("watch stream: {e}"))),
                Ok(Some(Ok(f))) => f,
            };
            let Some(data) = frame.data_ref() else {
                continue;
            };
            // One JSON event per line; a frame may hold several, or part of one.
            let mut rest = &data[..];
            while let Some(nl) = memchr::memchr(b'\n', rest) {
                line.extend_from_slice(&rest[..nl]);
                rest = &rest[nl + 1..];
                if line.iter().all(u8::is_ascii_whitespace) {
                    line.clear();
                    continue;
                }
                let next = store
                    .write()
                    .unwrap_or_else(|p| p.into_inner())
                    .apply_event(&line, Instant::now());
                line.clear();
                events += 1;
                match next {
                    Next::Continue => {}
                    Next::Relist => return Ok((Next::Relist, events)),
                    Next::Failed(e) => return Err(fail("decode", e)),
                }
            }
            line.extend_from_slice(rest);
            if line.len() > MAX_EVENT_BYTES {
                return Err(fail(
                    "decode",
                    format!("watch event over {MAX_EVENT_BYTES} bytes"),
                ));
            }
        }
    }
}

/// A non-2xx answer: its code and the `Status` message, with a hint for the usual causes.
fn status_failure(status: hyper::StatusCode, body: &[u8]) -> Failure {
    let message = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["message"].as_str().map(str::to_string))
        .unwrap_or_else(|| String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned());
    let hint = match status.as_u16() {
        401 => " (is the service-account token mounted and valid?)",
        403 => " (the service account needs get, list and watch on pods)",
        _ => "",
    };
    fail(
        "status",
        format!("API server answered {status}: {message}{hint}"),
    )
}

/// Reconnect delays: 1 s doubling to 60 s, back to 1 s after a success.
#[derive(Debug)]
pub struct Backoff {
    first: Duration,
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::starting(Duration::from_secs(1))
    }
}

impl Backoff {
    /// Delays starting at `first` (tests use short ones).
    pub fn starting(first: Duration) -> Self {
        Backoff { first, next: first }
    }

    /// The delay before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(Duration::from_secs(60));
        d
    }

    /// A success: start again from the shortest delay.
    pub fn reset(&mut self) {
        self.next = self.first;
    }
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

    fn failed(&mut self, f: &Failure) {
        (self.count)(f.reason);
        if !self.down {
            self.down = true;
            warn!(
                "Kubernetes API {}: {f}; pod and container names unavailable until it answers (counted in mcptap_k8s_api_errors_total; retrying)",
                self.url
            );
        }
    }

    fn ok(&mut self, what: impl FnOnce() -> String) {
        if self.down {
            self.down = false;
            info!("Kubernetes API {} reachable again: {}", self.url, what());
        }
    }
}

/// List, then watch, forever: re-list on 410 Gone, back off on failures.
pub async fn run<F: Fn(&'static str)>(client: Client, store: Arc<RwLock<Store>>, count: F) {
    run_with(client, store, count, Backoff::default()).await
}

async fn run_with<F: Fn(&'static str)>(
    client: Client,
    store: Arc<RwLock<Store>>,
    count: F,
    mut backoff: Backoff,
) {
    let mut outage = Outage::new(client.cfg.url(), count);
    let mut first = true;
    loop {
        match client.list(&store).await {
            Ok(n) => {
                let node = client.cfg.node.clone();
                outage.ok(|| format!("{n} pods on node {node}"));
                if first {
                    info!(
                        "Kubernetes: {n} pods on node {node} from {}; watching",
                        client.cfg.url()
                    );
                    first = false;
                }
                backoff.reset();
            }
            Err(f) => {
                outage.failed(&f);
                tokio::time::sleep(backoff.next_delay()).await;
                continue;
            }
        }
        loop {
            let started = Instant::now();
            match client.watch(&store).await {
                Ok((Next::Relist, _)) => break,
                Ok((_, events)) => {
                    outage.ok(|| "watching".into());
                    backoff.reset();
                    // A server that ends watches at once must not make this spin.
                    if events == 0 && started.elapsed() < Duration::from_secs(1) {
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
                Err(f) => {
                    outage.failed(&f);
                    tokio::time::sleep(backoff.next_delay()).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;

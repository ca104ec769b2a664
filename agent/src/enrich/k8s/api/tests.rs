//! The watcher against a stand-in API server: no cluster runs here. An HTTPS server on
//! 127.0.0.1 (hyper, rustls, a certificate signed by the test CA in `testdata/`) answers each
//! request kube sends with the next scripted reply, built from the fixture files: a pod list
//! in two pages, watch streams with ADDED, MODIFIED, DELETED, BOOKMARK and an ERROR 410, a
//! re-list, and failures. The fixtures follow the API server's JSON shapes but were written
//! by hand, not recorded. Every wait is for what is asserted, with a deadline.

use std::convert::Infallible;
use std::sync::Mutex;

use bytes::Bytes;
use futures::StreamExt as _;
use futures::stream::{self, BoxStream};
use http_body_util::{BodyExt as _, StreamBody, combinators::UnsyncBoxBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use rustls::pki_types::PrivateKeyDer;
use rustls::pki_types::pem::PemObject as _;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use super::*;

fn testdata(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("src/enrich/k8s/testdata")
        .join(name)
}

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(testdata(name)).unwrap()
}

/// What the stand-in server answers to one request.
enum Reply {
    /// A complete response with this status and body.
    Body(u16, Vec<u8>),
    /// 200 with a chunked body: these lines, each split across two chunks (as a real stream
    /// may cut them), then the end of the stream.
    Stream(Vec<u8>),
    /// 200, chunked, and then nothing: a watch with no news, ended after the request's
    /// `timeoutSeconds` as the API server does.
    Hold,
}

/// One request, as the stand-in saw it.
#[derive(Clone, Debug)]
struct Seen {
    /// The request target as sent.
    target: String,
    path: String,
    /// The query, decoded.
    query: Vec<(String, String)>,
    authorization: String,
    host: String,
}

impl Seen {
    fn q(&self, key: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    fn is_watch(&self) -> bool {
        self.q("watch") == Some("true")
    }
}

/// `application/x-www-form-urlencoded` decoding, as kube encodes its queries.
fn form_decode(s: &str) -> String {
    let mut out = Vec::new();
    let mut b = s.bytes();
    while let Some(c) = b.next() {
        match c {
            b'+' => out.push(b' '),
            b'%' => {
                let hex: String = b.by_ref().take(2).map(char::from).collect();
                out.push(u8::from_str_radix(&hex, 16).unwrap());
            }
            c => out.push(c),
        }
    }
    String::from_utf8(out).unwrap()
}

fn seen(req: &hyper::Request<Incoming>) -> Seen {
    let header = |h: hyper::header::HeaderName| {
        req.headers()
            .get(h)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    let query = req
        .uri()
        .query()
        .unwrap_or_default()
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (form_decode(k), form_decode(v)))
        .collect();
    Seen {
        target: req.uri().to_string(),
        path: req.uri().path().to_string(),
        query,
        authorization: header(hyper::header::AUTHORIZATION),
        host: header(hyper::header::HOST),
    }
}

type Body = UnsyncBoxBody<Bytes, Infallible>;

fn chunks(frames: Vec<Bytes>) -> Body {
    let frames = frames.into_iter().map(|b| Ok(Frame::data(b)));
    StreamBody::new(stream::iter(frames)).boxed_unsync()
}

/// The response to `req`: the script's next reply. Past its end a watch is held, and a list
/// refused, so that an unexpected request shows.
fn respond(reply: Option<Reply>, req: &Seen) -> hyper::Response<Body> {
    let reply = reply.unwrap_or_else(|| match req.is_watch() {
        true => Reply::Hold,
        false => Reply::Body(500, b"script exhausted".to_vec()),
    });
    let (code, body) = match reply {
        Reply::Body(code, body) => (code, chunks(vec![body.into()])),
        Reply::Stream(lines) => {
            let parts = lines
                .split_inclusive(|b| *b == b'\n')
                .flat_map(|l| {
                    let (a, b) = l.split_at(l.len() / 2);
                    [Bytes::copy_from_slice(a), Bytes::copy_from_slice(b)]
                })
                .collect();
            (200, chunks(parts))
        }
        Reply::Hold => {
            let secs = req.q("timeoutSeconds").and_then(|s| s.parse().ok());
            let held: BoxStream<'static, Result<Frame<Bytes>, Infallible>> = stream::once(
                tokio::time::sleep(Duration::from_secs(secs.unwrap_or(3600))),
            )
            .filter_map(|()| std::future::ready(None))
            .boxed();
            (200, StreamBody::new(held).boxed_unsync())
        }
    };
    hyper::Response::builder()
        .status(code)
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(body)
        .unwrap()
}

/// The stand-in's address and what it saw.
struct Server {
    port: u16,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Server {
    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

fn tls_acceptor() -> TlsAcceptor {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(testdata("server.crt"))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(testdata("server.key")).unwrap();
    let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    TlsAcceptor::from(Arc::new(cfg))
}

/// HTTP/1.1 over TLS with keep-alive, as the API server answers kube.
async fn serve(replies: Vec<Reply>) -> Server {
    let acceptor = tls_acceptor();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let replies = Arc::new(Mutex::new(replies.into_iter()));
    let server = Server {
        port,
        seen: seen.clone(),
    };
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, seen, replies) = (acceptor.clone(), seen.clone(), replies.clone());
            tokio::spawn(async move {
                // A client that rejects our certificate ends here.
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = hyper::service::service_fn(move |req| {
                    let req = seen_and_recorded(&req, &seen);
                    let reply = replies.lock().unwrap().next();
                    std::future::ready(Ok::<_, Infallible>(respond(reply, &req)))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    server
}

fn seen_and_recorded(req: &hyper::Request<Incoming>, all: &Mutex<Vec<Seen>>) -> Seen {
    let s = seen(req);
    all.lock().unwrap().push(s.clone());
    s
}

/// A service-account directory with `token` and `ca`, and a config for the server on `port`.
fn config(name: &str, port: u16, ca: &str) -> Config {
    let dir = std::env::temp_dir().join(format!("mcptap-k8s-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // As the kubelet writes it: no newline.
    std::fs::write(dir.join("token"), "test-token").unwrap();
    std::fs::copy(testdata(ca), dir.join("ca.crt")).unwrap();
    let env = |k: &str| match k {
        "KUBERNETES_SERVICE_HOST" => Some("127.0.0.1".to_string()),
        "KUBERNETES_SERVICE_PORT" => Some(port.to_string()),
        _ => None,
    };
    Config::in_cluster(env, &dir, "node-1").expect("in-cluster config")
}

/// Retries after 10 ms, and notes each delay it gives and each reset.
#[derive(Clone, Default)]
struct Quick(Arc<Mutex<Vec<&'static str>>>);

impl Iterator for Quick {
    type Item = Duration;
    fn next(&mut self) -> Option<Duration> {
        self.0.lock().unwrap().push("delay");
        Some(Duration::from_millis(10))
    }
}

impl Backoff for Quick {
    fn reset(&mut self) {
        self.0.lock().unwrap().push("reset");
    }
}

/// What a running watcher did: its store, the reasons counted, its backoff's log.
struct Running {
    store: Arc<RwLock<Store>>,
    reasons: Arc<Mutex<Vec<&'static str>>>,
    backoff: Quick,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    fn reasons(&self) -> Vec<&'static str> {
        self.reasons.lock().unwrap().clone()
    }

    fn live(&self) -> Vec<String> {
        let s = self.store.read().unwrap();
        let mut v: Vec<String> = s.live().map(|p| p.name.clone()).collect();
        v.sort();
        v
    }
}

fn start(w: Watcher) -> Running {
    let store = Arc::new(RwLock::new(Store::default()));
    let reasons: Arc<Mutex<Vec<&'static str>>> = Arc::default();
    let backoff = Quick::default();
    let (r, b) = (reasons.clone(), backoff.clone());
    let task = tokio::spawn(w.run_with(
        store.clone(),
        move |reason| r.lock().unwrap().push(reason),
        move || b.clone(),
    ));
    Running {
        store,
        reasons,
        backoff,
        task,
    }
}

/// Wait until `cond` holds, for at most `within`.
async fn wait_for(what: &str, within: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + within;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

const RELISTED: [&str; 5] = [
    "kube-apiserver-node-1",
    "late-arrival-6f7d",
    "mcp-git-1",
    "mcp-notes-0",
    "tools-runner-5c4b9",
];

#[tokio::test]
async fn lists_in_pages_watches_from_bookmarks_and_relists_on_410() {
    let server = serve(vec![
        Reply::Body(200, fixture("pods-list-page1.json")),
        Reply::Body(200, fixture("pods-list-page2.json")),
        Reply::Stream(fixture("watch-1.jsonl")),
        Reply::Stream(fixture("watch-2.jsonl")),
        Reply::Body(200, fixture("pods-list-relist.json")),
        Reply::Hold,
    ])
    .await;
    let w = start(Watcher::new(&config("happy", server.port, "ca.crt")).unwrap());
    wait_for("six requests", Duration::from_secs(10), || {
        server.seen().len() >= 6
    })
    .await;
    wait_for("the re-list", Duration::from_secs(10), || {
        w.live() == RELISTED
    })
    .await;
    w.task.abort();

    let seen = server.seen();
    for s in &seen {
        assert_eq!(s.path, "/api/v1/pods", "all namespaces: {s:?}");
        assert_eq!(s.q("fieldSelector"), Some("spec.nodeName=node-1"), "{s:?}");
        assert!(
            s.target.contains("fieldSelector=spec.nodeName%3Dnode-1"),
            "{s:?}"
        );
        assert_eq!(s.authorization, "Bearer test-token");
        assert_eq!(s.host, format!("127.0.0.1:{}", server.port));
    }
    let list = |s: &Seen, cont: Option<&str>| {
        assert!(!s.is_watch() && s.q("limit") == Some("500"), "{s:?}");
        assert_eq!(s.q("continue"), cont, "{s:?}");
    };
    let watch = |s: &Seen, rv: &str| {
        assert!(s.is_watch(), "{s:?}");
        assert_eq!(s.q("allowWatchBookmarks"), Some("true"), "{s:?}");
        assert_eq!(s.q("timeoutSeconds"), Some("290"), "{s:?}");
        assert_eq!(s.q("resourceVersion"), Some(rv), "{s:?}");
    };
    list(&seen[0], None);
    let page1: serde_json::Value =
        serde_json::from_slice(&fixture("pods-list-page1.json")).unwrap();
    list(&seen[1], page1["metadata"]["continue"].as_str());
    // From the list's version; then from the bookmark that ended the first stream.
    watch(&seen[2], "1000");
    watch(&seen[3], "1010");
    // ERROR 410 in the stream: list again, then watch from the new list.
    list(&seen[4], None);
    watch(&seen[5], "2000");
    assert_eq!(w.reasons(), [] as [&str; 0], "410 is not a failure");
}

#[tokio::test]
async fn failures_are_counted_by_reason_and_backed_off() {
    let forbidden = br#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"pods is forbidden: User \"system:serviceaccount:mcptap:mcptap\" cannot list resource \"pods\" in API group \"\" at the cluster scope","reason":"Forbidden","details":{"kind":"pods"},"code":403}"#;
    let internal = br#"{"type":"ERROR","object":{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"etcd is sad","reason":"InternalError","code":500}}"#;
    let server = serve(vec![
        Reply::Body(403, forbidden.to_vec()),
        Reply::Body(500, b"etcdserver: request timed out".to_vec()),
        // A list that is not a PodList.
        Reply::Body(200, b"{\"kind\":\"Status\"}".to_vec()),
        Reply::Body(200, fixture("pods-list-page2.json")),
        // An unreadable line and an ERROR other than 410; the watch goes on.
        Reply::Stream([&b"not json\n"[..], internal, b"\n"].concat()),
        // 410 to the watch request itself: list again, not counted.
        Reply::Body(
            410,
            br#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"too old resource version: 1000 (1500)","reason":"Expired","code":410}"#.to_vec(),
        ),
        Reply::Body(200, fixture("pods-list-relist.json")),
        Reply::Hold,
    ])
    .await;
    let w = start(Watcher::new(&config("failures", server.port, "ca.crt")).unwrap());
    wait_for("the re-list", Duration::from_secs(10), || {
        w.live() == RELISTED
    })
    .await;
    wait_for("the watch after it", Duration::from_secs(10), || {
        server.seen().len() >= 8
    })
    .await;
    w.task.abort();
    assert_eq!(
        w.reasons(),
        ["status", "status", "decode", "decode", "status"]
    );
    // Three failed lists in a row back off three times: nothing between them resets it.
    let log = w.backoff.0.lock().unwrap().clone();
    assert_eq!(log[..4], ["delay", "delay", "delay", "reset"], "{log:?}");
    let seen = server.seen();
    assert!(seen[..4].iter().all(|s| !s.is_watch()), "{seen:?}");
    assert!(seen[4].is_watch() && seen[5].is_watch(), "{seen:?}");
    assert_eq!(seen[5].q("resourceVersion"), Some("1000"));
    assert!(
        !seen[6].is_watch() && seen[6].q("continue").is_none(),
        "{seen:?}"
    );
    assert_eq!(seen[7].q("resourceVersion"), Some("2000"), "{seen:?}");
}

#[tokio::test]
async fn tls_connect_timeout_and_token_failures_have_their_reasons() {
    // A server whose certificate the cluster CA did not sign.
    let server = serve(vec![Reply::Body(200, fixture("pods-list-page2.json"))]).await;
    let tls = start(Watcher::new(&config("wrong-ca", server.port, "other-ca.crt")).unwrap());
    // A port bound and not listening (kept so, so that no other test's server takes it).
    let closed = tokio::net::TcpSocket::new_v4().unwrap();
    closed.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let closed_port = closed.local_addr().unwrap().port();
    let connect = start(Watcher::new(&config("closed", closed_port, "ca.crt")).unwrap());
    // Connections accepted, and never answered: the handshake times out.
    let mute = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut w = Watcher::new(&config("mute", mute.local_addr().unwrap().port(), "ca.crt")).unwrap();
    w.kube.connect_timeout = Some(Duration::from_millis(200));
    let timeout = start(w);
    // A token that cannot be a header.
    let cfg = config("bad-token", server.port, "ca.crt");
    std::fs::write(&cfg.token_file, "test-token\n").unwrap();
    let token = start(Watcher::new(&cfg).unwrap());

    for (w, reason) in [
        (&tls, "tls"),
        (&connect, "connect"),
        (&timeout, "timeout"),
        (&token, "token"),
    ] {
        wait_for(reason, Duration::from_secs(10), || w.reasons().len() >= 2).await;
        w.task.abort();
        assert!(
            w.reasons().iter().all(|r| *r == reason),
            "{reason}: {:?}",
            w.reasons()
        );
        assert!(w.live().is_empty());
    }
    assert!(
        server.seen().is_empty(),
        "no request got through: {:?}",
        server.seen()
    );
    drop((closed, mute));
}

/// kube re-reads the token file once it is 50 s old, so this takes about that long.
#[tokio::test]
async fn a_rotated_token_is_used_within_a_minute() {
    let server = serve(vec![Reply::Body(200, fixture("pods-list-page2.json"))]).await;
    let cfg = config("rotation", server.port, "ca.crt");
    let mut w = Watcher::new(&cfg).unwrap();
    // Watches of a second each (held, then ended by the stand-in), so requests keep coming.
    w.watch = w.watch.timeout(1);
    let w = start(w);
    wait_for("a watch", Duration::from_secs(10), || {
        server.seen().iter().any(Seen::is_watch)
    })
    .await;
    // The kubelet rotates the token file.
    std::fs::write(&cfg.token_file, "rotated-token").unwrap();
    wait_for("the rotated token", Duration::from_secs(75), || {
        server
            .seen()
            .last()
            .is_some_and(|s| s.authorization == "Bearer rotated-token")
    })
    .await;
    w.task.abort();
    let auth: Vec<String> = server.seen().into_iter().map(|s| s.authorization).collect();
    let first_new = auth
        .iter()
        .position(|a| a == "Bearer rotated-token")
        .unwrap();
    assert!(auth[..first_new].iter().all(|a| a == "Bearer test-token"));
    assert!(
        auth[first_new..]
            .iter()
            .all(|a| a == "Bearer rotated-token")
    );
    assert_eq!(w.reasons(), [] as [&str; 0]);
    assert_eq!(w.live(), ["mcp-notes-0"]);
}

#[test]
fn in_cluster_needs_the_service_host_and_a_token() {
    let dir = std::env::temp_dir().join(format!("mcptap-k8s-{}-sa", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let _ = std::fs::remove_file(dir.join("token"));
    let host = |k: &str| (k == "KUBERNETES_SERVICE_HOST").then(|| "10.96.0.1".to_string());
    assert!(Config::in_cluster(|_| None, &dir, "n").is_none());
    assert!(Config::in_cluster(host, &dir, "n").is_none(), "no token");
    std::fs::write(dir.join("token"), "t").unwrap();
    let c = Config::in_cluster(host, &dir, "n").unwrap();
    assert_eq!(
        (c.url(), c.node.as_str()),
        ("https://10.96.0.1:443".into(), "n")
    );
    let v6 = |k: &str| match k {
        "KUBERNETES_SERVICE_HOST" => Some("fd00:10:96::1".to_string()),
        "KUBERNETES_SERVICE_PORT" => Some("6443".to_string()),
        _ => None,
    };
    assert_eq!(
        Config::in_cluster(v6, &dir, "n").unwrap().url(),
        "https://[fd00:10:96::1]:6443"
    );
    // No CA bundle: no client.
    assert!(c.kube().unwrap_err().contains("ca.crt"));
    std::fs::write(dir.join("ca.crt"), "not a certificate").unwrap();
    assert!(c.kube().unwrap_err().contains("no CA certificate"));
}

#[test]
fn the_kube_config_is_the_service_account_and_nothing_else() {
    let c = config("kube-config", 6443, "ca.crt");
    let k = c.kube().unwrap();
    assert_eq!(k.cluster_url.to_string(), "https://127.0.0.1:6443/");
    assert_eq!(k.root_cert.as_ref().map(Vec::len), Some(1));
    assert_eq!(k.root_cert_file.as_deref(), Some(c.ca_file.as_path()));
    assert_eq!(
        k.auth_info.token_file.as_deref(),
        c.token_file.to_str(),
        "kube's token file, which it re-reads"
    );
    assert!(k.auth_info.token.is_none() && k.auth_info.exec.is_none());
    assert!(!k.accept_invalid_certs && !k.default_retry && k.proxy_url.is_none());
    let wc = c.watcher();
    assert_eq!(wc.field_selector.as_deref(), Some("spec.nodeName=node-1"));
    assert_eq!(
        (wc.timeout, wc.page_size, wc.bookmarks),
        (Some(290), Some(500), true)
    );
}

#[test]
fn reasons_of_errors_without_a_server() {
    use kube::core::Status;
    let gone = || Box::new(Status::failure("too old", "Expired").with_code(410));
    assert_eq!(reason(&watcher::Error::WatchError(gone())), None);
    let sad = Box::new(Status::failure("etcd is sad", "InternalError").with_code(500));
    assert_eq!(reason(&watcher::Error::WatchError(sad)), Some("status"));
    assert_eq!(reason(&watcher::Error::NoResourceVersion), Some("decode"));
    let refused = watcher::Error::WatchStartFailed(kube::Error::Api(gone()));
    assert!(watch_refused_gone(&refused));
    assert_eq!(reason(&refused), None);
    let listed = watcher::Error::InitialListFailed(kube::Error::Api(gone()));
    assert!(!watch_refused_gone(&listed));
    let bad = serde_json::from_str::<u8>("x").unwrap_err();
    assert_eq!(client_reason(&kube::Error::SerdeError(bad)), Some("decode"));
    let io = std::io::Error::new(std::io::ErrorKind::TimedOut, "slow");
    assert_eq!(client_reason(&kube::Error::ReadEvents(io)), Some("timeout"));
    let io = std::io::Error::other("connection closed before message completed");
    assert_eq!(client_reason(&kube::Error::ReadEvents(io)), Some("http"));
}

//! The API client against a stand-in API server: no cluster runs here. A TLS server on
//! 127.0.0.1 (certificate signed by the test CA in `testdata/`) answers each request with the
//! next scripted reply, built from the fixture files: a pod list in two pages, watch streams
//! with ADDED, MODIFIED, DELETED, BOOKMARK and an ERROR 410, a re-list, and failures. The
//! fixtures follow the API server's JSON shapes but were written by hand, not recorded.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use rustls::pki_types::PrivateKeyDer;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use super::*;

fn testdata(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("src/k8s/testdata")
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
    /// 200, chunked, and then nothing: a watch with no news.
    Hold,
}

/// Requests seen: (request target, Authorization header, Host header).
type Seen = Arc<Mutex<Vec<(String, String, String)>>>;

async fn serve(replies: Vec<Reply>) -> (u16, Seen) {
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
    let acceptor = TlsAcceptor::from(Arc::new(cfg));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen: Seen = Arc::default();
    let replies = Arc::new(Mutex::new(replies.into_iter()));
    let seen2 = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            let seen = seen2.clone();
            let replies = replies.clone();
            tokio::spawn(async move {
                // A client that rejects our certificate ends here.
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tls.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&head).into_owned();
                let target = head.split(' ').nth(1).unwrap_or("").to_string();
                let header = |name: &str| {
                    head.lines()
                        .find_map(|l| {
                            let (k, v) = l.split_once(':')?;
                            k.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
                        })
                        .unwrap_or_default()
                };
                let (auth, host) = (header("authorization"), header("host"));
                seen.lock().unwrap().push((target, auth, host));
                let reply = replies.lock().unwrap().next();
                let chunked = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n";
                match reply {
                    Some(Reply::Body(code, body)) => {
                        let head = format!(
                            "HTTP/1.1 {code} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                            body.len()
                        );
                        let _ = tls.write_all(head.as_bytes()).await;
                        let _ = tls.write_all(&body).await;
                    }
                    Some(Reply::Stream(lines)) => {
                        let _ = tls.write_all(chunked.as_bytes()).await;
                        for line in lines.split_inclusive(|b| *b == b'\n') {
                            let (a, b) = line.split_at(line.len() / 2);
                            for part in [a, b] {
                                let chunk =
                                    [format!("{:x}\r\n", part.len()).as_bytes(), part, b"\r\n"]
                                        .concat();
                                let _ = tls.write_all(&chunk).await;
                                let _ = tls.flush().await;
                            }
                        }
                        let _ = tls.write_all(b"0\r\n\r\n").await;
                    }
                    Some(Reply::Hold) | None => {
                        let _ = tls.write_all(chunked.as_bytes()).await;
                        let _ = tls.flush().await;
                        tokio::time::sleep(Duration::from_secs(3600)).await;
                    }
                }
                let _ = tls.shutdown().await;
            });
        }
    });
    (port, seen)
}

/// A service-account directory with `token`, and a config for the server on `port`.
fn config(name: &str, port: u16, ca: &str) -> Config {
    let dir = std::env::temp_dir().join(format!("mcptap-k8s-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("token"), "test-token\n").unwrap();
    std::fs::copy(testdata(ca), dir.join("ca.crt")).unwrap();
    let env = |k: &str| match k {
        "KUBERNETES_SERVICE_HOST" => Some("127.0.0.1".to_string()),
        "KUBERNETES_SERVICE_PORT" => Some(port.to_string()),
        _ => None,
    };
    Config::in_cluster(env, &dir, "node-1").expect("in-cluster config")
}

async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..1000 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for {what}");
}

fn live_names(store: &RwLock<Store>) -> Vec<String> {
    let s = store.read().unwrap();
    let mut v: Vec<String> = s.live().map(|p| p.name.clone()).collect();
    v.sort();
    v
}

#[tokio::test]
async fn lists_in_pages_watches_from_bookmarks_and_relists_on_410() {
    let (port, seen) = serve(vec![
        Reply::Body(200, fixture("pods-list-page1.json")),
        Reply::Body(200, fixture("pods-list-page2.json")),
        Reply::Stream(fixture("watch-1.jsonl")),
        Reply::Stream(fixture("watch-2.jsonl")),
        Reply::Body(200, fixture("pods-list-relist.json")),
        Reply::Hold,
    ])
    .await;
    let client = Client::new(config("happy", port, "ca.crt")).unwrap();
    let store = Arc::new(RwLock::new(Store::default()));
    let errors = Arc::new(AtomicU64::new(0));
    let e2 = errors.clone();
    let task = tokio::spawn(run_with(
        client,
        store.clone(),
        move |_| {
            e2.fetch_add(1, Ordering::Relaxed);
        },
        Backoff::starting(Duration::from_millis(10)),
    ));
    wait_for("six requests", || seen.lock().unwrap().len() >= 6).await;
    wait_for("the re-list", || {
        store.read().unwrap().resource_version == "2000"
    })
    .await;
    task.abort();

    let seen = seen.lock().unwrap().clone();
    let sel = "fieldSelector=spec.nodeName%3Dnode-1";
    let targets: Vec<&str> = seen.iter().map(|(t, ..)| t.as_str()).collect();
    assert_eq!(targets[0], format!("/api/v1/pods?{sel}&limit=500"));
    assert!(
        targets[1].starts_with(&format!("/api/v1/pods?{sel}&limit=500&continue=eyJ2Ij")),
        "{}",
        targets[1]
    );
    let watch = |rv: &str| {
        format!(
            "/api/v1/pods?{sel}&watch=true&allowWatchBookmarks=true&timeoutSeconds=290&resourceVersion={rv}"
        )
    };
    // From the list's version; then from the bookmark that ended the first stream.
    assert_eq!(targets[2], watch("1000"));
    assert_eq!(targets[3], watch("1010"));
    // ERROR 410 in the stream: list again, then watch from the new list.
    assert_eq!(targets[4], format!("/api/v1/pods?{sel}&limit=500"));
    assert_eq!(targets[5], watch("2000"));
    assert!(
        seen.iter()
            .all(|(_, a, h)| a == "Bearer test-token" && *h == format!("127.0.0.1:{port}")),
        "{seen:?}"
    );
    assert_eq!(
        live_names(&store),
        [
            "kube-apiserver-node-1",
            "late-arrival-6f7d",
            "mcp-git-1",
            "mcp-notes-0",
            "tools-runner-5c4b9"
        ]
    );
    assert_eq!(errors.load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn failures_are_counted_and_retried_and_the_token_is_reread() {
    let forbidden = br#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"pods is forbidden: User \"system:serviceaccount:mcptap:mcptap\" cannot list resource \"pods\" in API group \"\" at the cluster scope","reason":"Forbidden","details":{"kind":"pods"},"code":403}"#;
    let (port, seen) = serve(vec![
        Reply::Body(403, forbidden.to_vec()),
        Reply::Body(500, b"etcdserver: request timed out".to_vec()),
        // A list that is not a PodList.
        Reply::Body(200, b"{\"kind\":\"Status\"}".to_vec()),
        Reply::Body(200, fixture("pods-list-page2.json")),
        // 410 on the watch request itself: list again, no error.
        Reply::Body(
            410,
            br#"{"kind":"Status","code":410,"reason":"Expired"}"#.to_vec(),
        ),
        Reply::Body(200, fixture("pods-list-relist.json")),
        Reply::Hold,
    ])
    .await;
    let cfg = config("failures", port, "ca.crt");
    let token = cfg.token_file.clone();
    let client = Client::new(cfg).unwrap();
    let store = Arc::new(RwLock::new(Store::default()));
    let reasons: Arc<Mutex<Vec<&'static str>>> = Arc::default();
    let r2 = reasons.clone();
    let task = tokio::spawn(run_with(
        client,
        store.clone(),
        move |r| r2.lock().unwrap().push(r),
        Backoff::starting(Duration::from_millis(10)),
    ));
    wait_for("the first failure", || !seen.lock().unwrap().is_empty()).await;
    // The kubelet rotates the token file; the next request carries the new one.
    std::fs::write(&token, "rotated-token").unwrap();
    wait_for("seven requests", || seen.lock().unwrap().len() >= 7).await;
    wait_for("the re-list", || {
        store.read().unwrap().resource_version == "2000"
    })
    .await;
    task.abort();
    assert_eq!(*reasons.lock().unwrap(), ["status", "status", "decode"]);
    let seen = seen.lock().unwrap().clone();
    assert!(
        seen[1..]
            .iter()
            .all(|(_, a, _)| a == "Bearer rotated-token"),
        "{seen:?}"
    );
    assert!(seen[4].0.contains("watch=true&"), "{seen:?}");
    assert!(seen[5].0.ends_with("&limit=500"), "{seen:?}");
    assert_eq!(live_names(&store).len(), 5);
}

#[tokio::test]
async fn a_server_outside_the_cluster_ca_is_refused() {
    let (port, _seen) = serve(vec![Reply::Body(200, fixture("pods-list-page2.json"))]).await;
    let client = Client::new(config("wrong-ca", port, "other-ca.crt")).unwrap();
    let store = RwLock::new(Store::default());
    let err = client.list(&store).await.unwrap_err();
    assert_eq!(err.reason, "tls", "{err}");
    assert!(store.read().unwrap().live().next().is_none());
    // Nothing listens here: a connection failure, not a hang.
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let client = Client::new(config("closed", port, "ca.crt")).unwrap();
    assert_eq!(client.list(&store).await.unwrap_err().reason, "connect");
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
    assert_eq!(encode("spec.nodeName=a b/c"), "spec.nodeName%3Da%20b%2Fc");
}

#[test]
fn backoff_doubles_to_a_minute_and_resets() {
    let mut b = Backoff::default();
    let delays: Vec<u64> = (0..8).map(|_| b.next_delay().as_secs()).collect();
    assert_eq!(delays, [1, 2, 4, 8, 16, 32, 60, 60]);
    b.reset();
    assert_eq!(b.next_delay().as_secs(), 1);
}

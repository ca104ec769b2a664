//! The agent's HTTP endpoints: `/metrics` (Prometheus), `/health` (the capture loop is alive)
//! and `/ready` (every probe is attached). Bound to 127.0.0.1 unless `--listen` says otherwise.

use std::convert::Infallible;
use std::net::TcpListener as StdListener;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::output::metrics::Registry;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};

/// State the endpoints report, updated by the capture loop.
pub struct Health {
    /// Every probe is attached.
    pub ready: AtomicBool,
    /// Unix ms of the capture loop's last turn.
    pub heartbeat_ms: AtomicU64,
    /// The metrics, rendered on `/metrics`.
    pub metrics: Arc<Mutex<Registry>>,
}

impl Health {
    /// Health for a loop whose metrics live in `metrics`.
    pub fn new(metrics: Arc<Mutex<Registry>>) -> Self {
        Health {
            ready: AtomicBool::new(false),
            heartbeat_ms: AtomicU64::new(0),
            metrics,
        }
    }
}

impl Health {
    /// The capture loop is alive now.
    pub fn beat(&self) {
        self.heartbeat_ms.store(now_ms(), Ordering::Relaxed);
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The capture loop counts as stuck after this long without a turn.
const STALL: Duration = Duration::from_secs(10);

fn respond(health: &Health, path: &str) -> Response<Full<Bytes>> {
    if path == "/metrics" {
        // Copied under the lock, rendered outside it: the capture loop never waits for a
        // scrape's formatting.
        let snapshot = match health.metrics.lock() {
            Ok(r) => r.snapshot(),
            Err(p) => p.into_inner().snapshot(),
        };
        let body = super::prometheus::render(&snapshot);
        let mut r = Response::new(Full::new(Bytes::from(body)));
        r.headers_mut().insert(
            hyper::header::CONTENT_TYPE,
            hyper::header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        );
        return r;
    }
    let (status, body) = match path {
        "/health" => {
            let age = now_ms().saturating_sub(health.heartbeat_ms.load(Ordering::Relaxed));
            if age <= STALL.as_millis() as u64 {
                (StatusCode::OK, "ok\n".to_string())
            } else {
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("capture loop stalled for {age} ms\n"),
                )
            }
        }
        "/ready" => {
            if health.ready.load(Ordering::Relaxed) {
                (StatusCode::OK, "ready\n".to_string())
            } else {
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "probes not attached yet\n".to_string(),
                )
            }
        }
        _ => (
            StatusCode::NOT_FOUND,
            "mcptap serves /metrics, /health and /ready\n".to_string(),
        ),
    };
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r
}

/// Serve the endpoints on an already-bound listener until the process exits.
pub fn spawn(
    listener: StdListener,
    health: Arc<Health>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    listener.set_nonblocking(true)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()?;
    std::thread::Builder::new()
        .name("mcptap-http".into())
        .spawn(move || {
            rt.block_on(async move {
                let listener = match tokio::net::TcpListener::from_std(listener) {
                    Ok(l) => l,
                    Err(e) => {
                        log::error!("--listen: {e}");
                        return;
                    }
                };
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        continue;
                    };
                    let health = health.clone();
                    tokio::spawn(async move {
                        let svc = service_fn(move |req: Request<Incoming>| {
                            let r = respond(&health, req.uri().path());
                            async move { Ok::<_, Infallible>(r) }
                        });
                        let conn = http1::Builder::new()
                            .timer(TokioTimer::new())
                            .header_read_timeout(Duration::from_secs(5))
                            .serve_connection(TokioIo::new(stream), svc);
                        let _ = tokio::time::timeout(Duration::from_secs(30), conn).await;
                    });
                }
            })
        })
}

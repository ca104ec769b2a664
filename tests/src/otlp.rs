//! A real OTLP receiver for the tests: gRPC (tonic, the official protobufs from
//! `opentelemetry-proto`) and HTTP/protobuf (hyper), storing every request it decodes. It can
//! be told to fail, to test that the agent copes with a sick collector.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::Metric;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message as _;

/// What the receiver got.
#[derive(Default)]
pub struct Received {
    /// Trace export requests.
    pub traces: Vec<ExportTraceServiceRequest>,
    /// Metric export requests.
    pub metrics: Vec<ExportMetricsServiceRequest>,
}

#[derive(Clone)]
struct Shared {
    got: Arc<Mutex<Received>>,
    /// 0: accept; otherwise the HTTP status (gRPC: UNAVAILABLE) to answer with.
    fail: Arc<AtomicU16>,
    /// Milliseconds to wait before answering an HTTP export (a slow collector).
    delay_ms: Arc<std::sync::atomic::AtomicU64>,
}

#[tonic::async_trait]
impl TraceService for Shared {
    async fn export(
        &self,
        req: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        if self.fail.load(Ordering::Relaxed) != 0 {
            return Err(tonic::Status::unavailable("told to fail"));
        }
        self.got.lock().unwrap().traces.push(req.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl MetricsService for Shared {
    async fn export(
        &self,
        req: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        if self.fail.load(Ordering::Relaxed) != 0 {
            return Err(tonic::Status::unavailable("told to fail"));
        }
        self.got.lock().unwrap().metrics.push(req.into_inner());
        Ok(tonic::Response::new(ExportMetricsServiceResponse::default()))
    }
}

/// A running receiver on 127.0.0.1.
pub struct Receiver {
    /// Its port.
    pub port: u16,
    shared: Shared,
    _rt: tokio::runtime::Runtime,
}

/// Which OTLP transport.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    /// OTLP/gRPC.
    Grpc,
    /// OTLP/HTTP with protobuf.
    Http,
}

impl Receiver {
    /// Start listening on a free port.
    pub fn start(proto: Proto) -> Receiver {
        Self::start_on(proto, 0)
    }

    /// Start listening on `port` (0: a free one).
    pub fn start_on(proto: Proto, port: u16) -> Receiver {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let shared = Shared {
            got: Arc::default(),
            fail: Arc::default(),
            delay_ms: Arc::default(),
        };
        let listener = rt
            .block_on(tokio::net::TcpListener::bind(("127.0.0.1", port)))
            .unwrap();
        let port = listener.local_addr().unwrap().port();
        let s = shared.clone();
        match proto {
            Proto::Grpc => {
                rt.spawn(async move {
                    tonic::transport::Server::builder()
                        .add_service(TraceServiceServer::new(s.clone()))
                        .add_service(MetricsServiceServer::new(s))
                        .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(
                            listener,
                        ))
                        .await
                        .unwrap();
                });
            }
            Proto::Http => {
                rt.spawn(async move {
                    loop {
                        let Ok((stream, _)) = listener.accept().await else {
                            continue;
                        };
                        let s = s.clone();
                        tokio::spawn(async move {
                            let svc = hyper::service::service_fn(
                                move |req: hyper::Request<hyper::body::Incoming>| {
                                    let s = s.clone();
                                    async move {
                                        let path = req.uri().path().to_string();
                                        let body = req
                                            .into_body()
                                            .collect()
                                            .await
                                            .map(|b| b.to_bytes())
                                            .unwrap_or_default();
                                        let delay = s.delay_ms.load(Ordering::Relaxed);
                                        if delay > 0 {
                                            tokio::time::sleep(std::time::Duration::from_millis(
                                                delay,
                                            ))
                                            .await;
                                        }
                                        let fail = s.fail.load(Ordering::Relaxed);
                                        let status = if fail != 0 {
                                            fail
                                        } else {
                                            match path.as_str() {
                                                "/v1/traces" => {
                                                    match ExportTraceServiceRequest::decode(body) {
                                                        Ok(r) => {
                                                            s.got.lock().unwrap().traces.push(r);
                                                            200
                                                        }
                                                        Err(_) => 400,
                                                    }
                                                }
                                                "/v1/metrics" => {
                                                    match ExportMetricsServiceRequest::decode(body)
                                                    {
                                                        Ok(r) => {
                                                            s.got.lock().unwrap().metrics.push(r);
                                                            200
                                                        }
                                                        Err(_) => 400,
                                                    }
                                                }
                                                _ => 404,
                                            }
                                        };
                                        let mut resp =
                                            hyper::Response::new(Full::new(Bytes::new()));
                                        *resp.status_mut() =
                                            hyper::StatusCode::from_u16(status).unwrap();
                                        resp.headers_mut().insert(
                                            "content-type",
                                            "application/x-protobuf".parse().unwrap(),
                                        );
                                        Ok::<_, Infallible>(resp)
                                    }
                                },
                            );
                            let _ = hyper::server::conn::http1::Builder::new()
                                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                                .await;
                        });
                    }
                });
            }
        }
        Receiver {
            port,
            shared,
            _rt: rt,
        }
    }

    /// The endpoint to give mcptap.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Answer every export with this failure (HTTP status; gRPC answers UNAVAILABLE), or 0
    /// to accept again.
    pub fn fail_with(&self, status: u16) {
        self.shared.fail.store(status, Ordering::Relaxed);
    }

    /// Every metrics export received, as debug text (for searching).
    pub fn metrics_text(&self) -> String {
        format!("{:?}", self.shared.got.lock().unwrap().metrics)
    }

    /// Answer HTTP exports only after `ms` milliseconds (0: at once).
    pub fn delay(&self, ms: u64) {
        self.shared.delay_ms.store(ms, Ordering::Relaxed);
    }

    /// Every span received, with its resource's attributes.
    pub fn spans(&self) -> Vec<(Vec<KeyValue>, Span)> {
        let got = self.shared.got.lock().unwrap();
        let mut out = Vec::new();
        for req in &got.traces {
            for rs in &req.resource_spans {
                let res = rs
                    .resource
                    .clone()
                    .map(|r| r.attributes)
                    .unwrap_or_default();
                for ss in &rs.scope_spans {
                    for s in &ss.spans {
                        out.push((res.clone(), s.clone()));
                    }
                }
            }
        }
        out
    }

    /// The latest export of the metric `name`.
    pub fn metric(&self, name: &str) -> Option<Metric> {
        let got = self.shared.got.lock().unwrap();
        got.metrics
            .iter()
            .rev()
            .flat_map(|r| &r.resource_metrics)
            .flat_map(|rm| &rm.scope_metrics)
            .flat_map(|sm| &sm.metrics)
            .find(|m| m.name == name)
            .cloned()
    }

    /// Metric export requests received so far.
    pub fn metric_exports(&self) -> usize {
        self.shared.got.lock().unwrap().metrics.len()
    }

    /// Wait until `ok` holds (up to `secs`).
    pub fn wait(&self, secs: u64, ok: impl Fn(&Receiver) -> bool) -> bool {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while Instant::now() < deadline {
            if ok(self) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        ok(self)
    }
}

/// A string attribute's value.
pub fn attr<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a any_value::Value> {
    attrs
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v: &AnyValue| v.value.as_ref())
}

/// A string attribute as text.
pub fn attr_str(attrs: &[KeyValue], key: &str) -> Option<String> {
    match attr(attrs, key)? {
        any_value::Value::StringValue(s) => Some(s.clone()),
        any_value::Value::IntValue(i) => Some(i.to_string()),
        any_value::Value::BoolValue(b) => Some(b.to_string()),
        any_value::Value::DoubleValue(d) => Some(d.to_string()),
        _ => None,
    }
}

//! The LLM binding: HTTP transactions whose method, path and body name a model API in,
//! one [`LlmCall`] per call out, as its client made it.
//!
//! It is one [`HttpApp`]: a transaction is a model call when the process is the client, its
//! method and path name an API ([`api::recognise`]) and its body has that API's shape. The
//! request is read when its body is complete, the reply as it comes (each event of a
//! streamed reply, or the whole JSON body), and the call is reported when the reply ends, or
//! when the connection closes before it did (`cut_off`). A model server's own view (a local
//! vLLM or gateway answering) is not a call the watched process made: such transactions are
//! left alone, so a connection that only carries them is rejected.

use super::api::{self, Accumulator, ModelApi, Options};
use super::{Request, Response};
use crate::conn::verdict::Verdict;
use crate::proto::AppCx;
use crate::proto::http::{Claim, Holds, HttpApp};
use crate::signal::security::Finding;
use crate::signal::{Endpoint, LlmCall, LlmFacts, LlmStatus, LlmToolCall, LlmToolResult, Signal};
use crate::wire::http::{ConnEvent, Role, Txn};

/// Settings of the binding.
#[derive(Clone, Debug, Default)]
pub struct Config {
    /// Keep prompt, completion and argument text (`--payloads`), redacted.
    pub payloads: bool,
    /// The security rules for secrets and personal data in request and reply bodies.
    pub scanner: Option<crate::detect::Scanner>,
}

/// What the binding counted.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    /// Model calls reported.
    pub calls: u64,
    /// Of those, cut off before the reply ended.
    pub cut_off: u64,
    /// Requests to a model API's path whose body was not that API's (left to other
    /// protocols).
    pub not_this_api: u64,
    /// Replies too large to read (over `--max-message-bytes`): reported without their facts.
    pub oversize: u64,
}

/// The model APIs' persistent state.
pub struct Llm {
    cfg: Config,
    /// Counters.
    pub stats: Stats,
}

impl Llm {
    /// The binding with `cfg`.
    pub fn new(cfg: Config) -> Self {
        Llm {
            cfg,
            stats: Stats::default(),
        }
    }

    /// The app for one record's work.
    pub fn app(&mut self) -> LlmHttp<'_> {
        LlmHttp {
            cfg: &self.cfg,
            stats: &mut self.stats,
        }
    }
}

/// The binding for one record's work.
pub struct LlmHttp<'a> {
    cfg: &'a Config,
    stats: &'a mut Stats,
}

/// One call in progress.
struct Pending {
    api: &'static dyn ModelApi,
    request: Request,
    request_bytes: u64,
    start_ns: u64,
    status: Option<u16>,
    retry_after: Option<u32>,
    stream: Option<Box<dyn Accumulator>>,
    first_chunk_ns: Option<u64>,
    /// When the latest byte of the reply was read (an event, or the body).
    last_ns: u64,
    response: Option<Response>,
    oversize: bool,
    /// What the content rules found in the request and the reply, as it came.
    hits: Vec<crate::detect::Hit>,
}

/// The calls in progress on one connection, by transaction.
#[derive(Default)]
pub struct Calls {
    open: crate::FastMap<u64, Pending>,
}

impl Holds for Calls {
    fn held(&self) -> usize {
        self.open
            .values()
            .map(|p| p.stream.as_ref().map_or(0, |s| s.held()))
            .sum()
    }
}

impl LlmHttp<'_> {
    fn opts(&self) -> Options {
        Options {
            payloads: self.cfg.payloads,
        }
    }

    /// Secrets and personal data in a body (or a streamed event's data), named under
    /// `prefix`. Findings say where in the body, never what.
    fn scan(&self, body: &[u8], prefix: &str, hits: &mut Vec<crate::detect::Hit>) {
        if let Some(sc) = &self.cfg.scanner
            && let Ok(text) = std::str::from_utf8(body)
        {
            crate::detect::content::scan_json(text, prefix, sc.rules, &sc.hasher, hits);
        }
    }
}

impl HttpApp for LlmHttp<'_> {
    type Conn = Calls;

    fn claim(&self, role: Role, txn: &Txn) -> Claim {
        let method = txn.request.method.as_deref().unwrap_or("");
        let target = txn.request.target.as_deref().unwrap_or("");
        match (role, api::recognise(method, target)) {
            (Role::Client, Some(_)) => Claim::Maybe,
            _ => Claim::No,
        }
    }

    fn claim_body(&mut self, conn: &mut Calls, txn: &Txn, body: &[u8]) -> bool {
        let method = txn.request.method.as_deref().unwrap_or("");
        let target = txn.request.target.as_deref().unwrap_or("");
        let Some(api) = api::recognise(method, target) else {
            return false;
        };
        match api.request(target, body, self.opts()) {
            Ok(request) => {
                let mut hits = Vec::new();
                self.scan(body, "request", &mut hits);
                let p = Pending {
                    api,
                    request,
                    request_bytes: body.len() as u64,
                    start_ns: txn.request.first_enter_ns,
                    status: None,
                    retry_after: None,
                    stream: None,
                    first_chunk_ns: None,
                    last_ns: txn.request.first_enter_ns,
                    response: None,
                    oversize: false,
                    hits,
                };
                conn.open.insert(txn.seq, p);
                true
            }
            Err(why) => {
                self.stats.not_this_api += 1;
                log::debug!("{method} {target}: not a model call ({why:?})");
                false
            }
        }
    }

    fn event(
        &mut self,
        conn: &mut Calls,
        cx: &mut AppCx<'_, '_>,
        _role: Role,
        e: ConnEvent<'_>,
    ) -> Verdict {
        match e {
            ConnEvent::ResponseHead(txn) => {
                let opts = self.opts();
                if let (Some(p), Some(r)) = (conn.open.get_mut(&txn.seq), &txn.response) {
                    p.status = r.status;
                    p.retry_after = r.headers.retry_after;
                    if r.is_sse() {
                        p.stream = Some(p.api.stream(opts));
                    }
                }
            }
            ConnEvent::Sse { txn, event } => {
                if let Some(p) = conn.open.get_mut(&txn.seq)
                    && let Some(acc) = p.stream.as_mut()
                {
                    p.last_ns = p.last_ns.max(event.last_exit_ns);
                    if acc.event(event.event, event.data) && p.first_chunk_ns.is_none() {
                        p.first_chunk_ns = Some(event.last_exit_ns);
                    }
                    self.scan(event.data, "response", &mut p.hits);
                }
            }
            ConnEvent::ResponseBody {
                txn,
                body,
                last_exit_ns,
                ..
            } => {
                let opts = self.opts();
                if let Some(p) = conn.open.get_mut(&txn.seq) {
                    let status = p.status.unwrap_or(0);
                    p.response = Some(p.api.response(status, body, opts));
                    p.last_ns = p.last_ns.max(last_exit_ns);
                    self.scan(body, "response", &mut p.hits);
                }
            }
            ConnEvent::Oversize { txn, .. } => {
                if txn.response.is_some()
                    && let Some(p) = conn.open.get_mut(&txn.seq)
                {
                    p.oversize = true;
                    self.stats.oversize += 1;
                }
            }
            ConnEvent::Done(txn) => {
                if let Some(p) = conn.open.remove(&txn.seq) {
                    self.report(cx, p, txn, true);
                }
            }
            ConnEvent::Error(_) => {
                for (_, p) in std::mem::take(&mut conn.open) {
                    self.report(cx, p, &Txn::default(), false);
                }
            }
            // `Role` is the router's, never handed to an app.
            ConnEvent::RequestHead(_) | ConnEvent::RequestBody { .. } | ConnEvent::Role(_) => {}
        }
        Verdict::Kept
    }

    fn close(&mut self, mut conn: Calls, cx: &mut AppCx<'_, '_>, _role: Role, left: &[Txn]) {
        for txn in left {
            if let Some(p) = conn.open.remove(&txn.seq) {
                self.report(cx, p, txn, false);
            }
        }
        for (_, p) in conn.open.drain() {
            self.report(cx, p, &Txn::default(), false);
        }
    }
}

impl LlmHttp<'_> {
    /// Report a call: its HTTP reply ended (`ended`), or the connection did first. A
    /// streamed reply whose final event came is whole even when its client closed the
    /// connection without reading the chunked body's last, empty chunk (clients often do).
    fn report(&mut self, cx: &mut AppCx<'_, '_>, mut p: Pending, txn: &Txn, ended: bool) {
        let response = match (p.stream.take(), p.response.take()) {
            (Some(acc), _) => acc.finish(),
            (None, Some(r)) => r,
            (None, None) => Response::default(),
        };
        let status = call_status(&p, &response);
        self.stats.calls += 1;
        if status == LlmStatus::CutOff {
            self.stats.cut_off += 1;
        }
        // A whole reply ended with its last byte; a cut one when the connection went.
        let end_ns = if ended || !response.complete {
            cx.now
        } else {
            p.last_ns
        };
        let end_ns = end_ns.max(p.start_ns);
        let call = build(cx, p, txn, response, (status, end_ns));
        cx.cx.out.push(Signal::LlmCall(Box::new(call)));
    }
}

/// The findings of a call's content hits, about the process that made it.
fn findings_of(hits: Vec<crate::detect::Hit>, ts_ns: u64, process: &Endpoint) -> Vec<Finding> {
    hits.into_iter()
        .map(|h| {
            let mut f = Finding::new(h.rule, ts_ns, process.clone());
            f.field = Some(h.field);
            f.match_hash = Some(h.hash);
            f.detail = h.detail;
            f
        })
        .collect()
}

/// How a call ended: an API error (an error body, an error event, or a failing status with a
/// body that said nothing), cut off (no whole body, no final event, or too large to read), or
/// whole.
fn call_status(p: &Pending, r: &Response) -> LlmStatus {
    if r.error.is_some() || p.status.is_some_and(|s| s >= 400) {
        LlmStatus::Error
    } else if p.oversize || !r.complete {
        LlmStatus::CutOff
    } else {
        LlmStatus::Ok
    }
}

fn ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

/// The reported call.
fn build(
    cx: &mut AppCx<'_, '_>,
    p: Pending,
    txn: &Txn,
    r: Response,
    (status, end_ns): (LlmStatus, u64),
) -> LlmCall {
    let api = p.api.api();
    let req = p.request;
    let error = r.error.clone().or_else(|| {
        // A failing status whose body named no error.
        p.status
            .filter(|s| *s >= 400)
            .map(|s| api::api_error(api::error_kind(s, None, false), None))
    });
    let offered = |name: &str, ns: Option<&str>| {
        req.tools
            .iter()
            .any(|t| t.name == name && (ns.is_none() || t.namespace.as_deref() == ns))
    };
    let tool_calls = r
        .tool_calls
        .into_iter()
        .map(|c| LlmToolCall {
            hallucinated: !offered(&c.name, c.namespace.as_deref()),
            id: c.id,
            name: c.name,
            namespace: c.namespace,
            exchange: None,
            arguments: c.arguments,
            args_hash: c.args_hash,
            window: None,
        })
        .collect();
    let tool_results = req
        .results
        .iter()
        .map(|res| LlmToolResult {
            id: res.call_id.clone(),
            is_error: res.is_error,
            ..Default::default()
        })
        .collect();
    let remote = cx.socket.map(|s| s.remote.split());
    let pid = cx.key.tgid;
    let process = Endpoint::of_process(pid, cx.cx.procs);
    let ts_ns = cx.cx.wall(p.start_ns);
    let findings = findings_of(p.hits, ts_ns, &process);
    LlmCall {
        ts_ns,
        provider: Some(api.provider()),
        api: Some(api),
        model: req.model,
        response_model: r.model,
        response_id: r.id,
        stream: req.stream,
        status,
        http_status: p.status,
        error_type: error.as_ref().map(|e| e.kind),
        error_code: error.as_ref().and_then(|e| e.code.clone()),
        retry_after_s: p.retry_after,
        duration_ms: ms(end_ns - p.start_ns),
        ttft_ms: p.first_chunk_ns.map(|t| ms(t.saturating_sub(p.start_ns))),
        usage: r.usage,
        finish_reason: r.finish_reason,
        tools_offered: req.tools.iter().map(|t| t.name.clone()).collect(),
        tool_calls,
        tool_results,
        task: None,
        turn: None,
        retry: false,
        errors_fed_back: 0,
        self_corrections: 0,
        request_bytes: p.request_bytes,
        response_bytes: txn.response.as_ref().map_or(0, |h| h.body_bytes),
        process,
        server_address: remote.as_ref().map(|(a, _)| a.clone()),
        server_port: remote.and_then(|(_, port)| port),
        tls: cx.base.tls,
        http_version: cx.base.http,
        tls_library: cx.base.tls_library,
        prompt: req.prompt,
        completion: r.completion,
        facts: LlmFacts {
            start_ns: p.start_ns,
            end_ns,
            system: req.system,
            messages: req.messages,
            results: req.results,
            previous_response_id: req.previous_response_id,
            stop: r.stop,
            trace: None,
        },
        findings,
    }
}

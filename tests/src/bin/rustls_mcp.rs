//! rustls_mcp: a test peer, an MCP Streamable HTTP server and client written in the tests on
//! rustls (tokio-rustls, the ring provider) and hyper, as tests/fixtures/go_mcp is on Go's
//! net/http and crypto/tls. It is a port of that Go peer: the same flags, the same tools, the
//! same calls and the same report, so that the end-to-end tests drive either one alike.
//!
//! ```text
//! rustls_mcp server -addr 127.0.0.1:PORT -cert C -key K [-http1]
//! rustls_mcp client -url https://127.0.0.1:PORT/mcp -ca C [-echo N] [-http1]
//! ```
//!
//! The server answers JSON-RPC 2.0 on POST /mcp with plain JSON responses (no SSE) and prints
//! "listening" to stderr once its listener is up. ALPN offers `h2` and `http/1.1` (only
//! `http/1.1` with -http1) on either side, and hyper speaks what was negotiated.
//!
//! The client runs initialize, notifications/initialized, tools/list, tools/call whoami,
//! N x tools/call echo, tools/call add and tools/call no_such_tool on one connection, times
//! every tools/call and prints one JSON line:
//! {"pid", "server_pid", "protocol_version", "session_id", "calls": [{"method", "target",
//! "status", "code", "ms"}]}.
//!
//! The TLS goes through rustls's buffered API (`writer().write`/`write_vectored`,
//! `reader().into_first_chunk`/`consume`), as tokio-rustls drives it, on tokio's multi-thread
//! runtime; the binary keeps its symbol table. JSON is written as Go's encoding/json writes it
//! (see [`GoFormatter`]), so that both peers put the same bytes on the wire.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::client::conn::{http1 as client1, http2 as client2};
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::server::conn::{http1 as server1, http2 as server2};
use hyper::{Method, Request, Response, StatusCode, Uri};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{WebPkiServerVerifier, verify_server_name};
use rustls::crypto::ring::default_provider;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, ServerConfig};
use rustls::{RootCertStore, SignatureScheme};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::ser::{CharEscape, CompactFormatter, Formatter};
use serde_json::value::RawValue;
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

const PROTOCOL_VERSION: &str = "2025-06-18";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((mode, args)) = args.split_first() else {
        eprintln!("usage: rustls_mcp server|client|bench [flags]");
        std::process::exit(2);
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let res = match mode.as_str() {
        "server" => rt.block_on(server_main(args)),
        "client" => rt.block_on(client_main(args)),
        "bench" => rt.block_on(bench_main(args)),
        _ => Err(anyhow!("unknown mode {mode:?}")),
    };
    if let Err(e) = res {
        eprintln!("rustls_mcp: {e:#}");
        std::process::exit(1);
    }
}

// ---------------------------------------------------------------- flags

/// Command-line flags as Go's `flag` package reads them: `-name value`, `-name=value`, `--name`,
/// a boolean flag alone meaning true; parsing stops at the first non-flag or after `--`.
struct Flags(Vec<(&'static str, String)>);

impl Flags {
    fn parse(args: &[String], defaults: &[(&'static str, &str)], bools: &[&str]) -> Result<Flags> {
        let mut flags = Flags(defaults.iter().map(|(k, v)| (*k, v.to_string())).collect());
        let mut args = args.iter();
        while let Some(arg) = args.next() {
            if arg == "--" {
                break;
            }
            let Some(name) = arg.strip_prefix('-').filter(|n| !n.is_empty()) else {
                break;
            };
            let name = name.strip_prefix('-').unwrap_or(name);
            if name.is_empty() || name.starts_with(['-', '=']) {
                bail!("bad flag syntax: {arg}");
            }
            let (name, value) = match name.split_once('=') {
                Some((n, v)) => (n, Some(v.to_string())),
                None => (name, None),
            };
            if name == "h" || name == "help" {
                bail!("flag: help requested");
            }
            if !flags.0.iter().any(|(k, _)| *k == name) {
                bail!("flag provided but not defined: -{name}");
            }
            let is_bool = bools.contains(&name);
            let value = match value {
                Some(v) => v,
                None if is_bool => "true".to_string(),
                None => args
                    .next()
                    .cloned()
                    .ok_or_else(|| anyhow!("flag needs an argument: -{name}"))?,
            };
            if is_bool && go_bool(&value).is_none() {
                bail!("invalid boolean value {value:?} for -{name}: parse error");
            }
            let slot = flags.0.iter_mut().find(|(k, _)| *k == name);
            slot.expect("a declared flag").1 = value;
        }
        Ok(flags)
    }

    fn get(&self, name: &str) -> &str {
        let found = self.0.iter().find(|(k, _)| *k == name);
        found.map(|(_, v)| v.as_str()).expect("a declared flag")
    }

    fn bool(&self, name: &str) -> bool {
        go_bool(self.get(name)).unwrap_or(false)
    }
}

/// strconv.ParseBool.
fn go_bool(s: &str) -> Option<bool> {
    match s {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

// ---------------------------------------------------------------- JSON-RPC types

/// A request as the Go peer decodes it: `id` and `params` kept raw, and present (even as
/// `null`) or absent; no `id` makes a notification.
#[derive(Deserialize, Default)]
struct RpcRequest {
    #[serde(default, rename = "jsonrpc")]
    _jsonrpc: Option<String>,
    #[serde(default, deserialize_with = "present")]
    id: Option<Box<RawValue>>,
    #[serde(default, deserialize_with = "nullable")]
    method: String,
    #[serde(default, deserialize_with = "present")]
    params: Option<Box<RawValue>>,
}

#[derive(Serialize)]
struct RpcResponse<'a> {
    jsonrpc: &'static str,
    id: &'a RawValue,
    #[serde(skip_serializing_if = "Option::is_none")]
    result: Option<Box<RawValue>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<RpcError>,
}

/// A response as the client reads it.
#[derive(Deserialize, Default)]
struct RpcReply {
    #[serde(default, deserialize_with = "present")]
    result: Option<Box<RawValue>>,
    #[serde(default)]
    error: Option<RpcError>,
}

#[derive(Serialize, Deserialize, Debug)]
struct RpcError {
    #[serde(default, deserialize_with = "nullable")]
    code: i64,
    #[serde(default, deserialize_with = "nullable")]
    message: String,
}

impl std::fmt::Display for RpcError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "JSON-RPC error {}: {}", self.code, self.message)
    }
}

impl std::error::Error for RpcError {}

#[derive(Serialize, Deserialize, Debug, Default)]
struct Content {
    #[serde(rename = "type", default, deserialize_with = "nullable")]
    kind: String,
    #[serde(default, deserialize_with = "nullable")]
    text: String,
}

#[derive(Serialize, Deserialize, Debug, Default)]
struct ToolResult {
    #[serde(default, deserialize_with = "nullable")]
    content: Vec<Content>,
    #[serde(
        rename = "isError",
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "is_false"
    )]
    is_error: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// A field that JSON `null` leaves at its zero value, as it does in Go.
fn nullable<'de, D: Deserializer<'de>, T: Deserialize<'de> + Default>(d: D) -> Result<T, D::Error> {
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// A raw field that is there even when `null` (Go's json.RawMessage).
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Box<RawValue>>, D::Error> {
    Box::<RawValue>::deserialize(d).map(Some)
}

/// `text` as JSON Go decodes it: `null` is the zero value.
fn decode<T: serde::de::DeserializeOwned + Default>(text: &str) -> serde_json::Result<T> {
    Ok(serde_json::from_str::<Option<T>>(text)?.unwrap_or_default())
}

// ---------------------------------------------------------------- JSON as Go writes it

/// serde_json's compact output as Go 1.19's encoding/json writes it (the Go peer's): `<`, `>`,
/// `&`, U+2028 and U+2029 escaped, `\b` and `\f` as `\u0008` and `\u000c`, and floats in Go's
/// shortest form (`2`, not `2.0`; `1e+21`, `1e-7`). Objects keep their fields' order, so
/// the `json!` literals below list their keys sorted, as Go sorts a map's.
struct GoFormatter;

impl Formatter for GoFormatter {
    fn write_string_fragment<W: ?Sized + io::Write>(
        &mut self,
        w: &mut W,
        s: &str,
    ) -> io::Result<()> {
        write_html_escaped(w, s)
    }

    fn write_raw_fragment<W: ?Sized + io::Write>(&mut self, w: &mut W, s: &str) -> io::Result<()> {
        // Raw JSON has those characters only in strings: Go escapes them there too.
        write_html_escaped(w, s)
    }

    fn write_char_escape<W: ?Sized + io::Write>(
        &mut self,
        w: &mut W,
        escape: CharEscape,
    ) -> io::Result<()> {
        match escape {
            CharEscape::Backspace => w.write_all(b"\\u0008"),
            CharEscape::FormFeed => w.write_all(b"\\u000c"),
            other => CompactFormatter.write_char_escape(w, other),
        }
    }

    fn write_f64<W: ?Sized + io::Write>(&mut self, w: &mut W, value: f64) -> io::Result<()> {
        w.write_all(go_json_float(value).as_bytes())
    }
}

fn write_html_escaped<W: ?Sized + io::Write>(w: &mut W, s: &str) -> io::Result<()> {
    let mut start = 0;
    for (i, c) in s.char_indices() {
        let escaped = match c {
            '<' => "\\u003c",
            '>' => "\\u003e",
            '&' => "\\u0026",
            '\u{2028}' => "\\u2028",
            '\u{2029}' => "\\u2029",
            _ => continue,
        };
        w.write_all(&s.as_bytes()[start..i])?;
        w.write_all(escaped.as_bytes())?;
        start = i + c.len_utf8();
    }
    w.write_all(&s.as_bytes()[start..])
}

/// `v` as Go's json.Marshal writes it.
fn go_json<T: Serialize + ?Sized>(v: &T) -> String {
    let mut out = Vec::new();
    v.serialize(&mut serde_json::Serializer::with_formatter(
        &mut out,
        GoFormatter,
    ))
    .expect("serializable");
    String::from_utf8(out).expect("JSON is UTF-8")
}

fn go_raw<T: Serialize + ?Sized>(v: &T) -> Box<RawValue> {
    RawValue::from_string(go_json(v)).expect("valid JSON")
}

/// A finite float as encoding/json writes it: shortest digits, plain between 1e-6 and 1e21.
fn go_json_float(f: f64) -> String {
    let abs = f.abs();
    if abs == 0.0 || (1e-6..1e21).contains(&abs) {
        return format!("{f}");
    }
    let e = format!("{f:e}");
    let (mantissa, exp) = e.split_once('e').expect("an exponent");
    match exp.strip_prefix('-') {
        Some(exp) => format!("{mantissa}e-{exp}"),
        None => format!("{mantissa}e+{exp}"),
    }
}

/// A float as Go's fmt.Sprint writes it (%v): shortest digits, exponent below 1e-4 and from
/// 1e6 on, at least two exponent digits.
fn go_sprint_float(f: f64) -> String {
    if f.is_nan() {
        return "NaN".to_string();
    }
    if f.is_infinite() {
        return if f > 0.0 { "+Inf" } else { "-Inf" }.to_string();
    }
    let e = format!("{f:e}");
    let (mantissa, exp) = e.split_once('e').expect("an exponent");
    let exp: i32 = exp.parse().expect("a decimal exponent");
    if f == 0.0 || (-4..6).contains(&exp) {
        return format!("{f}");
    }
    let sign = if exp < 0 { '-' } else { '+' };
    format!("{mantissa}e{sign}{:02}", exp.abs())
}

// ---------------------------------------------------------------- TLS

fn alpn(http1: bool) -> Vec<Vec<u8>> {
    if http1 {
        vec![b"http/1.1".to_vec()]
    } else {
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    }
}

fn server_tls(cert: &str, key: &str, http1: bool) -> Result<TlsAcceptor> {
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .with_context(|| format!("reading {cert}"))?;
    if certs.is_empty() {
        bail!("tls: failed to find any PEM data in certificate input");
    }
    let key = PrivateKeyDer::from_pem_file(key).with_context(|| format!("reading {key}"))?;
    let mut config = ServerConfig::builder_with_provider(Arc::new(default_provider()))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    config.alpn_protocols = alpn(http1);
    Ok(TlsAcceptor::from(Arc::new(config)))
}

fn client_tls(ca: &str, http1: bool) -> Result<TlsConnector> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(ca)
        .with_context(|| format!("reading {ca}"))?
        .filter_map(Result::ok)
        .collect();
    let mut roots = RootCertStore::empty();
    if roots.add_parsable_certificates(certs.iter().cloned()).0 == 0 {
        bail!("no certificate in {ca}");
    }
    let provider = Arc::new(default_provider());
    let webpki =
        WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone()).build()?;
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(CaFile { webpki, certs }))
        .with_no_client_auth();
    config.alpn_protocols = alpn(http1);
    Ok(TlsConnector::from(Arc::new(config)))
}

/// The CA file's certificates as roots, as Go's crypto/x509 takes them: webpki verifies, and a
/// server certificate that is itself one of the roots is accepted for its names, as Go accepts
/// it, even when it says CA:TRUE (openssl's self-signed certificates do, the tests' among
/// them), which webpki refuses in a server (after checking its validity period).
#[derive(Debug)]
struct CaFile {
    webpki: Arc<WebPkiServerVerifier>,
    certs: Vec<CertificateDer<'static>>,
}

impl ServerCertVerifier for CaFile {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verified =
            self.webpki
                .verify_server_cert(end_entity, intermediates, server_name, ocsp, now);
        match verified {
            Err(e) if ca_as_end_entity(&e) && self.certs.iter().any(|c| c == end_entity) => {
                verify_server_name(&ParsedCertificate::try_from(end_entity)?, server_name)?;
                Ok(ServerCertVerified::assertion())
            }
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}

fn ca_as_end_entity(e: &rustls::Error) -> bool {
    let rustls::Error::InvalidCertificate(CertificateError::Other(other)) = e else {
        return false;
    };
    matches!(
        other.0.downcast_ref::<webpki::Error>(),
        Some(webpki::Error::CaUsedAsEndEntity)
    )
}

// ---------------------------------------------------------------- server

async fn server_main(args: &[String]) -> Result<()> {
    let defaults = [
        ("addr", "127.0.0.1:0"),
        ("cert", ""),
        ("key", ""),
        ("http1", "false"),
    ];
    let f = Flags::parse(args, &defaults, &["http1"])?;
    // Go listens on every address for ":PORT".
    let addr = match f.get("addr") {
        a if a.starts_with(':') => format!("[::]{a}"),
        a => a.to_string(),
    };
    let listener = TcpListener::bind(&addr).await?;
    eprintln!("listening");
    // As Go's ServeTLS, the certificate is read once the listener is up.
    let acceptor = server_tls(f.get("cert"), f.get("key"), f.bool("http1"))?;
    loop {
        match listener.accept().await {
            Ok((tcp, peer)) => {
                tokio::spawn(serve_conn(acceptor.clone(), tcp, peer));
            }
            Err(e) => {
                eprintln!("http: Accept error: {e}; retrying in 5ms");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    }
}

/// One connection: the TLS handshake, then HTTP/2 or HTTP/1.1 as ALPN settled it.
async fn serve_conn(acceptor: TlsAcceptor, tcp: TcpStream, peer: SocketAddr) {
    // Go's net package turns Nagle off on every TCP connection.
    let _ = tcp.set_nodelay(true);
    let tls = match acceptor.accept(tcp).await {
        Ok(tls) => tls,
        Err(e) => {
            eprintln!("http: TLS handshake error from {peer}: {e}");
            return;
        }
    };
    let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
    let io = TokioIo::new(tls);
    let service = hyper::service::service_fn(handle);
    let _ = if h2 {
        server2::Builder::new(TokioExecutor::new())
            .serve_connection(io, service)
            .await
    } else {
        // Go's server has no timeout on reading a request's header.
        server1::Builder::new()
            .header_read_timeout(None)
            .serve_connection(io, service)
            .await
    };
}

/// Go's handleMCP behind its ServeMux: POST /mcp only.
async fn handle(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    if req.uri().path() != "/mcp" {
        return Ok(text_error(StatusCode::NOT_FOUND, "404 page not found"));
    }
    if req.method() != Method::POST {
        let mut resp = text_error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
        let allow = HeaderValue::from_static("POST");
        resp.headers_mut().insert(header::ALLOW, allow);
        return Ok(resp);
    }
    Ok(match req.into_body().collect().await {
        Ok(body) => answer(&body.to_bytes()),
        Err(e) => text_error(StatusCode::BAD_REQUEST, &e.to_string()),
    })
}

/// Go's http.Error.
fn text_error(status: StatusCode, msg: &str) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .header(header::X_CONTENT_TYPE_OPTIONS, "nosniff")
        .body(Full::new(Bytes::from(format!("{msg}\n"))))
        .expect("a valid response")
}

/// The answer to one JSON-RPC message.
fn answer(body: &[u8]) -> Response<Full<Bytes>> {
    let Ok(req) = decode_slice::<RpcRequest>(body) else {
        let null = RawValue::from_string("null".into()).expect("valid JSON");
        let error = RpcError {
            code: -32700,
            message: "parse error".into(),
        };
        return rpc_response(&null, None, Some(error), None);
    };
    let Some(id) = req.id else {
        // A notification (notifications/initialized among them): accepted, no body.
        let empty = Full::new(Bytes::new());
        let mut resp = Response::new(empty);
        *resp.status_mut() = StatusCode::ACCEPTED;
        return resp;
    };
    let mut session = None;
    let (result, error) = match req.method.as_str() {
        "initialize" => {
            session = Some(random_hex(16));
            let result = json!({
                "capabilities": {"tools": {}},
                "protocolVersion": PROTOCOL_VERSION,
                "serverInfo": {"name": "rustls-mcp", "version": "1.0"},
            });
            (Some(go_raw(&result)), None)
        }
        "tools/list" => (Some(go_raw(&json!({"tools": tool_list()}))), None),
        "tools/call" => (Some(go_raw(&call_tool(req.params.as_deref()))), None),
        "ping" => (Some(go_raw(&json!({}))), None),
        method => (None, Some(not_found(method))),
    };
    rpc_response(&id, result, error, session)
}

fn not_found(method: &str) -> RpcError {
    let message = format!("method not found: {method}");
    RpcError {
        code: -32601,
        message,
    }
}

fn decode_slice<T: serde::de::DeserializeOwned + Default>(body: &[u8]) -> serde_json::Result<T> {
    Ok(serde_json::from_slice::<Option<T>>(body)?.unwrap_or_default())
}

/// Go's writeJSON of a response, with `Mcp-Session-Id` when one was made.
fn rpc_response(
    id: &RawValue,
    result: Option<Box<RawValue>>,
    error: Option<RpcError>,
    session: Option<String>,
) -> Response<Full<Bytes>> {
    let body = go_json(&RpcResponse {
        jsonrpc: "2.0",
        id,
        result,
        error,
    });
    let mut resp = Response::builder();
    if let Some(session) = session {
        resp = resp.header("mcp-session-id", session);
    }
    resp.header(header::CONTENT_TYPE, "application/json")
        .header(header::CONTENT_LENGTH, body.len())
        .body(Full::new(Bytes::from(body)))
        .expect("a valid response")
}

fn tool_list() -> Value {
    let tool = |name: &str, description: &str, properties: Value, required: Value| {
        json!({
            "description": description,
            "inputSchema": {"properties": properties, "required": required, "type": "object"},
            "name": name,
        })
    };
    let (str, num) = (json!({"type": "string"}), json!({"type": "number"}));
    let echo = (json!({"text": str}), json!(["text"]));
    let add = (json!({"a": num, "b": num}), json!(["a", "b"]));
    json!([
        tool("echo", "Echo the text back", echo.0, echo.1),
        tool("add", "Add two numbers", add.0, add.1),
        // Go's variadic `required` with no names is a nil slice: null.
        tool("whoami", "The server's process id", json!({}), Value::Null),
    ])
}

#[derive(Deserialize, Default)]
struct CallParams {
    #[serde(default, deserialize_with = "nullable")]
    name: String,
    #[serde(default, deserialize_with = "nullable")]
    arguments: CallArgs,
}

#[derive(Deserialize, Default)]
struct CallArgs {
    #[serde(default, deserialize_with = "nullable")]
    text: String,
    #[serde(default, deserialize_with = "nullable")]
    a: f64,
    #[serde(default, deserialize_with = "nullable")]
    b: f64,
}

fn call_tool(params: Option<&RawValue>) -> ToolResult {
    let p = match params.map(|p| decode::<CallParams>(p.get())) {
        Some(Ok(p)) => p,
        Some(Err(e)) => return text_result(format!("bad params: {e}"), true),
        // What Go's json.Unmarshal says of no params at all.
        None => return text_result("bad params: unexpected end of JSON input".into(), true),
    };
    match p.name.as_str() {
        "echo" => text_result(p.arguments.text, false),
        "add" => text_result(go_sprint_float(p.arguments.a + p.arguments.b), false),
        "whoami" => text_result(format!(r#"{{"pid": {}}}"#, std::process::id()), false),
        name => text_result(format!("unknown tool: {name}"), true),
    }
}

fn text_result(text: String, is_error: bool) -> ToolResult {
    let kind = "text".to_string();
    ToolResult {
        content: vec![Content { kind, text }],
        is_error,
    }
}

/// `n` random bytes from the TLS provider's generator, in hex.
fn random_hex(n: usize) -> String {
    let mut b = vec![0u8; n];
    default_provider()
        .secure_random
        .fill(&mut b)
        .expect("random bytes");
    b.iter().map(|b| format!("{b:02x}")).collect()
}

// ---------------------------------------------------------------- client

#[derive(Serialize)]
struct CallRecord {
    method: &'static str,
    target: String,
    status: &'static str,
    code: Option<i64>,
    ms: f64,
}

#[derive(Serialize)]
struct Report {
    pid: u32,
    server_pid: Option<i64>,
    protocol_version: String,
    session_id: String,
    calls: Vec<CallRecord>,
}

#[derive(Deserialize, Default)]
struct InitResult {
    #[serde(rename = "protocolVersion", default, deserialize_with = "nullable")]
    protocol_version: String,
}

/// tools/list's result, decoded as the Go client does (and left unused).
#[derive(Deserialize, Default)]
struct ToolList {
    #[serde(rename = "tools", default, deserialize_with = "nullable")]
    _tools: Vec<ToolName>,
}

#[derive(Deserialize, Default)]
struct ToolName {
    #[serde(rename = "name", default, deserialize_with = "nullable")]
    _name: String,
}

#[derive(Deserialize, Default)]
struct WhoAmI {
    #[serde(default, deserialize_with = "nullable")]
    pid: i64,
}

/// How long a request may take, reading its response included (Go's Client.Timeout).
const TIMEOUT: Duration = Duration::from_secs(30);

struct Client {
    url: Uri,
    tls: TlsConnector,
    /// The connection, made on the first request and again if the server closed it.
    conn: Option<Conn>,
    session_id: String,
    next_id: i64,
    calls: Vec<CallRecord>,
}

async fn client_main(args: &[String]) -> Result<()> {
    let defaults = [("url", ""), ("ca", ""), ("echo", "5"), ("http1", "false")];
    let f = Flags::parse(args, &defaults, &["http1"])?;
    let echo = f.get("echo");
    let echo_n: i64 = echo
        .parse()
        .map_err(|_| anyhow!("invalid value {echo:?} for flag -echo: parse error"))?;
    let tls = client_tls(f.get("ca"), f.bool("http1"))?;
    let mut c = Client {
        url: f.get("url").parse().context("parsing -url")?,
        tls,
        conn: None,
        session_id: String::new(),
        next_id: 0,
        calls: Vec::new(),
    };
    let report = c.workload(echo_n).await?;
    if let Some(conn) = c.conn.take() {
        conn.close().await;
    }
    println!("{}", go_json(&report));
    Ok(())
}

/// `bench -url U -ca CERT -warmup W -calls N`: the rustls client of the TLS per-call bench
/// (`cargo xtask bench`, section 7), as `xtask/src/bench/assets/tls_loop_go` is Go's:
/// initialize, notifications/initialized, W untimed `echo` calls, then N timed ones over one
/// HTTP/1.1 keep-alive connection; one JSON line: {"pid", "requests", "calls", "wall_ns",
/// "cpu_ns"}, `cpu_ns` the process's user and system time (every thread) over the timed calls.
async fn bench_main(args: &[String]) -> Result<()> {
    let defaults = [
        ("url", ""),
        ("ca", ""),
        ("warmup", "100"),
        ("calls", "1000"),
    ];
    let f = Flags::parse(args, &defaults, &[])?;
    let number = |k: &str| -> Result<u64> {
        f.get(k)
            .parse()
            .map_err(|_| anyhow!("invalid value {:?} for flag -{k}", f.get(k)))
    };
    let (warmup, calls) = (number("warmup")?, number("calls")?);
    let mut c = Client {
        url: f.get("url").parse().context("parsing -url")?,
        tls: client_tls(f.get("ca"), true)?,
        conn: None,
        session_id: String::new(),
        next_id: 0,
        calls: Vec::new(),
    };
    let params = json!({
        "capabilities": {},
        "clientInfo": {"name": "rustls-bench", "version": "1"},
        "protocolVersion": PROTOCOL_VERSION,
    });
    let _: Value = c.request("initialize", params).await?;
    c.notify("notifications/initialized").await?;
    for i in 0..warmup {
        c.call_tool("echo", json!({"text": format!("warm {i}")}))
            .await?;
    }
    let (cpu0, t0) = (cpu_ns(), Instant::now());
    for i in 0..calls {
        c.call_tool("echo", json!({"text": format!("hello {i}")}))
            .await?;
    }
    let (wall, cpu1) = (t0.elapsed(), cpu_ns());
    if let Some(conn) = c.conn.take() {
        conn.close().await;
    }
    let report = json!({
        "pid": std::process::id(),
        "requests": 2 + warmup + calls,
        "calls": calls,
        "wall_ns": wall.as_nanos() as u64,
        "cpu_ns": cpu1 - cpu0,
    });
    println!("{report}");
    Ok(())
}

/// This process's user and system CPU time, every thread, in ns.
fn cpu_ns() -> u64 {
    // SAFETY: getrusage fills the struct it is given.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let ns = |t: libc::timeval| t.tv_sec as u64 * 1_000_000_000 + t.tv_usec as u64 * 1_000;
    ns(ru.ru_utime) + ns(ru.ru_stime)
}

impl Client {
    async fn workload(&mut self, echo_n: i64) -> Result<Report> {
        let params = json!({
            "capabilities": {},
            "clientInfo": {"name": "mcptap-e2e-rustls", "version": "1.0"},
            "protocolVersion": PROTOCOL_VERSION,
        });
        let init: InitResult = self.request("initialize", params).await?;
        self.notify("notifications/initialized").await?;
        let _: ToolList = self.request("tools/list", json!({})).await?;
        let who = self.call_tool("whoami", json!({})).await?;
        let server_pid = who
            .as_ref()
            .and_then(|w| w.content.first())
            // `{"pid": N}` from the Go and Rust peers, a bare number from the Python SDK's.
            .and_then(|c| {
                decode::<WhoAmI>(&c.text)
                    .ok()
                    .map(|w| w.pid)
                    .or_else(|| c.text.trim().parse().ok())
            });
        for i in 0..echo_n {
            let text = format!("hello {i}");
            let r = self.call_tool("echo", json!({"text": text})).await?;
            let first = r.as_ref().and_then(|r| r.content.first());
            if first.is_none_or(|c| c.text != text) {
                bail!("echo {i}: unexpected result {r:?}");
            }
        }
        self.call_tool("add", json!({"a": 2, "b": 3})).await?;
        self.call_tool("no_such_tool", json!({})).await?;
        Ok(Report {
            pid: std::process::id(),
            server_pid,
            protocol_version: init.protocol_version,
            session_id: self.session_id.clone(),
            calls: std::mem::take(&mut self.calls),
        })
    }

    /// tools/call, recorded in `calls`; its result, or None on a JSON-RPC error (recorded
    /// with its code).
    async fn call_tool(&mut self, name: &str, args: Value) -> Result<Option<ToolResult>> {
        let start = Instant::now();
        let params = json!({"arguments": args, "name": name});
        let res = self.request::<ToolResult>("tools/call", params).await;
        let (status, code, result) = match res {
            Ok(r) if r.is_error => ("tool_error", None, Some(r)),
            Ok(r) => ("ok", None, Some(r)),
            Err(e) => match e.downcast_ref::<RpcError>() {
                Some(re) => ("error", Some(re.code), None),
                None => return Err(e),
            },
        };
        self.calls.push(CallRecord {
            method: "tools/call",
            target: name.to_string(),
            status,
            code,
            ms: start.elapsed().as_micros() as f64 / 1000.0,
        });
        Ok(result)
    }

    /// One JSON-RPC request; its result decoded, or its JSON-RPC error as an [`RpcError`].
    async fn request<T: serde::de::DeserializeOwned + Default>(
        &mut self,
        method: &str,
        params: Value,
    ) -> Result<T> {
        self.next_id += 1;
        let msg = json!({"id": self.next_id, "jsonrpc": "2.0", "method": method, "params": params});
        let (status, headers, data) = self.post(go_json(&msg)).await?;
        if status != StatusCode::OK {
            let body = String::from_utf8_lossy(&data);
            bail!("{method}: HTTP {}: {body}", status.as_u16());
        }
        if method == "initialize" {
            let id = headers.get("mcp-session-id").and_then(|v| v.to_str().ok());
            self.session_id = id.unwrap_or_default().to_string();
        }
        let reply: RpcReply = decode_slice(&data).with_context(|| method.to_string())?;
        if let Some(e) = reply.error {
            return Err(e.into());
        }
        let result = reply
            .result
            .ok_or_else(|| anyhow!("unexpected end of JSON input"))?;
        Ok(decode(result.get())?)
    }

    async fn notify(&mut self, method: &str) -> Result<()> {
        let msg = json!({"jsonrpc": "2.0", "method": method});
        let (status, _, _) = self.post(go_json(&msg)).await?;
        if status != StatusCode::ACCEPTED {
            bail!("{method}: HTTP {}", status.as_u16());
        }
        Ok(())
    }

    /// POST `body` to the URL, with the session's headers once there is a session; the
    /// response read whole.
    async fn post(&mut self, body: String) -> Result<(StatusCode, HeaderMap, Bytes)> {
        let exchange = async {
            if self.conn.as_ref().is_none_or(Conn::is_closed) {
                self.conn = Some(Conn::open(&self.url, &self.tls).await?);
            }
            let conn = self.conn.as_mut().expect("connected");
            let req = mcp_request(&self.url, &self.session_id, body, conn.is_h2())?;
            let (parts, body) = conn.send(req).await?.into_parts();
            let data = body.collect().await?.to_bytes();
            anyhow::Ok((parts.status, parts.headers, data))
        };
        let res = tokio::time::timeout(TIMEOUT, exchange)
            .await
            .unwrap_or_else(|_| Err(anyhow!("Client.Timeout exceeded")));
        res.with_context(|| format!("Post {:?}", self.url.to_string()))
    }
}

/// A POST of `body` to `url`: the URL whole over HTTP/2 (hyper makes its `:authority`), its
/// path with a Host header over HTTP/1.1.
fn mcp_request(url: &Uri, session: &str, body: String, h2: bool) -> Result<Request<Full<Bytes>>> {
    let mut req = if h2 {
        Request::post(url.clone())
    } else {
        let path = url.path_and_query().map_or("/", |p| p.as_str());
        let host = url.authority().context("http: no Host in request URL")?;
        Request::post(path).header(header::HOST, host.as_str())
    };
    req = req
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::ACCEPT, "application/json, text/event-stream");
    if !session.is_empty() {
        req = req
            .header("mcp-session-id", session)
            .header("mcp-protocol-version", PROTOCOL_VERSION);
    }
    Ok(req.body(Full::new(Bytes::from(body)))?)
}

/// One client connection: hyper's sender, and the task that drives the connection.
struct Conn {
    sender: Sender,
    task: tokio::task::JoinHandle<()>,
}

enum Sender {
    H1(client1::SendRequest<Full<Bytes>>),
    H2(client2::SendRequest<Full<Bytes>>),
}

impl Conn {
    /// Connect to `url` (TLS for https, with ALPN), then hyper's handshake.
    async fn open(url: &Uri, tls: &TlsConnector) -> Result<Conn> {
        let https = match url.scheme_str().unwrap_or_default() {
            "https" => true,
            "http" => false,
            other => bail!("unsupported protocol scheme {other:?}"),
        };
        let host = url.host().context("http: no Host in request URL")?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let port = url.port_u16().unwrap_or(if https { 443 } else { 80 });
        let tcp = TcpStream::connect((host, port)).await?;
        tcp.set_nodelay(true)?;
        if !https {
            return Conn::handshake(tcp, false).await;
        }
        let tls = tls
            .connect(ServerName::try_from(host.to_string())?, tcp)
            .await?;
        let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
        Conn::handshake(tls, h2).await
    }

    async fn handshake<T>(io: T, h2: bool) -> Result<Conn>
    where
        T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let io = TokioIo::new(io);
        if h2 {
            let (sender, conn) = client2::handshake(TokioExecutor::new(), io).await?;
            let task = tokio::spawn(async move { drop(conn.await) });
            return Ok(Conn {
                sender: Sender::H2(sender),
                task,
            });
        }
        let (sender, conn) = client1::handshake(io).await?;
        let task = tokio::spawn(async move { drop(conn.await) });
        Ok(Conn {
            sender: Sender::H1(sender),
            task,
        })
    }

    fn is_h2(&self) -> bool {
        matches!(self.sender, Sender::H2(_))
    }

    fn is_closed(&self) -> bool {
        match &self.sender {
            Sender::H1(s) => s.is_closed(),
            Sender::H2(s) => s.is_closed(),
        }
    }

    async fn send(&mut self, req: Request<Full<Bytes>>) -> hyper::Result<Response<Incoming>> {
        match &mut self.sender {
            Sender::H1(s) => {
                s.ready().await?;
                s.send_request(req).await
            }
            Sender::H2(s) => {
                s.ready().await?;
                s.send_request(req).await
            }
        }
    }

    /// Close the connection (TLS close_notify included) and wait for it to be closed, as
    /// Go's CloseIdleConnections before the report.
    async fn close(self) {
        let Conn { sender, task } = self;
        drop(sender);
        let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
    }
}

//! TLS, end to end: MCP over HTTPS captured as plaintext from OpenSSL (the shared libssl that
//! Python and curl use, and the OpenSSL linked into `node`), joined to the same sessions,
//! correlation and checks as plain HTTP; HTTPS that is not MCP is rejected like HTTP; TLS that
//! cannot be decrypted is counted, and its ciphertext never reaches the pipeline.

use std::path::{Path, PathBuf};
use std::process::Command;

use mcptap_e2e::otlp::{Proto, Receiver, attr_str};
use mcptap_e2e::*;

/// Per-stream decisions in the agent's log (`stream ... is not MCP`, `TLS socket ... ended
/// without being decrypted`), to check them process by process: the agent watches the whole
/// host, so totals include whatever else runs.
const DEBUG: &[(&str, &str)] = &[("RUST_LOG", "mcptap=debug")];

/// Fetch `url` with curl (OpenSSL, trusting `cert`); asserts it succeeded and returns curl's
/// pid.
fn curl_fetch(cert: &Path, url: &str) -> u32 {
    let curl = Command::new("curl")
        .args(["-sS", "--fail", "-o", "/dev/null", "--cacert"])
        .arg(cert)
        .arg(url)
        .spawn()
        .expect("run curl");
    let pid = curl.id();
    assert!(
        curl.wait_with_output().unwrap().status.success(),
        "curl failed"
    );
    pid
}

fn python(venv: &str) -> PathBuf {
    peers().join(venv).join("bin/python")
}

/// The fixture client on `venv`'s SDK against `url`, trusting `cert`.
fn py_client(venv: &str, url: &str, cert: &Path, extra: &[&str]) -> Command {
    let mut c = Command::new(python(venv));
    c.arg(fixtures().join("py_client.py"))
        .args(["--echo", "5", "--url", url])
        .args(extra)
        // httpx takes the trusted roots from here.
        .env("SSL_CERT_FILE", cert);
    c
}

/// The agent's per-stream log lines about process `pid`.
fn log_lines(log: &str, pid: u32, what: &str) -> Vec<String> {
    let me = format!("tgid: {pid},");
    log.lines()
        .filter(|l| l.contains(&me) && l.contains(what))
        .map(str::to_string)
        .collect()
}

/// What a TLS connection of `pid` must never be: undecrypted, or rejected as ciphertext.
fn assert_decrypted(log: &str, pid: u32) {
    let bad = log_lines(log, pid, "ended without being decrypted");
    assert!(bad.is_empty(), "TLS of {pid} not decrypted: {bad:#?}");
    let bad = log_lines(log, pid, "is not MCP (tls)");
    assert!(
        bad.is_empty(),
        "ciphertext of {pid} reached the pipeline: {bad:#?}"
    );
}

/// Stop the server, then the agent, and check what every HTTPS test checks: the server the
/// client named, each call once, the session, and TLS on every exchange. Returns the records
/// and the agent's log.
fn stop_and_check(
    agent: Agent,
    server: Server,
    run: &ClientRun,
    port: u16,
    stateless: bool,
) -> (Records, String) {
    assert_eq!(
        run.server_pid,
        Some(server.pid()),
        "whoami names the server"
    );
    drop(server);
    let log = agent.log();
    let recs = agent.stop();
    check_calls(&recs, run, Sides::Both);
    check_session(&recs, run, "http", stateless);
    check_tls(&recs, run, port, &log, ("openssl", "openssl"));
    (recs, log)
}

/// Every exchange of the client is marked TLS, carries the server's address, and both ends'
/// streams lost nothing.
fn check_tls(recs: &Records, run: &ClientRun, port: u16, log: &str, libs: (&str, &str)) {
    let mine = recs.exchanges_of_client(run.pid);
    for r in &mine {
        assert_eq!(r["tls"], true, "{r}");
        assert_eq!(r["client_tls_library"], libs.0, "{r}");
        assert_eq!(r["server_tls_library"], libs.1, "{r}");
        assert_eq!(r["server_address"], "127.0.0.1", "{r}");
        assert_eq!(r["server_port"], port, "{r}");
    }
    let server = run.server_pid.expect("server pid");
    for pid in [run.pid, server] {
        assert_no_trouble(recs, pid);
        assert_decrypted(log, pid);
    }
}

/// mcp 1.x server (uvicorn's TLS, libssl through Python's asyncio: memory BIOs) and client
/// (httpx over anyio: memory BIOs too), watching every process; a 2 MB tool result is shipped
/// in chunks through the tail-call path without loss; the spans say TLS.
#[test]
fn python_sdk_over_https() {
    let dir = scratch("tls_python");
    let (cert, _) = certificate(&dir);
    let port = port();
    let receiver = Receiver::start(Proto::Http);
    let endpoint = receiver.endpoint();
    let args = [
        "--otlp-endpoint",
        &endpoint,
        "--otlp-protocol",
        "http/protobuf",
    ];
    let agent = Agent::start_with_env(&dir, &args, DEBUG);
    let server = python_https_server("mcp1", &dir, port, &cert, &[]);
    let url = format!("https://127.0.0.1:{port}/mcp");
    let run = run_client(
        &mut py_client("mcp1", &url, &cert, &["--big-result", "2000000"]),
        &dir,
    );
    let (recs, _) = stop_and_check(agent, server, &run, port, false);
    let big = recs
        .exchanges_of_client(run.pid)
        .into_iter()
        .find(|r| r["tool"] == "big")
        .expect("the big call");
    assert!(big["response_bytes"].as_u64().unwrap() > 2_000_000, "{big}");
    // The spans' and the console's source: the same session, marked once per notification.
    let init = recs
        .kind("notification")
        .into_iter()
        .find(|n| n["session"] == recs.exchanges_of_client(run.pid)[0]["session"])
        .expect("notifications/initialized");
    assert_eq!(init["tls"], true, "{init}");
    // Both sides' spans: still HTTP, inside TLS.
    let spans = receiver.spans();
    let mine: Vec<_> = spans
        .iter()
        .map(|(_, s)| s)
        .filter(|s| {
            let pid = attr_str(&s.attributes, "process.pid");
            pid == Some(run.pid.to_string()) || pid == run.server_pid.map(|p| p.to_string())
        })
        .collect();
    assert!(mine.len() >= 2 * run.calls.len(), "{} spans", mine.len());
    for s in mine {
        let a = |k| attr_str(&s.attributes, k);
        assert_eq!(a("network.protocol.name").as_deref(), Some("http"), "{s:?}");
        assert_eq!(a("tls.protocol.name").as_deref(), Some("tls"), "{s:?}");
        assert_eq!(a("tls.established").as_deref(), Some("true"), "{s:?}");
    }
}

/// The TypeScript SDK client (the OpenSSL linked into node, started after the agent: probed at
/// its exec) against the Python server, with a 1 MB argument that node writes in one
/// SSL_write.
#[test]
fn typescript_sdk_client_over_https() {
    let dir = scratch("tls_node");
    let (cert, _) = certificate(&dir);
    let port = port();
    let agent = Agent::start_with_env(&dir, &[], DEBUG);
    let server = python_https_server("mcp1", &dir, port, &cert, &[]);
    let node_dir = node_fixture("node_https_client.mjs");
    let mut c = Command::new("node");
    c.current_dir(&node_dir)
        .arg("node_https_client.mjs")
        .args(["--url", &format!("https://127.0.0.1:{port}/mcp")])
        .args(["--big-arg", "1000000"])
        .env("NODE_EXTRA_CA_CERTS", &cert);
    let run = run_client(&mut c, &dir);
    let (recs, _) = stop_and_check(agent, server, &run, port, false);
    let big = recs
        .exchanges_of_client(run.pid)
        .into_iter()
        .find(|r| r["request_bytes"].as_u64().unwrap() > 1_000_000);
    assert!(big.is_some(), "the 1 MB call");
    let init = recs
        .exchanges_of_client(run.pid)
        .into_iter()
        .find(|r| r["method"] == "initialize")
        .expect("initialize");
    assert_eq!(init["client"]["name"], "mcptap-e2e-node-https");
}

/// With `--comm`, the probes are set per watched process (each at its exec, before Python
/// loads libssl): the mcp 2.x client and server on protocol 2026-07-28 (stateless).
#[test]
fn probes_per_watched_process_over_https() {
    let dir = scratch("tls_scoped");
    let (cert, _) = certificate(&dir);
    let port = port();
    let agent = Agent::start_with_env(&dir, &["--comm", "python"], DEBUG);
    let server = python_https_server("mcp2", &dir, port, &cert, &[]);
    let url = format!("https://127.0.0.1:{port}/mcp");
    let run = run_client(&mut py_client("mcp2", &url, &cert, &[]), &dir);
    let (_, log) = stop_and_check(agent, server, &run, port, true);
    for pid in [run.pid, run.server_pid.unwrap()] {
        assert!(
            log.contains(&format!("libssl.so for Pid({pid})"))
                || log.contains(&format!("libssl.so.3 for Pid({pid})")),
            "libssl probed for {pid} alone:\n{log}"
        );
    }
    assert!(!log.contains("for All"), "no probe for every process");
}

/// GnuTLS: `gnutls-cli` (Debian's gnutls-bin) as the TLS end of an MCP client, against the
/// Python SDK's server on OpenSSL. GnuTLS's record functions are probed in libgnutls, its
/// session bound to its socket by the syscalls it makes inside them; both ends' views say
/// which library they were read from, and the probes' metric counts libgnutls.
#[test]
fn gnutls_client_over_https() {
    let dir = scratch("tls_gnutls");
    let (cert, _) = certificate(&dir);
    let port = port();
    let agent = Agent::start_with_env(&dir, &[], DEBUG);
    let server = python_https_server("mcp1", &dir, port, &cert, &["--stateless", "--json"]);
    let mut c = Command::new(python("mcp1"));
    c.arg(fixtures().join("gnutls_client.py"))
        .args(["--port", &port.to_string(), "--echo", "5", "--cafile"])
        .arg(&cert);
    let run = run_client(&mut c, &dir);
    assert_eq!(
        run.server_pid,
        Some(server.pid()),
        "whoami names the server"
    );
    let probed = metric_reaching(
        &agent,
        "mcptap_tls_probes",
        &[("library", "gnutls"), ("state", "probed")],
        1.0,
    );
    assert!(probed >= 1.0, "libgnutls probed: {probed}");
    drop(server);
    let log = agent.log();
    let recs = agent.stop();
    check_calls(&recs, &run, Sides::Both);
    check_session(&recs, &run, "http", true);
    check_tls(&recs, &run, port, &log, ("gnutls", "openssl"));
}

/// A minimal HTTPS file server on Python's blocking ssl module (socket BIOs: OpenSSL writes
/// the socket itself, inside SSL_write), serving `dir`.
fn static_https_server(dir: &Path, port: u16, cert: &Path) -> Server {
    let script = "import http.server, ssl, sys\n\
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)\n\
        ctx.load_cert_chain(sys.argv[2], sys.argv[3])\n\
        s = http.server.HTTPServer(('127.0.0.1', int(sys.argv[1])), http.server.SimpleHTTPRequestHandler)\n\
        s.socket = ctx.wrap_socket(s.socket, server_side=True)\n\
        s.serve_forever()\n";
    let mut c = Command::new(python("mcp1"));
    c.current_dir(dir)
        .args(["-c", script, &port.to_string()])
        .arg(cert)
        .arg(cert.with_file_name("key.pem"));
    Server::on_port(&mut c, dir, "static", port)
}

/// curl over HTTPS to a server that is not MCP: both ends' plaintext is read and rejected as
/// HTTP that is not MCP (as it would be without TLS), nothing is reported, and the kernel stops
/// shipping those sockets.
#[test]
fn https_that_is_not_mcp_is_rejected() {
    let dir = scratch("tls_not_mcp");
    let (cert, _) = certificate(&dir);
    std::fs::write(dir.join("page.html"), "<html>not MCP</html>\n".repeat(2000)).unwrap();
    let port = port();
    let agent = Agent::start_with_env(&dir, &[], DEBUG);
    let server = static_https_server(&dir, port, &cert);
    let curl_pid = curl_fetch(&cert, &format!("https://127.0.0.1:{port}/page.html"));
    let server_pid = server.pid();
    drop(server);
    let binds = metric_reaching(
        &agent,
        "mcptap_kernel_events_total",
        &[("event", "tls_binds")],
        2.0,
    );
    assert!(binds >= 2.0, "{binds} SSL objects bound");
    let rejected = metric_reaching(
        &agent,
        "mcptap_streams_rejected_total",
        &[("reason", "http_not_mcp")],
        2.0,
    );
    assert!(rejected >= 2.0, "{rejected} rejected");
    let log = agent.log();
    let recs = agent.stop();
    for pid in [curl_pid, server_pid] {
        assert!(
            recs.mentioning(pid).is_empty(),
            "{:#?}",
            recs.mentioning(pid)
        );
        let rejected = log_lines(&log, pid, "is not MCP (http_not_mcp)");
        assert!(!rejected.is_empty(), "{pid}'s HTTPS not rejected:\n{log}");
        assert_decrypted(&log, pid);
    }
}

/// An HTTPS server on tlslite-ng (TLS written in Python, no OpenSSL: the fixture checks that
/// libssl is not mapped), answering each connection with one page and closing it.
fn tlslite_server(dir: &Path, port: u16, cert: &Path, key: &Path) -> Server {
    let mut c = Command::new(python("tlslite"));
    c.arg(fixtures().join("tlslite_server.py"))
        .arg(port.to_string())
        .arg(cert)
        .arg(key);
    Server::on_port(&mut c, dir, "tlslite", port)
}

/// TLS the probes cannot decrypt (a server on tlslite-ng, a TLS stack other than OpenSSL):
/// the socket is counted in mcptap_tls_undecrypted_streams_total{library="unknown"} (no
/// library the probes read is in that process) and its ciphertext never
/// reaches the pipeline; curl's end of the same connection is decrypted.
#[test]
fn tls_that_cannot_be_decrypted_is_counted_not_shipped() {
    let dir = scratch("tls_undecrypted");
    let (cert, key) = certificate(&dir);
    let port = port();
    let agent = Agent::start_with_env(&dir, &[], DEBUG);
    let server = tlslite_server(&dir, port, &cert, &key);
    const UNDECRYPTED: &str = "mcptap_tls_undecrypted_streams_total";
    // Labelled by the library found in the process: none the probes read, in tlslite's.
    let unknown = [("library", "unknown")];
    metric_reaching(&agent, "mcptap_tls_probes", &[], 0.0);
    let before = prom_value(&agent.metrics(), UNDECRYPTED, &unknown).unwrap_or(0.0);
    let curl_pid = curl_fetch(&cert, &format!("https://127.0.0.1:{port}/"));
    let server_pid = server.pid();
    // Counted when the connection ends: the server closes it after the page.
    let after = metric_reaching(&agent, UNDECRYPTED, &unknown, before + 1.0);
    let log = agent.log();
    drop(server);
    let recs = agent.stop();
    let undecrypted = log_lines(&log, server_pid, "ended without being decrypted");
    assert_eq!(undecrypted.len(), 1, "{undecrypted:#?}\n{log}");
    assert!(after >= before + 1.0, "counter {before} -> {after}");
    // Its ciphertext was dropped in the kernel: the pipeline never saw a byte of it.
    let inode = undecrypted[0]
        .split("inode: ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .expect("the socket's inode");
    let seen: Vec<_> = log_lines(&log, server_pid, "is not MCP")
        .into_iter()
        .filter(|l| l.contains(&format!("inode: {inode} ")))
        .collect();
    assert!(seen.is_empty(), "{seen:#?}");
    assert!(recs.mentioning(server_pid).is_empty());
    assert_decrypted(&log, curl_pid);
    assert!(!log_lines(&log, curl_pid, "is not MCP (http_not_mcp)").is_empty());
}

/// `openssl s_server -www` runs its TLS through OpenSSL's SSL BIO (BIO_f_ssl), which calls
/// the library's internal read/write functions, not SSL_read/SSL_write: where those are
/// probed (Debian's libssl, which the agent reports in its log, its metrics and its
/// `agent_stop`) both ends are decrypted, and, not being MCP, rejected as HTTP.
#[test]
fn openssl_ssl_bio_is_decrypted() {
    let dir = scratch("tls_ssl_bio");
    let (cert, key) = certificate(&dir);
    let port = port();
    let agent = Agent::start_with_env(&dir, &[], DEBUG);
    let mut s = Command::new("openssl");
    s.args(["s_server", "-quiet", "-www", "-accept", &port.to_string()])
        .arg("-cert")
        .arg(&cert)
        .arg("-key")
        .arg(&key);
    let server = Server::on_port(&mut s, &dir, "s_server", port);
    let curl_pid = curl_fetch(&cert, &format!("https://127.0.0.1:{port}/"));
    let server_pid = server.pid();
    let rejected = metric_reaching(
        &agent,
        "mcptap_streams_rejected_total",
        &[("reason", "http_not_mcp")],
        2.0,
    );
    assert!(rejected >= 2.0, "{rejected} rejected");
    // Debian's libssl (and libcrypto's BIO_write) went the internal way, and say so.
    let internal = metric_reaching(
        &agent,
        "mcptap_tls_probed_binaries",
        &[("mode", "internal")],
        1.0,
    );
    assert!(
        internal >= 1.0,
        "{internal} binaries probed internally:\n{}",
        agent.metrics()
    );
    drop(server);
    let log = agent.log();
    let recs = agent.stop();
    // The system's libssl, by whichever of its names (libssl.so, libssl.so.3) came first.
    let libssl = log.lines().find(|l| {
        l.contains("/libssl.so")
            && l.contains(": SSL_read/SSL_write probed at the internal entry points")
    });
    assert!(libssl.is_some(), "libssl not probed internally:\n{log}");
    for pid in [curl_pid, server_pid] {
        assert!(
            recs.mentioning(pid).is_empty(),
            "{:#?}",
            recs.mentioning(pid)
        );
        let rejected = log_lines(&log, pid, "is not MCP (http_not_mcp)");
        assert!(!rejected.is_empty(), "{pid}'s HTTPS not rejected:\n{log}");
        assert_decrypted(&log, pid);
    }
    let stop = recs
        .kind("event")
        .into_iter()
        .find(|e| e["event"] == "agent_stop")
        .expect("agent_stop summary");
    let probed = &stop["stats"]["tls"]["probed_binaries"];
    assert!(probed["internal"].as_u64().unwrap_or(0) >= 1, "{stop}");
    assert!(probed["bio_internal"].as_u64().unwrap_or(0) >= 1, "{stop}");
}

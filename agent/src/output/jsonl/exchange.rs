//! The exchange record, the common line, written member by member: serde's `flatten` sends a
//! struct through `SerializeMap` and escapes every key, which cost more than the rest of the
//! line. Keys here are literals that need no escaping; strings are copied as they are unless
//! they hold a byte JSON escapes, and then (like floats, enums and payload values) go through
//! serde_json, so the bytes are exactly what `#[derive(Serialize)]` wrote (a test compares).

use serde::Serialize;
use serde_json::value::RawValue;

use crate::capture::cgroup::Identity;
use crate::signal::{Endpoint, Exchange};

/// `,"key":` for a literal key (every key here is plain ASCII: nothing to escape).
macro_rules! key {
    ($out:expr, $k:literal) => {
        $out.extend_from_slice(concat!(",\"", $k, "\":").as_bytes())
    };
}

/// Write `x`'s line (without the newline) to `out`, its timestamp `ts`.
pub(super) fn write(x: &Exchange, ts: &str, out: &mut Vec<u8>) {
    out.extend_from_slice(b"{\"kind\":\"exchange\",\"ts\":\"");
    out.extend_from_slice(ts.as_bytes());
    out.push(b'"');
    // The id exactly as it was on the wire (a number stays a number); absent if it is not
    // JSON, as `RawValue::from_string` left it.
    if let Some(id) = raw_json(&x.id) {
        key!(out, "id");
        out.extend_from_slice(id.as_bytes());
    }
    key!(out, "transport");
    serde(out, &x.transport);
    opt_str(out, ",\"session\":", x.session.as_deref());
    key!(out, "method");
    string(out, &x.method);
    opt_str(out, ",\"tool\":", x.tool.as_deref());
    opt_str(out, ",\"resource_uri\":", x.resource_uri.as_deref());
    opt_str(out, ",\"prompt\":", x.prompt.as_deref());
    key!(out, "status");
    serde(out, &x.status);
    if let Some(code) = x.error_code {
        key!(out, "error_code");
        int(out, code);
    }
    if let Some(h) = x.http_status {
        key!(out, "http_status");
        int(out, h);
    }
    key!(out, "requester");
    serde(out, &x.requester);
    opt_serde(out, ",\"duration_ms\":", x.timing.duration_ms);
    opt_serde(out, ",\"client_duration_ms\":", x.timing.client_duration_ms);
    opt_serde(out, ",\"server_duration_ms\":", x.timing.server_duration_ms);
    key!(out, "client");
    endpoint(out, &x.client);
    key!(out, "server");
    endpoint(out, &x.server);
    opt_str(out, ",\"protocol_version\":", x.protocol_version.as_deref());
    key!(out, "request_bytes");
    int(out, x.request_bytes);
    if let Some(b) = x.response_bytes {
        key!(out, "response_bytes");
        int(out, b);
    }
    network_and_derived(x, out);
    out.push(b'}');
}

/// The flattened network, derived, agent and payload members.
fn network_and_derived(x: &Exchange, out: &mut Vec<u8>) {
    let n = &x.network;
    opt_str(out, ",\"server_address\":", n.server_address.as_deref());
    opt_int(out, ",\"server_port\":", n.server_port);
    opt_str(out, ",\"client_address\":", n.client_address.as_deref());
    opt_int(out, ",\"client_port\":", n.client_port);
    if n.tls {
        out.extend_from_slice(b",\"tls\":true");
    }
    opt_serde(out, ",\"http_version\":", n.http_version);
    opt_serde(out, ",\"client_tls_library\":", n.client_tls_library);
    opt_serde(out, ",\"server_tls_library\":", n.server_tls_library);
    let d = &x.derived;
    opt_str(out, ",\"error_class\":", d.error_class);
    opt_serde(out, ",\"schema_valid\":", d.schema_valid);
    opt_str(out, ",\"schema_error\":", d.schema_error.as_deref());
    opt_serde(out, ",\"unknown_tool\":", d.unknown_tool);
    opt_str(out, ",\"repeat_of\":", d.repeat_of.as_deref());
    opt_int(out, ",\"result_tokens_est\":", d.result_tokens_est);
    opt_int(out, ",\"content_bytes\":", d.content_bytes);
    opt_str(out, ",\"task\":", x.agent.task.as_deref());
    opt_int(out, ",\"turn\":", x.agent.turn);
    opt_serde(out, ",\"arguments\":", x.payload.arguments.as_ref());
    opt_serde(out, ",\"result\":", x.payload.result.as_ref());
}

/// One side's object, its container and pod written flat into it.
fn endpoint(out: &mut Vec<u8>, e: &Endpoint) {
    match e.pid {
        Some(pid) => {
            out.extend_from_slice(b"{\"pid\":");
            int(out, pid);
            key!(out, "comm");
        }
        None => out.extend_from_slice(b"{\"comm\":"),
    }
    string(out, &e.comm);
    if !e.exe.is_empty() {
        key!(out, "exe");
        string(out, &e.exe);
    }
    opt_str(out, ",\"name\":", e.name.as_deref());
    opt_str(out, ",\"version\":", e.version.as_deref());
    if let Some(k) = e.k8s.as_deref() {
        identity(out, k);
    }
    out.push(b'}');
}

/// The container and pod members of an endpoint.
fn identity(out: &mut Vec<u8>, k: &Identity) {
    opt_str(out, ",\"container_id\":", k.container_id.as_deref());
    opt_str(
        out,
        ",\"container_runtime\":",
        k.container_runtime.as_deref(),
    );
    opt_str(out, ",\"k8s_pod_uid\":", k.pod_uid.as_deref());
    opt_str(out, ",\"k8s_pod\":", k.pod.as_deref());
    opt_str(out, ",\"k8s_namespace\":", k.namespace.as_deref());
    opt_str(out, ",\"k8s_container\":", k.container.as_deref());
    opt_str(out, ",\"k8s_node\":", k.node.as_deref());
}

/// `text` as it is if it is one JSON value (surrounding whitespace trimmed), else `None`.
fn raw_json(text: &str) -> Option<&str> {
    // Most ids are small integers: no parser needed to know they are JSON.
    let b = text.as_bytes();
    let plain_int = !b.is_empty()
        && b.len() < 16
        && b.iter().all(u8::is_ascii_digit)
        && (b[0] != b'0' || b.len() == 1);
    if plain_int {
        return Some(text);
    }
    serde_json::from_str::<&RawValue>(text)
        .ok()
        .map(RawValue::get)
}

/// A JSON string: copied as it is when no byte of it needs escaping.
fn string(out: &mut Vec<u8>, s: &str) {
    if s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else {
        serde(out, s);
    }
}

/// `key` (with its comma and colon) and the string, if there is one.
fn opt_str(out: &mut Vec<u8>, key: &'static str, s: Option<&str>) {
    if let Some(s) = s {
        out.extend_from_slice(key.as_bytes());
        string(out, s);
    }
}

fn int(out: &mut Vec<u8>, n: impl itoa::Integer) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// `key` (with its comma and colon) and the integer, if there is one.
fn opt_int(out: &mut Vec<u8>, key: &'static str, n: Option<impl itoa::Integer>) {
    if let Some(n) = n {
        out.extend_from_slice(key.as_bytes());
        int(out, n);
    }
}

/// A value as serde_json writes it: floats, enums, payloads, strings that need escaping.
fn serde(out: &mut Vec<u8>, v: &(impl Serialize + ?Sized)) {
    // Writing to a Vec fails only for a value that cannot be JSON; none of these.
    let _ = serde_json::to_writer(&mut *out, v);
}

/// `key` (with its comma and colon) and the value, if there is one.
fn opt_serde(out: &mut Vec<u8>, key: &'static str, v: Option<impl Serialize>) {
    if let Some(v) = v {
        out.extend_from_slice(key.as_bytes());
        serde(out, &v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signal::{HttpVersion, Role, Status, TlsLibrary, Transport};

    /// The line as `#[derive(Serialize)]` writes it, through [`super::super::Line`].
    fn by_serde(x: &Exchange, ts: &str) -> String {
        let line = super::super::Line {
            kind: "exchange",
            ts,
            id: RawValue::from_string(x.id.clone()).ok(),
            body: x,
        };
        serde_json::to_string(&line).unwrap()
    }

    fn direct(x: &Exchange, ts: &str) -> String {
        let mut out = Vec::new();
        write(x, ts, &mut out);
        String::from_utf8(out).unwrap()
    }

    /// Every optional member present, with strings that need escaping or are not ASCII.
    fn awkward() -> Exchange {
        let k8s = Identity {
            container_id: Some("c\u{7f}\u{0}".into()),
            container_runtime: Some("containerd".into()),
            pod_uid: Some("uid".into()),
            pod: Some("pöd \"x\"".into()),
            namespace: Some("ns\\".into()),
            container: Some("c\n".into()),
            node: Some("nœud\u{1f}".into()),
        };
        let mut x = Exchange {
            ts_ns: 1,
            transport: Transport::Http,
            session: Some("s\"\\\u{8}\u{c}\n\r\t".into()),
            method: "tools/\u{1}call\u{2028}".into(),
            id: " \"a\\\"b\" ".into(),
            tool: Some("écho ☃ 😀".into()),
            resource_uri: Some("file:///a\"b".into()),
            prompt: Some("p".into()),
            status: Status::Error,
            error_code: Some(-32602),
            http_status: Some(500),
            requester: Role::Server,
            client: Endpoint {
                pid: None,
                comm: "no\u{0}de".into(),
                ..Default::default()
            },
            server: Endpoint {
                pid: Some(u32::MAX),
                comm: "py".into(),
                exe: "/usr/bin/python3 \u{1b}".into(),
                name: Some("demo".into()),
                version: Some("1.0".into()),
                k8s: Some(k8s.into()),
            },
            protocol_version: Some("2025-06-18".into()),
            request_bytes: u64::MAX,
            response_bytes: Some(0),
            ..Default::default()
        };
        x.timing.duration_ms = Some(1.5);
        x.timing.client_duration_ms = Some(1e-7);
        x.timing.server_duration_ms = Some(f64::NAN);
        x.network.server_address = Some("::1".into());
        x.network.server_port = Some(443);
        x.network.client_address = Some("127.0.0.1".into());
        x.network.client_port = Some(0);
        x.network.tls = true;
        x.network.http_version = Some(HttpVersion::Http2);
        x.network.client_tls_library = Some(TlsLibrary::OpenSsl);
        x.network.server_tls_library = Some(TlsLibrary::Go);
        x.derived.error_class = Some("client_misuse");
        x.derived.schema_valid = Some(false);
        x.derived.schema_error = Some("/a: \"type\"".into());
        x.derived.unknown_tool = Some(true);
        x.derived.repeat_of = Some("7".into());
        x.derived.result_tokens_est = Some(12);
        x.derived.content_bytes = Some(3);
        x.agent.task = Some("t\t1".into());
        x.agent.turn = Some(2);
        x.payload.arguments = Some(serde_json::json!({"q": "a\"b\u{0}", "n": 1.25e300}));
        x.payload.result = Some(serde_json::json!([null, true, "ü"]));
        x
    }

    #[test]
    fn writes_what_serde_writes() {
        let ts = "2026-11-21T09:56:45.123456Z";
        let full = awkward();
        let mut cases = vec![full.clone(), Exchange::default()];
        // Every optional member absent in turn, and ids of every shape.
        for (i, id) in [
            "7",
            "0",
            "01",
            "-3",
            "1.5e3",
            "\"x\"",
            "",
            "nope",
            "12345678901234567890",
        ]
        .into_iter()
        .enumerate()
        {
            let mut x = full.clone();
            x.id = id.into();
            match i {
                0 => x.server.k8s = None,
                1 => x.network = Default::default(),
                2 => x.derived = Default::default(),
                3 => x.timing = Default::default(),
                4 => x.payload = Default::default(),
                5 => x.client.exe = "e".into(),
                6 => x.server.pid = None,
                _ => x.timing.duration_ms = Some(f64::INFINITY),
            }
            cases.push(x);
        }
        for x in &cases {
            assert_eq!(direct(x, ts), by_serde(x, ts));
        }
    }
}

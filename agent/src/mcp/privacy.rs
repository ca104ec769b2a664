//! What never leaves the host as it was on the wire, unless the user opts in:
//!
//! - `Mcp-Session-Id` values (and legacy SSE session ids) are bearer-like secrets: outputs
//!   carry a stable hash of them ([`session_label`]); `--raw-session-ids` keeps the id.
//! - A resource URI is a request argument: outputs carry it without userinfo, query or
//!   fragment ([`trim_uri`]); `--full-resource-uris` keeps it whole.
//! - With `--payloads`, argument and result values are exported with secrets redacted
//!   ([`redact`]): the values of secret-looking keys, the `value` of `{"name": "Authorization",
//!   "value": ...}` pairs, and bearer tokens, API keys, private keys, webhooks and URL
//!   credentials inside any string.

use std::borrow::Cow;
use std::sync::OnceLock;

use regex::Regex;
use serde_json::Value;
use sha2::{Digest as _, Sha256};

use crate::detect;

/// What replaces a redacted value.
pub const REDACTED: &str = "[REDACTED]";

/// The label of an HTTP session in outputs: `sha256:` and the first 16 hex digits of the
/// SHA-256 of the session id, the same for the same id on every host and run, or the id
/// itself when `raw`.
pub fn session_label(id: &str, raw: bool) -> String {
    if raw {
        return id.to_string();
    }
    let digest = Sha256::digest(id.as_bytes());
    let mut out = String::from("sha256:");
    for b in &digest[..8] {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// A URI without what may be secret in it: userinfo (`user:password@`), query and fragment.
/// Written out by hand rather than through a URL parser, which would also rewrite the rest
/// (case, escapes, default ports) of URIs that servers compare as strings.
pub fn trim_uri(uri: &str) -> Cow<'_, str> {
    let end = uri.find(['?', '#']).unwrap_or(uri.len());
    let kept = &uri[..end];
    let userinfo = kept.find("://").and_then(|at| {
        let start = at + 3;
        let stop = kept[start..].find('/').map_or(kept.len(), |i| start + i);
        kept[start..stop].rfind('@').map(|i| (start, start + i + 1))
    });
    match userinfo {
        None if end == uri.len() => Cow::Borrowed(uri),
        None => Cow::Borrowed(kept),
        Some((from, to)) => Cow::Owned(format!("{}{}", &kept[..from], &kept[to..])),
    }
}

/// Words of a key: split at separators and at lower-to-upper case changes (`apiKey`).
fn words(k: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut prev_lower = false;
    for c in k.chars() {
        if !c.is_alphanumeric() {
            if !cur.is_empty() {
                out.push(std::mem::take(&mut cur));
            }
            prev_lower = false;
            continue;
        }
        if c.is_uppercase() && prev_lower && !cur.is_empty() {
            out.push(std::mem::take(&mut cur));
        }
        prev_lower = c.is_lowercase() || c.is_ascii_digit();
        cur.extend(c.to_lowercase());
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// Keys whose values are never exported, even with `--payloads`.
pub fn secret_key(k: &str) -> bool {
    let flat = k.to_ascii_lowercase().replace(['-', '_', ' ', '.'], "");
    let anywhere = [
        "password",
        "passwd",
        "passphrase",
        "token",
        "secret",
        "authorization",
        "apikey",
        "cookie",
        "credential",
        "privatekey",
        "accesskey",
        "signature",
    ];
    if anywhere.iter().any(|s| flat.contains(s)) {
        return true;
    }
    let w = words(k);
    let whole = [
        "key", "keys", "bearer", "auth", "pwd", "pass", "pin", "otp", "jwt",
    ];
    w.iter().any(|w| whole.contains(&w.as_str())) || w.first().is_some_and(|w| w == "aws")
}

/// Secrets that show by their shape wherever they stand in a string: redaction's own
/// patterns, then the credential formats the security rules detect
/// ([`detect::content::secret_patterns`]: PEM private keys, AWS and Google keys, Git and chat
/// tokens, webhooks, model provider keys, JWTs, bearer tokens), so that one place says what
/// each secret looks like.
///
/// Redaction errs toward hiding and detection toward precision, so where the two differ
/// redaction keeps its looser pattern here, ahead of detection's (which then finds nothing
/// left of what it matches): bearer tokens from 8 characters, JWTs with any signature, and
/// shorter `sk-`, GitHub, GitLab and Google keys. What only redaction hides follows them:
/// `Basic` credentials, credentials in a URL, `password=...`.
fn secret_patterns() -> &'static [Regex] {
    static P: OnceLock<Vec<Regex>> = OnceLock::new();
    P.get_or_init(|| {
        [
            // An HTTP authorization value: `Bearer <token>`, `Basic <base64>`.
            r"(?i)\bbearer\s+[A-Za-z0-9\-._~+/]{8,}=*",
            r"\bBasic\s+[A-Za-z0-9+/]{8,}={0,2}",
            // JSON Web Tokens, however short their signature.
            r"\beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*",
            // Model providers' and hosting services' API keys, shorter than detection's.
            r"\bsk-(?:ant-|proj-)?[A-Za-z0-9_-]{16,}",
            r"\b(?:ghp|gho|ghu|ghs|ghr)_[A-Za-z0-9]{20,}",
            r"\bgithub_pat_[A-Za-z0-9_]{20,}",
            r"\bAIza[0-9A-Za-z_-]{30,}",
            r"\bglpat-[A-Za-z0-9_-]{16,}",
            // Credentials in a URL: `scheme://user:password@host`.
            r"(?i)\b[a-z][a-z0-9+.-]*://[^\s/@:]+:[^\s/@]+@",
            // `password=...`, `api_key: ...` in free text and query strings.
            r"(?i)\b(?:password|passwd|pwd|secret|token|api[_-]?key|access[_-]?key)\s*[=:]\s*[^\s&,;]+",
        ]
        .iter()
        .map(|p| Regex::new(p).expect("valid pattern"))
        .chain(detect::content::secret_patterns().iter().cloned())
        .collect()
    })
}

/// A string with every secret-shaped part replaced.
fn scrub(s: &str) -> Cow<'_, str> {
    let mut out = Cow::Borrowed(s);
    for p in secret_patterns() {
        if p.is_match(&out) {
            out = Cow::Owned(p.replace_all(&out, REDACTED).into_owned());
        }
    }
    out
}

/// Whether an object is a name/value pair naming a secret (`{"name": "Authorization",
/// "value": "..."}`, as HTTP header lists and environment lists are written).
fn names_a_secret(m: &serde_json::Map<String, Value>) -> bool {
    ["name", "key", "header", "id"]
        .iter()
        .filter_map(|k| m.get(*k).and_then(Value::as_str))
        .any(secret_key)
}

fn walk(v: &mut Value) {
    match v {
        Value::String(s) if s.trim_start().starts_with(['{', '[']) => {
            if let Ok(mut inner) = serde_json::from_str::<Value>(s) {
                walk(&mut inner);
                *s = inner.to_string();
            } else if let Cow::Owned(clean) = scrub(s) {
                *s = clean;
            }
        }
        Value::String(s) => {
            if let Cow::Owned(clean) = scrub(s) {
                *s = clean;
            }
        }
        Value::Object(m) => {
            let pair = names_a_secret(m);
            for (k, v) in m.iter_mut() {
                let value_of_pair = pair && matches!(k.as_str(), "value" | "values" | "val");
                if value_of_pair || secret_key(k) {
                    *v = Value::String(REDACTED.into());
                } else {
                    walk(v);
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(walk),
        _ => {}
    }
}

/// A payload with secrets replaced by `"[REDACTED]"` at any depth, also inside strings that
/// hold JSON documents (tool results often carry their data as JSON text).
pub fn redact(json: &str) -> Value {
    let mut v = serde_json::from_str(json).unwrap_or(Value::Null);
    walk(&mut v);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_ids_hash_stably_and_raw_on_request() {
        let a = session_label("6a0f2c0e-79d5-4cc1-9c6c-1e6c7d2f0a11", false);
        assert_eq!(
            a,
            session_label("6a0f2c0e-79d5-4cc1-9c6c-1e6c7d2f0a11", false)
        );
        assert!(a.starts_with("sha256:") && a.len() == 7 + 16, "{a}");
        assert!(!a.contains("6a0f2c0e"));
        assert_ne!(a, session_label("other", false));
        assert_eq!(session_label("abc", true), "abc");
        // The first 8 bytes of SHA-256("abc"), as `sha256sum` prints them.
        assert_eq!(session_label("abc", false), "sha256:ba7816bf8f01cfea");
    }

    #[test]
    fn uris_lose_userinfo_query_and_fragment() {
        let t = |u| trim_uri(u).into_owned();
        assert_eq!(t("file:///etc/hosts"), "file:///etc/hosts");
        assert_eq!(
            t("demo://resource/dynamic/text/1"),
            "demo://resource/dynamic/text/1"
        );
        assert_eq!(
            t("https://u:pw@example.com/a?token=x#f"),
            "https://example.com/a"
        );
        assert_eq!(t("postgres://admin@db:5432/app"), "postgres://db:5432/app");
        assert_eq!(t("res://x?y"), "res://x");
        assert_eq!(t("res://x#y"), "res://x");
        assert_eq!(t("mailto:a@b.c"), "mailto:a@b.c");
        assert_eq!(t("s3://bucket/key@v2/obj"), "s3://bucket/key@v2/obj");
        assert!(matches!(trim_uri("a://b/c"), Cow::Borrowed(_)));
    }

    #[test]
    fn secret_keys_by_name_and_by_word() {
        for k in [
            "password",
            "api_key",
            "apiKey",
            "X-Api-Key",
            "key",
            "private_key",
            "AWS_SECRET_ACCESS_KEY",
            "aws_region",
            "bearer",
            "Authorization",
            "auth",
            "client_secret",
            "refreshToken",
            "sshKeys",
        ] {
            assert!(secret_key(k), "{k}");
        }
        for k in [
            "keyboard", "monkey", "keywords", "name", "path", "author", "query",
        ] {
            assert!(!secret_key(k), "{k}");
        }
    }

    #[test]
    fn the_detected_credential_formats_are_redacted_too() {
        let v = redact(
            r#"{"pem":"-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n-----END OPENSSH PRIVATE KEY-----\nbye",
            "sts":"ASIAY34FZKBOKMUTVV7A","hook":"see https://hooks.slack.com/services/T0001/B0002/XXXXXXXXXXXXXXXXXXXXXXXX",
            "slack":"xoxb-1234567890-abcdefghij"}"#,
        );
        let s = v.to_string();
        for secret in [
            "b3BlbnNzaC1rZXkt",
            "ASIAY34FZKBOKMUTVV7A",
            "XXXXXXXX",
            "xoxb-",
        ] {
            assert!(!s.contains(secret), "{secret} leaked: {s}");
        }
        assert_eq!(v["pem"], "[REDACTED]\nbye", "{s}");
        assert_eq!(v["hook"], "see [REDACTED]", "{s}");
    }

    #[test]
    fn secrets_are_redacted_at_any_depth_and_inside_strings() {
        let v = redact(
            r#"{"a":{"token":"t1","list":[{"apiKey":"k1"}]},"headers":[{"name":"Authorization","value":"Bearer abcdefghijk"},{"name":"Accept","value":"json"}],
            "note":"call with Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.sig and key sk-ant-api03-ABCDEFGHIJKLMNOPQRST",
            "url":"https://bob:hunter2@example.com/x","gh":"ghp_abcdefghijklmnopqrstuvwxyz0123456789",
            "aws":"AKIAIOSFODNN7EXAMPLE","cfg":"password=swordfish&user=bob","text":"{\"secret\":\"s\"}",
            "aws_session_token":"t2","keep":"plain text with a keyboard"}"#,
        );
        let s = v.to_string();
        for secret in [
            "t1",
            "k1",
            "abcdefghijk",
            "eyJhbGciOiJIUzI1NiJ9",
            "sk-ant-api03",
            "hunter2",
            "ghp_abc",
            "AKIAIOSFODNN7EXAMPLE",
            "swordfish",
            "\\\"s\\\"",
            "t2",
        ] {
            assert!(!s.contains(secret), "{secret} leaked: {s}");
        }
        assert_eq!(v["headers"][1]["value"], "json", "{s}");
        assert_eq!(v["keep"], "plain text with a keyboard");
        assert!(s.contains("user=bob"), "{s}");
    }
}

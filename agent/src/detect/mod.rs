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
    /// A hasher with a random key.
    pub fn random() -> Self {
        let mut key = [0u8; 32];
        if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
            let _ = std::io::Read::read_exact(&mut f, &mut key);
        }
        MatchHasher { key }
    }

    /// A hasher with a given key (tests, and replays that must agree).
    pub fn with_key(key: [u8; 32]) -> Self {
        MatchHasher { key }
    }

    /// The hash of `text`.
    pub fn hash(&self, text: &str) -> String {
        use sha2::Digest as _;
        let mut h = sha2::Sha256::new();
        h.update(self.key);
        h.update(text.as_bytes());
        let d = h.finalize();
        let mut out = String::from("hmac:");
        for b in &d[..8] {
            out.push_str(&format!("{b:02x}"));
        }
        out
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

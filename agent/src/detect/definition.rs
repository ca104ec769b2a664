//! Definitions: the tools, prompts and resources a server lists, read for what a model would
//! obey and a user would not see.

use super::{Hit, MatchHasher};
use crate::signal::security::RuleSet;

/// A match in one listed item.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ItemHit {
    /// The item's `name` (`uri` for a resource without one), when it has one.
    pub item: Option<String>,
    /// The match; its field is a path in the result (`tools[2].description`).
    pub hit: Hit,
}

/// Every match of the definition rules that `rules` has on in a `tools/list`, `prompts/list`,
/// `resources/list` or `resources/templates/list` result (its JSON text `raw`): names are
/// checked for invisible and look-alike characters, every other string of each item
/// (description, title, schema text, argument descriptions) for hidden instructions,
/// concealment, sensitive files, exfiltration URLs, invisible characters and base64 blobs.
/// Paths start at the result (`tools[0].inputSchema.properties.a.description`).
pub fn scan_list(raw: &str, rules: RuleSet, hasher: &MatchHasher) -> Vec<ItemHit> {
    let _ = (raw, rules, hasher);
    Vec::new()
}

/// Whether a tool name is distinctive enough that naming it in another server's description
/// means that tool (`send_email`, `readFile`), not a word (`add`, `search`).
pub fn distinctive(name: &str) -> bool {
    let _ = name;
    false
}

/// Whether `text` names `name` as a whole word (not inside a longer identifier).
pub fn mentions(text: &str, name: &str) -> bool {
    let _ = (text, name);
    false
}

/// What a new tool definition's `annotations` weakened against the old one: each as
/// `readOnlyHint: true → false` (a hint dropped counts as its default: readOnlyHint false,
/// destructiveHint true, idempotentHint false, openWorldHint true). `None` annotations are
/// all defaults.
pub fn weakened(old: Option<&serde_json::Value>, new: Option<&serde_json::Value>) -> Vec<String> {
    let _ = (old, new);
    Vec::new()
}

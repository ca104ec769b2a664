//! Definitions: the tools, prompts and resources a server lists, read for what a model would
//! obey and a user would not see.
//!
//! Each item of a list is read whole: its `name` for invisible and look-alike characters,
//! its `title` for those and for what a description should not say, and every other string
//! in it (description, schema descriptions, titles, enum values and defaults, argument
//! descriptions, annotation titles, URIs; never an object's keys) for what a description
//! should not say and invisible characters. `icons` are left out: they are pictures, often
//! `data:` URIs whose base64 is not a hidden message.

#[cfg(test)]
mod tests;
mod text;

use serde_json::{Map, Value};

use super::field::FieldPath;
use super::{Hit, MatchHasher};
use crate::signal::security::{Kind, RuleSet};
use text::Match;

/// A match in one listed item.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ItemHit {
    /// The item's `name` (`uri` for a resource without one), when it has one.
    pub item: Option<String>,
    /// The match; its field is a path in the result (`tools[2].description`).
    pub hit: Hit,
}

/// The keys of a list result that hold its items.
const LISTS: &[&str] = &["tools", "prompts", "resources", "resourceTemplates"];

/// Every match of the definition rules that `rules` has on in a `tools/list`, `prompts/list`,
/// `resources/list` or `resources/templates/list` result (parsed by the caller, which reads
/// the tools' annotations from the same value): names are
/// checked for invisible and look-alike characters, every other string of each item
/// (description, title, schema text, argument descriptions) for hidden instructions,
/// concealment, sensitive files, exfiltration URLs, invisible characters and base64 blobs.
/// Paths start at the result (`tools[0].inputSchema.properties.a.description`).
pub fn scan_list(result: &Value, rules: RuleSet, hasher: &MatchHasher) -> Vec<ItemHit> {
    let mut out = Vec::new();
    if !rules.any_of(Kind::Definition) {
        return out;
    }
    let Value::Object(result) = result else {
        return out;
    };
    let mut item = ItemScan {
        rules,
        hasher,
        path: FieldPath::new(""),
        hits: Vec::new(),
    };
    for list in LISTS {
        let Some(Value::Array(items)) = result.get(*list) else {
            continue;
        };
        let at_list = item.path.key(list);
        for (i, value) in items.iter().enumerate() {
            let Value::Object(fields) = value else {
                continue;
            };
            let at_item = item.path.index(i);
            item.fields(fields);
            let name = ["name", "uri", "uriTemplate"]
                .iter()
                .find_map(|k| fields.get(*k).and_then(Value::as_str));
            out.extend(item.hits.drain(..).map(|hit| ItemHit {
                item: name.map(str::to_owned),
                hit,
            }));
            item.path.back(at_item);
        }
        item.path.back(at_list);
    }
    out
}

/// Which checks a string of an item gets.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    /// The item's name: invisible and look-alike characters.
    Name,
    /// The item's title: what a name and what a description gets.
    Title,
    /// Any other string: invisible characters and what a description should not say.
    Text,
}

/// The walk over one item: the rules, the path it stands on, and the item's hits so far.
struct ItemScan<'a> {
    rules: RuleSet,
    hasher: &'a MatchHasher,
    path: FieldPath,
    hits: Vec<Hit>,
}

impl ItemScan<'_> {
    /// Every string of an item's fields, `name` and `title` as what they are.
    fn fields(&mut self, fields: &Map<String, Value>) {
        for (key, value) in fields {
            if key == "icons" {
                continue;
            }
            let role = match key.as_str() {
                "name" => Role::Name,
                "title" => Role::Title,
                _ => Role::Text,
            };
            let at = self.path.key(key);
            self.value(value, role);
            self.path.back(at);
        }
    }

    /// Every string of `value`: `role` for a string right here, [`Role::Text`] below.
    fn value(&mut self, value: &Value, role: Role) {
        match value {
            Value::String(s) => self.string(s, role),
            Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    let at = self.path.index(i);
                    self.value(item, Role::Text);
                    self.path.back(at);
                }
            }
            Value::Object(members) => {
                for (key, member) in members {
                    let at = self.path.key(key);
                    self.value(member, Role::Text);
                    self.path.back(at);
                }
            }
            Value::Null | Value::Bool(_) | Value::Number(_) => {}
        }
    }

    /// The checks `role` calls for on one string, each distinct match (rule and text) once.
    fn string(&mut self, s: &str, role: Role) {
        let mut matches = Vec::new();
        text::invisible(s, &mut matches);
        if role != Role::Text {
            text::homoglyph(s, &mut matches);
        }
        if role != Role::Name {
            text::phrases_in(s, &mut matches);
        }
        let first = self.hits.len();
        for Match {
            rule,
            hashed,
            detail,
        } in matches
        {
            if !self.rules.on(rule) {
                continue;
            }
            let hash = self.hasher.hash(&hashed);
            if self.hits[first..]
                .iter()
                .any(|h| h.rule == rule && h.hash == hash)
            {
                continue;
            }
            self.hits.push(Hit {
                rule,
                field: self.path.as_str().to_owned(),
                hash,
                detail,
            });
        }
    }
}

/// Whether `c` hides or reorders text when displayed (a tag character, a bidi control, a
/// zero-width character): a terminal shows it escaped.
pub fn is_invisible(c: char) -> bool {
    text::is_invisible(c)
}

/// Whether a tool name is distinctive enough that naming it in another server's description
/// means that tool (`send_email`, `readFile`), not a word (`add`, `search`): four characters
/// or more, with a `_`, `-` or `.` in it, or a lower-case letter followed by an upper-case
/// one. Structural only: `get_data` is distinctive by this rule.
pub fn distinctive(name: &str) -> bool {
    let camel = name
        .as_bytes()
        .windows(2)
        .any(|w| w[0].is_ascii_lowercase() && w[1].is_ascii_uppercase());
    name.chars().count() >= 4 && (name.contains(['_', '-', '.']) || camel)
}

/// The whole words of `text` that could name a tool ([`distinctive`] ones): a word is a run
/// of letters, digits, `_`, `-` and `.`, less the `.` and `-` that end a sentence or a dash
/// (so `send_email.` names `send_email`, and neither `send_email_v2` nor `resend_email`
/// does). Words, not a search for each name: a server's description is reduced to them
/// once, and compared with other servers' tool names as they come. Case-sensitive.
pub fn distinctive_words(text: &str) -> impl Iterator<Item = &str> {
    text.split(|c: char| !(c.is_alphanumeric() || c == '_' || c == '-' || c == '.'))
        .map(|w| w.trim_matches(|c| c == '.' || c == '-'))
        .filter(|w| distinctive(w))
}

/// The four hints with the value each has when it is left out, and whether it only means
/// something when `readOnlyHint` is false (MCP's `ToolAnnotations`). Each default assumes
/// the worst of a tool (writes, destroys, not idempotent, reaches the outside world), so a
/// hint weakens when it moves to its default.
const HINTS: &[(&str, bool, bool)] = &[
    ("readOnlyHint", false, false),
    ("destructiveHint", true, true),
    ("idempotentHint", false, true),
    ("openWorldHint", true, false),
];

/// What a new tool definition's `annotations` weakened against the old one: each as
/// `readOnlyHint: true → false` (a hint dropped counts as its default: readOnlyHint false,
/// destructiveHint true, idempotentHint false, openWorldHint true). `None` annotations are
/// all defaults.
///
/// Weaker means: no longer read-only, now destructive, no longer idempotent, now open-world.
/// `destructiveHint` and `idempotentHint` mean something only for a tool that is not
/// read-only, so their changes do not count when the new definition says `readOnlyHint`.
/// A hint that is not a boolean counts as left out.
pub fn weakened(old: Option<&serde_json::Value>, new: Option<&serde_json::Value>) -> Vec<String> {
    let hint = |a: Option<&Value>, key: &str, default: bool| {
        a.and_then(|a| a.get(key))
            .and_then(Value::as_bool)
            .unwrap_or(default)
    };
    let now_read_only = hint(new, "readOnlyHint", false);
    let mut out = Vec::new();
    for &(key, default, only_if_writing) in HINTS {
        if only_if_writing && now_read_only {
            continue;
        }
        let (was, is) = (hint(old, key, default), hint(new, key, default));
        if was != is && is == default {
            out.push(format!("{key}: {was} → {is}"));
        }
    }
    out
}

//! The security rules where MCP messages are first seen: the tracker hands each new request
//! and each new response here, with what the session knows, and gets back what the rules
//! found ([`Found`]), to ride on the exchange's record.
//!
//! What one message shows is [`crate::detect`]'s to find (secrets and personal data in
//! arguments and results, hidden instructions and invisible text in definitions, paths in
//! arguments). What needs memory is kept here:
//! - per session ([`SessionWatch`]): the roots the client declared, the definitions the
//!   session's latest list showed and those its calls were made under (a rug pull is a
//!   definition that changed after use), and the definition findings already reported (a
//!   list read again reports nothing new);
//! - per server name (the catalogue): the tools it offers, their annotations (a weakening is
//!   judged against the server's previous list, in any session), and the distinctive words
//!   of its descriptions that may name another server's tool;
//! - per client process: the servers it talks to, so that two of them offering one tool
//!   name, or one naming the other's tool, is seen.

use serde_json::Value;
use xxhash_rust::xxh3::xxh3_64;

use super::correlate::Found;
use super::message::{Message, Target};
use crate::bounded::{TableStat, insert_capped};
use crate::detect::{self, Hit, Scanner, definition, paths};
use crate::signal::Endpoint;
use crate::signal::security::{Finding, Rule};

/// Server names whose listings are remembered at most.
const MAX_SERVERS: usize = 4096;
/// Client processes whose servers are remembered at most.
const MAX_CLIENTS: usize = 4096;
/// Servers remembered per client process; past it the oldest goes.
const SERVERS_PER_CLIENT: usize = 32;
/// Tools (and words of descriptions) remembered per server.
const TOOLS_PER_SERVER: usize = 512;
/// Definition findings remembered per session, not to report them again on a re-list.
const REPORTED_PER_SESSION: usize = 1024;
/// Tools a session remembers the definitions of.
const TOOLS_PER_SESSION: usize = 1024;

/// What one session's messages taught the rules.
#[derive(Debug, Default)]
pub(super) struct SessionWatch {
    /// The roots the client declared (as paths), from its latest `roots/list` answer.
    roots: Option<Vec<String>>,
    /// Each tool's definition in the session's latest `tools/list`.
    listed: crate::FastMap<String, Parts>,
    /// Tools called since they were listed, with the definition they were called under.
    called: crate::FastMap<String, Parts>,
    /// Definition findings reported in this session (hashes of rule, item, field, match).
    reported: crate::FastSet<u64>,
}

/// Hashes of a tool definition's parts: the whole, and the parts a change is named by.
type Parts = [u64; 4];

/// The parts [`Parts`] hashes after the whole.
const PART_NAMES: [&str; 3] = ["description", "inputSchema", "annotations"];

fn parts(tool: &Value) -> Parts {
    let h = |v: Option<&Value>| v.map_or(0, |v| xxh3_64(v.to_string().as_bytes()));
    [
        h(Some(tool)),
        h(tool.get(PART_NAMES[0])),
        h(tool.get(PART_NAMES[1])),
        h(tool.get(PART_NAMES[2])),
    ]
}

/// A tool a server offers, as its latest list showed it.
#[derive(Debug)]
struct ListedTool {
    name: String,
    annotations: Option<Value>,
}

/// A distinctive word in a server's description that may name another server's tool.
#[derive(Debug)]
struct Mention {
    word: String,
    /// The tool whose description it is in, and where.
    tool: String,
    field: String,
}

/// A server's latest listing.
#[derive(Debug, Default)]
struct Listing {
    tools: Vec<ListedTool>,
    mentions: Vec<Mention>,
    /// The catalogue's count of listings when this one was made (for eviction).
    at: u64,
}

/// What the inspector counted.
#[derive(Clone, Debug, Default)]
pub struct InspectStats {
    /// Findings made.
    pub findings: u64,
    /// Server listings forgotten to stay under the cap.
    pub evicted_servers: u64,
    /// Client processes forgotten to stay under the cap.
    pub evicted_clients: u64,
}

/// The rules' memory over sessions (see the module's documentation).
#[derive(Debug, Default)]
pub(super) struct Inspector {
    scanner: Option<Scanner>,
    catalogue: crate::FastMap<String, Listing>,
    /// Client pid → the server names it listed tools of, latest last; and when.
    clients: crate::FastMap<u32, (Vec<String>, u64)>,
    lists: u64,
    pub stats: InspectStats,
}

/// What the tracker knows of a response when it hands it over.
pub(super) struct Answer<'m, 'a> {
    /// The request's method.
    pub method: &'m str,
    /// The server's name.
    pub server: &'m str,
    /// The client's process, when known.
    pub client_pid: Option<u32>,
    /// The response.
    pub msg: &'m Message<'a>,
    /// Wall-clock time of the message.
    pub ts_ns: u64,
}

fn found(
    rule: Rule,
    ts_ns: u64,
    hit_field: String,
    hash: Option<String>,
    in_response: bool,
) -> Found {
    let mut finding = Finding::new(rule, ts_ns, Endpoint::default());
    finding.field = Some(hit_field);
    finding.match_hash = hash;
    Found {
        finding,
        in_response,
    }
}

fn from_hit(hit: Hit, ts_ns: u64, in_response: bool) -> Found {
    let mut f = found(hit.rule, ts_ns, hit.field, Some(hit.hash), in_response);
    f.finding.detail = hit.detail;
    f
}

impl Inspector {
    /// An inspector that applies `scanner`'s rules; none when no rule is on.
    pub fn new(scanner: Option<Scanner>) -> Self {
        Inspector {
            scanner: scanner.filter(|s| s.rules.any()),
            ..Default::default()
        }
    }

    /// The tables it holds.
    pub fn tables(&self) -> Vec<TableStat> {
        vec![
            TableStat::new(
                "security_servers",
                self.catalogue.len(),
                MAX_SERVERS,
                self.stats.evicted_servers,
            ),
            TableStat::new(
                "security_clients",
                self.clients.len(),
                MAX_CLIENTS,
                self.stats.evicted_clients,
            ),
        ]
    }

    /// A new request: secrets in its arguments, paths outside the roots, and the tool called
    /// (for rug pulls).
    pub fn request(
        &mut self,
        watch: &mut Option<Box<SessionWatch>>,
        msg: &Message<'_>,
        ts_ns: u64,
    ) -> Vec<Found> {
        let Some(sc) = &self.scanner else {
            return Vec::new();
        };
        let mut out = Vec::new();
        if let Some(args) = msg.arguments.as_deref() {
            let mut hits = Vec::new();
            detect::content::scan_json(args, "params.arguments", sc.rules, &sc.hasher, &mut hits);
            out.extend(hits.into_iter().map(|h| from_hit(h, ts_ns, false)));
        }
        let roots = watch.as_ref().and_then(|w| w.roots.as_deref());
        if sc.rules.on(Rule::OutsideRoots)
            && let Some(roots) = roots
        {
            for (field, path) in named_paths(msg) {
                if !paths::within(&path, roots) {
                    let hash = sc.hasher.hash(&path);
                    out.push(found(Rule::OutsideRoots, ts_ns, field, Some(hash), false));
                }
            }
        }
        // Only a session that listed its tools has definitions to call a tool under.
        if let Target::Tool(tool) = &msg.target
            && sc.rules.on(Rule::ChangedAfterUse)
            && let Some(w) = watch.as_mut()
        {
            // Looked up before the name is copied: most calls repeat a tool already called.
            if !w.called.contains_key(&**tool)
                && let Some(def) = w.listed.get(&**tool).copied()
                && w.called.len() < TOOLS_PER_SESSION
            {
                w.called.insert(tool.to_string(), def);
            }
        }
        self.stats.findings += out.len() as u64;
        out
    }

    /// A new response: secrets in results, definition rules on lists, a client's roots.
    pub fn response(
        &mut self,
        watch: &mut Option<Box<SessionWatch>>,
        a: &Answer<'_, '_>,
    ) -> Vec<Found> {
        let (Some(sc), Some(raw)) = (&self.scanner, a.msg.raw_result) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        match a.method {
            "tools/call" | "resources/read" | "prompts/get" => {
                let mut hits = Vec::new();
                detect::content::scan_json(raw, "result", sc.rules, &sc.hasher, &mut hits);
                out.extend(hits.into_iter().map(|h| from_hit(h, a.ts_ns, true)));
            }
            "tools/list" | "prompts/list" | "resources/list" | "resources/templates/list" => {
                let w = watch.get_or_insert_with(Default::default);
                out = self.listing(w, a, raw);
            }
            "roots/list" => {
                let w = watch.get_or_insert_with(Default::default);
                w.roots = Some(declared_roots(raw));
            }
            _ => {}
        }
        self.stats.findings += out.len() as u64;
        out
    }

    /// A list's findings: definition rules, and for tools the rug pulls and shadowing.
    fn listing(&mut self, w: &mut SessionWatch, a: &Answer<'_, '_>, raw: &str) -> Vec<Found> {
        let sc = self.scanner.as_ref().expect("checked by the caller");
        let mut out = Vec::new();
        // Parsed once, for the definition rules and the tools' annotations both.
        let v: Value = serde_json::from_str(raw).unwrap_or(Value::Null);
        for ih in definition::scan_list(&v, sc.rules, &sc.hasher) {
            let mut f = from_hit(ih.hit, a.ts_ns, true);
            f.finding.tool = ih.item;
            f.finding.field = f.finding.field.map(|p| format!("result.{p}"));
            out.push(f);
        }
        if a.method == "tools/list"
            && let Some(tools) = v.get("tools").and_then(Value::as_array)
        {
            out.extend(self.rug_pulls(w, a, tools));
            out.extend(self.shadowing(a, tools));
        }
        // A list read again says what it said: only what this session was not told yet.
        out.retain(|f| {
            let key = finding_key(&f.finding);
            w.reported.len() >= REPORTED_PER_SESSION || w.reported.insert(key)
        });
        out
    }

    /// Tools whose definition changed after they were called in this session, and tools
    /// whose annotations are weaker than the server's previous list said.
    fn rug_pulls(
        &mut self,
        w: &mut SessionWatch,
        a: &Answer<'_, '_>,
        tools: &[Value],
    ) -> Vec<Found> {
        let sc = self.scanner.as_ref().expect("checked by the caller");
        let mut out = Vec::new();
        let before = self.catalogue.get(a.server);
        let mut listed = crate::FastMap::default();
        for (i, t) in tools.iter().enumerate().take(TOOLS_PER_SESSION) {
            let Some(name) = t.get("name").and_then(Value::as_str) else {
                continue;
            };
            let def = parts(t);
            listed.insert(name.to_string(), def);
            if sc.rules.on(Rule::ChangedAfterUse)
                && let Some(used) = w.called.get(name)
                && used[0] != def[0]
            {
                let field = format!("result.tools[{i}]");
                let mut f = found(Rule::ChangedAfterUse, a.ts_ns, field, None, true);
                f.finding.tool = Some(name.to_string());
                f.finding.detail = Some(changed_parts(used, &def));
                out.push(f);
                w.called.remove(name);
            }
            let old = before.and_then(|l| l.tools.iter().find(|o| o.name == name));
            if sc.rules.on(Rule::AnnotationsWeakened)
                && let Some(old) = old
            {
                let weaker = definition::weakened(old.annotations.as_ref(), t.get("annotations"));
                if !weaker.is_empty() {
                    let field = format!("result.tools[{i}].annotations");
                    let mut f = found(Rule::AnnotationsWeakened, a.ts_ns, field, None, true);
                    f.finding.tool = Some(name.to_string());
                    f.finding.detail = Some(weaker.join(", "));
                    out.push(f);
                }
            }
        }
        w.listed = listed;
        out
    }

    /// Shadowing between this server and the other servers its client talks to; this
    /// listing then replaces the server's old one in the catalogue.
    fn shadowing(&mut self, a: &Answer<'_, '_>, tools: &[Value]) -> Vec<Found> {
        let rules = self.scanner.as_ref().expect("checked by the caller").rules;
        let listing = self.listing_of(tools);
        let mut out = Vec::new();
        let others: Vec<String> = a
            .client_pid
            .and_then(|pid| self.clients.get(&pid))
            .map(|(names, _)| names.iter().filter(|n| *n != a.server).cloned().collect())
            .unwrap_or_default();
        for other in &others {
            let Some(theirs) = self.catalogue.get(other) else {
                continue;
            };
            if rules.on(Rule::ShadowedTool) {
                out.extend(shadowed(a, &listing, theirs, other));
            }
            if rules.on(Rule::CrossServerReference) {
                // Ours naming theirs, and theirs naming ours (their list came first).
                out.extend(references(a, &listing, a.server, theirs, other));
                out.extend(references(a, theirs, other, &listing, a.server));
            }
        }
        self.remember(a, listing);
        out
    }

    /// The catalogue's entry for a tools list.
    fn listing_of(&mut self, tools: &[Value]) -> Listing {
        self.lists += 1;
        let mut l = Listing {
            at: self.lists,
            ..Default::default()
        };
        for (i, t) in tools.iter().enumerate().take(TOOLS_PER_SERVER) {
            let Some(name) = t.get("name").and_then(Value::as_str) else {
                continue;
            };
            l.tools.push(ListedTool {
                name: name.to_string(),
                annotations: t.get("annotations").cloned(),
            });
            let desc = t.get("description").and_then(Value::as_str).unwrap_or("");
            for word in definition::distinctive_words(desc) {
                if l.mentions.len() < TOOLS_PER_SERVER && word != name {
                    l.mentions.push(Mention {
                        word: word.to_string(),
                        tool: name.to_string(),
                        field: format!("result.tools[{i}].description"),
                    });
                }
            }
        }
        l
    }

    /// Keep a server's listing and its client's link to it, within the caps.
    fn remember(&mut self, a: &Answer<'_, '_>, listing: Listing) {
        let at = |l: &Listing| l.at;
        let evicted = &mut self.stats.evicted_servers;
        let catalogue = &mut self.catalogue;
        insert_capped(
            catalogue,
            a.server.to_string(),
            listing,
            MAX_SERVERS,
            at,
            evicted,
        );
        let Some(pid) = a.client_pid else {
            return;
        };
        let (mut names, _) = self.clients.remove(&pid).unwrap_or_default();
        names.retain(|n| n != a.server);
        names.push(a.server.to_string());
        if names.len() > SERVERS_PER_CLIENT {
            names.remove(0);
        }
        let at = |(_, at): &(Vec<String>, u64)| *at;
        let evicted = &mut self.stats.evicted_clients;
        insert_capped(
            &mut self.clients,
            pid,
            (names, self.lists),
            MAX_CLIENTS,
            at,
            evicted,
        );
    }

    /// A client process exited: the servers it talked to no longer meet through it.
    pub fn process_exit(&mut self, pid: u32) {
        self.clients.remove(&pid);
    }
}

/// Tools of `ours` that `theirs` offers too.
fn shadowed(a: &Answer<'_, '_>, ours: &Listing, theirs: &Listing, other: &str) -> Vec<Found> {
    let mut out = Vec::new();
    for (i, t) in ours.tools.iter().enumerate() {
        if theirs.tools.iter().any(|o| o.name == t.name) {
            let field = format!("result.tools[{i}].name");
            let mut f = found(Rule::ShadowedTool, a.ts_ns, field, None, true);
            f.finding.tool = Some(t.name.clone());
            f.finding.detail = Some(format!("also offered by {other}"));
            out.push(f);
        }
    }
    out
}

/// Descriptions of `from` (server `from_name`) that name a distinctive tool of `to`.
fn references(
    a: &Answer<'_, '_>,
    from: &Listing,
    from_name: &str,
    to: &Listing,
    to_name: &str,
) -> Vec<Found> {
    let mut out = Vec::new();
    for m in &from.mentions {
        if to.tools.iter().any(|t| t.name == m.word) && !from.tools.iter().any(|t| t.name == m.word)
        {
            let mut f = found(
                Rule::CrossServerReference,
                a.ts_ns,
                m.field.clone(),
                None,
                true,
            );
            f.finding.tool = Some(m.tool.clone());
            f.finding.server = Some(from_name.to_string());
            f.finding.detail = Some(format!("names {to_name}'s tool {}", m.word));
            out.push(f);
        }
    }
    out
}

/// Which parts of a tool's definition changed: named, never quoted.
fn changed_parts(before: &Parts, now: &Parts) -> String {
    let changed: Vec<&str> = PART_NAMES
        .iter()
        .zip(before[1..].iter().zip(&now[1..]))
        .filter(|(_, (b, n))| b != n)
        .map(|(name, _)| *name)
        .collect();
    if changed.is_empty() {
        "changed: other fields".to_string()
    } else {
        format!("changed: {}", changed.join(", "))
    }
}

/// The dedupe key of a definition finding: its rule and where (a field is named once per
/// rule, however many matches it holds).
fn finding_key(f: &Finding) -> u64 {
    let text = [
        f.rule.id(),
        f.server.as_deref().unwrap_or(""),
        f.tool.as_deref().unwrap_or(""),
        f.field.as_deref().unwrap_or(""),
    ]
    .join("\u{0}");
    xxh3_64(text.as_bytes())
}

/// The paths a request names: a tool call's path arguments, a resource read's `file://` URI.
fn named_paths(msg: &Message<'_>) -> Vec<(String, String)> {
    match (&msg.target, msg.arguments.as_deref()) {
        (Target::Tool(_), Some(args)) => paths::in_arguments(args, "params.arguments"),
        (Target::Resource(uri), _) => paths::from_file_uri(uri)
            .map(|p| vec![("params.uri".to_string(), p)])
            .unwrap_or_default(),
        _ => Vec::new(),
    }
}

/// The roots of a `roots/list` result, as paths (`file://` URIs only).
fn declared_roots(raw: &str) -> Vec<String> {
    let v: Value = serde_json::from_str(raw).unwrap_or(Value::Null);
    v.get("roots")
        .and_then(Value::as_array)
        .map(|roots| {
            roots
                .iter()
                .filter_map(|r| r.get("uri").and_then(Value::as_str))
                .filter_map(paths::from_file_uri)
                .collect()
        })
        .unwrap_or_default()
}

//! Stage 6, security: the findings that need more than one message, made from the signals on
//! their way out (beside [`crate::agentic`] and [`crate::health`]).
//!
//! - A secret or personal data an MCP exchange carried, then seen in a request to a model
//!   provider, is a `leak_to_model` finding (rule `sent-to-model`) on the model call: the
//!   matches are joined by their keyed hash, which the tracker and the model API reader share.
//!   A model call's other content findings stay as they are; the conversation is sent again
//!   every turn, so each (process, rule, match) is reported once.
//! - The first MCP traffic of an executable not listed in `--known-executables` is a
//!   `new-executable` finding on that exchange; the file learns it. Without the file the rule
//!   has no memory of the host, and reports nothing.
//!
//! The findings of one message (definitions, secrets, paths outside the roots) are made where
//! the message is read: [`crate::mcp`]'s tracker and [`crate::llm`].

use std::io::Write as _;
use std::path::PathBuf;

use crate::FastMap;
use crate::bounded::TableStat;
use crate::signal::security::{Finding, Kind, Rule, RuleSet};
use crate::signal::{Endpoint, Exchange, LlmCall, Signal};

/// MCP matches remembered for the join with model requests.
const MAX_MATCHES: usize = 16_384;
/// (process, rule, match) of model traffic already reported.
const MAX_MODEL_SEEN: usize = 65_536;
/// Executables remembered.
const MAX_EXECUTABLES: usize = 16_384;

/// Settings of the stage (and of the rules everywhere).
#[derive(Clone, Debug, Default)]
pub struct Config {
    /// The rules that are on.
    pub rules: RuleSet,
    /// The executables known to speak MCP on this host, one path a line; new ones are
    /// reported and appended.
    pub known_executables: Option<PathBuf>,
}

/// What the stage counted.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    /// Model-call findings turned into `leak_to_model`.
    pub leaks: u64,
    /// Model-call findings dropped as already reported for that process.
    pub repeats: u64,
    /// Entries forgotten to stay under the caps: MCP matches, model matches, executables.
    pub evicted: [u64; 3],
    /// Writes to the known-executables file that failed.
    pub write_errors: u64,
}

/// Where an MCP match was seen.
#[derive(Clone, Debug)]
struct Origin {
    server: Option<String>,
    tool: Option<String>,
    at: u64,
}

/// The stage.
pub struct Security {
    cfg: Config,
    matches: FastMap<String, Origin>,
    model_seen: FastMap<(u32, Rule, String), u64>,
    executables: FastMap<String, u64>,
    seq: u64,
    /// Counters.
    pub stats: Stats,
}

impl Security {
    /// The stage with `cfg`; the known executables are read from their file.
    pub fn new(cfg: Config) -> Self {
        let mut executables = FastMap::default();
        if let Some(path) = &cfg.known_executables
            && let Ok(text) = std::fs::read_to_string(path)
        {
            for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
                executables.insert(line.to_string(), 0);
            }
        }
        Security {
            cfg,
            matches: FastMap::default(),
            model_seen: FastMap::default(),
            executables,
            seq: 0,
            stats: Stats::default(),
        }
    }

    /// Read the known-executables file for a clear error at start: it must be readable
    /// when it exists, and creatable when it does not.
    pub fn check_file(path: &std::path::Path) -> Result<(), String> {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map(|_| ())
            .map_err(|e| format!("--known-executables {}: {e}", path.display()))
    }

    /// The tables it holds.
    pub fn tables(&self) -> Vec<TableStat> {
        vec![
            TableStat::new(
                "security_matches",
                self.matches.len(),
                MAX_MATCHES,
                self.stats.evicted[0],
            ),
            TableStat::new(
                "security_model_matches",
                self.model_seen.len(),
                MAX_MODEL_SEEN,
                self.stats.evicted[1],
            ),
            TableStat::new(
                "known_executables",
                self.executables.len(),
                MAX_EXECUTABLES,
                self.stats.evicted[2],
            ),
        ]
    }

    /// Signals on their way out: findings added to them, in place.
    pub fn observe(&mut self, signals: &mut [Signal]) {
        if !self.cfg.rules.any() {
            return;
        }
        for s in signals {
            match s {
                Signal::Exchange(x) => self.exchange(x),
                Signal::LlmCall(c) => self.model_call(c),
                _ => {}
            }
        }
    }

    fn exchange(&mut self, x: &mut Exchange) {
        for f in &x.findings {
            if matches!(f.finding, Kind::Secret | Kind::Pii)
                && let Some(h) = &f.match_hash
            {
                self.seq += 1;
                let origin = Origin {
                    server: f.server.clone(),
                    tool: f.tool.clone(),
                    at: self.seq,
                };
                crate::bounded::insert_capped(
                    &mut self.matches,
                    h.clone(),
                    origin,
                    MAX_MATCHES,
                    |o| o.at,
                    &mut self.stats.evicted[0],
                );
            }
        }
        if self.cfg.known_executables.is_some() && self.cfg.rules.on(Rule::NewExecutable) {
            // Borrowed: an endpoint is copied only into a finding, for an executable new here.
            for end in [&x.client, &x.server] {
                if let Some(mut f) = self.new_executable(end, x.ts_ns) {
                    f.session = x.session.clone();
                    f.server = x
                        .server
                        .name
                        .clone()
                        .or_else(|| Some(x.server.comm.clone()));
                    f.method = Some(x.method.clone());
                    x.findings.push(f);
                }
            }
        }
    }

    /// A finding when `end`'s executable is new to MCP on this host; it is learned.
    fn new_executable(&mut self, end: &Endpoint, ts_ns: u64) -> Option<Finding> {
        if end.exe.is_empty() || self.executables.contains_key(&end.exe) {
            return None;
        }
        self.seq += 1;
        let exe = end.exe.clone();
        crate::bounded::insert_capped(
            &mut self.executables,
            exe.clone(),
            self.seq,
            MAX_EXECUTABLES,
            |at| *at,
            &mut self.stats.evicted[2],
        );
        self.append_known(&exe);
        Some(Finding::new(Rule::NewExecutable, ts_ns, end.clone()))
    }

    fn append_known(&mut self, exe: &str) {
        let Some(path) = &self.cfg.known_executables else {
            return;
        };
        let wrote = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .and_then(|mut f| writeln!(f, "{exe}"));
        if let Err(e) = wrote {
            self.stats.write_errors += 1;
            log::warn!("--known-executables {}: {e}", path.display());
        }
    }

    /// A model call's content findings: a match an MCP exchange carried becomes a leak to
    /// the model; each (process, rule, match) is reported once.
    fn model_call(&mut self, c: &mut LlmCall) {
        let pid = c.process.pid.unwrap_or(0);
        let mut kept = Vec::with_capacity(c.findings.len());
        for mut f in std::mem::take(&mut c.findings) {
            let Some(h) = f.match_hash.clone() else {
                kept.push(f);
                continue;
            };
            let from_mcp = f.field.as_deref().is_some_and(|p| p.starts_with("request"))
                && self.cfg.rules.on(Rule::SentToModel);
            let origin = self.matches.get(&h).filter(|_| from_mcp);
            if let Some(origin) = origin {
                f.detail = Some(format!("{} first seen in an MCP message", f.rule.id()));
                f.rule = Rule::SentToModel;
                f.finding = Rule::SentToModel.kind();
                f.severity = Rule::SentToModel.severity();
                f.server = origin.server.clone();
                f.tool = origin.tool.clone();
            }
            self.seq += 1;
            let key = (pid, f.rule, h);
            if self.model_seen.contains_key(&key) {
                self.stats.repeats += 1;
                continue;
            }
            if f.rule == Rule::SentToModel {
                self.stats.leaks += 1;
            }
            crate::bounded::insert_capped(
                &mut self.model_seen,
                key,
                self.seq,
                MAX_MODEL_SEEN,
                |at| *at,
                &mut self.stats.evicted[1],
            );
            kept.push(f);
        }
        c.findings = kept;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn finding(rule: Rule, hash: &str, field: &str, pid: u32) -> Finding {
        let mut f = Finding::new(
            rule,
            1,
            Endpoint {
                pid: Some(pid),
                ..Default::default()
            },
        );
        f.match_hash = Some(hash.into());
        f.field = Some(field.into());
        f
    }

    fn call(pid: u32, findings: Vec<Finding>) -> Signal {
        Signal::LlmCall(Box::new(LlmCall {
            process: Endpoint {
                pid: Some(pid),
                ..Default::default()
            },
            findings,
            ..Default::default()
        }))
    }

    fn findings_of(s: &Signal) -> Vec<(Rule, Option<String>)> {
        match s {
            Signal::LlmCall(c) => c
                .findings
                .iter()
                .map(|f| (f.rule, f.server.clone()))
                .collect(),
            Signal::Exchange(x) => x
                .findings
                .iter()
                .map(|f| (f.rule, f.server.clone()))
                .collect(),
            _ => Vec::new(),
        }
    }

    #[test]
    fn an_mcp_match_in_a_model_request_is_a_leak_reported_once_per_process() {
        let mut st = Security::new(Config::default());
        let mut from_mcp = finding(Rule::PrivateKey, "hmac:aa", "result.content[0].text", 2);
        from_mcp.server = Some("vault".into());
        let mut signals = vec![
            Signal::Exchange(Exchange {
                findings: vec![from_mcp],
                ..Default::default()
            }),
            call(
                1,
                vec![
                    finding(
                        Rule::PrivateKey,
                        "hmac:aa",
                        "request.messages[2].content",
                        1,
                    ),
                    finding(Rule::Email, "hmac:bb", "request.messages[0].content", 1),
                ],
            ),
            // The next turn sends the conversation again.
            call(
                1,
                vec![finding(
                    Rule::PrivateKey,
                    "hmac:aa",
                    "request.messages[2].content",
                    1,
                )],
            ),
            // A reply that holds it is not a request that sent it.
            call(
                3,
                vec![finding(
                    Rule::PrivateKey,
                    "hmac:aa",
                    "response.content[0].text",
                    3,
                )],
            ),
        ];
        st.observe(&mut signals);
        assert_eq!(
            findings_of(&signals[1]),
            [
                (Rule::SentToModel, Some("vault".into())),
                (Rule::Email, None)
            ]
        );
        assert!(findings_of(&signals[2]).is_empty());
        assert_eq!(findings_of(&signals[3]), [(Rule::PrivateKey, None)]);
        assert_eq!((st.stats.leaks, st.stats.repeats), (1, 1));
    }

    #[test]
    fn executables_not_known_are_found_once_and_learned() {
        let dir = std::env::temp_dir().join(format!("mcptap-known-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("known");
        std::fs::write(&file, "/usr/bin/client\n").unwrap();
        let cfg = Config {
            known_executables: Some(file.clone()),
            ..Default::default()
        };
        let x = |exe: &str| {
            Signal::Exchange(Exchange {
                client: Endpoint {
                    exe: "/usr/bin/client".into(),
                    ..Default::default()
                },
                server: Endpoint {
                    exe: exe.into(),
                    name: Some("srv".into()),
                    ..Default::default()
                },
                ..Default::default()
            })
        };
        let mut st = Security::new(cfg.clone());
        let mut signals = vec![x("/opt/new-server"), x("/opt/new-server")];
        st.observe(&mut signals);
        assert_eq!(
            findings_of(&signals[0]),
            [(Rule::NewExecutable, Some("srv".into()))]
        );
        assert!(findings_of(&signals[1]).is_empty());
        let known = std::fs::read_to_string(&file).unwrap();
        assert_eq!(known, "/usr/bin/client\n/opt/new-server\n");
        // The next run knows it.
        let mut again = vec![x("/opt/new-server")];
        Security::new(cfg).observe(&mut again);
        assert!(findings_of(&again[0]).is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

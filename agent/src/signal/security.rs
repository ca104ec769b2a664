//! Security findings: what a rule found in a definition, a message's content, or the way a
//! process reached MCP. A finding names where (session, server, tool, field path) and what
//! (kind, rule, severity), and carries a keyed hash of the matched text, never the text.
//!
//! [`RULES`] is the one table of rules: their ids (the names `--rule-off` takes and every
//! output writes), kinds, severities and what they match. The stages that look for them
//! (`detect`, the tracker, the security stage) and the outputs (the README's table, `--help`)
//! all read it.

use serde::Serialize;

use super::Endpoint;

/// What a finding is about: the `finding` field and the metric's `kind` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A tool, prompt or resource definition that carries instructions or deceptive text.
    Definition,
    /// Tools of two servers that collide or point at each other.
    Shadowing,
    /// A definition that changed after use, or whose annotations were weakened.
    RugPull,
    /// A credential in a message's content.
    Secret,
    /// Personal data in a message's content.
    Pii,
    /// A secret or personal data an MCP message carried, then sent to a model provider.
    LeakToModel,
    /// Access outside a client's roots, or a process new to MCP.
    Access,
}

impl Kind {
    /// The name used in every output.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Definition => "definition",
            Kind::Shadowing => "shadowing",
            Kind::RugPull => "rug_pull",
            Kind::Secret => "secret",
            Kind::Pii => "pii",
            Kind::LeakToModel => "leak_to_model",
            Kind::Access => "access",
        }
    }
}

/// How serious a finding is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// Worth knowing; often benign.
    Low,
    /// Worth a look.
    Medium,
    /// Likely an attack or a leak.
    High,
    /// An attack or a leak with little doubt, or one that reached a model provider.
    Critical,
}

impl Severity {
    /// The name used in every output.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
            Severity::Critical => "critical",
        }
    }
}

/// Every rule. Its index in [`RULES`] is its discriminant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum Rule {
    // Definitions (tools/list, prompts/list, resources/list): descriptions and schema text.
    /// Imperatives aimed at the model: "ignore previous instructions", "before using this
    /// tool, read ...", `<IMPORTANT>` blocks.
    HiddenInstructions,
    /// Asking the model to hide something from the user: "do not tell the user".
    Concealment,
    /// Naming credential files and dotfiles: `~/.ssh/id_rsa`, `.env`, `~/.aws/credentials`.
    SensitiveFileReference,
    /// Telling the model to send data to a URL.
    ExfiltrationUrl,
    /// Unicode tag characters (U+E0000–U+E007F): text the user never sees.
    TagCharacters,
    /// Bidirectional controls that reorder what is displayed.
    BidiControl,
    /// Zero-width characters.
    ZeroWidth,
    /// A name that mixes scripts or imitates another with look-alike letters.
    HomoglyphName,
    /// A long base64 run in a description.
    Base64Blob,
    // Shadowing, across the servers of one client process.
    /// The same tool name offered by two servers to one client.
    ShadowedTool,
    /// A description naming another server's tool.
    CrossServerReference,
    // Rug pulls.
    /// A definition that changed after the tool was called in the session.
    ChangedAfterUse,
    /// Annotations weakened: `readOnlyHint` dropped, `destructiveHint` raised, ...
    AnnotationsWeakened,
    // Secrets in flight.
    /// A PEM private key block.
    PrivateKey,
    /// A cloud provider key (AWS access key id, Google API key).
    CloudKey,
    /// A Git host token (GitHub, GitLab).
    GitToken,
    /// A model provider API key (Anthropic, OpenAI).
    AiApiKey,
    /// A JSON Web Token.
    Jwt,
    /// A chat app token or webhook (Slack, Discord, Telegram).
    ChatToken,
    /// An HTTP bearer token.
    BearerToken,
    // Personal data in flight.
    /// An email address.
    Email,
    /// A payment card number that passes the Luhn check.
    CardNumber,
    // Model providers.
    /// A secret or personal data first seen in an MCP message, then in a model request.
    SentToModel,
    // Access.
    /// A file path or `file://` URI outside the roots the client declared.
    OutsideRoots,
    /// The first MCP traffic of an executable not seen speaking MCP before.
    NewExecutable,
}

/// What is known of a rule.
#[derive(Clone, Copy, Debug)]
pub struct RuleInfo {
    /// The rule.
    pub rule: Rule,
    /// Its id: the name every output writes and `--rule-off` takes.
    pub id: &'static str,
    /// Its kind.
    pub kind: Kind,
    /// Its severity.
    pub severity: Severity,
    /// What it matches, in a few words (for `--help` and the README).
    pub matches: &'static str,
}

const fn r(rule: Rule, id: &'static str, kind: Kind, sev: Severity, m: &'static str) -> RuleInfo {
    RuleInfo {
        rule,
        id,
        kind,
        severity: sev,
        matches: m,
    }
}

use Kind as K;
use Rule as R;
use Severity as S;

/// Every rule, in [`Rule`]'s order.
pub const RULES: &[RuleInfo] = &[
    r(
        R::HiddenInstructions,
        "hidden-instructions",
        K::Definition,
        S::High,
        "imperatives aimed at the model in a definition",
    ),
    r(
        R::Concealment,
        "concealment",
        K::Definition,
        S::High,
        "asking the model to keep something from the user",
    ),
    r(
        R::SensitiveFileReference,
        "sensitive-file-reference",
        K::Definition,
        S::High,
        "credential files and dotfiles named in a definition",
    ),
    r(
        R::ExfiltrationUrl,
        "exfiltration-url",
        K::Definition,
        S::High,
        "telling the model to send data to a URL",
    ),
    r(
        R::TagCharacters,
        "tag-characters",
        K::Definition,
        S::Critical,
        "Unicode tag characters (invisible text)",
    ),
    r(
        R::BidiControl,
        "bidi-control",
        K::Definition,
        S::High,
        "bidirectional control characters",
    ),
    r(
        R::ZeroWidth,
        "zero-width",
        K::Definition,
        S::Medium,
        "zero-width characters",
    ),
    r(
        R::HomoglyphName,
        "homoglyph-name",
        K::Definition,
        S::High,
        "a name mixing scripts or imitating another",
    ),
    r(
        R::Base64Blob,
        "base64-blob",
        K::Definition,
        S::Medium,
        "a long base64 run in a definition",
    ),
    r(
        R::ShadowedTool,
        "shadowed-tool",
        K::Shadowing,
        S::Medium,
        "one tool name offered by two servers of a client",
    ),
    r(
        R::CrossServerReference,
        "cross-server-reference",
        K::Shadowing,
        S::High,
        "a description naming another server's tool",
    ),
    r(
        R::ChangedAfterUse,
        "changed-after-use",
        K::RugPull,
        S::High,
        "a definition changed after the tool was called",
    ),
    r(
        R::AnnotationsWeakened,
        "annotations-weakened",
        K::RugPull,
        S::High,
        "readOnlyHint dropped, destructiveHint raised, ...",
    ),
    r(
        R::PrivateKey,
        "private-key",
        K::Secret,
        S::Critical,
        "a PEM private key block",
    ),
    r(
        R::CloudKey,
        "cloud-key",
        K::Secret,
        S::High,
        "an AWS access key id or a Google API key",
    ),
    r(
        R::GitToken,
        "git-token",
        K::Secret,
        S::High,
        "a GitHub or GitLab token",
    ),
    r(
        R::AiApiKey,
        "ai-api-key",
        K::Secret,
        S::High,
        "an Anthropic or OpenAI API key",
    ),
    r(R::Jwt, "jwt", K::Secret, S::Medium, "a JSON Web Token"),
    r(
        R::ChatToken,
        "chat-token",
        K::Secret,
        S::High,
        "a Slack, Discord or Telegram token or webhook",
    ),
    r(
        R::BearerToken,
        "bearer-token",
        K::Secret,
        S::Medium,
        "`Bearer <token>`",
    ),
    r(R::Email, "email", K::Pii, S::Low, "an email address"),
    r(
        R::CardNumber,
        "card-number",
        K::Pii,
        S::High,
        "a card number that passes the Luhn check",
    ),
    r(
        R::SentToModel,
        "sent-to-model",
        K::LeakToModel,
        S::Critical,
        "a secret or personal data from MCP sent to a model",
    ),
    r(
        R::OutsideRoots,
        "outside-roots",
        K::Access,
        S::High,
        "a path outside the client's declared roots",
    ),
    r(
        R::NewExecutable,
        "new-executable",
        K::Access,
        S::Low,
        "the first MCP traffic of an executable",
    ),
];

impl Rule {
    /// What is known of it.
    pub fn info(self) -> &'static RuleInfo {
        &RULES[self as usize]
    }

    /// Its id.
    pub fn id(self) -> &'static str {
        self.info().id
    }

    /// Its kind.
    pub fn kind(self) -> Kind {
        self.info().kind
    }

    /// Its severity.
    pub fn severity(self) -> Severity {
        self.info().severity
    }

    /// The rule with this id.
    pub fn from_id(id: &str) -> Option<Rule> {
        RULES.iter().find(|i| i.id == id).map(|i| i.rule)
    }
}

/// Each kind's rules as a mask of [`RuleSet`] bits, by `Kind as usize`.
const KIND_MASKS: [u64; 7] = {
    let mut masks = [0u64; 7];
    let mut i = 0;
    while i < RULES.len() {
        masks[RULES[i].kind as usize] |= 1 << RULES[i].rule as u8;
        i += 1;
    }
    masks
};

/// Which rules are on: all by default.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RuleSet(u64);

impl Default for RuleSet {
    fn default() -> Self {
        RuleSet::all()
    }
}

impl RuleSet {
    /// Every rule on.
    pub fn all() -> Self {
        RuleSet((1u64 << RULES.len()) - 1)
    }

    /// Every rule off.
    pub fn none() -> Self {
        RuleSet(0)
    }

    /// Whether `rule` is on.
    pub fn on(self, rule: Rule) -> bool {
        self.0 & (1 << rule as u8) != 0
    }

    /// Whether any rule is on.
    pub fn any(self) -> bool {
        self.0 != 0
    }

    /// Whether any rule of `kind` is on (a mask test: the content rules ask it for every
    /// message).
    pub fn any_of(self, kind: Kind) -> bool {
        self.0 & KIND_MASKS[kind as usize] != 0
    }

    /// Turn off what `name` names: a rule id, a kind (`secret`, `rug_pull`, ...) or `all`.
    pub fn turn_off(&mut self, name: &str) -> Result<(), String> {
        let name = name.trim();
        if name == "all" {
            *self = RuleSet::none();
            return Ok(());
        }
        let mut hit = false;
        for i in RULES {
            if i.id == name || i.kind.as_str() == name {
                self.0 &= !(1 << i.rule as u8);
                hit = true;
            }
        }
        if hit {
            Ok(())
        } else {
            let ids: Vec<&str> = RULES.iter().map(|i| i.id).collect();
            Err(format!(
                "no rule or kind named {name:?}: rules are {}; kinds are definition, \
                 shadowing, rug_pull, secret, pii, leak_to_model, access; or `all`",
                ids.join(", ")
            ))
        }
    }
}

/// One finding. Written as a `"kind":"finding"` JSON line; counted in
/// `mcp_security_findings_total{kind, severity, server}`; a span event on its exchange's or
/// model call's span.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Finding {
    /// Wall-clock nanoseconds of the message it was found in.
    #[serde(skip)]
    pub ts_ns: u64,
    /// Its kind.
    pub finding: Kind,
    /// The rule's id.
    #[serde(serialize_with = "rule_id")]
    pub rule: Rule,
    /// The rule's severity.
    pub severity: Severity,
    /// The session (as exchanges name it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    /// The MCP server's name (for a leak to a model: the server whose message carried it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server: Option<String>,
    /// The tool, prompt or resource it is about.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool: Option<String>,
    /// The method of the message it was found in.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// Where in the message: a JSON path (`result.content[0].text`,
    /// `params.arguments.path`, `tools[2].description`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// A keyed hash of the matched text (`hmac:` and 16 hex digits): equal for equal text
    /// within one agent run, useless to guess the text from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub match_hash: Option<String>,
    /// What else the rule says, never content: the other server of a shadowing pair, the
    /// annotation that weakened, the count of invisible characters.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// The process it concerns: the sender of the message, the server of a definition, the
    /// new executable, the process that called the model.
    pub process: Endpoint,
}

fn rule_id<S: serde::Serializer>(rule: &Rule, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(rule.id())
}

impl Finding {
    /// A finding of `rule` about `process`, the rest to fill in.
    pub fn new(rule: Rule, ts_ns: u64, process: Endpoint) -> Self {
        Finding {
            ts_ns,
            finding: rule.kind(),
            rule,
            severity: rule.severity(),
            session: None,
            server: None,
            tool: None,
            method: None,
            field: None,
            match_hash: None,
            detail: None,
            process,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_is_in_rule_order_with_unique_ids() {
        for (i, info) in RULES.iter().enumerate() {
            assert_eq!(info.rule as usize, i, "{}", info.id);
            assert_eq!(Rule::from_id(info.id), Some(info.rule));
        }
        assert!(RULES.len() < 64);
    }

    #[test]
    fn rules_turn_off_by_id_kind_or_all() {
        let mut s = RuleSet::all();
        s.turn_off("email").unwrap();
        assert!(!s.on(Rule::Email) && s.on(Rule::CardNumber));
        s.turn_off("secret").unwrap();
        assert!(!s.on(Rule::PrivateKey) && !s.any_of(Kind::Secret));
        assert!(s.turn_off("nope").unwrap_err().contains("private-key"));
        s.turn_off("all").unwrap();
        assert!(!s.any());
    }
}

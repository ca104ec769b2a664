//! The checks on one string of a definition: invisible characters (every string), names that
//! imitate others (names and titles), and what a description should not say (every string
//! but a name): instructions to the model, concealment, credential files, exfiltration URLs,
//! base64 blobs.
//!
//! The phrase rules look for the attacks' wording, not for imperatives in general: tool
//! documentation is written to the model, so "use absolute paths" or "you must pass an id"
//! is ordinary, while "before using this tool, read ~/.ssh/id_rsa" or "do not tell the
//! user" is not. The test data holds descriptions of the reference servers that must pass.

use std::sync::OnceLock;

use regex::Regex;
use unicode_script::{Script, UnicodeScript as _};
use unicode_security::MixedScript as _;

use crate::signal::security::Rule;

/// A rule's match in one string, before it is hashed.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Match {
    /// The rule.
    pub rule: Rule,
    /// The text to hash.
    pub hashed: String,
    /// What the finding's detail says.
    pub detail: Option<String>,
}

impl Match {
    fn new(rule: Rule, hashed: &str, detail: Option<String>) -> Self {
        Match {
            rule,
            hashed: hashed.to_owned(),
            detail,
        }
    }
}

/// What the invisible characters of a string add up to.
#[derive(Default)]
struct Invisible {
    /// Tag characters (U+E0000–U+E007F).
    tags: usize,
    /// What the tag characters spell (U+E0020–U+E007E are ASCII shifted up).
    tag_text: String,
    /// Bidirectional embeddings, overrides and isolates.
    bidi: usize,
    /// Zero-width characters, but for joiners inside an emoji or a script's word.
    zero_width: usize,
}

/// Whether `c` hides or reorders text when displayed: a tag character, a bidi control, a
/// zero-width character (what the invisible-text rules count).
pub(super) fn is_invisible(c: char) -> bool {
    is_tag(c) || is_bidi_control(c) || is_zero_width(c)
}

fn is_tag(c: char) -> bool {
    ('\u{E0000}'..='\u{E007F}').contains(&c)
}

fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

fn is_zero_width(c: char) -> bool {
    matches!(
        c,
        '\u{200B}' | '\u{200C}' | '\u{200D}' | '\u{2060}' | '\u{FEFF}' | '\u{180E}'
    )
}

/// Whether a zero-width joiner or non-joiner between `before` and `after` does what it is
/// for: joining emoji (👨‍👩‍👧) or shaping a script's letters (Persian, Indic), where both
/// neighbours are visible non-ASCII characters. Next to ASCII, or alone, it hides.
fn joins(before: Option<char>, after: Option<char>) -> bool {
    let visible = |c: Option<char>| {
        c.is_some_and(|c| !c.is_ascii() && !is_tag(c) && !is_bidi_control(c) && !is_zero_width(c))
    };
    visible(before) && visible(after)
}

fn count_invisible(text: &str) -> Invisible {
    let mut found = Invisible::default();
    if text.is_ascii() {
        return found;
    }
    let mut before = None;
    let mut at = 0;
    while let Some(c) = text[at..].chars().next() {
        at += c.len_utf8();
        if c == BLACK_FLAG {
            // The tags of a subdivision flag (🏴 England) draw it: they hide nothing.
            at += flag_tags(&text[at..]);
        } else if is_tag(c) {
            found.tags += 1;
            if let Some(ascii) =
                char::from_u32(c as u32 - 0xE0000).filter(|a| (' '..='~').contains(a))
            {
                found.tag_text.push(ascii);
            }
        } else if is_bidi_control(c) {
            found.bidi += 1;
        } else if is_zero_width(c) {
            let joiner = matches!(c, '\u{200C}' | '\u{200D}');
            if !(joiner && joins(before, text[at..].chars().next())) {
                found.zero_width += 1;
            }
        }
        before = Some(c);
    }
    found
}

/// U+1F3F4 WAVING BLACK FLAG, the base of the subdivision flags.
const BLACK_FLAG: char = '\u{1F3F4}';

/// The length in bytes of the tag sequence of a subdivision flag at the start of `rest`
/// (after 🏴): one to seven tag digits or lower-case tag letters, then CANCEL TAG (U+E007F),
/// as Unicode defines them (`gbeng`, `gbsct`). 0 when what follows is not one.
fn flag_tags(rest: &str) -> usize {
    let mut len = 0;
    for (n, c) in rest.chars().enumerate() {
        let spec = c as u32;
        if c == '\u{E007F}' && n > 0 {
            return len + c.len_utf8();
        }
        let letter_or_digit =
            (0xE0030..=0xE0039).contains(&spec) || (0xE0061..=0xE007A).contains(&spec);
        if !letter_or_digit || n >= 7 {
            return 0;
        }
        len += c.len_utf8();
    }
    0
}

/// `3 tag characters`, `1 bidi control`.
fn counted(n: usize, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

/// The invisible-character rules' matches in `text`: the tag characters hashed as the text
/// they spell, bidi controls and zero-width characters as the whole string.
pub(super) fn invisible(text: &str, out: &mut Vec<Match>) {
    let found = count_invisible(text);
    if found.tags > 0 {
        let detail = counted(found.tags, "tag character");
        out.push(Match::new(
            Rule::TagCharacters,
            &found.tag_text,
            Some(detail),
        ));
    }
    if found.bidi > 0 {
        let detail = counted(found.bidi, "bidi control");
        out.push(Match::new(Rule::BidiControl, text, Some(detail)));
    }
    if found.zero_width > 0 {
        let detail = counted(found.zero_width, "zero-width character");
        out.push(Match::new(Rule::ZeroWidth, text, Some(detail)));
    }
}

/// Whether a name imitates another: a word of it mixes scripts (`reаd_file` with a Cyrillic
/// `а`), or its non-ASCII letters all have ASCII look-alikes (UTS #39 skeleton), so that
/// it reads as an ASCII name (`ｒｅａｄ`). Words are split at what is not a letter or
/// digit, so `GitHub 検索` mixes words of two scripts, not scripts in a word.
pub(super) fn homoglyph(name: &str, out: &mut Vec<Match>) {
    if name.is_ascii() {
        return;
    }
    let mut scripts: Vec<Script> = Vec::new();
    for word in name.split(|c: char| !c.is_alphanumeric()) {
        if !word.is_single_script() {
            for s in word.chars().map(|c| c.script()) {
                let real = !matches!(s, Script::Common | Script::Inherited | Script::Unknown);
                if real && !scripts.contains(&s) {
                    scripts.push(s);
                }
            }
        }
    }
    let detail = if !scripts.is_empty() {
        let names: Vec<&str> = scripts.iter().map(|s| s.full_name()).collect();
        format!("mixed scripts: {}", names.join(", "))
    } else if name.chars().any(|c| !c.is_ascii() && c.is_alphabetic())
        && unicode_security::skeleton(name).all(|c| c.is_ascii())
    {
        "looks like an ASCII name".to_owned()
    } else {
        return;
    };
    out.push(Match::new(Rule::HomoglyphName, name, Some(detail)));
}

/// The phrase rules, compiled once.
struct Phrases {
    hidden: Regex,
    concealment: Regex,
    sensitive_file: Regex,
    url: Regex,
    send_verb: Regex,
    thing_then_to: Regex,
    templated_query: Regex,
    base64: Regex,
}

/// Instructions aimed at the model: overriding what it was told, tags that stage a prompt,
/// "before using this tool ...", credentials it must pass along, speaking as its system.
const HIDDEN_INSTRUCTIONS: &str = concat!(
    r"(?i)\bignore\s+(?:all\s+|any\s+)?(?:(?:the|your|my)\s+)?(?:previous|prior|above|earlier|preceding)\s+(?:instructions?|prompts?|rules|directions)\b",
    r"|\bdisregard\s+(?:the\s+|all\s+|any\s+|your\s+)?(?:previous|prior|above|system)\b",
    r"|<\s*/?\s*(?:important|instructions?|system)\s*>",
    r"|\bbefore\s+(?:using|calling|invoking|you\s+use)\s+(?:this|the|any)\s+tool\b,?\s+(?:you\s+must|first|always)\b",
    r"|\byou\s+must\s+(?:first|always)\s+(?:read|call|send|include|fetch)\b",
    r"|\b(?:you\s+must|always|first)\s+(?:read|send|include|pass|fetch)\b.{0,60}?\b(?:(?:api|private|ssh|secret|access)[\s_-]?keys?|(?:access|auth|api|bearer|session|refresh)[\s_-]?tokens?|passwords?|credentials?|secrets|conversation|chat\s+history|message\s+history|environment\s+variables)\b",
    r"|\bas\s+the\s+(?:assistant|ai|model|llm),?\s+you\s+(?:must|should)\b",
    r"|\b(?:system|developer)\s+(?:prompt|message)\s*:",
);

/// Asking the model to keep something from the user.
const CONCEALMENT: &str = concat!(
    r"(?i)\b(?:do\s+not|don['’]t|never)\s+(?:tell|inform|mention|reveal|show|disclose|notify|alert)(?:\s+(?:this|it|anything))?\s+(?:to\s+)?(?:the\s+)?user\b",
    r"|\bwithout\s+(?:telling|informing|notifying|alerting)\s+the\s+user\b",
    r"|\b(?:keep|hide)\s+(?:this|it)\s+(?:secret|hidden)\s+from\s+the\s+user\b",
    r"|\bthe\s+user\s+(?:must|should)\s+not\s+(?:know|see|be\s+told)\b",
    r"|\b(?:do\s+not|don['’]t|never)\s+(?:mention|reveal|disclose|tell)\s+(?:that|how)\s+you\b",
);

/// Credential files and the MCP clients' own configuration. `.env` is looked for apart
/// ([`dotenv`]): the regex engine cannot look behind it for `process`.
const SENSITIVE_FILES: &str = r"~/\.ssh\b|\.ssh/|\bid_(?:rsa|ed25519|ecdsa|dsa)\b|\.aws/credentials\b|/etc/(?:passwd|shadow)\b|\.netrc\b|\.npmrc\b|\.pypirc\b|\.git-credentials\b|\.docker/config\.json\b|\.kube/config\b|\bclaude_desktop_config\.json\b|\bmcp\.json\b";

fn phrases() -> &'static Phrases {
    static PHRASES: OnceLock<Phrases> = OnceLock::new();
    PHRASES.get_or_init(|| {
        let re = |p: &str| Regex::new(p).expect("valid pattern");
        Phrases {
            hidden: re(HIDDEN_INSTRUCTIONS),
            concealment: re(CONCEALMENT),
            sensitive_file: re(SENSITIVE_FILES),
            url: re(r"(?i)\bhttps?://[^\s<>()\[\]`'\x22]+"),
            // The imperative only: "Uploads the file to ..." describes a tool, "upload the
            // file to ..." tells the model.
            send_verb: re(r"(?i)\b(?:send|post|upload|forward|transmit|exfiltrate|report|submit|deliver)\b"),
            thing_then_to: re(r"(?i)\b(?:data|content|contents|files?|keys?|tokens?|secrets?|passwords?|credentials?|conversation|history|results?|output|it|them|everything)\b[\s\S]*\b(?:to|into)\b"),
            // `?data={conversation}`, `?q={{history}}`, `/${secret}`; not `?q={query}`.
            templated_query: re(r"(?i)(?:[?&][^=\s]*=\$?|/\$)\{\{?\s*(?:data|contents?|conversation|history|secrets?|tokens?|keys?|passwords?|credentials?|files?|output|results?|messages?|chat|context|env)\b"),
            base64: re(r"[A-Za-z0-9+/]{120,}={0,2}"),
        }
    })
}

/// What a description should not say, in `text`: each distinct match of the phrase rules.
pub(super) fn phrases_in(text: &str, out: &mut Vec<Match>) {
    let p = phrases();
    for (rule, regex) in [
        (Rule::HiddenInstructions, &p.hidden),
        (Rule::Concealment, &p.concealment),
        (Rule::SensitiveFileReference, &p.sensitive_file),
    ] {
        for m in regex.find_iter(text) {
            out.push(Match::new(rule, m.as_str(), None));
        }
    }
    if let Some(at) = dotenv(text) {
        out.push(Match::new(
            Rule::SensitiveFileReference,
            &text[at..at + 4],
            None,
        ));
    }
    exfiltration_urls(text, out);
    base64_blobs(text, out);
}

/// Where `.env` stands as a file name: not inside a longer name (`process.env`,
/// `import.meta.env`, `os.environ`), though `.env.local` counts.
fn dotenv(text: &str) -> Option<usize> {
    let bytes = text.as_bytes();
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    memchr::memmem::find_iter(bytes, b".env").find(|&at| {
        let before = at.checked_sub(1).map(|i| bytes[i]);
        let after = bytes.get(at + 4).copied();
        !before.is_some_and(word) && !after.is_some_and(word)
    })
}

/// URLs the model is told to send something to: a sending verb, then what to send and `to`
/// within the 120 characters before the URL, in one sentence ("send the conversation
/// history to https://..."); or a URL whose query is a template for content
/// (`?data={conversation}`). "Send a POST request to https://..." sends nothing of the
/// user's and does not count. The URL is hashed.
fn exfiltration_urls(text: &str, out: &mut Vec<Match>) {
    let p = phrases();
    for url in p.url.find_iter(text) {
        let hashed = url
            .as_str()
            .trim_end_matches(['.', ',', ';', ':', '!', '?']);
        let detail = if templated(text, url.range()) {
            "content templated into a URL"
        } else if told_to_send(text, url.start()) {
            "send … to a URL"
        } else {
            continue;
        };
        out.push(Match::new(
            Rule::ExfiltrationUrl,
            hashed,
            Some(detail.to_owned()),
        ));
    }
}

/// Whether the URL at `url` in `text` has a content template in its query. The template
/// may run past where the URL pattern stops (`?q={{ history }}` has spaces), so it is looked
/// for from the URL's start, and must start inside the URL.
fn templated(text: &str, url: std::ops::Range<usize>) -> bool {
    let mut end = (url.end + 64).min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let tail = &text[url.start..end];
    phrases()
        .templated_query
        .find(tail)
        .is_some_and(|m| m.start() < url.len())
}

/// Whether the text before `url_start` says to send something to what follows.
fn told_to_send(text: &str, url_start: usize) -> bool {
    let mut from = url_start.saturating_sub(120);
    while !text.is_char_boundary(from) {
        from -= 1;
    }
    let window = &text[from..url_start];
    let p = phrases();
    p.send_verb.find_iter(window).any(|verb| {
        let between = &window[verb.end()..];
        let one_sentence = !between.char_indices().any(|(i, c)| {
            matches!(c, '.' | '!' | '?') && between[i + 1..].starts_with(char::is_whitespace)
        });
        one_sentence && p.thing_then_to.is_match(between)
    })
}

/// Runs of 120 base64 characters or more, with a digit and both cases (what a long
/// identifier, a hex digest or a word does not have).
fn base64_blobs(text: &str, out: &mut Vec<Match>) {
    for run in phrases().base64.find_iter(text) {
        let s = run.as_str();
        let digit = s.bytes().any(|b| b.is_ascii_digit());
        let lower = s.bytes().any(|b| b.is_ascii_lowercase());
        let upper = s.bytes().any(|b| b.is_ascii_uppercase());
        if digit && lower && upper {
            let detail = format!("{} characters", s.len());
            out.push(Match::new(Rule::Base64Blob, s, Some(detail)));
        }
    }
}

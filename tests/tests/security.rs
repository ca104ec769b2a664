//! Security findings, end to end: real SDK servers and clients (the Python SDK, the
//! TypeScript SDK, the reference servers `server-everything` and `server-filesystem`, an agent
//! loop on the Anthropic client library) with mcptap watching. Each test works out the exact
//! findings from what its fixtures did (which tools they listed, in which order, which calls
//! they made and from which process) and compares them, as a multiset, with what mcptap wrote;
//! and checks that no text a rule matched reached the JSON lines, the console, the log or
//! /metrics.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use mcptap_e2e::agentic::{Model, venv_python};
use mcptap_e2e::*;
use serde::Deserialize;
use serde_json::{Value, json};

/// The Python security fixture's server name.
const PY_SERVER: &str = "mcptap-security-fixture";

/// Each rule the tests expect: (id, kind, severity), as mcptap's rule table has them.
const RULES: &[(&str, &str, &str)] = &[
    ("hidden-instructions", "definition", "high"),
    ("concealment", "definition", "high"),
    ("sensitive-file-reference", "definition", "high"),
    ("exfiltration-url", "definition", "high"),
    ("tag-characters", "definition", "critical"),
    ("bidi-control", "definition", "high"),
    ("zero-width", "definition", "medium"),
    ("homoglyph-name", "definition", "high"),
    ("base64-blob", "definition", "medium"),
    ("shadowed-tool", "shadowing", "medium"),
    ("cross-server-reference", "shadowing", "high"),
    ("changed-after-use", "rug_pull", "high"),
    ("annotations-weakened", "rug_pull", "high"),
    ("private-key", "secret", "critical"),
    ("cloud-key", "secret", "high"),
    ("email", "pii", "low"),
    ("card-number", "pii", "high"),
    ("sent-to-model", "leak_to_model", "critical"),
    ("outside-roots", "access", "high"),
    ("new-executable", "access", "low"),
];

/// One finding as the tests compare them: what, where, and the process it concerns.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Found {
    finding: String,
    rule: String,
    severity: String,
    server: Option<String>,
    tool: Option<String>,
    method: Option<String>,
    field: Option<String>,
    pid: u64,
}

impl Found {
    /// A finding of `rule` about process `pid`; an empty `server`, `tool`, `method` or
    /// `field` is one the finding must not carry.
    fn want(rule: &str, server: &str, tool: &str, method: &str, field: &str, pid: u32) -> Found {
        let &(_, kind, severity) = RULES
            .iter()
            .find(|(id, _, _)| *id == rule)
            .unwrap_or_else(|| panic!("no rule {rule} in the tests' table"));
        let opt = |s: &str| (!s.is_empty()).then(|| s.to_string());
        Found {
            finding: kind.into(),
            rule: rule.into(),
            severity: severity.into(),
            server: opt(server),
            tool: opt(tool),
            method: opt(method),
            field: opt(field),
            pid: pid.into(),
        }
    }

    /// A `finding` line as mcptap wrote it.
    fn of(line: &Value) -> Found {
        let s = |k: &str| line[k].as_str().map(String::from);
        Found {
            finding: s("finding").unwrap_or_default(),
            rule: s("rule").unwrap_or_default(),
            severity: s("severity").unwrap_or_default(),
            server: s("server"),
            tool: s("tool"),
            method: s("method"),
            field: s("field"),
            pid: line["process"]["pid"].as_u64().unwrap_or(0),
        }
    }
}

/// The finding lines about any of `pids` (other processes on this host may be speaking MCP
/// too), each checked for the fields every finding has.
fn findings_of(records: &Records, pids: &[u32]) -> Vec<Value> {
    let mine: Vec<Value> = records
        .kind("finding")
        .into_iter()
        .filter(|f| pids.iter().any(|p| f["process"]["pid"] == *p))
        .cloned()
        .collect();
    for f in &mine {
        if let Some(h) = f["match_hash"].as_str() {
            let hex = h.strip_prefix("hmac:").unwrap_or_else(|| panic!("{f}"));
            assert!(
                hex.len() == 16 && hex.bytes().all(|b| b.is_ascii_hexdigit()),
                "match_hash {h}: {f}"
            );
        }
        assert!(f["process"]["exe"].is_string(), "no process.exe: {f}");
    }
    mine
}

/// Wait until the JSON lines hold at least `want` findings about `pids`.
fn wait_findings(agent: &Agent, pids: &[u32], want: usize) {
    let mut got = 0;
    let ok = wait_for(30, || {
        got = findings_of(&Records::read(&agent.jsonl), pids).len();
        got >= want
    });
    assert!(ok, "{got} of {want} findings after 30 s:\n{}", agent.log());
}

/// The findings about `pids` are exactly `want`, as a multiset.
fn assert_findings(records: &Records, pids: &[u32], mut want: Vec<Found>) {
    let lines = findings_of(records, pids);
    let mut got: Vec<Found> = lines.iter().map(Found::of).collect();
    got.sort();
    want.sort();
    let missing: Vec<&Found> = want.iter().filter(|w| !got.contains(w)).collect();
    let extra: Vec<&Found> = got.iter().filter(|g| !want.contains(g)).collect();
    assert_eq!(
        got, want,
        "\nmissing: {missing:#?}\nextra: {extra:#?}\nlines: {lines:#?}"
    );
}

/// None of `texts` (what the rules matched) appears in the agent's JSON lines, console view,
/// log, or `metrics`.
fn assert_never_written(dir: &Path, metrics: &str, texts: &[String]) {
    let outputs = [
        ("JSON lines", std::fs::read_to_string(dir.join("out.jsonl"))),
        ("console", std::fs::read_to_string(dir.join("console.log"))),
        ("log", std::fs::read_to_string(dir.join("agent.log"))),
    ];
    for (what, text) in outputs {
        let text = text.unwrap_or_else(|e| panic!("read the agent's {what}: {e}"));
        for t in texts {
            assert!(!text.contains(t.as_str()), "{t:?} in the agent's {what}");
        }
    }
    for t in texts {
        assert!(!metrics.contains(t.as_str()), "{t:?} in /metrics");
    }
}

/// Whether `c` is one of the characters the definition rules call invisible: Unicode tags,
/// bidirectional controls, zero-width characters.
fn invisible(c: char) -> bool {
    matches!(c, '\u{E0000}'..='\u{E007F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
        || matches!(c, '\u{200B}'..='\u{200D}' | '\u{2060}' | '\u{FEFF}')
}

/// `mcp_security_findings_total` counts, per (kind, severity, server), the findings that
/// name a server.
fn assert_counted(agent: &Agent, want: &[Found]) {
    let mut per: BTreeMap<(&str, &str, &str), f64> = BTreeMap::new();
    for f in want {
        if let Some(server) = &f.server {
            *per.entry((&f.finding, &f.severity, server)).or_default() += 1.0;
        }
    }
    for ((kind, severity, server), n) in per {
        let labels = [("kind", kind), ("severity", severity), ("server", server)];
        let got = metric_reaching(agent, "mcp_security_findings_total", &labels, n);
        assert_eq!(got, n, "mcp_security_findings_total{labels:?}");
    }
}

/// What `py_security_client.py` reports.
#[derive(Debug, Deserialize)]
struct PyRun {
    pid: u32,
    server_pid: u32,
    /// The tool names of each tools/list, in the order listed.
    lists: Vec<Vec<String>>,
    /// The roots the server was told.
    roots: Vec<String>,
    /// The note store_note carried.
    note: String,
    /// The secrets the tools returned: private_key, aws_key_id, card.
    secrets: BTreeMap<String, String>,
}

/// The Python security fixture, driven by its client with mcptap watching (`args` more
/// arguments for the agent); returns the agent, the scratch dir, the client's report.
fn python_run(name: &str, args: &[&str]) -> (Agent, PathBuf, PyRun, ClientRun) {
    let dir = scratch(name);
    let root = dir.join("root");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(root.join("notes.txt"), "meeting at noon\n").unwrap();
    let agent = Agent::start_with_console(&dir, args);
    let python = venv_python("mcp1");
    let mut client = py_fixture(
        "mcp1",
        "py_security_client.py",
        &[
            "--root",
            root.to_str().unwrap(),
            "--inside",
            root.join("notes.txt").to_str().unwrap(),
            "--outside",
            "/etc/hostname",
            "--",
            python.to_str().unwrap(),
            fixtures().join("py_security_server.py").to_str().unwrap(),
        ],
    );
    let report: Value = run_report(&mut client, &dir, "client");
    let run: PyRun = serde_json::from_value(report.clone()).expect("the client's report");
    let calls: ClientRun = serde_json::from_value(report).expect("the client's calls");
    assert_eq!(run.lists.len(), 2, "listed before and after the change");
    assert_eq!(
        run.roots,
        [format!("file://{}", root.display())],
        "the server got the client's root"
    );
    (agent, dir, run, calls)
}

/// The Python fixture's resource, outside the client's root.
const MOTD: &str = "file:///srv/shared/motd.txt";

/// Who sent a message: the client or the server.
#[derive(Clone, Copy)]
enum By {
    Client,
    Server,
}

/// The findings in the Python fixture's calls, reads and prompts: (rule, tool, method,
/// field, who sent the message).
#[rustfmt::skip]
const PY_MESSAGES: &[(&str, &str, &str, &str, By)] = &[
    ("outside-roots", "read_file", "tools/call", "params.arguments.path", By::Client),
    ("outside-roots", MOTD, "resources/read", "params.uri", By::Client),
    ("email", MOTD, "resources/read", "result.contents[0].text", By::Server),
    ("private-key", "fetch_deploy_key", "tools/call", "result.content[0].text", By::Server),
    ("cloud-key", "cloud_config", "tools/call", "result.content[0].text", By::Server),
    ("card-number", "billing_profile", "tools/call", "result.content[0].text", By::Server),
    ("email", "store_note", "tools/call", "params.arguments.note", By::Client),
    ("email", "contact_card", "prompts/get", "result.messages[0].content.text", By::Server),
];

/// Every finding the Python fixture's run makes, worked out from the client's report.
fn python_expected(run: &PyRun) -> Vec<Found> {
    let mut want = python_definitions(run);
    for &(rule, tool, method, field, by) in PY_MESSAGES {
        let pid = match by {
            By::Client => run.pid,
            By::Server => run.server_pid,
        };
        want.push(Found::want(rule, PY_SERVER, tool, method, field, pid));
    }
    want
}

/// The findings in the Python fixture's two tools/list results.
fn python_definitions(run: &PyRun) -> Vec<Found> {
    let first = &run.lists[0];
    let at = |name: &str| {
        first
            .iter()
            .position(|t| t == name)
            .unwrap_or_else(|| panic!("{name} not listed: {first:?}"))
    };
    // The names the fixture chose to deceive: tag characters after `lookup`, a Cyrillic
    // letter in `search_notes`.
    let tagged = first.iter().find(|t| t.starts_with("lookup")).unwrap();
    let homoglyph = first.iter().find(|t| t.ends_with("arch_notes")).unwrap();
    assert!(tagged.chars().any(invisible) && homoglyph != "search_notes");
    let def = |rule: &str, tool: &str, part: &str| {
        let field = format!("result.tools[{}].{part}", at(tool));
        Found::want(rule, PY_SERVER, tool, "tools/list", &field, run.server_pid)
    };
    // The second listing: forecast changed after its call (the whole definition) and lost
    // its readOnlyHint.
    let relist = |rule: &str, part: &str| {
        let i = run.lists[1].iter().position(|t| t == "forecast").unwrap();
        let field = format!("result.tools[{i}]{part}");
        Found::want(
            rule,
            PY_SERVER,
            "forecast",
            "tools/list",
            &field,
            run.server_pid,
        )
    };
    vec![
        // A field is named once per rule, however many matches it holds: the block's two
        // tags, both `~/.ssh` and `id_rsa`.
        def("hidden-instructions", "send_report", "description"),
        def("concealment", "send_report", "description"),
        def("sensitive-file-reference", "send_report", "description"),
        def("exfiltration-url", "sync_notes", "description"),
        def("zero-width", "format_text", "description"),
        def("bidi-control", "format_text", "description"),
        def("base64-blob", "encode_blob", "description"),
        def("tag-characters", tagged, "name"),
        def("homoglyph-name", homoglyph, "name"),
        relist("changed-after-use", ""),
        relist("annotations-weakened", ".annotations"),
    ]
}

/// The texts of the Python fixture's run that rules match and no output may carry.
fn python_matched_texts(run: &PyRun) -> Vec<String> {
    let key = &run.secrets["private_key"];
    let mut texts: Vec<String> = key
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .map(String::from)
        .collect();
    let card = &run.secrets["card"];
    texts.extend([
        run.secrets["aws_key_id"].clone(),
        card.clone(),
        card.replace(' ', ""),
        "jordan.lee@acme-widgets.io".into(),
        "ops-desk@acme-widgets.io".into(),
        "dana.kim@acme-widgets.io".into(),
        "id_rsa".into(),
        "~/.ssh".into(),
        "<IMPORTANT>".into(),
        "Do not tell the user".into(),
        "collect.sync-notes.net".into(),
    ]);
    assert!(run.note.contains("jordan.lee@acme-widgets.io"));
    texts
}

/// The Python SDK's server and client over stdio: poisoned and deceptive definitions, secrets
/// and personal data in results, arguments, a resource and a prompt, a rug pull announced
/// with notifications/tools/list_changed, and paths outside the client's root.
#[test]
fn python_sdk_server_findings() {
    let (agent, dir, run, calls) = python_run("security_python", &[]);
    let want = python_expected(&run);
    let pids = [run.pid, run.server_pid];
    wait_findings(&agent, &pids, want.len());
    assert_counted(&agent, &want);
    let metrics = agent.metrics();
    let records = agent.stop();
    check_calls(&records, &calls, Sides::Both);
    assert_findings(&records, &pids, want);
    for f in findings_of(&records, &pids) {
        assert_eq!(
            f["session"],
            format!("stdio:{}-{}", run.pid, run.server_pid),
            "{f}"
        );
        if f["rule"] == "annotations-weakened" {
            assert_eq!(f["detail"], "readOnlyHint: true → false", "{f}");
        }
        if f["rule"] == "changed-after-use" {
            assert_eq!(f["detail"], "changed: description, annotations", "{f}");
        }
    }
    let console = std::fs::read_to_string(dir.join("console.log")).unwrap();
    let ours = format!("server={PY_SERVER} ");
    let flagged = console
        .lines()
        .filter(|l| l.contains(" ! finding ") && l.contains(&ours))
        .count();
    assert_eq!(flagged, python_expected(&run).len(), "{console}");
    // The tag characters of the tool's name spell hidden text: the console, read by a person
    // in a terminal, shows them escaped (as it does control characters), never raw.
    let hidden: Vec<&str> = console
        .lines()
        .filter(|l| l.chars().any(invisible))
        .collect();
    assert!(
        hidden.is_empty(),
        "invisible characters on the console: {hidden:#?}"
    );
    assert_never_written(&dir, &metrics, &python_matched_texts(&run));
}

/// `--rule-off` by kind (`secret`) and by id (`bidi-control`, `email`), comma-separated and
/// repeated: those findings are gone, every other one is still there.
#[test]
fn rule_off_silences_only_those_rules() {
    let off = ["secret,bidi-control", "email"];
    let (agent, dir, run, _) = python_run(
        "security_rule_off",
        &["--rule-off", off[0], "--rule-off", off[1]],
    );
    let want: Vec<Found> = python_expected(&run)
        .into_iter()
        .filter(|f| f.finding != "secret" && f.rule != "bidi-control" && f.rule != "email")
        .collect();
    let pids = [run.pid, run.server_pid];
    wait_findings(&agent, &pids, want.len());
    let metrics = agent.metrics();
    let records = agent.stop();
    assert_findings(&records, &pids, want);
    assert_never_written(&dir, &metrics, &python_matched_texts(&run));
}

/// What `node_security_client.mjs` reports of each server.
#[derive(Debug, Deserialize)]
struct NodeServer {
    name: String,
    pid: u32,
    tools: Vec<String>,
}

/// The TypeScript SDK: one client process, two servers (`notes-hub`, then `mail-hub`) that
/// both offer `search_notes`, `notes-hub` describing a tool with `mail-hub`'s `send_email`.
#[test]
fn typescript_sdk_servers_shadowing_each_other() {
    let dir = scratch("security_node");
    let agent = Agent::start_with_console(&dir, &[]);
    let node_dir = node_fixture("node_security_client.mjs");
    std::fs::copy(
        fixtures().join("node_security_server.mjs"),
        node_dir.join("node_security_server.mjs"),
    )
    .unwrap();
    let report: Value = run_report(
        Command::new("node")
            .current_dir(&node_dir)
            .args(["node_security_client.mjs", "node_security_server.mjs"]),
        &dir,
        "client",
    );
    let client = report["pid"].as_u64().unwrap() as u32;
    let servers: Vec<NodeServer> = serde_json::from_value(report["servers"].clone()).unwrap();
    let [notes, mail] = &servers[..] else {
        panic!("two servers: {servers:?}")
    };
    let at = |s: &NodeServer, tool: &str| s.tools.iter().position(|t| t == tool).unwrap();
    let want = vec![
        // On mail-hub's listing, the later one: its search_notes shadows notes-hub's.
        Found::want(
            "shadowed-tool",
            &mail.name,
            "search_notes",
            "tools/list",
            &format!("result.tools[{}].name", at(mail, "search_notes")),
            mail.pid,
        ),
        // notes-hub's summarize names send_email, which only mail-hub offers: seen when
        // mail-hub's listing came, so found in mail-hub's message.
        Found::want(
            "cross-server-reference",
            &notes.name,
            "summarize",
            "tools/list",
            &format!("result.tools[{}].description", at(notes, "summarize")),
            mail.pid,
        ),
    ];
    let pids = [client, notes.pid, mail.pid];
    wait_findings(&agent, &pids, want.len());
    assert_counted(&agent, &want);
    let metrics = agent.metrics();
    let records = agent.stop();
    assert_findings(&records, &pids, want);
    let shadowed = findings_of(&records, &pids)
        .into_iter()
        .find(|f| f["rule"] == "shadowed-tool")
        .unwrap();
    assert!(
        shadowed["detail"]
            .as_str()
            .is_some_and(|d| d.contains(&notes.name)),
        "the other server named: {shadowed}"
    );
    assert_never_written(&dir, &metrics, &[]);
}

/// A clean reference server: its client's calls all reported, no finding about either
/// process, and no finding counted for the server.
fn assert_clean(records: &Records, metrics: &str, run: &ClientRun) -> String {
    check_calls(records, run, Sides::Both);
    let server = run.server_pid.expect("server pid");
    assert_findings(records, &[run.pid, server], Vec::new());
    let init = records
        .exchanges_of_client(run.pid)
        .into_iter()
        .find(|r| r["method"] == "initialize")
        .expect("initialize")
        .clone();
    let name = init["server"]["name"].as_str().expect("server name");
    let counted = prom_value(metrics, "mcp_security_findings_total", &[("server", name)]);
    assert!(
        counted.unwrap_or(0.0) == 0.0,
        "{name}: {counted:?} findings"
    );
    // The server asked for the client's roots (so paths were checked against them).
    assert!(
        records
            .exchanges_of_client(run.pid)
            .iter()
            .any(|r| r["method"] == "roots/list"),
        "no roots/list for {name}"
    );
    name.to_string()
}

/// `server-everything` through every list, prompts, resources and ordinary tools, and
/// `server-filesystem` listing, reading and searching inside the root its client declared:
/// no finding at all.
#[test]
fn clean_reference_servers_report_nothing() {
    let dir = scratch("security_clean");
    let root = dir.join("root");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(root.join("notes.txt"), "meeting at noon\n").unwrap();
    let agent = Agent::start_with_console(&dir, &[]);
    let node_dir = node_fixture("node_clean_client.mjs");
    let modules = "node_modules/@modelcontextprotocol";
    let clean = |mode: &str, server: &str| -> ClientRun {
        run_client(
            Command::new("node")
                .current_dir(&node_dir)
                .arg("node_clean_client.mjs")
                .arg(mode)
                .arg(format!("{modules}/{server}/dist/index.js"))
                .arg(&root),
            &dir,
        )
    };
    let everything = clean("everything", "server-everything");
    let filesystem = clean("filesystem", "server-filesystem");
    // Everything is in once every call is: initialize, the lists, roots/list, the calls.
    let seen = |r: &Records, run: &ClientRun| r.exchanges_of_client(run.pid).len();
    let ok = wait_for(30, || {
        let r = Records::read(&agent.jsonl);
        seen(&r, &everything) >= everything.calls.len() + 6
            && seen(&r, &filesystem) >= filesystem.calls.len() + 3
    });
    assert!(ok, "the clean clients' exchanges:\n{}", agent.log());
    let metrics = agent.metrics();
    let records = agent.stop();
    let names = [
        assert_clean(&records, &metrics, &everything),
        assert_clean(&records, &metrics, &filesystem),
    ];
    assert_eq!(names[0], "mcp-servers/everything");
    let console = std::fs::read_to_string(dir.join("console.log")).unwrap();
    for name in names {
        let ours = format!("server={name} ");
        assert!(
            !console
                .lines()
                .any(|l| l.contains(" ! finding ") && l.contains(&ours)),
            "{console}"
        );
    }
}

/// A copy of the Python interpreter at a path of its own (a virtualenv with `--copies`) that
/// sees mcp 1.x's packages: an executable no other process on this host runs.
fn own_python(dir: &Path) -> PathBuf {
    let venv = dir.join("venv");
    let ok = Command::new(venv_python("mcp1"))
        .args(["-m", "venv", "--copies", "--without-pip"])
        .arg(&venv)
        .status()
        .expect("python -m venv");
    assert!(ok.success(), "python -m venv --copies");
    let site = Command::new(venv_python("mcp1"))
        .args([
            "-c",
            "import mcp, os; print(os.path.dirname(os.path.dirname(mcp.__file__)))",
        ])
        .output()
        .expect("find mcp 1.x's site-packages");
    let site = String::from_utf8(site.stdout).unwrap();
    let lib = std::fs::read_dir(venv.join("lib"))
        .unwrap()
        .next()
        .expect("the venv's lib/pythonX.Y")
        .unwrap()
        .path();
    std::fs::write(lib.join("site-packages/mcp1.pth"), site.trim()).unwrap();
    std::fs::canonicalize(venv.join("bin/python")).unwrap()
}

/// The path of the `node` on PATH, resolved as the kernel reports a process's executable.
fn node_exe() -> PathBuf {
    let out = Command::new("sh")
        .args(["-c", "command -v node"])
        .output()
        .expect("find node");
    std::fs::canonicalize(String::from_utf8(out.stdout).unwrap().trim()).expect("node on PATH")
}

/// `--known-executables`: the client's executable (node) is known, the server's (a Python of
/// its own) is not: reported once, as a low `access` finding about the server, and appended
/// to the file; a second agent reading the file reports nothing.
#[test]
fn new_executable_reported_once_then_known() {
    let dir = scratch("security_new_exe");
    let python = own_python(&dir);
    let known = dir.join("known-executables");
    let node = node_exe();
    std::fs::write(&known, format!("{}\n", node.display())).unwrap();
    let args = ["--known-executables", known.to_str().unwrap()];
    let server = fixtures().join("py_server.py");
    let run_once = |sub: &str| -> (Records, ClientRun) {
        let d = dir.join(sub);
        std::fs::create_dir_all(&d).unwrap();
        let agent = Agent::start_with_console(&d, &args);
        let extra = ["--runtime", python.to_str().unwrap(), "--echo", "2"];
        let run = run_client(&mut node_client_of(&node, &server, &extra), &d);
        let pids = [run.pid, run.server_pid.expect("server pid")];
        if sub == "first" {
            wait_findings(&agent, &pids, 1);
        }
        let records = agent.stop();
        check_calls(&records, &run, Sides::Both);
        (records, run)
    };
    let (first, run) = run_once("first");
    let server_pid = run.server_pid.unwrap();
    let want = Found::want("new-executable", "", "", "", "", server_pid);
    let lines = findings_of(&first, &[run.pid, server_pid]);
    assert_eq!(lines.len(), 1, "{lines:#?}");
    let mut got = Found::of(&lines[0]);
    // Where it was first seen may name the session's server and method: the test pins what
    // the rule is about.
    (got.server, got.tool, got.method, got.field) = (None, None, None, None);
    assert_eq!(got, want, "{:#?}", lines[0]);
    assert_eq!(lines[0]["process"]["exe"], python.to_str().unwrap());
    assert_eq!(lines[0]["server"], "mcptap-fixture", "{}", lines[0]);
    let listed = std::fs::read_to_string(&known).unwrap();
    let lines: Vec<&str> = listed.lines().collect();
    assert_eq!(
        lines[0],
        node.to_str().unwrap(),
        "the seed kept first: {listed}"
    );
    let ours = lines.iter().filter(|l| **l == python.to_str().unwrap());
    assert_eq!(ours.count(), 1, "appended once: {listed}");

    let (second, run) = run_once("second");
    let lines = findings_of(&second, &[run.pid, run.server_pid.unwrap()]);
    assert!(lines.is_empty(), "known by now: {lines:#?}");
}

/// The agent's leak test: an Anthropic tool loop calls fetch_deploy_key over MCP and sends
/// the key back to the model, then calls whoami and sends the conversation again. The key is
/// a `secret` finding on the MCP exchange and one `leak_to_model` finding on the model call
/// that first carried it, though two requests carried it.
#[test]
fn secret_from_mcp_sent_to_the_model() {
    let dir = scratch("security_leak");
    let agent = Agent::start_with_console(&dir, &[]);
    let model = Model::start(
        &dir,
        json!({"leak": [
            {"tools": [{"name": "fetch_deploy_key", "arguments": {}}]},
            {"tools": [{"name": "whoami", "arguments": {}}]},
            {"text": "rotated"}
        ]}),
        None,
    );
    let server = format!(
        "{} {} --minimal",
        venv_python("mcp1").display(),
        fixtures().join("py_security_server.py").display()
    );
    let mut cmd = Command::new(venv_python("agents"));
    cmd.arg(fixtures().join("agent_loop.py"))
        .args(["--api", "messages", "--base-url", &model.url])
        .args([
            "--mcp-stdio",
            &server,
            "--task",
            "script:leak rotate the key",
        ]);
    let out: Value = run_report(&mut cmd, &dir, "agent_loop");
    let host = out["pid"].as_u64().unwrap() as u32;
    let results = &out["tasks"][0]["tool_calls"];
    let key = results[0]["result"].as_str().expect("the key").to_string();
    let server_pid: u32 = results[1]["result"].as_str().unwrap().parse().unwrap();
    assert_eq!(model.log().len(), 3, "three model calls");
    let want = vec![
        Found::want(
            "private-key",
            PY_SERVER,
            "fetch_deploy_key",
            "tools/call",
            "result.content[0].text",
            server_pid,
        ),
        // The Messages API request: [0] the task, [1] the tool_use, [2] the tool_result.
        Found::want(
            "sent-to-model",
            PY_SERVER,
            "fetch_deploy_key",
            "",
            "request.messages[2].content[0].content",
            host,
        ),
    ];
    let pids = [host, server_pid];
    wait_findings(&agent, &pids, want.len());
    assert_counted(&agent, &want);
    let metrics = agent.metrics();
    let records = agent.stop();
    assert_findings(&records, &pids, want);
    let leak = findings_of(&records, &pids)
        .into_iter()
        .find(|f| f["finding"] == "leak_to_model")
        .unwrap();
    let secret = findings_of(&records, &pids)
        .into_iter()
        .find(|f| f["finding"] == "secret")
        .unwrap();
    assert_eq!(leak["match_hash"], secret["match_hash"], "the same text");
    assert_eq!(
        leak["detail"], "private-key first seen in an MCP message",
        "{leak}"
    );
    let texts: Vec<String> = key
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .map(String::from)
        .collect();
    assert_never_written(&dir, &metrics, &texts);
}

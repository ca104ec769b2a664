//! Command-line interface.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::parser::ValueSource;
use clap::{Args, CommandFactory as _, FromArgMatches as _, Parser, Subcommand};

/// mcptap sees every MCP (Model Context Protocol) conversation on this Linux host, from the
/// kernel, with no change to any application: eBPF probes on pipe and socket reads and writes
/// capture the JSON-RPC bytes, and mcptap puts each exchange back together.
///
/// Without a filter it watches every process. Run it as root.
///
/// Examples:
///   mcptap                                   # watch everything, print exchanges
///   mcptap --comm node --comm python3        # only these programs
///   mcptap --jsonl /var/log/mcp.jsonl        # also write JSON lines
///   mcptap --jsonl - --quiet | jq .          # JSON lines on stdout
///   mcptap --record bug.mcptap               # save raw events for a bug report
///   mcptap replay bug.mcptap                 # run the pipeline on them again (no root)
#[derive(Parser, Debug)]
#[command(name = "mcptap", version, verbatim_doc_comment)]
pub struct Cli {
    /// Subcommand (default: capture live).
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Live capture options.
    #[command(flatten)]
    pub live: LiveArgs,
    /// Output options.
    #[command(flatten)]
    pub output: OutputArgs,
}

/// Subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the pipeline on a file saved with --record. Needs no privileges. Output options
    /// apply (before or after `replay`); live-capture options are refused.
    Replay {
        /// The file written by `mcptap --record FILE`.
        file: PathBuf,
    },
    /// Attach only empty programs to the hooks mcptap uses, until interrupted: the floor
    /// `cargo xtask bench` measures mcptap's overhead against.
    #[command(hide = true)]
    Floor,
}

/// Options of live capture.
#[derive(Args, Debug, Clone)]
pub struct LiveArgs {
    /// Watch only processes whose command name (comm) is NAME. Repeatable. The kernel keeps
    /// the first 15 bytes of a name. A child is watched until it execs another program.
    #[arg(long = "comm", value_name = "NAME")]
    pub comms: Vec<String>,

    /// Watch only the running process PID and every process it starts from then on (for
    /// example a client and the servers it spawns). Repeatable; combines with --comm.
    #[arg(long = "pid", value_name = "PID")]
    pub pids: Vec<u32>,

    /// Save every raw captured event, with the process metadata needed to name it, to FILE;
    /// `mcptap replay FILE` reruns the pipeline on it without root.
    #[arg(long, value_name = "FILE")]
    pub record: Option<PathBuf>,

    /// Serve /metrics (Prometheus), /health and /ready on ADDR. "off" disables them.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9464", value_parser = parse_listen)]
    pub listen: Listen,

    /// Kernel ring buffer size (power of two; suffixes K, M, G). Bigger absorbs longer
    /// bursts; loss is always counted and reported.
    #[arg(long, value_name = "BYTES", default_value = "16M", value_parser = parse_ring)]
    pub ring_buffer_size: u32,

    /// Do not capture TLS (HTTPS) plaintext: no uprobes on OpenSSL. TLS sockets are still
    /// recognised and counted as not decrypted.
    #[arg(long)]
    pub no_tls: bool,

    /// Name pods and containers through the Kubernetes API server: "auto" watches this
    /// node's pods when mcptap runs in a pod with a service account (K8S_NODE_NAME set from
    /// spec.nodeName); "off" never calls the API. Container ids and pod UIDs come from cgroups
    /// either way.
    #[arg(
        long,
        value_name = "MODE",
        value_enum,
        default_value = "auto",
        env = "MCPTAP_K8S"
    )]
    pub k8s: crate::enrich::k8s::Mode,
}

/// Options of outputs (live and replay).
#[derive(Args, Debug, Clone)]
pub struct OutputArgs {
    /// Write one JSON object per line to PATH ("-" for standard output). The schema is in
    /// the README.
    #[arg(long, value_name = "PATH", global = true)]
    pub jsonl: Option<String>,

    /// Do not print the console view.
    #[arg(long, short, global = true)]
    pub quiet: bool,

    /// Longest message accepted (suffixes K, M, G). A longer one is dropped and reported as a
    /// `message_truncated` event, never half-parsed.
    #[arg(long, value_name = "BYTES", default_value = "64M", value_parser = parse_size, global = true)]
    pub max_message_bytes: u64,

    /// A request with no response after this many seconds is a hung call: reported as a
    /// `call_timeout` event and counted. After ten times as long it is given up as
    /// `no_response`.
    #[arg(long, value_name = "SECONDS", default_value_t = 300.0, value_parser = parse_seconds, global = true)]
    pub response_timeout: f64,

    /// An agent task (one conversation thread of a process that talks to a model) with no
    /// model call for this many seconds ends: `abandoned`, or as its last call left it
    /// (`error`, `cut_off`, `context_overflow`). A final answer ends a task at once.
    #[arg(long, value_name = "SECONDS", default_value_t = 300.0, value_parser = parse_seconds, global = true)]
    pub task_idle: f64,

    /// How often the processes that serve MCP are sampled from /proc (CPU, resident memory,
    /// open fds and their limit, threads) for the `mcp_server_process_*` metrics and the
    /// `server_process` JSON lines: seconds, or with a unit (`500ms`, `15s`, `1m`); `off`
    /// never samples. Exits are seen at once either way (`mcp_server_up`).
    #[arg(long, value_name = "DURATION", default_value = "15s", value_parser = parse_interval, global = true)]
    pub process_interval: f64,

    /// A server name no process has served for this long is forgotten: its
    /// `mcp_server_up` series (0 since its last exit) and restart count go.
    #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = parse_seconds, global = true)]
    pub server_forget: f64,

    /// Include argument and result values in JSON lines and spans. Off by default: values
    /// never leave the host unless asked for, and even then secrets are redacted: the values
    /// of keys that look like secrets (password, token, secret, authorization, key, api key,
    /// cookie, aws_*, ...), the value of {"name": "Authorization", "value": ...} pairs, and
    /// bearer tokens, API keys and URL credentials inside any string.
    #[arg(long, global = true)]
    pub payloads: bool,

    /// Turn a security rule off: a rule id, a kind (definition, shadowing, rug_pull,
    /// secret, pii, leak_to_model, access) or `all`. Repeatable; commas separate several.
    /// Every rule is on by default; findings carry where and a keyed hash of the match,
    /// never the matched text. The rules: hidden-instructions, concealment,
    /// sensitive-file-reference, exfiltration-url, tag-characters, bidi-control, zero-width,
    /// homoglyph-name, base64-blob (definitions); shadowed-tool, cross-server-reference;
    /// changed-after-use, annotations-weakened; private-key, cloud-key, git-token,
    /// ai-api-key, jwt, chat-token, bearer-token (secrets); email, card-number (pii);
    /// sent-to-model; outside-roots, new-executable. The README says what each matches and
    /// its known false positives.
    #[arg(long = "rule-off", value_name = "RULE", value_parser = parse_rule_off, value_delimiter = ',', global = true)]
    pub rules_off: Vec<String>,

    /// Executables known to speak MCP on this host, one path a line. The first MCP traffic
    /// of one not listed is a `new-executable` finding, and the file learns it (created if
    /// missing). Without it that rule reports nothing: it needs a memory of the host.
    #[arg(long, value_name = "FILE", global = true)]
    pub known_executables: Option<PathBuf>,

    /// Report HTTP session ids (Mcp-Session-Id, legacy SSE session ids) as they are. By
    /// default outputs carry `sha256:` and 16 hex digits of their SHA-256: stable, so that
    /// records of one session still group, but not the bearer-like id itself.
    #[arg(long, global = true)]
    pub raw_session_ids: bool,

    /// Report resource URIs whole. By default they are reported without userinfo
    /// (`user:password@`), query and fragment, which may carry secrets.
    #[arg(long, global = true)]
    pub full_resource_uris: bool,

    /// Send OTLP traces and metrics to URL (e.g. http://127.0.0.1:4318 for http/protobuf,
    /// http://127.0.0.1:4317 for grpc). Without it the standard OTEL_EXPORTER_OTLP_*
    /// variables decide; with neither, OTLP is off.
    #[arg(long, value_name = "URL", global = true)]
    pub otlp_endpoint: Option<String>,

    /// OTLP protocol: grpc or http/protobuf [default: OTEL_EXPORTER_OTLP_PROTOCOL, else
    /// http/protobuf].
    #[arg(long, value_name = "PROTOCOL", value_parser = ["grpc", "http/protobuf"], global = true)]
    pub otlp_protocol: Option<String>,

    /// Most distinct values kept per metric label (tool names, resource URIs, ...); the rest
    /// are reported as "other" and counted in mcptap_label_overflow_total.
    #[arg(long, value_name = "N", default_value_t = 200, global = true)]
    pub label_limit: usize,

    /// Most sessions (and stateless HTTP connections) tracked at once. Past it the least
    /// recently active are ended (session_end reason "evicted") and counted in
    /// mcptap_evictions_total, so that a flood cannot grow memory without bound.
    #[arg(long, value_name = "N", default_value_t = 20_000, value_parser = clap::value_parser!(u64).range(1..), global = true)]
    pub max_sessions: u64,

    /// Most requests awaiting a response, over all sessions. Past it the oldest end as
    /// no_response and are counted in mcptap_evictions_total.
    #[arg(long, value_name = "N", default_value_t = 50_000, value_parser = clap::value_parser!(u64).range(1..), global = true)]
    pub max_pending: u64,

    /// Most process fds (each one or two streams, a pipe end or a socket) tracked at once,
    /// and most remembered as not carrying MCP. Past it the least recently active are
    /// forgotten and counted in mcptap_evictions_total.
    #[arg(long, value_name = "N", default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..), global = true)]
    pub max_streams: u64,

    /// Most bytes held for messages not complete yet, over every stream (suffixes K, M, G):
    /// what a local process can make the agent buffer. Past it the stream that went over
    /// drops its partial message, reported as a `stream_gap` (reason buffer_budget) and
    /// counted. At least --max-message-bytes.
    #[arg(long, value_name = "BYTES", default_value = "128M", value_parser = parse_size, global = true)]
    pub max_buffered_bytes: u64,

    /// Most metric series (label sets) of the mcp_* metrics, all together. Past it new label
    /// sets are counted in each metric's series whose labels are all "other", and in
    /// mcptap_series_overflow_total.
    #[arg(long, value_name = "N", default_value_t = 20_000, value_parser = clap::value_parser!(u64).range(1..), global = true)]
    pub max_series: u64,
}

/// Why the command line was not taken.
#[derive(Debug)]
pub enum CliError {
    /// Help or version was asked for: print it and exit 0.
    Exit(clap::Error),
    /// A bad command line, as one line of text.
    Usage(String),
}

/// Live-capture options, by id, that mean nothing to `replay`.
const LIVE_ONLY: [(&str, &str); 7] = [
    ("comms", "--comm"),
    ("pids", "--pid"),
    ("record", "--record"),
    ("listen", "--listen"),
    ("ring_buffer_size", "--ring-buffer-size"),
    ("no_tls", "--no-tls"),
    ("k8s", "--k8s"),
];

/// Parse a command line. Output options apply before or after `replay`; a live-capture
/// option given to `replay` is refused rather than ignored.
pub fn parse<I, T>(args: I) -> Result<Cli, CliError>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let matches = Cli::command()
        .try_get_matches_from(args)
        .map_err(one_line)?;
    let cli = Cli::from_arg_matches(&matches).map_err(one_line)?;
    if let Some(Command::Replay { .. }) = &cli.command {
        for (id, flag) in LIVE_ONLY {
            if matches.value_source(id) == Some(ValueSource::CommandLine) {
                return Err(CliError::Usage(format!(
                    "{flag} applies to live capture; `mcptap replay` takes only output options \
                     (see `mcptap replay --help`)"
                )));
            }
        }
    }
    let o = &cli.output;
    if o.max_buffered_bytes < o.max_message_bytes {
        return Err(CliError::Usage(format!(
            "--max-buffered-bytes ({}) must be at least --max-message-bytes ({}): a message is \
             held whole before it is parsed",
            o.max_buffered_bytes, o.max_message_bytes
        )));
    }
    Ok(cli)
}

/// clap's error as the one line the README promises: `mcptap: error: ...` comes from the
/// caller; help and version pass through.
fn one_line(e: clap::Error) -> CliError {
    use clap::error::ErrorKind;
    if matches!(
        e.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        return CliError::Exit(e);
    }
    let text = e.render().to_string();
    let first = text.lines().next().unwrap_or("bad command line");
    let first = first.strip_prefix("error: ").unwrap_or(first);
    CliError::Usage(format!("{first} (see `mcptap --help`)"))
}

/// Where to listen, if at all.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Listen {
    /// No endpoints.
    Off,
    /// This address.
    Addr(SocketAddr),
}

fn parse_listen(s: &str) -> Result<Listen, String> {
    if s == "off" {
        return Ok(Listen::Off);
    }
    s.parse()
        .map(Listen::Addr)
        .map_err(|_| format!("{s:?} is not an address like 127.0.0.1:9464 (or \"off\")"))
}

/// Parse a byte size: a number with an optional K/M/G (powers of 1024) and optional "iB"/"B".
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let lower = t.to_ascii_lowercase();
    let lower = lower
        .strip_suffix("ib")
        .or_else(|| lower.strip_suffix('b'))
        .unwrap_or(&lower);
    let (num, mult) = match lower.chars().last() {
        Some('k') => (&lower[..lower.len() - 1], 1u64 << 10),
        Some('m') => (&lower[..lower.len() - 1], 1 << 20),
        Some('g') => (&lower[..lower.len() - 1], 1 << 30),
        _ => (lower, 1),
    };
    let n: u64 = num
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a size like 65536, 64K or 16M"))?;
    n.checked_mul(mult)
        .filter(|&v| v > 0)
        .ok_or_else(|| format!("{s:?} must be above zero and fit in 64 bits"))
}

fn parse_ring(s: &str) -> Result<u32, String> {
    let v = parse_size(s)?;
    if !v.is_power_of_two() || !(4096..=(1 << 30)).contains(&v) {
        return Err(format!(
            "{s:?}: the ring buffer size must be a power of two between 4K and 1G"
        ));
    }
    Ok(v as u32)
}

/// A `--rule-off` value: a rule id, a kind or `all`.
fn parse_rule_off(s: &str) -> Result<String, String> {
    crate::signal::security::RuleSet::all().turn_off(s)?;
    Ok(s.trim().to_string())
}

/// Seconds: a plain number, or a number with a unit (`us`, `ms`, `s`, `m`, `h`).
fn parse_seconds(s: &str) -> Result<f64, String> {
    let t = s.trim();
    let (num, scale) = [
        ("us", 1e-6),
        ("ms", 1e-3),
        ("s", 1.0),
        ("m", 60.0),
        ("h", 3600.0),
    ]
    .iter()
    .find_map(|(unit, scale)| t.strip_suffix(unit).map(|n| (n, *scale)))
    .unwrap_or((t, 1.0));
    match num.trim().parse::<f64>() {
        Ok(v) if v > 0.0 && (v * scale).is_finite() => Ok(v * scale),
        _ => Err(format!(
            "{s:?} is not a positive duration: seconds (`15`, `0.5`) or with a unit (`250ms`, `90s`, `5m`, `1h`)"
        )),
    }
}

/// A sampling interval: a duration, or `off` (0: never).
fn parse_interval(s: &str) -> Result<f64, String> {
    if s.trim() == "off" {
        return Ok(0.0);
    }
    parse_seconds(s)
}

impl OutputArgs {
    /// What the outputs are asked for.
    pub fn settings(&self) -> crate::output::Settings {
        crate::output::Settings {
            jsonl: self.jsonl.clone(),
            quiet: self.quiet,
            label_limit: self.label_limit,
            max_series: self.max_series as usize,
            otlp_endpoint: self.otlp_endpoint.clone(),
            otlp_protocol: self.otlp_protocol.clone(),
            payloads: self.payloads,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("65536"), Ok(65536));
        assert_eq!(parse_size("64K"), Ok(65536));
        assert_eq!(parse_size("16MiB"), Ok(16 << 20));
        assert_eq!(parse_size("1g"), Ok(1 << 30));
        assert!(parse_size("0").is_err());
        assert!(parse_size("lots").is_err());
        assert!(parse_ring("3M").is_err());
        assert!(parse_ring("1K").is_err());
        assert_eq!(parse_ring("8M"), Ok(8 << 20));
    }

    #[test]
    fn rules_turn_off_by_name_and_bad_names_are_refused() {
        let c = Cli::try_parse_from(["mcptap", "--rule-off", "email,secret", "--rule-off", "all"])
            .unwrap();
        assert_eq!(c.output.rules_off, ["email", "secret", "all"]);
        let e = Cli::try_parse_from(["mcptap", "--rule-off", "nope"]).unwrap_err();
        assert!(e.to_string().contains("private-key"), "{e}");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_seconds("15"), Ok(15.0));
        assert_eq!(parse_seconds("0.5"), Ok(0.5));
        assert_eq!(parse_seconds("250ms"), Ok(0.25));
        assert_eq!(parse_seconds("90s"), Ok(90.0));
        assert_eq!(parse_seconds("5m"), Ok(300.0));
        assert_eq!(parse_seconds("1h"), Ok(3600.0));
        assert_eq!(parse_seconds("1us"), Ok(1e-6));
        for bad in ["0", "-1s", "soon", "ms", "5 parsecs", "inf"] {
            assert!(parse_seconds(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_interval("off"), Ok(0.0));
        assert_eq!(parse_interval("1s"), Ok(1.0));
        let c = Cli::try_parse_from(["mcptap"]).unwrap();
        assert_eq!(
            (c.output.process_interval, c.output.server_forget),
            (15.0, 3600.0)
        );
    }

    #[test]
    fn cli_is_consistent_and_parses() {
        Cli::command().debug_assert();
        let c = Cli::try_parse_from([
            "mcptap", "--comm", "node", "--comm", "python3", "--pid", "7",
        ])
        .unwrap();
        assert_eq!(c.live.comms, ["node", "python3"]);
        assert_eq!(
            c.live.listen,
            Listen::Addr("127.0.0.1:9464".parse().unwrap())
        );
        let c = Cli::try_parse_from(["mcptap", "replay", "x.mcptap", "--jsonl", "-"]).unwrap();
        assert!(matches!(c.command, Some(Command::Replay { .. })));
        assert_eq!(c.output.jsonl.as_deref(), Some("-"));
        // Output options before the subcommand apply to it too.
        let c = Cli::try_parse_from(["mcptap", "--jsonl", "a", "-q", "replay", "x"]).unwrap();
        assert_eq!(
            (c.output.jsonl.as_deref(), c.output.quiet),
            (Some("a"), true)
        );
        assert!(Cli::try_parse_from(["mcptap", "--listen", "nope"]).is_err());
        let usage = |args: &[&str]| match parse(args.iter().copied()) {
            Err(CliError::Usage(m)) => m,
            other => panic!("{args:?}: {other:?}"),
        };
        let m = usage(&["mcptap", "--listen", "nope"]);
        assert!(!m.contains('\n') && m.contains("--listen"), "{m}");
        let m = usage(&["mcptap", "--no-such-flag"]);
        assert!(!m.contains('\n') && m.contains("--no-such-flag"), "{m}");
        let m = usage(&["mcptap", "--comm", "node", "replay", "f"]);
        assert!(m.contains("--comm applies to live capture"), "{m}");
        let m = usage(&["mcptap", "replay", "f", "--ring-buffer-size", "1M"]);
        assert!(m.contains("--ring-buffer-size"), "{m}");
        let m = usage(&["mcptap", "--max-message-bytes", "1G"]);
        assert!(m.contains("--max-buffered-bytes"), "{m}");
        assert!(parse(["mcptap", "--jsonl", "-", "replay", "f"]).is_ok());
        assert!(matches!(
            parse(["mcptap", "--help"]),
            Err(CliError::Exit(_))
        ));
        assert!(Cli::try_parse_from(["mcptap", "--ring-buffer-size", "3M"]).is_err());
        assert!(Cli::try_parse_from(["mcptap", "--response-timeout", "-1"]).is_err());
    }
}

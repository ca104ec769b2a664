//! mcptap sees every MCP conversation on a Linux host, from the kernel.
//!
//! The module tree is the pipeline, one way; each stage is a module with one job and its
//! own tests, and only `capture::kernel` touches the kernel:
//!
//! 1. [`capture`]: kernel records in (the ring buffer, or a `--record` file), typed records
//!    out; what the host says of processes and pipes ([`capture::host`]).
//! 2. [`conn`]: the table of process fds, each stream's bytes in order with every hole
//!    named, the one verdict on whether a stream carries MCP, expiry and caps.
//! 3. [`wire`]: framing, pure: newline-delimited JSON, HTTP/1.1, server-sent events; and
//!    [`detect`], what the security rules match in text, pure too.
//! 4. [`mcp::transport`]: one module per MCP transport binding (stdio, Streamable HTTP,
//!    legacy HTTP+SSE) behind one trait, turning frames into [`mcp::message`]s with their
//!    routes; every route is built in [`mcp::transport::route`].
//! 5. [`mcp`]: correlation, sessions and what is derived from them, in the [`mcp::Tracker`].
//! 6. [`signal`]: the one model of what is reported (exchanges, notifications, typed
//!    events) and the processes it names. Above the stages that make signals sit
//!    [`agentic`] (model calls joined to the exchanges they caused), [`health`] (the
//!    processes that serve MCP: what they use, whether each server is up) and [`security`]
//!    (findings that need more than one message: leaks to a model, new executables).
//! 7. [`enrich`]: pods and containers, a value handed to the outputs.
//! 8. [`output`]: console, JSON lines, the metrics (`/metrics`) and OTLP, all behind
//!    [`signal::Sink`], shared by live capture and replay.
//!
//! A module uses only the stages before its own and the signal model (a test,
//! `tests/layering.rs`, checks it). [`pipeline`] composes the stages for one stream of
//! records; [`run`] drives it live or in replay; [`cli`] is the command line; [`bounded`]
//! holds what every capped table shares.
#![warn(missing_docs)]

pub mod agentic;
pub mod bounded;
pub mod capture;
pub mod cli;
pub mod conn;
pub mod detect;
pub mod enrich;
#[doc(hidden)]
pub mod fuzz;
pub mod health;
pub mod llm;
pub mod mcp;
pub mod output;
pub mod pipeline;
pub mod proto;
pub mod run;
pub mod security;
pub mod signal;
pub mod wire;

/// The hash map of the hot path: foldhash, seeded per process (keys come from the wire).
pub type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
/// The hash set of the hot path, as [`FastMap`].
pub type FastSet<K> = std::collections::HashSet<K, foldhash::fast::RandomState>;

//! mcptap sees every MCP conversation on a Linux host, from the kernel.
//!
//! The modules are the pipeline's stages, in order; each is a pure step from bytes to signals
//! with its own tests, and only `capture::kernel` touches the kernel:
//!
//! 1. [`capture`]: kernel records in (ring buffer, or a replay file), typed records out.
//! 2. [`streams`]: ordered bytes per (process, fd, direction), holes named.
//! 3. [`wire`]: framing (newline-delimited JSON for stdio).
//! 4. [`mcp`]: JSON-RPC messages, sessions, request/response correlation.
//! 5. [`signals`]: the one model of what is reported.
//! 6. [`export`]: console, JSON lines, HTTP endpoints.
//!
//! [`pipeline`] wires the stages; [`run`] drives them live or in replay. [`k8s`] names the
//! container and pod of each process (cgroup paths, and the API server's pods of this node).
#![warn(missing_docs)]

pub mod bounded;
pub mod capture;
pub mod cli;
pub mod conn;
pub mod enrich;
#[doc(hidden)]
pub mod fuzz;
pub mod mcp;
pub mod output;
pub mod pipeline;
pub mod run;
pub mod signal;
pub mod wire;

/// The hash map of the hot path: foldhash, seeded per process (keys come from the wire).
pub type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
/// The hash set of the hot path, as [`FastMap`].
pub type FastSet<K> = std::collections::HashSet<K, foldhash::fast::RandomState>;

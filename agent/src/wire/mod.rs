//! Stage 3, wire framing: a stream's bytes in, whole messages out.
//!
//! stdio speaks newline-delimited JSON ([`ndjson`]); the network transports speak HTTP/1.1
//! ([`http1`]) whose bodies are JSON or server-sent events ([`sse`]); [`jscan`] walks JSON
//! text and [`json`] hashes it canonically, neither building the value.

pub mod http;
pub mod http1;
pub mod http2;
pub mod jscan;
pub mod json;
pub mod ndjson;
pub mod sse;
pub mod websocket;

//! Stage 3, wire framing: a stream's bytes in, whole messages out.
//!
//! stdio speaks newline-delimited JSON ([`ndjson`]). The network transports (HTTP/1.1 with
//! JSON or SSE bodies) join here.

pub mod ndjson;

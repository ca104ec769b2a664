//! Stage 2, connections: per process fd, the bytes of each direction in order, every hole
//! named, and whether the fd carries MCP.

pub mod stream;

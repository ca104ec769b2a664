//! Host-side placeholder so that `agent` can name this crate as a build dependency (and be
//! rebuilt when it changes). The programs themselves are the `mcptap` binary target, which
//! only builds for `bpfel-unknown-none`.
#![no_std]

//! Builds the kernel programs (`agent-ebpf`) for the BPF target with aya-build on the nightly
//! toolchain, and leaves the object in OUT_DIR for `include_bytes_aligned!`.
use anyhow::Context as _;
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../agent-ebpf");
    let ebpf = Package {
        name: "mcptap-ebpf",
        root_dir: root,
        ..Default::default()
    };
    aya_build::build_ebpf([ebpf], Toolchain::Nightly).context(
        "building the eBPF programs failed; `cargo xtask bootstrap` installs what they need \
         (LLVM 22, bpf-linker, nightly rust-src)",
    )
}

//! Sets `bpf_target_arch` when the crate is built outside aya-build (clippy, by hand), and
//! fails early, with the fix, when bpf-linker is missing.
fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed=PATH");
    if std::env::var("CARGO_CFG_TARGET_ARCH").as_deref() == Ok("bpf")
        && which::which("bpf-linker").is_err()
    {
        anyhow::bail!(
            "bpf-linker not found in PATH: run `cargo xtask bootstrap` (it builds bpf-linker against LLVM 22)"
        );
    }
    aya_build::emit_bpf_target_arch_cfg()
}

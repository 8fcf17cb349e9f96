use which::which;

/// Rebuild when bpf-linker changes (aya's template does the same).
fn main() {
    let bpf_linker = which("bpf-linker").expect(
        "bpf-linker not found on PATH: run `cargo xtask setup` (it builds bpf-linker 0.13 against llvm-22)",
    );
    println!("cargo::rerun-if-changed={}", bpf_linker.display());
}

//! Builds the eBPF programs (`ctsync-ebpf`) for bpfel-unknown-none with the
//! pinned toolchain and leaves the object in OUT_DIR for `include_bytes_aligned!`.
use anyhow::{Context as _, anyhow};
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    let cargo_metadata::Metadata { packages, .. } = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata")?;
    let ebpf = packages
        .iter()
        .find(|p| p.name.as_str() == "ctsync-ebpf")
        .ok_or_else(|| anyhow!("ctsync-ebpf package not found in the workspace"))?;
    let root_dir = ebpf
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("ctsync-ebpf manifest has no parent directory"))?
        .as_str();
    aya_build::build_ebpf(
        [Package {
            name: ebpf.name.as_str(),
            root_dir,
            ..Default::default()
        }],
        // Same as rust-toolchain.toml: its LLVM matches bpf-linker's.
        Toolchain::Custom("1.98.0"),
    )
    .context(
        "building the eBPF programs failed; `cargo xtask setup` installs bpf-linker and rust-src",
    )
}

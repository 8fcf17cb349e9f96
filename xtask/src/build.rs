//! Building the workspace from xtask: always `--release` (the eBPF object is
//! built once per profile; one profile keeps builds cached), with the cargo
//! that runs xtask itself (the pinned toolchain).

use std::{path::PathBuf, process::Command};

use anyhow::Result;

use crate::exec;

/// The workspace root (xtask lives one level below it).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask is inside the workspace")
        .to_path_buf()
}

/// A `cargo` command in the workspace root.
pub fn cargo() -> Command {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut c = Command::new(cargo);
    c.current_dir(workspace_root());
    c
}

/// Builds every binary of the default members: ctsync, ctgen, ctsync-traffic, ctsync-bench.
pub fn release_bins() -> Result<()> {
    exec::exec(cargo().args(["build", "--release", "--bins"]))
}

/// Path of a built release binary.
pub fn bin(name: &str) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"));
    target.join("release").join(name)
}

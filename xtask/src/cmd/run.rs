//! `cargo xtask run -- ARGS`: build ctsync and run it with ARGS on this host
//! (the deployment command: `cargo xtask run -- run --config /etc/ctsync/ctsync.toml`).

use std::os::unix::process::CommandExt;

use anyhow::{Context, Result};
use xtask::{build, exec, setup};

#[derive(clap::Args)]
pub struct Args {
    /// Arguments for `ctsync` (see `cargo xtask run -- --help`).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    args: Vec<String>,
}

pub fn run(args: Args) -> Result<()> {
    setup::ensure()?;
    exec::exec(build::cargo().args(["build", "--release", "-p", "ctsync", "--bin", "ctsync"]))?;
    let bin = build::bin("ctsync");
    // Replace xtask so that signals (SIGTERM, SIGHUP) reach the agent directly.
    let err = std::process::Command::new(&bin).args(&args.args).exec();
    Err(err).with_context(|| format!("running {}", bin.display()))
}

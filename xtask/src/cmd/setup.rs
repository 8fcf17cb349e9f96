//! `cargo xtask setup`.

use anyhow::Result;

/// No options: every check always runs, and is quick when nothing is missing.
#[derive(clap::Args)]
pub struct Args {}

pub fn run(Args {}: Args) -> Result<()> {
    xtask::setup::run()
}

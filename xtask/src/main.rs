//! `cargo xtask`: developer and operator tasks for ctsync.
//!
//! One module per subcommand under `src/cmd/`, each with a clap `Args` and a
//! `run(Args)`; the work itself lives in the library (`xtask::setup`,
//! `xtask::lab`, ...) so that tests can use it too.

use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};

mod cmd {
    pub mod lab;
    pub mod setup;
}

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    about = "Developer and operator tasks for ctsync"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check and install the prerequisites (run as root; fast when all present).
    Setup(cmd::setup::Args),
    /// Build, inspect and remove the network-namespace lab (as root).
    Lab(cmd::lab::Args),
}

fn main() -> ExitCode {
    let result: Result<()> = match Cli::parse().command {
        Command::Setup(args) => cmd::setup::run(args),
        Command::Lab(args) => cmd::lab::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // The whole context chain on one line, without a backtrace: these
            // errors say what to do, they are not bugs.
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

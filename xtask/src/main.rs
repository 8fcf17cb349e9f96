//! `cargo xtask`: developer and operator tasks for ctsync.
//!
//! One module per subcommand under `src/cmd/`, each with a clap `Args` and a
//! `run(Args)`; the work itself lives in the library (`xtask::setup`,
//! `xtask::lab`, ...) so that tests can use it too.

use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};

mod cmd {
    pub mod bench;
    pub mod demo;
    pub mod lab;
    pub mod run;
    pub mod setup;
    pub mod test;
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
    /// The lab demo: set-up, build, lab, agent, real traffic, what ctsync saw.
    Demo(cmd::demo::Args),
    /// Every test: set-up, format check, build, unit and kernel tests (as root).
    Test(cmd::test::Args),
    /// Benchmarks side by side with conntrackd (a report, not a test).
    Bench(cmd::bench::Args),
    /// Build ctsync and run it on this host: `cargo xtask run -- run --config FILE`.
    Run(cmd::run::Args),
}

fn main() -> ExitCode {
    let result: Result<()> = match Cli::parse().command {
        Command::Setup(args) => cmd::setup::run(args),
        Command::Lab(args) => cmd::lab::run(args),
        Command::Demo(args) => cmd::demo::run(args),
        Command::Test(args) => cmd::test::run(args),
        Command::Run(args) => cmd::run::run(args),
        Command::Bench(args) => cmd::bench::run(args),
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

//! `ctsync-traffic`: real TCP/UDP traffic through the lab's firewalls.
//!
//! `serve` runs echo servers; `client` opens many connections and flows, keeps a
//! numbered message going on each, and reports which survived (for instance a
//! firewall failover) and the longest silence each saw. The client always exits 0
//! once it ran, whatever happened to the connections: the caller judges the report.
//! Non-zero exits are for usage (2) and setup errors (1) only.

#[path = "../traffic/mod.rs"]
mod traffic;

use std::io::Write;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

use traffic::{client, server};

#[derive(Debug, Parser)]
#[command(
    name = "ctsync-traffic",
    version,
    about = "Real-traffic load generator for the ctsync lab"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// TCP and UDP echo servers, until SIGTERM/SIGINT.
    Serve(server::ServeArgs),
    /// Connections and flows to one server; prints a summary, optionally a JSON report.
    Client(client::ClientArgs),
}

/// Thousands of connections need as many descriptors: soft limit up to
/// the hard one.
fn raise_nofile() {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain syscalls with a valid out pointer.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 && r.rlim_cur < r.rlim_max {
            r.rlim_cur = r.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        }
    }
}

fn main() -> ExitCode {
    raise_nofile();
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ctsync-traffic: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Two workers: the target machines have two cores, and one task per connection
/// spreads over both. Network namespaces are per thread, but every thread of this
/// process inherits the one it was started in (`ip netns exec`), so that is fine.
fn runtime() -> Result<tokio::runtime::Runtime> {
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get().min(2));
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .context("building the tokio runtime")
}

fn run(cli: Cli) -> Result<()> {
    match cli.cmd {
        Cmd::Serve(args) => runtime()?.block_on(server::run(args)),
        Cmd::Client(args) => {
            let report_path = args.report_json.clone();
            let cfg = args.validate()?;
            let report = runtime()?.block_on(client::run(cfg))?;
            println!("{}", report.summary());
            if let Some(path) = report_path {
                let mut json = serde_json::to_vec_pretty(&report).context("encoding report")?;
                json.push(b'\n');
                if path.as_os_str() == "-" {
                    std::io::stdout()
                        .write_all(&json)
                        .context("writing report to stdout")?;
                } else {
                    traffic::sys::write_atomic(&path, &json)?;
                }
            }
            Ok(())
        }
    }
}

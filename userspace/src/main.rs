//! The `ctsync` command: the agent (`run`) and the verbs that talk to it.

use std::{
    io::Write,
    path::{Path, PathBuf},
    process::ExitCode,
};

use clap::{Parser, Subcommand};
use ctsync::{
    agent::Agent,
    config::{Config, DEFAULT_CONTROL_SOCKET},
    control::{CacheName, Client, NotifyState, Request},
};

/// Default config file, used when it exists and no --config is given.
const DEFAULT_CONFIG: &str = "/etc/ctsync/ctsync.toml";

#[derive(Parser)]
#[command(
    name = "ctsync",
    version,
    about = "Conntrack state synchronisation for firewall pairs",
    long_about = "ctsync keeps the conntrack table of an active firewall replicated so that \
                  established connections survive a failover. `ctsync run` starts the agent; \
                  the other verbs talk to a running agent over its control socket."
)]
struct Cli {
    /// Control socket of the running agent (default: general.control_socket of the config).
    #[arg(long, global = true, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// Config file (default: /etc/ctsync/ctsync.toml if it exists, else built-in defaults).
    #[arg(long, short, global = true, value_name = "PATH")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the agent in the foreground (SIGHUP reloads the config, SIGTERM stops).
    Run,
    /// Validate a config file without running anything.
    CheckConfig {
        /// The file to check.
        path: PathBuf,
    },
    /// Print the entries of a cache.
    Dump {
        #[arg(value_enum)]
        which: Which,
        /// One JSON object per entry, as a JSON array.
        #[arg(long)]
        json: bool,
    },
    /// Print the agent's counters.
    Stats {
        #[arg(long)]
        json: bool,
    },
    /// Print the latency histograms: change read from the kernel to sent
    /// in a sync datagram (event_to_send), sync datagram sent to
    /// acknowledged by the peer (ack_rtt), commit and notify durations.
    Latency {
        #[arg(long)]
        json: bool,
    },
    /// Ask the agent to re-read its config file (same as SIGHUP).
    Reload,
    /// Resynchronise a cache.
    Resync {
        #[arg(value_enum)]
        what: ResyncWhat,
    },
    /// Write the external cache (the peer's state) into the kernel table.
    ///
    /// Entries are created, or updated where they exist, in batches; the
    /// answer counts what was created, updated and failed (by errno).
    /// `notify master` does this and more; use this alone to test.
    Commit,
    /// Empty a cache without telling the peer.
    Flush {
        #[arg(value_enum)]
        which: Which,
    },
    /// Shorten the timers of this node's kernel entries to
    /// failover.purge_timeout (conntrackd's -t).
    Purge,
    /// Run every step of a VRRP state change, for keepalived's notify scripts.
    ///
    /// master: commit the external cache, resync the internal cache with
    /// the kernel, flush the external cache, bulk-send to the peer.
    /// backup: ask the peer for a full resend, purge.
    /// fault: purge.
    /// Safe to run twice. Prints each step and its duration; exits non-zero
    /// if a step failed (the answer says which).
    Notify {
        #[arg(value_enum, ignore_case = true)]
        state: State,
        /// Print the whole report as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(clap::ValueEnum, Clone, Copy)]
enum State {
    Master,
    Backup,
    Fault,
}

#[derive(clap::ValueEnum, Clone, Copy)]
enum Which {
    /// The local conntrack table as the agent knows it.
    Internal,
    /// The peer's conntrack table, as replicated to this node.
    External,
}

#[derive(clap::ValueEnum, Clone, Copy)]
enum ResyncWhat {
    /// Rebuild the internal cache from a kernel table dump.
    Kernel,
    /// Ask the peer to resend its whole internal cache.
    Request,
    /// Send our whole internal cache to the peer.
    Bulk,
}

fn load_config(explicit: Option<&Path>) -> anyhow::Result<(Config, Option<PathBuf>)> {
    match explicit {
        Some(p) => Ok((Config::load(p)?, Some(p.to_owned()))),
        None if Path::new(DEFAULT_CONFIG).exists() => Ok((
            Config::load(Path::new(DEFAULT_CONFIG))?,
            Some(DEFAULT_CONFIG.into()),
        )),
        None => Ok((Config::default(), None)),
    }
}

fn socket_path(cli: &Cli) -> PathBuf {
    if let Some(s) = &cli.socket {
        return s.clone();
    }
    match load_config(cli.config.as_deref()) {
        Ok((c, _)) => c.general.control_socket,
        Err(_) => DEFAULT_CONTROL_SOCKET.into(),
    }
}

fn init_logging(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn run(cli: &Cli) -> anyhow::Result<()> {
    let (mut config, path) = load_config(cli.config.as_deref())?;
    if let Some(s) = &cli.socket {
        config.general.control_socket = s.clone();
    }
    init_logging(&config.general.log_level);
    match &path {
        Some(p) => tracing::info!("config {}", p.display()),
        None => tracing::info!("no config file: built-in defaults"),
    }
    set_realtime(config.general.realtime_priority);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let agent = Agent::start(config, path)?;
        let shutdown = async {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("SIGTERM handler");
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        };
        agent.run(shutdown).await?;
        anyhow::Ok(())
    })
}

/// SCHED_RR at `priority` for the agent's (single) thread, if not 0. A
/// refusal is logged, not fatal: the agent works, only with more latency.
fn set_realtime(priority: u8) {
    if priority == 0 {
        return;
    }
    let param = libc::sched_param {
        sched_priority: i32::from(priority),
    };
    // SAFETY: plain syscall on this process with a valid parameter block.
    if unsafe { libc::sched_setscheduler(0, libc::SCHED_RR, &param) } != 0 {
        tracing::warn!(
            "general.realtime_priority = {priority}: SCHED_RR refused ({}); running with normal \
             scheduling (needs CAP_SYS_NICE, and RLIMIT_RTPRIO under systemd)",
            std::io::Error::last_os_error()
        );
    } else {
        tracing::info!("scheduling: SCHED_RR, priority {priority}");
    }
}

fn print_json(v: &serde_json::Value) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

fn main_inner(cli: Cli) -> anyhow::Result<()> {
    match &cli.cmd {
        Cmd::Run => run(&cli),
        Cmd::CheckConfig { path } => {
            Config::load(path)?;
            println!("{}: ok", path.display());
            Ok(())
        }
        Cmd::Dump { which, json } => {
            let req = match which {
                Which::Internal => Request::DumpInternal,
                Which::External => Request::DumpExternal,
            };
            let (client, reply) = Client::request(&socket_path(&cli), &req)?;
            let count = reply.count.unwrap_or(0);
            let out = std::io::stdout();
            let mut out = std::io::BufWriter::new(out.lock());
            if *json {
                writeln!(out, "[")?;
            }
            for (i, e) in client.entries(count).enumerate() {
                let e = e?;
                if *json {
                    let sep = if i + 1 < count { "," } else { "" };
                    writeln!(out, "{}{sep}", serde_json::to_string(&e)?)?;
                } else {
                    writeln!(out, "{}", e.to_line())?;
                }
            }
            if *json {
                writeln!(out, "]")?;
            } else {
                eprintln!("{count} entries");
            }
            Ok(())
        }
        Cmd::Stats { json } => {
            let (_, reply) = Client::request(&socket_path(&cli), &Request::Stats)?;
            let data = reply.data.unwrap_or_default();
            if *json {
                return print_json(&data);
            }
            for (section, v) in data.as_object().into_iter().flatten() {
                println!("{section}:");
                for (k, v) in v.as_object().into_iter().flatten() {
                    println!("  {k:<18} {v}");
                }
            }
            Ok(())
        }
        Cmd::Latency { json } => {
            let (_, reply) = Client::request(&socket_path(&cli), &Request::Latency)?;
            let data = reply.data.unwrap_or_default();
            if *json {
                return print_json(&data);
            }
            print!("{}", latency_text(&data));
            Ok(())
        }
        Cmd::Reload => {
            let (_, reply) = Client::request(&socket_path(&cli), &Request::Reload)?;
            print_json(&reply.data.unwrap_or_default())
        }
        Cmd::Resync { what } => {
            let req = match what {
                ResyncWhat::Kernel => Request::ResyncKernel,
                ResyncWhat::Request => Request::ResyncRequest,
                ResyncWhat::Bulk => Request::ResyncBulk,
            };
            let (_, reply) = Client::request(&socket_path(&cli), &req)?;
            print_json(&reply.data.unwrap_or_default())
        }
        Cmd::Commit | Cmd::Purge => {
            let req = match cli.cmd {
                Cmd::Commit => Request::Commit,
                _ => Request::Purge,
            };
            let (_, reply) = Client::request(&socket_path(&cli), &req)?;
            print_json(&reply.data.unwrap_or_default())
        }
        Cmd::Flush { which } => {
            let cache = match which {
                Which::Internal => CacheName::Internal,
                Which::External => CacheName::External,
            };
            let (_, reply) = Client::request(&socket_path(&cli), &Request::Flush { cache })?;
            print_json(&reply.data.unwrap_or_default())
        }
        Cmd::Notify { state, json } => {
            let state = match state {
                State::Master => NotifyState::Master,
                State::Backup => NotifyState::Backup,
                State::Fault => NotifyState::Fault,
            };
            let (_, reply) = Client::request(&socket_path(&cli), &Request::Notify { state })?;
            let data = reply.data.unwrap_or_default();
            if *json {
                return print_json(&data);
            }
            for s in data["steps"].as_array().into_iter().flatten() {
                println!(
                    "{:<16} {:>9.1} ms  {}",
                    s["step"].as_str().unwrap_or("?"),
                    s["ms"].as_f64().unwrap_or(0.0),
                    s["result"]
                );
            }
            println!(
                "{:<16} {:>9.1} ms",
                "total",
                data["total_ms"].as_f64().unwrap_or(0.0)
            );
            Ok(())
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if !matches!(cli.cmd, Cmd::Run) {
        // A CLI verb piped into `head` should end quietly, as other tools do.
        // (The agent keeps Rust's default: a control client that goes away
        // is an EPIPE on that connection only.)
        // SAFETY: setting a signal disposition before any thread exists.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    match main_inner(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Our errors already name their cause; `{e}` avoids repeating it.
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `ctsync latency` for people: percentiles per histogram, then its
/// power-of-two buckets as bars.
fn latency_text(data: &serde_json::Value) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let us = |v: &serde_json::Value| match v.as_u64() {
        Some(n) if n >= 10_000 => format!("{:.1} ms", n as f64 / 1e3),
        Some(n) => format!("{n} µs"),
        None => "-".into(),
    };
    for (name, h) in data.as_object().into_iter().flatten() {
        let count = h["count"].as_u64().unwrap_or(0);
        if h.is_null() {
            let _ = writeln!(out, "{name}: no replication configured");
            continue;
        }
        if count == 0 {
            let _ = writeln!(out, "{name}: no samples yet");
            continue;
        }
        let _ = writeln!(
            out,
            "{name}: {count} samples; p50 {}, p90 {}, p99 {}, p99.9 {}, max {}",
            us(&h["p50_us"]),
            us(&h["p90_us"]),
            us(&h["p99_us"]),
            us(&h["p999_us"]),
            us(&h["max_us"])
        );
        let buckets = h["buckets"].as_array().cloned().unwrap_or_default();
        let top = buckets
            .iter()
            .filter_map(|b| b["count"].as_u64())
            .max()
            .unwrap_or(1)
            .max(1);
        for b in &buckets {
            let c = b["count"].as_u64().unwrap_or(0);
            let bar = "#".repeat(((c * 40).div_ceil(top)) as usize);
            let _ = writeln!(out, "  <= {:>10} {c:>9} {bar}", us(&b["le_us"]));
        }
    }
    out
}

//! `ctgen`: creates (or deletes) many synthetic conntrack entries through
//! batched ctnetlink writes, in the network namespace it runs in. The tests
//! use it for bulk inserts and event floods; the benchmarks for event load.

use std::{process::ExitCode, time::Instant};

use anyhow::{Context, bail};
use clap::Parser;
use ctsync::nlsock::NlSocket;
use ctsync_bench::entries::{self, Spec};

#[derive(Parser)]
#[command(
    name = "ctgen",
    about = "Create or delete synthetic conntrack entries in bulk (batched ctnetlink)"
)]
struct Args {
    /// Number of entries.
    #[arg(long)]
    count: u32,
    #[command(flatten)]
    spec: Spec,
    /// Messages per sendmsg (an ACK is requested on the last of each).
    #[arg(long, default_value_t = 256)]
    batch: usize,
    /// At most this many entries per second (0: as fast as the kernel takes them).
    #[arg(long, default_value_t = 0)]
    rate: u32,
    /// Delete the entries instead of creating them.
    #[arg(long)]
    delete: bool,
    /// Don't fail on per-entry errors (e.g. EEXIST); report them.
    #[arg(long)]
    ignore_errors: bool,
}

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ctgen: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    if args.spec.family != 4 && args.spec.family != 6 {
        bail!("--family must be 4 or 6");
    }
    let sock = NlSocket::open(0, false).context("opening a ctnetlink socket (needs root)")?;
    sock.set_recv_buffer(8 << 20)
        .context("setting the receive buffer")?;
    let t0 = Instant::now();
    let errors = entries::write(
        &sock,
        &args.spec,
        args.count,
        args.batch,
        args.delete,
        args.rate,
    )?;
    let secs = t0.elapsed().as_secs_f64();
    let failed: u64 = errors.values().sum();
    println!(
        "{} {} entries in {secs:.3} s ({:.0}/s), {failed} failed",
        if args.delete { "deleted" } else { "created" },
        u64::from(args.count) - failed,
        f64::from(args.count) / secs
    );
    if failed > 0 {
        let list: Vec<String> = errors
            .iter()
            .map(|(e, n)| format!("{n} x {}", std::io::Error::from_raw_os_error(*e)))
            .collect();
        let msg = format!("errors: {}", list.join(", "));
        if !args.ignore_errors {
            bail!(msg);
        }
        println!("{msg}");
    }
    Ok(())
}

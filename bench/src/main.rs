//! `ctsync-bench`: measurements of ctsync's parts (not tests: nothing here
//! passes or fails). Each prints a human summary and, with `--json`, a JSON
//! object for reports.
//!
//! - `decode`: captures real conntrack events from the kernel (in a private
//!   network namespace), then times ctsync's decoder, and decoder plus
//!   internal-cache update, over them.
//! - `memory`: the internal cache's memory per entry at a given size.

use std::time::Instant;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use ctsync::{
    cache::Cache,
    ctnetlink::{self, Decoded, EventKind},
    latency,
    nlsock::{NlSocket, RecvBatch, groups},
};
use ctsync_bench::{
    entries::{self, Proto, Spec},
    stamps,
};
use ctsync_common::{CtExt, CtRecord};
use serde_json::json;

#[derive(Parser)]
#[command(name = "ctsync-bench", about = "Measurements of ctsync's parts")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
    /// Print a JSON object instead of the summary.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Subcommand)]
enum Cmd {
    /// Decode cost per conntrack event (real kernel events, captured first).
    Decode {
        /// Events to capture (half IPv4 with SNAT, half IPv6; TCP and UDP).
        #[arg(long, default_value_t = 200_000)]
        events: u32,
        /// Passes over the captured events.
        #[arg(long, default_value_t = 10)]
        passes: u32,
    },
    /// Internal cache memory per entry.
    Memory {
        #[arg(long, default_value_t = 1_000_000)]
        entries: u32,
    },
    /// Per entry, the time from its creation in the primary's kernel table
    /// to its creation in the backup's: the two tables' conntrack
    /// timestamps (net.netfilter.nf_conntrack_timestamp = 1 in both
    /// namespaces before the entries were made).
    Stamps {
        /// Network namespace of the primary (an `ip netns` name).
        #[arg(long)]
        primary: String,
        /// Network namespace of the backup.
        #[arg(long)]
        backup: String,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let out = match cli.cmd {
        Cmd::Decode { events, passes } => decode(events, passes)?,
        Cmd::Memory { entries } => memory(entries),
        Cmd::Stamps { primary, backup } => stamps(&primary, &backup)?,
    };
    if cli.json {
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!("{}", out["summary"].as_str().unwrap_or_default());
    }
    Ok(())
}

fn stamps(primary: &str, backup: &str) -> anyhow::Result<serde_json::Value> {
    let (p, p_unstamped) = stamps::dump(&stamps::socket_in(primary)?)?;
    let (b, b_unstamped) = stamps::dump(&stamps::socket_in(backup)?)?;
    if p_unstamped > 0 || b_unstamped > 0 {
        bail!(
            "{p_unstamped} entries in {primary} and {b_unstamped} in {backup} have no creation \
             stamp: set net.netfilter.nf_conntrack_timestamp = 1 in both before making them"
        );
    }
    let mut h = latency::histogram();
    let (mut missing, mut backwards) = (0u64, 0u64);
    for (tuple, t1) in &p {
        match b.get(tuple) {
            Some(&t2) if t2 >= *t1 => {
                latency::record(&mut h, std::time::Duration::from_nanos(t2 - t1))
            }
            // Made on the backup before the primary (a stale entry).
            Some(_) => backwards += 1,
            None => missing += 1,
        }
    }
    let hist = latency::summary(&h);
    Ok(json!({
        "primary_entries": p.len(),
        "backup_entries": b.len(),
        "missing": missing,
        "backwards": backwards,
        "latency": hist,
        "summary": format!(
            "{} of {} primary entries on the backup ({missing} missing, {backwards} older there); \
             kernel to backup's kernel p50 {} µs, p99 {} µs, p99.9 {} µs, max {} µs",
            h.len(), p.len(), hist["p50_us"], hist["p99_us"], hist["p999_us"], hist["max_us"]
        ),
    }))
}

/// Captures `n` real NEW events: entries created through ctnetlink in a
/// private network namespace, read back from an event socket.
fn capture(n: u32) -> anyhow::Result<Vec<Vec<u8>>> {
    // SAFETY: plain syscall; this thread (the only one) moves to a new namespace.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        bail!(
            "unshare(CLONE_NEWNET): {} (run as root)",
            std::io::Error::last_os_error()
        );
    }
    let ev = NlSocket::open(groups::CT_ALL, true).context("event socket")?;
    ev.set_recv_buffer(1 << 30)?;
    let writer = NlSocket::open(0, false)?;
    writer.set_recv_buffer(8 << 20)?;
    let mut batch = RecvBatch::new(256, 8192);
    let mut captured = Vec::with_capacity(n as usize);
    let half = n / 2;
    for (family, nat) in [(4, true), (6, false)] {
        let spec = Spec {
            family,
            proto: Proto::Mixed,
            src_base: None,
            dst: None,
            nat,
            nat_to: None,
            timeout: 600,
            zone: 0,
            mark: 0,
        };
        // The event socket's buffer (1 GiB) holds every event until read.
        let errors = entries::write(&writer, &spec, half, 256, false, 0)?;
        if !errors.is_empty() {
            bail!("creating entries failed: {errors:?}");
        }
    }
    loop {
        match batch.recv(&ev) {
            Ok(k) => (0..k).for_each(|i| captured.push(batch.get(i).0.to_vec())),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) => {
                return Err(e)
                    .context("reading events (an overrun means the buffer was too small)");
            }
        }
    }
    if captured.len() < n as usize / 2 * 2 {
        bail!("captured {} events of {}", captured.len(), n);
    }
    Ok(captured)
}

fn decode(n: u32, passes: u32) -> anyhow::Result<serde_json::Value> {
    let events = capture(n)?;
    let bytes: usize = events.iter().map(Vec::len).sum();
    let mut rec = CtRecord::default();
    let mut ext = CtExt::default();
    let mut decoded = 0u64;
    let t0 = Instant::now();
    for _ in 0..passes {
        for d in &events {
            for msg in ctnetlink::messages(d) {
                if let Ok(Decoded::Conntrack { .. }) =
                    ctnetlink::decode(msg.unwrap_or_default(), &mut rec, &mut ext)
                {
                    decoded += 1;
                }
            }
        }
        std::hint::black_box(&rec);
    }
    let decode_ns = t0.elapsed().as_nanos() as f64 / decoded as f64;

    let mut applied = 0u64;
    let mut cache = Cache::new();
    let t0 = Instant::now();
    for _ in 0..passes {
        for d in &events {
            for msg in ctnetlink::messages(d) {
                match ctnetlink::decode(msg.unwrap_or_default(), &mut rec, &mut ext) {
                    Ok(Decoded::Conntrack {
                        kind: EventKind::Destroy,
                        ..
                    }) => {
                        cache.remove(&rec.orig);
                    }
                    Ok(Decoded::Conntrack { .. }) => {
                        cache.upsert(&rec, Some(&ext));
                    }
                    _ => continue,
                }
                applied += 1;
            }
        }
        cache.drain_changes(usize::MAX, |c| {
            std::hint::black_box(c);
        });
    }
    let apply_ns = t0.elapsed().as_nanos() as f64 / applied as f64;
    let summary = format!(
        "decode: {} real kernel events ({:.0} bytes each), {passes} passes: {decode_ns:.0} ns/event decode, \
         {apply_ns:.0} ns/event decode + internal cache update + change drain; {} bytes/entry in the cache",
        decoded / u64::from(passes),
        bytes as f64 / events.len() as f64,
        cache.memory_bytes() / cache.len().max(1),
    );
    Ok(json!({
        "summary": summary,
        "events": decoded / u64::from(passes),
        "bytes_per_event": bytes as f64 / events.len() as f64,
        "decode_ns_per_event": decode_ns,
        "decode_and_cache_ns_per_event": apply_ns,
    }))
}

fn memory(n: u32) -> serde_json::Value {
    let spec = |family| Spec {
        family,
        proto: Proto::Mixed,
        src_base: None,
        dst: None,
        nat: true,
        nat_to: None,
        timeout: 600,
        zone: 0,
        mark: 0,
    };
    let (v4, v6) = (spec(4), spec(6));
    let rss0 = rss_bytes();
    let mut cache = Cache::new();
    for i in 0..n {
        let r = if i % 2 == 0 {
            v4.record(i / 2)
        } else {
            v6.record(i / 2)
        };
        cache.upsert(&r, None);
        if i % 4096 == 0 {
            cache.drain_changes(usize::MAX, |_| {});
        }
    }
    cache.drain_changes(usize::MAX, |_| {});
    let rss = rss_bytes().saturating_sub(rss0);
    let per = cache.memory_bytes() as f64 / cache.len() as f64;
    let per_rss = rss as f64 / cache.len() as f64;
    json!({
        "summary": format!(
            "memory: {} entries: {per:.1} bytes/entry counted by the cache, {per_rss:.1} bytes/entry by RSS growth (target < 150)",
            cache.len()
        ),
        "entries": cache.len(),
        "bytes_per_entry": per,
        "rss_bytes_per_entry": per_rss,
    })
}

fn rss_bytes() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: usize = statm
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

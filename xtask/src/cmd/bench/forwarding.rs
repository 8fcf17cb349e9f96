//! Forwarding capacity lost: the new-flow rate fw1 forwards with no sync
//! daemon, with ctsync and with conntrackd (each pair on fw1 and fw2, FT-FW
//! over the sync link). `ctflows` in the client sends one UDP datagram per
//! new flow, unpaced, through fw1 (SNAT, a conntrack entry and a NEW event
//! each); nftables in the server counts what arrives. Rounds interleave the
//! three so that drift on a shared machine hits all of them; the median counts.
//!
//! On the lab's 2 cores the generator, fw1's forwarding (softirq, mostly on
//! the sender's core) and the daemons share the CPUs: the ratio says how much
//! a daemon takes from the flow path on the same machine, not a line rate.

use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::Value;
use xtask::{
    agent::start_pair_with,
    build,
    conntrackd::{Backup, Conntrackd},
    exec,
    lab::{Fw, Lab, Node, SERVER_V4},
};

use super::{progress::Progress, report::Report};

/// Flows per run: well under nf_conntrack_max (262144) on fw1.
const FLOWS: u32 = 150_000;
const ROUNDS: usize = 3;
/// Longest wait, in seconds, for the backup's count to stop growing.
const REPLICATION_WAIT_S: u32 = 20;

#[derive(Clone, Copy, PartialEq)]
enum Daemon {
    None,
    Ctsync,
    Conntrackd,
}

const DAEMONS: [(Daemon, &str); 3] = [
    (Daemon::None, "no sync daemon"),
    (Daemon::Ctsync, "ctsync"),
    (Daemon::Conntrackd, "conntrackd"),
];

pub const STEPS: usize = ROUNDS * DAEMONS.len();

/// Counts the generator's datagrams where they arrive, then drops them
/// (before any socket, so the server answers nothing).
const SINK: &str = r#"
table inet ctflows_sink {
    counter rx {}
    chain prerouting {
        type filter hook prerouting priority raw; policy accept;
        udp dport 10000-59999 counter name "rx" drop
    }
}
"#;

struct Run {
    sent: u64,
    forwarded: u64,
    /// Entries in the backup's external cache after the run (with a daemon).
    replicated: Option<u64>,
    seconds: f64,
}

impl Run {
    fn per_s(&self) -> f64 {
        self.forwarded as f64 / self.seconds
    }
}

pub fn run(lab: &Lab, report: &mut Report, progress: &mut Progress) -> Result<()> {
    println!(
        "\n== forwarding capacity: new UDP flows per second through fw1 (SNAT), {FLOWS} flows \
         unpaced per run, {ROUNDS} rounds; no daemon vs ctsync vs conntrackd =="
    );
    let _ = lab.exec(
        Node::Server,
        &["nft", "delete", "table", "inet", "ctflows_sink"],
    );
    exec::output_with_input(
        &mut lab.command(Node::Server, &["nft", "-f", "-"]),
        SINK.as_bytes(),
    )?;
    let mut rates: [Vec<f64>; 3] = Default::default();
    // Per daemon, the round whose backup held the smallest share.
    let mut worst: [Option<(u64, u64)>; 3] = [None; 3];
    let result = (|| -> Result<()> {
        for round in 1..=ROUNDS {
            for (i, (daemon, name)) in DAEMONS.iter().enumerate() {
                let r = progress.step(&format!("forwarding, {name}, round {round}"), || {
                    one(lab, *daemon)
                })?;
                let copies = r
                    .replicated
                    .map(|n| format!("; the backup's external cache holds {n}"))
                    .unwrap_or_default();
                println!(
                    "{name}, round {round}: {} of {} flows forwarded in {:.2} s: {:.0} flows/s{copies}",
                    r.forwarded,
                    r.sent,
                    r.seconds,
                    r.per_s()
                );
                rates[i].push(r.per_s());
                if let Some(n) = r.replicated {
                    let share = |(n, of): (u64, u64)| n as f64 / of.max(1) as f64;
                    if worst[i].is_none_or(|w| share((n, r.forwarded)) < share(w)) {
                        worst[i] = Some((n, r.forwarded));
                    }
                }
            }
        }
        Ok(())
    })();
    let _ = lab.exec(
        Node::Server,
        &["nft", "delete", "table", "inet", "ctflows_sink"],
    );
    result?;
    let [none, ctsync, conntrackd] = rates.map(median);
    println!(
        "median flows/s: no daemon {none:.0}, ctsync {ctsync:.0} ({:.2}x), conntrackd \
         {conntrackd:.0} ({:.2}x)",
        ctsync / none,
        conntrackd / none
    );
    report.row(
        &format!(
            "new flows fw1 forwards per second with the daemon running (UDP, SNAT, {FLOWS} \
             flows unpaced, median of {ROUNDS}; no daemon: {none:.0}/s)"
        ),
        format!("{ctsync:.0}/s ({:.2}x)", ctsync / none),
        format!("{conntrackd:.0}/s ({:.2}x)", conntrackd / none),
        format!("{:.2}x conntrackd's", ctsync / conntrackd),
    );
    let of = |w: Option<(u64, u64)>| w.map_or("-".into(), |(n, f)| format!("{n} of {f}"));
    report.row(
        "entries on the backup after those runs (worst round)",
        of(worst[1]),
        of(worst[2]),
        "all".into(),
    );
    Ok(())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// One run: empty tables, the daemon pair up, the flows sent, the arrivals counted.
fn one(lab: &Lab, daemon: Daemon) -> Result<Run> {
    for fw in [Fw::Fw1, Fw::Fw2] {
        exec::output(&mut lab.command(fw.node(), &["conntrack", "-F"]))?;
    }
    let dir = std::env::temp_dir().join(format!("ctsync-bench-fwd-{}", std::process::id()));
    // Held for the run; dropping them stops the daemons.
    let (mut ctsync_pair, mut conntrackd_pair) = (None, None);
    match daemon {
        Daemon::None => {}
        Daemon::Ctsync => {
            ctsync_pair = Some(start_pair_with(
                lab,
                &build::bin("ctsync"),
                &format!("fwd-{}", lab.prefix()),
                "",
                "",
            )?)
        }
        Daemon::Conntrackd => {
            conntrackd_pair = Some((
                Conntrackd::start_with(lab, Fw::Fw1, &dir, Backup::ExternalCache)?,
                Conntrackd::start_with(lab, Fw::Fw2, &dir, Backup::ExternalCache)?,
            ))
        }
    }
    // The daemons' start-up (dumps, bulk requests) done before the load.
    std::thread::sleep(Duration::from_secs(1));
    let before = received(lab)?;
    let bin = build::bin("ctflows");
    let flows = FLOWS.to_string();
    let server = SERVER_V4.to_string();
    let out = exec::stdout(&mut lab.command(
        Node::Client,
        &[
            bin.to_str().context("path not UTF-8")?,
            "--server",
            &server,
            "--flows",
            &flows,
        ],
    ))?;
    // Datagrams still queued on the way arrive within this.
    std::thread::sleep(Duration::from_millis(500));
    let forwarded = received(lab)? - before;
    // What reached the backup once replication caught up (or stopped).
    let backup_count = || -> Result<Option<u64>> {
        if let Some((_, fw2)) = &ctsync_pair {
            return Ok(fw2.stats()?["sync"]["external_entries"].as_u64());
        }
        if let Some((_, c2)) = &conntrackd_pair {
            return Ok(Some(c2.external_count(lab)?));
        }
        Ok(None)
    };
    let mut replicated = backup_count()?;
    for _ in 0..REPLICATION_WAIT_S {
        std::thread::sleep(Duration::from_secs(1));
        let now = backup_count()?;
        if now == replicated || now >= Some(forwarded) {
            replicated = now;
            break;
        }
        replicated = now;
    }
    drop((ctsync_pair, conntrackd_pair));
    let _ = std::fs::remove_dir_all(&dir);
    let v: Value = serde_json::from_str(out.trim()).with_context(|| format!("ctflows: {out}"))?;
    Ok(Run {
        sent: v["sent"].as_u64().context("ctflows: no sent")?,
        forwarded,
        replicated,
        seconds: v["seconds"].as_f64().context("ctflows: no seconds")?,
    })
}

/// Packets the sink in the server has counted.
fn received(lab: &Lab) -> Result<u64> {
    lab.nft_packets(Node::Server, "ctflows_sink", "rx")
}

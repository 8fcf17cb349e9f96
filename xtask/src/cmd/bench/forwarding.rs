//! Forwarding capacity lost: the new-flow rate fw1 forwards with no sync
//! daemon, with ctsync and with conntrackd (each pair on fw1 and fw2, FT-FW
//! over the sync link). `ctflows` in the client opens new flows unpaced
//! through fw1, one packet each (see `flows`: UDP/IPv4 and TCP SYN/IPv4 with
//! SNAT, UDP/IPv6), each a conntrack entry and a NEW event; nftables in the
//! server counts what arrives. Rounds interleave the
//! three so that drift on a shared machine hits all of them; the median counts.
//!
//! On the lab's 2 cores the generator, fw1's forwarding (softirq, mostly on
//! the sender's core) and the daemons share the CPUs: the ratio says how much
//! a daemon takes from the flow path on the same machine, not a line rate.

use std::time::Duration;

use anyhow::Result;
use xtask::{
    agent::start_pair_with,
    build,
    conntrackd::{Backup, Conntrackd},
    exec,
    lab::{Fw, Lab},
};

use super::{
    flows::{self, Kind, Sink},
    progress::Progress,
    report::Report,
};

/// Flows per run: well under nf_conntrack_max (262144) on fw1.
const FLOWS: u32 = 150_000;
/// Longest wait, in seconds, for the backup's count to stop growing.
const REPLICATION_WAIT_S: u32 = 20;
/// The kinds of flow, each measured on its own.
const KINDS: [Kind; 3] = [Kind::UDP4, Kind::TCP4, Kind::UDP6];

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

pub fn steps(rounds: usize) -> usize {
    KINDS.len() * rounds * DAEMONS.len()
}

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

pub fn run(lab: &Lab, rounds: usize, report: &mut Report, progress: &mut Progress) -> Result<()> {
    println!(
        "\n== forwarding capacity: new flows per second through fw1, {FLOWS} flows unpaced per \
         run, {rounds} rounds per kind; no daemon vs ctsync vs conntrackd =="
    );
    let sink = Sink::install(lab)?;
    for kind in KINDS {
        one_kind(lab, &sink, kind, rounds, report, progress)?;
    }
    Ok(())
}

fn one_kind(
    lab: &Lab,
    sink: &Sink,
    kind: Kind,
    rounds: usize,
    report: &mut Report,
    progress: &mut Progress,
) -> Result<()> {
    let what = kind.label();
    let mut rates: [Vec<f64>; 3] = Default::default();
    // Per daemon, the round whose backup held the smallest share.
    let mut worst: [Option<(u64, u64)>; 3] = [None; 3];
    for round in 1..=rounds {
        for (i, (daemon, name)) in DAEMONS.iter().enumerate() {
            let r = progress.step(&format!("forwarding {what}, {name}, round {round}"), || {
                one(lab, sink, kind, *daemon)
            })?;
            let copies = r
                .replicated
                .map(|n| format!("; the backup's external cache holds {n}"))
                .unwrap_or_default();
            println!(
                "{what}, {name}, round {round}: {} of {} flows forwarded in {:.2} s: {:.0} \
                 flows/s{copies}",
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
    let [none, ctsync, conntrackd] = rates.map(median);
    println!(
        "{what}, median flows/s: no daemon {none:.0}, ctsync {ctsync:.0} ({:.2}x), conntrackd \
         {conntrackd:.0} ({:.2}x)",
        ctsync / none,
        conntrackd / none
    );
    report.row(
        &format!(
            "new flows fw1 forwards per second with the daemon running ({what}, {FLOWS} \
             flows unpaced, median of {rounds}; no daemon: {none:.0}/s)"
        ),
        format!("{ctsync:.0}/s ({:.2}x)", ctsync / none),
        format!("{conntrackd:.0}/s ({:.2}x)", conntrackd / none),
        format!("{:.2}x conntrackd's", ctsync / conntrackd),
    );
    let of = |w: Option<(u64, u64)>| w.map_or("-".into(), |(n, f)| format!("{n} of {f}"));
    report.row(
        &format!("entries on the backup after those runs ({what}, worst round)"),
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
fn one(lab: &Lab, sink: &Sink, kind: Kind, daemon: Daemon) -> Result<Run> {
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
    let before = sink.received()?;
    let sent = flows::send(lab, kind, FLOWS, 0)?;
    // Packets still queued on the way arrive within this.
    std::thread::sleep(Duration::from_millis(500));
    let forwarded = sink.received()? - before;
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
    Ok(Run {
        sent: sent.sent,
        forwarded,
        replicated,
        seconds: sent.seconds,
    })
}

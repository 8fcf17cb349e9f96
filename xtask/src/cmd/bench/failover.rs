//! Failover: the data gaps live connections see when fw1 dies (keepalived
//! and agent killed, links cut) and fw2 takes over, with ctsync in each
//! standby mode: the external cache committed at takeover, or the kernel
//! table kept current (hot). Each mode gets a fresh lab, real keepalived
//! and `ctsync-traffic` through fw1; the figures are the per-connection
//! longest gap (p50/p99/max) and what fw2 dropped after taking over.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::Value;
use xtask::{
    agent::start_pair_with,
    build, keepalived,
    lab::{Fw, Lab, LabOptions},
    traffic::{Load, Traffic},
};

use super::{progress::Progress, report::Report};

/// Traffic after `notify master`: TCP's backed-off retransmissions of what
/// was lost while the addresses moved come through within this.
const RECOVERY: Duration = Duration::from_secs(16);

const MODES: [(&str, &str); 2] = [
    ("external cache, committed at takeover", ""),
    (
        "hot standby, kernel table kept current",
        "[failover]\nstandby = \"hot\"\n",
    ),
];

pub const STEPS: usize = MODES.len();

struct Outcome {
    takeover: Duration,
    notify_ms: f64,
    /// (p50, p99, max) of each connection's longest gap, ms, worst family.
    tcp: [f64; 3],
    udp: [f64; 3],
    alive: u64,
    opened: u64,
    dropped: u64,
}

pub fn run(tcp: u32, report: &mut Report, progress: &mut Progress) -> Result<()> {
    let load = Load {
        tcp,
        udp: (tcp / 20).max(10),
        // 200 ms with 10k connections saturates 2 cores: the gaps would
        // measure the overload (veth queue drops, retransmits), not the failover.
        interval_ms: 500,
        drain_ms: Load::FAILOVER_DRAIN_MS,
    };
    println!(
        "\n== failover: data gaps per connection when fw1 dies (links cut), {} TCP + {} UDP \
         per family, a message every {} ms ==",
        load.tcp, load.udp, load.interval_ms
    );
    for (name, failover) in MODES {
        let o = progress.step(&format!("failover, {name}"), || one(&load, failover))?;
        println!(
            "{name}: takeover {} ms, notify {:.1} ms; TCP longest gap p50/p99/max {:.0}/{:.0}/{:.0} \
             ms, UDP {:.0}/{:.0}/{:.0} ms; {} of {} TCP alive at the end; fw2 dropped {} packets \
             after taking over",
            o.takeover.as_millis(),
            o.notify_ms,
            o.tcp[0],
            o.tcp[1],
            o.tcp[2],
            o.udp[0],
            o.udp[1],
            o.udp[2],
            o.alive,
            o.opened,
            o.dropped
        );
        report.row(
            &format!(
                "failover, {name}: per-connection longest gap p50 / p99 / max (TCP; UDP), {} \
                 connections",
                o.opened
            ),
            format!(
                "{:.0} / {:.0} / {:.0} ms; {:.0} / {:.0} / {:.0} ms",
                o.tcp[0], o.tcp[1], o.tcp[2], o.udp[0], o.udp[1], o.udp[2]
            ),
            String::new(),
            format!(
                "VRRP takeover {} ms; notify {:.0} ms; fw2 dropped {} packets; {} of {} alive",
                o.takeover.as_millis(),
                o.notify_ms,
                o.dropped,
                o.alive,
                o.opened
            ),
        );
    }
    Ok(())
}

fn one(load: &Load, failover: &str) -> Result<Outcome> {
    let lab = Lab::up(LabOptions {
        vips: false,
        ..LabOptions::default()
    })?;
    let (mut fw1, fw2) = start_pair_with(
        &lab,
        &build::bin("ctsync"),
        &format!("bench-failover-{}", lab.prefix()),
        "",
        failover,
    )?;
    let (mut k1, k2) =
        keepalived::start_pair(&lab, &build::bin("ctsync"), &fw1.dir, Some((&fw1, &fw2)))?;
    let traffic = Traffic::start(&lab, &build::bin("ctsync-traffic"), &fw1.dir, load)?;
    // Every connection replicated before fw1 dies.
    let want = 2 * u64::from(load.tcp + load.udp);
    let mut waited = 0;
    while fw2.stats()?["sync"]["external_entries"]
        .as_u64()
        .unwrap_or(0)
        < want
    {
        if waited > 600 {
            bail!("fw2's external cache did not reach {want} entries within 60 s");
        }
        std::thread::sleep(Duration::from_millis(100));
        waited += 1;
    }
    // Settle: the hot mirror's last batch, the last ACKs.
    std::thread::sleep(Duration::from_secs(2));
    let before = lab.dropped(Fw::Fw2)?;
    fw1.kill();
    let takeover = keepalived::fail_fw1(&lab, &mut k1, &k2)?;
    let notify = fw2.wait_notify("master", Duration::from_secs(60))?;
    std::thread::sleep(RECOVERY);
    let reports = traffic.stop()?;
    let after = lab.dropped(Fw::Fw2)?;
    let worst = |proto: &str, key: &str| -> f64 {
        reports
            .iter()
            .filter_map(|r| r[proto][key].as_f64())
            .fold(0.0, f64::max)
    };
    let sum = |proto: &str, key: &str| -> u64 {
        reports.iter().filter_map(|r| r[proto][key].as_u64()).sum()
    };
    let gaps = |proto: &str| {
        [
            worst(proto, "max_gap_ms_p50"),
            worst(proto, "max_gap_ms_p99"),
            worst(proto, "max_gap_ms_max"),
        ]
    };
    Ok(Outcome {
        takeover,
        notify_ms: notify_total(&notify)?,
        tcp: gaps("tcp"),
        udp: gaps("udp"),
        alive: sum("tcp", "alive_at_end"),
        opened: sum("tcp", "opened"),
        dropped: (after.invalid + after.unmatched) - (before.invalid + before.unmatched),
    })
}

fn notify_total(notify: &Value) -> Result<f64> {
    notify["total_ms"]
        .as_f64()
        .with_context(|| format!("no total_ms in the notify answer: {notify}"))
}

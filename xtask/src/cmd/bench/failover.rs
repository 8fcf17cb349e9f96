//! Failover: the data gaps live connections see when fw1 dies (keepalived
//! and sync daemon killed, links cut) and fw2 takes over, with ctsync in
//! each standby mode (the external cache committed at takeover, or the
//! kernel table kept current: hot) and with conntrackd driven by its own
//! notify script (`primary-backup.sh`'s commands). Each mode gets a fresh
//! lab, real keepalived and `ctsync-traffic` through fw1; the figures are
//! the per-connection longest gap (p50/p99/max) and what fw2 dropped after
//! taking over.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use serde_json::Value;
use xtask::{
    agent::{AgentProcess, start_pair_with},
    build,
    conntrackd::Conntrackd,
    keepalived::{self, Notify},
    lab::{Fw, Lab, LabOptions},
    traffic::{Load, Traffic},
};

use super::{progress::Progress, report::Report};

/// Traffic after `notify master`: TCP's backed-off retransmissions of what
/// was lost while the addresses moved come through within this.
const RECOVERY: Duration = Duration::from_secs(16);

#[derive(Clone, Copy)]
enum Daemon {
    /// ctsync with these extra config lines.
    Ctsync(&'static str),
    Conntrackd,
}

const MODES: [(&str, Daemon); 3] = [
    (
        "ctsync, external cache, committed at takeover",
        Daemon::Ctsync(""),
    ),
    (
        "ctsync, hot standby, kernel table kept current",
        Daemon::Ctsync("[failover]\nstandby = \"hot\"\n"),
    ),
    (
        "conntrackd 1.4.7, external cache, committed at takeover",
        Daemon::Conntrackd,
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
    for (name, daemon) in MODES {
        let o = progress.step(&format!("failover, {name}"), || one(&load, daemon))?;
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

/// The sync daemons of one run, on fw1 and fw2.
enum Pair {
    Ctsync(AgentProcess, AgentProcess),
    Conntrackd {
        c1: Conntrackd,
        c2: Conntrackd,
        /// Where fw2's notify script leaves its timestamps.
        dir: std::path::PathBuf,
    },
}

impl Pair {
    fn start(lab: &Lab, daemon: Daemon) -> Result<Pair> {
        Ok(match daemon {
            Daemon::Ctsync(failover) => {
                let (a1, a2) = start_pair_with(
                    lab,
                    &build::bin("ctsync"),
                    &format!("bench-failover-{}", lab.prefix()),
                    "",
                    failover,
                )?;
                Pair::Ctsync(a1, a2)
            }
            Daemon::Conntrackd => {
                let dir =
                    std::env::temp_dir().join(format!("ctsync-bench-failover-{}", lab.prefix()));
                std::fs::create_dir_all(&dir)?;
                let c1 = Conntrackd::start(lab, Fw::Fw1, &dir)?;
                let c2 = Conntrackd::start(lab, Fw::Fw2, &dir)?;
                Pair::Conntrackd { c1, c2, dir }
            }
        })
    }

    /// Files of the run (keepalived's, the notify scripts).
    fn dir(&self) -> &Path {
        match self {
            Pair::Ctsync(a1, _) => &a1.dir,
            Pair::Conntrackd { dir, .. } => dir,
        }
    }

    /// keepalived on both firewalls, its notify lines calling the daemons.
    fn keepalived(&self, lab: &Lab) -> Result<(keepalived::Keepalived, keepalived::Keepalived)> {
        match self {
            Pair::Ctsync(a1, a2) => {
                keepalived::start_pair(lab, &build::bin("ctsync"), &a1.dir, Some((a1, a2)))
            }
            Pair::Conntrackd { c1, c2, dir } => {
                let n1 = notify_script(dir, Fw::Fw1, c1)?;
                let n2 = notify_script(dir, Fw::Fw2, c2)?;
                keepalived::start_pair_notify(lab, dir, Some(n1), Some(n2))
            }
        }
    }

    /// Entries in fw2's external cache.
    fn backup_count(&self, lab: &Lab) -> Result<u64> {
        match self {
            Pair::Ctsync(_, a2) => Ok(a2.stats()?["sync"]["external_entries"]
                .as_u64()
                .unwrap_or(0)),
            Pair::Conntrackd { c2, .. } => c2.external_count(lab),
        }
    }

    /// fw1's daemon dies (SIGKILL).
    fn kill_primary(&mut self) {
        match self {
            Pair::Ctsync(a1, _) => a1.kill(),
            Pair::Conntrackd { c1, .. } => c1.kill(),
        }
    }

    /// Waits for fw2's `notify master` to finish; returns its duration, ms.
    fn notify_master_ms(&self) -> Result<f64> {
        let timeout = Duration::from_secs(60);
        match self {
            Pair::Ctsync(_, a2) => notify_total(&a2.wait_notify("master", timeout)?),
            Pair::Conntrackd { dir, .. } => {
                let times = dir.join("notify-fw2-master.times");
                let deadline = Instant::now() + timeout;
                loop {
                    // "start committed end", nanoseconds, written once the
                    // script is done.
                    let t = std::fs::read_to_string(&times).unwrap_or_default();
                    let ns: Vec<f64> = t
                        .split_whitespace()
                        .filter_map(|w| w.parse().ok())
                        .collect();
                    if let [start, committed, end] = ns[..] {
                        println!(
                            "conntrackd's notify master on fw2: commit (-c) {:.1} ms, then \
                             flush, resync, bulk send {:.1} ms",
                            (committed - start) / 1e6,
                            (end - committed) / 1e6
                        );
                        return Ok((end - start) / 1e6);
                    }
                    if Instant::now() > deadline {
                        bail!("fw2's conntrackd notify master did not finish within {timeout:?}");
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }
    }
}

/// conntrackd's notify script for `fw`: the commands of conntrack-tools'
/// doc/sync/primary-backup.sh, timed. (Its backup and fault branches also
/// run `-t`, a selective flush of the kernel table PurgeTimeout later;
/// nothing within the bench's window.)
fn notify_script(dir: &Path, fw: Fw, c: &Conntrackd) -> Result<Notify> {
    let script = dir.join(format!("notify-{fw}.sh"));
    let times = dir.join(format!("notify-{fw}-"));
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\n\
             C=\"conntrackd -C {cfg}\"\n\
             T0=$(date +%s%N)\n\
             case \"$1\" in master) $C -c ;; esac\n\
             T1=$(date +%s%N)\n\
             case \"$1\" in\n\
             master) $C -f; $C -R; $C -B ;;\n\
             backup) $C -n ;;\n\
             esac\n\
             echo \"$T0 $T1 $(date +%s%N)\" > {times}$1.times\n",
            cfg = c.config_path().display(),
            times = times.display()
        ),
    )?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755))?;
    Ok(Notify::Script(script))
}

fn one(load: &Load, daemon: Daemon) -> Result<Outcome> {
    let lab = Lab::up(LabOptions {
        vips: false,
        ..LabOptions::default()
    })?;
    let mut pair = Pair::start(&lab, daemon)?;
    let (mut k1, k2) = pair.keepalived(&lab)?;
    let traffic = Traffic::start(&lab, &build::bin("ctsync-traffic"), pair.dir(), load)?;
    // Every connection replicated before fw1 dies.
    let want = 2 * u64::from(load.tcp + load.udp);
    let mut waited = 0;
    while pair.backup_count(&lab)? < want {
        if waited > 600 {
            bail!("fw2's external cache did not reach {want} entries within 60 s");
        }
        std::thread::sleep(Duration::from_millis(100));
        waited += 1;
    }
    // Settle: the hot mirror's last batch, the last ACKs.
    std::thread::sleep(Duration::from_secs(2));
    let before = lab.dropped(Fw::Fw2)?;
    pair.kill_primary();
    let takeover = keepalived::fail_fw1(&lab, &mut k1, &k2)?;
    let notify_ms = pair.notify_master_ms()?;
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
    let outcome = Outcome {
        takeover,
        notify_ms,
        tcp: gaps("tcp"),
        udp: gaps("udp"),
        alive: sum("tcp", "alive_at_end"),
        opened: sum("tcp", "opened"),
        dropped: (after.invalid + after.unmatched) - (before.invalid + before.unmatched),
    };
    if let Pair::Conntrackd { dir, .. } = &pair {
        let dir = dir.clone();
        drop((k1, k2, pair));
        let _ = std::fs::remove_dir_all(dir);
    }
    Ok(outcome)
}

fn notify_total(notify: &Value) -> Result<f64> {
    notify["total_ms"]
        .as_f64()
        .with_context(|| format!("no total_ms in the notify answer: {notify}"))
}

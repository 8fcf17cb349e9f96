//! The zero-loss rate: `ctgen --rate` creates entries on fw1 at rising
//! rates (the last one unpaced: as fast as the kernel takes them), and after
//! quiescence the backup's external cache must hold every one. Both daemons,
//! fresh pairs per rate.

use std::time::{Duration, Instant};

use anyhow::Result;
use xtask::{
    agent::start_pair,
    build,
    conntrackd::Conntrackd,
    exec,
    lab::{Fw, Lab},
};

use super::Report;

/// Entries per step (within the default nf_conntrack_max).
const COUNT: u32 = 200_000;

/// Waits until `count` stops changing for two seconds (or reaches `want`).
fn settle(want: u64, mut count: impl FnMut() -> Result<u64>) -> Result<u64> {
    let mut last = (count()?, Instant::now());
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        std::thread::sleep(Duration::from_millis(500));
        let c = count()?;
        if c >= want || Instant::now() > deadline {
            return Ok(c);
        }
        if c != last.0 {
            last = (c, Instant::now());
        } else if last.1.elapsed() > Duration::from_secs(2) {
            return Ok(c);
        }
    }
}

/// One step: entries on the backup after `COUNT` creates at `rate` (0:
/// unpaced), and the rate actually offered.
fn step(lab: &Lab, rate: u32, backup_count: &mut dyn FnMut() -> Result<u64>) -> Result<(u64, f64)> {
    let (count, rate_s) = (COUNT.to_string(), rate.to_string());
    let took = super::ctgen(
        lab,
        Fw::Fw1,
        &[
            "--count", &count, "--family", "4", "--proto", "mixed", "--nat", "--rate", &rate_s,
        ],
    )?;
    let offered = f64::from(COUNT) / took.as_secs_f64();
    Ok((settle(u64::from(COUNT), backup_count)?, offered))
}

pub fn run(lab: &Lab, rates: &[u32], report: &mut Report) -> Result<()> {
    println!(
        "\n== zero-loss rate: {COUNT} creates on fw1 per step, backup's external cache after quiescence =="
    );
    let flush = || exec::output(&mut lab.command(Fw::Fw1.node(), &["conntrack", "-F"]));
    let mut best = [None::<f64>, None];
    let mut cells = Vec::new();
    for &rate in rates {
        let label = if rate == 0 {
            "unpaced".to_owned()
        } else {
            format!("{rate}/s")
        };
        flush()?;
        let ctsync = {
            let (_a1, a2) = start_pair(
                lab,
                &build::bin("ctsync"),
                &format!("bench-zeroloss-{}", lab.prefix()),
                "",
            )?;
            step(lab, rate, &mut || {
                Ok(a2.stats()?["sync"]["external_entries"]
                    .as_u64()
                    .unwrap_or(0))
            })?
        };
        flush()?;
        let dir =
            std::env::temp_dir().join(format!("ctsync-bench-zeroloss-{}", std::process::id()));
        let conntrackd = (|| {
            let _c1 = Conntrackd::start(lab, Fw::Fw1, &dir)?;
            let c2 = Conntrackd::start(lab, Fw::Fw2, &dir)?;
            step(lab, rate, &mut || Ok(c2.external_entries(lab)? as u64))
        })();
        let _ = std::fs::remove_dir_all(&dir);
        let conntrackd = conntrackd?;
        for (i, (got, offered)) in [ctsync, conntrackd].into_iter().enumerate() {
            if got >= u64::from(COUNT) {
                best[i] = Some(best[i].unwrap_or(0.0).max(offered));
            }
        }
        println!(
            "{label:>9}: ctsync {} of {COUNT} ({:.0}/s offered), conntrackd {} of {COUNT} ({:.0}/s offered)",
            ctsync.0, ctsync.1, conntrackd.0, conntrackd.1
        );
        cells.push((label, ctsync, conntrackd));
    }
    flush()?;
    for (label, c, d) in cells {
        report.row(
            &format!("replicated after {COUNT} creates at {label}"),
            format!("{} ({:.0}/s)", c.0, c.1),
            format!("{} ({:.0}/s)", d.0, d.1),
            "all".into(),
        );
    }
    let fmt = |b: Option<f64>| b.map_or("none".into(), |r| format!("{r:.0}/s"));
    report.row(
        "highest rate replicated without loss",
        fmt(best[0]),
        fmt(best[1]),
        "the kernel's event ceiling".into(),
    );
    Ok(())
}

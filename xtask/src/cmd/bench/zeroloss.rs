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

use super::{
    Report, cpu_seconds,
    plot::{Axis, LineChart, Scale, Series},
    progress::{Progress, rate_label},
};

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

/// One daemon at one rate.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Outcome {
    /// Entries in the backup's external cache after quiescence.
    pub replicated: u64,
    /// The create rate ctgen achieved, entries per second.
    pub offered: f64,
    /// CPU time (user + system, /proc/PID/stat) of the primary's and the
    /// backup's daemon from the first create to quiescence, µs per entry.
    pub cpu_us: [f64; 2],
}

/// Both daemons at one offered rate.
#[derive(Clone, Debug)]
pub struct Step {
    /// What ctgen was asked for, entries per second; 0: unpaced.
    pub rate: u32,
    pub ctsync: Outcome,
    pub conntrackd: Outcome,
}

/// Progress steps of [`run`]: each daemon at each rate.
pub fn steps(rates: &[u32]) -> usize {
    2 * rates.len()
}

/// One step: `COUNT` creates at `rate` (0: unpaced) with the daemons
/// `pids` (primary, backup) running. `backup_count` is polled until
/// quiescence, so it must be cheap (a counter, not a dump: the CPU it costs
/// counts as the backup's); `replicated` is asked once at the end.
fn step(
    lab: &Lab,
    rate: u32,
    pids: [u32; 2],
    backup_count: &mut dyn FnMut() -> Result<u64>,
    replicated: &mut dyn FnMut() -> Result<u64>,
) -> Result<Outcome> {
    let (count, rate_s) = (COUNT.to_string(), rate.to_string());
    let cpu = || -> Result<[f64; 2]> { Ok([cpu_seconds(pids[0])?, cpu_seconds(pids[1])?]) };
    let before = cpu()?;
    let took = super::ctgen(
        lab,
        Fw::Fw1,
        &[
            "--count", &count, "--family", "4", "--proto", "mixed", "--nat", "--rate", &rate_s,
        ],
    )?;
    let offered = f64::from(COUNT) / took.as_secs_f64();
    let settled = settle(u64::from(COUNT), backup_count)?;
    let after = cpu()?;
    let got = replicated()?;
    if got != settled {
        eprintln!("note: the backup's counter said {settled} entries, its cache holds {got}");
    }
    let per_entry = |i: usize| (after[i] - before[i]) * 1e6 / f64::from(COUNT);
    Ok(Outcome {
        replicated: got,
        offered,
        cpu_us: [per_entry(0), per_entry(1)],
    })
}

/// A rate as the log and the report name it: `100000/s` or `unpaced`.
fn label_of(rate: u32) -> String {
    if rate == 0 {
        "unpaced".to_owned()
    } else {
        format!("{rate}/s")
    }
}

pub fn run(
    lab: &Lab,
    rates: &[u32],
    report: &mut Report,
    progress: &mut Progress,
) -> Result<Vec<Step>> {
    println!(
        "\n== zero-loss rate: {COUNT} creates on fw1 per step, backup's external cache after quiescence =="
    );
    let flush = || exec::output(&mut lab.command(Fw::Fw1.node(), &["conntrack", "-F"]));
    let mut best = [None::<f64>, None];
    let mut results = Vec::new();
    for &rate in rates {
        let label = label_of(rate);
        let ctsync = progress.step(&format!("zeroloss ctsync {}", rate_label(rate)), || {
            flush()?;
            let (a1, a2) = start_pair(
                lab,
                &build::bin("ctsync"),
                &format!("bench-zeroloss-{}", lab.prefix()),
                "",
            )?;
            let mut count = || {
                Ok(a2.stats()?["sync"]["external_entries"]
                    .as_u64()
                    .unwrap_or(0))
            };
            step(
                lab,
                rate,
                [a1.child.id(), a2.child.id()],
                &mut count.clone(),
                &mut count,
            )
        })?;
        let conntrackd =
            progress.step(&format!("zeroloss conntrackd {}", rate_label(rate)), || {
                flush()?;
                let dir = std::env::temp_dir()
                    .join(format!("ctsync-bench-zeroloss-{}", std::process::id()));
                let r = (|| {
                    let c1 = Conntrackd::start(lab, Fw::Fw1, &dir)?;
                    let c2 = Conntrackd::start(lab, Fw::Fw2, &dir)?;
                    step(
                        lab,
                        rate,
                        [c1.pid(), c2.pid()],
                        &mut || c2.external_count(lab),
                        &mut || Ok(c2.external_entries(lab)? as u64),
                    )
                })();
                let _ = std::fs::remove_dir_all(&dir);
                r
            })?;
        for (i, o) in [ctsync, conntrackd].into_iter().enumerate() {
            if o.replicated >= u64::from(COUNT) {
                best[i] = Some(best[i].unwrap_or(0.0).max(o.offered));
            }
        }
        println!(
            "{label:>9}: ctsync {} of {COUNT} ({:.0}/s offered; CPU {:.2} / {:.2} µs per entry on fw1 / fw2), \
             conntrackd {} of {COUNT} ({:.0}/s offered; CPU {:.2} / {:.2} µs)",
            ctsync.replicated,
            ctsync.offered,
            ctsync.cpu_us[0],
            ctsync.cpu_us[1],
            conntrackd.replicated,
            conntrackd.offered,
            conntrackd.cpu_us[0],
            conntrackd.cpu_us[1]
        );
        results.push(Step {
            rate,
            ctsync,
            conntrackd,
        });
    }
    flush()?;
    for s in &results {
        let label = label_of(s.rate);
        let (c, d) = (s.ctsync, s.conntrackd);
        report.row(
            &format!("replicated after {COUNT} creates at {label}"),
            format!("{} ({:.0}/s)", c.replicated, c.offered),
            format!("{} ({:.0}/s)", d.replicated, d.offered),
            "all".into(),
        );
        report.row(
            &format!("CPU per created entry at {label}, primary / backup"),
            format!("{:.2} / {:.2} µs", c.cpu_us[0], c.cpu_us[1]),
            format!("{:.2} / {:.2} µs", d.cpu_us[0], d.cpu_us[1]),
            format!(
                "{:.2}x / {:.2}x",
                c.cpu_us[0] / d.cpu_us[0],
                c.cpu_us[1] / d.cpu_us[1]
            ),
        );
    }
    let fmt = |b: Option<f64>| b.map_or("none".into(), |r| format!("{r:.0}/s"));
    report.row(
        "highest rate replicated without loss",
        fmt(best[0]),
        fmt(best[1]),
        "the kernel's event ceiling".into(),
    );
    for (file, caption, chart) in charts(&results) {
        report.plot(&file, &caption, chart.svg());
    }
    Ok(results)
}

/// Completeness and CPU against the offered rate, both daemons: (file
/// name, caption, chart).
pub fn charts(steps: &[Step]) -> Vec<(String, String, LineChart)> {
    let line = |name: &str, f: &dyn Fn(&Step) -> (f64, f64)| {
        Series::new(name, steps.iter().map(f).collect())
    };
    // At most 100%: an entry the backup holds beyond the created ones
    // (conntrackd's cache can count one more) is no created entry.
    let share = |o: &Outcome| 100.0 * o.replicated.min(COUNT.into()) as f64 / f64::from(COUNT);
    let rate_axis = || {
        Axis::new(
            "offered create rate on fw1 (entries/s, as achieved by ctgen)",
            Scale::Linear,
        )
    };
    vec![
        (
            "zeroloss-completeness.svg".to_owned(),
            "entries replicated to the backup against the offered rate".to_owned(),
            LineChart {
                title: format!("entries on the backup after {COUNT} creates (after quiescence)"),
                x: rate_axis(),
                y: Axis::new("replicated (% of the entries created)", Scale::Linear)
                    .range(0.0, 100.0),
                series: vec![
                    line("ctsync", &|s| (s.ctsync.offered, share(&s.ctsync))),
                    line("conntrackd", &|s| {
                        (s.conntrackd.offered, share(&s.conntrackd))
                    }),
                ],
            },
        ),
        (
            "zeroloss-cpu.svg".to_owned(),
            "CPU per created entry against the offered rate".to_owned(),
            LineChart {
                title: "daemon CPU per created entry (user + system)".to_owned(),
                x: rate_axis(),
                y: Axis::new("CPU per entry (µs)", Scale::Linear),
                series: vec![
                    line("ctsync primary", &|s| {
                        (s.ctsync.offered, s.ctsync.cpu_us[0])
                    }),
                    line("ctsync backup", &|s| (s.ctsync.offered, s.ctsync.cpu_us[1])),
                    line("conntrackd primary", &|s| {
                        (s.conntrackd.offered, s.conntrackd.cpu_us[0])
                    }),
                    line("conntrackd backup", &|s| {
                        (s.conntrackd.offered, s.conntrackd.cpu_us[1])
                    }),
                ],
            },
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charts_have_a_point_per_rate_and_daemon() {
        let o = |replicated, offered, cpu| Outcome {
            replicated,
            offered,
            cpu_us: [cpu, cpu / 2.0],
        };
        let steps = [
            Step {
                rate: 100_000,
                ctsync: o(COUNT.into(), 99_000.0, 1.0),
                conntrackd: o(COUNT.into(), 98_000.0, 4.0),
            },
            Step {
                rate: 0,
                ctsync: o(COUNT.into(), 180_000.0, 0.9),
                conntrackd: o(u64::from(COUNT) / 2, 170_000.0, 3.0),
            },
            Step {
                rate: 50_000,
                ctsync: o(COUNT.into(), 50_000.0, 1.0),
                conntrackd: o(u64::from(COUNT) + 1, 50_000.0, 4.0),
            },
        ];
        let c = charts(&steps);
        assert_eq!(c.len(), 2);
        let done = &c[0].2.series;
        assert_eq!(
            done[0].points,
            [(99_000.0, 100.0), (180_000.0, 100.0), (50_000.0, 100.0)]
        );
        assert_eq!(done[1].points[1], (170_000.0, 50.0));
        assert_eq!(done[1].points[2], (50_000.0, 100.0));
        assert_eq!(c[1].2.series.len(), 4);
        assert_eq!(c[1].2.series[3].points[0], (98_000.0, 2.0));
        let svg = c[1].2.svg();
        assert_eq!(svg.matches("<polyline").count(), 4);
        assert_eq!(svg.matches("<circle").count(), 12);
        assert_eq!(c[0].2.svg().matches("<circle").count(), 6);
    }
}

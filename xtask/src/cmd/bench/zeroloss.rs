//! The zero-loss rate: load on fw1 at rising rates (the last one unpaced:
//! as fast as the generator gets the kernel to create), and after
//! quiescence the backup's external cache must hold every entry fw1's
//! kernel table holds. Two loads: `ctgen --rate` (batched ctnetlink
//! creates, mixed TCP/UDP with NAT), and real flows through fw1 (`flows`:
//! UDP datagrams and TCP SYNs, SNAT). Both daemons, fresh pairs per step.

use anyhow::Result;
use xtask::{
    agent::start_pair_with,
    build,
    conntrackd::Conntrackd,
    exec,
    lab::{Fw, Lab},
};

use super::{
    Report, cpu_seconds,
    flows::{self, Kind, Sink, settle},
    plot::{Axis, LineChart, Scale, Series},
    progress::{Progress, rate_label},
};

/// Real flows per step: `ctflows`' default socket and port range.
const FLOWS: u32 = 150_000;
/// The kinds of real flow.
const FLOW_KINDS: [Kind; 2] = [Kind::UDP4, Kind::TCP4];
/// fw1's timeouts for the flows' entries while the flow steps run: long
/// enough that no entry expires (and is deleted on the backup) before the
/// counts are compared.
const FLOW_TIMEOUTS: [&str; 2] = [
    "net/netfilter/nf_conntrack_udp_timeout",
    "net/netfilter/nf_conntrack_tcp_timeout_syn_sent",
];

/// Entries per step (within the default nf_conntrack_max).
const COUNT: u32 = 200_000;

/// One daemon at one rate.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Outcome {
    /// Entries in the backup's external cache after quiescence.
    pub replicated: u64,
    /// Entries the backup must hold: what the load created in fw1's table.
    pub expected: u64,
    /// The create rate the generator achieved, entries per second.
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
    /// ctsync with `xdp = "off"`.
    pub ctsync_socket: Outcome,
    pub conntrackd: Outcome,
}

/// Both daemons with one kind of real flow at one rate.
#[derive(Clone, Debug)]
pub struct FlowStep {
    pub kind: Kind,
    /// What ctflows was asked for, flows per second; 0: unpaced.
    pub rate: u32,
    pub ctsync: Outcome,
    /// ctsync with `xdp = "off"`.
    pub ctsync_socket: Outcome,
    pub conntrackd: Outcome,
}

/// Pairs per step: see [`contenders`].
const CONTENDERS: usize = 3;

/// Progress steps of [`run`]: each contender at each rate, with each load.
pub fn steps(rates: &[u32], flow_rates: &[u32]) -> usize {
    CONTENDERS * (rates.len() + FLOW_KINDS.len() * flow_rates.len())
}

/// What loads fw1 in a step.
#[derive(Clone, Copy)]
enum Load {
    /// `COUNT` ctgen creates at this rate (0: unpaced).
    Ctgen(u32),
    /// `FLOWS` real flows of this kind at this rate (0: unpaced).
    Flows(Kind, u32),
}

impl Load {
    /// Applies the load; returns the rate achieved and the entries it left
    /// in fw1's table.
    fn apply(self, lab: &Lab) -> Result<(f64, u64)> {
        match self {
            Load::Ctgen(rate) => {
                let (count, rate) = (COUNT.to_string(), rate.to_string());
                let took = super::ctgen(
                    lab,
                    Fw::Fw1,
                    &[
                        "--count", &count, "--family", "4", "--proto", "mixed", "--nat", "--rate",
                        &rate,
                    ],
                )?;
                Ok((f64::from(COUNT) / took.as_secs_f64(), u64::from(COUNT)))
            }
            Load::Flows(kind, rate) => {
                let sent = flows::send(lab, kind, FLOWS, rate)?;
                Ok((sent.sent as f64 / sent.seconds, flows::on_fw1(lab, kind)?))
            }
        }
    }
}

/// One step: the load applied with the daemons `pids` (primary, backup)
/// running. `backup_count` is polled until quiescence, so it must be cheap
/// (a counter, not a dump: the CPU it costs counts as the backup's);
/// `replicated` is asked once at the end.
fn step(
    lab: &Lab,
    load: Load,
    pids: [u32; 2],
    backup_count: &mut dyn FnMut() -> Result<u64>,
    replicated: &mut dyn FnMut() -> Result<u64>,
) -> Result<Outcome> {
    let cpu = || -> Result<[f64; 2]> { Ok([cpu_seconds(pids[0])?, cpu_seconds(pids[1])?]) };
    let before = cpu()?;
    let (offered, expected) = load.apply(lab)?;
    let settled = settle(expected, backup_count)?;
    let after = cpu()?;
    let got = replicated()?;
    if got != settled {
        eprintln!("note: the backup's counter said {settled} entries, its cache holds {got}");
    }
    let per_entry = |i: usize| (after[i] - before[i]) * 1e6 / expected.max(1) as f64;
    Ok(Outcome {
        replicated: got,
        expected,
        offered,
        cpu_us: [per_entry(0), per_entry(1)],
    })
}

/// The contenders, each a fresh pair on empty tables, under the same load:
/// ctsync with XDP receive (its default), ctsync with socket receive,
/// conntrackd.
fn contenders(
    lab: &Lab,
    load: Load,
    what: &str,
    progress: &mut Progress,
) -> Result<[Outcome; CONTENDERS]> {
    let flush = || exec::output(&mut lab.command(Fw::Fw1.node(), &["conntrack", "-F"]));
    let ctsync = |xdp: &str| {
        flush()?;
        let (a1, a2) = start_pair_with(
            lab,
            &build::bin("ctsync"),
            &format!("bench-zeroloss-{}", lab.prefix()),
            &format!("xdp = \"{xdp}\"\n"),
            "",
        )?;
        let mut count = || {
            Ok(a2.stats()?["sync"]["external_entries"]
                .as_u64()
                .unwrap_or(0))
        };
        step(
            lab,
            load,
            [a1.child.id(), a2.child.id()],
            &mut count.clone(),
            &mut count,
        )
    };
    let xdp = progress.step(&format!("zeroloss ctsync {what}"), || ctsync("native"))?;
    let socket = progress.step(&format!("zeroloss ctsync, socket receive, {what}"), || {
        ctsync("off")
    })?;
    let conntrackd = progress.step(&format!("zeroloss conntrackd {what}"), || {
        flush()?;
        let dir =
            std::env::temp_dir().join(format!("ctsync-bench-zeroloss-{}", std::process::id()));
        let r = (|| {
            let c1 = Conntrackd::start(lab, Fw::Fw1, &dir)?;
            let c2 = Conntrackd::start(lab, Fw::Fw2, &dir)?;
            step(
                lab,
                load,
                [c1.pid(), c2.pid()],
                &mut || c2.external_count(lab),
                &mut || Ok(c2.external_entries(lab)? as u64),
            )
        })();
        let _ = std::fs::remove_dir_all(&dir);
        r
    })?;
    flush()?;
    Ok([xdp, socket, conntrackd])
}

/// One step's rows in the report: what reached the backup, and the CPU.
fn report_step(report: &mut Report, what: &str, [x, s, d]: [Outcome; CONTENDERS]) {
    report.row(
        &format!("replicated after {what} (of the entries in fw1's table)"),
        format!("XDP {}; socket {}", show(&x), show(&s)),
        show(&d),
        "all".into(),
    );
    let cpu = |o: &Outcome| format!("{:.2} / {:.2} µs", o.cpu_us[0], o.cpu_us[1]);
    report.row(
        &format!("CPU per entry, primary / backup, {what}"),
        format!("XDP {}; socket {}", cpu(&x), cpu(&s)),
        cpu(&d),
        format!(
            "XDP {:.2}x / {:.2}x",
            x.cpu_us[0] / d.cpu_us[0],
            x.cpu_us[1] / d.cpu_us[1]
        ),
    );
}

/// One step's outcomes in the log, one line.
fn print_step(what: &str, o: &[Outcome; CONTENDERS]) {
    let one = |o: &Outcome| {
        format!(
            "{} (CPU {:.2} / {:.2} µs per entry on fw1 / fw2)",
            show(o),
            o.cpu_us[0],
            o.cpu_us[1]
        )
    };
    println!(
        "{what}: ctsync {}, ctsync socket receive {}, conntrackd {}",
        one(&o[0]),
        one(&o[1]),
        one(&o[2])
    );
}

/// `a of b (r/s)`: an outcome in the log and the report.
fn show(o: &Outcome) -> String {
    format!("{} of {} ({:.0}/s)", o.replicated, o.expected, o.offered)
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
    flow_rates: &[u32],
    report: &mut Report,
    progress: &mut Progress,
) -> Result<Vec<Step>> {
    println!(
        "\n== zero-loss rate: {COUNT} ctgen creates on fw1 per step, then {FLOWS} real flows \
         through fw1 per step; the backup's external cache after quiescence against fw1's table =="
    );
    let mut best = [None::<f64>; CONTENDERS];
    let mut results = Vec::new();
    for &rate in rates {
        let label = label_of(rate);
        let [ctsync, ctsync_socket, conntrackd] =
            contenders(lab, Load::Ctgen(rate), &rate_label(rate), progress)?;
        for (i, o) in [ctsync, ctsync_socket, conntrackd].into_iter().enumerate() {
            if o.replicated >= o.expected {
                best[i] = Some(best[i].unwrap_or(0.0).max(o.offered));
            }
        }
        print_step(
            &format!("ctgen {label}"),
            &[ctsync, ctsync_socket, conntrackd],
        );
        results.push(Step {
            rate,
            ctsync,
            ctsync_socket,
            conntrackd,
        });
    }
    let flow_results = real_flows(lab, flow_rates, progress)?;
    for s in &results {
        let what = format!("{COUNT} ctgen creates at {}", label_of(s.rate));
        report_step(report, &what, [s.ctsync, s.ctsync_socket, s.conntrackd]);
    }
    let fmt = |b: Option<f64>| b.map_or("none".into(), |r| format!("{r:.0}/s"));
    report.row(
        "highest ctgen rate replicated without loss",
        format!("XDP {}; socket {}", fmt(best[0]), fmt(best[1])),
        fmt(best[2]),
        "the kernel's event ceiling".into(),
    );
    for f in &flow_results {
        let what = format!(
            "{FLOWS} {} flows through fw1 at {}",
            f.kind.label(),
            label_of(f.rate)
        );
        report_step(report, &what, [f.ctsync, f.ctsync_socket, f.conntrackd]);
    }
    for (file, caption, chart) in charts(&results) {
        report.plot(&file, &caption, chart.svg());
    }
    Ok(results)
}

/// The real-flow steps, with fw1's timeouts for their entries raised for
/// the duration (and restored, also on error).
fn real_flows(lab: &Lab, rates: &[u32], progress: &mut Progress) -> Result<Vec<FlowStep>> {
    let fw1 = Fw::Fw1.node();
    let saved = FLOW_TIMEOUTS
        .iter()
        .map(|k| lab.sysctl_value(fw1, k))
        .collect::<Result<Vec<_>>>()?;
    lab.sysctl(fw1, &FLOW_TIMEOUTS.map(|k| (k, "600")))?;
    let r = (|| {
        let _sink = Sink::install(lab)?;
        let mut out = Vec::new();
        for kind in FLOW_KINDS {
            for &rate in rates {
                let what = format!("{}, {}", kind.label(), rate_label(rate));
                let [ctsync, ctsync_socket, conntrackd] =
                    contenders(lab, Load::Flows(kind, rate), &what, progress)?;
                print_step(
                    &format!("flows {what}"),
                    &[ctsync, ctsync_socket, conntrackd],
                );
                out.push(FlowStep {
                    kind,
                    rate,
                    ctsync,
                    ctsync_socket,
                    conntrackd,
                });
            }
        }
        Ok(out)
    })();
    let restore: Vec<(&str, &str)> = FLOW_TIMEOUTS
        .iter()
        .copied()
        .zip(saved.iter().map(String::as_str))
        .collect();
    lab.sysctl(fw1, &restore)?;
    r
}

/// Completeness and CPU against the offered rate, both daemons: (file
/// name, caption, chart).
pub fn charts(steps: &[Step]) -> Vec<(String, String, LineChart)> {
    let line = |name: &str, f: &dyn Fn(&Step) -> (f64, f64)| {
        Series::new(name, steps.iter().map(f).collect())
    };
    // At most 100%: an entry the backup holds beyond the created ones
    // (conntrackd's cache can count one more) is no created entry.
    let share = |o: &Outcome| 100.0 * o.replicated.min(o.expected) as f64 / o.expected as f64;
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
                    line("ctsync, socket receive", &|s| {
                        (s.ctsync_socket.offered, share(&s.ctsync_socket))
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
                    line("ctsync socket receive, primary", &|s| {
                        (s.ctsync_socket.offered, s.ctsync_socket.cpu_us[0])
                    }),
                    line("ctsync socket receive, backup", &|s| {
                        (s.ctsync_socket.offered, s.ctsync_socket.cpu_us[1])
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
            expected: COUNT.into(),
            offered,
            cpu_us: [cpu, cpu / 2.0],
        };
        let steps = [
            Step {
                rate: 100_000,
                ctsync: o(COUNT.into(), 99_000.0, 1.0),
                ctsync_socket: o(COUNT.into(), 99_000.0, 1.1),
                conntrackd: o(COUNT.into(), 98_000.0, 4.0),
            },
            Step {
                rate: 0,
                ctsync: o(COUNT.into(), 180_000.0, 0.9),
                ctsync_socket: o(COUNT.into(), 180_000.0, 1.0),
                conntrackd: o(u64::from(COUNT) / 2, 170_000.0, 3.0),
            },
            Step {
                rate: 50_000,
                ctsync: o(COUNT.into(), 50_000.0, 1.0),
                ctsync_socket: o(COUNT.into(), 50_000.0, 1.1),
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
        assert_eq!(c[1].2.series.len(), 6);
        assert_eq!(c[1].2.series[3].points[0], (98_000.0, 2.0));
        let svg = c[1].2.svg();
        assert_eq!(svg.matches("<polyline").count(), 6);
        assert_eq!(svg.matches("<circle").count(), 18);
        assert_eq!(c[0].2.svg().matches("<circle").count(), 9);
    }
}

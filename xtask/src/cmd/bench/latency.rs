//! Replication latency at set rates: real UDP/IPv4 flows through fw1
//! (`ctflows --rate`, one datagram per flow, SNAT) create entries for a
//! few seconds, once under a ctsync pair and once under a conntrackd pair.
//! Fresh daemons per rate, so each histogram holds one rate only. At most
//! 200k entries per rate.
//!
//! Real flows rather than `ctgen`: entries created through ctnetlink on
//! fw1 take the kernel's nfnetlink mutex for ctnetlink, which is global,
//! not per namespace, and the backup's writes into fw2's table wait on it
//! (seen with perf as `mutex_spin_on_owner` under `nfnetlink_rcv_msg`, for
//! both daemons): a lab artefact a real firewall, whose entries come from
//! packets, does not have.
//!
//! The whole path, kernel event on fw1 to entry present on fw2, comes from
//! the kernels' own clocks: with `nf_conntrack_timestamp = 1` on both
//! firewalls every entry carries its creation time, and `ctsync-bench
//! stamps` subtracts fw1's stamp from fw2's, per entry. That needs the
//! backup to write what it receives into its kernel table at once, so both
//! daemons run that way here: ctsync with `standby = "hot"`, conntrackd
//! with `DisableExternalCache on`. (Entries in an external cache are not
//! visible to the kernel; for ctsync's default mode the agent's own
//! histograms bound the same path: `event_to_send`, from being read off
//! the event socket to leaving in a datagram, plus `ack_rtt`, from sent to
//! acknowledged by fw2, an upper bound as fw2 acknowledges cumulatively.)

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde_json::Value;
use xtask::{
    agent::{AgentProcess, sync_config_with},
    build,
    conntrackd::{Backup, Conntrackd},
    exec,
    lab::{Fw, Lab},
};

use super::{
    Report,
    flows::{self, Kind, Sink},
    kernel_count,
    plot::{Axis, LineChart, Scale, Series},
    progress::{Progress, rate_label},
};

const SECONDS: u32 = 3;
const TIMESTAMPS: &str = "net/netfilter/nf_conntrack_timestamp";
const UDP_TIMEOUT: &str = "net/netfilter/nf_conntrack_udp_timeout";
/// How long the backup's table may stay the same size before the entries
/// still missing count as lost.
const STALL: Duration = Duration::from_secs(5);

/// A latency histogram's summary, as `ctsync latency --json` gives it (µs).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Hist {
    pub count: u64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    /// (upper bound in µs, count) of the non-empty power-of-two buckets.
    pub buckets: Vec<(u64, u64)>,
}

impl Hist {
    pub fn from_json(h: &Value) -> Hist {
        let f = |k: &str| h[k].as_f64().unwrap_or(f64::NAN);
        Hist {
            count: h["count"].as_u64().unwrap_or(0),
            p50: f("p50_us"),
            p90: f("p90_us"),
            p99: f("p99_us"),
            p999: f("p999_us"),
            max: f("max_us"),
            buckets: h["buckets"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|b| Some((b["le_us"].as_u64()?, b["count"].as_u64()?)))
                .collect(),
        }
    }

    /// "p50 / p99 / p99.9 µs".
    fn percentiles(&self) -> String {
        format!("{} / {} / {} µs", self.p50, self.p99, self.p999)
    }
}

/// Kernel event on fw1 to entry in fw2's kernel table, for one daemon at
/// one rate.
#[derive(Clone, Debug, Default)]
pub struct KernelToKernel {
    pub hist: Hist,
    /// Entries of fw1's table not in fw2's when its size settled.
    pub missing: u64,
}

/// Both daemons' figures after one rate.
#[derive(Clone, Debug)]
pub struct AtRate {
    /// Offered by `ctflows --rate`, new flows per second.
    pub rate: u32,
    /// The primary agent's histograms.
    pub event_to_send: Hist,
    pub ack_rtt: Hist,
    pub ctsync: KernelToKernel,
    pub conntrackd: KernelToKernel,
}

/// Progress steps of [`run`].
pub fn steps(rates: &[u32]) -> usize {
    2 * rates.len()
}

pub fn run(
    lab: &Lab,
    rates: &[u32],
    report: &mut Report,
    progress: &mut Progress,
) -> Result<Vec<AtRate>> {
    println!(
        "\n== replication latency at set rates ({SECONDS} s of UDP flows through fw1 each; \
         kernel to kernel by conntrack timestamps) =="
    );
    let fws = [Fw::Fw1.node(), Fw::Fw2.node()];
    let saved = fws
        .iter()
        .map(|&n| lab.sysctl_value(n, TIMESTAMPS))
        .collect::<Result<Vec<_>>>()?;
    // The flows' entries outlive the run (unreplied UDP expires in 30 s).
    let udp_timeout = lab.sysctl_value(fws[0], UDP_TIMEOUT)?;
    for n in fws {
        lab.sysctl(n, &[(TIMESTAMPS, "1")])?;
    }
    lab.sysctl(fws[0], &[(UDP_TIMEOUT, "600")])?;
    let r = (|| -> Result<Vec<AtRate>> {
        let _sink = Sink::install(lab)?;
        let mut results = Vec::new();
        for &rate in rates {
            let (event_to_send, ack_rtt, ctsync) = progress
                .step(&format!("latency ctsync {}", rate_label(rate)), || {
                    ctsync_rate(lab, rate)
                })?;
            let conntrackd = progress
                .step(&format!("latency conntrackd {}", rate_label(rate)), || {
                    conntrackd_rate(lab, rate)
                })?;
            let at = AtRate {
                rate,
                event_to_send,
                ack_rtt,
                ctsync,
                conntrackd,
            };
            rows(&at, report);
            results.push(at);
        }
        Ok(results)
    })();
    for (n, old) in fws.into_iter().zip(&saved) {
        lab.sysctl(n, &[(TIMESTAMPS, old)])?;
    }
    lab.sysctl(fws[0], &[(UDP_TIMEOUT, &udp_timeout)])?;
    flush(lab)?;
    let results = r?;
    for (file, caption, chart) in charts(&results) {
        report.plot(&file, &caption, chart.svg());
    }
    Ok(results)
}

fn rows(at: &AtRate, report: &mut Report) {
    let rate = at.rate;
    let (c, d) = (&at.ctsync, &at.conntrackd);
    let with_loss = |k: &KernelToKernel| {
        let p = k.hist.percentiles();
        match k.missing {
            0 => p,
            m => format!("{p} ({m} entries lost)"),
        }
    };
    report.row(
        &format!(
            "{rate}/s: kernel event on fw1 to entry in fw2's table, p50 / p99 / p99.9 \
             (ctsync hot standby, conntrackd DisableExternalCache)"
        ),
        with_loss(c),
        with_loss(d),
        format!(
            "{:.2}x / {:.2}x / {:.2}x{}",
            c.hist.p50 / d.hist.p50,
            c.hist.p99 / d.hist.p99,
            c.hist.p999 / d.hist.p999,
            if rate == 50_000 {
                "; target p99 < 0.3 ms"
            } else {
                ""
            }
        ),
    );
    report.row(
        &format!("{rate}/s: ctsync, change read from the kernel to sent, p50 / p99 / p99.9"),
        at.event_to_send.percentiles(),
        String::new(),
        "the agent's own share".into(),
    );
    report.row(
        &format!("{rate}/s: ctsync, sync datagram sent to fw2's ACK, p50 / p99 / p99.9"),
        at.ack_rtt.percentiles(),
        String::new(),
        "upper bound (cumulative ACKs)".into(),
    );
}

fn flush(lab: &Lab) -> Result<()> {
    for fw in [Fw::Fw1, Fw::Fw2] {
        exec::output(&mut lab.command(fw.node(), &["conntrack", "-F"]))?;
    }
    Ok(())
}

/// Within the kernel's default nf_conntrack_max (262144).
fn count(rate: u32) -> u32 {
    (rate * SECONDS).min(200_000)
}

/// A hot-standby ctsync pair at `rate`: the primary's event-to-send and ACK
/// histograms, and the kernel-to-kernel latency.
fn ctsync_rate(lab: &Lab, rate: u32) -> Result<(Hist, Hist, KernelToKernel)> {
    flush(lab)?;
    let start = |fw: Fw| {
        // `[general]` comes first: conntrackd's own default scheduling
        // (SCHED_RR, priority 99), so that both daemons run alike.
        let cfg = format!(
            "realtime_priority = 99\n{}[failover]\nstandby = \"hot\"\n",
            sync_config_with(fw, "")
        );
        let name = format!("bench-latency-{}-{fw}", lab.prefix());
        AgentProcess::start(lab, fw.node(), &build::bin("ctsync"), &name, &cfg)
    };
    let (a1, a2) = (start(Fw::Fw1)?, start(Fw::Fw2)?);
    let k = load_and_compare(lab, rate)?;
    let l: Value = serde_json::from_str(&a1.ctl(&["latency", "--json"])?)?;
    let (ev, rtt) = (
        Hist::from_json(&l["event_to_send"]),
        Hist::from_json(&l["ack_rtt"]),
    );
    let l2: Value = serde_json::from_str(&a2.ctl(&["latency", "--json"])?)?;
    let write = Hist::from_json(&l2["standby_write"]);
    // What sends the whole cache again (and what would be a lost change
    // without it): event overruns, send-queue overflows.
    let s1 = a1.stats()?;
    let (overruns, overflows) = (
        &s1["events"]["overruns"],
        &s1["sync"]["sender"]["overflows"],
    );
    println!(
        "ctsync     {rate:>7}/s: kernel to kernel p50/p99/p99.9 {} ({} entries, {} lost); \
         event read -> sent {} ({} changes); sent -> ACK {} ({} datagrams); on fw2, \
         change noted -> written into the table {}; fw1's event overruns {overruns}, send \
         queue overflows {overflows}",
        k.hist.percentiles(),
        k.hist.count,
        k.missing,
        ev.percentiles(),
        ev.count,
        rtt.percentiles(),
        rtt.count,
        write.percentiles()
    );
    drop((a1, a2));
    Ok((ev, rtt, k))
}

/// A conntrackd pair at `rate`, the backup writing into its kernel table.
fn conntrackd_rate(lab: &Lab, rate: u32) -> Result<KernelToKernel> {
    flush(lab)?;
    let dir = std::env::temp_dir().join(format!("ctsync-bench-latency-{}", std::process::id()));
    let r = (|| {
        let c1 = Conntrackd::start_with(lab, Fw::Fw1, &dir, Backup::KernelTable)?;
        let c2 = Conntrackd::start_with(lab, Fw::Fw2, &dir, Backup::KernelTable)?;
        let k = load_and_compare(lab, rate);
        drop((c1, c2));
        k
    })();
    let _ = std::fs::remove_dir_all(&dir);
    let k = r?;
    println!(
        "conntrackd {rate:>7}/s: kernel to kernel p50/p99/p99.9 {} ({} entries, {} lost)",
        k.hist.percentiles(),
        k.hist.count,
        k.missing
    );
    Ok(k)
}

/// Sends new flows through fw1 at `rate`, waits for fw2's table to take
/// all of fw1's entries (or to stop growing), and compares the two
/// tables' stamps.
fn load_and_compare(lab: &Lab, rate: u32) -> Result<KernelToKernel> {
    flows::send(lab, Kind::UDP4, count(rate), rate)?;
    let want = kernel_count(lab, Fw::Fw1)?;
    let (mut seen, mut since) = (0, Instant::now());
    loop {
        let n = kernel_count(lab, Fw::Fw2)?;
        if n >= want || since.elapsed() > STALL {
            break;
        }
        if n != seen {
            (seen, since) = (n, Instant::now());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = exec::stdout(
        std::process::Command::new(build::bin("ctsync-bench"))
            .args(["--json", "stamps", "--primary"])
            .arg(lab.ns(Fw::Fw1.node()))
            .arg("--backup")
            .arg(lab.ns(Fw::Fw2.node())),
    )?;
    let v: Value = serde_json::from_str(&out).context("ctsync-bench stamps printed no JSON")?;
    Ok(KernelToKernel {
        hist: Hist::from_json(&v["latency"]),
        missing: v["missing"].as_u64().unwrap_or(0),
    })
}

/// Per histogram, a percentile curve and the histogram itself, one line per
/// rate: (file name, caption, chart).
pub fn charts(results: &[AtRate]) -> Vec<(String, String, LineChart)> {
    /// Where a histogram is, and who measured it (a series' name prefix).
    type Source = (&'static str, fn(&AtRate) -> &Hist);
    /// File key, what it measures, what its samples are, its sources.
    type Metric = (&'static str, &'static str, &'static str, &'static [Source]);
    let metrics: [Metric; 3] = [
        (
            "kernel_to_kernel",
            "kernel event on fw1 to entry in fw2's table",
            "entries",
            &[
                ("ctsync ", |r| &r.ctsync.hist),
                ("conntrackd ", |r| &r.conntrackd.hist),
            ],
        ),
        (
            "event_to_send",
            "ctsync, change read from the kernel to sent",
            "changes",
            &[("", |r| &r.event_to_send)],
        ),
        (
            "ack_rtt",
            "ctsync, sync datagram sent to fw2's ACK",
            "datagrams",
            &[("", |r| &r.ack_rtt)],
        ),
    ];
    let mut out = Vec::new();
    for (key, what, samples, sources) in metrics {
        // One line per rate and source.
        let lines: Vec<(String, &Hist)> = results
            .iter()
            .flat_map(|r| {
                sources.iter().map(move |(who, hist)| {
                    let h = hist(r);
                    let name = format!("{who}{}: {} {samples}", rate_label(r.rate), h.count);
                    (name, h)
                })
            })
            .collect();
        // Percentiles at x = 1 / (1 - q): p50 at 2, p99 at 100; the max is
        // the 1 - 1/count quantile, so it sits at x = count.
        let curves: Vec<Series> = lines
            .iter()
            .map(|(name, h)| {
                let mut pts = vec![
                    (2.0, h.p50),
                    (10.0, h.p90),
                    (100.0, h.p99),
                    (1000.0, h.p999),
                ];
                if h.count > 1000 {
                    pts.push((h.count as f64, h.max));
                }
                Series::new(name, pts)
            })
            .collect();
        let most = lines.iter().map(|l| l.1.count).max().unwrap_or(0);
        // p90 at 10, p99 at 100, p99.9 at 1000, ... up to the largest count.
        let mut ticks = vec![(2.0, "p50".to_owned())];
        for k in 1..=7 {
            let x = 10f64.powi(k);
            let q = 100.0 - 100.0 / x;
            ticks.push((x, format!("p{q:.*}", (k as usize).saturating_sub(2))));
            if x >= most as f64 {
                break;
            }
        }
        out.push((
            format!("latency-{key}-percentiles.svg"),
            format!("{key} ({what}): percentiles per offered rate"),
            LineChart {
                title: format!("{what}: percentiles"),
                x: Axis::new(
                    "percentile (log scale of 1/(1-q); the last point of a line is the max)",
                    Scale::Log,
                )
                .ticks(ticks),
                y: Axis::new("latency (µs, log scale)", Scale::Log),
                series: curves,
            },
        ));
        let shares: Vec<Series> = lines
            .iter()
            .map(|(name, h)| Series::new(name, bucket_shares(h)))
            .collect();
        out.push((
            format!("latency-{key}-histogram.svg"),
            format!("{key} ({what}): histogram per offered rate"),
            LineChart {
                title: format!("{what}: histogram"),
                x: Axis::new("latency (µs, bucket upper bound, log scale)", Scale::Log),
                y: Axis::new("share of the samples (%)", Scale::Linear),
                series: shares,
            },
        ));
    }
    out
}

/// (bucket upper bound, % of the samples) from the first non-empty bucket
/// to the last, the empty ones between included as 0. The buckets are the
/// agent's power-of-two ones: upper bounds 1, 3, 7, 15, ... µs.
fn bucket_shares(h: &Hist) -> Vec<(f64, f64)> {
    let total: u64 = h.buckets.iter().map(|b| b.1).sum();
    let (Some(&(first, _)), Some(&(last, _))) = (h.buckets.first(), h.buckets.last()) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let mut le = first;
    while le <= last && out.len() < 64 {
        let c: u64 = h.buckets.iter().filter(|b| b.0 == le).map(|b| b.1).sum();
        out.push((le as f64, 100.0 * c as f64 / total.max(1) as f64));
        le = le * 2 + 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hist(count: u64, buckets: Vec<(u64, u64)>) -> Hist {
        Hist {
            count,
            p50: 40.0,
            p90: 70.0,
            p99: 300.0,
            p999: 2000.0,
            max: 9000.0,
            buckets,
        }
    }

    #[test]
    fn summary_from_the_agents_json() {
        let v: Value = serde_json::from_str(
            r#"{"count": 5, "min_us": 3, "mean_us": 9.5, "p50_us": 7, "p90_us": 15,
                "p99_us": 31, "p999_us": 31, "max_us": 31,
                "buckets": [{"le_us": 7, "count": 3}, {"le_us": 31, "count": 2}]}"#,
        )
        .unwrap();
        let h = Hist::from_json(&v);
        assert_eq!((h.count, h.p50, h.max), (5, 7.0, 31.0));
        assert_eq!(
            bucket_shares(&h),
            vec![(7.0, 60.0), (15.0, 0.0), (31.0, 40.0)]
        );
        assert_eq!(
            Hist::from_json(&serde_json::json!({"count": 0})).buckets,
            vec![]
        );
    }

    #[test]
    fn six_charts_one_line_per_rate_and_daemon() {
        let at = |rate, count| AtRate {
            rate,
            event_to_send: hist(count, vec![(31, 10), (63, 80), (255, 10)]),
            ack_rtt: hist(count / 10, vec![(127, 1)]),
            ctsync: KernelToKernel {
                hist: hist(count, vec![(63, 1)]),
                missing: 0,
            },
            conntrackd: KernelToKernel {
                hist: hist(count - 5, vec![(1023, 1)]),
                missing: 5,
            },
        };
        let charts = charts(&[at(10_000, 30_000), at(50_000, 150_000)]);
        let files: Vec<&str> = charts.iter().map(|c| c.0.as_str()).collect();
        // Both daemons' lines in the kernel-to-kernel charts, per rate.
        let k: Vec<&str> = charts[0].2.series.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            k,
            [
                "ctsync 10k/s: 30000 entries",
                "conntrackd 10k/s: 29995 entries",
                "ctsync 50k/s: 150000 entries",
                "conntrackd 50k/s: 149995 entries"
            ]
        );
        let charts = &charts[2..];
        assert_eq!(
            files[2..],
            [
                "latency-event_to_send-percentiles.svg",
                "latency-event_to_send-histogram.svg",
                "latency-ack_rtt-percentiles.svg",
                "latency-ack_rtt-histogram.svg"
            ]
        );
        let p = &charts[0].2;
        assert_eq!(p.series.len(), 2);
        assert_eq!(p.series[1].name, "50k/s: 150000 changes");
        assert_eq!(p.series[1].points.len(), 5);
        assert_eq!(p.series[1].points[4], (150_000.0, 9000.0));
        let labels: Vec<&str> =
            p.x.ticks
                .as_ref()
                .unwrap()
                .iter()
                .map(|t| t.1.as_str())
                .collect();
        assert_eq!(
            labels,
            [
                "p50", "p90", "p99", "p99.9", "p99.99", "p99.999", "p99.9999"
            ]
        );
        // The histogram: 31, 63, 127 (empty), 255.
        assert_eq!(charts[1].2.series[0].points.len(), 4);
        assert_eq!(charts[1].2.series[0].points[2], (127.0, 0.0));
    }
}

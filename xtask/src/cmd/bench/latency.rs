//! Replication latency at set rates: `ctgen --rate` creates entries on fw1
//! for a few seconds; the primary agent's histograms then say how long a
//! change waited from being read off the event socket to leaving in a
//! datagram (`event_to_send`), and how long datagrams took to be
//! acknowledged by fw2 (`ack_rtt`: an upper bound of the time to reach the
//! backup, as fw2 acknowledges cumulatively). Fresh agents per rate, so each
//! histogram holds one rate only. At most 200k entries per rate.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use serde_json::Value;
use xtask::{
    agent::start_pair,
    build, exec,
    lab::{Fw, Lab},
};

use super::{
    Report,
    plot::{Axis, LineChart, Scale, Series},
    progress::{Progress, rate_label},
};

const SECONDS: u32 = 3;

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
}

/// The agent's histograms after one rate.
#[derive(Clone, Debug)]
pub struct AtRate {
    /// Offered by `ctgen --rate`, entries per second.
    pub rate: u32,
    pub event_to_send: Hist,
    pub ack_rtt: Hist,
}

/// Progress steps of [`run`].
pub fn steps(rates: &[u32]) -> usize {
    rates.len()
}

pub fn run(
    lab: &Lab,
    rates: &[u32],
    report: &mut Report,
    progress: &mut Progress,
) -> Result<Vec<AtRate>> {
    println!("\n== replication latency at set rates ({SECONDS} s of ctgen --rate on fw1 each) ==");
    let mut results = Vec::new();
    for &rate in rates {
        let name = format!("latency ctsync {}", rate_label(rate));
        results.push(progress.step(&name, || one_rate(lab, rate, report))?);
    }
    exec::output(&mut lab.command(Fw::Fw1.node(), &["conntrack", "-F"]))?;
    for (file, caption, chart) in charts(&results) {
        report.plot(&file, &caption, chart.svg());
    }
    Ok(results)
}

fn one_rate(lab: &Lab, rate: u32, report: &mut Report) -> Result<AtRate> {
    exec::output(&mut lab.command(Fw::Fw1.node(), &["conntrack", "-F"]))?;
    let (a1, a2) = start_pair(
        lab,
        &build::bin("ctsync"),
        &format!("bench-latency-{}", lab.prefix()),
        "",
    )?;
    // Within the kernel's default nf_conntrack_max (262144).
    let count = (rate * SECONDS).min(200_000);
    let (count_s, rate_s) = (count.to_string(), rate.to_string());
    super::ctgen(
        lab,
        Fw::Fw1,
        &[
            "--count", &count_s, "--family", "4", "--proto", "mixed", "--nat", "--rate", &rate_s,
        ],
    )?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while a2.stats()?["sync"]["external_entries"]
        .as_u64()
        .unwrap_or(0)
        < u64::from(count)
    {
        if Instant::now() > deadline {
            bail!("fw2 did not receive {count} entries within 60 s at {rate}/s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let l: Value = serde_json::from_str(&a1.ctl(&["latency", "--json"])?)?;
    let (ev, rtt) = (&l["event_to_send"], &l["ack_rtt"]);
    let p = |h: &Value| format!("{} / {} / {} µs", h["p50_us"], h["p99_us"], h["p999_us"]);
    println!(
        "{rate:>7}/s: event read -> sent p50/p99/p99.9 {} ({} changes); sent -> ACK {} ({} datagrams)",
        p(ev),
        ev["count"],
        p(rtt),
        rtt["count"]
    );
    report.row(
        &format!("{rate}/s: change read from the kernel to sent, p50 / p99 / p99.9"),
        p(ev),
        String::new(),
        "p99 < 0.3 ms at 50k/s (whole path)".into(),
    );
    report.row(
        &format!("{rate}/s: sync datagram sent to fw2's ACK, p50 / p99 / p99.9"),
        p(rtt),
        String::new(),
        "upper bound (cumulative ACKs)".into(),
    );
    drop(a1);
    drop(a2);
    Ok(AtRate {
        rate,
        event_to_send: Hist::from_json(ev),
        ack_rtt: Hist::from_json(rtt),
    })
}

/// Per histogram, a percentile curve and the histogram itself, one line per
/// rate: (file name, caption, chart).
pub fn charts(results: &[AtRate]) -> Vec<(String, String, LineChart)> {
    /// Name, what it measures, what its samples are, where it is.
    type Metric = (
        &'static str,
        &'static str,
        &'static str,
        fn(&AtRate) -> &Hist,
    );
    let metrics: [Metric; 2] = [
        (
            "event_to_send",
            "change read from the kernel to sent",
            "changes",
            |r| &r.event_to_send,
        ),
        (
            "ack_rtt",
            "sync datagram sent to fw2's ACK",
            "datagrams",
            |r| &r.ack_rtt,
        ),
    ];
    let mut out = Vec::new();
    for (key, what, samples, hist) in metrics {
        let name = |r: &AtRate| format!("{}: {} {samples}", rate_label(r.rate), hist(r).count);
        // Percentiles at x = 1 / (1 - q): p50 at 2, p99 at 100; the max is
        // the 1 - 1/count quantile, so it sits at x = count.
        let curves: Vec<Series> = results
            .iter()
            .map(|r| {
                let h = hist(r);
                let mut pts = vec![
                    (2.0, h.p50),
                    (10.0, h.p90),
                    (100.0, h.p99),
                    (1000.0, h.p999),
                ];
                if h.count > 1000 {
                    pts.push((h.count as f64, h.max));
                }
                Series::new(&name(r), pts)
            })
            .collect();
        let most = results.iter().map(|r| hist(r).count).max().unwrap_or(0);
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
            format!("ctsync {key} ({what}): percentiles per offered rate"),
            LineChart {
                title: format!("ctsync {key}, {what}: percentiles"),
                x: Axis::new(
                    "percentile (log scale of 1/(1-q); the last point of a line is the max)",
                    Scale::Log,
                )
                .ticks(ticks),
                y: Axis::new("latency (µs, log scale)", Scale::Log),
                series: curves,
            },
        ));
        let shares: Vec<Series> = results
            .iter()
            .map(|r| Series::new(&name(r), bucket_shares(hist(r))))
            .collect();
        out.push((
            format!("latency-{key}-histogram.svg"),
            format!("ctsync {key} ({what}): histogram per offered rate"),
            LineChart {
                title: format!("ctsync {key}, {what}: histogram"),
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
    fn four_charts_one_line_per_rate() {
        let at = |rate, count| AtRate {
            rate,
            event_to_send: hist(count, vec![(31, 10), (63, 80), (255, 10)]),
            ack_rtt: hist(count / 10, vec![(127, 1)]),
        };
        let charts = charts(&[at(10_000, 30_000), at(50_000, 150_000)]);
        let files: Vec<&str> = charts.iter().map(|c| c.0.as_str()).collect();
        assert_eq!(
            files,
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

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

use super::Report;

const SECONDS: u32 = 3;

pub fn run(lab: &Lab, rates: &[u32], report: &mut Report) -> Result<()> {
    println!("\n== replication latency at set rates ({SECONDS} s of ctgen --rate on fw1 each) ==");
    for &rate in rates {
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
                "--count", &count_s, "--family", "4", "--proto", "mixed", "--nat", "--rate",
                &rate_s,
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
    }
    exec::output(&mut lab.command(Fw::Fw1.node(), &["conntrack", "-F"]))?;
    Ok(())
}

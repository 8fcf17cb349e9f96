//! The Prometheus endpoint (`general.metrics_listen`) of a replicating
//! agent in the lab: well-formed exposition whose counters, link series and
//! latency summaries match what happened; a taken address is a clear
//! start-up error.

mod support;

use std::collections::HashMap;

use support::{ctgen_on, ctsync_bin, fw_table, start_agent};
use xtask::{
    agent::{AgentProcess, sync_config},
    lab::{Fw, Lab, LabOptions},
};

const LISTEN: &str = "127.0.0.1:9780";

/// `GET /metrics` from inside `fw`'s namespace, as `name{labels}` → value.
fn scrape(lab: &Lab, fw: Fw) -> HashMap<String, f64> {
    let out = lab
        .exec(
            fw,
            &[
                "curl",
                "-sS",
                "--max-time",
                "5",
                &format!("http://{LISTEN}/metrics"),
            ],
        )
        .unwrap_or_else(|e| panic!("curl (apt-get install curl; `cargo xtask setup` does): {e:#}"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let mut m = HashMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("not `series value`: {line:?}"));
        let name = series.split('{').next().unwrap();
        assert!(
            name.starts_with("ctsync_")
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "bad metric name in {line:?}"
        );
        let v: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line:?}"));
        assert!(
            m.insert(series.to_owned(), v).is_none(),
            "duplicate series {series}"
        );
    }
    m
}

/// (policy, rt_priority) of a process, from /proc/PID/stat.
fn scheduling(pid: u32) -> (u32, u32) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("agent's stat");
    // Fields after the command name; rt_priority and policy are fields 40, 41.
    let f: Vec<&str> = stat
        .rsplit_once(") ")
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    (f[38].parse().unwrap(), f[37].parse().unwrap())
}

#[test]
fn metrics_endpoint_exposes_counters_links_and_latency() {
    let lab = Lab::up(LabOptions::default()).expect("lab up");
    let general = format!("metrics_listen = \"{LISTEN}\"\n");
    let fw1 = start_agent(
        &lab,
        Fw::Fw1.node(),
        &format!("{}-metrics-fw1", lab.prefix()),
        &format!("{general}{}", sync_config(Fw::Fw1)),
    );
    let fw2 = start_agent(
        &lab,
        Fw::Fw2.node(),
        &format!("{}-metrics-fw2", lab.prefix()),
        &format!("realtime_priority = 7\n{}", sync_config(Fw::Fw2)),
    );
    // general.realtime_priority: SCHED_RR (2) at 7 on fw2, normal (0) on fw1.
    assert_eq!(scheduling(fw2.child.id()), (2, 7));
    assert_eq!(scheduling(fw1.child.id()), (0, 0));
    ctgen_on(
        &lab,
        Fw::Fw1,
        &[
            "--count", "3000", "--family", "4", "--proto", "mixed", "--nat",
        ],
    );
    let n = fw2
        .wait_cache_equals("external", std::time::Duration::from_secs(60), || {
            Ok(fw_table(&lab, Fw::Fw1))
        })
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert!(n >= 3000);

    let m = scrape(&lab, Fw::Fw1);
    let get = |k: &str| {
        *m.get(k)
            .unwrap_or_else(|| panic!("no series {k}; have {:?}", m.keys()))
    };
    assert!(get("ctsync_events_new_total") >= 3000.0);
    assert!(get("ctsync_cache_entries") >= 3000.0);
    assert!(get("ctsync_sync_sender_records_sent_total") >= 3000.0);
    assert_eq!(get("ctsync_sync_sender_connected"), 1.0);
    assert_eq!(get("ctsync_sync_links_up{interface=\"sync0\"}"), 1.0);
    assert_eq!(get("ctsync_sync_links_active{interface=\"sync0\"}"), 1.0);
    assert_eq!(get("ctsync_sync_links_active{interface=\"sync1\"}"), 0.0);
    assert!(get("ctsync_sync_links_tx_datagrams_total{interface=\"sync0\"}") >= 300.0);
    assert!(get("ctsync_latency_ack_rtt_seconds_count") > 0.0);
    assert!(get("ctsync_latency_event_to_send_seconds_count") >= 3000.0);
    let p99 = get("ctsync_latency_ack_rtt_seconds{quantile=\"0.99\"}");
    assert!(p99 > 0.0 && p99 < 10.0, "{p99}");
    // The stats the CLI shows agree with the scrape.
    let s = fw1.stats().unwrap();
    assert_eq!(
        get("ctsync_events_new_total"),
        s["events"]["new"].as_f64().unwrap()
    );

    // A second agent asking for the same address says what to do.
    let err = AgentProcess::start(
        &lab,
        Fw::Fw1.node(),
        &ctsync_bin(),
        &format!("{}-metrics-taken", lab.prefix()),
        &general,
    )
    .err()
    .expect("a second agent on a taken metrics address must not start");
    let err = format!("{err:#}");
    assert!(
        err.contains("general.metrics_listen") && err.contains(LISTEN),
        "{err}"
    );
}

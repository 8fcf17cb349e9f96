//! Hot standby (`failover.standby = "hot"`) in the lab: fw2 writes fw1's
//! replicated state into its own kernel table as it arrives. Its table must
//! equal fw1's (`conntrack -L`, fields compared) once quiescent, after a
//! 1M-entry burst and after deletes and expiry; switching modes at run time
//! converges; and with real keepalived and 10,000 live TCP connections a
//! takeover (keepalived stopped, or fw1 dead with its links cut) has
//! nothing to commit and keeps every connection.

mod support;

use std::time::{Duration, Instant};

use support::{agent_pair, fw_table, stats, workspace_bin};
use xtask::{
    agent::AgentProcess,
    keepalived,
    lab::{Fw, Lab, LabOptions},
    sysctl::Raised,
    traffic::{Load, Traffic},
};

const HOT: &str = "[failover]\nstandby = \"hot\"\n";

/// fw2's kernel table equals fw1's within `secs`; returns its size.
fn assert_tables_equal(lab: &Lab, secs: u64) -> usize {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let (a, b) = (fw_table(lab, Fw::Fw1), fw_table(lab, Fw::Fw2));
        if a == b {
            return a.len();
        }
        if Instant::now() > deadline {
            let only1: Vec<_> = a.iter().filter(|e| !b.contains(e)).take(5).collect();
            let only2: Vec<_> = b.iter().filter(|e| !a.contains(e)).take(5).collect();
            panic!(
                "fw2's table ({}) differs from fw1's ({}); only on fw1: {only1:?}; only on fw2: {only2:?}",
                b.len(),
                a.len()
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// `conntrack -C` in `fw`'s namespace.
fn count(lab: &Lab, fw: Fw) -> u64 {
    let out = lab.exec(fw, &["conntrack", "-C"]).unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

/// Waits until fw2's kernel table holds as many entries as fw1's.
fn wait_counts_equal(lab: &Lab, secs: u64) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while count(lab, Fw::Fw1) != count(lab, Fw::Fw2) {
        assert!(
            Instant::now() < deadline,
            "fw2 has {} entries, fw1 {}",
            count(lab, Fw::Fw2),
            count(lab, Fw::Fw1)
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn mirror(agent: &AgentProcess) -> serde_json::Value {
    stats(agent)["sync"]["standby"].clone()
}

#[test]
fn hot_standby_table_equals_the_primary_after_a_1m_burst() {
    const N: u64 = 1_000_000;
    let _serial = support::one_at_a_time();
    // Both namespaces' copies in the global table, and a hash to match.
    let _max = Raised::at_least(xtask::sysctl::CONNTRACK_MAX, 2 * N + 200_000).unwrap();
    let _hash = Raised::at_least(xtask::sysctl::HASHSIZE, 1 << 20).unwrap();
    let lab = Lab::up(LabOptions::default()).expect("lab up");
    let (mut fw1, mut fw2) = xtask::agent::start_pair_with(
        &lab,
        &support::ctsync_bin(),
        &format!("{}-hot1m", lab.prefix()),
        &format!("xdp_map_entries = {}\n", N + N / 4),
        HOT,
    )
    .unwrap_or_else(|e| panic!("{e:#}"));
    support::ctgen_on(
        &lab,
        Fw::Fw1,
        &[
            "--count",
            "1000000",
            "--family",
            "4",
            "--proto",
            "mixed",
            "--nat",
            "--timeout",
            "3600",
        ],
    );
    wait_counts_equal(&lab, 300);
    let n = assert_tables_equal(&lab, 120);
    assert!(n as u64 >= N, "{n}");
    let m = mirror(&fw2);
    println!("fw2 hot standby after 1M: {m}");
    assert_eq!(m["mirror"]["failed"], 0, "{m}");
    assert!(m["mirror"]["created"].as_u64().unwrap() >= N, "{m}");
    // Pay for the 2M entries here, not in the next test: a namespace's
    // teardown frees its table in a kernel worker that starves whatever
    // runs next of CPU (connections set up late, takeovers stall).
    fw1.kill();
    fw2.kill();
    for fw in [Fw::Fw1, Fw::Fw2] {
        let out = lab.exec(fw, &["conntrack", "-F"]).unwrap();
        assert!(out.status.success(), "conntrack -F on {fw:?}: {out:?}");
    }
}

#[test]
fn deletes_and_expiry_reach_the_hot_standby_and_modes_switch_at_run_time() {
    let _serial = support::one_at_a_time();
    let lab = Lab::up(LabOptions::default()).expect("lab up");
    // Starts in external mode: the switch to hot must bring the table up
    // to date without a restart.
    let (_fw1, fw2) = agent_pair(&lab, "hotswitch", "[failover]\nstandby = \"external\"\n");
    let make = |args: &[&str]| support::ctgen_on(&lab, Fw::Fw1, args);
    make(&[
        "--count",
        "20000",
        "--family",
        "4",
        "--proto",
        "mixed",
        "--nat",
        "--timeout",
        "1200",
    ]);
    make(&[
        "--count",
        "3000",
        "--family",
        "6",
        "--proto",
        "udp",
        "--src-base",
        "fd00:70::",
        "--timeout",
        "1200",
    ]);
    fw2.wait_cache_equals("external", Duration::from_secs(60), || {
        Ok(fw_table(&lab, Fw::Fw1))
    })
    .unwrap_or_else(|e| panic!("{e:#}"));
    assert!(
        count(&lab, Fw::Fw2) < 100,
        "external mode wrote into fw2's table"
    );
    let cfg = std::fs::read_to_string(&fw2.config).unwrap();
    std::fs::write(
        &fw2.config,
        cfg.replace("standby = \"external\"", "standby = \"hot\""),
    )
    .unwrap();
    fw2.ctl(&["reload"]).unwrap();
    assert_eq!(mirror(&fw2)["mode"], "hot");
    assert_tables_equal(&lab, 60);
    // Deletes on fw1, and entries that expire there (an expiry is a DESTROY
    // event too): both must leave fw2's table.
    make(&[
        "--count", "5000", "--family", "4", "--proto", "mixed", "--nat", "--delete",
    ]);
    make(&[
        "--count",
        "2000",
        "--family",
        "4",
        "--proto",
        "udp",
        "--src-base",
        "10.80.0.0",
        "--timeout",
        "5",
    ]);
    std::thread::sleep(Duration::from_secs(8));
    let n = assert_tables_equal(&lab, 60);
    assert!((18_000..18_100).contains(&n), "{n}");
    let m = mirror(&fw2);
    println!("fw2 hot standby: {m}");
    assert!(
        m["mirror"]["deleted"].as_u64().unwrap() + m["mirror"]["delete_missing"].as_u64().unwrap()
            >= 5000,
        "{m}"
    );
    assert_eq!(m["mirror"]["failed"], 0, "{m}");
    // Back to external: the mirror stops; new entries stay out of fw2's table.
    let cfg = std::fs::read_to_string(&fw2.config).unwrap();
    std::fs::write(
        &fw2.config,
        cfg.replace("standby = \"hot\"", "standby = \"external\""),
    )
    .unwrap();
    fw2.ctl(&["reload"]).unwrap();
    assert_eq!(mirror(&fw2)["mode"], "external");
    let before = count(&lab, Fw::Fw2);
    make(&[
        "--count",
        "1000",
        "--family",
        "4",
        "--proto",
        "udp",
        "--src-base",
        "10.81.0.0",
        "--timeout",
        "1200",
    ]);
    fw2.wait_cache_equals("external", Duration::from_secs(60), || {
        Ok(fw_table(&lab, Fw::Fw1))
    })
    .unwrap_or_else(|e| panic!("{e:#}"));
    assert!(count(&lab, Fw::Fw2) <= before + 5);
}

/// 10k connections and 500 flows. Every 500 ms: at 200 ms (50k messages/s
/// plus echoes) a 2-core machine saturates, the client's veth queue overflows
/// and TCP retransmits thousands of segments with no failover at all.
const LOAD: Load = Load {
    tcp: 5000,
    udp: 250,
    interval_ms: 500,
    drain_ms: Load::FAILOVER_DRAIN_MS,
};

/// Seconds of traffic after `notify master`, before the final probes.
const RECOVERY_SECS: u64 = 16;

#[derive(Clone, Copy, Debug)]
enum Trigger {
    KeepalivedStopped,
    LinksCut,
}

fn hot_failover(trigger: Trigger) {
    let _serial = support::one_at_a_time();
    let lab = Lab::up(LabOptions {
        vips: false,
        ..LabOptions::default()
    })
    .expect("lab up");
    let (mut fw1, fw2) = agent_pair(&lab, &format!("hot{trigger:?}"), HOT);
    let (mut k1, k2) =
        keepalived::start_pair(&lab, &support::ctsync_bin(), &fw1.dir, Some((&fw1, &fw2)))
            .unwrap_or_else(|e| panic!("{e:#}"));
    let traffic = Traffic::start(&lab, &workspace_bin("ctsync-traffic"), &fw1.dir, &LOAD)
        .unwrap_or_else(|e| panic!("{e:#}"));
    // Every connection is open (on a loaded machine setup takes seconds)
    // and in fw2's kernel table before fw1 goes.
    let want = 2 * (LOAD.tcp + LOAD.udp) as u64;
    let open_by = Instant::now() + Duration::from_secs(60);
    while count(&lab, Fw::Fw1) < want && Instant::now() < open_by {
        std::thread::sleep(Duration::from_millis(200));
    }
    let n = assert_tables_equal(&lab, 120);
    assert!(
        n >= 2 * (LOAD.tcp + LOAD.udp) as usize,
        "fw2 holds {n} entries, fewer than the {} connections (both families) \
         fw1 carries: was the conntrack table full (nf_conntrack_max)?",
        2 * (LOAD.tcp + LOAD.udp)
    );
    let dropped_before = lab.dropped(Fw::Fw2).unwrap();
    let takeover = match trigger {
        Trigger::KeepalivedStopped => keepalived::stop_fw1(&lab, &mut k1, &k2),
        Trigger::LinksCut => {
            fw1.kill();
            keepalived::fail_fw1(&lab, &mut k1, &k2)
        }
    }
    .unwrap_or_else(|e| panic!("{e:#}"));
    let notify = fw2
        .wait_notify("master", Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("{e:#}"));
    // Segments lost while the addresses moved are resent on TCP's
    // retransmission timer, which backs off (0.2, 0.6, ... 12.6, 25.4 s after
    // the loss): traffic runs on, and the final probes get the failover drain
    // (`Load::FAILOVER_DRAIN_MS`), so even the 25.4 s retransmission is seen.
    std::thread::sleep(Duration::from_secs(RECOVERY_SECS));
    let reports = traffic.stop().unwrap();
    let dropped = lab.dropped(Fw::Fw2).unwrap();
    println!("{trigger:?}: fw2 holds the addresses after {takeover:?}; notify: {notify}");
    println!("{trigger:?}: fw2 dropped before takeover {dropped_before:?}, at the end {dropped:?}");
    // What hot standby is for: fw2 knows every packet it is handed.
    assert_eq!(
        dropped, dropped_before,
        "fw2 dropped forwarded packets after the takeover (invalid or without an entry)"
    );
    // Nothing was left to commit.
    let step = |name: &str| {
        notify["steps"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["step"] == name)
            .unwrap_or_else(|| panic!("no step {name}: {notify}"))["result"]
            .clone()
    };
    assert_eq!(step("verify")["missing"], 0, "{notify}");
    assert_eq!(step("commit_difference")["created"], 0, "{notify}");
    let mut worst = 0.0f64;
    for r in &reports {
        let (tcp, udp) = (&r["tcp"], &r["udp"]);
        assert_eq!(tcp["opened"], LOAD.tcp, "{r}");
        assert_eq!(
            tcp["alive_at_end"], LOAD.tcp,
            "TCP connections died in the failover: {tcp}"
        );
        assert_eq!(udp["flows_with_replies_at_end"], LOAD.udp, "{udp}");
        println!(
            "{trigger:?} {}: per-connection longest gap p50/p99/max: TCP {}/{}/{} ms, UDP {}/{}/{} ms",
            r["server"],
            tcp["max_gap_ms_p50"],
            tcp["max_gap_ms_p99"],
            tcp["max_gap_ms_max"],
            udp["max_gap_ms_p50"],
            udp["max_gap_ms_p99"],
            udp["max_gap_ms_max"],
        );
        worst = worst.max(tcp["max_gap_ms_max"].as_f64().unwrap());
    }
    println!(
        "{trigger:?}: longest TCP gap {worst} ms; takeover {} ms; message interval {} ms",
        takeover.as_millis(),
        LOAD.interval_ms
    );
}

#[test]
fn hot_standby_takeover_when_keepalived_stops_keeps_10k_connections() {
    hot_failover(Trigger::KeepalivedStopped);
}

#[test]
fn hot_standby_takeover_when_fw1_dies_with_links_cut_keeps_10k_connections() {
    hot_failover(Trigger::LinksCut);
}

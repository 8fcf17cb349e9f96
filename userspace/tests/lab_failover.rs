//! Failover in the lab: the commit of the external cache into the backup's
//! kernel table, the purge, and the whole takeover driven by real
//! keepalived (VRRP on the LAN and WAN, notify lines calling
//! `ctsync notify`) with live TCP connections and UDP flows through the
//! firewall that dies. The control case shows the same failover without
//! ctsync kills the TCP connections (`nf_conntrack_tcp_loose=0`), so the
//! main test can fail.

mod support;

use std::time::Duration;

use serde_json::Value;
use support::{AgentProcess, agent_pair, ctgen_on, ctsync_bin, fw_table, workspace_bin};
use xtask::{
    keepalived::{self, Keepalived},
    lab::{Fw, Lab, LabOptions},
    traffic::{Load, Traffic},
};

fn ctl_json(agent: &AgentProcess, args: &[&str]) -> Value {
    let out = agent
        .ctl(args)
        .unwrap_or_else(|e| panic!("{e:#}\n{}", agent.log()));
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("ctsync {args:?}: {e}: {out}"))
}

/// The largest remaining timeout (seconds) among `fw`'s kernel entries
/// whose original source is in 10.70.0.0/16 (ctgen's).
fn max_ctgen_timeout(lab: &Lab, fw: Fw) -> u64 {
    let out = lab
        .exec(fw, &["conntrack", "-L", "-o", "extended"])
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("src=10.70."))
        .map(|l| l.split_whitespace().nth(4).unwrap().parse::<u64>().unwrap())
        .max()
        .expect("ctgen's entries are in the table")
}

#[test]
fn commit_writes_the_replicated_table_into_the_backup_kernel() {
    let lab = Lab::up(LabOptions::default()).expect("lab up");
    let (fw1, fw2) = agent_pair(&lab, "commit", "");
    let traffic = Traffic::start(
        &lab,
        &workspace_bin("ctsync-traffic"),
        &fw1.dir,
        &Load {
            tcp: 20,
            udp: 10,
            interval_ms: 200,
        },
    )
    .unwrap_or_else(|e| panic!("{e:#}"));
    ctgen_on(
        &lab,
        Fw::Fw1,
        &[
            "--count",
            "30000",
            "--family",
            "4",
            "--proto",
            "mixed",
            "--nat",
            "--timeout",
            "900",
        ],
    );
    ctgen_on(
        &lab,
        Fw::Fw1,
        &["--count", "10000", "--family", "6", "--proto", "mixed"],
    );
    traffic.stop().unwrap();
    let n = fw2
        .wait_cache_equals("external", Duration::from_secs(90), || {
            Ok(fw_table(&lab, Fw::Fw1))
        })
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert!(n >= 40_000, "{n}");

    let r = ctl_json(&fw2, &["commit"]);
    assert_eq!(r["entries"], n, "{r}");
    assert_eq!(r["failed"], 0, "{r}");
    assert_eq!(r["created"], n, "{r}");
    // fw2's kernel table now equals fw1's, field by field (NAT included),
    // and its internal cache followed.
    let (t1, t2) = (fw_table(&lab, Fw::Fw1), fw_table(&lab, Fw::Fw2));
    assert!(
        t1 == t2,
        "fw2's table differs from fw1's after the commit: {}",
        xtask::ctcompare::diff(&t1, &t2)
    );
    let t = max_ctgen_timeout(&lab, Fw::Fw2);
    assert!(
        (600..=900).contains(&t),
        "committed timeouts are the remaining ones: {t}"
    );
    fw2.wait_converged(Duration::from_secs(30), || Ok(fw_table(&lab, Fw::Fw2)))
        .unwrap_or_else(|e| panic!("{e:#}"));

    // Again: every entry exists now, so every one is updated, none duplicated.
    let r = ctl_json(&fw2, &["commit"]);
    assert_eq!(
        (
            r["created"].as_u64(),
            r["updated"].as_u64(),
            r["failed"].as_u64()
        ),
        (Some(0), Some(n as u64), Some(0)),
        "{r}"
    );
    assert_eq!(fw_table(&lab, Fw::Fw2).len(), n);

    // The purge shortens every timer to failover.purge_timeout (60 s).
    let p = ctl_json(&fw2, &["purge"]);
    assert!(p["shortened"].as_u64().unwrap() >= 40_000, "{p}");
    let t = max_ctgen_timeout(&lab, Fw::Fw2);
    assert!(t <= 60, "purged timers: {t}");

    // notify master on fw1 has nothing of fw2's to commit but its own
    // external cache (fw2's table, as replicated): the same entries, all
    // updated; it reports every step.
    let r = ctl_json(&fw1, &["notify", "master", "--json"]);
    let steps: Vec<&str> = r["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["step"].as_str().unwrap())
        .collect();
    assert_eq!(
        steps,
        ["commit", "resync_kernel", "flush_external", "bulk_send"],
        "{r}"
    );
    assert_eq!(r["steps"][0]["result"]["failed"], 0, "{r}");
    assert_eq!(fw1.stats().unwrap()["sync"]["external_entries"], 0);
}

fn vrrp_pair(
    lab: &Lab,
    dir: &std::path::Path,
    agents: Option<(&AgentProcess, &AgentProcess)>,
) -> (Keepalived, Keepalived) {
    keepalived::start_pair(lab, &ctsync_bin(), dir, agents).unwrap_or_else(|e| panic!("{e:#}"))
}

fn kill_fw1(lab: &Lab, k1: &mut Keepalived, k2: &Keepalived) {
    keepalived::fail_fw1(lab, k1, k2).unwrap_or_else(|e| panic!("{e:#}"));
}

const LOAD: Load = Load {
    tcp: 600,
    udp: 100,
    interval_ms: 200,
};

#[test]
fn keepalived_failover_keeps_every_connection_alive() {
    let lab = Lab::up(LabOptions {
        vips: false,
        ..LabOptions::default()
    })
    .expect("lab up");
    let (mut fw1, fw2) = agent_pair(&lab, "vrrp", "");
    let (mut k1, k2) = vrrp_pair(&lab, &fw1.dir, Some((&fw1, &fw2)));
    // keepalived notified fw2 "backup" at start: it asked fw1 for its state.
    let traffic = Traffic::start(&lab, &workspace_bin("ctsync-traffic"), &fw1.dir, &LOAD)
        .unwrap_or_else(|e| panic!("{e:#}"));
    // Every connection is replicated before fw1 dies.
    let n = fw2
        .wait_cache_equals("external", Duration::from_secs(60), || {
            Ok(fw_table(&lab, Fw::Fw1))
        })
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert!(n >= 2 * (LOAD.tcp + LOAD.udp) as usize, "{n}");

    fw1.kill();
    kill_fw1(&lab, &mut k1, &k2);
    // keepalived runs the notify asynchronously: wait for it to be done.
    let notify = fw2
        .wait_notify("master", Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("{e:#}"));
    std::thread::sleep(Duration::from_secs(4));
    let reports = traffic.stop().unwrap();

    let commit = &notify["steps"][0]["result"];
    assert_eq!(commit["failed"], 0, "{notify}");
    assert!(commit["entries"].as_u64().unwrap() >= n as u64, "{notify}");
    for r in &reports {
        let (tcp, udp) = (&r["tcp"], &r["udp"]);
        assert_eq!(tcp["opened"], LOAD.tcp, "{r}");
        assert_eq!(
            tcp["alive_at_end"], LOAD.tcp,
            "TCP connections died in the failover: {tcp}"
        );
        assert_eq!(udp["flows_with_replies_at_end"], LOAD.udp, "{udp}");
        println!(
            "{}: commit of {} entries in {:.1} ms; per-connection longest gap p50/p99/max: TCP {}/{}/{} ms, UDP {}/{}/{} ms",
            r["server"],
            commit["entries"],
            commit["ms"].as_f64().unwrap(),
            tcp["max_gap_ms_p50"],
            tcp["max_gap_ms_p99"],
            tcp["max_gap_ms_max"],
            udp["max_gap_ms_p50"],
            udp["max_gap_ms_p99"],
            udp["max_gap_ms_max"],
        );
    }
}

#[test]
fn without_ctsync_the_same_failover_kills_tcp_connections() {
    let lab = Lab::up(LabOptions {
        vips: false,
        ..LabOptions::default()
    })
    .expect("lab up");
    let dir = std::env::temp_dir().join(format!("ctsync-control-{}", lab.prefix()));
    std::fs::create_dir_all(&dir).unwrap();
    let (mut k1, k2) = vrrp_pair(&lab, &dir, None);
    let traffic = Traffic::start(&lab, &workspace_bin("ctsync-traffic"), &dir, &LOAD)
        .unwrap_or_else(|e| panic!("{e:#}"));
    std::thread::sleep(Duration::from_secs(1));
    kill_fw1(&lab, &mut k1, &k2);
    std::thread::sleep(Duration::from_secs(4));
    let reports = traffic.stop().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    for r in &reports {
        let tcp = &r["tcp"];
        assert_eq!(tcp["opened"], LOAD.tcp, "{r}");
        assert_eq!(
            tcp["alive_at_end"], 0,
            "without state sync, fw2 must drop fw1's TCP connections as invalid: {tcp}"
        );
    }
}

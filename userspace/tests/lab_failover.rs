//! Failover in the lab: the commit of the external cache into the backup's
//! kernel table, the purge, and the whole takeover driven by real
//! keepalived (VRRP on the LAN and WAN, notify lines calling
//! `ctsync notify`) with live TCP connections and UDP flows through the
//! firewall that dies. The control case shows the same failover without
//! ctsync kills the TCP connections (`nf_conntrack_tcp_loose=0`), so the
//! main test can fail.

mod support;

use std::{
    collections::{HashMap, HashSet},
    time::Duration,
};

use ctsync::{
    ctnetlink::{EntryOptions, encode},
    ctwrite::Writer,
    display::EntryView,
};
use ctsync_common::{
    CtExt, CtRecord, Tuple,
    conntrack::{AF_INET, IPPROTO_SCTP, sctp_state},
};
use serde_json::Value;
use support::{
    AgentProcess, agent_pair, ctgen_on, ctsync_bin, fw_ctnetlink_table, fw_table, workspace_bin,
};
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

/// (created, updated, failed) of a commit report.
fn commit_counts(r: &Value) -> (u64, u64, u64) {
    let n = |k: &str| r[k].as_u64().unwrap_or_else(|| panic!("no {k} in {r}"));
    (n("created"), n("updated"), n("failed"))
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

/// The SCTP entries of `fw`'s kernel table, read through ctnetlink.
fn sctp_table(lab: &Lab, fw: Fw) -> HashMap<Tuple, (CtRecord, CtExt)> {
    fw_ctnetlink_table(lab, fw)
        .into_iter()
        .filter(|(k, _)| k.proto == IPPROTO_SCTP)
        .collect()
}

/// Panics unless `got` has every entry of `want` with the same reply tuple,
/// SCTP state and verification tags (and nothing else).
fn assert_same_sctp(
    what: &str,
    want: &HashMap<Tuple, (CtRecord, CtExt)>,
    got: &HashMap<Tuple, (CtRecord, CtExt)>,
) {
    let mut bad = Vec::new();
    for (k, (r, e)) in want {
        let ok = got.get(k).is_some_and(|(gr, ge)| {
            gr.reply == r.reply && gr.proto_state == r.proto_state && ge.sctp_vtag == e.sctp_vtag
        });
        if !ok {
            bad.push(format!(
                "want {} got {:?}",
                EntryView::new(r, Some(e)).to_line(),
                got.get(k)
                    .map(|(gr, ge)| EntryView::new(gr, Some(ge)).to_line())
            ));
        }
    }
    assert!(
        bad.is_empty() && got.len() == want.len(),
        "{what}: {} of {} SCTP entries differ ({} on the other side); first: {:#?}",
        bad.len(),
        want.len(),
        got.len(),
        &bad[..bad.len().min(5)]
    );
}

/// The SCTP verification tags, which `conntrack -L` does not print, go from
/// fw1's kernel through replication and the commit into fw2's kernel, entry
/// by entry: without them the backup's tracker would treat the associations'
/// chunks as invalid after a failover. A second commit (every entry exists)
/// restores tags through updates.
#[test]
fn commit_carries_sctp_verification_tags() {
    let _serial = support::one_at_a_time();
    const V4: usize = 2000;
    const V6: usize = 1000;
    let lab = Lab::up(LabOptions::default()).expect("lab up");
    let (_fw1, fw2) = agent_pair(&lab, "sctp", "");
    ctgen_on(
        &lab,
        Fw::Fw1,
        &[
            "--count",
            "2000",
            "--family",
            "4",
            "--proto",
            "sctp",
            "--nat",
            "--timeout",
            "900",
        ],
    );
    ctgen_on(
        &lab,
        Fw::Fw1,
        &[
            "--count",
            "1000",
            "--family",
            "6",
            "--proto",
            "sctp",
            "--timeout",
            "900",
        ],
    );

    // fw1's kernel holds what ctgen asked for: ESTABLISHED, entry i of a
    // family tagged 0x1000_0000 + i / 0x9000_0000 + i.
    let t1 = sctp_table(&lab, Fw::Fw1);
    assert_eq!(t1.len(), V4 + V6, "ctgen's SCTP entries on fw1");
    let mut tags = HashSet::new();
    for (k, (r, e)) in &t1 {
        assert_eq!(r.proto_state, sctp_state::ESTABLISHED, "{k:?}");
        let i = if k.family == AF_INET {
            u32::from_be_bytes(k.src[..4].try_into().unwrap()) - u32::from_be_bytes([10, 70, 0, 0])
        } else {
            u32::from_be_bytes(k.src[12..].try_into().unwrap())
        };
        assert_eq!(e.sctp_vtag, [0x1000_0000 + i, 0x9000_0000 + i], "{k:?}");
        tags.insert((k.family, e.sctp_vtag));
    }
    assert_eq!(tags.len(), V4 + V6, "distinct tags per entry");

    let n = fw2
        .wait_cache_equals("external", Duration::from_secs(60), || {
            Ok(fw_table(&lab, Fw::Fw1))
        })
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert!(n >= V4 + V6, "{n}");
    // The external cache carries the tags (dump --json shows them).
    let dump: Vec<EntryView> = serde_json::from_str(
        &fw2.ctl(&["dump", "external", "--json"])
            .unwrap_or_else(|e| panic!("{e:#}")),
    )
    .expect("dump --json");
    let want: HashSet<String> = t1
        .values()
        .map(|(r, e)| {
            serde_json::to_string(&EntryView::new(r, Some(e)).orig).unwrap()
                + &format!("{:?}", Some(e.sctp_vtag))
        })
        .collect();
    let got: HashSet<String> = dump
        .iter()
        .filter(|v| v.proto == IPPROTO_SCTP)
        .map(|v| serde_json::to_string(&v.orig).unwrap() + &format!("{:?}", v.sctp_vtag))
        .collect();
    assert!(
        want == got,
        "external cache tags differ: {} expected, {} dumped, {} in common",
        want.len(),
        got.len(),
        want.intersection(&got).count()
    );

    let r = ctl_json(&fw2, &["commit"]);
    assert_eq!(r["entries"], n, "{r}");
    assert_eq!(commit_counts(&r), (n as u64, 0, 0), "{r}");
    assert_same_sctp("fw2 after the commit", &t1, &sctp_table(&lab, Fw::Fw2));

    // Overwrite fw2's tags by hand (an update the kernel must accept, with
    // the state), then commit again: every entry exists, so every one is
    // updated, and the updates put fw1's tags back.
    let scrambled: Vec<(CtRecord, CtExt)> = sctp_table(&lab, Fw::Fw2)
        .into_values()
        .map(|(r, mut e)| {
            e.sctp_vtag = [!e.sctp_vtag[0], !e.sctp_vtag[1]];
            (r, e)
        })
        .collect();
    let failed = lab
        .in_ns(Fw::Fw2, || {
            let mut w = Writer::open().expect("ctnetlink writer");
            let mut failed = Vec::new();
            w.write(
                &scrambled,
                |buf, req, (r, e)| encode::update(buf, req, r, Some(e), EntryOptions::default()),
                |i, errno| failed.push((i, errno)),
            )
            .expect("writing updates");
            failed
        })
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert!(failed.is_empty(), "updates refused: {failed:?}");
    let t2 = sctp_table(&lab, Fw::Fw2);
    let expected: HashMap<Tuple, (CtRecord, CtExt)> =
        scrambled.iter().map(|(r, e)| (r.orig, (*r, *e))).collect();
    assert_same_sctp("fw2 after scrambling its tags", &expected, &t2);

    let r = ctl_json(&fw2, &["commit"]);
    assert_eq!(commit_counts(&r), (0, n as u64, 0), "{r}");
    assert_same_sctp(
        "fw2 after the second commit",
        &t1,
        &sctp_table(&lab, Fw::Fw2),
    );
}

#[test]
fn commit_writes_the_replicated_table_into_the_backup_kernel() {
    let _serial = support::one_at_a_time();
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
            drain_ms: Load::DRAIN_MS,
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
    assert_eq!(commit_counts(&r), (n as u64, 0, 0), "{r}");
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
    assert_eq!(commit_counts(&r), (0, n as u64, 0), "{r}");
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
    // keepalived may run it twice: the second finds nothing left to commit.
    let again = ctl_json(&fw1, &["notify", "master", "--json"]);
    assert!(again["error"].is_null(), "{again}");
    assert_eq!(again["steps"][0]["result"]["entries"], 0, "{again}");
    assert_eq!(fw_table(&lab, Fw::Fw1).len(), fw_table(&lab, Fw::Fw2).len());

    // The latency histograms saw all of it: fw1's datagrams acknowledged
    // by fw2, fw2's two commits, fw1's notify (with its commit).
    let l1 = ctl_json(&fw1, &["latency", "--json"]);
    let l2 = ctl_json(&fw2, &["latency", "--json"]);
    let rtt = &l1["ack_rtt"];
    assert!(rtt["count"].as_u64().unwrap() > 100, "{l1}");
    let (p50, max) = (
        rtt["p50_us"].as_u64().unwrap(),
        rtt["max_us"].as_u64().unwrap(),
    );
    assert!(0 < p50 && p50 <= max, "{l1}");
    // Every change ctgen caused on fw1 went out: at least one sample each.
    let ev = &l1["event_to_send"];
    assert!(ev["count"].as_u64().unwrap() >= 40_000, "{l1}");
    assert_eq!(l2["commit"]["count"], 2, "{l2}");
    // fw2 applied fw1's datagrams as they came.
    assert!(
        l2["receive_to_apply"]["count"].as_u64().unwrap() > 0,
        "{l2}"
    );
    assert_eq!(l1["commit"]["count"], 2, "{l1}");
    assert_eq!(l1["notify"]["count"], 2, "{l1}");
    for step in ["commit", "resync_kernel", "flush_external", "bulk_send"] {
        assert_eq!(l1[format!("notify_step_{step}")]["count"], 2, "{l1}");
    }
    let text = fw2.ctl(&["latency"]).unwrap();
    assert!(text.contains("commit: 2 samples; p50"), "{text}");
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
    drain_ms: Load::FAILOVER_DRAIN_MS,
};

#[test]
fn keepalived_failover_keeps_every_connection_alive() {
    // Keepalived timing and TCP backoff: no other lab competes for CPU.
    let _serial = support::one_at_a_time();
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
    // Keepalived timing and TCP backoff: no other lab competes for CPU.
    let _serial = support::one_at_a_time();
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
    // fw2's drop counters see it (the hot-standby tests rely on them).
    let dropped = lab.dropped(Fw::Fw2).unwrap();
    assert!(dropped.invalid > 0, "{dropped:?}");
    for r in &reports {
        let tcp = &r["tcp"];
        assert_eq!(tcp["opened"], LOAD.tcp, "{r}");
        assert_eq!(
            tcp["alive_at_end"], 0,
            "without state sync, fw2 must drop fw1's TCP connections as invalid: {tcp}"
        );
    }
}

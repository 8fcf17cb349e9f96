//! The event source against the real kernel, in the lab: the agent on fw1
//! keeps its internal cache equal to fw1's conntrack table (as `conntrack -L`
//! prints it) through real traffic, bulk inserts with NAT, overruns, and
//! filter changes.

mod support;

use std::time::Duration;

use support::{assert_converges, start_agent, stats, workspace_bin};
use xtask::{
    lab::{CLIENT_V4, Lab, LabOptions, Node, SERVER_V4, SERVER_V6},
    traffic::{Load, Traffic},
};

fn fw1_table(lab: &Lab) -> Vec<support::Entry> {
    xtask::ctcompare::kernel_table(Some(lab.ns(Node::Fw1))).unwrap()
}

/// Runs ctgen (bulk ctnetlink inserts/deletes) in fw1.
fn ctgen(lab: &Lab, args: &[&str]) -> String {
    let bin = workspace_bin("ctgen");
    let mut argv = vec![bin.to_str().unwrap()];
    argv.extend(args);
    let o = lab
        .exec(Node::Fw1, &argv)
        .unwrap_or_else(|e| panic!("{e:#}"));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stat(v: &serde_json::Value, path: &str) -> u64 {
    let mut cur = v;
    for k in path.split('.') {
        cur = &cur[k];
    }
    cur.as_u64()
        .unwrap_or_else(|| panic!("stats have no {path}: {v}"))
}

#[test]
fn cache_matches_kernel_after_real_tcp_udp_icmp_traffic_with_nat() {
    let lab = Lab::up(LabOptions::default()).expect("lab up");
    let agent = start_agent(&lab, Node::Fw1, &format!("{}-traffic", lab.prefix()), "");
    let traffic = Traffic::start(
        &lab,
        &workspace_bin("ctsync-traffic"),
        &agent.dir,
        &Load {
            tcp: 40,
            udp: 20,
            interval_ms: 200,
            drain_ms: Load::DRAIN_MS,
        },
    )
    .unwrap_or_else(|e| panic!("{e:#}"));
    lab.exec(
        Node::Client,
        &["ping", "-c", "3", "-i", "0.2", &SERVER_V4.to_string()],
    )
    .unwrap();
    lab.exec(
        Node::Client,
        &["ping", "-c", "3", "-i", "0.2", &SERVER_V6.to_string()],
    )
    .unwrap();
    std::thread::sleep(Duration::from_secs(2));

    let n = assert_converges(&agent, 30, || fw1_table(&lab));
    let k = fw1_table(&lab);
    // The traffic really went through fw1, NATed on the way out.
    let natted = k
        .iter()
        .filter(|e| {
            e.proto == 6
                && e.orig.contains(&CLIENT_V4.to_string())
                && e.reply.contains("dst=10.2.0.1 ")
        })
        .count();
    assert!(
        natted >= 40,
        "expected >= 40 SNATed TCP entries in fw1's table, found {natted} of {n}: {k:#?}"
    );
    assert!(
        k.iter().any(|e| e.proto == 1),
        "no ICMP entry in fw1's table"
    );
    assert!(
        k.iter().any(|e| e.proto == 58),
        "no ICMPv6 entry in fw1's table"
    );
    assert!(
        k.iter().any(|e| e.proto == 17 && e.family == "ipv6"),
        "no IPv6 UDP entry"
    );

    let reports = traffic.stop().unwrap_or_else(|e| panic!("{e:#}"));
    for r in &reports {
        assert_eq!(
            r["tcp"]["alive_at_end"], 40,
            "traffic through fw1 broke: {r}"
        );
    }
    // Closing connections changes states (FIN_WAIT, TIME_WAIT...): still equal.
    std::thread::sleep(Duration::from_secs(1));
    assert_converges(&agent, 30, || fw1_table(&lab));
    let s = stats(&agent);
    assert!(stat(&s, "events.new") >= 120, "{s}");
    assert_eq!(stat(&s, "events.malformed"), 0, "{s}");
}

#[test]
fn cache_matches_kernel_after_100k_bulk_inserts_v4_v6_with_nat_and_deletes() {
    let lab = Lab::up(LabOptions::default()).expect("lab up");
    let agent = start_agent(&lab, Node::Fw1, &format!("{}-bulk", lab.prefix()), "");
    ctgen(
        &lab,
        &[
            "--count",
            "50000",
            "--family",
            "4",
            "--proto",
            "mixed",
            "--nat",
            "--timeout",
            "1200",
        ],
    );
    ctgen(
        &lab,
        &[
            "--count",
            "50000",
            "--family",
            "6",
            "--proto",
            "mixed",
            "--nat",
            "--timeout",
            "1200",
        ],
    );
    let n = assert_converges(&agent, 60, || fw1_table(&lab));
    assert!(n >= 100_000, "{n} entries");
    // Memory target, measured where the table is full (deleted slots are
    // kept for reuse, so it is only meaningful here).
    let s = stats(&agent);
    assert!(stat(&s, "cache.bytes_per_entry") < 150, "{s}");
    ctgen(
        &lab,
        &[
            "--count", "20000", "--family", "4", "--proto", "mixed", "--delete",
        ],
    );
    let n = assert_converges(&agent, 60, || fw1_table(&lab));
    assert!(
        (80_000..100_000).contains(&n),
        "{n} entries after deleting 20000"
    );
    let s = stats(&agent);
    assert!(stat(&s, "events.destroy") >= 20_000, "{s}");
    assert_eq!(
        stat(&s, "events.overruns"),
        0,
        "default buffers should hold this burst: {s}"
    );
}

#[test]
fn overrun_with_a_small_socket_buffer_resyncs_and_converges() {
    let lab = Lab::up(LabOptions::default()).expect("lab up");
    let agent = start_agent(
        &lab,
        Node::Fw1,
        &format!("{}-overrun", lab.prefix()),
        "[events]\nsocket_buffer = 65536\nsocket_buffer_max = 262144\n",
    );
    // Stop the agent from reading while the flood happens, so the socket
    // buffer really overflows.
    agent.signal(libc::SIGSTOP);
    ctgen(
        &lab,
        &[
            "--count",
            "60000",
            "--family",
            "4",
            "--proto",
            "udp",
            "--timeout",
            "1200",
        ],
    );
    agent.signal(libc::SIGCONT);
    ctgen(
        &lab,
        &[
            "--count",
            "30000",
            "--family",
            "6",
            "--proto",
            "tcp",
            "--timeout",
            "1200",
        ],
    );
    let n = assert_converges(&agent, 60, || fw1_table(&lab));
    assert!(n >= 90_000, "{n}");
    let s = stats(&agent);
    assert!(
        stat(&s, "events.overruns") >= 1,
        "no overrun was reported: {s}"
    );
    assert!(
        stat(&s, "events.resyncs") >= 2,
        "start-up dump plus at least one overrun resync expected: {s}"
    );
    assert!(
        stat(&s, "events.socket_buffer") > 65536,
        "the buffer did not grow: {s}"
    );
}

#[test]
fn excluded_entries_are_dropped_by_the_kernel_filter_and_reload_changes_it() {
    let lab = Lab::up(LabOptions::default()).expect("lab up");
    let agent = start_agent(
        &lab,
        Node::Fw1,
        &format!("{}-filter", lab.prefix()),
        "[filter.protocol]\nlist = [\"udp\"]\n[filter.address]\nsource = [\"10.77.0.0/16\"]\n",
    );
    let before = stats(&agent);
    // Excluded by protocol (udp, sources 10.70...), by address (tcp from 10.77...), and kept (tcp from 10.70...).
    ctgen(
        &lab,
        &[
            "--count",
            "3000",
            "--family",
            "4",
            "--proto",
            "udp",
            "--src-base",
            "10.70.0.0",
            "--timeout",
            "1200",
        ],
    );
    ctgen(
        &lab,
        &[
            "--count",
            "2000",
            "--family",
            "4",
            "--proto",
            "tcp",
            "--src-base",
            "10.77.0.0",
            "--timeout",
            "1200",
        ],
    );
    ctgen(
        &lab,
        &[
            "--count",
            "1000",
            "--family",
            "4",
            "--proto",
            "tcp",
            "--src-base",
            "10.70.0.0",
            "--timeout",
            "1200",
        ],
    );
    let expect = |k: Vec<support::Entry>| -> Vec<support::Entry> {
        k.into_iter()
            .filter(|e| e.proto != 17 && !e.orig.starts_with("src=10.77."))
            .collect()
    };
    let n = assert_converges(&agent, 30, || expect(fw1_table(&lab)));
    assert_eq!(n, 1000);
    let s = stats(&agent);
    let d = |p: &str| stat(&s, p) - stat(&before, p);
    // The kernel filter dropped them: userspace never saw those events.
    assert_eq!(d("filter.dropped_proto"), 3000, "{s}");
    assert_eq!(d("filter.dropped_addr"), 2000, "{s}");
    assert_eq!(d("events.new"), 1000, "userspace saw excluded events: {s}");

    // Reload without the protocol rule: the UDP entries come in by the resync.
    std::fs::write(
        &agent.config,
        std::fs::read_to_string(&agent.config)
            .unwrap()
            .replace("list = [\"udp\"]", "list = []"),
    )
    .unwrap();
    agent.ctl(&["reload"]).unwrap_or_else(|e| panic!("{e:#}"));
    let n = assert_converges(&agent, 30, || {
        fw1_table(&lab)
            .into_iter()
            .filter(|e| !e.orig.starts_with("src=10.77."))
            .collect()
    });
    assert_eq!(n, 4000);
    // ...and new UDP events pass the filter now.
    ctgen(
        &lab,
        &[
            "--count",
            "500",
            "--family",
            "4",
            "--proto",
            "udp",
            "--src-base",
            "10.71.0.0",
            "--timeout",
            "1200",
        ],
    );
    let n = assert_converges(&agent, 30, || {
        fw1_table(&lab)
            .into_iter()
            .filter(|e| !e.orig.starts_with("src=10.77."))
            .collect()
    });
    assert_eq!(n, 4500);
}

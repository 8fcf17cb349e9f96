//! Replication in the lab: agents on fw1 and fw2 over the two sync links;
//! fw2's external cache must equal fw1's kernel table (as `conntrack -L`
//! prints it) after quiescence, also with faults on the sync links (loss,
//! duplication, payload corruption injected with nftables; reordering by an
//! HTB class that nftables sends a share of the datagrams to), agent crashes
//! and restarts on either side, the active link going down, and garbage
//! from strangers. Each test runs once per receive path on the backup: XDP
//! in native mode, XDP in generic mode, and the agent's socket.

mod support;

use std::time::Duration;

use serde_json::Value;

use support::{Receive, agent_pair_in, fw_table, stats, workspace_bin, xdp_counter};
use xtask::{
    agent::AgentProcess,
    lab::{Fw, Lab, LabOptions, Node},
    traffic::{Load, Traffic},
};

const PORT: u16 = 3780;

/// Defines `$name::{xdp_native, xdp_generic, socket}`, each running the
/// body with its [`Receive`] path bound to `$receive`.
macro_rules! each_receive_path {
    ($(#[doc = $doc:literal])* fn $name:ident($receive:ident) $body:block) => {
        $(#[doc = $doc])*
        mod $name {
            use super::*;
            fn run($receive: Receive) $body
            #[test]
            fn xdp_native() {
                run(Receive::Native)
            }
            #[test]
            fn xdp_generic() {
                run(Receive::Generic)
            }
            #[test]
            fn socket() {
                run(Receive::Socket)
            }
        }
    };
}

/// fw2's external cache equals fw1's kernel table within `secs`.
fn assert_replicated(lab: &Lab, fw2: &AgentProcess, secs: u64) -> usize {
    fw2.wait_cache_equals("external", Duration::from_secs(secs), || {
        Ok(fw_table(lab, Fw::Fw1))
    })
    .unwrap_or_else(|e| panic!("{e:#}"))
}

fn ctgen(lab: &Lab, args: &[&str]) -> std::process::Child {
    let bin = workspace_bin("ctgen");
    let mut argv = vec![bin.to_str().unwrap()];
    argv.extend(args);
    lab.spawn(Node::Fw1, &argv).unwrap()
}

fn nft(lab: &Lab, node: Node, ruleset: &str) {
    let mut cmd = lab.command(node, &["nft", "-f", "-"]);
    xtask::exec::output_with_input(&mut cmd, ruleset.as_bytes())
        .unwrap_or_else(|e| panic!("{e:#}"));
}

each_receive_path! {
fn fw2_external_cache_equals_fw1_table_after_100k_bulk_and_live_traffic(receive) {
    let lab = Lab::up(LabOptions::default()).expect("lab up");
    let (fw1, fw2) = agent_pair_in(&lab, "bulk", receive, "");
    let traffic = Traffic::start(
        &lab,
        &workspace_bin("ctsync-traffic"),
        &fw1.dir,
        &Load {
            tcp: 50,
            udp: 20,
            interval_ms: 200,
            drain_ms: Load::DRAIN_MS,
        },
    )
    .unwrap_or_else(|e| panic!("{e:#}"));
    for fam in ["4", "6"] {
        let st = ctgen(
            &lab,
            &[
                "--count",
                "50000",
                "--family",
                fam,
                "--proto",
                "mixed",
                "--nat",
                "--timeout",
                "1200",
            ],
        )
        .wait()
        .unwrap();
        assert!(st.success());
    }
    let n = assert_replicated(&lab, &fw2, 90);
    assert!(n >= 100_000, "{n}");
    traffic.stop().unwrap();
    assert_replicated(&lab, &fw2, 60);
    let s = stats(&fw1);
    assert_eq!(s["sync"]["replication"]["send_errors"], 0, "{s}");
    assert_receive_path(&fw2, receive);
}
}

/// The data really went the way under test: with XDP, the kernel applied
/// most records (the agent only handles bulk markers and the like).
fn assert_receive_path(fw2: &AgentProcess, receive: Receive) {
    let s = stats(fw2);
    let in_kernel = xdp_counter(&s, "applied");
    let delivered = s["sync"]["receiver"]["records_delivered"].as_u64().unwrap();
    match receive {
        Receive::Socket => assert_eq!(in_kernel, 0, "{s}"),
        _ => assert!(
            in_kernel > 0 && in_kernel > delivered,
            "XDP applied {in_kernel} records, the agent {delivered}: {}",
            s["sync"]
        ),
    }
}

/// Creates 20k entries on fw1 and deletes 5k of them; fw2's external cache
/// must end up with the 15k left. Returns both agents' stats.
fn create_20k_delete_5k(lab: &Lab, fw1: &AgentProcess, fw2: &AgentProcess) -> (Value, Value) {
    let st = ctgen(
        lab,
        &[
            "--count",
            "20000",
            "--family",
            "4",
            "--proto",
            "mixed",
            "--nat",
            "--timeout",
            "1200",
        ],
    )
    .wait()
    .unwrap();
    assert!(st.success());
    let st = ctgen(
        lab,
        &[
            "--count", "5000", "--family", "4", "--proto", "mixed", "--nat", "--delete",
        ],
    )
    .wait()
    .unwrap();
    assert!(st.success());
    let n = assert_replicated(lab, fw2, 120);
    assert_eq!(n, 15_000);
    (stats(fw1), stats(fw2))
}

/// `loss`% of the datagrams to the sync port dropped on both firewalls'
/// egress (data one way, ACK/NACK the other), plus 10% duplication of the
/// data and payload and header corruption.
fn survives_loss_duplication_and_corruption(name: &str, loss: u32, receive: Receive) {
    let lab = Lab::up(LabOptions::default()).expect("lab up");
    // Corruption rewrites a payload byte (offset 40 into the UDP payload:
    // inside the first record, past the ctsync header) or a header byte
    // (offset 12: the session id).
    let faults = format!(
        "table inet fault {{\n chain out {{ type filter hook output priority 0;\n\
         udp dport {PORT} numgen random mod 100 < {loss} drop\n\
         udp dport {PORT} numgen random mod 100 < 5 @ih,320,8 set 0xff\n\
         udp dport {PORT} numgen random mod 100 < 2 @ih,96,8 set 0xff\n }}\n}}\n"
    );
    nft(&lab, Node::Fw1, &faults);
    nft(&lab, Node::Fw2, &faults);
    nft(
        &lab,
        Node::Fw1,
        &format!(
            "table ip dupl {{\n chain out {{ type filter hook output priority 10;\n\
             udp dport {PORT} numgen random mod 100 < 10 dup to 10.9.1.2 device sync0\n }}\n}}\n"
        ),
    );
    let (fw1, fw2) = agent_pair_in(&lab, name, receive, "");
    let (s1, s2) = create_20k_delete_5k(&lab, &fw1, &fw2);
    let send = &s1["sync"]["sender"];
    let recv = &s2["sync"]["receiver"];
    assert!(
        send["retransmits"].as_u64().unwrap() > 0,
        "{loss}% loss caused no retransmit: {send}"
    );
    // XDP drops corrupt data datagrams itself; the agent sees the rest.
    let corrupt = recv["corrupt"].as_u64().unwrap() + xdp_counter(&s2, "corrupt");
    assert!(
        corrupt > 0,
        "no corrupted datagram was seen: {}",
        s2["sync"]
    );
    assert!(recv["nacks_sent"].as_u64().unwrap() > 0, "{recv}");
    assert_receive_path(&fw2, receive);
}

each_receive_path! {
fn replication_survives_30pct_loss_duplication_and_corruption(receive) {
    survives_loss_duplication_and_corruption("loss30", 30, receive);
}
}

#[test]
fn replication_survives_5pct_loss_duplication_and_corruption() {
    survives_loss_duplication_and_corruption("loss5", 5, Receive::Native);
}

/// Packets sent so far by HTB class `class` on `dev` of `node`.
fn htb_class_packets(lab: &Lab, node: Node, dev: &str, class: &str) -> u64 {
    let out = lab
        .exec(node, &["tc", "-s", "class", "show", "dev", dev])
        .unwrap_or_else(|e| panic!("{e:#}"));
    let text = String::from_utf8_lossy(&out.stdout);
    // "class htb 1:20 parent 1: ...\n Sent 1234 bytes 5 pkt (dropped 0, ...)"
    let mut lines = text.lines();
    while let Some(l) = lines.next() {
        if l.starts_with(&format!("class htb {class} ")) {
            let sent = lines.next().unwrap_or_default();
            let w: Vec<&str> = sent.split_whitespace().collect();
            let i = w
                .iter()
                .position(|x| *x == "pkt")
                .unwrap_or_else(|| panic!("unexpected `tc -s class show` output:\n{text}"));
            return w[i - 1].parse().unwrap();
        }
    }
    panic!("no HTB class {class} on {dev} of {node:?}:\n{text}");
}

each_receive_path! {
fn replication_survives_reordering_on_the_sync_link(receive) {
    let lab = Lab::up(LabOptions::default()).expect("lab up");
    // No netem on this kernel: reorder with HTB. On both firewalls' active
    // sync link, a fast default class and a slow one (8 Mbit/s, so each
    // datagram in it waits at least 1.5 ms behind the rate limit, more when
    // it queues); nftables puts a random 20% of the datagrams to the sync
    // port (data one way, ACK/NACK the other) into the slow class through
    // skb->priority, which HTB honours when it names one of its classes.
    let dev = xtask::lab::SYNC_IFS[0];
    for fw in [Node::Fw1, Node::Fw2] {
        let ns = lab.ns(fw).to_owned();
        for args in [
            format!("qdisc replace dev {dev} root handle 1: htb default 10"),
            format!("class add dev {dev} parent 1: classid 1:10 htb rate 10gbit"),
            format!(
                "class add dev {dev} parent 1: classid 1:20 htb rate 8mbit ceil 8mbit burst 1600 cburst 1600"
            ),
            format!("qdisc add dev {dev} parent 1:10 handle 10: pfifo limit 20000"),
            format!("qdisc add dev {dev} parent 1:20 handle 20: pfifo limit 20000"),
        ] {
            let mut argv = vec!["-n", ns.as_str()];
            argv.extend(args.split_whitespace());
            xtask::exec::output(std::process::Command::new("tc").args(&argv))
                .unwrap_or_else(|e| panic!("HTB is needed for the reordering test: {e:#}"));
        }
        nft(
            &lab,
            fw,
            &format!(
                "table inet reorder {{\n chain post {{ type filter hook postrouting priority 0;\n\
                 oifname \"{dev}\" udp dport {PORT} numgen random mod 100 < 20 meta priority set 1:20\n }}\n}}\n"
            ),
        );
    }
    let (fw1, fw2) = agent_pair_in(&lab, "reorder", receive, "");
    let (_, s2) = create_20k_delete_5k(&lab, &fw1, &fw2);
    // The test is void unless datagrams really overtook each other.
    let recv = &s2["sync"]["receiver"];
    println!("fw2 receiver: {recv}");
    assert!(
        recv["reordered"].as_u64().unwrap() > 0,
        "no data datagram arrived after a higher-numbered one: {recv}"
    );
    for fw in [Node::Fw1, Node::Fw2] {
        let slow = htb_class_packets(&lab, fw, dev, "1:20");
        let fast = htb_class_packets(&lab, fw, dev, "1:10");
        println!("{fw:?} {dev}: slow class {slow} packets, fast class {fast}");
        assert!(
            slow > 0 && fast > slow,
            "{fw:?}: the slow class sent {slow} packets, the fast one {fast}"
        );
    }
    assert_receive_path(&fw2, receive);
}
}

each_receive_path! {
fn agents_crash_and_restart_mid_stream_and_converge(receive) {
    let lab = Lab::up(LabOptions::default()).expect("lab up");
    let (mut fw1, mut fw2) = agent_pair_in(&lab, "restart", receive, "");
    // Each round NATs to its own address, so reply tuples never clash.
    let make = |base: &str, nat_to: &str| {
        let args = [
            "--count",
            "20000",
            "--family",
            "4",
            "--proto",
            "mixed",
            "--nat",
            "--nat-to",
            nat_to,
            "--src-base",
            base,
        ];
        assert!(ctgen(&lab, &args).wait().unwrap().success());
    };
    // The backup crashes while a burst is being replicated, and more changes
    // happen while it is down.
    make("10.70.0.0", "10.2.0.101");
    let before = fw2.dump("external").unwrap().len();
    fw2.kill();
    make("10.71.0.0", "10.2.0.102");
    // With XDP the external cache is a pinned map: the restarted backup
    // still has it before the primary can send anything (held stopped).
    fw1.signal(libc::SIGSTOP);
    fw2.restart(&lab, Node::Fw2).unwrap();
    let kept = fw2.dump("external").unwrap().len();
    fw1.signal(libc::SIGCONT);
    match receive {
        Receive::Socket => assert_eq!(kept, 0),
        _ => assert!(
            kept >= before && before > 0,
            "the restarted backup has {kept} external entries, it had {before}\n{}",
            fw2.log()
        ),
    }
    // The primary crashes mid-burst; while it is down, entries are created
    // and destroyed (the restarted primary must purge them from fw2).
    make("10.72.0.0", "10.2.0.103");
    fw1.kill();
    let del = [
        "--count",
        "5000",
        "--family",
        "4",
        "--proto",
        "mixed",
        "--src-base",
        "10.70.0.0",
        "--delete",
    ];
    assert!(ctgen(&lab, &del).wait().unwrap().success());
    fw1.restart(&lab, Node::Fw1).unwrap();
    let n = assert_replicated(&lab, &fw2, 90);
    assert_eq!(n, 55_000);
    let s = stats(&fw2);
    assert!(
        s["sync"]["replication"]["bulks_received"].as_u64().unwrap() >= 1,
        "{s}"
    );
}
}

each_receive_path! {
fn active_link_down_mid_stream_moves_to_the_second_link_without_loss(receive) {
    let lab = Lab::up(LabOptions::default()).expect("lab up");
    let (fw1, fw2) = agent_pair_in(&lab, "link", receive, "");
    let mut load = ctgen(
        &lab,
        &[
            "--count", "40000", "--family", "6", "--proto", "mixed", "--batch", "16",
        ],
    );
    std::thread::sleep(Duration::from_millis(200));
    lab.exec(Node::Fw1, &["ip", "link", "set", "sync0", "down"])
        .unwrap();
    assert!(load.wait().unwrap().success());
    let n = assert_replicated(&lab, &fw2, 90);
    assert_eq!(n, 40_000);
    let s = stats(&fw1);
    assert!(s["sync"]["link_failovers"].as_u64().unwrap() >= 1, "{s}");
    assert_eq!(s["sync"]["links"][1]["active"], true, "{s}");
    assert_receive_path(&fw2, receive);
}
}

each_receive_path! {
fn garbage_and_strangers_on_the_sync_port_are_dropped_and_counted(receive) {
    let lab = Lab::up(LabOptions::default()).expect("lab up");
    let (_fw1, fw2) = agent_pair_in(&lab, "garbage", receive, "");
    lab.exec(
        Node::Fw1,
        &["ip", "addr", "add", "10.9.1.9/24", "dev", "sync0"],
    )
    .unwrap();
    lab.in_ns(Node::Fw1, || {
        let stranger = std::net::UdpSocket::bind("10.9.1.9:0").unwrap();
        // The peer's address, another port: the agent's socket takes it as the peer's.
        let peer = std::net::UdpSocket::bind("10.9.1.1:0").unwrap();
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for i in 0..200 {
            let len = 1 + (i * 7) % 1400;
            let junk: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            stranger.send_to(&junk, ("10.9.1.2", PORT)).unwrap();
            peer.send_to(&junk, ("10.9.1.2", PORT)).unwrap();
        }
        // A valid-looking header with bad magic, and a truncated one.
        peer.send_to(b"XXXX\x01\x01\x00\x00", ("10.9.1.2", PORT))
            .unwrap();
        peer.send_to(b"CTSY", ("10.9.1.2", PORT)).unwrap();
    })
    .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let st = ctgen(
        &lab,
        &[
            "--count",
            "3000",
            "--family",
            "4",
            "--proto",
            "udp",
            "--timeout",
            "1200",
        ],
    )
    .wait()
    .unwrap();
    assert!(st.success());
    assert_replicated(&lab, &fw2, 60);
    let s = stats(&fw2);
    // XDP drops strangers before the socket; without it the transport does.
    let strangers =
        s["sync"]["links"][0]["rx_strangers"].as_u64().unwrap() + xdp_counter(&s, "strangers");
    assert_eq!(strangers, 200, "{s}");
    // Peer-addressed garbage reaches the decoder (XDP's or the agent's):
    // refused, counted, harmless.
    let r = &s["sync"]["receiver"];
    let refused = s["sync"]["replication"]["malformed"].as_u64().unwrap()
        + r["malformed"].as_u64().unwrap()
        + r["corrupt"].as_u64().unwrap()
        + xdp_counter(&s, "malformed")
        + xdp_counter(&s, "corrupt");
    assert!(
        refused >= 200,
        "the peer-addressed garbage was not counted: {s}"
    );
    if receive != Receive::Socket {
        assert!(
            xdp_counter(&s, "strangers") == 200 && xdp_counter(&s, "malformed") >= 200,
            "{s}"
        );
    }
}
}

each_receive_path! {
fn external_entries_expire_by_their_timeout_once_the_peer_is_silent(receive) {
    let lab = Lab::up(LabOptions::default()).expect("lab up");
    let (mut fw1, fw2) = agent_pair_in(&lab, "expiry", receive, "");
    for (base, timeout) in [("10.70.0.0", "6"), ("10.71.0.0", "1200")] {
        let args = [
            "--count",
            "1000",
            "--family",
            "4",
            "--proto",
            "udp",
            "--src-base",
            base,
            "--timeout",
            timeout,
        ];
        assert!(ctgen(&lab, &args).wait().unwrap().success());
    }
    assert_eq!(assert_replicated(&lab, &fw2, 30), 2000);
    // The primary dies: no DESTROY will come for the short-lived entries.
    fw1.kill();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let ext = fw2.dump("external").unwrap();
        if ext.len() == 1000 && ext.iter().all(|e| e.orig.starts_with("src=10.71.")) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "expected the 1000 long-lived entries only, have {}",
            ext.len()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let s = stats(&fw2);
    assert_eq!(s["sync"]["replication"]["expired"], 1000, "{s}");
}
}

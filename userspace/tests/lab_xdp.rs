//! The XDP receive path against crafted input on the sync link: datagrams
//! with the peer's address, node id and current sender session, so that
//! nothing but their damage keeps XDP from applying them. Each kind must be
//! dropped (or passed to the agent, which refuses it), counted, and leave
//! the external cache unchanged; replication must go on afterwards.

mod support;

use std::net::UdpSocket;

use ctsync_common::{
    CtRecord, Tuple,
    conntrack::{AF_INET, IPPROTO_UDP},
    wire::{self, Encoder, HeaderFields, Kind, Record},
};
use support::{Receive, agent_pair_in, ctgen_on, fw_table, stats, xdp_counter};
use xtask::lab::{Fw, Lab, LabOptions};

const PORT: u16 = 3780;
/// fw1's node id: derived from its first sync address, 10.9.1.1.
const FW1_NODE: u32 = 0x0a09_0101;

/// A DATA datagram with `n` STATE records for 10.99.0.x, which no real
/// traffic uses: any of them in fw2's external cache means XDP took it.
fn data(session: u32, seq: u32, n: u8) -> Vec<u8> {
    let mut buf = vec![0u8; wire::datagram_budget(1500, false)];
    let mut enc = Encoder::new(&mut buf, Kind::Data).unwrap();
    for i in 0..n {
        let mut t = Tuple {
            family: AF_INET,
            proto: IPPROTO_UDP,
            src_port: 1000u16.to_be(),
            dst_port: 53u16.to_be(),
            ..Default::default()
        };
        t.src[..4].copy_from_slice(&[10, 99, 0, i]);
        t.dst[..4].copy_from_slice(&[10, 2, 0, 10]);
        let r = CtRecord {
            orig: t,
            reply: t,
            timeout: 600,
            version: 1 << 40,
            ..Default::default()
        };
        enc.push(&Record::State(r)).unwrap();
    }
    let len = enc.finish(HeaderFields {
        node: FW1_NODE,
        session,
        seq,
        floor: seq,
        flags: 0,
    });
    buf.truncate(len);
    buf
}

/// Recomputes the checksum after a deliberate change.
fn reseal(d: &mut [u8]) {
    let sum = wire::checksum(d);
    d[wire::CHECKSUM_OFFSET..wire::HEADER_LEN].copy_from_slice(&sum.to_le_bytes());
}

fn crafted_datagrams_are_dropped_counted_and_change_nothing(receive: Receive) {
    let lab = Lab::up(LabOptions::default()).expect("lab up");
    let (_fw1, fw2) = agent_pair_in(&lab, "xdpfuzz", receive, "");
    let make = |base: &str| {
        ctgen_on(
            &lab,
            Fw::Fw1,
            &[
                "--count",
                "2000",
                "--family",
                "4",
                "--proto",
                "mixed",
                "--src-base",
                base,
                "--timeout",
                "1200",
            ],
        )
    };
    make("10.70.0.0");
    let wait = |what| {
        fw2.wait_cache_equals("external", std::time::Duration::from_secs(60), || {
            Ok(fw_table(&lab, Fw::Fw1))
        })
        .unwrap_or_else(|e| panic!("{what}: {e:#}"))
    };
    wait("before the crafted datagrams");
    let before = fw2.dump("external").unwrap();
    let s0 = stats(&fw2);
    let session = s0["sync"]["peer_session"]
        .as_u64()
        .unwrap_or_else(|| panic!("fw2 follows no sender session: {}", s0["sync"]))
        as u32;
    // Far ahead of the real sequence numbers: were one accepted, its
    // records would show.
    let seq = 1 << 30;
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut rnd = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    const EACH: u64 = 50;
    lab.in_ns(Fw::Fw1.node(), || {
        let peer = UdpSocket::bind("10.9.1.1:0").unwrap();
        lab_send_all(&peer, EACH, &mut rnd, session, seq);
        lab_send_strangers(EACH, session, seq);
    })
    .unwrap();
    std::thread::sleep(std::time::Duration::from_secs(1));
    let s1 = stats(&fw2);
    let delta = |name: &str| xdp_counter(&s1, name) - xdp_counter(&s0, name);
    let agent_refused = |s: &serde_json::Value| {
        s["sync"]["replication"]["malformed"].as_u64().unwrap()
            + s["sync"]["receiver"]["malformed"].as_u64().unwrap()
    };
    println!(
        "fw2 after the crafted datagrams: xdp {}, agent refused {}",
        s1["sync"]["xdp"]["counters"],
        agent_refused(&s1) - agent_refused(&s0)
    );
    // Truncated records, wrong counts, fuzz: malformed (fuzz may also fail
    // the checksum first); flipped bytes: corrupt; another version: passed
    // to the agent, which refuses it; a stranger: dropped by address.
    assert!(delta("malformed") >= 2 * EACH, "{}", s1["sync"]);
    assert!(
        delta("malformed") + delta("corrupt") >= 4 * EACH,
        "{}",
        s1["sync"]
    );
    assert!(delta("corrupt") >= EACH, "{}", s1["sync"]);
    assert_eq!(delta("strangers"), EACH, "{}", s1["sync"]);
    assert!(delta("passed") >= EACH, "{}", s1["sync"]);
    assert!(
        agent_refused(&s1) - agent_refused(&s0) >= EACH,
        "the other-version datagrams were not refused: {}",
        s1["sync"]
    );
    let after = fw2.dump("external").unwrap();
    assert!(
        after.iter().all(|e| !e.orig.contains("src=10.99.")),
        "a crafted record reached the external cache"
    );
    // fw1's own conntrack entry for the stranger's flow is real state, and
    // fw1's agent replicates it (only the link addresses are filtered).
    let changed: Vec<_> = after
        .iter()
        .filter(|e| !before.contains(e) && !e.orig.starts_with("src=10.9.1.9 "))
        .collect();
    let gone: Vec<_> = before.iter().filter(|e| !after.contains(e)).collect();
    assert!(
        changed.is_empty() && gone.is_empty(),
        "the external cache changed: new or changed {changed:?}, gone {gone:?}"
    );
    // And replication goes on.
    make("10.71.0.0");
    assert_eq!(wait("after the crafted datagrams"), 4000);
}

/// From the peer's address: damaged datagrams, `each` of every kind.
fn lab_send_all(
    peer: &UdpSocket,
    each: u64,
    rnd: &mut impl FnMut() -> u64,
    session: u32,
    seq: u32,
) {
    let to = ("10.9.1.2", PORT);
    for i in 0..each as u32 {
        let good = data(session, seq + i, 8);
        // The last record cut short (the header says so consistently).
        let mut d = good[..good.len() - 8].to_vec();
        let pl = (d.len() - wire::HEADER_LEN) as u16;
        d[26..28].copy_from_slice(&pl.to_le_bytes());
        reseal(&mut d);
        peer.send_to(&d, to).unwrap();
        // One record more in the count than in the payload.
        let mut d = good.clone();
        d[24] += 1;
        reseal(&mut d);
        peer.send_to(&d, to).unwrap();
        // A flipped byte in a record.
        let mut d = good.clone();
        let at = wire::HEADER_LEN + 8 + (rnd() as usize % (d.len() - wire::HEADER_LEN - 8));
        d[at] ^= 0x40;
        peer.send_to(&d, to).unwrap();
        // Another format version.
        let mut d = good.clone();
        d[4] = 2;
        reseal(&mut d);
        peer.send_to(&d, to).unwrap();
        // Fuzz behind a plausible start (magic, version 1, DATA, no flags).
        let len = 32 + 4 * (rnd() as usize % 360);
        let mut d: Vec<u8> = (0..len).map(|_| rnd() as u8).collect();
        d[..8].copy_from_slice(b"CTSY\x01\x01\x00\x00");
        peer.send_to(&d, to).unwrap();
    }
}

/// Well-formed datagrams from an address that is not the peer's.
fn lab_send_strangers(each: u64, session: u32, seq: u32) {
    let out = std::process::Command::new("ip")
        .args(["addr", "add", "10.9.1.9/24", "dev", "sync0"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let stranger = UdpSocket::bind("10.9.1.9:0").unwrap();
    for i in 0..each as u32 {
        stranger
            .send_to(&data(session, seq + 100 + i, 4), ("10.9.1.2", PORT))
            .unwrap();
    }
}

#[test]
fn crafted_datagrams_are_dropped_and_counted_by_xdp_native() {
    crafted_datagrams_are_dropped_counted_and_change_nothing(Receive::Native);
}

#[test]
fn crafted_datagrams_are_dropped_and_counted_by_xdp_generic() {
    crafted_datagrams_are_dropped_counted_and_change_nothing(Receive::Generic);
}

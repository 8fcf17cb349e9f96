//! The eBPF event filter against the real kernel, in a private network
//! namespace per test: what it drops never reaches userspace, it agrees with
//! the reference rules (`Rules::verdict`), and events the agent's own writes
//! cause are dropped by port id.

mod support;

use ctsync::{
    cache::Cache,
    config::Config,
    ctnetlink::{self, CreateMode, Decoded, EntryOptions, Request, encode},
    events::EventSource,
    filter::Rules,
    nlsock::NlSocket,
};
use ctsync_common::{
    CtRecord,
    conntrack::{AF_INET, AF_INET6, IPPROTO_TCP, IPPROTO_UDP, record_flags, tcp_state},
    filter::{COUNTER_NAMES, Counter},
};

fn entry(i: u32, v6: bool, proto: u8) -> CtRecord {
    let mut r = CtRecord::default();
    r.orig.family = if v6 { AF_INET6 } else { AF_INET };
    r.orig.proto = proto;
    if v6 {
        r.orig.src =
            std::net::Ipv6Addr::new(0xfd00, 0x70, 0, 0, 0, 0, (i >> 16) as u16, i as u16).octets();
        r.orig.dst = std::net::Ipv6Addr::new(0xfd00, 2, 0, 0, 0, 0, 0, 0x10).octets();
    } else {
        r.orig.src[..4].copy_from_slice(&(0x0a46_0000u32 + i).to_be_bytes());
        r.orig.dst[..4].copy_from_slice(&[10, 2, 0, 10]);
    }
    r.orig.src_port = (10_000 + i as u16).to_be();
    r.orig.dst_port = 80u16.to_be();
    r.reply = encode::invert_tuple(&r.orig);
    r.status = 0b1110; // SEEN_REPLY | ASSURED | CONFIRMED
    r.timeout = 300;
    r.flags = record_flags::HAS_REPLY | record_flags::HAS_TIMEOUT;
    if proto == IPPROTO_TCP {
        r.flags |= record_flags::HAS_PROTOINFO;
        r.proto_state = tcp_state::ESTABLISHED;
    }
    r
}

/// Creates `recs` through `sock` in batches; panics on any per-entry error.
fn create(sock: &NlSocket, recs: &[CtRecord]) {
    let mut buf = Vec::new();
    let mut rbuf = vec![0u8; 1 << 16];
    for (b, chunk) in recs.chunks(64).enumerate() {
        buf.clear();
        let base = (b * 64) as u32;
        for (j, r) in chunk.iter().enumerate() {
            let req = Request::new(base + j as u32 + 1).with_ack(j + 1 == chunk.len());
            encode::create(
                &mut buf,
                req,
                CreateMode::Exclusive,
                r,
                None,
                EntryOptions::default(),
            );
        }
        sock.send(&buf).unwrap();
        let last = base + chunk.len() as u32;
        'acks: loop {
            let n = sock.recv(&mut rbuf).unwrap();
            let (mut rec, mut ext) = Default::default();
            for msg in ctnetlink::messages(&rbuf[..n]) {
                let msg = msg.unwrap();
                let seq = ctnetlink::header(msg).unwrap().seq;
                if let Ok(Decoded::Error { errno }) = ctnetlink::decode(msg, &mut rec, &mut ext) {
                    assert_eq!(
                        errno,
                        0,
                        "creating entry {seq} failed: {}",
                        std::io::Error::from_raw_os_error(errno)
                    );
                    if seq == last {
                        break 'acks;
                    }
                }
            }
        }
    }
}

fn counters(src: &EventSource) -> std::collections::BTreeMap<&'static str, u64> {
    COUNTER_NAMES
        .iter()
        .copied()
        .zip(src.filter_counters().unwrap())
        .collect()
}

#[test]
fn events_caused_by_the_agents_own_writes_are_dropped_in_the_kernel() {
    support::enter_private_netns();
    let mut src = EventSource::open(&Config::default()).unwrap();
    let mut cache = Cache::new();
    src.resync(&mut cache).unwrap();
    let own = NlSocket::open(0, false).unwrap();
    let other = NlSocket::open(0, false).unwrap();
    src.set_self_portids(&[own.portid()]).unwrap();

    let mine: Vec<_> = (0..100).map(|i| entry(i, false, IPPROTO_UDP)).collect();
    let theirs: Vec<_> = (100..200)
        .map(|i| entry(i, i % 2 == 0, IPPROTO_TCP))
        .collect();
    create(&own, &mine);
    create(&other, &theirs);
    // ctnetlink queues events synchronously with the request: all are there.
    src.drain(&mut cache).unwrap();

    let c = counters(&src);
    assert_eq!(c["dropped_self"], 100, "{c:?}");
    assert_eq!(c["passed"], 100, "{c:?}");
    assert_eq!(
        src.stats.new, 100,
        "userspace saw self-caused events: {:?}",
        src.stats
    );
    assert_eq!(cache.len(), 100);
    assert!(theirs.iter().all(|r| cache.get(&r.orig).is_some()));
    assert!(mine.iter().all(|r| cache.get(&r.orig).is_none()));
    // The kernel has all 200 (conntrack -L runs in this thread's namespace).
    assert_eq!(xtask::ctcompare::kernel_table(None).unwrap().len(), 200);
}

#[test]
fn kernel_filter_agrees_with_the_reference_rules() {
    support::enter_private_netns();
    let config = Config::parse(
        r#"
[filter.protocol]
list = ["sctp"]
[filter.address]
mode = "ignore"
source = ["10.70.0.16/28", "fd00:70::/120"]
destination = ["10.2.0.99/32"]
[filter.tcp_state]
list = ["SYN_SENT", "TIME_WAIT"]
[filter.zone]
list = [7]
[filter.mark]
list = ["0x100/0xf00"]
"#,
        std::path::Path::new("test.toml"),
    )
    .unwrap();
    let mut src = EventSource::open(&config).unwrap();
    let mut cache = Cache::new();
    src.resync(&mut cache).unwrap();
    let rules = Rules::from_config(&config.filter);

    // Every combination of the things the rules look at.
    let mut recs = vec![];
    for i in 0..1024u32 {
        let v6 = i % 2 == 1;
        let proto = [IPPROTO_TCP, IPPROTO_UDP, IPPROTO_TCP, 132][(i / 2 % 4) as usize];
        let mut r = entry(i, v6, proto);
        if proto == 132 {
            r.flags &= !record_flags::HAS_PROTOINFO;
        }
        if i % 9 == 0 && !v6 {
            r.orig.dst[..4].copy_from_slice(&[10, 2, 0, 99]);
            r.reply = encode::invert_tuple(&r.orig);
        }
        if proto == IPPROTO_TCP {
            r.proto_state = [
                tcp_state::SYN_SENT,
                tcp_state::ESTABLISHED,
                tcp_state::TIME_WAIT,
                tcp_state::CLOSE_WAIT,
            ][(i / 8 % 4) as usize];
        }
        if i % 5 == 0 {
            r.orig.zone = 7;
            r.reply.zone = 7;
        }
        if i % 7 == 0 {
            r.mark = 0x1100 + i;
            r.flags |= record_flags::HAS_MARK;
        }
        recs.push(r);
    }
    let writer = NlSocket::open(0, false).unwrap();
    create(&writer, &recs);
    src.drain(&mut cache).unwrap();

    let mut expected = [0u64; ctsync_common::filter::COUNTERS as usize];
    for r in &recs {
        let verdict = rules.verdict(r, writer.portid(), &[], true);
        match verdict {
            None => assert!(
                cache.get(&r.orig).is_some(),
                "kernel filter dropped an entry the rules keep: {r:?}"
            ),
            Some(c) => {
                assert!(
                    cache.get(&r.orig).is_none(),
                    "kernel filter passed an entry the rules drop ({c:?}): {r:?}"
                );
                expected[c as usize] += 1;
            }
        }
    }
    let got = src.filter_counters().unwrap();
    for c in [
        Counter::DroppedProto,
        Counter::DroppedAddr,
        Counter::DroppedState,
        Counter::DroppedZone,
        Counter::DroppedMark,
    ] {
        assert!(
            expected[c as usize] > 0,
            "the test data never exercises {c:?}"
        );
        assert_eq!(
            got[c as usize],
            expected[c as usize],
            "{c:?}: {:?}",
            counters(&src)
        );
    }
    assert_eq!(
        src.stats.new as usize,
        cache.len(),
        "userspace saw only what the filter passed"
    );
}

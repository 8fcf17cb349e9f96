//! The sync-link transport between the lab's firewalls: datagrams cross on
//! the active link, move to the second link when the first loses carrier
//! and back when it returns, and strangers are dropped and counted.

use std::{net::IpAddr, time::Duration};

use ctsync::transport::{LinkConfig, Transport};
use xtask::lab::{Lab, LabOptions, Node};

const PORT: u16 = 3799;

fn links(local: [&str; 2], peer: [&str; 2]) -> Vec<LinkConfig> {
    (0..2)
        .map(|i| LinkConfig {
            interface: format!("sync{i}"),
            local: local[i].parse().unwrap(),
            peer: peer[i].parse().unwrap(),
            port: PORT,
        })
        .collect()
}

/// Waits up to 2 s for a datagram; returns (link index, sender, payload).
fn recv(t: &mut Transport) -> Option<(usize, IpAddr, Vec<u8>)> {
    let mut buf = [0u8; 2048];
    for _ in 0..200 {
        if let Some((link, from, len)) = t.recv(&mut buf) {
            return Some((link, from.ip(), buf[..len].to_vec()));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    None
}

/// Carrier changes reach the flags asynchronously (linkwatch): poll for 5 s.
fn poll_until_change(t: &mut Transport) -> Option<ctsync::transport::ActiveChanged> {
    for _ in 0..50 {
        if let Some(c) = t.poll_links() {
            return Some(c);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    None
}

#[test]
fn datagrams_fail_over_between_links_and_strangers_are_dropped() {
    let lab = Lab::up(LabOptions::default()).expect("lab up");
    let mut fw1 = lab
        .in_ns(Node::Fw1, || {
            Transport::open(&links(["10.9.1.1", "10.9.2.1"], ["10.9.1.2", "10.9.2.2"]))
        })
        .unwrap()
        .unwrap();
    let mut fw2 = lab
        .in_ns(Node::Fw2, || {
            Transport::open(&links(["10.9.1.2", "10.9.2.2"], ["10.9.1.1", "10.9.2.1"]))
        })
        .unwrap()
        .unwrap();

    fw1.send(b"one").unwrap();
    assert_eq!(
        recv(&mut fw2),
        Some((0, "10.9.1.1".parse().unwrap(), b"one".to_vec()))
    );

    // The first link loses carrier (its peer end goes down): the second takes over.
    lab.exec(Node::Fw2, &["ip", "link", "set", "sync0", "down"])
        .unwrap();
    let change = poll_until_change(&mut fw1).expect("fw1 did not notice the dead link");
    assert_eq!(
        (change.from.as_str(), change.to.as_str()),
        ("sync0", "sync1")
    );
    fw1.send(b"two").unwrap();
    assert_eq!(
        recv(&mut fw2),
        Some((1, "10.9.2.1".parse().unwrap(), b"two".to_vec()))
    );

    // ...and gives the work back when it returns.
    lab.exec(Node::Fw2, &["ip", "link", "set", "sync0", "up"])
        .unwrap();
    let back = poll_until_change(&mut fw1);
    assert_eq!(back.map(|c| c.to), Some("sync0".to_string()));
    fw1.send(b"three").unwrap();
    assert_eq!(
        recv(&mut fw2).map(|(l, _, p)| (l, p)),
        Some((0, b"three".to_vec()))
    );

    // A stranger on the sync link: another address of fw1's.
    lab.exec(
        Node::Fw1,
        &["ip", "addr", "add", "10.9.1.9/24", "dev", "sync0"],
    )
    .unwrap();
    lab.in_ns(Node::Fw1, || {
        let s = std::net::UdpSocket::bind("10.9.1.9:0").unwrap();
        s.send_to(b"garbage", ("10.9.1.2", PORT)).unwrap();
    })
    .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(recv(&mut fw2), None, "a stranger's datagram was delivered");
    assert_eq!(fw2.stats()[0].rx_strangers, 1, "{:?}", fw2.stats());
    assert_eq!(fw1.failovers, 2);
}

#[test]
fn multicast_links_deliver_to_the_peer_and_not_back_to_the_sender() {
    let lab = Lab::up(LabOptions::default()).expect("lab up");
    let mcast = |local: &str| {
        vec![LinkConfig {
            interface: "sync0".into(),
            local: local.parse().unwrap(),
            peer: "225.0.0.50".parse().unwrap(),
            port: PORT,
        }]
    };
    let mut fw1 = lab
        .in_ns(Node::Fw1, || Transport::open(&mcast("10.9.1.1")))
        .unwrap()
        .unwrap();
    let mut fw2 = lab
        .in_ns(Node::Fw2, || Transport::open(&mcast("10.9.1.2")))
        .unwrap()
        .unwrap();
    fw1.send(b"to the group").unwrap();
    assert_eq!(
        recv(&mut fw2),
        Some((0, "10.9.1.1".parse().unwrap(), b"to the group".to_vec()))
    );
    fw2.send(b"back").unwrap();
    assert_eq!(
        recv(&mut fw1),
        Some((0, "10.9.1.2".parse().unwrap(), b"back".to_vec()))
    );
    assert_eq!(recv(&mut fw1), None, "a node received its own multicast");
}

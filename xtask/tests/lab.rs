//! The lab, built for real: needs root and the tools `cargo xtask setup`
//! installs. These tests fail (never skip) when either is missing, with a
//! message that says what to do.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use xtask::lab::{
    CLIENT_V4, CLIENT_V6, Fw, Lab, LabOptions, Node, SERVER_V4, SERVER_V6, WAN_VIP_V4,
};

/// Unwraps with the whole error chain in the panic message.
fn ok<T>(result: anyhow::Result<T>) -> T {
    result.unwrap_or_else(|e| panic!("{e:#}"))
}

fn up() -> Lab {
    ok(Lab::up(LabOptions::default()))
}

fn namespaces(lab: &Lab) -> Vec<String> {
    Node::ALL.iter().map(|n| lab.ns(*n).to_owned()).collect()
}

fn ns_exists(ns: &str) -> bool {
    Path::new("/run/netns").join(ns).exists()
}

fn ping(lab: &Lab, from: Node, to: IpAddr) -> anyhow::Result<()> {
    lab.exec(from, &["ping", "-c1", "-W2", &to.to_string()])
        .map(drop)
}

/// Opens a TCP connection from the client to the server, exchanges a few bytes,
/// and returns the client address the server saw.
fn tcp_roundtrip(lab: &Lab, server: IpAddr) -> IpAddr {
    let listener =
        ok(lab.in_ns(Node::Server, || TcpListener::bind((server, 0)))).expect("bind on the server");
    let to = SocketAddr::new(server, listener.local_addr().unwrap().port());
    let mut client = ok(lab.in_ns(Node::Client, || {
        TcpStream::connect_timeout(&to, Duration::from_secs(5))
    }))
    .unwrap_or_else(|e| panic!("client -> {to}: {e}"));
    let (mut conn, seen) = listener.accept().unwrap();
    client.write_all(b"hello").unwrap();
    let mut buf = [0; 5];
    conn.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"hello");
    seen.ip()
}

#[test]
fn lab_forwards_through_the_vip_holder_and_is_removed_on_drop() {
    let lab = up();
    let names = namespaces(&lab);
    for ns in &names {
        assert!(ns_exists(ns), "namespace {ns} missing after Lab::up");
    }
    assert_eq!(ok(lab.vip_holder()), Some(Fw::Fw1));

    ok(ping(&lab, Node::Client, SERVER_V4.into()));
    ok(ping(&lab, Node::Client, SERVER_V6.into()));
    // IPv4 is SNATed to the WAN virtual address, IPv6 is routed as is.
    assert_eq!(
        tcp_roundtrip(&lab, SERVER_V4.into()),
        IpAddr::from(WAN_VIP_V4)
    );
    assert_eq!(
        tcp_roundtrip(&lab, SERVER_V6.into()),
        IpAddr::from(CLIENT_V6)
    );
    // The firewalls admit new connections from the LAN only.
    assert!(
        ping(&lab, Node::Server, CLIENT_V4.into()).is_err(),
        "server reached the client unsolicited"
    );
    assert!(
        ping(&lab, Node::Server, CLIENT_V6.into()).is_err(),
        "server reached the client unsolicited (IPv6)"
    );

    ok(lab.move_vips(Fw::Fw2));
    assert_eq!(ok(lab.vip_holder()), Some(Fw::Fw2));
    assert!(ok(lab.vips_on(Fw::Fw1)).is_empty());
    ok(ping(&lab, Node::Client, SERVER_V4.into()));
    ok(ping(&lab, Node::Client, SERVER_V6.into()));

    // Processes left in the namespaces are killed on teardown.
    let mut sleeper = ok(lab.spawn(Node::Fw1, &["sleep", "1000"]));
    drop(lab);
    for ns in &names {
        assert!(!ns_exists(ns), "namespace {ns} left after drop");
    }
    let status = sleeper.try_wait().unwrap();
    assert!(status.is_some(), "process in the lab survived the teardown");
}

#[test]
fn a_panicking_owner_still_removes_its_lab() {
    let names = Mutex::new(Vec::new());
    let result = std::panic::catch_unwind(|| {
        let lab = up();
        *names.lock().unwrap() = namespaces(&lab);
        panic!("deliberate panic with lab {} up", lab.prefix());
    });
    assert!(result.is_err());
    let names = names.into_inner().unwrap();
    assert_eq!(names.len(), 4, "the lab was not built");
    for ns in &names {
        assert!(!ns_exists(ns), "namespace {ns} left after a panic");
    }
}

#[test]
fn a_kept_lab_survives_until_down() {
    let prefix = up().keep();
    let lab = Lab::attach(&prefix);
    assert!(lab.exists(), "lab {prefix} gone although kept");
    assert!(xtask::lab::list().unwrap().contains(&prefix));
    ok(ping(&lab, Node::Client, SERVER_V4.into()));
    ok(lab.down());
    assert!(
        !Lab::attach(&prefix).exists(),
        "lab {prefix} left after down()"
    );
}

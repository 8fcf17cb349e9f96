//! `ctflows`: a new-flow generator for the forwarding-capacity and
//! zero-loss benches.
//!
//! Sends one packet per flow to `--server`, each with a 5-tuple not used
//! before in the run (a few source ports times a range of destination
//! ports), so each is a new conntrack entry (and NAT mapping) on the
//! firewall it crosses:
//! - UDP: one small datagram per flow, from a few bound sockets;
//! - TCP: one SYN per flow: a non-blocking `connect` from a socket bound to
//!   one of a few source ports, closed at once (a socket closed in SYN-SENT
//!   sends nothing more, so the firewall sees exactly the SYN).
//!
//! Unpaced by default, or at most `--rate` flows per second. What the
//! firewall sustains is counted where the packets arrive (the benches count
//! them with nftables in the server's namespace); this prints what was
//! sent, as JSON on stdout.

use std::{
    io,
    net::{IpAddr, SocketAddr, UdpSocket},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use clap::{Parser, ValueEnum};
use ctsync_bench::sockaddr::to_sockaddr;

#[derive(Clone, Copy, PartialEq, ValueEnum)]
enum Proto {
    Udp,
    Tcp,
}

#[derive(Parser)]
#[command(
    about = "Send one packet per new flow (UDP datagram or TCP SYN), unpaced or at a rate (bench load)"
)]
struct Args {
    /// Destination address (the server, through the firewall).
    #[arg(long)]
    server: IpAddr,
    #[arg(long, value_enum, default_value_t = Proto::Udp)]
    proto: Proto,
    /// Flows to create: at most `--sockets` x the port range, and within the
    /// firewall's nf_conntrack_max (the benches stay under 262144).
    #[arg(long, default_value_t = 150_000)]
    flows: u32,
    /// Source ports (UDP: one bound socket each, port chosen by the kernel;
    /// TCP: `--tcp-src-port` and the ones after it).
    #[arg(long, default_value_t = 4)]
    sockets: u32,
    /// First TCP source port.
    #[arg(long, default_value_t = 2000)]
    tcp_src_port: u16,
    /// First destination port.
    #[arg(long, default_value_t = 10_000)]
    port_lo: u16,
    /// Last destination port.
    #[arg(long, default_value_t = 59_999)]
    port_hi: u16,
    /// At most this many flows per second (0: as fast as possible).
    #[arg(long, default_value_t = 0)]
    rate: u32,
}

fn main() -> Result<()> {
    let a = Args::parse();
    if a.port_hi < a.port_lo || a.sockets == 0 {
        bail!("--port-lo must not exceed --port-hi, and --sockets must be at least 1");
    }
    let ports = u32::from(a.port_hi - a.port_lo) + 1;
    if u64::from(a.flows) > u64::from(a.sockets) * u64::from(ports) {
        bail!(
            "--flows {} exceeds --sockets x ports ({} x {ports}): flows would repeat; \
             raise --sockets or widen the port range",
            a.flows,
            a.sockets
        );
    }
    if a.proto == Proto::Tcp && u32::from(a.tcp_src_port) + a.sockets > 65_536 {
        bail!("--tcp-src-port + --sockets passes port 65535");
    }
    let mut sender = match a.proto {
        Proto::Udp => Sender::udp(a.server, a.sockets)?,
        Proto::Tcp => Sender::Tcp {
            family: match a.server {
                IpAddr::V4(_) => libc::AF_INET,
                IpAddr::V6(_) => libc::AF_INET6,
            },
        },
    };
    let (mut sent, mut errors) = (0u64, 0u64);
    let mut first_error = None::<io::Error>;
    // Paced per millisecond's worth of flows, as packets arrive at a busy
    // firewall: coarser bursts would measure a daemon's burst handling.
    let chunk = (a.rate / 1000).clamp(1, 256);
    let t0 = Instant::now();
    for i in 0..a.flows {
        if a.rate > 0 && i % chunk == 0 {
            let due = Duration::from_secs_f64(f64::from(i) / f64::from(a.rate));
            if let Some(wait) = due.checked_sub(t0.elapsed()) {
                std::thread::sleep(wait);
            }
        }
        let s = i % a.sockets;
        let dst = SocketAddr::new(a.server, a.port_lo + ((i / a.sockets) % ports) as u16);
        // A failed send (a full queue: ENOBUFS) loses this flow; it is
        // counted, not retried, so that the offered load stays one packet
        // per flow.
        match sender.send(s, a.tcp_src_port + s as u16, dst) {
            Ok(()) => sent += 1,
            Err(e) => {
                errors += 1;
                first_error.get_or_insert(e);
            }
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    if sent == 0 {
        let e = first_error.map(|e| e.to_string()).unwrap_or_default();
        bail!(
            "no flow could be sent ({e}): is there a route to {}?",
            a.server
        );
    }
    println!(
        "{}",
        serde_json::json!({
            "flows": a.flows,
            "sent": sent,
            "send_errors": errors,
            "first_error": first_error.map(|e| e.to_string()),
            "seconds": secs,
            "offered_per_s": sent as f64 / secs,
        })
    );
    Ok(())
}

enum Sender {
    Udp(Vec<UdpSocket>),
    Tcp { family: libc::c_int },
}

impl Sender {
    fn udp(server: IpAddr, sockets: u32) -> Result<Sender> {
        let bind: SocketAddr = match server {
            IpAddr::V4(_) => "0.0.0.0:0".parse()?,
            IpAddr::V6(_) => "[::]:0".parse()?,
        };
        let socks = (0..sockets)
            .map(|_| UdpSocket::bind(bind).context("binding a source socket"))
            .collect::<Result<Vec<_>>>()?;
        Ok(Sender::Udp(socks))
    }

    /// One new flow from source socket (UDP) or port (TCP) `s` to `dst`.
    fn send(&mut self, s: u32, src_port: u16, dst: SocketAddr) -> io::Result<()> {
        match self {
            Sender::Udp(socks) => socks[s as usize].send_to(&[0u8; 16], dst).map(drop),
            Sender::Tcp { family } => syn(*family, src_port, dst),
        }
    }
}

/// A SYN from `src_port` to `dst`: bind, non-blocking connect (the kernel
/// sends the SYN inside the call), close.
fn syn(family: libc::c_int, src_port: u16, dst: SocketAddr) -> io::Result<()> {
    // SAFETY: plain syscall; the descriptor is owned (closed on drop) below.
    let fd = unsafe { libc::socket(family, libc::SOCK_STREAM | libc::SOCK_NONBLOCK, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let one: libc::c_int = 1;
    // SAFETY: valid descriptor, option value of the right size.
    unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_REUSEADDR,
            (&one as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    let any: SocketAddr = match dst {
        SocketAddr::V4(_) => SocketAddr::new(IpAddr::V4(0.into()), src_port),
        SocketAddr::V6(_) => SocketAddr::new(IpAddr::V6(0u128.into()), src_port),
    };
    let (addr, len) = to_sockaddr(any);
    // SAFETY: addr is a sockaddr of `len` bytes.
    if unsafe { libc::bind(fd.as_raw_fd(), (&raw const addr).cast(), len) } < 0 {
        return Err(io::Error::last_os_error());
    }
    let (addr, len) = to_sockaddr(dst);
    // SAFETY: as above.
    if unsafe { libc::connect(fd.as_raw_fd(), (&raw const addr).cast(), len) } < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINPROGRESS) {
            return Err(e);
        }
    }
    Ok(())
}

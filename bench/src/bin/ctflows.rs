//! `ctflows`: a new-flow generator for the forwarding-capacity bench.
//!
//! Sends one small UDP datagram per flow, unpaced, to `--server`: each has a
//! 5-tuple not used before in the run (a few source sockets times a range of
//! destination ports), so each is a new conntrack entry (and NAT mapping) on
//! the firewall it crosses. What the firewall sustains is counted where the
//! datagrams arrive (the bench counts them with nftables in the server's
//! namespace); this prints what was sent, as JSON on stdout.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Parser;

#[derive(Parser)]
#[command(about = "Send one UDP datagram per new flow, as fast as possible (bench load)")]
struct Args {
    /// Destination address (the server, through the firewall).
    #[arg(long)]
    server: IpAddr,
    /// Flows to create: at most `--sockets` x the port range, and within the
    /// firewall's nf_conntrack_max (the bench stays well under 262144).
    #[arg(long, default_value_t = 150_000)]
    flows: u32,
    /// Source sockets (one source port each).
    #[arg(long, default_value_t = 4)]
    sockets: u32,
    /// First destination port.
    #[arg(long, default_value_t = 10_000)]
    port_lo: u16,
    /// Last destination port.
    #[arg(long, default_value_t = 59_999)]
    port_hi: u16,
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
    let bind: SocketAddr = match a.server {
        IpAddr::V4(_) => "0.0.0.0:0".parse()?,
        IpAddr::V6(_) => "[::]:0".parse()?,
    };
    let socks = (0..a.sockets)
        .map(|_| UdpSocket::bind(bind).context("binding a source socket"))
        .collect::<Result<Vec<_>>>()?;
    let payload = [0u8; 16];
    let (mut sent, mut errors) = (0u64, 0u64);
    let t0 = Instant::now();
    for i in 0..a.flows {
        let sock = &socks[(i % a.sockets) as usize];
        let port = a.port_lo + ((i / a.sockets) % ports) as u16;
        // A full queue (ENOBUFS) loses this flow; it is counted, not retried,
        // so that the offered load stays one datagram per flow.
        match sock.send_to(&payload, SocketAddr::new(a.server, port)) {
            Ok(_) => sent += 1,
            Err(_) => errors += 1,
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    println!(
        "{}",
        serde_json::json!({
            "flows": a.flows,
            "sent": sent,
            "send_errors": errors,
            "seconds": secs,
            "offered_per_s": sent as f64 / secs,
        })
    );
    Ok(())
}

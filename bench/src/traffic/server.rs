//! `serve`: TCP and UDP echo servers on every address given, until SIGTERM/SIGINT.

use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream, UdpSocket};

use super::sys;

/// Arguments of `ctsync-traffic serve`.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Address to listen on, TCP and UDP; repeat for several (e.g. `--listen 0.0.0.0
    /// --listen ::`). IPv6 sockets are V6ONLY, so both wildcards can coexist.
    #[arg(long = "listen", value_name = "ADDR", required = true)]
    pub listen: Vec<IpAddr>,
    /// TCP echo port.
    #[arg(long, value_name = "PORT", default_value_t = super::DEFAULT_PORT,
          value_parser = clap::value_parser!(u16).range(1..))]
    pub tcp_port: u16,
    /// UDP echo port.
    #[arg(long, value_name = "PORT", default_value_t = super::DEFAULT_PORT,
          value_parser = clap::value_parser!(u16).range(1..))]
    pub udp_port: u16,
    /// File written (atomically) once every socket listens, removed on clean exit;
    /// a stale one is removed at start.
    #[arg(long, value_name = "FILE")]
    pub ready_file: Option<PathBuf>,
}

/// Accept backlog: the kernel caps it at `net.core.somaxconn` (4096 by default);
/// a client opening thousands of connections in batches needs a deep queue.
const LISTEN_BACKLOG: u32 = 4096;
/// Per-connection echo buffer: messages are small; 5000 connections stay cheap.
const TCP_BUF: usize = 2048;
/// Open files the server asks for: enough for tens of thousands of connections.
const WANTED_NOFILE: u64 = 65_536;

/// Counters printed at exit, so a test log shows what the server saw.
#[derive(Default)]
struct Stats {
    tcp_accepted: AtomicU64,
    tcp_bytes: AtomicU64,
    tcp_errors: AtomicU64,
    udp_datagrams: AtomicU64,
    udp_errors: AtomicU64,
}

/// Runs the echo servers until SIGTERM or SIGINT.
pub async fn run(args: ServeArgs) -> Result<()> {
    // Subscribe first: a signal that arrives while we bind must still stop us cleanly.
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing SIGTERM handler")?;
    let mut sigint = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .context("installing SIGINT handler")?;
    if let Some(f) = &args.ready_file {
        sys::remove_stale(f)?;
    }
    let nofile = sys::raise_nofile_best_effort(WANTED_NOFILE);
    if nofile < 4096 {
        eprintln!(
            "ctsync-traffic serve: warning: only {nofile} open files allowed; \
             clients beyond that will be refused"
        );
    }

    let mut seen = Vec::new();
    let mut listeners = Vec::new();
    let mut udp_sockets = Vec::new();
    for &ip in &args.listen {
        if seen.contains(&ip) {
            bail!("--listen {ip} given twice");
        }
        seen.push(ip);
        let tcp_addr = SocketAddr::new(ip, args.tcp_port);
        listeners.push(listen_tcp(tcp_addr).with_context(|| format!("TCP listen on {tcp_addr}"))?);
        let udp_addr = SocketAddr::new(ip, args.udp_port);
        let std_sock =
            sys::bind_udp(udp_addr).with_context(|| format!("UDP bind on {udp_addr}"))?;
        udp_sockets.push(UdpSocket::from_std(std_sock).context("registering UDP socket")?);
    }

    let stats = Arc::new(Stats::default());
    for l in listeners {
        tokio::spawn(accept_loop(l, stats.clone()));
    }
    for s in udp_sockets {
        tokio::spawn(udp_echo(s, stats.clone()));
    }

    if let Some(f) = &args.ready_file {
        let body = format!(
            "pid={}\ntcp_port={}\nudp_port={}\n",
            std::process::id(),
            args.tcp_port,
            args.udp_port
        );
        sys::write_atomic(f, body.as_bytes())?;
    }
    eprintln!(
        "ctsync-traffic serve: listening on {:?}, tcp port {}, udp port {}",
        args.listen, args.tcp_port, args.udp_port
    );

    tokio::select! {
        _ = sigterm.recv() => {}
        _ = sigint.recv() => {}
    }
    if let Some(f) = &args.ready_file {
        let _ = std::fs::remove_file(f);
    }
    eprintln!(
        "ctsync-traffic serve: stopping; tcp accepted={} echoed_bytes={} errors={}; \
         udp echoed={} errors={}",
        stats.tcp_accepted.load(Relaxed),
        stats.tcp_bytes.load(Relaxed),
        stats.tcp_errors.load(Relaxed),
        stats.udp_datagrams.load(Relaxed),
        stats.udp_errors.load(Relaxed),
    );
    Ok(())
}

fn listen_tcp(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let sock = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    // Restarting the server (as a failover test may) must not wait out TIME_WAIT.
    sock.set_reuseaddr(true)?;
    if addr.is_ipv6() {
        sys::set_v6only(sock.as_raw_fd())?;
    }
    sock.bind(addr)?;
    sock.listen(LISTEN_BACKLOG)
}

async fn accept_loop(listener: TcpListener, stats: Arc<Stats>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                stats.tcp_accepted.fetch_add(1, Relaxed);
                tokio::spawn(echo_tcp(stream, stats.clone()));
            }
            Err(e) => {
                // EMFILE and friends: back off instead of spinning; the pending
                // connection stays queued and is retried.
                stats.tcp_errors.fetch_add(1, Relaxed);
                eprintln!("ctsync-traffic serve: accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Echoes every received chunk as is until the client closes or the connection fails.
async fn echo_tcp(mut stream: TcpStream, stats: Arc<Stats>) {
    // Small echoes must leave at once: with Nagle, an echo could wait for the ACK of
    // the previous one and show up as a latency gap the firewall did not cause.
    let _ = stream.set_nodelay(true);
    let mut buf = [0u8; TCP_BUF];
    loop {
        let n = match stream.read(&mut buf).await {
            Ok(0) => return,
            Ok(n) => n,
            Err(_) => {
                stats.tcp_errors.fetch_add(1, Relaxed);
                return;
            }
        };
        if stream.write_all(&buf[..n]).await.is_err() {
            stats.tcp_errors.fetch_add(1, Relaxed);
            return;
        }
        stats.tcp_bytes.fetch_add(n as u64, Relaxed);
    }
}

/// Echoes each datagram to its sender.
///
/// Replies leave from the address the kernel picks for the route back; on a server
/// with several addresses on that route, listen on the specific address the clients
/// use, or their connected sockets would ignore the replies.
async fn udp_echo(sock: UdpSocket, stats: Arc<Stats>) {
    let mut buf = vec![0u8; 65_536];
    loop {
        let (n, peer) = match sock.recv_from(&mut buf).await {
            Ok(v) => v,
            Err(_) => {
                stats.udp_errors.fetch_add(1, Relaxed);
                continue;
            }
        };
        match sock.send_to(&buf[..n], peer).await {
            Ok(_) => stats.udp_datagrams.fetch_add(1, Relaxed),
            Err(_) => stats.udp_errors.fetch_add(1, Relaxed),
        };
    }
}

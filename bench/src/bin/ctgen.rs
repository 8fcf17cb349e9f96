//! `ctgen`: creates (or deletes) many synthetic conntrack entries through
//! batched ctnetlink writes, in the network namespace it runs in. The tests
//! use it for bulk inserts and event floods; the benchmarks for event load.
//!
//! Entry `i` of a run is deterministic (source address base + i, ports from
//! i), so a later `--delete` run with the same arguments removes the same
//! entries.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    process::ExitCode,
    time::Instant,
};

use anyhow::{Context, bail};
use clap::{Parser, ValueEnum};
use ctsync::{
    ctnetlink::{self, CreateMode, Decoded, EntryOptions, Request, encode},
    nlsock::NlSocket,
};
use ctsync_common::{
    CtRecord,
    conntrack::{AF_INET, AF_INET6, IPPROTO_TCP, IPPROTO_UDP, record_flags, tcp_state},
};

#[derive(Parser)]
#[command(
    name = "ctgen",
    about = "Create or delete synthetic conntrack entries in bulk (batched ctnetlink)"
)]
struct Args {
    /// Number of entries.
    #[arg(long)]
    count: u32,
    /// Address family: 4 or 6.
    #[arg(long, default_value_t = 4)]
    family: u8,
    #[arg(long, value_enum, default_value_t = Proto::Mixed)]
    proto: Proto,
    /// First original source address (default 10.70.0.0 / fd00:70::).
    #[arg(long)]
    src_base: Option<IpAddr>,
    /// Original destination (default 10.2.0.10 / fd00:2::10, the lab's server).
    #[arg(long)]
    dst: Option<IpAddr>,
    /// Source-NAT the entries to this address (default with --nat: 10.2.0.1 / fd00:2::1).
    #[arg(long)]
    nat: bool,
    #[arg(long)]
    nat_to: Option<IpAddr>,
    /// Timeout of the created entries, in seconds.
    #[arg(long, default_value_t = 600)]
    timeout: u32,
    #[arg(long, default_value_t = 0)]
    zone: u16,
    #[arg(long, default_value_t = 0)]
    mark: u32,
    /// Messages per sendmsg (an ACK is requested on the last of each).
    #[arg(long, default_value_t = 256)]
    batch: usize,
    /// Delete the entries instead of creating them.
    #[arg(long)]
    delete: bool,
    /// Don't fail on per-entry errors (e.g. EEXIST); report them.
    #[arg(long)]
    ignore_errors: bool,
}

#[derive(Clone, Copy, ValueEnum, PartialEq)]
enum Proto {
    Tcp,
    Udp,
    /// Even entries TCP, odd entries UDP.
    Mixed,
}

const IPS_SEEN_REPLY: u32 = 1 << 1;
const IPS_ASSURED: u32 = 1 << 2;
const IPS_CONFIRMED: u32 = 1 << 3;
const IPS_SRC_NAT: u32 = 1 << 4;
const IPS_SRC_NAT_DONE: u32 = 1 << 7;

fn put_addr(dst: &mut [u8; 16], a: IpAddr) {
    match a {
        IpAddr::V4(v4) => dst[..4].copy_from_slice(&v4.octets()),
        IpAddr::V6(v6) => *dst = v6.octets(),
    }
}

fn offset(base: IpAddr, i: u32) -> IpAddr {
    match base {
        IpAddr::V4(b) => IpAddr::V4(Ipv4Addr::from(u32::from(b).wrapping_add(i))),
        IpAddr::V6(b) => IpAddr::V6(Ipv6Addr::from(u128::from(b).wrapping_add(i.into()))),
    }
}

impl Args {
    fn record(&self, i: u32) -> CtRecord {
        let v6 = self.family == 6;
        let src_base = self.src_base.unwrap_or(if v6 {
            "fd00:70::".parse().unwrap()
        } else {
            "10.70.0.0".parse().unwrap()
        });
        let dst = self.dst.unwrap_or(if v6 {
            "fd00:2::10".parse().unwrap()
        } else {
            "10.2.0.10".parse().unwrap()
        });
        let proto = match self.proto {
            Proto::Tcp => IPPROTO_TCP,
            Proto::Udp => IPPROTO_UDP,
            Proto::Mixed if i % 2 == 0 => IPPROTO_TCP,
            Proto::Mixed => IPPROTO_UDP,
        };
        let mut r = CtRecord::default();
        r.orig.family = if v6 { AF_INET6 } else { AF_INET };
        r.orig.proto = proto;
        r.orig.zone = self.zone;
        put_addr(&mut r.orig.src, offset(src_base, i));
        put_addr(&mut r.orig.dst, dst);
        r.orig.src_port = (10_000 + (i % 50_000) as u16).to_be();
        // Server ports vary too, so NATed reply tuples stay unique past 64k entries.
        r.orig.dst_port =
            (if proto == IPPROTO_TCP { 80 } else { 53 } + (i / 60_000) as u16).to_be();
        r.reply = ctnetlink::encode::invert_tuple(&r.orig);
        r.status = IPS_SEEN_REPLY | IPS_ASSURED | IPS_CONFIRMED;
        r.timeout = self.timeout;
        r.mark = self.mark;
        r.flags = record_flags::HAS_REPLY | record_flags::HAS_TIMEOUT | record_flags::HAS_MARK;
        if proto == IPPROTO_TCP {
            r.flags |= record_flags::HAS_PROTOINFO;
            r.proto_state = tcp_state::ESTABLISHED;
            r.tcp_wscale_orig = 7;
            r.tcp_wscale_reply = 7;
        }
        if self.nat {
            let to = self.nat_to.unwrap_or(if v6 {
                "fd00:2::1".parse().unwrap()
            } else {
                "10.2.0.1".parse().unwrap()
            });
            r.reply.dst = [0; 16];
            put_addr(&mut r.reply.dst, to);
            r.reply.dst_port = (1024 + (i % 60_000) as u16).to_be();
            r.status |= IPS_SRC_NAT | IPS_SRC_NAT_DONE;
        }
        r
    }
}

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ctgen: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    if args.family != 4 && args.family != 6 {
        bail!("--family must be 4 or 6");
    }
    if args.batch == 0 {
        bail!("--batch must be at least 1");
    }
    let sock = NlSocket::open(0, false).context("opening a ctnetlink socket (needs root)")?;
    sock.set_recv_buffer(8 << 20)
        .context("setting the receive buffer")?;
    let mut buf = Vec::with_capacity(args.batch * 256);
    let mut rbuf = vec![0u8; 1 << 20];
    let mut errors: BTreeMap<i32, u64> = BTreeMap::new();
    let t0 = Instant::now();
    let mut seq = 0u32;
    let mut i = 0u32;
    while i < args.count {
        buf.clear();
        let n = (args.count - i).min(args.batch as u32);
        for j in 0..n {
            seq += 1;
            let req = Request::new(seq).with_ack(j + 1 == n);
            let rec = args.record(i + j);
            if args.delete {
                encode::delete(&mut buf, req, &rec.orig);
            } else {
                encode::create(
                    &mut buf,
                    req,
                    CreateMode::Exclusive,
                    &rec,
                    None,
                    EntryOptions::default(),
                );
            }
        }
        sock.send(&buf).context("sending a batch")?;
        // Errors of earlier messages arrive before the last message's ACK.
        'batch: loop {
            let len = sock.recv(&mut rbuf).context("reading ACKs")?;
            let mut rec = CtRecord::default();
            let mut ext = Default::default();
            for msg in ctnetlink::messages(&rbuf[..len]) {
                let msg = msg.context("malformed reply")?;
                let h = ctnetlink::header(msg)?;
                if let Decoded::Error { errno } = ctnetlink::decode(msg, &mut rec, &mut ext)? {
                    if errno != 0 {
                        *errors.entry(errno).or_default() += 1;
                    }
                    if h.seq == seq {
                        break 'batch;
                    }
                }
            }
        }
        i += n;
    }
    let secs = t0.elapsed().as_secs_f64();
    let failed: u64 = errors.values().sum();
    println!(
        "{} {} entries in {secs:.3} s ({:.0}/s), {failed} failed",
        if args.delete { "deleted" } else { "created" },
        u64::from(args.count) - failed,
        f64::from(args.count) / secs
    );
    if failed > 0 {
        let list: Vec<String> = errors
            .iter()
            .map(|(e, n)| format!("{n} x {}", std::io::Error::from_raw_os_error(*e)))
            .collect();
        let msg = format!("errors: {}", list.join(", "));
        if !args.ignore_errors {
            bail!(msg);
        }
        println!("{msg}");
    }
    Ok(())
}

//! Synthetic conntrack entries, written to the kernel through batched
//! ctnetlink: the load generator behind `ctgen`, the tests' bulk inserts and
//! the benchmarks.
//!
//! Entry `i` of a spec is deterministic (source address base + i, ports from
//! i), so deleting with the same spec removes the same entries.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use anyhow::Context;
use clap::ValueEnum;
use ctsync::{
    ctnetlink::{self, CreateMode, Decoded, EntryOptions, Request, encode},
    nlsock::NlSocket,
};
use ctsync_common::{
    CtExt, CtRecord,
    conntrack::{
        AF_INET, AF_INET6, IPPROTO_SCTP, IPPROTO_TCP, IPPROTO_UDP, record_flags, sctp_state,
        tcp_state,
    },
};

/// What entries to make.
#[derive(clap::Args, Clone, Debug)]
pub struct Spec {
    /// Address family: 4 or 6.
    #[arg(long, default_value_t = 4)]
    pub family: u8,
    #[arg(long, value_enum, default_value_t = Proto::Mixed)]
    pub proto: Proto,
    /// First original source address (default 10.70.0.0 / fd00:70::).
    #[arg(long)]
    pub src_base: Option<IpAddr>,
    /// Original destination (default 10.2.0.10 / fd00:2::10, the lab's server).
    #[arg(long)]
    pub dst: Option<IpAddr>,
    /// Source-NAT the entries (to --nat-to, default 10.2.0.1 / fd00:2::1).
    #[arg(long)]
    pub nat: bool,
    #[arg(long)]
    pub nat_to: Option<IpAddr>,
    /// Timeout of the created entries, in seconds.
    #[arg(long, default_value_t = 600)]
    pub timeout: u32,
    #[arg(long, default_value_t = 0)]
    pub zone: u16,
    #[arg(long, default_value_t = 0)]
    pub mark: u32,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq)]
pub enum Proto {
    Tcp,
    Udp,
    /// Even entries TCP, odd entries UDP.
    Mixed,
    /// SCTP, ESTABLISHED, with distinct non-zero verification tags per
    /// entry ([`Spec::sctp_vtag`]).
    Sctp,
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

impl Spec {
    /// Entry number `i`.
    pub fn record(&self, i: u32) -> CtRecord {
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
            Proto::Mixed if i.is_multiple_of(2) => IPPROTO_TCP,
            Proto::Mixed => IPPROTO_UDP,
            Proto::Sctp => IPPROTO_SCTP,
        };
        let mut r = CtRecord::default();
        r.orig.family = if v6 { AF_INET6 } else { AF_INET };
        r.orig.proto = proto;
        r.orig.zone = self.zone;
        put_addr(&mut r.orig.src, offset(src_base, i));
        put_addr(&mut r.orig.dst, dst);
        r.orig.src_port = (10_000 + (i % 50_000) as u16).to_be();
        // Server ports vary too, so NATed reply tuples stay unique past 60k entries.
        let server_port = match proto {
            IPPROTO_TCP => 80,
            IPPROTO_SCTP => 3868,
            _ => 53,
        };
        r.orig.dst_port = (server_port + (i / 60_000) as u16).to_be();
        r.reply = encode::invert_tuple(&r.orig);
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
        if proto == IPPROTO_SCTP {
            r.flags |= record_flags::HAS_PROTOINFO | record_flags::HAS_EXT;
            r.proto_state = sctp_state::ESTABLISHED;
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

impl Spec {
    /// The verification tags `[original, reply]` of SCTP entry `i`: non-zero,
    /// distinct across entries and directions (for `i` below 2^28), and
    /// different under a byte swap.
    pub fn sctp_vtag(i: u32) -> [u32; 2] {
        [
            0x1000_0000 + (i & 0x0fff_ffff),
            0x9000_0000 + (i & 0x0fff_ffff),
        ]
    }

    /// The extension of entry `i`: the SCTP tags, none for other protocols.
    pub fn ext(&self, i: u32) -> Option<CtExt> {
        (self.proto == Proto::Sctp).then(|| CtExt {
            sctp_vtag: Spec::sctp_vtag(i),
            ..Default::default()
        })
    }
}

/// Per-errno counts of the entries the kernel refused.
pub type Errors = BTreeMap<i32, u64>;

/// Creates (or deletes) entries `0..count` of `spec` through `sock`, `batch`
/// messages per sendmsg with an ACK requested on the last of each; at most
/// `rate` entries per second when it is not 0 (batches then hold at most a
/// millisecond's worth, so the load is smooth).
pub fn write(
    sock: &NlSocket,
    spec: &Spec,
    count: u32,
    batch: usize,
    delete: bool,
    rate: u32,
) -> anyhow::Result<Errors> {
    let mut batch = batch.max(1) as u32;
    if rate > 0 {
        batch = batch.min((rate / 1000).max(1));
    }
    let t0 = std::time::Instant::now();
    let mut buf = Vec::with_capacity(batch as usize * 256);
    let mut rbuf = vec![0u8; 1 << 20];
    let mut errors = Errors::new();
    let mut seq = 0u32;
    let mut i = 0u32;
    while i < count {
        buf.clear();
        let n = (count - i).min(batch);
        for j in 0..n {
            seq += 1;
            let req = Request::new(seq).with_ack(j + 1 == n);
            let rec = spec.record(i + j);
            if delete {
                encode::delete(&mut buf, req, &rec.orig);
            } else {
                encode::create(
                    &mut buf,
                    req,
                    CreateMode::Exclusive,
                    &rec,
                    spec.ext(i + j).as_ref(),
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
        if rate > 0 {
            let due = t0 + std::time::Duration::from_secs_f64(f64::from(i) / f64::from(rate));
            if let Some(wait) = due.checked_duration_since(std::time::Instant::now()) {
                std::thread::sleep(wait);
            }
        }
    }
    Ok(errors)
}

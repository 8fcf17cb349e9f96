//! Socket filter on the agent's ctnetlink event socket.
//!
//! Drops, before they are queued, copied or counted against the socket
//! buffer, the conntrack events the configuration excludes and the events the
//! agent's own writes caused. Rules, in order (first match drops):
//!
//! 1. `nlmsg_pid` is one of the agent's write sockets (self-origin).
//! 2. The original tuple's protocol is in `drop_proto`.
//! 3. Address lists on the original tuple. Ignore mode: drop if the source is
//!    in the source list or the destination in the destination list. Accept
//!    mode: drop unless the source is in the source list (when that list is
//!    not empty) and the destination in the destination list (likewise).
//! 4. Zone list (accept or ignore), on `CTA_ZONE` (0 when absent).
//! 5. Mark rules (accept or ignore): `mark & mask == value`.
//! 6. TCP state in `drop_tcp_state`, except for DESTROY events: an entry
//!    the agent caches must always leave the cache when it dies.
//!
//! A message that can't be parsed passes, so that userspace counts it.

use aya_ebpf::{
    macros::{map, socket_filter},
    maps::{Array, HashMap, LpmTrie, PerCpuArray, lpm_trie::Key},
    programs::SkBuffContext,
};
use ctsync_common::filter::{
    self as f, COUNTERS, Counter, FilterConfig, MAX_MARKS, MAX_PREFIXES, MAX_SELF_PORTIDS,
    MAX_ZONES, flags,
};

#[map(name = "CT_FILTER_CONFIG")]
static CONFIG: Array<FilterConfig> = Array::with_max_entries(1, 0);
#[map(name = "CT_FILTER_SRC4")]
static SRC4: LpmTrie<[u8; 4], u8> = LpmTrie::with_max_entries(MAX_PREFIXES, 0);
#[map(name = "CT_FILTER_DST4")]
static DST4: LpmTrie<[u8; 4], u8> = LpmTrie::with_max_entries(MAX_PREFIXES, 0);
#[map(name = "CT_FILTER_SRC6")]
static SRC6: LpmTrie<[u8; 16], u8> = LpmTrie::with_max_entries(MAX_PREFIXES, 0);
#[map(name = "CT_FILTER_DST6")]
static DST6: LpmTrie<[u8; 16], u8> = LpmTrie::with_max_entries(MAX_PREFIXES, 0);
#[map(name = "CT_FILTER_ZONES")]
static ZONES: HashMap<u16, u8> = HashMap::with_max_entries(MAX_ZONES, 0);
#[map(name = "CT_FILTER_SELF")]
static SELF_PORTIDS: HashMap<u32, u8> = HashMap::with_max_entries(MAX_SELF_PORTIDS, 0);
#[map(name = "CT_FILTER_STATS")]
static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTERS, 0);

const _: () = assert!(f::MAX_MARKS == 8);

const NLMSG_HDRLEN: usize = 16;
const NFGENMSG_LEN: usize = 4;
const NLA_TYPE_MASK: u16 = 0x3fff;

/// `(NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_DELETE`.
const IPCTNL_MSG_CT_DELETE_TYPE: u16 = (1 << 8) | 2;
const CTA_TUPLE_ORIG: u16 = 1;
const CTA_PROTOINFO: u16 = 4;
const CTA_MARK: u16 = 8;
const CTA_ZONE: u16 = 18;
const CTA_TUPLE_IP: u16 = 1;
const CTA_TUPLE_PROTO: u16 = 2;
const CTA_IP_V4_SRC: u16 = 1;
const CTA_IP_V4_DST: u16 = 2;
const CTA_IP_V6_SRC: u16 = 3;
const CTA_IP_V6_DST: u16 = 4;
const CTA_PROTO_NUM: u16 = 1;
const CTA_PROTOINFO_TCP: u16 = 1;
const CTA_PROTOINFO_TCP_STATE: u16 = 1;

/// Enough for every top-level attribute ctnetlink puts in an event.
const MAX_TOP_ATTRS: u32 = 24;
/// Enough for the attributes of any nested conntrack attribute.
const MAX_NESTED_ATTRS: u32 = 6;

#[inline(always)]
fn count(c: Counter) {
    if let Some(p) = STATS.get_ptr_mut(c as u32) {
        // Per-CPU slot: no other writer.
        unsafe { *p += 1 };
    }
}

#[socket_filter]
pub fn event_filter(ctx: SkBuffContext) -> i64 {
    count(Counter::Seen);
    let keep = ctx.len() as i64;
    let verdict = match classify(&ctx) {
        Ok(v) => v,
        Err(()) => {
            count(Counter::Unparsed);
            return keep;
        }
    };
    match verdict {
        None => {
            count(Counter::Passed);
            keep
        }
        Some(c) => {
            count(c);
            0
        }
    }
}

/// A netlink attribute: its payload's offset and length, and its type.
#[derive(Clone, Copy)]
struct Attr {
    off: usize,
    len: usize,
    ty: u16,
}

#[inline(always)]
fn attr_at(ctx: &SkBuffContext, off: usize, end: usize) -> Result<Attr, ()> {
    let hdr: [u16; 2] = ctx.load(off).map_err(|_| ())?;
    let len = hdr[0] as usize;
    if len < 4 || off + len > end {
        return Err(());
    }
    Ok(Attr {
        off: off + 4,
        len: len - 4,
        ty: hdr[1] & NLA_TYPE_MASK,
    })
}

#[inline(always)]
fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// Finds up to two nested attributes by type inside `[off, end)`.
#[inline(always)]
fn find2(
    ctx: &SkBuffContext,
    mut off: usize,
    end: usize,
    a: u16,
    b: u16,
) -> Result<(Option<Attr>, Option<Attr>), ()> {
    let mut found_a = None;
    let mut found_b = None;
    for _ in 0..MAX_NESTED_ATTRS {
        if off + 4 > end {
            break;
        }
        let at = attr_at(ctx, off, end)?;
        if at.ty == a {
            found_a = Some(at);
        } else if at.ty == b {
            found_b = Some(at);
        }
        off = at.off + align4(at.len);
    }
    Ok((found_a, found_b))
}

struct Event {
    portid: u32,
    proto: u8,
    v6: bool,
    src: [u8; 16],
    dst: [u8; 16],
    zone: u16,
    mark: u32,
    tcp_state: Option<u8>,
}

#[inline(always)]
fn parse(ctx: &SkBuffContext) -> Result<Event, ()> {
    let end = ctx.len() as usize;
    let portid: u32 = ctx.load(12).map_err(|_| ())?;
    let mut ev = Event {
        portid,
        proto: 0,
        v6: false,
        src: [0; 16],
        dst: [0; 16],
        zone: 0,
        mark: 0,
        tcp_state: None,
    };
    let mut orig = None;
    let mut protoinfo = None;
    let mut off = NLMSG_HDRLEN + NFGENMSG_LEN;
    for _ in 0..MAX_TOP_ATTRS {
        if off + 4 > end {
            break;
        }
        let at = attr_at(ctx, off, end)?;
        match at.ty {
            CTA_TUPLE_ORIG => orig = Some(at),
            CTA_PROTOINFO => protoinfo = Some(at),
            CTA_MARK => ev.mark = u32::from_be(ctx.load(at.off).map_err(|_| ())?),
            CTA_ZONE => ev.zone = u16::from_be(ctx.load(at.off).map_err(|_| ())?),
            _ => {}
        }
        off = at.off + align4(at.len);
    }
    let orig = orig.ok_or(())?;
    let (ip, proto) = find2(
        ctx,
        orig.off,
        orig.off + orig.len,
        CTA_TUPLE_IP,
        CTA_TUPLE_PROTO,
    )?;
    let (ip, proto) = (ip.ok_or(())?, proto.ok_or(())?);
    let (num, _) = find2(ctx, proto.off, proto.off + proto.len, CTA_PROTO_NUM, 0)?;
    ev.proto = ctx.load(num.ok_or(())?.off).map_err(|_| ())?;

    let ip_end = ip.off + ip.len;
    let (s4, d4) = find2(ctx, ip.off, ip_end, CTA_IP_V4_SRC, CTA_IP_V4_DST)?;
    if let (Some(s), Some(d)) = (s4, d4) {
        let s: [u8; 4] = ctx.load(s.off).map_err(|_| ())?;
        let d: [u8; 4] = ctx.load(d.off).map_err(|_| ())?;
        ev.src[..4].copy_from_slice(&s);
        ev.dst[..4].copy_from_slice(&d);
    } else {
        let (s6, d6) = find2(ctx, ip.off, ip_end, CTA_IP_V6_SRC, CTA_IP_V6_DST)?;
        ev.src = ctx.load(s6.ok_or(())?.off).map_err(|_| ())?;
        ev.dst = ctx.load(d6.ok_or(())?.off).map_err(|_| ())?;
        ev.v6 = true;
    }

    let nlmsg_type: u16 = ctx.load(4).map_err(|_| ())?;
    if let (Some(pi), false) = (protoinfo, nlmsg_type == IPCTNL_MSG_CT_DELETE_TYPE) {
        let (tcp, _) = find2(ctx, pi.off, pi.off + pi.len, CTA_PROTOINFO_TCP, 0)?;
        if let Some(tcp) = tcp {
            let (st, _) = find2(ctx, tcp.off, tcp.off + tcp.len, CTA_PROTOINFO_TCP_STATE, 0)?;
            if let Some(st) = st {
                ev.tcp_state = Some(ctx.load(st.off).map_err(|_| ())?);
            }
        }
    }
    Ok(ev)
}

/// `Ok(None)`: pass; `Ok(Some(counter))`: drop, for that reason.
#[inline(always)]
fn classify(ctx: &SkBuffContext) -> Result<Option<Counter>, ()> {
    let Some(cfg) = CONFIG.get(0) else {
        return Ok(None);
    };
    if cfg.flags & flags::CONFIGURED == 0 {
        return Ok(None);
    }
    let ev = parse(ctx)?;

    if unsafe { SELF_PORTIDS.get(&ev.portid) }.is_some() && ev.portid != 0 {
        return Ok(Some(Counter::DroppedSelf));
    }
    if cfg.drops_proto(ev.proto) {
        return Ok(Some(Counter::DroppedProto));
    }
    if cfg.flags & (flags::ADDR_SRC | flags::ADDR_DST) != 0 {
        let (src_in, dst_in) = if ev.v6 {
            (
                SRC6.get(&Key::new(128, ev.src)).is_some(),
                DST6.get(&Key::new(128, ev.dst)).is_some(),
            )
        } else {
            let mut s = [0u8; 4];
            let mut d = [0u8; 4];
            s.copy_from_slice(&ev.src[..4]);
            d.copy_from_slice(&ev.dst[..4]);
            (
                SRC4.get(&Key::new(32, s)).is_some(),
                DST4.get(&Key::new(32, d)).is_some(),
            )
        };
        let has_src = cfg.flags & flags::ADDR_SRC != 0;
        let has_dst = cfg.flags & flags::ADDR_DST != 0;
        let drop = if cfg.flags & flags::ADDR_ACCEPT != 0 {
            (has_src && !src_in) || (has_dst && !dst_in)
        } else {
            (has_src && src_in) || (has_dst && dst_in)
        };
        if drop {
            return Ok(Some(Counter::DroppedAddr));
        }
    }
    if cfg.flags & flags::ZONE_ACTIVE != 0 {
        let listed = unsafe { ZONES.get(&ev.zone) }.is_some();
        if listed != (cfg.flags & flags::ZONE_ACCEPT != 0) {
            return Ok(Some(Counter::DroppedZone));
        }
    }
    if cfg.mark_count != 0 {
        let mut matched = false;
        for i in 0..MAX_MARKS {
            if (i as u32) < cfg.mark_count {
                let m = cfg.marks[i];
                if ev.mark & m.mask == m.value {
                    matched = true;
                }
            }
        }
        if matched != (cfg.flags & flags::MARK_ACCEPT != 0) {
            return Ok(Some(Counter::DroppedMark));
        }
    }
    if let Some(st) = ev.tcp_state {
        if ev.proto == 6 && st < 32 && cfg.drop_tcp_state & (1u32 << st) != 0 {
            return Ok(Some(Counter::DroppedState));
        }
    }
    Ok(None)
}

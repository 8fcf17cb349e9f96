//! XDP receive path on the backup's sync links.
//!
//! Applies the records of the peer's DATA datagrams to the external cache
//! (a BPF hash map) and consumes the datagrams, so that replicated state
//! never wakes userspace. For each datagram it applied it reports the
//! header to the agent through a ring buffer: the agent's FT-FW receiver
//! acknowledges and NACKs from those reports exactly as from datagrams.
//!
//! Verdicts, in order:
//! - not IPv4/IPv6 UDP to the sync port, IP fragments, no config: pass;
//! - from an address not in the peer map: drop (strangers);
//! - bad magic, lengths, flags: drop (malformed);
//! - another format version, a kind other than DATA, the MARKERS flag, a
//!   node id or sender session the receiver doesn't follow: pass (the agent
//!   decides and counts);
//! - checksum mismatch: drop (corrupt; the receiver NACKs the gap);
//! - bad record layout: drop (malformed), or bulk markers: pass;
//! - data older than the last completed bulk: drop (superseded);
//! - no room in the ring buffer: pass (the socket path handles it);
//! - else: apply every record, report, drop.
//!
//! Loops are bounded by constants and keep their cursor and bounds in the
//! per-CPU scratch map, not in registers: every path through an iteration,
//! and every early exit, then reaches the verifier in the same state, so
//! that verification stays linear in the trip count instead of exponential
//! in the number of record types.

use aya_ebpf::{
    bindings::{
        BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP,
        xdp_action::{XDP_DROP, XDP_PASS},
    },
    helpers::{bpf_ktime_get_ns, generated::bpf_xdp_load_bytes},
    macros::{map, xdp},
    maps::{Array, HashMap, PerCpuArray, RingBuf},
    programs::XdpContext,
};
use ctsync_common::{
    Tuple,
    conntrack::{AF_INET, AF_INET6},
    wire::{self, MAX_DATA_RECORDS, MAX_DATAGRAM, rtype},
    xdp::{
        Apply, CHANGES_RING_BYTES, ExternalEntry, MAX_PEERS, PeerAddr, SEEN_RING_BYTES, Scratch,
        SeenReport, XDP_COUNTERS, XdpConfig, XdpCounter, apply_rule, entry_state, flags,
    },
};

#[map(name = "XDP_CONFIG")]
static CONFIG: Array<XdpConfig> = Array::with_max_entries(1, 0);
#[map(name = "XDP_PEERS")]
static PEERS: HashMap<PeerAddr, u8> = HashMap::with_max_entries(MAX_PEERS, 0);
/// Sized by the agent from the config (`map_max_entries`). Preallocated:
/// on demand (BPF_F_NO_PREALLOC) each new entry cost 2.3x as much here
/// (an allocation, and its refill work), and a full map fails cleanly.
#[map(name = "XDP_EXTERNAL")]
static EXTERNAL: HashMap<Tuple, ExternalEntry> = HashMap::with_max_entries(1 << 20, 0);
#[map(name = "XDP_SEEN")]
static SEEN: RingBuf = RingBuf::with_byte_size(SEEN_RING_BYTES, 0);
#[map(name = "XDP_STATS")]
static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(XDP_COUNTERS, 0);
#[map(name = "XDP_CHANGES")]
static CHANGES: RingBuf = RingBuf::with_byte_size(CHANGES_RING_BYTES, 0);
/// When XDP last woke the agent (`bpf_ktime_get_ns`).
#[map(name = "XDP_WAKE")]
static WAKE: Array<u64> = Array::with_max_entries(1, 0);
#[map(name = "XDP_SCRATCH")]
static SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const IPPROTO_UDP: u8 = 17;
const MAX_WORDS: usize = MAX_DATAGRAM / 4;
/// Words of a STATE_EXT record, the longest data record.
const LONGEST_RECORD_WORDS: usize = wire::STATE_EXT_LEN / 4;
const _: () = assert!(LONGEST_RECORD_WORDS <= core::mem::size_of::<ExternalEntry>() / 4);
const HEADER_WORDS: u32 = (wire::HEADER_LEN / 4) as u32;
/// Word offsets inside a record (after its 4-byte header).
const KEY_WORDS: usize = core::mem::size_of::<Tuple>() / 4;
const RECORD_WORDS: usize = core::mem::size_of::<ctsync_common::CtRecord>() / 4;
const EXT_WORDS: usize = core::mem::size_of::<ctsync_common::CtExt>() / 4;
/// `CtRecord::version` (byte 112) in words.
const VERSION_WORD: usize = 28;

#[inline(always)]
fn count(c: XdpCounter) {
    add(c, 1);
}

#[inline(always)]
fn add(c: XdpCounter, n: u64) {
    if let Some(p) = STATS.get_ptr_mut(c as u32) {
        // Per-CPU slot: no other writer.
        unsafe { *p += n };
    }
}

#[xdp]
pub fn xdp_receive(ctx: XdpContext) -> u32 {
    match receive(&ctx) {
        Ok(v) => v,
        Err(v) => v,
    }
}

#[inline(always)]
fn ptr_at<T>(ctx: &XdpContext, off: usize) -> Result<*const T, u32> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + off + core::mem::size_of::<T>() > end {
        return Err(XDP_PASS);
    }
    Ok((start + off) as *const T)
}

fn receive(ctx: &XdpContext) -> Result<u32, u32> {
    let cfg = CONFIG.get(0).ok_or(XDP_PASS)?;
    if cfg.flags & flags::ENABLED == 0 {
        return Ok(XDP_PASS);
    }
    let ethertype = u16::from_be(unsafe { *ptr_at::<u16>(ctx, 12)? });
    let mut peer = PeerAddr::default();
    let udp_off = match ethertype {
        ETH_P_IP => {
            let ip = ptr_at::<[u8; 20]>(ctx, ETH_HLEN)?;
            let ip = unsafe { &*ip };
            // Options and fragments are not sync traffic the kernel path
            // can't handle: leave them to the socket.
            if ip[0] != 0x45 || ip[9] != IPPROTO_UDP || (ip[6] & 0x3f) != 0 || ip[7] != 0 {
                return Ok(XDP_PASS);
            }
            peer.family = AF_INET;
            peer.addr[..4].copy_from_slice(&ip[12..16]);
            ETH_HLEN + 20
        }
        ETH_P_IPV6 => {
            let ip = ptr_at::<[u8; 40]>(ctx, ETH_HLEN)?;
            let ip = unsafe { &*ip };
            if ip[6] != IPPROTO_UDP {
                return Ok(XDP_PASS);
            }
            peer.family = AF_INET6;
            peer.addr.copy_from_slice(&ip[8..24]);
            ETH_HLEN + 40
        }
        _ => return Ok(XDP_PASS),
    };
    let udp = unsafe { &*ptr_at::<[u16; 4]>(ctx, udp_off)? };
    if udp[1] != cfg.port {
        return Ok(XDP_PASS);
    }
    if unsafe { PEERS.get(&peer) }.is_none() {
        count(XdpCounter::Strangers);
        return Ok(XDP_DROP);
    }
    let payload_off = udp_off + 8;
    let len = usize::from(u16::from_be(udp[2])).wrapping_sub(8);
    let in_packet = ctx.data_end() - ctx.data() - payload_off;
    if len < wire::HEADER_LEN || len > MAX_DATAGRAM || len > in_packet || len % 4 != 0 {
        count(XdpCounter::Malformed);
        return Ok(XDP_DROP);
    }
    let scratch = SCRATCH.get_ptr_mut(0).ok_or(XDP_PASS)?;
    let scratch = unsafe { &mut *scratch };
    let rc = unsafe {
        bpf_xdp_load_bytes(
            ctx.ctx,
            payload_off as u32,
            scratch.words.as_mut_ptr().cast(),
            len as u32,
        )
    };
    if rc != 0 {
        return Ok(XDP_PASS);
    }
    let w = &scratch.words;
    let nwords = (len / 4) as u32;
    // Header words: 0 magic, 1 version/kind/flags/reserved, 2 node,
    // 3 session, 4 seq, 5 floor, 6 count/payload_len, 7 checksum.
    if w[0] != u32::from_le_bytes(wire::MAGIC) {
        count(XdpCounter::Malformed);
        return Ok(XDP_DROP);
    }
    let [version, kind, dflags, reserved] = w[1].to_le_bytes();
    if version != wire::VERSION || kind != wire::Kind::Data as u8 {
        count(XdpCounter::Passed);
        return Ok(XDP_PASS);
    }
    if dflags & !wire::flags::ALL != 0 || reserved != 0 {
        count(XdpCounter::Malformed);
        return Ok(XDP_DROP);
    }
    if dflags & wire::flags::MARKERS != 0 {
        count(XdpCounter::Passed);
        return Ok(XDP_PASS);
    }
    let records = w[6] & 0xffff;
    let payload_len = w[6] >> 16;
    if payload_len as usize + wire::HEADER_LEN != len {
        count(XdpCounter::Malformed);
        return Ok(XDP_DROP);
    }
    scratch.nwords = nwords;
    if checksum(scratch) != scratch.words[7] {
        count(XdpCounter::Corrupt);
        return Ok(XDP_DROP);
    }
    let (node, session, seq) = (scratch.words[2], scratch.words[3], scratch.words[4]);
    if node == cfg.node || (cfg.peer_node != 0 && node != cfg.peer_node) {
        count(XdpCounter::Passed);
        return Ok(XDP_PASS);
    }
    if cfg.flags & flags::ACCEPT == 0 || session != cfg.session {
        count(XdpCounter::Passed);
        return Ok(XDP_PASS);
    }
    match validate(scratch, records) {
        Ok(()) => {}
        Err(v) => {
            count(if v == XDP_DROP {
                XdpCounter::Malformed
            } else {
                XdpCounter::Passed
            });
            return Ok(v);
        }
    }
    if cfg.flags & flags::FLOOR != 0 && (seq.wrapping_sub(cfg.floor) as i32) < 0 {
        count(XdpCounter::Superseded);
        return Ok(XDP_DROP);
    }
    let Some(mut report) = SEEN.reserve::<SeenReport>(0) else {
        count(XdpCounter::ReportFull);
        return Ok(XDP_PASS);
    };
    let r = unsafe { &mut *report.as_mut_ptr() };
    for i in 0..8 {
        // Header is 8 words; SeenReport::header is the same 32 bytes.
        let hw = unsafe { core::ptr::addr_of_mut!(r.header).cast::<u32>().add(i) };
        unsafe { *hw = scratch.words[i] };
    }
    r.applied = 0;
    r.failed = 0;
    // In memory, not a register (see the module docs).
    scratch.mirror = u32::from(cfg.flags & flags::MIRROR != 0);
    apply_all(scratch, session, seq, r);
    add(XdpCounter::Applied, u64::from(r.applied));
    add(XdpCounter::MapFull, u64::from(r.failed));
    report.submit(wake_flags(cfg.flags & flags::MIRROR != 0));
    count(XdpCounter::Datagrams);
    Ok(XDP_DROP)
}

/// The wire checksum over the datagram's `scratch.nwords` words, skipping
/// the checksum word.
#[inline(always)]
fn checksum(scratch: &mut Scratch) -> u32 {
    let mut h = wire::CHECKSUM_SEED;
    let n = core::ptr::addr_of!(scratch.nwords);
    let words = scratch.words.as_ptr();
    for i in 0..MAX_WORDS {
        // The bound from memory (see the module docs).
        let nwords = unsafe { n.read_volatile() } as usize;
        if i >= nwords {
            break;
        }
        if i != wire::CHECKSUM_OFFSET / 4 {
            h = wire::checksum_step(h, unsafe { *words.add(i) });
        }
    }
    h
}

/// Word length of a data record type XDP applies, or `None`.
#[inline(always)]
fn data_record_words(ty: u8) -> Option<u32> {
    match ty {
        rtype::STATE => Some((wire::STATE_LEN / 4) as u32),
        rtype::STATE_EXT => Some((wire::STATE_EXT_LEN / 4) as u32),
        rtype::DESTROY => Some((wire::DESTROY_LEN / 4) as u32),
        _ => None,
    }
}

/// Checks the record layout before anything is applied (nothing of a bad
/// datagram may be used). `Err(XDP_DROP)`: malformed; `Err(XDP_PASS)`: a
/// record type XDP leaves to the agent (bulk markers).
#[inline(always)]
fn validate(scratch: &mut Scratch, records: u32) -> Result<(), u32> {
    let s: *mut Scratch = scratch;
    let words = scratch.words.as_ptr();
    unsafe {
        (*s).cursor = HEADER_WORDS;
        (*s).verdict = 0;
        (*s).records = 0;
    }
    for _ in 0..MAX_DATA_RECORDS {
        let (off, nwords, verdict) = unsafe {
            (
                core::ptr::addr_of!((*s).cursor).read_volatile(),
                core::ptr::addr_of!((*s).nwords).read_volatile(),
                core::ptr::addr_of!((*s).verdict).read_volatile(),
            )
        };
        if off >= nwords || verdict != 0 {
            break;
        }
        if off as usize >= MAX_WORDS {
            unsafe { (*s).verdict = XDP_DROP + 1 };
            break;
        }
        let rh = unsafe { *words.add(off as usize) };
        let ty = rh as u8;
        let Some(len) = data_record_words(ty) else {
            let v = if ty == rtype::BULK_BEGIN || ty == rtype::BULK_END {
                XDP_PASS
            } else {
                XDP_DROP
            };
            unsafe { (*s).verdict = v + 1 };
            break;
        };
        if rh >> 16 != len * 4 || off + len > nwords {
            unsafe { (*s).verdict = XDP_DROP + 1 };
            break;
        }
        unsafe {
            (*s).cursor = off + len;
            (*s).records += 1;
        }
    }
    let (off, nwords, verdict, seen) = (
        scratch.cursor,
        scratch.nwords,
        scratch.verdict,
        scratch.records,
    );
    if verdict != 0 {
        return Err(verdict - 1);
    }
    if off != nwords || seen != records {
        return Err(XDP_DROP);
    }
    Ok(())
}

/// Wake the agent at most this often while reports keep coming...
const WAKE_INTERVAL_NS: u64 = 1_000_000;
/// ...or when this many bytes of reports wait (an ACK window's worth).
const WAKE_BYTES: u64 = 32 * (core::mem::size_of::<SeenReport>() as u64 + 8);

/// Ring buffer wake-ups are an IPI each (a VM exit on a virtual machine),
/// costlier than the rest of the datagram's handling: wake the agent only
/// every `WAKE_INTERVAL_NS` or `WAKE_BYTES`. The agent polls the ring every
/// millisecond while reports flow, so the last ones of a burst are not left
/// waiting. A hot standby (`mirror`) writes every change into the kernel
/// table, which costs more than a wake-up, and the delay would be its
/// latency: the ring's own policy then, a wake-up whenever the agent has
/// caught up.
#[inline(always)]
fn wake_flags(mirror: bool) -> u64 {
    if mirror {
        return 0;
    }
    let now = unsafe { bpf_ktime_get_ns() };
    let Some(last) = WAKE.get_ptr_mut(0) else {
        return 0;
    };
    let waiting = SEEN.query(BPF_RB_AVAIL_DATA as u64);
    // Racy between CPUs, harmlessly: at worst one wake-up too many.
    if waiting + core::mem::size_of::<SeenReport>() as u64 >= WAKE_BYTES
        || now.wrapping_sub(unsafe { *last }) >= WAKE_INTERVAL_NS
    {
        unsafe { *last = now };
        BPF_RB_FORCE_WAKEUP as u64
    } else {
        BPF_RB_NO_WAKEUP as u64
    }
}

/// `CLOCK_MONOTONIC` seconds.
#[inline(always)]
fn now_secs() -> u32 {
    (unsafe { bpf_ktime_get_ns() } / 1_000_000_000) as u32
}

/// Applies every record of a validated datagram.
#[inline(always)]
fn apply_all(scratch: &mut Scratch, session: u32, seq: u32, r: &mut SeenReport) {
    let now = now_secs();
    let s: *mut Scratch = scratch;
    unsafe { (*s).cursor = HEADER_WORDS };
    for _ in 0..MAX_DATA_RECORDS {
        let (off, nwords) = unsafe {
            (
                core::ptr::addr_of!((*s).cursor).read_volatile(),
                core::ptr::addr_of!((*s).nwords).read_volatile(),
            )
        };
        if off >= nwords || off as usize >= MAX_WORDS {
            break;
        }
        let ty = unsafe { (*s).words.as_ptr().add(off as usize).read() } as u8;
        // Validated: every type here is a data record.
        let len = data_record_words(ty).unwrap_or(nwords);
        unsafe { (*s).cursor = off + len };
        apply_one(
            unsafe { &mut *s },
            off as usize + 1,
            ty,
            session,
            seq,
            now,
            r,
        );
    }
}

/// Hot standby: a copy of the changed entry for the agent to write into
/// the kernel table. No wake-up: the seen report of the same datagram
/// brings the agent.
#[inline(always)]
fn emit(e: &ExternalEntry) {
    match CHANGES.reserve::<ExternalEntry>(0) {
        Some(mut slot) => {
            unsafe { core::ptr::copy_nonoverlapping(e, slot.as_mut_ptr(), 1) };
            slot.submit(BPF_RB_NO_WAKEUP as u64);
        }
        None => count(XdpCounter::ChangesLost),
    }
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn apply_one(
    scratch: &mut Scratch,
    body: usize,
    ty: u8,
    session: u32,
    seq: u32,
    now: u32,
    r: &mut SeenReport,
) {
    if body >= MAX_WORDS {
        return;
    }
    let mirror = unsafe { core::ptr::addr_of!(scratch.mirror).read_volatile() } != 0;
    // Derived from the whole scratch value: a record body may reach past
    // `words` into `entry` (never for a valid record, but the verifier checks
    // every access against the value's size), and the longest record (45
    // words) is shorter than `entry` (48).
    let words = (scratch as *const Scratch).cast::<u32>();
    // SAFETY: within the scratch value (above); Tuple has alignment 2.
    let key = unsafe { &*(words.add(body) as *const Tuple) };
    let version_at = if ty == rtype::DESTROY {
        body + KEY_WORDS
    } else {
        body + VERSION_WORD
    };
    let version =
        unsafe { u64::from(*words.add(version_at)) | u64::from(*words.add(version_at + 1)) << 32 };
    let stored = EXTERNAL.get_ptr_mut(key);
    if let Some(s) = stored {
        let st = unsafe { &mut *s };
        match apply_rule(st.session, st.seq, st.record.version, session, seq, version) {
            Apply::Replace => {
                // In place: no allocation, no second hash. A reader in
                // userspace may see a half-written entry; the agent reads
                // the map for dumps and for the commit at takeover, when
                // the primary (the only writer's source) is gone.
                fill(st, words, body, ty, version, session, seq, now);
                r.applied += 1;
                if mirror {
                    emit(st);
                }
            }
            Apply::Refresh => {
                st.seq = seq;
                st.at = now;
            }
            Apply::Keep => count(XdpCounter::Stale),
        }
        return;
    }
    fill(
        &mut scratch.entry,
        words,
        body,
        ty,
        version,
        session,
        seq,
        now,
    );
    if EXTERNAL.insert(key, &scratch.entry, 0).is_ok() {
        r.applied += 1;
        if mirror {
            emit(&scratch.entry);
        }
    } else {
        r.failed += 1;
    }
}

/// Writes the record at word `body` of `words` into `e`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn fill(
    e: &mut ExternalEntry,
    words: *const u32,
    body: usize,
    ty: u8,
    version: u64,
    session: u32,
    seq: u32,
    now: u32,
) {
    let rec = core::ptr::addr_of_mut!(e.record).cast::<u32>();
    let ext = core::ptr::addr_of_mut!(e.ext).cast::<u32>();
    if ty == rtype::DESTROY {
        for i in 0..RECORD_WORDS {
            let v = if i < KEY_WORDS {
                unsafe { *words.add(body + i) }
            } else {
                0
            };
            unsafe { *rec.add(i) = v };
        }
        e.record.version = version;
        e.state = entry_state::GONE;
    } else {
        for i in 0..RECORD_WORDS {
            unsafe { *rec.add(i) = *words.add(body + i) };
        }
        e.state = entry_state::LIVE;
    }
    let has_ext = ty == rtype::STATE_EXT;
    for i in 0..EXT_WORDS {
        let v = if has_ext {
            unsafe { *words.add(body + RECORD_WORDS + i) }
        } else {
            0
        };
        unsafe { *ext.add(i) = v };
    }
    e.has_ext = u8::from(has_ext);
    e.session = session;
    e.seq = seq;
    e.at = now;
    e._pad = [0; 2];
}

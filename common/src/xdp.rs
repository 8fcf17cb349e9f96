//! The XDP receive path's maps: what the agent writes (config, peers), what
//! the program writes (the external cache, seen reports, counters), and the
//! apply rule both sides use. See `ctsync-ebpf`'s `xdp_receive`.

use bytemuck::{Pod, Zeroable};

use crate::{
    conntrack::{CtExt, CtRecord},
    wire::Header,
};

/// Array map (1 entry) holding the [`XdpConfig`].
pub const MAP_CONFIG: &str = "XDP_CONFIG";
/// Hash map [`PeerAddr`] -> 1: the configured peers' addresses.
pub const MAP_PEERS: &str = "XDP_PEERS";
/// Hash map `Tuple` (original tuple with zone) -> [`ExternalEntry`]: the
/// external cache. Pinned, so that it outlives the agent.
pub const MAP_EXTERNAL: &str = "XDP_EXTERNAL";
/// Ring buffer of [`SeenReport`]s, one per data datagram applied.
pub const MAP_SEEN: &str = "XDP_SEEN";
/// Per-CPU array of u64 counters, indexed by [`XdpCounter`].
pub const MAP_STATS: &str = "XDP_STATS";
/// Ring buffer of the [`ExternalEntry`]s XDP changed, with `flags::MIRROR`
/// (hot standby: the agent writes them into the kernel table).
pub const MAP_CHANGES: &str = "XDP_CHANGES";
/// Per-CPU scratch space for one datagram (array of 1 [`Scratch`]).
pub const MAP_SCRATCH: &str = "XDP_SCRATCH";
/// The XDP program's name in the object.
pub const PROG_XDP_RECEIVE: &str = "xdp_receive";

pub const MAX_PEERS: u32 = 64;
/// Ring buffer bytes: room for about 10k reports (the agent drains it every
/// loop turn; a report that finds it full leaves its datagram to the socket).
pub const SEEN_RING_BYTES: u32 = 1 << 19;
/// Changes ring bytes: about 40k entries (a change that finds it full is
/// counted, and the agent rewrites the whole cache into the kernel).
pub const CHANGES_RING_BYTES: u32 = 1 << 23;

/// `XdpConfig::flags`.
pub mod flags {
    /// The agent is running: without it every datagram passes.
    pub const ENABLED: u16 = 1 << 0;
    /// The receiver follows `session`: its data may be applied.
    pub const ACCEPT: u16 = 1 << 1;
    /// Data before `floor` (serial order) was superseded by a bulk: drop it.
    pub const FLOOR: u16 = 1 << 2;
    /// Hot standby: copy every changed entry into the changes ring.
    pub const MIRROR: u16 = 1 << 3;
}

/// The program's configuration (one entry of [`MAP_CONFIG`]), mirrored
/// from the FT-FW receiver after every input.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, PartialEq, Eq, Debug, Default)]
pub struct XdpConfig {
    /// Our node id: datagrams carrying it are ours (multicast loop).
    pub node: u32,
    /// Accept only this author node id, if non-zero.
    pub peer_node: u32,
    /// The sender session the receiver follows (with `flags::ACCEPT`).
    pub session: u32,
    /// See `flags::FLOOR`.
    pub floor: u32,
    /// The sync port, network order.
    pub port: u16,
    pub flags: u16,
    pub _pad: u32,
}

/// A peer address: IPv4 in the first 4 bytes, the rest zero.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, PartialEq, Eq, Hash, Debug, Default)]
pub struct PeerAddr {
    pub addr: [u8; 16],
    /// `AF_INET` / `AF_INET6`.
    pub family: u8,
    pub _pad: [u8; 3],
}

/// `ExternalEntry::state`.
pub mod entry_state {
    pub const LIVE: u8 = 1;
    /// A tombstone: `record.version` is the destruction's version, the rest
    /// of the record is zero.
    pub const GONE: u8 = 2;
}

/// One external-cache entry in the BPF map (192 bytes).
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, PartialEq, Eq, Debug, Default)]
pub struct ExternalEntry {
    pub record: CtRecord,
    /// Valid when `has_ext` is 1.
    pub ext: CtExt,
    /// Stamp: the sender session and sequence number of the datagram that
    /// last set or refreshed the entry.
    pub session: u32,
    pub seq: u32,
    /// `CLOCK_MONOTONIC` seconds when last set or refreshed (the timeout
    /// counts from there).
    pub at: u32,
    /// [`entry_state`].
    pub state: u8,
    pub has_ext: u8,
    pub _pad: [u8; 2],
}

const _: () = assert!(core::mem::size_of::<ExternalEntry>() == 192);

/// What XDP tells the agent about each data datagram it applied: the
/// header (for the FT-FW receiver's ACK/NACK bookkeeping) and counts.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, PartialEq, Eq, Debug, Default)]
pub struct SeenReport {
    pub header: Header,
    /// Records that changed an entry.
    pub applied: u32,
    /// Records the map refused (full).
    pub failed: u32,
}

/// Per-datagram scratch: the datagram's bytes as words (loaded with
/// `bpf_xdp_load_bytes`, so that loops index a map value instead of the
/// packet) and the entry being built.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Scratch {
    pub words: [u32; crate::wire::MAX_DATAGRAM / 4],
    /// Directly after `words`: a record's body read past the last word
    /// still lands inside the map value (the verifier checks against it).
    pub entry: ExternalEntry,
    /// Loop state, kept in memory rather than in registers (see the
    /// program's docs): the datagram's words, the record cursor, a verdict
    /// (0 = none, else verdict + 1) and records counted.
    pub nwords: u32,
    pub cursor: u32,
    pub verdict: u32,
    pub records: u32,
    /// Non-zero: copy changed entries into the changes ring.
    pub mirror: u32,
    pub _pad: u32,
}

/// The program's counters (indexes into [`MAP_STATS`]).
#[repr(u32)]
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum XdpCounter {
    /// Data datagrams applied and consumed in the kernel.
    Datagrams = 0,
    /// Records applied that changed an entry.
    Applied,
    /// Records that were older than (or equal to) what the map holds.
    Stale,
    /// Datagrams damaged or inconsistent (length, record layout): dropped.
    Malformed,
    /// Datagrams whose checksum failed: dropped (a gap, NACKed).
    Corrupt,
    /// Datagrams to the sync port from an address that is not a peer: dropped.
    Strangers,
    /// Records the map refused because it is full.
    MapFull,
    /// Datagrams passed to the agent's socket (control, markers, other
    /// sessions, other versions, or no room for the report).
    Passed,
    /// Data from before the last completed bulk: dropped.
    Superseded,
    /// Reports that found the ring buffer full (their datagram passed).
    ReportFull,
    /// Changes that found the changes ring full (hot standby).
    ChangesLost,
}

pub const XDP_COUNTERS: u32 = 11;

pub const XDP_COUNTER_NAMES: [&str; XDP_COUNTERS as usize] = [
    "datagrams",
    "applied",
    "stale",
    "malformed",
    "corrupt",
    "strangers",
    "map_full",
    "passed",
    "superseded",
    "report_full",
    "changes_lost",
];

/// What an incoming record does to the entry stored under its key.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Apply {
    /// Replace the stored entry (or insert: nothing stored).
    Replace,
    /// Same state again from a later datagram (a bulk resends unchanged
    /// entries): only the stamp moves.
    Refresh,
    /// Older or duplicate: leave it.
    Keep,
}

/// The external cache's rule (see the userspace `ftfw::apply` docs): a
/// record from another sender session than the stored stamp replaces it
/// (versions of different sessions are not comparable), as does a higher
/// version; at an equal version a later datagram refreshes the stamp.
#[inline(always)]
pub fn apply_rule(
    stored_session: u32,
    stored_seq: u32,
    stored_version: u64,
    session: u32,
    seq: u32,
    version: u64,
) -> Apply {
    if stored_session != session || version > stored_version {
        Apply::Replace
    } else if version == stored_version
        && seq != stored_seq
        && seq.wrapping_sub(stored_seq) < 1 << 31
    {
        Apply::Refresh
    } else {
        Apply::Keep
    }
}

#[cfg(feature = "user")]
mod user {
    unsafe impl aya::Pod for super::XdpConfig {}
    unsafe impl aya::Pod for super::PeerAddr {}
    unsafe impl aya::Pod for super::ExternalEntry {}
}

//! The conntrack event filter's maps: what the agent writes, what the socket
//! filter reads. See `ctsync-ebpf`'s `event_filter` for the matching rules.

use bytemuck::{Pod, Zeroable};

/// Array map (1 entry) holding the [`FilterConfig`].
pub const MAP_CONFIG: &str = "CT_FILTER_CONFIG";
/// LPM tries of source / destination prefixes, IPv4 (key data `[u8; 4]`).
pub const MAP_SRC4: &str = "CT_FILTER_SRC4";
pub const MAP_DST4: &str = "CT_FILTER_DST4";
/// LPM tries of source / destination prefixes, IPv6 (key data `[u8; 16]`).
pub const MAP_SRC6: &str = "CT_FILTER_SRC6";
pub const MAP_DST6: &str = "CT_FILTER_DST6";
/// Hash map zone (u16, host order) -> 1.
pub const MAP_ZONES: &str = "CT_FILTER_ZONES";
/// Hash map netlink port id (u32) -> 1: events caused by the agent's own
/// ctnetlink writes carry that port id in `nlmsg_pid`.
pub const MAP_SELF_PORTIDS: &str = "CT_FILTER_SELF";
/// Per-CPU array of u64 counters, indexed by [`Counter`].
pub const MAP_STATS: &str = "CT_FILTER_STATS";
/// The socket filter program's name in the object.
pub const PROG_EVENT_FILTER: &str = "event_filter";

pub const MAX_PREFIXES: u32 = 4096;
pub const MAX_ZONES: u32 = 1024;
pub const MAX_SELF_PORTIDS: u32 = 64;
pub const MAX_MARKS: usize = 8;

/// `FilterConfig::flags`.
pub mod flags {
    /// Address lists are accept lists (else ignore lists).
    pub const ADDR_ACCEPT: u32 = 1 << 0;
    /// The source list is not empty.
    pub const ADDR_SRC: u32 = 1 << 1;
    /// The destination list is not empty.
    pub const ADDR_DST: u32 = 1 << 2;
    /// The zone list is an accept list (else an ignore list).
    pub const ZONE_ACCEPT: u32 = 1 << 3;
    /// The zone list is not empty.
    pub const ZONE_ACTIVE: u32 = 1 << 4;
    /// The mark list is an accept list (else an ignore list).
    pub const MARK_ACCEPT: u32 = 1 << 5;
    /// The filter is loaded with a config (until then everything passes).
    pub const CONFIGURED: u32 = 1 << 31;
}

/// One mark rule: an event matches when `mark & mask == value`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, PartialEq, Eq, Debug, Default)]
pub struct MarkMatch {
    pub value: u32,
    pub mask: u32,
}

/// The filter's scalar configuration (one entry of [`MAP_CONFIG`]).
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, PartialEq, Eq, Debug, Default)]
pub struct FilterConfig {
    /// Bit `n` set: drop events of IP protocol `n`.
    pub drop_proto: [u64; 4],
    /// Bit `n` set: drop TCP events that carry TCP state `n`.
    pub drop_tcp_state: u32,
    /// `flags::*`.
    pub flags: u32,
    /// Number of valid entries in `marks` (0 = no mark filter).
    pub mark_count: u32,
    pub _pad: u32,
    pub marks: [MarkMatch; MAX_MARKS],
}

impl FilterConfig {
    pub fn drops_proto(&self, proto: u8) -> bool {
        self.drop_proto[usize::from(proto >> 6)] & (1u64 << (proto & 63)) != 0
    }
}

/// Indices into [`MAP_STATS`].
#[repr(u32)]
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Counter {
    /// Every message the filter saw.
    Seen = 0,
    /// Passed to the socket.
    Passed = 1,
    DroppedProto = 2,
    DroppedAddr = 3,
    DroppedState = 4,
    DroppedZone = 5,
    DroppedMark = 6,
    /// Caused by the agent's own writes.
    DroppedSelf = 7,
    /// Could not be parsed: passed up, so that userspace sees and counts it.
    Unparsed = 8,
}

pub const COUNTERS: u32 = 9;
pub const COUNTER_NAMES: [&str; COUNTERS as usize] = [
    "seen",
    "passed",
    "dropped_proto",
    "dropped_addr",
    "dropped_state",
    "dropped_zone",
    "dropped_mark",
    "dropped_self",
    "unparsed",
];

#[cfg(feature = "user")]
mod user {
    unsafe impl aya::Pod for super::FilterConfig {}
}

//! The conntrack entry as ctsync stores it: fixed size, no allocation.

use bytemuck::{Pod, Zeroable};

/// `AF_INET`, as in `Tuple::family`.
pub const AF_INET: u8 = 2;
/// `AF_INET6`, as in `Tuple::family`.
pub const AF_INET6: u8 = 10;

pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_DCCP: u8 = 33;
pub const IPPROTO_GRE: u8 = 47;
pub const IPPROTO_ICMPV6: u8 = 58;
pub const IPPROTO_SCTP: u8 = 132;
pub const IPPROTO_UDPLITE: u8 = 136;

/// One direction of a connection (40 bytes).
///
/// For IPv4 only the first 4 bytes of `src`/`dst` are used, the rest is zero,
/// so that two equal tuples are always equal byte for byte (the cache hashes
/// and compares raw bytes).
///
/// `src_port`/`dst_port` are network order. For ICMP/ICMPv6, `src_port` is the
/// echo id and `dst_port` holds type (high byte) and code (low byte) in host
/// order: `icmp_type()`/`icmp_code()` read them. For GRE they are the keys.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, PartialEq, Eq, Hash, Debug, Default)]
pub struct Tuple {
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub src_port: u16,
    pub dst_port: u16,
    /// `AF_INET` or `AF_INET6`.
    pub family: u8,
    /// IP protocol number.
    pub proto: u8,
    /// Conntrack zone (host order). In `CtRecord::orig` this is the entry's
    /// zone (`CTA_ZONE`); it is part of the key.
    pub zone: u16,
}

impl Tuple {
    pub fn is_icmp(&self) -> bool {
        self.proto == IPPROTO_ICMP || self.proto == IPPROTO_ICMPV6
    }
    pub fn icmp_type(&self) -> u8 {
        (self.dst_port >> 8) as u8
    }
    pub fn icmp_code(&self) -> u8 {
        self.dst_port as u8
    }
    pub fn set_icmp(&mut self, ty: u8, code: u8) {
        self.dst_port = (u16::from(ty) << 8) | u16::from(code);
    }
    /// Address length in bytes for this family (4 or 16).
    pub fn addr_len(&self) -> usize {
        if self.family == AF_INET6 { 16 } else { 4 }
    }
}

/// TCP state numbers, as in `enum tcp_conntrack` (`CTA_PROTOINFO_TCP_STATE`).
pub mod tcp_state {
    pub const NONE: u8 = 0;
    pub const SYN_SENT: u8 = 1;
    pub const SYN_RECV: u8 = 2;
    pub const ESTABLISHED: u8 = 3;
    pub const FIN_WAIT: u8 = 4;
    pub const CLOSE_WAIT: u8 = 5;
    pub const LAST_ACK: u8 = 6;
    pub const TIME_WAIT: u8 = 7;
    pub const CLOSE: u8 = 8;
    pub const SYN_SENT2: u8 = 9;
    /// Names as conntrack(8) prints them, indexed by state number.
    pub const NAMES: [&str; 10] = [
        "NONE",
        "SYN_SENT",
        "SYN_RECV",
        "ESTABLISHED",
        "FIN_WAIT",
        "CLOSE_WAIT",
        "LAST_ACK",
        "TIME_WAIT",
        "CLOSE",
        "SYN_SENT2",
    ];
}

/// SCTP state numbers, as in `enum sctp_conntrack` (`CTA_PROTOINFO_SCTP_STATE`).
pub mod sctp_state {
    pub const NONE: u8 = 0;
    pub const CLOSED: u8 = 1;
    pub const COOKIE_WAIT: u8 = 2;
    pub const COOKIE_ECHOED: u8 = 3;
    pub const ESTABLISHED: u8 = 4;
    pub const SHUTDOWN_SENT: u8 = 5;
    pub const SHUTDOWN_RECD: u8 = 6;
    pub const SHUTDOWN_ACK_SENT: u8 = 7;
    pub const HEARTBEAT_SENT: u8 = 8;
}

/// Flags of `CtRecord::flags` (host order).
pub mod record_flags {
    /// `CtRecord::labels` holds `CTA_LABELS`.
    pub const HAS_LABELS: u16 = 1 << 0;
    /// `proto_state` and the TCP fields were present (`CTA_PROTOINFO`).
    pub const HAS_PROTOINFO: u16 = 1 << 1;
    /// A `CtExt` (NAT sequence adjustment, helper and/or SCTP verification
    /// tags) belongs to the entry.
    pub const HAS_EXT: u16 = 1 << 2;
    /// `timeout` was present (`CTA_TIMEOUT`).
    pub const HAS_TIMEOUT: u16 = 1 << 3;
    /// `mark` was present (`CTA_MARK`).
    pub const HAS_MARK: u16 = 1 << 4;
    /// `CTA_SECMARK`/`CTA_USE` etc. are not kept; this marks an entry whose
    /// reply tuple was present (always so for kernel messages).
    pub const HAS_REPLY: u16 = 1 << 5;
}

/// A conntrack entry's replicated state (128 bytes, fixed size).
///
/// Keyed by `orig` (which includes the zone). Rare, larger attributes (NAT
/// sequence adjustment, helper name, SCTP verification tags) live in a separate [`CtExt`] so that the
/// common case stays small.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, PartialEq, Eq, Debug, Default)]
pub struct CtRecord {
    /// Original direction (and the zone): the key.
    pub orig: Tuple,
    /// Reply direction: differs from the inverted original under NAT.
    pub reply: Tuple,
    /// `CTA_STATUS` bits (host order), `IPS_*`.
    pub status: u32,
    /// Remaining lifetime in seconds when the state was read (host order).
    pub timeout: u32,
    /// `CTA_MARK` (host order).
    pub mark: u32,
    /// Kernel's conntrack id (`CTA_ID`, host order); informational only.
    pub id: u32,
    /// `CTA_LABELS`, 128 bits as the kernel stores them.
    pub labels: [u8; 16],
    /// Change counter: a higher version is newer state of the same key.
    pub version: u64,
    /// `record_flags::*`.
    pub flags: u16,
    /// TCP: `tcp_state`; SCTP: `sctp_conntrack`; DCCP: `ct_dccp_states`.
    pub proto_state: u8,
    /// TCP window scale, original direction.
    pub tcp_wscale_orig: u8,
    /// TCP window scale, reply direction.
    pub tcp_wscale_reply: u8,
    /// TCP flags (`IP_CT_TCP_FLAG_*`), original direction.
    pub tcp_flags_orig: u8,
    /// TCP flags, reply direction.
    pub tcp_flags_reply: u8,
    /// DCCP role (original direction), 0 otherwise.
    pub dccp_role: u8,
}

/// NAT sequence adjustment for one direction (`CTA_NAT_SEQ_ADJ_*`), host order.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, PartialEq, Eq, Debug, Default)]
pub struct NatSeq {
    pub correction_pos: u32,
    pub offset_before: u32,
    pub offset_after: u32,
}

/// The rare part of an entry: NAT sequence adjustment, helper and SCTP
/// verification tags (48 bytes).
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, PartialEq, Eq, Debug, Default)]
pub struct CtExt {
    /// `[original, reply]`; all zero when the entry has none.
    pub nat_seq: [NatSeq; 2],
    /// Helper name (`CTA_HELP_NAME`), NUL padded; empty when none.
    pub helper: [u8; 16],
    /// SCTP verification tags `[original, reply]`
    /// (`CTA_PROTOINFO_SCTP_VTAG_ORIGINAL`/`_REPLY`, host order); zero for
    /// other protocols and for a direction whose tag the kernel has not
    /// learnt yet.
    pub sctp_vtag: [u32; 2],
}

impl CtExt {
    pub fn is_empty(&self) -> bool {
        *self == CtExt::default()
    }
    /// The helper name, without its NUL padding.
    pub fn helper_name(&self) -> &[u8] {
        let end = self
            .helper
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(self.helper.len());
        &self.helper[..end]
    }
}

const _: () = assert!(core::mem::size_of::<Tuple>() == 40);
const _: () = assert!(core::mem::size_of::<CtRecord>() == 128);
const _: () = assert!(core::mem::size_of::<CtExt>() == 48);
const _: () = assert!(core::mem::offset_of!(CtExt, helper) == 24);
const _: () = assert!(core::mem::offset_of!(CtExt, sctp_vtag) == 40);

#[cfg(feature = "user")]
mod user {
    unsafe impl aya::Pod for super::Tuple {}
    unsafe impl aya::Pod for super::CtRecord {}
}

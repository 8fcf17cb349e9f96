//! Netlink, nfnetlink and ctnetlink numbers, as in the kernel's UAPI headers
//! (`linux/netlink.h`, `linux/netfilter/nfnetlink.h`,
//! `linux/netfilter/nfnetlink_conntrack.h`, `nf_conntrack_common.h`,
//! `nf_conntrack_tcp.h`). Kept here rather than taken from `libc` so that the
//! whole wire format is visible in one place and checked by the tests.

/// `sizeof(struct nlmsghdr)`.
pub const NLMSG_HDRLEN: usize = 16;
/// `sizeof(struct nlattr)`.
pub const NLA_HDRLEN: usize = 4;
/// `sizeof(struct nfgenmsg)`.
pub const NFGENMSG_LEN: usize = 4;
/// `sizeof(struct nlmsgerr)` without extended ACK data: error code + the
/// offending request's header.
pub const NLMSGERR_LEN: usize = 4 + NLMSG_HDRLEN;

/// `NLMSG_ALIGN`/`NLA_ALIGN`: netlink pads messages and attributes to 4 bytes.
pub const fn align4(len: usize) -> usize {
    (len + 3) & !3
}

// Control message types (linux/netlink.h).
pub const NLMSG_NOOP: u16 = 1;
pub const NLMSG_ERROR: u16 = 2;
pub const NLMSG_DONE: u16 = 3;
pub const NLMSG_OVERRUN: u16 = 4;

// nlmsg_flags (linux/netlink.h).
pub const NLM_F_REQUEST: u16 = 0x001;
pub const NLM_F_MULTI: u16 = 0x002;
pub const NLM_F_ACK: u16 = 0x004;
/// Set on dump replies when the table changed during the dump.
pub const NLM_F_DUMP_INTR: u16 = 0x010;
pub const NLM_F_DUMP_FILTERED: u16 = 0x020;
// For GET requests.
pub const NLM_F_ROOT: u16 = 0x100;
pub const NLM_F_MATCH: u16 = 0x200;
pub const NLM_F_DUMP: u16 = NLM_F_ROOT | NLM_F_MATCH;
// For NEW requests (the same bits as ROOT/MATCH, meaning differs by type).
pub const NLM_F_REPLACE: u16 = 0x100;
pub const NLM_F_EXCL: u16 = 0x200;
pub const NLM_F_CREATE: u16 = 0x400;

/// Attribute type flags: the kernel sets them on some attributes (nests
/// carry `NLA_F_NESTED`), and the type proper is what remains.
pub const NLA_F_NESTED: u16 = 0x8000;
pub const NLA_F_NET_BYTEORDER: u16 = 0x4000;
pub const NLA_TYPE_MASK: u16 = !(NLA_F_NESTED | NLA_F_NET_BYTEORDER);

// nfnetlink (linux/netfilter/nfnetlink.h).
pub const NFNETLINK_V0: u8 = 0;
pub const NFNL_SUBSYS_CTNETLINK: u8 = 1;
/// `AF_UNSPEC` in `nfgenmsg.nfgen_family`: a dump of every family.
pub const AF_UNSPEC: u8 = 0;

// enum cntl_msg_types.
pub const IPCTNL_MSG_CT_NEW: u8 = 0;
pub const IPCTNL_MSG_CT_GET: u8 = 1;
pub const IPCTNL_MSG_CT_DELETE: u8 = 2;

/// `nlmsg_type` of a ctnetlink message: subsystem in the high byte.
pub const fn ct_msg_type(msg: u8) -> u16 {
    ((NFNL_SUBSYS_CTNETLINK as u16) << 8) | msg as u16
}

// enum ctattr_type.
pub const CTA_TUPLE_ORIG: u16 = 1;
pub const CTA_TUPLE_REPLY: u16 = 2;
pub const CTA_STATUS: u16 = 3;
pub const CTA_PROTOINFO: u16 = 4;
pub const CTA_HELP: u16 = 5;
pub const CTA_NAT_SRC: u16 = 6;
pub const CTA_TIMEOUT: u16 = 7;
pub const CTA_MARK: u16 = 8;
pub const CTA_COUNTERS_ORIG: u16 = 9;
pub const CTA_COUNTERS_REPLY: u16 = 10;
pub const CTA_USE: u16 = 11;
pub const CTA_ID: u16 = 12;
pub const CTA_NAT_DST: u16 = 13;
pub const CTA_TUPLE_MASTER: u16 = 14;
pub const CTA_SEQ_ADJ_ORIG: u16 = 15;
pub const CTA_SEQ_ADJ_REPLY: u16 = 16;
pub const CTA_SECMARK: u16 = 17;
pub const CTA_ZONE: u16 = 18;
pub const CTA_SECCTX: u16 = 19;
pub const CTA_TIMESTAMP: u16 = 20;
pub const CTA_MARK_MASK: u16 = 21;
pub const CTA_LABELS: u16 = 22;
pub const CTA_LABELS_MASK: u16 = 23;

// enum ctattr_tuple.
pub const CTA_TUPLE_IP: u16 = 1;
pub const CTA_TUPLE_PROTO: u16 = 2;
pub const CTA_TUPLE_ZONE: u16 = 3;

// enum ctattr_ip.
pub const CTA_IP_V4_SRC: u16 = 1;
pub const CTA_IP_V4_DST: u16 = 2;
pub const CTA_IP_V6_SRC: u16 = 3;
pub const CTA_IP_V6_DST: u16 = 4;

// enum ctattr_l4proto.
pub const CTA_PROTO_NUM: u16 = 1;
pub const CTA_PROTO_SRC_PORT: u16 = 2;
pub const CTA_PROTO_DST_PORT: u16 = 3;
pub const CTA_PROTO_ICMP_ID: u16 = 4;
pub const CTA_PROTO_ICMP_TYPE: u16 = 5;
pub const CTA_PROTO_ICMP_CODE: u16 = 6;
pub const CTA_PROTO_ICMPV6_ID: u16 = 7;
pub const CTA_PROTO_ICMPV6_TYPE: u16 = 8;
pub const CTA_PROTO_ICMPV6_CODE: u16 = 9;

// enum ctattr_protoinfo.
pub const CTA_PROTOINFO_TCP: u16 = 1;
pub const CTA_PROTOINFO_DCCP: u16 = 2;
pub const CTA_PROTOINFO_SCTP: u16 = 3;

// enum ctattr_protoinfo_tcp.
pub const CTA_PROTOINFO_TCP_STATE: u16 = 1;
pub const CTA_PROTOINFO_TCP_WSCALE_ORIGINAL: u16 = 2;
pub const CTA_PROTOINFO_TCP_WSCALE_REPLY: u16 = 3;
pub const CTA_PROTOINFO_TCP_FLAGS_ORIGINAL: u16 = 4;
pub const CTA_PROTOINFO_TCP_FLAGS_REPLY: u16 = 5;

// enum ctattr_protoinfo_dccp.
pub const CTA_PROTOINFO_DCCP_STATE: u16 = 1;
pub const CTA_PROTOINFO_DCCP_ROLE: u16 = 2;
pub const CTA_PROTOINFO_DCCP_HANDSHAKE_SEQ: u16 = 3;

// enum ctattr_protoinfo_sctp.
pub const CTA_PROTOINFO_SCTP_STATE: u16 = 1;
pub const CTA_PROTOINFO_SCTP_VTAG_ORIGINAL: u16 = 2;
pub const CTA_PROTOINFO_SCTP_VTAG_REPLY: u16 = 3;

// enum ctattr_nat.
pub const CTA_NAT_V4_MINIP: u16 = 1;
pub const CTA_NAT_V4_MAXIP: u16 = 2;
pub const CTA_NAT_PROTO: u16 = 3;
pub const CTA_NAT_V6_MINIP: u16 = 4;
pub const CTA_NAT_V6_MAXIP: u16 = 5;

// enum ctattr_protonat.
pub const CTA_PROTONAT_PORT_MIN: u16 = 1;
pub const CTA_PROTONAT_PORT_MAX: u16 = 2;

// enum ctattr_seqadj.
pub const CTA_SEQADJ_CORRECTION_POS: u16 = 1;
pub const CTA_SEQADJ_OFFSET_BEFORE: u16 = 2;
pub const CTA_SEQADJ_OFFSET_AFTER: u16 = 3;

// enum ctattr_help.
pub const CTA_HELP_NAME: u16 = 1;

/// `NF_CT_HELPER_NAME_LEN`: helper names are at most 15 bytes plus NUL.
pub const NF_CT_HELPER_NAME_LEN: usize = 16;
/// `NF_CT_LABELS_MAX_SIZE`: 128 label bits.
pub const NF_CT_LABELS_MAX_SIZE: usize = 16;

/// `IPS_*` bits of `CTA_STATUS` (enum ip_conntrack_status).
pub mod ips {
    pub const EXPECTED: u32 = 1 << 0;
    pub const SEEN_REPLY: u32 = 1 << 1;
    pub const ASSURED: u32 = 1 << 2;
    pub const CONFIRMED: u32 = 1 << 3;
    pub const SRC_NAT: u32 = 1 << 4;
    pub const DST_NAT: u32 = 1 << 5;
    pub const NAT_MASK: u32 = SRC_NAT | DST_NAT;
    pub const SEQ_ADJUST: u32 = 1 << 6;
    pub const SRC_NAT_DONE: u32 = 1 << 7;
    pub const DST_NAT_DONE: u32 = 1 << 8;
    pub const NAT_DONE_MASK: u32 = SRC_NAT_DONE | DST_NAT_DONE;
    pub const DYING: u32 = 1 << 9;
    pub const FIXED_TIMEOUT: u32 = 1 << 10;
    pub const TEMPLATE: u32 = 1 << 11;
    pub const UNTRACKED: u32 = 1 << 12;
    pub const HELPER: u32 = 1 << 13;
    pub const OFFLOAD: u32 = 1 << 14;
    pub const HW_OFFLOAD: u32 = 1 << 15;
    /// `IPS_UNCHANGEABLE_MASK`: bits userspace cannot set or clear. Since
    /// Linux 4.12 the kernel silently ignores them in `CTA_STATUS`; older
    /// kernels answered `EBUSY` when some of them differed.
    pub const UNCHANGEABLE_MASK: u32 = NAT_DONE_MASK
        | NAT_MASK
        | EXPECTED
        | CONFIRMED
        | DYING
        | SEQ_ADJUST
        | TEMPLATE
        | UNTRACKED
        | OFFLOAD
        | HW_OFFLOAD;
    /// Bits above `__IPS_MAX_BIT` (16) are not status bits at all.
    pub const ALL: u32 = (1 << 16) - 1;
}

/// `IP_CT_TCP_FLAG_*`: per-direction flags of the TCP tracker
/// (`struct nf_ct_tcp_flags`).
pub mod tcp_flags {
    pub const WINDOW_SCALE: u8 = 0x01;
    pub const SACK_PERM: u8 = 0x02;
    pub const CLOSE_INIT: u8 = 0x04;
    /// Window tracking off for this direction: only out-of-window RSTs are
    /// invalid. conntrackd sets it on entries it commits.
    pub const BE_LIBERAL: u8 = 0x08;
    pub const DATA_UNACKNOWLEDGED: u8 = 0x10;
    pub const MAXACK_SET: u8 = 0x20;
    pub const EXP_CHALLENGE_ACK: u8 = 0x40;
    pub const SIMULTANEOUS_OPEN: u8 = 0x80;
}

/// DCCP roles (`CT_DCCP_ROLE_*`), as in `CTA_PROTOINFO_DCCP_ROLE`.
pub mod dccp_role {
    pub const CLIENT: u8 = 0;
    pub const SERVER: u8 = 1;
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    /// Values of the enumerators and `#define`s of a C header (what these
    /// UAPI headers use: plain counting, literals, earlier names, shifts).
    fn c_constants(src: &str, out: &mut HashMap<String, i64>) {
        let mut text = String::new();
        let mut rest = src;
        while let Some(i) = rest.find("/*") {
            text.push_str(&rest[..i]);
            rest = rest[i..].find("*/").map_or("", |j| &rest[i + j + 2..]);
        }
        text.push_str(rest);
        fn value(v: &str, out: &HashMap<String, i64>) -> Option<i64> {
            let v = v
                .trim()
                .trim_start_matches('(')
                .trim_end_matches(')')
                .trim();
            if v.contains('|') {
                return v
                    .split('|')
                    .try_fold(0, |acc, part| Some(acc | value(part, out)?));
            }
            if let Some((a, b)) = v.split_once("<<") {
                return Some(value(a, out)? << value(b, out)?);
            }
            if let Some(h) = v.strip_prefix("0x") {
                return i64::from_str_radix(h, 16).ok();
            }
            v.parse().ok().or_else(|| out.get(v).copied())
        }
        for line in text.lines() {
            let mut w = line.split_whitespace();
            if let (Some("#define"), Some(name)) = (w.next(), w.next())
                && let Some(v) = value(&w.collect::<Vec<_>>().join(" "), out)
            {
                out.insert(name.to_string(), v);
            }
        }
        let mut rest = text.as_str();
        while let Some(i) = rest.find("enum") {
            rest = &rest[i + 4..];
            let (Some(open), Some(close)) = (rest.find('{'), rest.find('}')) else {
                break;
            };
            if open > close {
                continue;
            }
            let body: String = rest[open + 1..close]
                .lines()
                .filter(|l| !l.trim_start().starts_with('#'))
                .collect::<Vec<_>>()
                .join(" ");
            let mut n: i64 = -1;
            for item in body.split(',') {
                let item = item.trim();
                if item.is_empty() {
                    continue;
                }
                let name = match item.split_once('=') {
                    Some((k, v)) => {
                        let Some(v) = value(v, out) else { continue };
                        n = v;
                        k.trim()
                    }
                    None => {
                        n += 1;
                        item
                    }
                };
                out.insert(name.to_string(), n);
            }
            rest = &rest[close..];
        }
    }

    /// The numbers above against the kernel's UAPI headers (linux-libc-dev,
    /// installed by `cargo xtask setup`): the attribute enums are easy to
    /// miscount by hand, and a miscount is symmetric, so round trips cannot
    /// see it.
    #[test]
    fn consts_match_uapi_headers() {
        let mut c = HashMap::new();
        for h in [
            "/usr/include/linux/netlink.h",
            "/usr/include/linux/netfilter/nfnetlink.h",
            "/usr/include/linux/netfilter/nfnetlink_conntrack.h",
            "/usr/include/linux/netfilter/nf_conntrack_common.h",
            "/usr/include/linux/netfilter/nf_conntrack_tcp.h",
        ] {
            let src = std::fs::read_to_string(h).unwrap_or_else(|e| {
                panic!("{h}: {e}: install linux-libc-dev (`cargo xtask setup` does)")
            });
            c_constants(&src, &mut c);
        }
        macro_rules! same {
            ($($name:ident),* $(,)?) => {$(
                assert_eq!(c.get(stringify!($name)).copied(), Some($name as i64), stringify!($name));
            )*};
        }
        same!(
            NLMSG_NOOP,
            NLMSG_ERROR,
            NLMSG_DONE,
            NLMSG_OVERRUN,
            NLM_F_REQUEST,
            NLM_F_MULTI,
            NLM_F_ACK,
            NLM_F_DUMP_INTR,
            NLM_F_DUMP_FILTERED,
            NLM_F_ROOT,
            NLM_F_MATCH,
            NLM_F_REPLACE,
            NLM_F_EXCL,
            NLM_F_CREATE,
            NLA_F_NESTED,
            NLA_F_NET_BYTEORDER,
            NFNETLINK_V0,
            NFNL_SUBSYS_CTNETLINK,
            IPCTNL_MSG_CT_NEW,
            IPCTNL_MSG_CT_GET,
            IPCTNL_MSG_CT_DELETE,
            CTA_TUPLE_ORIG,
            CTA_TUPLE_REPLY,
            CTA_STATUS,
            CTA_PROTOINFO,
            CTA_HELP,
            CTA_NAT_SRC,
            CTA_TIMEOUT,
            CTA_MARK,
            CTA_COUNTERS_ORIG,
            CTA_COUNTERS_REPLY,
            CTA_USE,
            CTA_ID,
            CTA_NAT_DST,
            CTA_TUPLE_MASTER,
            CTA_SEQ_ADJ_ORIG,
            CTA_SEQ_ADJ_REPLY,
            CTA_SECMARK,
            CTA_ZONE,
            CTA_SECCTX,
            CTA_TIMESTAMP,
            CTA_MARK_MASK,
            CTA_LABELS,
            CTA_LABELS_MASK,
            CTA_TUPLE_IP,
            CTA_TUPLE_PROTO,
            CTA_TUPLE_ZONE,
            CTA_IP_V4_SRC,
            CTA_IP_V4_DST,
            CTA_IP_V6_SRC,
            CTA_IP_V6_DST,
            CTA_PROTO_NUM,
            CTA_PROTO_SRC_PORT,
            CTA_PROTO_DST_PORT,
            CTA_PROTO_ICMP_ID,
            CTA_PROTO_ICMP_TYPE,
            CTA_PROTO_ICMP_CODE,
            CTA_PROTO_ICMPV6_ID,
            CTA_PROTO_ICMPV6_TYPE,
            CTA_PROTO_ICMPV6_CODE,
            CTA_PROTOINFO_TCP,
            CTA_PROTOINFO_DCCP,
            CTA_PROTOINFO_SCTP,
            CTA_PROTOINFO_TCP_STATE,
            CTA_PROTOINFO_TCP_WSCALE_ORIGINAL,
            CTA_PROTOINFO_TCP_WSCALE_REPLY,
            CTA_PROTOINFO_TCP_FLAGS_ORIGINAL,
            CTA_PROTOINFO_TCP_FLAGS_REPLY,
            CTA_PROTOINFO_DCCP_STATE,
            CTA_PROTOINFO_DCCP_ROLE,
            CTA_PROTOINFO_DCCP_HANDSHAKE_SEQ,
            CTA_PROTOINFO_SCTP_STATE,
            CTA_PROTOINFO_SCTP_VTAG_ORIGINAL,
            CTA_PROTOINFO_SCTP_VTAG_REPLY,
            CTA_NAT_V4_MINIP,
            CTA_NAT_V4_MAXIP,
            CTA_NAT_PROTO,
            CTA_NAT_V6_MINIP,
            CTA_NAT_V6_MAXIP,
            CTA_PROTONAT_PORT_MIN,
            CTA_PROTONAT_PORT_MAX,
            CTA_SEQADJ_CORRECTION_POS,
            CTA_SEQADJ_OFFSET_BEFORE,
            CTA_SEQADJ_OFFSET_AFTER,
            CTA_HELP_NAME,
        );
        macro_rules! same_prefixed {
            ($prefix:literal, $module:ident: $($name:ident),* $(,)?) => {$(
                let key = concat!($prefix, stringify!($name));
                assert_eq!(c.get(key).copied(), Some($module::$name as i64), "{key}");
            )*};
        }
        same_prefixed!("IPS_", ips: EXPECTED, SEEN_REPLY, ASSURED, CONFIRMED, SRC_NAT, DST_NAT,
            NAT_MASK, SEQ_ADJUST, SRC_NAT_DONE, DST_NAT_DONE, NAT_DONE_MASK, DYING, FIXED_TIMEOUT,
            TEMPLATE, UNTRACKED, HELPER, OFFLOAD, HW_OFFLOAD, UNCHANGEABLE_MASK);
        same_prefixed!("IP_CT_TCP_FLAG_", tcp_flags: WINDOW_SCALE, SACK_PERM, CLOSE_INIT,
            BE_LIBERAL, DATA_UNACKNOWLEDGED, MAXACK_SET);
        assert_eq!(
            c.get("IP_CT_EXP_CHALLENGE_ACK").copied(),
            Some(tcp_flags::EXP_CHALLENGE_ACK as i64)
        );
        assert_eq!(
            c.get("IP_CT_TCP_SIMULTANEOUS_OPEN").copied(),
            Some(tcp_flags::SIMULTANEOUS_OPEN as i64)
        );
        assert_eq!(c.get("__IPS_MAX_BIT").copied(), Some(16));
    }
}

//! Conntrack entries for people and scripts: a conntrack(8)-like text line and
//! a JSON form. The JSON form is what `ctsync dump --json` prints and what the
//! lab tests compare against the kernel table.

use std::{
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use ctsync_common::{
    CtExt, CtRecord, Tuple,
    conntrack::{AF_INET6, IPPROTO_TCP, record_flags, tcp_state},
};
use serde::{Deserialize, Serialize};

/// `IPS_SEEN_REPLY`.
pub const IPS_SEEN_REPLY: u32 = 1 << 1;
/// `IPS_ASSURED`.
pub const IPS_ASSURED: u32 = 1 << 2;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TupleView {
    pub src: IpAddr,
    pub dst: IpAddr,
    /// Ports (host order) for TCP/UDP/SCTP/DCCP/UDPLITE, GRE keys for GRE.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub sport: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub dport: Option<u16>,
    /// ICMP/ICMPv6 type, code, id.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub icmp: Option<(u8, u8, u16)>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryView {
    pub family: String,
    pub proto: u8,
    pub orig: TupleView,
    pub reply: TupleView,
    pub zone: u16,
    pub mark: u32,
    pub status: u32,
    pub timeout: u32,
    /// Protocol state name (TCP) or number (SCTP/DCCP), when known.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub state: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub labels: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub helper: Option<String>,
    /// SCTP verification tags `[original, reply]`, when the entry has any.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub sctp_vtag: Option<[u32; 2]>,
    pub id: u32,
}

fn addr(t: &Tuple, a: &[u8; 16]) -> IpAddr {
    if t.family == AF_INET6 {
        IpAddr::V6(Ipv6Addr::from(*a))
    } else {
        IpAddr::V4(Ipv4Addr::new(a[0], a[1], a[2], a[3]))
    }
}

fn has_ports(proto: u8) -> bool {
    matches!(proto, 6 | 17 | 33 | 47 | 132 | 136)
}

impl TupleView {
    pub fn new(t: &Tuple) -> TupleView {
        let ports = has_ports(t.proto);
        TupleView {
            src: addr(t, &t.src),
            dst: addr(t, &t.dst),
            sport: ports.then(|| u16::from_be(t.src_port)),
            dport: ports.then(|| u16::from_be(t.dst_port)),
            icmp: t
                .is_icmp()
                .then(|| (t.icmp_type(), t.icmp_code(), u16::from_be(t.src_port))),
        }
    }
}

impl EntryView {
    pub fn new(r: &CtRecord, ext: Option<&CtExt>) -> EntryView {
        let state = (r.flags & record_flags::HAS_PROTOINFO != 0).then(|| {
            if r.orig.proto == IPPROTO_TCP {
                tcp_state::NAMES
                    .get(usize::from(r.proto_state))
                    .map_or_else(|| r.proto_state.to_string(), |s| s.to_string())
            } else {
                r.proto_state.to_string()
            }
        });
        let labels = (r.flags & record_flags::HAS_LABELS != 0 && r.labels != [0; 16]).then(|| {
            r.labels.iter().fold(String::new(), |mut s, b| {
                let _ = write!(s, "{b:02x}");
                s
            })
        });
        let helper = ext
            .map(|e| e.helper_name())
            .filter(|h| !h.is_empty())
            .map(|h| String::from_utf8_lossy(h).into_owned());
        let sctp_vtag = ext.map(|e| e.sctp_vtag).filter(|t| *t != [0; 2]);
        EntryView {
            family: if r.orig.family == AF_INET6 {
                "ipv6"
            } else {
                "ipv4"
            }
            .into(),
            proto: r.orig.proto,
            orig: TupleView::new(&r.orig),
            reply: TupleView::new(&r.reply),
            zone: r.orig.zone,
            mark: r.mark,
            status: r.status,
            timeout: r.timeout,
            state,
            labels,
            helper,
            sctp_vtag,
            id: r.id,
        }
    }

    /// One line in the spirit of `conntrack -L`.
    pub fn to_line(&self) -> String {
        let mut s = format!("{:<5} {:<3} {:>7} ", self.family, self.proto, self.timeout);
        if let Some(st) = &self.state {
            let _ = write!(s, "{st} ");
        }
        for t in [&self.orig, &self.reply] {
            let _ = write!(s, "src={} dst={} ", t.src, t.dst);
            if let (Some(sp), Some(dp)) = (t.sport, t.dport) {
                let _ = write!(s, "sport={sp} dport={dp} ");
            }
            if let Some((ty, code, id)) = t.icmp {
                let _ = write!(s, "type={ty} code={code} id={id} ");
            }
        }
        if self.status & IPS_SEEN_REPLY == 0 {
            s.push_str("[UNREPLIED] ");
        }
        if self.status & IPS_ASSURED != 0 {
            s.push_str("[ASSURED] ");
        }
        let _ = write!(s, "mark={} zone={}", self.mark, self.zone);
        if let Some(h) = &self.helper {
            let _ = write!(s, " helper={h}");
        }
        if let Some(l) = &self.labels {
            let _ = write!(s, " labels=0x{l}");
        }
        if let Some([o, r]) = self.sctp_vtag {
            let _ = write!(s, " vtag_orig=0x{o:08x} vtag_reply=0x{r:08x}");
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ctsync_common::conntrack::{AF_INET, IPPROTO_SCTP};

    #[test]
    fn sctp_tags_are_shown_when_present() {
        let mut r = CtRecord::default();
        r.orig.family = AF_INET;
        r.orig.proto = IPPROTO_SCTP;
        r.reply = r.orig;
        let ext = CtExt {
            sctp_vtag: [0x0102_0304, 0xa0b0_c0d0],
            ..Default::default()
        };
        let v = EntryView::new(&r, Some(&ext));
        let j = serde_json::to_value(&v).unwrap();
        assert_eq!(
            j["sctp_vtag"],
            serde_json::json!([0x0102_0304u32, 0xa0b0_c0d0u32])
        );
        assert!(
            v.to_line()
                .ends_with(" vtag_orig=0x01020304 vtag_reply=0xa0b0c0d0"),
            "{}",
            v.to_line()
        );
        let none = serde_json::to_value(EntryView::new(&r, None)).unwrap();
        assert!(none.get("sctp_vtag").is_none());
    }
}

//! Replication latency from the kernel's own clocks: with
//! `net.netfilter.nf_conntrack_timestamp = 1` every entry carries the
//! wall-clock time it was created (`CTA_TIMESTAMP_START`, ns). Entries the
//! primary's kernel created and the backup's daemon then wrote into the
//! backup's table carry one stamp on each side; namespaces share the
//! clock, so their difference is the time from the kernel event to the
//! entry being present on the backup, whatever daemon moved it.

use std::{collections::HashMap, fs::File, os::fd::AsRawFd, path::Path};

use anyhow::{Context, bail};
use ctsync::{
    ctnetlink::{self, Decoded, consts::CTA_TIMESTAMP},
    nlsock::NlSocket,
};
use ctsync_common::{CtExt, CtRecord, Tuple};

/// `CTA_TIMESTAMP_START`, nested in `CTA_TIMESTAMP` (big-endian u64, ns).
const CTA_TIMESTAMP_START: u16 = 1;
/// `NLA_F_NESTED | NLA_F_NET_BYTEORDER`.
const NLA_TYPE_MASK: u16 = 0x3fff;
/// struct nlmsghdr + struct nfgenmsg.
const PAYLOAD_OFFSET: usize = 16 + 4;

/// A netlink socket opened inside the named network namespace (as `ip
/// netns` names it). Sockets stay in the namespace they were opened in,
/// so the calling thread returns to its own namespace afterwards.
pub fn socket_in(netns: &str) -> anyhow::Result<NlSocket> {
    let own = File::open("/proc/thread-self/ns/net").context("opening own network namespace")?;
    let path = Path::new("/run/netns").join(netns);
    let target = File::open(&path).with_context(|| {
        format!(
            "opening {}: no network namespace {netns:?} (see `ip netns list`)",
            path.display()
        )
    })?;
    setns(&target)
        .with_context(|| format!("entering network namespace {netns:?} (run as root)"))?;
    let sock = NlSocket::open(0, false);
    setns(&own).context("returning to own network namespace")?;
    sock.context("opening a ctnetlink socket")
}

fn setns(ns: &File) -> std::io::Result<()> {
    // SAFETY: plain syscall on a valid descriptor; moves this thread only.
    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Creation stamps (ns since the epoch) of the entries in `sock`'s table,
/// by original tuple, and how many entries had none (timestamps were off
/// when they were created).
pub fn dump(sock: &NlSocket) -> anyhow::Result<(HashMap<Tuple, u64>, u64)> {
    let mut req = Vec::with_capacity(64);
    ctnetlink::encode::dump_request(&mut req, 1);
    sock.send(&req).context("sending the table dump request")?;
    let mut buf = vec![0u8; 1 << 20];
    let (mut rec, mut ext) = (CtRecord::default(), CtExt::default());
    let mut stamps = HashMap::new();
    let mut unstamped = 0;
    loop {
        let n = sock.recv(&mut buf).context("reading the table dump")?;
        for msg in ctnetlink::messages(&buf[..n]) {
            let msg = msg.context("malformed message in the table dump")?;
            match ctnetlink::decode(msg, &mut rec, &mut ext)? {
                Decoded::Conntrack { .. } => match start(msg) {
                    Some(ns) => {
                        stamps.insert(rec.orig, ns);
                    }
                    None => unstamped += 1,
                },
                Decoded::Done => return Ok((stamps, unstamped)),
                Decoded::Error { errno } if errno != 0 => {
                    bail!(
                        "table dump failed: {}",
                        std::io::Error::from_raw_os_error(errno)
                    )
                }
                _ => {}
            }
        }
    }
}

/// `CTA_TIMESTAMP_START` of one ctnetlink message, if it has one.
pub fn start(msg: &[u8]) -> Option<u64> {
    let ts = attrs(msg.get(PAYLOAD_OFFSET..)?).find(|(t, _)| *t == CTA_TIMESTAMP)?;
    let (_, v) = attrs(ts.1).find(|(t, _)| *t == CTA_TIMESTAMP_START)?;
    Some(u64::from_be_bytes(v.get(..8)?.try_into().ok()?))
}

/// (type, value) of the netlink attributes in `buf`, up to the first that
/// does not fit.
fn attrs(mut buf: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        let len = u16::from_ne_bytes(buf.get(..2)?.try_into().ok()?) as usize;
        let ty = u16::from_ne_bytes(buf.get(2..4)?.try_into().ok()?) & NLA_TYPE_MASK;
        let value = buf.get(4..len)?;
        buf = buf.get((len + 3) & !3..).unwrap_or(&[]);
        Some((ty, value))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_start_stamp_among_other_attributes() {
        let mut msg = vec![0u8; PAYLOAD_OFFSET];
        // CTA_STATUS, then CTA_TIMESTAMP { START = 0x0102030405060708 }.
        msg.extend_from_slice(&[8, 0, 3, 0, 0, 0, 0, 8]);
        msg.extend_from_slice(&[16, 0, 20, 0x80, 12, 0, 1, 0]);
        msg.extend_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(start(&msg), Some(0x0102030405060708));
        // Without the attribute, and cut short inside it.
        assert_eq!(start(&msg[..PAYLOAD_OFFSET + 8]), None);
        assert_eq!(start(&msg[..msg.len() - 2]), None);
    }
}

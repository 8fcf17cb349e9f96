//! The embedded eBPF objects.

/// The event filter (socket filter on the ctnetlink event socket).
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/ctsync"));
/// The XDP receive path.
pub static XDP_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/ctsync-xdp"));

//! Types shared by the kernel side (`ctsync-ebpf`) and the agent (`ctsync`).
//!
//! Everything here is `#[repr(C)]`, `Pod` and free of implicit padding, so that
//! the same bytes are a BPF map value, a cache slot and (later) a wire record.
//! Multi-byte protocol fields (addresses, ports) are kept in network byte order,
//! exactly as ctnetlink carries them; host-order integers say so in their names.
#![no_std]

pub mod conntrack;
pub mod filter;
pub mod wire;
pub mod xdp;

pub use conntrack::{CtExt, CtRecord, NatSeq, Tuple};
pub use filter::{Counter, FilterConfig, MarkMatch};

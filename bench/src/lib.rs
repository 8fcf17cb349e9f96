//! ctsync's load generators and benchmarks.
//!
//! - [`entries`]: synthetic conntrack entries through batched ctnetlink (`ctgen`).
//! - [`stamps`]: conntrack creation stamps, for kernel-to-kernel latency.
//! - [`sockaddr`]: `SocketAddr` to `sockaddr_storage`, for raw socket calls.
//! - `ctsync-traffic`: real TCP/UDP traffic through the lab.
//! - `ctsync-bench`: the measurements (see the README).
pub mod entries;
pub mod sockaddr;
pub mod stamps;

//! ctsync's load generators and benchmarks.
//!
//! - [`entries`]: synthetic conntrack entries through batched ctnetlink (`ctgen`).
//! - `ctsync-traffic`: real TCP/UDP traffic through the lab.
//! - `ctsync-bench`: the measurements (see the README).
pub mod entries;

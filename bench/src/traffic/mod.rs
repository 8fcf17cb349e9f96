//! Real-traffic load generator: echo servers and clients that create real conntrack
//! entries through the lab's firewalls and measure whether connections survive a
//! failover. Used by tests, the demo and the benchmarks through `ctsync-traffic`.

pub mod client;
pub mod report;
pub mod server;
pub mod sys;
pub mod wire;

/// Port used by both sides unless told otherwise, so that `serve` and `client`
/// with no port flags meet.
pub const DEFAULT_PORT: u16 = 9000;

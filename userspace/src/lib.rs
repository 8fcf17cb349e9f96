//! ctsync: conntrack state synchronisation for firewall pairs.
pub mod bpf;

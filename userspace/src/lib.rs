//! ctsync: conntrack state synchronisation for firewall pairs.
//!
//! Primary side so far: the kernel emits conntrack events; the eBPF socket
//! filter ([`filter`]) drops the excluded ones in the kernel; the event source
//! ([`events`]) drains the rest through [`nlsock`], decodes them with
//! [`ctnetlink`] and keeps the internal [`cache`]. The [`agent`] runs it all
//! and answers the [`control`] socket.
//!
//! Replication ([`replication`]) runs the [`ftfw`] state machines over the
//! sync-link [`transport`]; on the backup, the [`xdp`] receive path applies
//! the peer's records to the [`external`] cache in the kernel.
pub mod agent;
pub mod bpf;
pub mod cache;
pub mod commit;
pub mod config;
pub mod control;
pub mod ctnetlink;
pub mod ctwrite;
pub mod display;
pub mod events;
pub mod external;
pub mod filter;
pub mod ftfw;
pub mod latency;
pub mod metrics;
pub mod nlsock;
pub mod replication;
pub mod standby;
pub mod transport;
pub mod xdp;

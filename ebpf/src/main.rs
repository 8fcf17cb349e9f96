//! ctsync's event filter object.
//!
//! - `event_filter`: socket filter on the agent's ctnetlink event socket.
//!
//! The XDP receive path is a separate object (`xdp.rs`), loaded only on
//! the links that use it.
#![no_std]
#![no_main]

mod event_filter;
mod runtime;

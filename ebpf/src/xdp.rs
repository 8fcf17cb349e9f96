//! ctsync's XDP object.
//!
//! - `xdp_receive`: the backup's receive path on the sync links.
#![no_std]
#![no_main]

mod runtime;
mod xdp_receive;

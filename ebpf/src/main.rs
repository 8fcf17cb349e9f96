//! ctsync's kernel-side programs.
//!
//! - `event_filter`: socket filter on the agent's ctnetlink event socket.
#![no_std]
#![no_main]

mod event_filter;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";

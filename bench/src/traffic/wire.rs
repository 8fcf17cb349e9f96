//! The numbered message the client sends and the server echoes back unchanged.
//!
//! The server never parses it (it echoes bytes), so the format only has to let the
//! client check that what came back is exactly what it sent on that connection or
//! flow, in order for TCP, and to tell which datagram an UDP reply answers.

/// `"CTSY"`: rejects stray datagrams that are not replies to our messages.
pub const MAGIC: u32 = 0x4354_5359;
/// Magic (4 bytes), connection or flow id (4), sequence number (8), all big-endian.
pub const HEADER_LEN: usize = 16;
/// Smallest message: the header alone.
pub const MIN_MESSAGE_BYTES: usize = HEADER_LEN;
/// Largest message: fits one 1500-byte Ethernet frame with IPv6 + UDP headers, so a
/// datagram is never fragmented (fragments would make conntrack behave differently).
pub const MAX_MESSAGE_BYTES: usize = 1400;

/// Writes message `seq` of connection or flow `id` into `buf` (all of it).
///
/// The padding after the header depends on `id` and `seq`, so a corrupted or
/// misdirected echo is detected by comparing the whole message, not just the header.
pub fn encode(buf: &mut [u8], id: u32, seq: u64) {
    debug_assert!(buf.len() >= HEADER_LEN);
    buf[0..4].copy_from_slice(&MAGIC.to_be_bytes());
    buf[4..8].copy_from_slice(&id.to_be_bytes());
    buf[8..16].copy_from_slice(&seq.to_be_bytes());
    let salt = (id as u8) ^ (seq as u8);
    for (i, b) in buf[HEADER_LEN..].iter_mut().enumerate() {
        *b = (i as u8).wrapping_add(salt);
    }
}

/// Reads the id and sequence number of a message, if it is one of ours (magic and
/// length checked; the padding is checked by the caller where it matters).
pub fn decode(buf: &[u8]) -> Option<(u32, u64)> {
    if buf.len() < HEADER_LEN || buf[0..4] != MAGIC.to_be_bytes() {
        return None;
    }
    let id = u32::from_be_bytes(buf[4..8].try_into().ok()?);
    let seq = u64::from_be_bytes(buf[8..16].try_into().ok()?);
    Some((id, seq))
}

/// Whether `buf` is exactly message `seq` of `id`, padding included.
pub fn matches(buf: &[u8], id: u32, seq: u64, scratch: &mut [u8]) -> bool {
    if buf.len() != scratch.len() {
        return false;
    }
    encode(scratch, id, seq);
    buf == scratch
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let mut buf = [0u8; 40];
        encode(&mut buf, 7, 123_456_789_012);
        assert_eq!(decode(&buf), Some((7, 123_456_789_012)));
        let mut scratch = [0u8; 40];
        assert!(matches(&buf, 7, 123_456_789_012, &mut scratch));
        assert!(!matches(&buf, 7, 123_456_789_013, &mut scratch));
        buf[39] ^= 1;
        assert!(!matches(&buf, 7, 123_456_789_012, &mut scratch));
        assert_eq!(decode(&buf[..15]), None);
    }
}

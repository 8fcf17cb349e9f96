//! FT-FW: reliable replication of the internal cache to a peer's external
//! cache, as sans-IO state machines (no sockets, no clocks, no tasks inside).
//!
//! The [`Sender`] runs on the primary, the [`Receiver`] on the backup; both are
//! shaped like quinn-proto's `Connection`. Bytes and time go in, datagrams,
//! timers and events come out:
//!
//! - inputs: `handle_datagram(now, bytes)` for every datagram from the peer;
//!   `handle_timeout(now)` when the deadline from `poll_timeout()` passes
//!   (a spurious call is a harmless no-op); on the sender, `push(change)` for
//!   every change drained from the internal cache (at most `credit()` of them),
//!   and `start_bulk()`; on the receiver, `request_resync()`.
//! - outputs, to poll after any input until they return `None`, in this
//!   order: `poll_transmit(now, buf, ..)` (send the `len` bytes of `buf` it
//!   returns to the peer), `poll_event()` (act on it), then `poll_timeout()`
//!   (arm the timer for it).
//!
//! `now` is any monotonic [`Instant`] the caller chooses; randomness (session
//! ids, initial sequence numbers) comes from a seed in the config, so a test
//! replays exactly.
//!
//! How it differs from conntrackd's FT-FW (the flaws measured there):
//!
//! - a corrupt datagram is refused before its sequence number is looked at,
//!   so it is a gap and gets NACKed, never silently "received";
//! - reordering is accepted: a datagram that arrives after its gap was
//!   NACKed still fills the gap and is delivered;
//! - NACKs are retried on a timer, ACKs are cumulative and repeated when the
//!   sender probes, so losing control datagrams costs time, not data;
//! - a NACK resends the *current* state of the entries concerned (from
//!   [`StateLookup`]), once each, not stale copies;
//! - the resend queue is a window: when it is full the sender stops sending
//!   new records (back-pressure to the coalescing cache), and a bulk send
//!   pulls entries from the cache through the same window with a cursor,
//!   so a million entries never sit in a queue at once. If the caller pushes
//!   past `credit()` anyway, the sender drops its queue and falls back to a
//!   bulk resync, counted in its stats: never a silent loss;
//! - a bulk send ends with BULK_END, which lets the receiver purge the
//!   entries the bulk did not refresh (destroyed while the peers were apart).
//!
//! The receiver delivers records as events; [`apply`] holds the rule the
//! external cache must follow (and a reference table that follows it).
//!
//! [`Instant`]: std::time::Instant

pub mod apply;
mod queues;
mod ranges;
pub mod receiver;
pub mod sender;

#[cfg(test)]
mod sim;
#[cfg(test)]
mod tests;

use ctsync_common::wire::{self, DecodeError, Kind, Record};
use ctsync_common::{CtExt, CtRecord, Tuple};

pub use apply::{ExternalTable, Purge, Stamp};
pub use receiver::{AcceptFilter, Receiver, ReceiverConfig, ReceiverEvent, ReceiverStats};
pub use sender::{BulkReason, Sender, SenderConfig, SenderEvent, SenderStats};

/// One replicated change: an entry's state or its destruction.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum DataRecord {
    /// The entry's state as of `record.version`. `ext` is `None` when the
    /// entry has no extension (or an empty one).
    State {
        record: CtRecord,
        ext: Option<CtExt>,
    },
    /// The entry is gone as of `version`.
    Destroy { key: Tuple, version: u64 },
}

impl DataRecord {
    /// A state record; an empty extension counts as none.
    pub fn state(record: &CtRecord, ext: Option<&CtExt>) -> DataRecord {
        DataRecord::State {
            record: *record,
            ext: ext.filter(|e| !e.is_empty()).copied(),
        }
    }

    pub fn key(&self) -> &Tuple {
        match self {
            DataRecord::State { record, .. } => &record.orig,
            DataRecord::Destroy { key, .. } => key,
        }
    }

    pub fn version(&self) -> u64 {
        match self {
            DataRecord::State { record, .. } => record.version,
            DataRecord::Destroy { version, .. } => *version,
        }
    }

    pub fn is_destroy(&self) -> bool {
        matches!(self, DataRecord::Destroy { .. })
    }

    pub(crate) fn to_wire(self) -> Record {
        match self {
            DataRecord::State {
                record,
                ext: Some(ext),
            } => Record::StateExt(record, ext),
            DataRecord::State { record, ext: None } => Record::State(record),
            DataRecord::Destroy { key, version } => Record::Destroy { key, version },
        }
    }

    pub(crate) fn from_wire(r: &Record) -> Option<DataRecord> {
        Some(match *r {
            Record::State(record) => DataRecord::State { record, ext: None },
            Record::StateExt(record, ext) => DataRecord::state(&record, Some(&ext)),
            Record::Destroy { key, version } => DataRecord::Destroy { key, version },
            _ => return None,
        })
    }
}

/// What the sender's caller knows about a key right now.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Lookup {
    /// The entry exists: its newest state.
    Live(CtRecord, Option<CtExt>),
    /// The entry was destroyed (a tombstone not yet drained): the version of
    /// the destruction.
    Gone(u64),
    /// Neither. The caller promises that the change that made it so (a
    /// DESTROY) has been or will be pushed to the sender, so the sender
    /// need not resend anything for the key (it still resends a DESTROY it
    /// sent itself).
    Unknown,
}

/// The caller's cache as the sender sees it: for NACKed entries (resend
/// their current state) and for bulk sends (visit every entry, a chunk at a
/// time, as the window frees).
pub trait StateLookup {
    /// The current state of `key`.
    fn current(&self, key: &Tuple) -> Lookup;

    /// Visits up to `max` live entries from `cursor` on (0 starts a pass),
    /// calling `visit` for each, and returns the cursor to continue from, or
    /// `None` when the pass is complete. It may visit fewer than `max` (even
    /// none) and still return a cursor, to bound its work per call.
    ///
    /// Contract: an entry that is live for the whole pass is visited at
    /// least once. Entries created, changed or destroyed during the pass
    /// need not be (their changes are pushed to the sender anyway). A slot
    /// index into a slab of entries is a fine cursor.
    fn bulk(
        &self,
        cursor: u64,
        max: usize,
        visit: &mut dyn FnMut(&CtRecord, Option<&CtExt>),
    ) -> Option<u64>;
}

/// Decodes a datagram, counting a refusal as `corrupt` (checksum) or
/// `malformed` (anything else): both halves count their input the same way.
pub(crate) fn decode_counted<'a>(
    bytes: &'a [u8],
    corrupt: &mut u64,
    malformed: &mut u64,
) -> Result<wire::Datagram<'a>, Error> {
    wire::decode(bytes).map_err(|e| {
        if e.is_corrupt() {
            *corrupt += 1;
        } else {
            *malformed += 1;
        }
        Error::decode(e)
    })
}

/// Why a datagram was dropped. None of these is fatal: the datagram was
/// counted in the stats and ignored; the state machine goes on.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("malformed datagram")]
    Malformed {
        #[source]
        source: DecodeError,
    },
    #[error("corrupt datagram (checksum mismatch): dropped, will be NACKed as a gap")]
    Corrupt {
        #[source]
        source: DecodeError,
    },
    #[error("{kind:?} datagram is not for the {role}")]
    WrongKind { kind: Kind, role: &'static str },
    #[error("datagram from node {node}, expected node {expected}")]
    ForeignNode { node: u32, expected: u32 },
    #[error("datagram from our own node id {node} (multicast loop?)")]
    OwnNode { node: u32 },
    #[error("datagram from unknown or retired session {session:#010x}")]
    StaleSession { session: u32 },
}

impl Error {
    fn decode(source: DecodeError) -> Error {
        if source.is_corrupt() {
            Error::Corrupt { source }
        } else {
            Error::Malformed { source }
        }
    }
}

/// Checks the author of a datagram against our node id and the expected
/// peer (if configured).
fn check_node(node: u32, own: u32, peer: Option<u32>) -> Result<(), Error> {
    if node == own {
        return Err(Error::OwnNode { node });
    }
    match peer {
        Some(expected) if expected != node => Err(Error::ForeignNode { node, expected }),
        _ => Ok(()),
    }
}

/// Wire sequence numbers are 32-bit and wrap; both sides count in u64
/// internally (starting at 2^32 + a random u32, so that nothing ever goes
/// below zero) and map a wire number to the u64 nearest to `reference`.
fn expand_seq(wire: u32, reference: u64) -> u64 {
    const SPAN: u64 = 1 << 32;
    const HALF: u64 = 1 << 31;
    let cand = (reference & !(SPAN - 1)) | u64::from(wire);
    if cand + HALF < reference {
        cand + SPAN
    } else if cand > reference + HALF && cand >= SPAN {
        cand - SPAN
    } else {
        cand
    }
}

/// SplitMix64: the only randomness (session ids, first sequence number),
/// seeded from the config.
#[derive(Clone, Debug)]
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn next_u32(&mut self) -> u32 {
        (self.next_u64() >> 32) as u32
    }

    /// A non-zero u32 (0 means "none" in session and request fields).
    fn nonzero_u32(&mut self) -> u32 {
        loop {
            let v = self.next_u32();
            if v != 0 {
                return v;
            }
        }
    }
}

/// The last few session ids a peer used before its current one: datagrams
/// from them are late leftovers of a dead process, to be ignored (never
/// mistaken for a new restart).
#[derive(Clone, Debug, Default)]
struct Retired {
    ring: [u32; 8],
    next: usize,
}

impl Retired {
    fn push(&mut self, session: u32) {
        if session != 0 && !self.contains(session) {
            self.ring[self.next] = session;
            self.next = (self.next + 1) % self.ring.len();
        }
    }

    fn contains(&self, session: u32) -> bool {
        session != 0 && self.ring.contains(&session)
    }
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn expand_seq_picks_the_nearest() {
        let r = (5u64 << 32) + 10;
        assert_eq!(expand_seq(10, r), r);
        assert_eq!(expand_seq(20, r), r + 10);
        assert_eq!(expand_seq(u32::MAX, r), (5u64 << 32) - 1);
        let r = (5u64 << 32) + u64::from(u32::MAX) - 2;
        assert_eq!(expand_seq(3, r), (6u64 << 32) + 3);
        assert_eq!(expand_seq(u32::MAX - 5, r), r - 3);
    }

    #[test]
    fn retired_ring_forgets_the_oldest() {
        let mut r = Retired::default();
        for s in 1..=9 {
            r.push(s);
        }
        assert!(!r.contains(1) && r.contains(2) && r.contains(9) && !r.contains(0));
    }
}

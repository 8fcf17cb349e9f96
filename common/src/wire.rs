//! The ctsync datagram: one fixed header, then fixed-size records.
//!
//! Shared by the agent (encoder, decoder) and the XDP receive program
//! (layout constants, [`record_len`], [`checksum_step`]), so it is `no_std`,
//! allocation-free and never panics on input. `docs/wire-format.md` has the
//! field tables.
//!
//! Design choices, and why:
//!
//! - **Little-endian everywhere.** Record bodies are the in-memory
//!   [`CtRecord`]/[`CtExt`]/[`Tuple`] (host-order integers, network-order
//!   addresses and ports, exactly as in the caches and BPF maps), and both
//!   ends are x86_64 or bpfel, so header fields are little-endian too: no
//!   conversion on either side, and XDP reads fields directly. A compile-time
//!   assert refuses big-endian targets instead of producing foreign bytes.
//! - **Fixed record sizes per type**, each record preceded by a 4-byte
//!   [`RecordHeader`] whose `len` must equal the type's size: XDP walks the
//!   payload with a bounded loop and no variable-length parsing.
//! - **One checksum over header and payload** (see [`checksum`]). A flipped
//!   bit in the session id would look like a sender restart (a full resync),
//!   one in the sequence number would fake or hide a gap: the header needs
//!   the protection as much as the payload, and one pass is cheaper than two.
//!   A datagram whose checksum fails is dropped before its sequence number is
//!   looked at, so it becomes a gap and is NACKed (conntrackd counts the
//!   sequence number of a corrupt datagram as received and loses its entries).
//! - **Three datagram kinds** by direction: [`Kind::Data`] (sender to
//!   receiver, sequenced, carries state), [`Kind::SenderCtl`] (HELLO, ALIVE)
//!   and [`Kind::ReceiverCtl`] (ACK, NACK, HELLO_BACK, ...). Only `Data`
//!   consumes sequence numbers; XDP handles `Data` and passes the rest up.

use core::fmt;

use bytemuck::{Pod, Zeroable};

use crate::conntrack::{CtExt, CtRecord, Tuple};

// Record bodies are host-order structs copied as bytes; the format says
// little-endian. Refuse to build where those differ rather than emit foreign
// bytes.
const _: () = assert!(
    cfg!(target_endian = "little"),
    "the ctsync wire format is little-endian"
);

/// First four bytes of every datagram.
pub const MAGIC: [u8; 4] = *b"CTSY";
/// Format version; a receiver drops any other.
pub const VERSION: u8 = 1;
/// Size of [`Header`].
pub const HEADER_LEN: usize = 32;
/// Size of [`RecordHeader`].
pub const RECORD_HEADER_LEN: usize = 4;
/// IPv4 (20) + UDP (8) header bytes: subtract from the link MTU.
pub const IPV4_UDP_OVERHEAD: usize = 28;
/// IPv6 (40) + UDP (8) header bytes: subtract from the link MTU.
pub const IPV6_UDP_OVERHEAD: usize = 48;
/// Largest datagram (UDP payload): a 9000-byte jumbo frame over IPv4, rounded
/// down to whole 4-byte words. Bounds XDP's loops.
pub const MAX_DATAGRAM: usize = (9000 - IPV4_UDP_OVERHEAD) / 4 * 4;
/// Largest payload (datagram minus header).
pub const MAX_PAYLOAD: usize = MAX_DATAGRAM - HEADER_LEN;
/// Most records a datagram can hold (all of the smallest kind).
pub const MAX_RECORDS: usize = MAX_PAYLOAD / RECORD_HEADER_LEN;
/// Most records a `Data` datagram can hold (DESTROY is the smallest data
/// record): XDP's record loop bound.
pub const MAX_DATA_RECORDS: usize = MAX_PAYLOAD / DESTROY_LEN;

/// The UDP payload budget for a link MTU: MTU minus IP and UDP headers,
/// capped at [`MAX_DATAGRAM`] and rounded down to a multiple of 4.
pub const fn datagram_budget(mtu: usize, ipv6: bool) -> usize {
    let overhead = if ipv6 {
        IPV6_UDP_OVERHEAD
    } else {
        IPV4_UDP_OVERHEAD
    };
    let b = mtu.saturating_sub(overhead);
    let b = if b > MAX_DATAGRAM { MAX_DATAGRAM } else { b };
    b / 4 * 4
}

/// What a datagram carries, by direction.
#[repr(u8)]
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Kind {
    /// Sender to receiver, sequenced: STATE, STATE_EXT, DESTROY, BULK_BEGIN,
    /// BULK_END.
    Data = 1,
    /// Sender to receiver, not sequenced: HELLO, ALIVE.
    SenderCtl = 2,
    /// Receiver to sender, not sequenced: ACK, NACK, HELLO_BACK,
    /// HELLO_REQUEST, RESYNC_REQUEST.
    ReceiverCtl = 3,
}

impl Kind {
    pub const fn from_u8(v: u8) -> Option<Kind> {
        match v {
            1 => Some(Kind::Data),
            2 => Some(Kind::SenderCtl),
            3 => Some(Kind::ReceiverCtl),
            _ => None,
        }
    }
}

/// `Header::flags` bits.
pub mod flags {
    /// A `Data` datagram that holds BULK_BEGIN or BULK_END: XDP must pass it
    /// to the agent (it may apply its state records first).
    pub const MARKERS: u8 = 1 << 0;
    /// Every defined bit; a receiver drops datagrams with others set.
    pub const ALL: u8 = MARKERS;
}

/// Record type numbers (`RecordHeader::ty`).
pub mod rtype {
    /// `CtRecord`: an entry's state, without extension.
    pub const STATE: u8 = 1;
    /// `CtRecord` + `CtExt`: an entry's state with NAT seq adj / helper /
    /// SCTP verification tags.
    pub const STATE_EXT: u8 = 2;
    /// `DestroyBody`: the entry is gone (as of `version`).
    pub const DESTROY: u8 = 3;
    /// `BulkBody`: a bulk send (full resync) starts.
    pub const BULK_BEGIN: u8 = 8;
    /// `BulkBody`: the bulk send is complete and acknowledged.
    pub const BULK_END: u8 = 9;
    /// `HelloBody`: a sender (re)starts its session; header `seq` is its
    /// next sequence number.
    pub const HELLO: u8 = 16;
    /// No body: the sender is alive; header `seq`/`floor` as in data.
    pub const ALIVE: u8 = 17;
    /// `RangeBody`: sequence numbers received.
    pub const ACK: u8 = 32;
    /// `RangeBody`: sequence numbers missing, please resend.
    pub const NACK: u8 = 33;
    /// `SessionBody`: answer to HELLO, echoing the sender's session, with
    /// the receiver's epoch after adopting it.
    pub const HELLO_BACK: u8 = 34;
    /// `SessionBody`: "I don't know your session, say HELLO" (receiver
    /// restarted, or follows another session), with the receiver's epoch.
    pub const HELLO_REQUEST: u8 = 35;
    /// `RequestBody`: please bulk-send everything.
    pub const RESYNC_REQUEST: u8 = 36;
}

/// Length of a STATE record, record header included.
pub const STATE_LEN: usize = RECORD_HEADER_LEN + size_of::<CtRecord>();
/// Length of a STATE_EXT record.
pub const STATE_EXT_LEN: usize = RECORD_HEADER_LEN + size_of::<StateExtBody>();
/// Length of a DESTROY record.
pub const DESTROY_LEN: usize = RECORD_HEADER_LEN + size_of::<DestroyBody>();

/// Total length (record header included) of a record of type `ty`, or
/// `None` for an unknown type. Every type has exactly one length.
pub const fn record_len(ty: u8) -> Option<usize> {
    let body = match ty {
        rtype::STATE => size_of::<CtRecord>(),
        rtype::STATE_EXT => size_of::<StateExtBody>(),
        rtype::DESTROY => size_of::<DestroyBody>(),
        rtype::BULK_BEGIN | rtype::BULK_END => size_of::<BulkBody>(),
        rtype::HELLO => size_of::<HelloBody>(),
        rtype::ALIVE => 0,
        rtype::ACK | rtype::NACK => size_of::<RangeBody>(),
        rtype::HELLO_BACK | rtype::HELLO_REQUEST => size_of::<SessionBody>(),
        rtype::RESYNC_REQUEST => size_of::<RequestBody>(),
        _ => return None,
    };
    Some(RECORD_HEADER_LEN + body)
}

/// Whether a record of type `ty` may appear in a datagram of `kind`.
pub const fn allowed(kind: Kind, ty: u8) -> bool {
    match kind {
        Kind::Data => matches!(
            ty,
            rtype::STATE | rtype::STATE_EXT | rtype::DESTROY | rtype::BULK_BEGIN | rtype::BULK_END
        ),
        Kind::SenderCtl => matches!(ty, rtype::HELLO | rtype::ALIVE),
        Kind::ReceiverCtl => matches!(
            ty,
            rtype::ACK
                | rtype::NACK
                | rtype::HELLO_BACK
                | rtype::HELLO_REQUEST
                | rtype::RESYNC_REQUEST
        ),
    }
}

/// The datagram header (32 bytes, little-endian).
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, PartialEq, Eq, Debug, Default)]
pub struct Header {
    /// [`MAGIC`].
    pub magic: [u8; 4],
    /// [`VERSION`].
    pub version: u8,
    /// [`Kind`] as u8.
    pub kind: u8,
    /// [`flags`] bits.
    pub flags: u8,
    /// Zero.
    pub reserved: u8,
    /// Configured node id of the datagram's author.
    pub node: u32,
    /// The author's session id: random per process start, so that the peer
    /// can tell a restart.
    pub session: u32,
    /// `Data`: this datagram's sequence number. `SenderCtl`: the sender's next
    /// sequence number (every lower one was sent). `ReceiverCtl`: zero.
    pub seq: u32,
    /// From the sender: the lowest sequence number it may still resend; every
    /// lower one was acknowledged, or resent under a newer number, or
    /// superseded by a bulk send. `ReceiverCtl`: zero.
    pub floor: u32,
    /// Number of records in the payload.
    pub count: u16,
    /// Payload bytes after the header; a multiple of 4.
    pub payload_len: u16,
    /// [`checksum`] of the datagram.
    pub checksum: u32,
}

/// Precedes every record (4 bytes).
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, PartialEq, Eq, Debug, Default)]
pub struct RecordHeader {
    /// [`rtype`] number.
    pub ty: u8,
    /// Reserved: sent as 0, ignored.
    pub flags: u8,
    /// Total record length, this header included: must equal
    /// [`record_len`]`(ty)`.
    pub len: u16,
}

/// STATE_EXT body (176 bytes).
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, PartialEq, Eq, Debug, Default)]
pub struct StateExtBody {
    pub record: CtRecord,
    pub ext: CtExt,
}

/// DESTROY body (48 bytes).
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, PartialEq, Eq, Debug, Default)]
pub struct DestroyBody {
    /// The entry's key (original tuple with zone).
    pub key: Tuple,
    /// Version of the destruction: newer than any state of the entry before it.
    pub version: u64,
}

/// BULK_BEGIN / BULK_END body (8 bytes).
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, PartialEq, Eq, Debug, Default)]
pub struct BulkBody {
    /// Bulk number, per sender session.
    pub bulk: u32,
    /// BULK_BEGIN: the RESYNC_REQUEST id it answers (0 if none).
    /// BULK_END: the sequence number the bulk began at; every entry the
    /// sender had was sent at or after it.
    pub arg: u32,
}

/// ACK / NACK body (8 bytes): sequence numbers `from..=to` (serial order,
/// may wrap).
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, PartialEq, Eq, Debug, Default)]
pub struct RangeBody {
    pub from: u32,
    pub to: u32,
}

/// HELLO body (8 bytes).
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, PartialEq, Eq, Debug, Default)]
pub struct HelloBody {
    /// The sender process's incarnation: grows across restarts (e.g. the
    /// wall-clock time of its start in microseconds). Random session ids
    /// cannot be ordered; this tells a late HELLO of a dead predecessor
    /// from a HELLO of a successor.
    pub incarnation: u64,
}

/// HELLO_BACK / HELLO_REQUEST body (16 bytes).
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, PartialEq, Eq, Debug, Default)]
pub struct SessionBody {
    /// The sender session this is about (0 in the HELLO_REQUEST a receiver
    /// sends when it starts: "whoever you are").
    pub session: u32,
    /// How many sender sessions the receiver has adopted so far (since it
    /// started). A HELLO_REQUEST whose epoch is not above the one of the
    /// HELLO_BACK a sender connected with predates that connection: stale.
    pub epoch: u32,
    /// The receiver process's incarnation (as in [`HelloBody`]).
    pub incarnation: u64,
}

/// RESYNC_REQUEST body (4 bytes).
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, PartialEq, Eq, Debug, Default)]
pub struct RequestBody {
    /// Request id (non-zero), echoed by BULK_BEGIN.
    pub request: u32,
}

const _: () = assert!(size_of::<Header>() == HEADER_LEN);
const _: () = assert!(size_of::<RecordHeader>() == RECORD_HEADER_LEN);
const _: () = assert!(size_of::<StateExtBody>() == 176);
const _: () = assert!(size_of::<DestroyBody>() == 48);
const _: () = assert!(size_of::<BulkBody>() == 8);
const _: () = assert!(size_of::<RangeBody>() == 8);
const _: () = assert!(size_of::<SessionBody>() == 16);
const _: () = assert!(size_of::<HelloBody>() == 8);
const _: () = assert!(size_of::<RequestBody>() == 4);
const _: () = assert!(STATE_LEN == 132 && STATE_EXT_LEN == 180 && DESTROY_LEN == 52);
const _: () = assert!(MAX_DATAGRAM.is_multiple_of(4) && MAX_PAYLOAD <= u16::MAX as usize);
const _: () = assert!(core::mem::offset_of!(Header, checksum) == CHECKSUM_OFFSET);

/// Offset of `Header::checksum`.
pub const CHECKSUM_OFFSET: usize = 28;

/// Initial value of the checksum chain.
pub const CHECKSUM_SEED: u32 = 0x811C_9DC5;
/// Odd multiplier of the checksum chain (2^32 / golden ratio).
pub const CHECKSUM_MUL: u32 = 0x9E37_79B1;

/// One round of the checksum: `x = (h ^ w) * MUL (mod 2^32); x ^ (x >> 15)`.
///
/// For a fixed word `w` every step is a bijection of `h` (xor, odd multiply,
/// xorshift are all invertible), so two inputs that differ in exactly one
/// 32-bit word always produce different checksums: any single flipped byte,
/// or any damage inside one aligned word, is always detected. The xorshift
/// feeds high bits back down, so that multi-word damage does not cancel the
/// way it can in a plain sum or an FNV chain (a 2^-32 miss rate, not a
/// structural blind spot).
#[inline(always)]
pub const fn checksum_step(h: u32, w: u32) -> u32 {
    let x = (h ^ w).wrapping_mul(CHECKSUM_MUL);
    x ^ (x >> 15)
}

/// The checksum of a datagram: [`checksum_step`] over its little-endian
/// 32-bit words in order, starting from [`CHECKSUM_SEED`], skipping the
/// checksum word itself (bytes 28..32). Bytes past the last whole word are
/// ignored (a valid datagram has none).
pub fn checksum(datagram: &[u8]) -> u32 {
    let mut h = CHECKSUM_SEED;
    let mut i = 0;
    let (words, _) = datagram.as_chunks::<4>();
    for w in words {
        if i != CHECKSUM_OFFSET {
            h = checksum_step(h, u32::from_le_bytes(*w));
        }
        i += 4;
    }
    h
}

/// Why a datagram was refused. Nothing from a refused datagram may be used,
/// not even its sequence number.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum DecodeError {
    /// Shorter than the header.
    Truncated { len: usize },
    /// Not a ctsync datagram.
    BadMagic { magic: [u8; 4] },
    /// Another format version.
    BadVersion { version: u8 },
    /// Unknown `kind`.
    BadKind { kind: u8 },
    /// Unknown flag bits or non-zero reserved byte.
    BadFlags { flags: u8, reserved: u8 },
    /// `payload_len` is not what the datagram holds, not a multiple of 4, or
    /// larger than [`MAX_PAYLOAD`].
    BadLength { payload_len: u16, actual: usize },
    /// The checksum does not match: damaged in transit.
    Checksum { expected: u32, computed: u32 },
    /// A record of unknown type.
    UnknownRecord { offset: usize, ty: u8 },
    /// A record type that does not belong in this kind of datagram.
    RecordNotAllowed { offset: usize, ty: u8, kind: u8 },
    /// A record whose `len` is not its type's length, or that overruns the
    /// payload.
    BadRecordLength { offset: usize, ty: u8, len: u16 },
    /// `count` differs from the records present.
    BadCount { count: u16, actual: usize },
}

impl DecodeError {
    /// The header was sound and the checksum failed: the datagram is ours
    /// but damaged (as opposed to malformed or foreign).
    pub fn is_corrupt(&self) -> bool {
        matches!(self, DecodeError::Checksum { .. })
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            DecodeError::Truncated { len } => {
                write!(f, "datagram of {len} bytes is shorter than the header")
            }
            DecodeError::BadMagic { magic } => write!(f, "bad magic {magic:02x?}"),
            DecodeError::BadVersion { version } => {
                write!(f, "format version {version}, expected {VERSION}")
            }
            DecodeError::BadKind { kind } => write!(f, "unknown datagram kind {kind}"),
            DecodeError::BadFlags { flags, reserved } => {
                write!(f, "bad flags {flags:#x} / reserved byte {reserved:#x}")
            }
            DecodeError::BadLength {
                payload_len,
                actual,
            } => write!(
                f,
                "header says {payload_len} payload bytes, datagram holds {actual}"
            ),
            DecodeError::Checksum { expected, computed } => write!(
                f,
                "checksum mismatch: header {expected:#010x}, computed {computed:#010x}"
            ),
            DecodeError::UnknownRecord { offset, ty } => {
                write!(f, "unknown record type {ty} at payload offset {offset}")
            }
            DecodeError::RecordNotAllowed { offset, ty, kind } => write!(
                f,
                "record type {ty} at payload offset {offset} not allowed in kind {kind}"
            ),
            DecodeError::BadRecordLength { offset, ty, len } => write!(
                f,
                "record type {ty} at payload offset {offset} has bad length {len}"
            ),
            DecodeError::BadCount { count, actual } => {
                write!(f, "header says {count} records, payload holds {actual}")
            }
        }
    }
}

impl core::error::Error for DecodeError {}

/// Why a record could not be added.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum EncodeError {
    /// The buffer cannot hold even the header.
    BufferTooSmall { len: usize },
    /// The record does not fit in the remaining space.
    Full,
    /// The record type does not belong in this kind of datagram.
    NotAllowed { ty: u8, kind: Kind },
}

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            EncodeError::BufferTooSmall { len } => {
                write!(f, "buffer of {len} bytes cannot hold a datagram header")
            }
            EncodeError::Full => f.write_str("datagram full"),
            EncodeError::NotAllowed { ty, kind } => {
                write!(f, "record type {ty} not allowed in {kind:?} datagrams")
            }
        }
    }
}

impl core::error::Error for EncodeError {}

/// A decoded record (bodies copied out: the payload is not aligned).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Record {
    State(CtRecord),
    StateExt(CtRecord, CtExt),
    Destroy {
        key: Tuple,
        version: u64,
    },
    BulkBegin {
        bulk: u32,
        request: u32,
    },
    BulkEnd {
        bulk: u32,
        begin_seq: u32,
    },
    Hello {
        incarnation: u64,
    },
    Alive,
    Ack {
        from: u32,
        to: u32,
    },
    Nack {
        from: u32,
        to: u32,
    },
    HelloBack {
        session: u32,
        epoch: u32,
        incarnation: u64,
    },
    HelloRequest {
        session: u32,
        epoch: u32,
        incarnation: u64,
    },
    ResyncRequest {
        request: u32,
    },
}

impl Record {
    /// The [`rtype`] number.
    pub const fn ty(&self) -> u8 {
        match self {
            Record::State(_) => rtype::STATE,
            Record::StateExt(..) => rtype::STATE_EXT,
            Record::Destroy { .. } => rtype::DESTROY,
            Record::BulkBegin { .. } => rtype::BULK_BEGIN,
            Record::BulkEnd { .. } => rtype::BULK_END,
            Record::Hello { .. } => rtype::HELLO,
            Record::Alive => rtype::ALIVE,
            Record::Ack { .. } => rtype::ACK,
            Record::Nack { .. } => rtype::NACK,
            Record::HelloBack { .. } => rtype::HELLO_BACK,
            Record::HelloRequest { .. } => rtype::HELLO_REQUEST,
            Record::ResyncRequest { .. } => rtype::RESYNC_REQUEST,
        }
    }

    /// Encoded length, record header included.
    pub const fn encoded_len(&self) -> usize {
        match record_len(self.ty()) {
            Some(l) => l,
            None => 0,
        }
    }

    /// Writes the body into `out` (exactly `len() - RECORD_HEADER_LEN` bytes).
    fn write_body(&self, out: &mut [u8]) {
        match self {
            Record::State(r) => out.copy_from_slice(bytemuck::bytes_of(r)),
            Record::StateExt(record, ext) => {
                out.copy_from_slice(bytemuck::bytes_of(&StateExtBody {
                    record: *record,
                    ext: *ext,
                }))
            }
            Record::Destroy { key, version } => {
                out.copy_from_slice(bytemuck::bytes_of(&DestroyBody {
                    key: *key,
                    version: *version,
                }))
            }
            Record::BulkBegin { bulk, request: arg }
            | Record::BulkEnd {
                bulk,
                begin_seq: arg,
            } => out.copy_from_slice(bytemuck::bytes_of(&BulkBody {
                bulk: *bulk,
                arg: *arg,
            })),
            Record::Hello { incarnation } => out.copy_from_slice(bytemuck::bytes_of(&HelloBody {
                incarnation: *incarnation,
            })),
            Record::Alive => {}
            Record::Ack { from, to } | Record::Nack { from, to } => {
                out.copy_from_slice(bytemuck::bytes_of(&RangeBody {
                    from: *from,
                    to: *to,
                }))
            }
            Record::HelloBack {
                session,
                epoch,
                incarnation,
            }
            | Record::HelloRequest {
                session,
                epoch,
                incarnation,
            } => out.copy_from_slice(bytemuck::bytes_of(&SessionBody {
                session: *session,
                epoch: *epoch,
                incarnation: *incarnation,
            })),
            Record::ResyncRequest { request } => {
                out.copy_from_slice(bytemuck::bytes_of(&RequestBody { request: *request }))
            }
        }
    }

    /// Parses a body whose type and length were already checked.
    fn read(ty: u8, body: &[u8]) -> Option<Record> {
        fn pod<T: Pod>(b: &[u8]) -> Option<T> {
            (b.len() == size_of::<T>()).then(|| bytemuck::pod_read_unaligned(b))
        }
        Some(match ty {
            rtype::STATE => Record::State(pod(body)?),
            rtype::STATE_EXT => {
                let b: StateExtBody = pod(body)?;
                Record::StateExt(b.record, b.ext)
            }
            rtype::DESTROY => {
                let b: DestroyBody = pod(body)?;
                Record::Destroy {
                    key: b.key,
                    version: b.version,
                }
            }
            rtype::BULK_BEGIN => {
                let b: BulkBody = pod(body)?;
                Record::BulkBegin {
                    bulk: b.bulk,
                    request: b.arg,
                }
            }
            rtype::BULK_END => {
                let b: BulkBody = pod(body)?;
                Record::BulkEnd {
                    bulk: b.bulk,
                    begin_seq: b.arg,
                }
            }
            rtype::HELLO => Record::Hello {
                incarnation: pod::<HelloBody>(body)?.incarnation,
            },
            rtype::ALIVE => Record::Alive,
            rtype::ACK => {
                let b: RangeBody = pod(body)?;
                Record::Ack {
                    from: b.from,
                    to: b.to,
                }
            }
            rtype::NACK => {
                let b: RangeBody = pod(body)?;
                Record::Nack {
                    from: b.from,
                    to: b.to,
                }
            }
            rtype::HELLO_BACK => {
                let b: SessionBody = pod(body)?;
                Record::HelloBack {
                    session: b.session,
                    epoch: b.epoch,
                    incarnation: b.incarnation,
                }
            }
            rtype::HELLO_REQUEST => {
                let b: SessionBody = pod(body)?;
                Record::HelloRequest {
                    session: b.session,
                    epoch: b.epoch,
                    incarnation: b.incarnation,
                }
            }
            rtype::RESYNC_REQUEST => Record::ResyncRequest {
                request: pod::<RequestBody>(body)?.request,
            },
            _ => return None,
        })
    }
}

/// Header fields the encoder's caller chooses (the rest it computes).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct HeaderFields {
    pub node: u32,
    pub session: u32,
    pub seq: u32,
    pub floor: u32,
    pub flags: u8,
}

/// Builds one datagram in a caller-supplied buffer.
///
/// The usable size is the buffer's length (capped at [`MAX_DATAGRAM`],
/// rounded down to a multiple of 4): slice the buffer to the link's
/// [`datagram_budget`] to pack as many records as the MTU allows.
pub struct Encoder<'a> {
    buf: &'a mut [u8],
    kind: Kind,
    len: usize,
    count: u16,
}

impl<'a> Encoder<'a> {
    pub fn new(buf: &'a mut [u8], kind: Kind) -> Result<Encoder<'a>, EncodeError> {
        let usable = buf.len().min(MAX_DATAGRAM) / 4 * 4;
        if usable < HEADER_LEN {
            return Err(EncodeError::BufferTooSmall { len: buf.len() });
        }
        Ok(Encoder {
            buf: &mut buf[..usable],
            kind,
            len: HEADER_LEN,
            count: 0,
        })
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// Bytes left for records.
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.len
    }

    /// Whether a record of type `ty` would fit.
    pub fn fits(&self, ty: u8) -> bool {
        matches!(record_len(ty), Some(l) if l <= self.remaining())
    }

    /// Records added so far.
    pub fn count(&self) -> u16 {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Appends a record.
    pub fn push(&mut self, rec: &Record) -> Result<(), EncodeError> {
        let ty = rec.ty();
        if !allowed(self.kind, ty) {
            return Err(EncodeError::NotAllowed {
                ty,
                kind: self.kind,
            });
        }
        let len = rec.encoded_len();
        if len > self.remaining() {
            return Err(EncodeError::Full);
        }
        let out = &mut self.buf[self.len..self.len + len];
        let rh = RecordHeader {
            ty,
            flags: 0,
            len: len as u16,
        };
        out[..RECORD_HEADER_LEN].copy_from_slice(bytemuck::bytes_of(&rh));
        rec.write_body(&mut out[RECORD_HEADER_LEN..]);
        self.len += len;
        self.count += 1;
        Ok(())
    }

    /// Writes the header and checksum; returns the datagram's length.
    pub fn finish(self, h: HeaderFields) -> usize {
        let header = Header {
            magic: MAGIC,
            version: VERSION,
            kind: self.kind as u8,
            flags: h.flags & flags::ALL,
            reserved: 0,
            node: h.node,
            session: h.session,
            seq: h.seq,
            floor: h.floor,
            count: self.count,
            payload_len: (self.len - HEADER_LEN) as u16,
            checksum: 0,
        };
        self.buf[..HEADER_LEN].copy_from_slice(bytemuck::bytes_of(&header));
        let sum = checksum(&self.buf[..self.len]);
        self.buf[CHECKSUM_OFFSET..HEADER_LEN].copy_from_slice(&sum.to_le_bytes());
        self.len
    }
}

/// A datagram that passed every check: header, length, checksum, and every
/// record's type and length. Iterating its records cannot fail.
#[derive(Clone, Copy, Debug)]
pub struct Datagram<'a> {
    header: Header,
    kind: Kind,
    payload: &'a [u8],
}

impl<'a> Datagram<'a> {
    pub fn header(&self) -> &Header {
        &self.header
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }

    pub fn records(&self) -> Records<'a> {
        Records {
            rest: self.payload,
            left: self.header.count,
        }
    }
}

/// Iterator over a checked datagram's records.
#[derive(Clone, Debug)]
pub struct Records<'a> {
    rest: &'a [u8],
    left: u16,
}

impl Iterator for Records<'_> {
    type Item = Record;

    fn next(&mut self) -> Option<Record> {
        if self.left == 0 || self.rest.len() < RECORD_HEADER_LEN {
            return None;
        }
        let ty = self.rest[0];
        let len = record_len(ty)?;
        if len > self.rest.len() {
            return None;
        }
        let (rec, rest) = self.rest.split_at(len);
        self.rest = rest;
        self.left -= 1;
        Record::read(ty, &rec[RECORD_HEADER_LEN..])
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.left as usize, Some(self.left as usize))
    }
}

/// Checks the header alone (magic, version, kind, flags, length) without
/// the checksum: what XDP checks before walking records. Returns the header.
pub fn check_header(bytes: &[u8]) -> Result<Header, DecodeError> {
    if bytes.len() < HEADER_LEN {
        return Err(DecodeError::Truncated { len: bytes.len() });
    }
    let h: Header = bytemuck::pod_read_unaligned(&bytes[..HEADER_LEN]);
    if h.magic != MAGIC {
        return Err(DecodeError::BadMagic { magic: h.magic });
    }
    if h.version != VERSION {
        return Err(DecodeError::BadVersion { version: h.version });
    }
    if Kind::from_u8(h.kind).is_none() {
        return Err(DecodeError::BadKind { kind: h.kind });
    }
    if h.flags & !flags::ALL != 0 || h.reserved != 0 {
        return Err(DecodeError::BadFlags {
            flags: h.flags,
            reserved: h.reserved,
        });
    }
    let actual = bytes.len() - HEADER_LEN;
    let pl = h.payload_len as usize;
    if pl != actual || !pl.is_multiple_of(4) || pl > MAX_PAYLOAD {
        return Err(DecodeError::BadLength {
            payload_len: h.payload_len,
            actual,
        });
    }
    Ok(h)
}

/// Checks and opens a datagram. Never panics, whatever the bytes.
pub fn decode(bytes: &[u8]) -> Result<Datagram<'_>, DecodeError> {
    let header = check_header(bytes)?;
    let computed = checksum(bytes);
    if computed != header.checksum {
        return Err(DecodeError::Checksum {
            expected: header.checksum,
            computed,
        });
    }
    let Some(kind) = Kind::from_u8(header.kind) else {
        return Err(DecodeError::BadKind { kind: header.kind });
    };
    let payload = &bytes[HEADER_LEN..];
    let mut off = 0;
    let mut n = 0usize;
    while off < payload.len() {
        if payload.len() - off < RECORD_HEADER_LEN {
            return Err(DecodeError::BadRecordLength {
                offset: off,
                ty: payload[off],
                len: 0,
            });
        }
        let rh: RecordHeader = bytemuck::pod_read_unaligned(&payload[off..off + RECORD_HEADER_LEN]);
        let Some(len) = record_len(rh.ty) else {
            return Err(DecodeError::UnknownRecord {
                offset: off,
                ty: rh.ty,
            });
        };
        if !allowed(kind, rh.ty) {
            return Err(DecodeError::RecordNotAllowed {
                offset: off,
                ty: rh.ty,
                kind: header.kind,
            });
        }
        if rh.len as usize != len || len > payload.len() - off {
            return Err(DecodeError::BadRecordLength {
                offset: off,
                ty: rh.ty,
                len: rh.len,
            });
        }
        off += len;
        n += 1;
    }
    if n != header.count as usize {
        return Err(DecodeError::BadCount {
            count: header.count,
            actual: n,
        });
    }
    Ok(Datagram {
        header,
        kind,
        payload,
    })
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::vec;
    use std::vec::Vec;

    use super::*;
    use crate::conntrack::{AF_INET, IPPROTO_TCP};

    /// SplitMix64: a seeded generator for the tests (no dependency).
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    fn rec(i: u32) -> CtRecord {
        let mut r = CtRecord::default();
        r.orig.family = AF_INET;
        r.orig.proto = IPPROTO_TCP;
        r.orig.src[..4].copy_from_slice(&i.to_be_bytes());
        r.orig.dst[..4].copy_from_slice(&[10, 0, 0, 1]);
        r.orig.src_port = 1234u16.to_be();
        r.orig.dst_port = 80u16.to_be();
        r.orig.zone = 7;
        r.reply = r.orig;
        r.status = 0x1234_5678;
        r.timeout = 300;
        r.mark = i;
        r.version = u64::from(i) << 33 | 5;
        r.proto_state = 3;
        r
    }

    fn ext(i: u32) -> CtExt {
        let mut e = CtExt::default();
        e.nat_seq[0].correction_pos = i;
        e.nat_seq[1].offset_after = !i;
        e.helper[..3].copy_from_slice(b"ftp");
        e.sctp_vtag = [0x1000_0000 | i, !i];
        e
    }

    const FIELDS: HeaderFields = HeaderFields {
        node: 1,
        session: 0xdead_beef,
        seq: 0xffff_fffe,
        floor: 0xffff_fff0,
        flags: 0,
    };

    fn data_datagram(budget: usize) -> (Vec<u8>, Vec<Record>) {
        let mut buf = vec![0u8; budget];
        let mut e = Encoder::new(&mut buf, Kind::Data).unwrap();
        let mut pushed = Vec::new();
        let mut i = 0;
        loop {
            let r = match i % 4 {
                0 => Record::State(rec(i)),
                1 => Record::StateExt(rec(i), ext(i)),
                2 => Record::Destroy {
                    key: rec(i).orig,
                    version: u64::MAX - u64::from(i),
                },
                _ => Record::BulkEnd {
                    bulk: i,
                    begin_seq: !i,
                },
            };
            if e.push(&r).is_err() {
                break;
            }
            pushed.push(r);
            i += 1;
        }
        let n = e.finish(HeaderFields {
            flags: flags::MARKERS,
            ..FIELDS
        });
        buf.truncate(n);
        (buf, pushed)
    }

    #[test]
    fn layout_constants() {
        assert_eq!(datagram_budget(1500, false), 1472);
        assert_eq!(datagram_budget(1500, true), 1452);
        assert_eq!(datagram_budget(65000, false), MAX_DATAGRAM);
        assert_eq!(datagram_budget(20, false), 0);
        assert_eq!(MAX_DATA_RECORDS, 171);
        assert_eq!(core::mem::offset_of!(Header, seq), 16);
        assert_eq!(core::mem::offset_of!(Header, payload_len), 26);
        // 10 STATE records per 1500-byte Ethernet frame over IPv4.
        assert_eq!((1472 - HEADER_LEN) / STATE_LEN, 10);
    }

    /// The STATE_EXT body as docs/wire-format.md lays it out: `CtRecord`,
    /// then `CtExt` at 128 with the SCTP tags at 168 (little-endian).
    #[test]
    fn state_ext_layout() {
        assert_eq!(core::mem::offset_of!(StateExtBody, ext), 128);
        let mut buf = [0u8; HEADER_LEN + STATE_EXT_LEN];
        let mut e = Encoder::new(&mut buf, Kind::Data).unwrap();
        let mut x = CtExt::default();
        x.helper[..3].copy_from_slice(b"sip");
        x.sctp_vtag = [0x0102_0304, 0xa0b0_c0d0];
        e.push(&Record::StateExt(rec(1), x)).unwrap();
        let n = e.finish(FIELDS);
        assert_eq!(n, buf.len());
        let body = &buf[HEADER_LEN + RECORD_HEADER_LEN..];
        assert_eq!(body.len(), 176);
        assert_eq!(&body[128 + 24..128 + 27], b"sip");
        assert_eq!(
            &body[168..176],
            &[0x04, 0x03, 0x02, 0x01, 0xd0, 0xc0, 0xb0, 0xa0]
        );
    }

    #[test]
    fn round_trip_fills_the_budget() {
        for budget in [HEADER_LEN, 200, 1472, 1452, MAX_DATAGRAM, 20000] {
            let (buf, pushed) = data_datagram(budget);
            assert!(buf.len() <= budget.min(MAX_DATAGRAM));
            assert!(buf.len() + STATE_EXT_LEN > budget.min(MAX_DATAGRAM) / 4 * 4);
            let d = decode(&buf).unwrap();
            assert_eq!(d.kind(), Kind::Data);
            assert_eq!(d.header().seq, FIELDS.seq);
            assert_eq!(d.header().floor, FIELDS.floor);
            assert_eq!(d.header().session, FIELDS.session);
            assert_eq!(d.header().flags, flags::MARKERS);
            assert_eq!(d.records().collect::<Vec<_>>(), pushed);
        }
    }

    #[test]
    fn control_round_trip() {
        let recs = [
            Record::Ack { from: 1, to: 9 },
            Record::Nack {
                from: u32::MAX,
                to: 3,
            },
            Record::HelloBack {
                session: 42,
                epoch: 1,
                incarnation: u64::MAX,
            },
            Record::HelloRequest {
                session: 43,
                epoch: 2,
                incarnation: 1 << 40,
            },
            Record::ResyncRequest { request: 7 },
        ];
        let mut buf = [0u8; 256];
        let mut e = Encoder::new(&mut buf, Kind::ReceiverCtl).unwrap();
        for r in &recs {
            e.push(r).unwrap();
        }
        assert_eq!(
            e.push(&Record::Hello { incarnation: 1 }),
            Err(EncodeError::NotAllowed {
                ty: rtype::HELLO,
                kind: Kind::ReceiverCtl
            })
        );
        let n = e.finish(FIELDS);
        let d = decode(&buf[..n]).unwrap();
        assert_eq!(d.records().collect::<Vec<_>>(), recs);

        let mut e = Encoder::new(&mut buf, Kind::SenderCtl).unwrap();
        e.push(&Record::Hello { incarnation: 7 }).unwrap();
        e.push(&Record::Alive).unwrap();
        let n = e.finish(FIELDS);
        assert_eq!(n, HEADER_LEN + 16);
        let d = decode(&buf[..n]).unwrap();
        assert_eq!(
            d.records().collect::<Vec<_>>(),
            [Record::Hello { incarnation: 7 }, Record::Alive]
        );
    }

    #[test]
    fn encoder_refuses_tiny_buffers() {
        let mut b = [0u8; 31];
        assert!(matches!(
            Encoder::new(&mut b, Kind::Data),
            Err(EncodeError::BufferTooSmall { len: 31 })
        ));
    }

    #[test]
    fn truncated_datagrams_are_refused() {
        let (buf, _) = data_datagram(1472);
        for n in 0..buf.len() {
            let e = decode(&buf[..n]).unwrap_err();
            if n < HEADER_LEN {
                assert_eq!(e, DecodeError::Truncated { len: n });
            } else {
                assert!(matches!(e, DecodeError::BadLength { .. }), "{n}: {e}");
            }
        }
        let mut longer = buf.clone();
        longer.extend_from_slice(&[0; 4]);
        assert!(matches!(
            decode(&longer),
            Err(DecodeError::BadLength { .. })
        ));
    }

    #[test]
    fn bad_magic_version_kind_flags() {
        let (buf, _) = data_datagram(600);
        let mut b = buf.clone();
        b[0] = b'X';
        assert!(matches!(decode(&b), Err(DecodeError::BadMagic { .. })));
        let mut b = buf.clone();
        b[4] = VERSION + 1;
        assert_eq!(
            decode(&b).unwrap_err(),
            DecodeError::BadVersion {
                version: VERSION + 1
            }
        );
        let mut b = buf.clone();
        b[5] = 9;
        assert_eq!(decode(&b).unwrap_err(), DecodeError::BadKind { kind: 9 });
        let mut b = buf.clone();
        b[6] = 0x80;
        assert!(matches!(decode(&b), Err(DecodeError::BadFlags { .. })));
    }

    /// Re-signs a datagram after tampering, to reach the record checks.
    fn resign(b: &mut [u8]) {
        b[CHECKSUM_OFFSET..HEADER_LEN].fill(0);
        let s = checksum(b);
        b[CHECKSUM_OFFSET..HEADER_LEN].copy_from_slice(&s.to_le_bytes());
    }

    #[test]
    fn record_checks() {
        let (buf, _) = data_datagram(600);
        // Unknown record type.
        let mut b = buf.clone();
        b[HEADER_LEN] = 99;
        resign(&mut b);
        assert_eq!(
            decode(&b).unwrap_err(),
            DecodeError::UnknownRecord { offset: 0, ty: 99 }
        );
        // Control record in a data datagram.
        let mut b = buf.clone();
        b[HEADER_LEN] = rtype::ACK;
        resign(&mut b);
        assert!(matches!(
            decode(&b),
            Err(DecodeError::RecordNotAllowed { .. })
        ));
        // Wrong record length.
        let mut b = buf.clone();
        b[HEADER_LEN + 2] = 0;
        resign(&mut b);
        assert!(matches!(
            decode(&b),
            Err(DecodeError::BadRecordLength { .. })
        ));
        // Wrong count.
        let mut b = buf.clone();
        b[24] += 1;
        resign(&mut b);
        assert!(matches!(decode(&b), Err(DecodeError::BadCount { .. })));
        // Record overrunning the payload: cut the payload inside record 2
        // and fix the header's length.
        let mut b = buf.clone();
        b.truncate(HEADER_LEN + STATE_LEN + 40);
        let pl = (b.len() - HEADER_LEN) as u16;
        b[26..28].copy_from_slice(&pl.to_le_bytes());
        resign(&mut b);
        assert!(matches!(
            decode(&b),
            Err(DecodeError::BadRecordLength { offset: 132, .. })
        ));
    }

    #[test]
    fn checksum_catches_every_single_byte_flip() {
        let (buf, _) = data_datagram(1472);
        for i in 0..buf.len() {
            for x in [0x01u8, 0x80, 0xff, 0x5a] {
                let mut b = buf.clone();
                b[i] ^= x;
                assert!(decode(&b).is_err(), "flip {x:#x} at {i} not caught");
                if i >= HEADER_LEN {
                    assert!(decode(&b).unwrap_err().is_corrupt());
                }
            }
        }
    }

    #[test]
    fn checksum_catches_double_flips_of_high_bits() {
        // A plain sum or an FNV chain misses two flips of bit 31 in
        // neighbouring words; this checksum does not.
        let (buf, _) = data_datagram(1472);
        for i in (HEADER_LEN..buf.len() - 8).step_by(4) {
            for d in [4, 8] {
                let mut b = buf.clone();
                b[i + 3] ^= 0x80;
                b[i + d + 3] ^= 0x80;
                assert!(decode(&b).is_err(), "double flip at {i}+{d}");
            }
        }
    }

    #[test]
    fn checksum_is_the_documented_chain() {
        // docs/wire-format.md's worked example: a header-only SenderCtl
        // datagram with zero count.
        let mut buf = [0u8; HEADER_LEN];
        let n = Encoder::new(&mut buf, Kind::SenderCtl)
            .unwrap()
            .finish(HeaderFields::default());
        assert_eq!(n, HEADER_LEN);
        let mut h = CHECKSUM_SEED;
        for w in 0..7 {
            h = checksum_step(
                h,
                u32::from_le_bytes(buf[w * 4..w * 4 + 4].try_into().unwrap()),
            );
        }
        assert_eq!(u32::from_le_bytes(buf[28..32].try_into().unwrap()), h);
    }

    #[test]
    fn known_answer() {
        // docs/wire-format.md's example, computed independently.
        let mut buf = [0u8; 64];
        let mut e = Encoder::new(&mut buf, Kind::SenderCtl).unwrap();
        e.push(&Record::Hello { incarnation: 7 }).unwrap();
        let n = e.finish(HeaderFields {
            node: 1,
            session: 0x0102_0304,
            seq: 5,
            floor: 5,
            flags: 0,
        });
        let want = [
            0x43, 0x54, 0x53, 0x59, 0x01, 0x02, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x04, 0x03,
            0x02, 0x01, 0x05, 0x00, 0x00, 0x00, 0x05, 0x00, 0x00, 0x00, 0x01, 0x00, 0x0c, 0x00,
            0x6b, 0xa9, 0x8f, 0xb5, 0x10, 0x00, 0x0c, 0x00, 0x07, 0x00, 0x00, 0x00, 0x00, 0x00,
            0x00, 0x00,
        ];
        assert_eq!(&buf[..n], &want);
        assert_eq!(checksum(&want), 0xb58f_a96b);
    }

    #[test]
    fn decode_never_panics_on_random_bytes() {
        let mut rng = Rng(1);
        let (good, _) = data_datagram(1472);
        for round in 0..20_000 {
            let b: Vec<u8> = if round % 2 == 0 {
                let n = rng.below(1600);
                (0..n).map(|_| rng.next() as u8).collect()
            } else {
                // A valid datagram with random damage and a fixed-up
                // checksum, to reach deep into the record walk.
                let mut b = good.clone();
                for _ in 0..1 + rng.below(4) {
                    let i = rng.below(b.len());
                    b[i] = rng.next() as u8;
                }
                if rng.below(2) == 0 {
                    b.truncate(rng.below(b.len() + 1));
                }
                if b.len() >= HEADER_LEN && b.len().is_multiple_of(4) {
                    let pl = (b.len() - HEADER_LEN) as u16;
                    b[26..28].copy_from_slice(&pl.to_le_bytes());
                    resign(&mut b);
                }
                b
            };
            if let Ok(d) = decode(&b) {
                assert_eq!(d.records().count(), d.header().count as usize);
            }
        }
    }
}

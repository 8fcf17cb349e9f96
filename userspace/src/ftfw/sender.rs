//! The FT-FW sender (primary side).
//!
//! Life cycle: a new sender picks a random session id and says HELLO until
//! the receiver answers HELLO_BACK; then it is connected and starts a bulk
//! send of the whole cache (the receiver's state is unknown after either side
//! restarts). Changes pushed before that are dropped: the bulk covers them.
//! When another receiver process introduces itself (HELLO_REQUEST or
//! HELLO_BACK with a higher incarnation, or any datagram once the current
//! receiver has been silent for `session_timeout`), the receiver restarted:
//! the sender drops its queues and says HELLO again. Late datagrams of a dead
//! predecessor cannot do that: their incarnation is lower.
//!
//! Data path: pushed changes wait in the coalescing tx queue; each data
//! datagram takes the next sequence number and is packed with as many records
//! as the datagram budget and the send window allow; its keys and versions go
//! to the resend queue until an ACK frees them or a NACK puts them back in
//! the tx queue (their current state is looked up when they are sent again).
//! The sender probes with ALIVE when data is unacknowledged and nothing was
//! sent for `probe_interval` (so a lost tail is NACKed), and every
//! `alive_interval` when idle.
//!
//! Bulk: a cursor over the caller's cache ([`StateLookup::bulk`]) feeds
//! datagrams as the window allows, alternating with live changes. BULK_BEGIN
//! precedes it; BULK_END follows once the cursor is done *and* every bulk
//! record is acknowledged, so that the receiver can purge what the bulk did
//! not refresh.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use ctsync_common::wire::{self, Encoder, HeaderFields, Kind, Record};
use ctsync_common::{CtExt, CtRecord};

use super::queues::{Marker, Pending, PendingState, ResendQueue, SentItem, TxQueue};
use super::{DataRecord, Error, Lookup, Rng, StateLookup, check_node, decode_counted, expand_seq};

/// Sender settings.
#[derive(Clone, Debug)]
pub struct SenderConfig {
    /// Our node id (in every header).
    pub node: u32,
    /// Accept datagrams only from this node, if set.
    pub peer_node: Option<u32>,
    /// Largest datagram (UDP payload) to build: the link's
    /// [`wire::datagram_budget`].
    pub max_datagram: usize,
    /// The send window: records sent and not yet acknowledged.
    pub resend_capacity: usize,
    /// Records the tx queue holds; pushing past it (past `credit()`) drops
    /// the queue and falls back to a bulk resync.
    pub tx_capacity: usize,
    /// Most sequence numbers between the oldest unacknowledged datagram and
    /// the next one: bounds the receiver's tracking.
    pub max_seq_window: u64,
    /// HELLO repeat interval until HELLO_BACK.
    pub hello_interval: Duration,
    /// ALIVE probe interval while data is unacknowledged.
    pub probe_interval: Duration,
    /// ALIVE interval when idle.
    pub alive_interval: Duration,
    /// Entries fetched from the lookup per bulk call.
    pub bulk_batch: usize,
    /// Grows across restarts of the agent on this node (e.g. wall-clock
    /// microseconds at start); sent in HELLO so that the receiver can tell
    /// a late HELLO of a dead predecessor from its successor's.
    pub incarnation: u64,
    /// A receiver silent this long may be replaced by one that does not
    /// look newer (covers a clock stepped back between restarts).
    pub session_timeout: Duration,
    /// Seed for the session id and first sequence number.
    pub seed: u64,
}

impl Default for SenderConfig {
    fn default() -> SenderConfig {
        SenderConfig {
            node: 1,
            peer_node: None,
            max_datagram: wire::datagram_budget(1500, false),
            resend_capacity: 16384,
            tx_capacity: 16384,
            max_seq_window: 1 << 15,
            hello_interval: Duration::from_millis(250),
            probe_interval: Duration::from_millis(20),
            alive_interval: Duration::from_secs(1),
            bulk_batch: 64,
            incarnation: 0,
            session_timeout: Duration::from_secs(3),
            seed: 0,
        }
    }
}

/// Why a bulk send started.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum BulkReason {
    /// A (new) receiver answered HELLO.
    Handshake,
    /// The receiver sent RESYNC_REQUEST.
    PeerRequest,
    /// The caller pushed past `credit()`: the tx queue was dropped.
    Overflow,
    /// The caller asked ([`Sender::start_bulk`]).
    Local,
}

/// Things the agent may act on or report.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum SenderEvent {
    /// The receiver answered HELLO; a bulk send starts.
    Connected {
        peer_session: u32,
    },
    /// The receiver restarted (a datagram from a new receiver session): the
    /// queues were dropped and the sender says HELLO again.
    PeerRestarted {
        peer_session: u32,
    },
    BulkStarted {
        bulk: u32,
        reason: BulkReason,
    },
    /// Every entry was sent and acknowledged; BULK_END is on its way.
    BulkFinished {
        bulk: u32,
        records: u64,
    },
    /// The tx queue overflowed and was dropped (`dropped` records); a bulk
    /// resync replaces it.
    Overflow {
        dropped: usize,
    },
    /// The receiver asked for a full resync; a bulk send starts.
    ResyncRequested {
        request: u32,
    },
}

/// Counters, for metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct SenderStats {
    pub datagrams_sent: u64,
    pub bytes_sent: u64,
    pub data_datagrams: u64,
    pub records_sent: u64,
    pub hellos_sent: u64,
    pub alives_sent: u64,
    pub datagrams_received: u64,
    /// ACK records (ranges) received.
    pub acks_received: u64,
    /// NACK records (ranges) received.
    pub nacks_received: u64,
    /// Records put back for resending by NACKs.
    pub retransmits: u64,
    /// NACKed records not resent because the caller knows a newer change
    /// (`Lookup::Unknown` after a state).
    pub resends_skipped: u64,
    pub malformed: u64,
    pub corrupt: u64,
    pub foreign: u64,
    pub stale_session: u64,
    pub peer_restarts: u64,
    /// Changes pushed while not connected (dropped: the bulk covers them).
    pub dropped_unconnected: u64,
    pub overflows: u64,
    /// Records dropped by overflows (the bulk resync covers them).
    pub overflow_dropped: u64,
    pub bulks_started: u64,
    pub bulks_completed: u64,
    pub bulk_records: u64,
    pub resync_requests: u64,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum State {
    Handshake,
    Connected,
}

/// The receiver process we deal with.
#[derive(Clone, Copy, Debug)]
struct PeerInfo {
    session: u32,
    incarnation: u64,
    /// Its epoch as of its last HELLO_BACK / HELLO_REQUEST we acted on.
    epoch: u32,
    last_heard: Instant,
}

#[derive(Debug)]
struct Bulk {
    id: u32,
    request: u32,
    begin_seq: u64,
    /// Next position in the caller's cache; `None` when the pass is done.
    cursor: Option<u64>,
    staged: VecDeque<(CtRecord, Option<CtExt>)>,
    /// Bulk-marked records in the tx and resend queues (not yet acked).
    unacked: usize,
    records: u64,
}

/// The primary's side of FT-FW for one peer. See the [module docs](self)
/// and [`super`] for the calling contract.
#[derive(Debug)]
pub struct Sender {
    cfg: SenderConfig,
    session: u32,
    state: State,
    peer: Option<PeerInfo>,
    next_seq: u64,
    tx: TxQueue,
    resend: ResendQueue,
    markers: VecDeque<Marker>,
    bulk: Option<Bulk>,
    next_bulk: u32,
    last_request: u32,
    hello_due: bool,
    hello_at: Option<Instant>,
    alive_due: bool,
    last_transmit: Instant,
    bulk_turn: bool,
    events: VecDeque<SenderEvent>,
    stats: SenderStats,
    /// Data datagram sent → its ACK received, µs (resent ones excluded).
    ack_rtt: Histogram<u64>,
}

impl Sender {
    pub fn new(cfg: SenderConfig, now: Instant) -> Sender {
        let mut rng = Rng::new(cfg.seed ^ 0x5345_4e44);
        let session = rng.nonzero_u32();
        let next_seq = (1 << 32) | u64::from(rng.next_u32());
        Sender {
            session,
            state: State::Handshake,
            peer: None,
            next_seq,
            tx: TxQueue::default(),
            resend: ResendQueue::new(next_seq),
            markers: VecDeque::new(),
            bulk: None,
            next_bulk: 1,
            last_request: 0,
            hello_due: true,
            hello_at: None,
            alive_due: false,
            last_transmit: now,
            bulk_turn: false,
            events: VecDeque::new(),
            stats: SenderStats::default(),
            ack_rtt: crate::latency::histogram(),
            cfg,
        }
    }

    /// Test hook: the first sequence number (to test wrap-around). Only
    /// before anything was sent.
    #[cfg(test)]
    pub(crate) fn force_next_seq(&mut self, seq: u32) {
        assert!(self.resend.is_empty() && self.stats.data_datagrams == 0);
        self.next_seq = (1 << 32) | u64::from(seq);
        self.resend = ResendQueue::new(self.next_seq);
    }

    // ---- getters ----

    /// Our session id.
    pub fn session(&self) -> u32 {
        self.session
    }

    /// The receiver's session, once connected.
    pub fn peer_session(&self) -> Option<u32> {
        match self.state {
            State::Connected => self.peer.map(|p| p.session),
            State::Handshake => None,
        }
    }

    pub fn is_connected(&self) -> bool {
        self.state == State::Connected
    }

    /// Round trips of data datagrams: sent → acknowledged, in µs.
    pub fn ack_rtt(&self) -> &Histogram<u64> {
        &self.ack_rtt
    }

    pub fn stats(&self) -> &SenderStats {
        &self.stats
    }

    /// Records sent and not yet acknowledged (at most `resend_capacity`).
    pub fn in_flight(&self) -> usize {
        self.resend.records()
    }

    /// Records waiting in the tx queue.
    pub fn queued(&self) -> usize {
        self.tx.len()
    }

    /// Whether a bulk send is in progress.
    pub fn bulk_in_progress(&self) -> bool {
        self.bulk.is_some()
    }

    /// When a datagram from the receiver last arrived.
    pub fn last_heard(&self) -> Option<Instant> {
        self.peer.map(|p| p.last_heard)
    }

    /// How many more changes `push` takes without overflowing. Unbounded
    /// while not connected (pushes are dropped then: the bulk that follows
    /// the handshake covers them). Drain the cache's change queue up to this
    /// and leave the rest there, where it coalesces.
    pub fn credit(&self) -> usize {
        match self.state {
            State::Handshake => usize::MAX,
            State::Connected => self.cfg.tx_capacity.saturating_sub(self.tx.len()),
        }
    }

    /// Connected, nothing queued, nothing unacknowledged, no bulk running.
    pub fn is_idle(&self) -> bool {
        self.is_connected()
            && self.tx.is_empty()
            && self.resend.is_empty()
            && self.markers.is_empty()
            && self.bulk.is_none()
    }

    // ---- inputs ----

    /// Queues a change drained from the internal cache.
    pub fn push(&mut self, change: DataRecord) {
        if !self.is_connected() {
            self.stats.dropped_unconnected += 1;
            return;
        }
        let key = *change.key();
        if self.tx.len() >= self.cfg.tx_capacity && !self.tx.contains(&key) {
            let dropped = self.tx.clear() + 1;
            self.stats.overflows += 1;
            self.stats.overflow_dropped += dropped as u64;
            self.events.push_back(SenderEvent::Overflow { dropped });
            // A bulk whose pass has not begun covers this overflow too, once
            // its window begins now: what was sent before may be older than
            // a dropped change (a dropped DESTROY above all), and must be
            // purged unless the bulk refreshes it. Otherwise restart the
            // bulk: dropped changes may be behind its cursor.
            let next_seq = self.next_seq;
            match self.bulk.as_mut() {
                Some(b) if b.cursor == Some(0) && b.staged.is_empty() => b.begin_seq = next_seq,
                _ => self.begin_bulk(BulkReason::Overflow, 0),
            }
            return;
        }
        let state = match change {
            DataRecord::State { record, ext } => PendingState::State(record, ext),
            DataRecord::Destroy { version, .. } => PendingState::Destroy(version),
        };
        self.tx.push_change(key, state);
    }

    /// Starts a bulk send of the caller's whole cache (e.g. after a resync
    /// of the internal cache from the kernel). Restarts one in progress.
    /// Before the handshake completes this is a no-op: one follows it.
    pub fn start_bulk(&mut self) {
        if self.is_connected() {
            self.begin_bulk(BulkReason::Local, 0);
        }
    }

    /// Handles a datagram from the receiver. An error means it was dropped
    /// (and counted); it is never fatal.
    pub fn handle_datagram(&mut self, now: Instant, bytes: &[u8]) -> Result<(), Error> {
        let d = decode_counted(bytes, &mut self.stats.corrupt, &mut self.stats.malformed)?;
        let h = *d.header();
        if d.kind() != Kind::ReceiverCtl {
            self.stats.malformed += 1;
            return Err(Error::WrongKind {
                kind: d.kind(),
                role: "sender",
            });
        }
        if let Err(e) = check_node(h.node, self.cfg.node, self.cfg.peer_node) {
            self.stats.foreign += 1;
            return Err(e);
        }
        self.stats.datagrams_received += 1;
        if !self.peer.is_some_and(|p| p.session == h.session) {
            // A receiver process we do not follow. Only a HELLO_REQUEST or
            // HELLO_BACK, which carry its incarnation, can make it our peer,
            // and only if it is newer than our peer (or our peer went
            // silent): a late datagram of a dead predecessor must not take
            // over from the live receiver.
            let intro = d.records().find_map(|r| match r {
                Record::HelloRequest {
                    epoch, incarnation, ..
                }
                | Record::HelloBack {
                    epoch, incarnation, ..
                } => Some((epoch, incarnation)),
                _ => None,
            });
            let Some((epoch, incarnation)) = intro.filter(|&(_, inc)| self.may_switch(now, inc))
            else {
                if intro.is_none() && self.is_connected() && self.peer_silent(now) {
                    // Our receiver went silent and another one talks to us
                    // without introducing itself (it adopted our session
                    // from a HELLO its predecessor answered): say HELLO, so
                    // that its HELLO_BACK introduces it.
                    self.stats.peer_restarts += 1;
                    self.events.push_back(SenderEvent::PeerRestarted {
                        peer_session: h.session,
                    });
                    self.rehandshake();
                    return Ok(());
                }
                self.stats.stale_session += 1;
                return Err(Error::StaleSession { session: h.session });
            };
            self.peer = Some(PeerInfo {
                session: h.session,
                incarnation,
                epoch,
                last_heard: now,
            });
            if self.is_connected() {
                // The receiver restarted: whatever it holds is unknown.
                self.stats.peer_restarts += 1;
                self.events.push_back(SenderEvent::PeerRestarted {
                    peer_session: h.session,
                });
                self.rehandshake();
                return Ok(());
            }
        }
        let Some(peer) = self.peer.as_mut() else {
            return Ok(());
        };
        peer.last_heard = now;
        match self.state {
            State::Handshake => {
                for r in d.records() {
                    if let Record::HelloBack { session, epoch, .. } = r
                        && session == self.session
                        && epoch >= peer.epoch
                    {
                        peer.epoch = epoch;
                        self.connect();
                        break;
                    }
                }
                Ok(())
            }
            State::Connected => {
                let known = peer.epoch;
                for r in d.records() {
                    match r {
                        Record::Ack { from, to } => self.on_ack(now, from, to),
                        Record::Nack { from, to } => self.on_nack(from, to),
                        Record::HelloRequest { session, epoch, .. }
                            if (session == self.session || session == 0) && epoch > known =>
                        {
                            // It adopted another sender session since it
                            // answered our HELLO: introduce ourselves again.
                            // (With an epoch not above `known` the request
                            // predates our connection: a late duplicate.)
                            if let Some(p) = self.peer.as_mut() {
                                p.epoch = epoch;
                            }
                            self.rehandshake();
                            return Ok(());
                        }
                        Record::ResyncRequest { request } => self.on_resync_request(request),
                        _ => {}
                    }
                }
                Ok(())
            }
        }
    }

    /// Handles timer expiry; a no-op if nothing expired.
    pub fn handle_timeout(&mut self, now: Instant) {
        match self.state {
            State::Handshake => {
                if self.hello_at.is_some_and(|t| now >= t) {
                    self.hello_due = true;
                    self.hello_at = None;
                }
            }
            State::Connected => {
                if !self.alive_due && now >= self.alive_deadline() {
                    self.alive_due = true;
                }
            }
        }
    }

    // ---- outputs ----

    /// Builds the next datagram to send into `buf` (at most `max_datagram`
    /// bytes are used) and returns its length, or `None` when there is
    /// nothing to send now. Call until `None` after every input.
    #[must_use]
    pub fn poll_transmit(
        &mut self,
        now: Instant,
        buf: &mut [u8],
        lookup: &dyn StateLookup,
    ) -> Option<usize> {
        let len = buf.len().min(self.cfg.max_datagram);
        let buf = &mut buf[..len];
        let n = match self.state {
            State::Handshake => {
                if !self.hello_due {
                    return None;
                }
                self.hello_due = false;
                self.hello_at = Some(now + self.cfg.hello_interval);
                self.stats.hellos_sent += 1;
                let incarnation = self.cfg.incarnation;
                self.control(buf, Record::Hello { incarnation })?
            }
            State::Connected => {
                if let Some(n) = self.data(now, buf, lookup) {
                    n
                } else if self.alive_due {
                    self.stats.alives_sent += 1;
                    self.control(buf, Record::Alive)?
                } else {
                    return None;
                }
            }
        };
        self.alive_due = false;
        self.last_transmit = now;
        self.stats.datagrams_sent += 1;
        self.stats.bytes_sent += n as u64;
        Some(n)
    }

    /// The next event for the agent.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<SenderEvent> {
        self.events.pop_front()
    }

    /// When to call `handle_timeout` next.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.state {
            State::Handshake => self.hello_at,
            State::Connected if self.alive_due => None,
            State::Connected => Some(self.alive_deadline()),
        }
    }

    // ---- internals ----

    fn alive_deadline(&self) -> Instant {
        let busy = !self.resend.is_empty() || !self.markers.is_empty();
        self.last_transmit
            + if busy {
                self.cfg.probe_interval
            } else {
                self.cfg.alive_interval
            }
    }

    fn header(&self, seq: u64, flags: u8) -> HeaderFields {
        HeaderFields {
            node: self.cfg.node,
            session: self.session,
            seq: seq as u32,
            floor: self.resend.floor(self.next_seq) as u32,
            flags,
        }
    }

    fn control(&mut self, buf: &mut [u8], rec: Record) -> Option<usize> {
        let mut enc = Encoder::new(buf, Kind::SenderCtl).ok()?;
        enc.push(&rec).ok()?;
        Some(enc.finish(self.header(self.next_seq, 0)))
    }

    /// Whether a receiver process of `incarnation` may replace our peer.
    fn may_switch(&self, now: Instant, incarnation: u64) -> bool {
        self.peer
            .is_none_or(|p| incarnation > p.incarnation || self.peer_silent(now))
    }

    /// Nothing heard from the peer for `session_timeout` (a live receiver
    /// answers every ALIVE, so this means dead or unreachable).
    fn peer_silent(&self, now: Instant) -> bool {
        self.peer
            .is_some_and(|p| now >= p.last_heard + self.cfg.session_timeout)
    }

    fn connect(&mut self) {
        self.state = State::Connected;
        self.hello_at = None;
        self.hello_due = false;
        let peer_session = self.peer.map_or(0, |p| p.session);
        self.events
            .push_back(SenderEvent::Connected { peer_session });
        self.begin_bulk(BulkReason::Handshake, 0);
    }

    fn rehandshake(&mut self) {
        self.state = State::Handshake;
        self.tx.clear();
        self.resend.clear();
        self.markers.clear();
        self.bulk = None;
        self.hello_due = true;
        self.hello_at = None;
        self.alive_due = false;
    }

    fn begin_bulk(&mut self, reason: BulkReason, request: u32) {
        self.tx.clear_bulk_marks();
        self.resend.clear_bulk_marks();
        let id = self.next_bulk;
        self.next_bulk = self.next_bulk.wrapping_add(1).max(1);
        self.markers
            .push_back(Marker::BulkBegin { bulk: id, request });
        self.bulk = Some(Bulk {
            id,
            request,
            begin_seq: self.next_seq,
            cursor: Some(0),
            staged: VecDeque::new(),
            unacked: 0,
            records: 0,
        });
        self.stats.bulks_started += 1;
        self.events
            .push_back(SenderEvent::BulkStarted { bulk: id, reason });
    }

    fn on_resync_request(&mut self, request: u32) {
        let serving = self.bulk.as_ref().is_some_and(|b| b.request == request);
        if request == 0 || serving || request == self.last_request {
            return; // a repeat of a request already served or being served
        }
        self.last_request = request;
        self.stats.resync_requests += 1;
        self.events
            .push_back(SenderEvent::ResyncRequested { request });
        self.begin_bulk(BulkReason::PeerRequest, request);
    }

    fn on_ack(&mut self, now: Instant, from: u32, to: u32) {
        self.stats.acks_received += 1;
        let (from, to) = (
            expand_seq(from, self.next_seq),
            expand_seq(to, self.next_seq),
        );
        let bulk = &mut self.bulk;
        let rtt = &mut self.ack_rtt;
        self.resend.take_range(
            from,
            to,
            |it| {
                if let SentItem::Entry { bulk: true, .. } = it
                    && let Some(b) = bulk.as_mut()
                {
                    b.unacked = b.unacked.saturating_sub(1);
                }
            },
            |sent| crate::latency::record(rtt, now.saturating_duration_since(sent)),
        );
    }

    fn on_nack(&mut self, from: u32, to: u32) {
        self.stats.nacks_received += 1;
        let (from, to) = (
            expand_seq(from, self.next_seq),
            expand_seq(to, self.next_seq),
        );
        if from < self.resend.floor(self.next_seq) {
            // The receiver asks for numbers we already gave up (its view of
            // our floor is stale, e.g. the datagram that carried it was
            // lost): tell it now rather than let it retry until the next
            // idle ALIVE.
            self.alive_due = true;
        }
        let mut items = Vec::new();
        self.resend
            .take_range(from, to, |it| items.push(*it), |_| ());
        self.stats.retransmits += items.len() as u64;
        // Requeue in reverse so that the front of the queue keeps the
        // original order.
        for it in items.into_iter().rev() {
            match it {
                SentItem::Entry {
                    key,
                    version,
                    destroy,
                    bulk,
                } => {
                    if self.tx.requeue(key, version, destroy, bulk)
                        && let Some(b) = self.bulk.as_mut()
                    {
                        b.unacked = b.unacked.saturating_sub(1);
                    }
                }
                SentItem::Marker(m) => self.markers.push_front(m),
            }
        }
    }

    fn window_open(&self) -> bool {
        self.resend.records() < self.cfg.resend_capacity
            && self.next_seq - self.resend.floor(self.next_seq) < self.cfg.max_seq_window
    }

    /// Builds a data datagram, if there is anything to send and room for it.
    fn data(&mut self, now: Instant, buf: &mut [u8], lookup: &dyn StateLookup) -> Option<usize> {
        self.maybe_finish_bulk();
        if !self.window_open() {
            return None;
        }
        let room = self.cfg.resend_capacity - self.resend.records();
        let mut enc = Encoder::new(buf, Kind::Data).ok()?;
        let mut items = self.resend.take_vec();
        let mut flags = 0;
        while items.len() < room
            && let Some(&m) = self.markers.front()
        {
            let rec = match m {
                Marker::BulkBegin { bulk, request } => Record::BulkBegin { bulk, request },
                Marker::BulkEnd { bulk, begin_seq } => Record::BulkEnd { bulk, begin_seq },
            };
            if enc.push(&rec).is_err() {
                break;
            }
            self.markers.pop_front();
            items.push(SentItem::Marker(m));
            flags |= wire::flags::MARKERS;
        }
        // Live changes and the bulk take turns at filling datagrams first,
        // so that neither starves the other.
        if self.bulk_turn {
            self.fill_bulk(&mut enc, &mut items, room, lookup);
            self.fill_tx(&mut enc, &mut items, room, lookup);
        } else {
            self.fill_tx(&mut enc, &mut items, room, lookup);
            self.fill_bulk(&mut enc, &mut items, room, lookup);
        }
        self.bulk_turn = !self.bulk_turn;
        if items.is_empty() {
            self.resend.recycle(items);
            return None;
        }
        let seq = self.next_seq;
        let records = items.len() as u64;
        let n = enc.finish(self.header(seq, flags));
        self.resend.push(seq, items, now);
        self.next_seq += 1;
        self.stats.data_datagrams += 1;
        self.stats.records_sent += records;
        Some(n)
    }

    fn fill_tx(
        &mut self,
        enc: &mut Encoder<'_>,
        items: &mut Vec<SentItem>,
        room: usize,
        lookup: &dyn StateLookup,
    ) {
        while items.len() < room {
            let Some((key, p)) = self.tx.pop() else {
                return;
            };
            let rec = match p.state {
                PendingState::State(record, ext) => DataRecord::State { record, ext },
                PendingState::Destroy(version) => DataRecord::Destroy { key, version },
                PendingState::Resend { version, destroy } => match lookup.current(&key) {
                    Lookup::Live(r, e) => DataRecord::state(&r, e.as_ref()),
                    Lookup::Gone(version) => DataRecord::Destroy { key, version },
                    Lookup::Unknown if destroy => DataRecord::Destroy { key, version },
                    Lookup::Unknown => {
                        // A DESTROY newer than what we sent was pushed (the
                        // lookup's contract): nothing to resend.
                        self.stats.resends_skipped += 1;
                        if p.bulk
                            && let Some(b) = self.bulk.as_mut()
                        {
                            b.unacked = b.unacked.saturating_sub(1);
                        }
                        continue;
                    }
                },
            };
            if enc.push(&rec.to_wire()).is_err() {
                let state = match rec {
                    DataRecord::State { record, ext } => PendingState::State(record, ext),
                    DataRecord::Destroy { version, .. } => PendingState::Destroy(version),
                };
                self.tx.push_front(
                    key,
                    Pending {
                        state,
                        bulk: p.bulk,
                    },
                );
                return;
            }
            items.push(SentItem::Entry {
                key,
                version: rec.version(),
                destroy: rec.is_destroy(),
                bulk: p.bulk,
            });
        }
    }

    fn fill_bulk(
        &mut self,
        enc: &mut Encoder<'_>,
        items: &mut Vec<SentItem>,
        room: usize,
        lookup: &dyn StateLookup,
    ) {
        let Some(b) = self.bulk.as_mut() else {
            return;
        };
        while items.len() < room {
            // Refill from the cursor; bounded so that a sparse cache does
            // not make one call scan it all.
            let mut calls = 0;
            while b.staged.is_empty()
                && calls < 16
                && let Some(c) = b.cursor
            {
                let staged = &mut b.staged;
                b.cursor = lookup.bulk(c, self.cfg.bulk_batch, &mut |r, e| {
                    staged.push_back((*r, e.copied()));
                });
                calls += 1;
            }
            let Some((r, e)) = b.staged.front() else {
                return;
            };
            let rec = DataRecord::state(r, e.as_ref());
            if enc.push(&rec.to_wire()).is_err() {
                return;
            }
            b.staged.pop_front();
            items.push(SentItem::Entry {
                key: *rec.key(),
                version: rec.version(),
                destroy: false,
                bulk: true,
            });
            b.unacked += 1;
            b.records += 1;
            self.stats.bulk_records += 1;
        }
    }

    /// Queues BULK_END once the pass is done and all of it acknowledged.
    fn maybe_finish_bulk(&mut self) {
        let Some(b) = &self.bulk else {
            return;
        };
        if b.cursor.is_some() || !b.staged.is_empty() || b.unacked > 0 {
            return;
        }
        let (bulk, records) = (b.id, b.records);
        self.markers.push_back(Marker::BulkEnd {
            bulk,
            begin_seq: b.begin_seq as u32,
        });
        self.bulk = None;
        self.stats.bulks_completed += 1;
        self.events
            .push_back(SenderEvent::BulkFinished { bulk, records });
    }
}

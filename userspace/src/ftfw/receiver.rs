//! The FT-FW receiver (backup side).
//!
//! It follows one sender session at a time, adopted from a HELLO (answered
//! with HELLO_BACK) if it is the first, or comes from a process with a
//! higher incarnation, or the current session has been silent for
//! `session_timeout`: a late HELLO of a dead predecessor cannot take over.
//! Data from any other session is dropped; if that session is not a retired
//! one, the receiver asks it to HELLO (HELLO_REQUEST, with our incarnation):
//! this is how a sender learns that its receiver restarted. A new receiver
//! also sends one HELLO_REQUEST at once, to whoever listens.
//!
//! Sequence tracking, in u64 (see [`super::expand_seq`]):
//!
//! - `cum`: every number below it is *resolved*: received, or given up by
//!   the sender (its header `floor` passed it: acknowledged, resent under a
//!   newer number after our NACK, or superseded by a bulk);
//! - `ooo`: numbers received above `cum`;
//! - `highest`: one past the highest number known to exist (from data, or
//!   from an ALIVE's next sequence number). The gaps between `cum` and
//!   `highest` are NACKed at once when they appear, then again every
//!   `nack_retry` while they last.
//!
//! ACKs are cumulative: each one says "everything from the sender's floor to
//! `cum`, plus these ranges above", so a lost ACK is repaired by the next. One
//! goes out after `ack_window` new datagrams or `ack_delay` after the first,
//! and at once when an ALIVE shows the sender still holds what we have. Every
//! ALIVE gets an answer (empty if there is nothing to say), so that the
//! sender can tell a silent receiver from an idle one.
//!
//! Every valid record of the current session is delivered, even from a late
//! or duplicated datagram (except exact duplicates of one still tracked, and
//! data older than the last completed bulk, which that bulk superseded):
//! [`super::apply`] makes that harmless.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use ctsync_common::wire::{self, Encoder, Header, HeaderFields, Kind, Record, Records};

use super::apply::{Purge, Stamp};
use super::ranges::RangeSet;
use super::{DataRecord, Error, Retired, Rng, check_node, decode_counted, expand_seq};

/// Receiver settings.
#[derive(Clone, Debug)]
pub struct ReceiverConfig {
    /// Our node id (in every header).
    pub node: u32,
    /// Accept datagrams only from this node, if set.
    pub peer_node: Option<u32>,
    /// Largest datagram to build.
    pub max_datagram: usize,
    /// ACK after this many new data datagrams...
    pub ack_window: u32,
    /// ... or this long after the first unacknowledged one.
    pub ack_delay: Duration,
    /// Wait this long before NACKing a new gap (reordering tolerance; zero
    /// NACKs at once: a needless resend costs less than a late one).
    pub nack_delay: Duration,
    /// NACK the remaining gaps again this often.
    pub nack_retry: Duration,
    /// At most one HELLO_REQUEST per this interval.
    pub hello_request_interval: Duration,
    /// Repeat RESYNC_REQUEST this often until the bulk begins.
    pub resync_retry: Duration,
    /// Most sequence numbers tracked above `cum`; keep it above the
    /// sender's `max_seq_window` (a datagram further ahead is delivered but
    /// not tracked: it gets NACKed and resent later).
    pub max_window: u64,
    /// Grows across restarts of the agent on this node (e.g. wall-clock
    /// microseconds at start); sent in HELLO_BACK / HELLO_REQUEST.
    pub incarnation: u64,
    /// A sender session silent this long may be replaced by a HELLO that
    /// does not look newer (covers a clock stepped back between restarts).
    pub session_timeout: Duration,
    /// Seed for the session id and request ids.
    pub seed: u64,
}

impl Default for ReceiverConfig {
    fn default() -> ReceiverConfig {
        ReceiverConfig {
            node: 2,
            peer_node: None,
            max_datagram: wire::datagram_budget(1500, false),
            ack_window: 32,
            ack_delay: Duration::from_millis(5),
            nack_delay: Duration::ZERO,
            nack_retry: Duration::from_millis(20),
            hello_request_interval: Duration::from_millis(100),
            resync_retry: Duration::from_millis(500),
            max_window: 1 << 17,
            incarnation: 0,
            session_timeout: Duration::from_secs(3),
            seed: 0,
        }
    }
}

/// Things the agent must act on.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum ReceiverEvent {
    /// Apply to the external cache (see [`super::apply`]).
    Record {
        stamp: Stamp,
        record: DataRecord,
    },
    /// A sender session was adopted: first contact (`previous` is `None`)
    /// or the sender restarted. A bulk send follows; entries it does not
    /// refresh are purged at its end.
    SessionStarted {
        previous: Option<u32>,
        session: u32,
    },
    BulkStarted {
        bulk: u32,
        request: u32,
    },
    /// The bulk is complete: remove the entries `purge` does not keep.
    BulkFinished {
        bulk: u32,
        purge: Purge,
    },
}

/// Counters, for metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct ReceiverStats {
    pub datagrams_received: u64,
    pub data_datagrams: u64,
    pub records_delivered: u64,
    /// Data datagrams seen twice while still tracked (not delivered again).
    pub duplicates: u64,
    /// Data datagrams below `cum` (delivered anyway).
    pub late: u64,
    /// Data datagrams that arrived after a higher-numbered data datagram of
    /// the same session (reordered on the way, or held back until after a
    /// resend), duplicates of tracked numbers excepted. Includes `late` ones.
    pub reordered: u64,
    /// Data datagrams older than the last completed bulk (dropped).
    pub superseded: u64,
    /// Sequence numbers the sender gave up before we got them (resent under
    /// new numbers, or covered by a bulk): not losses, but worth watching.
    pub retired_unseen: u64,
    pub datagrams_sent: u64,
    /// ACK records (ranges) sent.
    pub acks_sent: u64,
    /// NACK records (ranges) sent.
    pub nacks_sent: u64,
    pub nack_retries: u64,
    pub hello_backs_sent: u64,
    pub hello_requests_sent: u64,
    pub malformed: u64,
    pub corrupt: u64,
    pub foreign: u64,
    pub stale_session: u64,
    pub sessions: u64,
    pub peer_restarts: u64,
    pub bulks_started: u64,
    pub bulks_completed: u64,
    pub resync_requests: u64,
    pub window_overruns: u64,
}

/// Data the XDP receive path may apply: from `session`, and (serial order)
/// not before `floor`, which the last completed bulk superseded.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct AcceptFilter {
    pub session: u32,
    pub floor: Option<u32>,
}

/// What we know of the adopted sender session.
#[derive(Debug)]
struct Peer {
    session: u32,
    /// The sender process's incarnation (from its HELLO).
    incarnation: u64,
    last_heard: Instant,
    cum: u64,
    highest: u64,
    /// One past the highest data sequence number received (unlike
    /// `highest`, not moved by control datagrams or floors).
    highest_data: u64,
    /// The sender's floor, as last seen.
    floor: u64,
    ooo: RangeSet,
    /// Data below this was superseded by a completed bulk.
    accept_floor: u64,
    /// Gaps below this were NACKed at least once.
    nack_mark: u64,
}

impl Peer {
    /// Marks everything below `to` resolved; returns how many of those
    /// numbers were never received.
    fn resolve_below(&mut self, to: u64) -> u64 {
        if to <= self.cum {
            return 0;
        }
        let have = self.ooo.remove_below(to);
        let unseen = (to - self.cum) - have;
        self.cum = to;
        self.highest = self.highest.max(to);
        self.nack_mark = self.nack_mark.max(to);
        self.advance();
        unseen
    }

    fn advance(&mut self) {
        if let Some(r) = self.ooo.first()
            && r.start == self.cum
        {
            self.cum = r.end;
            self.ooo.remove_below(r.end);
        }
    }

    fn has_gaps(&self) -> bool {
        self.cum < self.highest
    }
}

#[derive(Debug)]
struct Resync {
    request: u32,
    due: bool,
    at: Option<Instant>,
}

/// The backup's side of FT-FW for one peer. See the [module docs](self)
/// and [`super`] for the calling contract.
#[derive(Debug)]
pub struct Receiver {
    cfg: ReceiverConfig,
    session: u32,
    rng: Rng,
    peer: Option<Peer>,
    retired: Retired,
    unacked: u32,
    ack_due: bool,
    /// Answer an ALIVE even with nothing to acknowledge: keeps the sender's
    /// view of our liveness fresh.
    keepalive_due: bool,
    ack_at: Option<Instant>,
    nack_new_due: bool,
    nack_new_at: Option<Instant>,
    nack_all_due: bool,
    nack_retry_at: Option<Instant>,
    nack_cursor: u64,
    /// Sender sessions adopted so far (sent in HELLO_BACK / HELLO_REQUEST).
    epoch: u32,
    hello_back: Option<u32>,
    hello_request: Option<u32>,
    last_hello_request: Option<Instant>,
    resync: Option<Resync>,
    events: VecDeque<ReceiverEvent>,
    stats: ReceiverStats,
}

impl Receiver {
    pub fn new(cfg: ReceiverConfig) -> Receiver {
        let mut rng = Rng::new(cfg.seed ^ 0x5245_4356);
        Receiver {
            session: rng.nonzero_u32(),
            rng,
            cfg,
            peer: None,
            retired: Retired::default(),
            unacked: 0,
            ack_due: false,
            keepalive_due: false,
            ack_at: None,
            nack_new_due: false,
            nack_new_at: None,
            nack_all_due: false,
            nack_retry_at: None,
            nack_cursor: 0,
            epoch: 0,
            hello_back: None,
            // Announce ourselves at once: a sender that was connected to our
            // predecessor sees a new receiver session and says HELLO again,
            // without waiting for its next idle ALIVE.
            hello_request: Some(0),
            last_hello_request: None,
            resync: None,
            events: VecDeque::new(),
            stats: ReceiverStats::default(),
        }
    }

    // ---- getters ----

    /// Our session id.
    pub fn session(&self) -> u32 {
        self.session
    }

    /// The sender session we follow.
    pub fn peer_session(&self) -> Option<u32> {
        self.peer.as_ref().map(|p| p.session)
    }

    pub fn stats(&self) -> &ReceiverStats {
        &self.stats
    }

    /// Sequence numbers missing between `cum` and `highest`.
    pub fn gaps(&self) -> u64 {
        self.peer
            .as_ref()
            .map_or(0, |p| p.ooo.missing(p.cum, p.highest))
    }

    /// What the XDP program must accept (mirror it into the program's
    /// config map after every input), `None` before a session is adopted.
    pub fn accept_filter(&self) -> Option<AcceptFilter> {
        self.peer.as_ref().map(|p| AcceptFilter {
            session: p.session,
            floor: (p.accept_floor > 0).then_some(p.accept_floor as u32),
        })
    }

    /// Whether a RESYNC_REQUEST is waiting for its bulk to begin.
    pub fn resync_pending(&self) -> bool {
        self.resync.is_some()
    }

    // ---- inputs ----

    /// Asks the sender for a bulk send of everything (`ctsync resync
    /// request`, or after losing the external cache). Repeated until the
    /// bulk begins. Returns the request id.
    pub fn request_resync(&mut self, now: Instant) -> u32 {
        let request = self.rng.nonzero_u32();
        self.resync = Some(Resync {
            request,
            due: true,
            at: None,
        });
        let _ = now;
        self.stats.resync_requests += 1;
        request
    }

    /// Handles a datagram from the sender (the userspace receive path).
    /// An error means it was dropped (and counted); it is never fatal.
    pub fn handle_datagram(&mut self, now: Instant, bytes: &[u8]) -> Result<(), Error> {
        let d = decode_counted(bytes, &mut self.stats.corrupt, &mut self.stats.malformed)?;
        let h = *d.header();
        if let Err(e) = check_node(h.node, self.cfg.node, self.cfg.peer_node) {
            self.stats.foreign += 1;
            return Err(e);
        }
        match d.kind() {
            Kind::Data => self.on_data(now, &h, Some(d.records())),
            Kind::SenderCtl => self.on_sender_ctl(now, &h, d.records()),
            Kind::ReceiverCtl => {
                self.stats.malformed += 1;
                Err(Error::WrongKind {
                    kind: Kind::ReceiverCtl,
                    role: "receiver",
                })
            }
        }
    }

    /// The XDP receive path: a data datagram's header, checked and applied
    /// by XDP (records already in the external cache). Datagrams with the
    /// MARKERS flag must come through `handle_datagram` instead, not both.
    pub fn handle_seen(&mut self, now: Instant, header: &Header) -> Result<(), Error> {
        if let Err(e) = check_node(header.node, self.cfg.node, self.cfg.peer_node) {
            self.stats.foreign += 1;
            return Err(e);
        }
        self.on_data(now, header, None)
    }

    /// Handles timer expiry; a no-op if nothing expired.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.ack_at.is_some_and(|t| now >= t) {
            self.ack_at = None;
            self.ack_due = true;
        }
        if self.nack_new_at.is_some_and(|t| now >= t) {
            self.nack_new_at = None;
            self.nack_new_due = true;
        }
        if self.nack_retry_at.is_some_and(|t| now >= t) {
            self.nack_retry_at = None;
            self.nack_all_due = true;
            self.nack_cursor = 0;
            self.stats.nack_retries += 1;
        }
        if let Some(r) = &mut self.resync
            && r.at.is_some_and(|t| now >= t)
        {
            r.at = None;
            r.due = true;
        }
    }

    // ---- outputs ----

    /// Builds the next control datagram into `buf` and returns its length,
    /// or `None` when there is nothing to send now.
    #[must_use]
    pub fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<usize> {
        let len = buf.len().min(self.cfg.max_datagram);
        let mut enc = Encoder::new(&mut buf[..len], Kind::ReceiverCtl).ok()?;
        if let Some(s) = self.hello_back
            && enc
                .push(&Record::HelloBack {
                    session: s,
                    epoch: self.epoch,
                    incarnation: self.cfg.incarnation,
                })
                .is_ok()
        {
            self.hello_back = None;
            self.stats.hello_backs_sent += 1;
        }
        if let Some(s) = self.hello_request
            && enc
                .push(&Record::HelloRequest {
                    session: s,
                    epoch: self.epoch,
                    incarnation: self.cfg.incarnation,
                })
                .is_ok()
        {
            self.hello_request = None;
            self.stats.hello_requests_sent += 1;
        }
        if self.peer.is_some()
            && let Some(r) = &mut self.resync
            && r.due
            && enc
                .push(&Record::ResyncRequest { request: r.request })
                .is_ok()
        {
            r.due = false;
            r.at = Some(now + self.cfg.resync_retry);
        }
        if self.ack_due {
            self.write_acks(&mut enc);
        }
        if self.nack_new_due {
            self.write_new_nacks(now, &mut enc);
        }
        if self.nack_all_due {
            self.write_all_nacks(now, &mut enc);
        }
        if enc.is_empty() && !self.keepalive_due {
            return None;
        }
        self.keepalive_due = false;
        let n = enc.finish(HeaderFields {
            node: self.cfg.node,
            session: self.session,
            seq: 0,
            floor: 0,
            flags: 0,
        });
        self.stats.datagrams_sent += 1;
        Some(n)
    }

    #[must_use]
    pub fn poll_event(&mut self) -> Option<ReceiverEvent> {
        self.events.pop_front()
    }

    /// When to call `handle_timeout` next.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        [
            self.ack_at,
            self.nack_new_at,
            self.nack_retry_at,
            self.resync.as_ref().and_then(|r| r.at),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    // ---- internals ----

    /// The current peer if `session` is it; otherwise handles the stranger.
    fn current(&mut self, now: Instant, session: u32) -> Result<&mut Peer, Error> {
        if let Some(p) = self.peer.as_mut()
            && p.session == session
        {
            p.last_heard = now;
            return Ok(p);
        }
        self.stats.stale_session += 1;
        if !self.retired.contains(session)
            && self
                .last_hello_request
                .is_none_or(|t| now >= t + self.cfg.hello_request_interval)
        {
            self.hello_request = Some(session);
            self.last_hello_request = Some(now);
        }
        Err(Error::StaleSession { session })
    }

    fn on_sender_ctl(
        &mut self,
        now: Instant,
        h: &Header,
        records: Records<'_>,
    ) -> Result<(), Error> {
        self.stats.datagrams_received += 1;
        for r in records {
            match r {
                Record::Hello { incarnation } => self.on_hello(now, h, incarnation)?,
                Record::Alive => self.on_alive(now, h)?,
                _ => {}
            }
        }
        Ok(())
    }

    fn on_hello(&mut self, now: Instant, h: &Header, incarnation: u64) -> Result<(), Error> {
        let current = self.peer.as_ref().is_some_and(|p| p.session == h.session);
        // Adopt a new sender session only from a newer process, or when the
        // one we follow went silent: a late HELLO of a dead predecessor must
        // not take over from the live sender.
        let newer = self.peer.as_ref().is_none_or(|p| {
            incarnation > p.incarnation || now >= p.last_heard + self.cfg.session_timeout
        });
        if self.retired.contains(h.session) || (!current && !newer) {
            self.stats.stale_session += 1;
            return Err(Error::StaleSession { session: h.session });
        }
        if !current {
            let previous = self.peer.as_ref().map(|p| p.session);
            if let Some(p) = previous {
                self.retired.push(p);
                self.stats.peer_restarts += 1;
            }
            let base = (1u64 << 32) | u64::from(h.seq);
            self.peer = Some(Peer {
                session: h.session,
                incarnation,
                last_heard: now,
                cum: base,
                highest: base,
                highest_data: base,
                floor: base,
                ooo: RangeSet::default(),
                accept_floor: 0,
                nack_mark: base,
            });
            self.unacked = 0;
            self.ack_due = false;
            self.ack_at = None;
            self.nack_new_due = false;
            self.nack_new_at = None;
            self.nack_all_due = false;
            self.nack_retry_at = None;
            // The bulk that follows the handshake serves any pending request.
            self.resync = None;
            self.stats.sessions += 1;
            self.epoch = self.epoch.wrapping_add(1);
            self.events.push_back(ReceiverEvent::SessionStarted {
                previous,
                session: h.session,
            });
        } else {
            if let Some(p) = self.peer.as_mut() {
                p.last_heard = now;
            }
            self.note_sender_position(h, true);
        }
        self.hello_back = Some(h.session);
        Ok(())
    }

    fn on_alive(&mut self, now: Instant, h: &Header) -> Result<(), Error> {
        self.current(now, h.session)?;
        self.note_sender_position(h, true);
        self.schedule_nacks(now);
        // The sender probes because it holds unacknowledged data: tell it
        // what we have.
        let p = self.peer.as_ref().expect("current");
        if p.cum > p.floor || !p.ooo.is_empty() {
            self.ack_due = true;
        }
        self.keepalive_due = true;
        Ok(())
    }

    /// Takes in the sender's floor and (for control datagrams, whose `seq`
    /// is the next one) the highest sequence number that exists.
    fn note_sender_position(&mut self, h: &Header, seq_is_next: bool) {
        let p = self.peer.as_mut().expect("current");
        let floor = expand_seq(h.floor, p.cum);
        if seq_is_next {
            let next = expand_seq(h.seq, p.cum);
            p.highest = p.highest.max(next);
        }
        if floor > p.floor {
            p.floor = floor;
        }
        let unseen = p.resolve_below(floor);
        self.stats.retired_unseen += unseen;
    }

    fn schedule_nacks(&mut self, now: Instant) {
        let Some(p) = &self.peer else {
            return;
        };
        if p.highest > p.nack_mark && p.ooo.missing(p.nack_mark, p.highest) > 0 {
            if self.cfg.nack_delay.is_zero() {
                self.nack_new_due = true;
            } else {
                self.nack_new_at.get_or_insert(now + self.cfg.nack_delay);
            }
        }
    }

    fn on_data(
        &mut self,
        now: Instant,
        h: &Header,
        records: Option<Records<'_>>,
    ) -> Result<(), Error> {
        self.stats.datagrams_received += 1;
        self.stats.data_datagrams += 1;
        let max_window = self.cfg.max_window;
        self.current(now, h.session)?;
        self.note_sender_position(h, false);
        let p = self.peer.as_mut().expect("current");
        let seq = expand_seq(h.seq, p.cum);
        if seq < p.accept_floor {
            self.stats.superseded += 1;
            return Ok(());
        }
        let stamp = Stamp {
            session: p.session,
            seq: h.seq,
        };
        if seq >= p.cum + max_window {
            // Beyond what we track. A sender whose `max_seq_window` is below
            // our `max_window` cannot get here (each header's floor keeps
            // seq - cum within its window); with a mismatched config, deliver
            // the records (harmless) but do not track the number: it will be
            // NACKed, and resent, once the window moves.
            self.stats.window_overruns += 1;
            if let Some(records) = records {
                for r in records {
                    self.deliver(stamp, &r);
                }
            }
            return Ok(());
        }
        let fresh = if seq < p.cum {
            self.stats.late += 1;
            false
        } else if !p.ooo.insert(seq) {
            self.stats.duplicates += 1;
            return Ok(());
        } else {
            p.advance();
            true
        };
        if seq < p.highest_data {
            self.stats.reordered += 1;
        }
        p.highest_data = p.highest_data.max(seq + 1);
        p.highest = p.highest.max(seq + 1);
        if let Some(records) = records {
            for r in records {
                self.deliver(stamp, &r);
            }
        }
        if fresh {
            self.unacked += 1;
            if self.unacked >= self.cfg.ack_window {
                self.ack_due = true;
            } else {
                self.ack_at.get_or_insert(now + self.cfg.ack_delay);
            }
        }
        self.schedule_nacks(now);
        Ok(())
    }

    fn deliver(&mut self, stamp: Stamp, r: &Record) {
        if let Some(record) = DataRecord::from_wire(r) {
            self.stats.records_delivered += 1;
            self.events
                .push_back(ReceiverEvent::Record { stamp, record });
            return;
        }
        match *r {
            Record::BulkBegin { bulk, request } => {
                self.stats.bulks_started += 1;
                if self.resync.as_ref().is_some_and(|x| x.request == request) {
                    self.resync = None;
                }
                self.events
                    .push_back(ReceiverEvent::BulkStarted { bulk, request });
            }
            Record::BulkEnd { bulk, begin_seq } => {
                let p = self.peer.as_mut().expect("current");
                let begin = expand_seq(begin_seq, p.cum);
                // Everything before the bulk is superseded by it.
                p.accept_floor = p.accept_floor.max(begin);
                p.resolve_below(begin);
                let purge = Purge {
                    session: p.session,
                    from: begin_seq,
                };
                self.stats.bulks_completed += 1;
                self.events
                    .push_back(ReceiverEvent::BulkFinished { bulk, purge });
            }
            _ => {}
        }
    }

    fn write_acks(&mut self, enc: &mut Encoder<'_>) {
        let Some(p) = &self.peer else {
            self.ack_due = false;
            return;
        };
        if p.cum > p.floor {
            if enc
                .push(&Record::Ack {
                    from: p.floor as u32,
                    to: (p.cum - 1) as u32,
                })
                .is_err()
            {
                return;
            }
            self.stats.acks_sent += 1;
        }
        // Ranges above cum, as many as fit beside a little room for NACKs.
        for r in p.ooo.iter() {
            if enc.remaining() < 16 * wire::record_len(wire::rtype::NACK).unwrap_or(12) {
                break;
            }
            if enc
                .push(&Record::Ack {
                    from: r.start as u32,
                    to: (r.end - 1) as u32,
                })
                .is_err()
            {
                break;
            }
            self.stats.acks_sent += 1;
        }
        self.ack_due = false;
        self.ack_at = None;
        self.unacked = 0;
    }

    fn write_new_nacks(&mut self, now: Instant, enc: &mut Encoder<'_>) {
        let Some(p) = &mut self.peer else {
            self.nack_new_due = false;
            return;
        };
        let from = p.nack_mark.max(p.cum);
        let mut done_to = p.highest;
        for g in p.ooo.gaps(from, p.highest) {
            if enc
                .push(&Record::Nack {
                    from: g.start as u32,
                    to: (g.end - 1) as u32,
                })
                .is_err()
            {
                done_to = g.start;
                break;
            }
            self.stats.nacks_sent += 1;
        }
        p.nack_mark = done_to;
        self.nack_new_due = done_to < p.highest;
        if p.has_gaps() && self.nack_retry_at.is_none() {
            self.nack_retry_at = Some(now + self.cfg.nack_retry);
        }
    }

    fn write_all_nacks(&mut self, now: Instant, enc: &mut Encoder<'_>) {
        let Some(p) = &self.peer else {
            self.nack_all_due = false;
            return;
        };
        let from = self.nack_cursor.max(p.cum);
        let mut next = None;
        for g in p.ooo.gaps(from, p.nack_mark.min(p.highest)) {
            if enc
                .push(&Record::Nack {
                    from: g.start as u32,
                    to: (g.end - 1) as u32,
                })
                .is_err()
            {
                next = Some(g.start);
                break;
            }
            self.stats.nacks_sent += 1;
        }
        match next {
            Some(n) => self.nack_cursor = n,
            None => {
                self.nack_all_due = false;
                self.nack_cursor = 0;
                if p.has_gaps() && self.nack_retry_at.is_none() {
                    self.nack_retry_at = Some(now + self.cfg.nack_retry);
                }
            }
        }
    }
}

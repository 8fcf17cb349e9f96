//! Replication I/O: the FT-FW sender (our internal cache to the peer) and
//! receiver (the peer's internal cache into our external cache) over the
//! sync-link transport. Both firewalls run both halves; the protocol lives
//! in `ftfw`, sockets in `transport`, this module only moves bytes, time and
//! changes between them.

use std::{net::IpAddr, time::Instant};

use ctsync_common::{CtExt, CtRecord, Tuple, wire};
use serde_json::json;

use crate::{
    cache::{self, Cache, Change},
    commit::CommitOptions,
    config,
    ctwrite::{WriteError, Writer},
    external::{External, MapExternal},
    ftfw::{
        self, DataRecord, ExternalTable, Receiver, ReceiverConfig, ReceiverEvent, Sender,
        SenderConfig, SenderEvent, StateLookup,
    },
    standby::{FLUSH_MAX, Mirror},
    transport::{LinkConfig, Transport, TransportError},
    xdp::XdpReceive,
};

/// The internal cache as the sender sees it.
struct CacheLookup<'a>(&'a Cache);

impl StateLookup for CacheLookup<'_> {
    fn current(&self, key: &Tuple) -> ftfw::Lookup {
        match self.0.lookup(key) {
            cache::Lookup::Live(r, e) => ftfw::Lookup::Live(*r, e.copied()),
            cache::Lookup::Gone(v) => ftfw::Lookup::Gone(v),
            cache::Lookup::Unknown => ftfw::Lookup::Unknown,
        }
    }

    fn bulk(
        &self,
        cursor: u64,
        max: usize,
        visit: &mut dyn FnMut(&CtRecord, Option<&CtExt>),
    ) -> Option<u64> {
        self.0.walk(cursor, max, visit)
    }
}

#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct ReplicationStats {
    /// Datagrams that were neither ours to handle nor decodable.
    pub malformed: u64,
    /// Records that changed the external cache.
    pub applied: u64,
    /// External entries removed at the end of a bulk send (gone on the peer).
    pub purged: u64,
    /// Sends refused by every link (the peer will NACK the gap).
    pub send_errors: u64,
    pub bulks_sent: u64,
    pub bulks_received: u64,
    pub peer_restarts: u64,
    /// External entries removed by their timeout while the peer was silent.
    pub expired: u64,
}

/// The peer counts as gone after this long without a datagram from it.
const PEER_SILENCE: std::time::Duration = std::time::Duration::from_secs(3);
/// While XDP reports flow, read its ring buffer this often...
const SEEN_POLL: std::time::Duration = std::time::Duration::from_millis(1);
/// ...for this long after the last one.
const SEEN_POLL_FOR: std::time::Duration = std::time::Duration::from_millis(100);
/// Tombstones guard against late datagrams for this long (seconds).
const TOMBSTONE_TTL: u32 = 60;

pub struct Replication {
    transport: Transport,
    sender: Sender,
    receiver: Receiver,
    external: External,
    /// The XDP receive path, when attached.
    xdp: Option<XdpReceive>,
    /// Why the XDP receive path is not in use, when it isn't.
    xdp_off: Option<String>,
    /// Hot standby: external-cache changes on their way into the kernel.
    mirror: Option<Mirror>,
    /// XDP's `changes_lost` counter as last seen.
    changes_lost: u64,
    /// Poll XDP's ring buffer at this time (reports flowing)...
    seen_poll_at: Option<Instant>,
    /// ... until this long after the last one.
    seen_until: Option<Instant>,
    tx: Vec<u8>,
    rx: Vec<u8>,
    started: Instant,
    last_tick: u32,
    pub stats: ReplicationStats,
    /// Change read from the kernel → handed to the sender (and sent).
    event_to_send: crate::latency::QueueDelay,
    /// Sync datagrams read → handled (data records applied to the external
    /// cache, control answered), per read batch.
    receive_to_apply: hdrhistogram::Histogram<u64>,
    /// When the datagrams whose records are not applied yet were read.
    received_at: Option<Instant>,
}

/// The external cache: in the XDP program's map if XDP attaches, else in
/// memory (with the reason, logged).
fn open_external(cfg: &config::Sync, node: u32) -> (External, Option<XdpReceive>, Option<String>) {
    if cfg.xdp == config::XdpMode::Off {
        tracing::info!("XDP receive path off (sync.xdp = \"off\"): the agent's socket receives");
        return (
            External::Memory(ExternalTable::new()),
            None,
            Some("sync.xdp = \"off\"".into()),
        );
    }
    match XdpReceive::open(cfg, node) {
        Ok((x, map, fd)) => (
            External::Map(MapExternal::new(map, fd, cfg.xdp_map_entries)),
            Some(x),
            None,
        ),
        Err(e) => {
            tracing::warn!(
                "XDP receive path unavailable, the agent's socket receives instead: {e}"
            );
            (
                External::Memory(ExternalTable::new()),
                None,
                Some(e.to_string()),
            )
        }
    }
}

/// This node's id: configured, or the low bits of the first link's address.
fn node_id(cfg: &config::Sync) -> u32 {
    if cfg.node_id != 0 {
        return cfg.node_id;
    }
    match cfg.links.first().map(|l| l.local) {
        Some(IpAddr::V4(a)) => u32::from(a),
        Some(IpAddr::V6(a)) => u128::from(a) as u32,
        None => 1,
    }
}

impl Replication {
    /// Opens the links and sets both halves up. `now` starts their clocks.
    pub fn open(cfg: &config::Sync, now: Instant) -> Result<Replication, TransportError> {
        let links: Vec<LinkConfig> = cfg
            .links
            .iter()
            .map(|l| LinkConfig {
                interface: l.interface.clone(),
                local: l.local,
                peer: l.peer,
                port: cfg.port,
            })
            .collect();
        let transport = Transport::open(&links)?;
        let ipv6 = cfg.links.first().is_some_and(|l| l.local.is_ipv6());
        let max_datagram = wire::datagram_budget(cfg.mtu.into(), ipv6);
        // Grows across restarts, so the peer can tell a successor from a late
        // HELLO of its predecessor.
        let incarnation = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64);
        let seed = incarnation ^ u64::from(std::process::id()) << 32;
        let node = node_id(cfg);
        let sender = Sender::new(
            SenderConfig {
                node,
                max_datagram,
                resend_capacity: cfg.window,
                tx_capacity: cfg.window,
                incarnation,
                seed,
                ..SenderConfig::default()
            },
            now,
        );
        let mut receiver = Receiver::new(ReceiverConfig {
            node,
            max_datagram,
            incarnation,
            seed: seed.rotate_left(17),
            ..ReceiverConfig::default()
        });
        if cfg.startup_resync {
            receiver.request_resync(now);
        }
        let (external, xdp, xdp_off) = open_external(cfg, node);
        Ok(Replication {
            transport,
            sender,
            receiver,
            external,
            xdp,
            xdp_off,
            seen_poll_at: None,
            seen_until: None,
            mirror: None,
            changes_lost: 0,
            tx: vec![0; 65536],
            rx: vec![0; 65536],
            started: now,
            last_tick: 0,
            stats: ReplicationStats::default(),
            event_to_send: Default::default(),
            receive_to_apply: crate::latency::histogram(),
            received_at: None,
        })
    }

    pub fn transport(&self) -> &Transport {
        &self.transport
    }

    pub fn external(&self) -> &External {
        &self.external
    }

    /// The ring buffer of the XDP receive path, for readiness.
    pub fn xdp_fd(&self) -> Option<std::os::fd::RawFd> {
        self.xdp.as_ref().map(XdpReceive::seen_fd)
    }

    /// Hands XDP's reports of the datagrams it applied to the receiver.
    fn receive_seen(&mut self, now: Instant) {
        let Some(x) = &mut self.xdp else { return };
        if let Some(m) = &mut self.mirror {
            x.drain_changes(|e| {
                if e.state == ctsync_common::xdp::entry_state::LIVE {
                    m.note_state(&e.record, (e.has_ext != 0).then_some(&e.ext), now);
                } else {
                    m.note_gone(&e.record.orig, now);
                }
            });
        }
        let receiver = &mut self.receiver;
        let n = x.drain_seen(|r| {
            if r.failed > 0 {
                tracing::warn!(
                    failed = r.failed,
                    "the XDP external cache is full and refused records: raise sync.xdp_map_entries"
                );
            }
            if let Err(e) = receiver.handle_seen(now, &r.header) {
                tracing::debug!("XDP report dropped: {e}");
            }
        });
        // XDP wakes us at most every millisecond (see its `wake_flags`):
        // while reports flow, look every millisecond ourselves.
        if n > 0 {
            self.seen_until = Some(now + SEEN_POLL_FOR);
        }
        self.seen_poll_at = match self.seen_until {
            Some(t) if now < t => Some(now + SEEN_POLL),
            _ => None,
        };
    }

    /// Moves as many queued cache changes to the sender as its window takes;
    /// the rest keep coalescing in the cache.
    pub fn feed(&mut self, cache: &mut Cache) {
        let credit = self.sender.credit();
        if credit == 0 {
            return;
        }
        let sender = &mut self.sender;
        cache.drain_changes(credit, |c| {
            sender.push(match c {
                Change::Upsert(r, e) => DataRecord::state(r, e),
                Change::Destroy(key, version) => DataRecord::Destroy { key: *key, version },
            })
        });
    }

    /// Reads every datagram waiting on the links and hands each to the half
    /// it is for: data and sender control to our receiver, receiver control
    /// to our sender.
    pub fn receive(&mut self, now: Instant) {
        self.received_at.get_or_insert(now);
        while let Some((_, _, len)) = self.transport.recv(&mut self.rx) {
            let bytes = &self.rx[..len];
            let kind = wire::check_header(bytes)
                .ok()
                .and_then(|h| wire::Kind::from_u8(h.kind));
            let result = match kind {
                Some(wire::Kind::Data | wire::Kind::SenderCtl) => {
                    self.receiver.handle_datagram(now, bytes)
                }
                Some(wire::Kind::ReceiverCtl) => self.sender.handle_datagram(now, bytes),
                None => {
                    self.stats.malformed += 1;
                    Ok(())
                }
            };
            if let Err(e) = result {
                tracing::debug!("sync datagram dropped: {e}");
            }
        }
        self.receive_seen(now);
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        if self.seen_poll_at.is_some_and(|t| now >= t) {
            self.receive_seen(now);
        }
        self.sender.handle_timeout(now);
        self.receiver.handle_timeout(now);
    }

    /// The next deadline of either half (or of the XDP report poll).
    pub fn poll_timeout(&self) -> Option<Instant> {
        // Changes left over from a full flush go out on the next turn.
        let mirror_due = self
            .mirror
            .as_ref()
            .filter(|m| !m.is_empty())
            .map(|_| Instant::now());
        [
            self.sender.poll_timeout(),
            self.receiver.poll_timeout(),
            self.seen_poll_at,
            mirror_due,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Sends what both halves have to send and acts on their events.
    pub fn flush(&mut self, now: Instant, cache: &mut Cache) {
        loop {
            self.feed(cache);
            let mut progressed = false;
            while let Some(n) = self.receiver.poll_transmit(now, &mut self.tx) {
                progressed = true;
                if self.transport.send(&self.tx[..n]).is_err() {
                    self.stats.send_errors += 1;
                }
            }
            while let Some(n) = self
                .sender
                .poll_transmit(now, &mut self.tx, &CacheLookup(cache))
            {
                progressed = true;
                if self.transport.send(&self.tx[..n]).is_err() {
                    self.stats.send_errors += 1;
                }
            }
            while let Some(ev) = self.receiver.poll_event() {
                progressed = true;
                self.on_receiver_event(ev);
            }
            while let Some(ev) = self.sender.poll_event() {
                progressed = true;
                self.on_sender_event(ev);
            }
            if !progressed || self.sender.credit() == 0 || cache.pending() == 0 {
                break;
            }
        }
        if let Some(x) = &mut self.xdp {
            x.set_accept(self.receiver.accept_filter());
        }
        if let Some(at) = self.received_at.take() {
            crate::latency::record(&mut self.receive_to_apply, at.elapsed());
        }
        // What the feed drained was sent above (it drains only up to the
        // window's credit).
        self.event_to_send
            .settle(cache.queue_totals().1, Instant::now());
    }

    fn on_receiver_event(&mut self, ev: ReceiverEvent) {
        match ev {
            ReceiverEvent::Record { stamp, record } => {
                if self.external.apply(stamp, &record) {
                    self.stats.applied += 1;
                    if let Some(m) = &mut self.mirror {
                        match record {
                            DataRecord::State { record, ext } => {
                                m.note_state(&record, ext.as_ref(), Instant::now())
                            }
                            DataRecord::Destroy { key, .. } => m.note_gone(&key, Instant::now()),
                        }
                    }
                }
            }
            ReceiverEvent::SessionStarted { previous, session } => {
                if previous.is_some() {
                    self.stats.peer_restarts += 1;
                }
                tracing::info!(
                    session,
                    ?previous,
                    "peer's sender session started; a bulk send follows"
                );
            }
            ReceiverEvent::BulkStarted { bulk, .. } => {
                tracing::info!(bulk, "receiving a bulk send from the peer")
            }
            ReceiverEvent::BulkFinished { bulk, purge } => {
                let mirror = &mut self.mirror;
                let now = Instant::now();
                let purged = self.external.purge(&purge, |k| {
                    if let Some(m) = mirror {
                        m.note_gone(k, now);
                    }
                });
                self.stats.purged += purged as u64;
                self.stats.bulks_received += 1;
                tracing::info!(
                    bulk,
                    purged,
                    entries = self.external.len(),
                    "bulk send from the peer complete"
                );
            }
        }
    }

    fn on_sender_event(&mut self, ev: SenderEvent) {
        match ev {
            SenderEvent::BulkFinished { bulk, records } => {
                self.stats.bulks_sent += 1;
                tracing::info!(bulk, records, "bulk send to the peer complete");
            }
            SenderEvent::Overflow { dropped } => {
                tracing::warn!(
                    dropped,
                    "send queue overflow: falling back to a bulk resync (nothing is lost)"
                )
            }
            ev => tracing::info!(?ev, "sync"),
        }
    }

    /// The cache's queue took the changes read from the kernel at `at`.
    pub fn note_read(&mut self, cache: &Cache, at: Instant) {
        self.event_to_send.note(cache.queue_totals().0, at);
    }

    /// Changes read from the kernel → in a datagram on the wire, µs.
    pub fn event_to_send(&self) -> &hdrhistogram::Histogram<u64> {
        &self.event_to_send.histogram
    }

    /// The peer's datagrams read → their records in the external cache, µs.
    pub fn receive_to_apply(&self) -> &hdrhistogram::Histogram<u64> {
        &self.receive_to_apply
    }

    /// Hot standby: a change in the external cache → in the kernel table, µs.
    pub fn standby_write(&self) -> Option<&hdrhistogram::Histogram<u64>> {
        self.mirror.as_ref().map(|m| &m.write_latency)
    }

    /// Our data datagrams' round trips: sent → acknowledged by the peer.
    pub fn ack_rtt(&self) -> &hdrhistogram::Histogram<u64> {
        self.sender.ack_rtt()
    }

    /// Switches hot standby on (every external entry is queued for the
    /// kernel table) or off (what is in the kernel stays and expires by its
    /// timers; the external cache is committed at takeover again).
    pub fn set_hot_standby(&mut self, on: bool) {
        if on == self.mirror.is_some() {
            return;
        }
        if on {
            let mut m = Mirror::new();
            m.note_all(self.external.remaining());
            tracing::info!(
                queued = m.len(),
                "hot standby on: the peer's state goes into this node's kernel table as it arrives"
            );
            self.mirror = Some(m);
        } else {
            self.mirror = None;
            tracing::info!("hot standby off: the peer's state stays in the external cache");
        }
        if let Some(x) = &mut self.xdp {
            x.set_mirror(on);
        }
    }

    pub fn hot_standby(&self) -> bool {
        self.mirror.is_some()
    }

    /// Hot standby: changes not yet in the kernel table, and the age of the
    /// oldest, ms.
    pub fn mirror_lag(&self) -> (usize, f64) {
        self.mirror
            .as_ref()
            .map_or((0, 0.0), |m| (m.len(), m.lag_ms(Instant::now())))
    }

    /// Hot standby: writes up to `max` waiting changes into the kernel
    /// table (and rewrites everything if XDP lost changes).
    pub fn flush_mirror(
        &mut self,
        w: &mut Writer,
        opts: &CommitOptions,
        max: usize,
    ) -> Result<usize, WriteError> {
        let Some(m) = &mut self.mirror else {
            return Ok(0);
        };
        if let Some(x) = &self.xdp {
            let lost = x.counters()[ctsync_common::xdp::XdpCounter::ChangesLost as usize];
            if lost > self.changes_lost {
                tracing::warn!(
                    lost = lost - self.changes_lost,
                    "hot standby: XDP's changes ring overflowed; rewriting the whole external \
                     cache into the kernel table"
                );
                self.changes_lost = lost;
                m.note_all(self.external.remaining());
            }
        }
        m.flush(w, opts, max)
    }

    /// Hot standby: everything waiting, written now.
    pub fn flush_mirror_all(
        &mut self,
        w: &mut Writer,
        opts: &CommitOptions,
    ) -> Result<usize, WriteError> {
        self.receive_seen(Instant::now());
        let mut n = 0;
        while self.mirror.as_ref().is_some_and(|m| !m.is_empty()) {
            n += self.flush_mirror(w, opts, FLUSH_MAX)?;
        }
        Ok(n)
    }

    /// Asks the peer to resend its whole internal cache.
    pub fn request_resync(&mut self, now: Instant) -> u32 {
        self.receiver.request_resync(now)
    }

    /// Forgets the peer's state (after a commit made it ours).
    pub fn flush_external(&mut self) {
        self.external.clear();
    }

    /// Sends our whole internal cache to the peer.
    pub fn start_bulk(&mut self) {
        self.sender.start_bulk();
    }

    /// Once a second or so: advances the external cache's clock and, while
    /// the peer is silent (it cannot send DESTROYs), expires entries by
    /// their timeout.
    pub fn tick(&mut self, now: Instant) {
        let secs = now.duration_since(self.started).as_secs() as u32;
        if secs == self.last_tick {
            return;
        }
        self.last_tick = secs;
        self.external.set_clock(secs);
        let peer_alive = self
            .sender
            .last_heard()
            .is_some_and(|t| now.duration_since(t) < PEER_SILENCE);
        if !peer_alive {
            let gone = self.external.expire(TOMBSTONE_TTL);
            if gone > 0 {
                self.stats.expired += gone as u64;
                tracing::info!(
                    gone,
                    "external entries expired by their timeout (the peer is silent)"
                );
            }
        }
    }

    /// Re-reads link carrier states (failover between links).
    pub fn poll_links(&mut self) {
        if let Some(c) = self.transport.poll_links() {
            tracing::warn!(from = %c.from, to = %c.to, "sync traffic moved to another link");
        }
    }

    pub fn stats_json(&self) -> serde_json::Value {
        json!({
            "replication": self.stats,
            "sender": self.sender.stats(),
            "receiver": self.receiver.stats(),
            "links": self.transport.stats(),
            "link_failovers": self.transport.failovers,
            "external_entries": self.external.len(),
            "xdp": match &self.xdp {
                Some(x) => x.stats_json(),
                None => json!({ "off": self.xdp_off }),
            },
            "sender_connected": self.sender.is_connected(),
            // The peer's sender session this receiver follows.
            "peer_session": self.receiver.peer_session(),
            "standby": match &self.mirror {
                Some(m) => json!({
                    "mode": "hot",
                    "lag_entries": m.len(),
                    "lag_ms": m.lag_ms(Instant::now()),
                    "mirror": m.stats,
                }),
                None => json!({ "mode": "external" }),
            },
        })
    }
}

//! Deterministic simulation of a sender/receiver pair, in the manner of
//! quinn-proto's `tests/util.rs` `Pair`: a virtual clock that jumps to the
//! next deadline, a network that loses, delays, reorders, duplicates and
//! corrupts datagrams from a seeded generator, a model of the primary's
//! kernel table and internal cache (the sender's [`StateLookup`]), and the
//! backup's [`ExternalTable`]. No sockets, no sleeps: a run is a pure
//! function of its seed.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use ctsync_common::conntrack::{AF_INET, AF_INET6, IPPROTO_TCP, IPPROTO_UDP};
use ctsync_common::wire::{self, HEADER_LEN, Kind};
use ctsync_common::{CtExt, CtRecord, Tuple};

use super::{
    DataRecord, ExternalTable, Lookup, Receiver, ReceiverConfig, ReceiverEvent, Rng, Sender,
    SenderConfig, SenderEvent, Stamp, StateLookup,
};

impl Rng {
    pub(super) fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    pub(super) fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }
}

/// Network faults, per datagram and per direction.
#[derive(Clone, Copy, Debug)]
pub(super) struct NetConfig {
    pub latency: Duration,
    pub loss: f64,
    pub dup: f64,
    /// Share of datagrams delayed by an extra random time up to
    /// `reorder_max` (so later ones overtake them).
    pub reorder: f64,
    pub reorder_max: Duration,
    /// One byte of the payload flipped (header intact).
    pub corrupt_payload: f64,
    /// One byte of the header flipped.
    pub corrupt_header: f64,
}

impl NetConfig {
    pub(super) fn perfect() -> NetConfig {
        NetConfig {
            latency: Duration::from_micros(100),
            loss: 0.0,
            dup: 0.0,
            reorder: 0.0,
            reorder_max: Duration::ZERO,
            corrupt_payload: 0.0,
            corrupt_header: 0.0,
        }
    }

    /// Every fault at once, loss at `loss`.
    pub(super) fn hostile(loss: f64) -> NetConfig {
        NetConfig {
            loss,
            dup: 0.05,
            reorder: 0.1,
            reorder_max: Duration::from_millis(3),
            corrupt_payload: 0.02,
            corrupt_header: 0.01,
            ..NetConfig::perfect()
        }
    }
}

struct Packet {
    at: Instant,
    n: u64,
    to_receiver: bool,
    bytes: Vec<u8>,
}

impl PartialEq for Packet {
    fn eq(&self, o: &Packet) -> bool {
        (self.at, self.n) == (o.at, o.n)
    }
}
impl Eq for Packet {}
impl PartialOrd for Packet {
    fn partial_cmp(&self, o: &Packet) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Packet {
    fn cmp(&self, o: &Packet) -> std::cmp::Ordering {
        (self.at, self.n).cmp(&(o.at, o.n))
    }
}

#[derive(Clone, Debug, Default)]
pub(super) struct NetStats {
    pub sent: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub corrupted: u64,
}

pub(super) struct Net {
    pub cfg: NetConfig,
    rng: Rng,
    heap: BinaryHeap<Reverse<Packet>>,
    n: u64,
    /// Link down: everything is lost.
    pub down: bool,
    pub stats: NetStats,
}

impl Net {
    fn new(cfg: NetConfig, seed: u64) -> Net {
        Net {
            cfg,
            rng: Rng::new(seed),
            heap: BinaryHeap::new(),
            n: 0,
            down: false,
            stats: NetStats::default(),
        }
    }

    fn send(&mut self, now: Instant, to_receiver: bool, bytes: &[u8]) {
        self.stats.sent += 1;
        if self.down || self.rng.chance(self.cfg.loss) {
            self.stats.lost += 1;
            return;
        }
        let copies = if self.rng.chance(self.cfg.dup) {
            self.stats.duplicated += 1;
            2
        } else {
            1
        };
        for _ in 0..copies {
            let mut b = bytes.to_vec();
            if b.len() > HEADER_LEN && self.rng.chance(self.cfg.corrupt_payload) {
                let i = HEADER_LEN + self.rng.below((b.len() - HEADER_LEN) as u64) as usize;
                b[i] ^= 1 + self.rng.below(255) as u8;
                self.stats.corrupted += 1;
            }
            if self.rng.chance(self.cfg.corrupt_header) {
                let i = self.rng.below(HEADER_LEN.min(b.len()) as u64) as usize;
                b[i] ^= 1 + self.rng.below(255) as u8;
                self.stats.corrupted += 1;
            }
            let mut at = now + self.cfg.latency;
            if self.rng.chance(self.cfg.reorder) {
                let max = self.cfg.reorder_max.as_nanos() as u64;
                at += Duration::from_nanos(self.rng.below(max + 1));
            }
            self.n += 1;
            self.heap.push(Reverse(Packet {
                at,
                n: self.n,
                to_receiver,
                bytes: b,
            }));
        }
    }

    fn next_at(&self) -> Option<Instant> {
        self.heap.peek().map(|p| p.0.at)
    }

    fn pop_due(&mut self, now: Instant) -> Option<Packet> {
        if self.heap.peek().is_some_and(|p| p.0.at <= now) {
            self.heap.pop().map(|p| p.0)
        } else {
            None
        }
    }

    pub(super) fn in_flight(&self) -> usize {
        self.heap.len()
    }
}

/// An entry's content in the model kernel table (version unset).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Entry {
    pub rec: CtRecord,
    pub ext: Option<CtExt>,
}

/// The primary's conntrack table.
#[derive(Default)]
pub(super) struct Kernel {
    keys: Vec<Tuple>,
    pos: HashMap<Tuple, usize>,
    pub entries: HashMap<Tuple, Entry>,
    next_id: u32,
    graveyard: Vec<Tuple>,
}

impl Kernel {
    pub(super) fn len(&self) -> usize {
        self.keys.len()
    }

    fn random_entry(rng: &mut Rng, key: Tuple) -> Entry {
        let mut rec = CtRecord {
            orig: key,
            ..CtRecord::default()
        };
        rec.reply = key;
        std::mem::swap(&mut rec.reply.src, &mut rec.reply.dst);
        std::mem::swap(&mut rec.reply.src_port, &mut rec.reply.dst_port);
        rec.status = rng.next_u32();
        rec.timeout = rng.below(432_000) as u32;
        rec.mark = rng.next_u32();
        rec.id = rng.next_u32();
        rec.proto_state = rng.below(10) as u8;
        rec.labels[rng.below(16) as usize] = rng.next_u32() as u8;
        let ext = rng.chance(0.15).then(|| {
            let mut e = CtExt::default();
            e.nat_seq[0].correction_pos = rng.next_u32();
            e.nat_seq[1].offset_after = rng.next_u32() | 1;
            e.helper[..3].copy_from_slice(b"ftp");
            e.sctp_vtag = [rng.next_u32(), rng.next_u32()];
            e
        });
        Entry { rec, ext }
    }

    fn new_key(&mut self, rng: &mut Rng) -> Tuple {
        if !self.graveyard.is_empty() && rng.chance(0.3) {
            let i = rng.below(self.graveyard.len() as u64) as usize;
            return self.graveyard.swap_remove(i);
        }
        self.next_id += 1;
        let id = self.next_id;
        let mut t = Tuple::default();
        if id.is_multiple_of(5) {
            t.family = AF_INET6;
            t.src[..4].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8]);
            t.src[12..].copy_from_slice(&id.to_be_bytes());
            t.dst[15] = 1;
        } else {
            t.family = AF_INET;
            t.src[..4].copy_from_slice(&id.to_be_bytes());
            t.dst[..4].copy_from_slice(&[10, 0, 0, 1]);
        }
        t.proto = if id.is_multiple_of(3) {
            IPPROTO_UDP
        } else {
            IPPROTO_TCP
        };
        t.src_port = (1024 + (id % 50000) as u16).to_be();
        t.dst_port = 443u16.to_be();
        t.zone = (id % 4) as u16;
        t
    }

    pub(super) fn create(&mut self, rng: &mut Rng) -> Entry {
        let key = self.new_key(rng);
        let e = Kernel::random_entry(rng, key);
        self.pos.insert(key, self.keys.len());
        self.keys.push(key);
        self.entries.insert(key, e);
        e
    }

    pub(super) fn update(&mut self, rng: &mut Rng) -> Option<Entry> {
        if self.keys.is_empty() {
            return None;
        }
        let key = self.keys[rng.below(self.keys.len() as u64) as usize];
        let e = Kernel::random_entry(rng, key);
        self.entries.insert(key, e);
        Some(e)
    }

    pub(super) fn destroy(&mut self, rng: &mut Rng) -> Option<Tuple> {
        if self.keys.is_empty() {
            return None;
        }
        let i = rng.below(self.keys.len() as u64) as usize;
        let key = self.keys.swap_remove(i);
        if let Some(moved) = self.keys.get(i) {
            self.pos.insert(*moved, i);
        }
        self.pos.remove(&key);
        self.entries.remove(&key);
        self.graveyard.push(key);
        Some(key)
    }
}

/// The primary's internal cache as `cache.rs` behaves: a slab of entries
/// (the bulk cursor is a slot index), a version counter, a coalescing change
/// queue, tombstones until their DESTROY is drained.
pub(super) struct ModelCache {
    slots: Vec<Option<(CtRecord, Option<CtExt>)>>,
    index: HashMap<Tuple, usize>,
    free: Vec<usize>,
    tombstones: HashMap<Tuple, u64>,
    queue: VecDeque<Tuple>,
    queued: HashSet<Tuple>,
    next_version: u64,
}

impl ModelCache {
    /// A cache freshly filled by a dump of `kernel` (versions from 1, as a
    /// restarted agent's), with nothing queued: the bulk send after the
    /// handshake carries it.
    pub(super) fn from_kernel(kernel: &Kernel) -> ModelCache {
        let mut c = ModelCache {
            slots: Vec::new(),
            index: HashMap::new(),
            free: Vec::new(),
            tombstones: HashMap::new(),
            queue: VecDeque::new(),
            queued: HashSet::new(),
            next_version: 1,
        };
        for key in &kernel.keys {
            c.upsert(&kernel.entries[key]);
        }
        c.queue.clear();
        c.queued.clear();
        c
    }

    fn enqueue(&mut self, key: Tuple) {
        if self.queued.insert(key) {
            self.queue.push_back(key);
        }
    }

    pub(super) fn upsert(&mut self, e: &Entry) {
        let mut rec = e.rec;
        rec.version = self.next_version;
        self.next_version += 1;
        let key = rec.orig;
        self.tombstones.remove(&key);
        let v = Some((rec, e.ext));
        match self.index.get(&key) {
            Some(&s) => self.slots[s] = v,
            None => {
                let s = self.free.pop().unwrap_or_else(|| {
                    self.slots.push(None);
                    self.slots.len() - 1
                });
                self.slots[s] = v;
                self.index.insert(key, s);
            }
        }
        self.enqueue(key);
    }

    pub(super) fn remove(&mut self, key: &Tuple) {
        if let Some(s) = self.index.remove(key) {
            self.slots[s] = None;
            self.free.push(s);
            self.tombstones.insert(*key, self.next_version);
            self.next_version += 1;
            self.enqueue(*key);
        }
    }

    pub(super) fn pending(&self) -> usize {
        self.queue.len()
    }

    pub(super) fn drain(&mut self, max: usize) -> Vec<DataRecord> {
        let mut out = Vec::new();
        while out.len() < max {
            let Some(key) = self.queue.pop_front() else {
                break;
            };
            self.queued.remove(&key);
            if let Some(&s) = self.index.get(&key) {
                let (r, e) = self.slots[s].as_ref().expect("indexed slot");
                out.push(DataRecord::state(r, e.as_ref()));
            } else if let Some(v) = self.tombstones.remove(&key) {
                out.push(DataRecord::Destroy { key, version: v });
            }
        }
        out
    }

    pub(super) fn live(&self) -> HashMap<Tuple, (CtRecord, Option<CtExt>)> {
        self.slots
            .iter()
            .flatten()
            .map(|(r, e)| (r.orig, (*r, e.filter(|e| !e.is_empty()))))
            .collect()
    }
}

impl StateLookup for ModelCache {
    fn current(&self, key: &Tuple) -> Lookup {
        if let Some(&s) = self.index.get(key) {
            let (r, e) = self.slots[s].expect("indexed slot");
            Lookup::Live(r, e)
        } else if let Some(&v) = self.tombstones.get(key) {
            Lookup::Gone(v)
        } else {
            Lookup::Unknown
        }
    }

    fn bulk(
        &self,
        cursor: u64,
        max: usize,
        visit: &mut dyn FnMut(&CtRecord, Option<&CtExt>),
    ) -> Option<u64> {
        let mut i = cursor as usize;
        let mut n = 0;
        let scan_end = i.saturating_add(max * 4);
        while i < self.slots.len() && n < max && i < scan_end {
            if let Some((r, e)) = &self.slots[i] {
                visit(r, e.as_ref());
                n += 1;
            }
            i += 1;
        }
        (i < self.slots.len()).then_some(i as u64)
    }
}

/// Changes made to the kernel table over time.
#[derive(Clone, Copy, Debug)]
pub(super) struct Workload {
    pub remaining: usize,
    pub interval: Duration,
    pub next_at: Instant,
}

/// A sender and a receiver over a simulated network, with the primary's
/// kernel table and cache and the backup's external cache.
pub(super) struct Pair {
    pub now: Instant,
    pub start: Instant,
    pub scfg: SenderConfig,
    pub rcfg: ReceiverConfig,
    /// `None` while the primary's agent is down.
    pub sender: Option<Sender>,
    pub receiver: Receiver,
    pub net: Net,
    pub kernel: Kernel,
    pub cache: ModelCache,
    pub ext: ExternalTable,
    pub rng: Rng,
    /// The agent drains the cache only up to `credit()` (false: it pushes
    /// everything at once, to force overflows).
    pub conforming: bool,
    pub workload: Option<Workload>,
    pub max_in_flight: usize,
    pub sender_events: Vec<SenderEvent>,
    pub receiver_events: Vec<ReceiverEvent>,
    pub purged: usize,
    /// The seed the pair was built from.
    pub seed: u64,
    /// Logs everything that happens to this key (debugging aid).
    pub trace: Option<Tuple>,
    /// Receive data the way the XDP program does (see `xdp_receive`).
    pub xdp: bool,
    /// Restarted processes sometimes get a lower incarnation.
    pub clock_steps: bool,
    seeds: u64,
    buf: Vec<u8>,
}

impl Pair {
    pub(super) fn new(seed: u64, net: NetConfig, scfg: SenderConfig, rcfg: ReceiverConfig) -> Pair {
        let start = Instant::now();
        let mut rng = Rng::new(seed);
        let net = Net::new(net, rng.next_u64());
        let kernel = Kernel::default();
        let cache = ModelCache::from_kernel(&kernel);
        let sender = Sender::new(
            SenderConfig {
                seed: rng.next_u64(),
                incarnation: 1,
                ..scfg.clone()
            },
            start,
        );
        let receiver = Receiver::new(ReceiverConfig {
            seed: rng.next_u64(),
            incarnation: 1,
            ..rcfg.clone()
        });
        Pair {
            now: start,
            start,
            scfg,
            rcfg,
            sender: Some(sender),
            receiver,
            net,
            kernel,
            cache,
            ext: ExternalTable::new(),
            rng,
            conforming: true,
            workload: None,
            max_in_flight: 0,
            sender_events: Vec::new(),
            receiver_events: Vec::new(),
            purged: 0,
            seed,
            trace: None,
            xdp: false,
            clock_steps: false,
            seeds: seed,
            buf: vec![0; 65536],
        }
    }

    pub(super) fn elapsed(&self) -> Duration {
        self.now - self.start
    }

    /// The incarnation of a process started now: normally growing, but with
    /// `clock_steps` set, sometimes lower than its predecessor's (a clock
    /// stepped back), to exercise the silence fallback.
    fn incarnation(&mut self) -> u64 {
        let t = self.elapsed().as_micros() as u64 + 1;
        if self.clock_steps && self.rng.chance(0.5) {
            0
        } else {
            t
        }
    }

    fn seed(&mut self) -> u64 {
        self.seeds = self.seeds.wrapping_add(1);
        self.rng.next_u64() ^ self.seeds
    }

    /// Fills the kernel table (and the cache, as an initial dump would)
    /// with `n` entries.
    pub(super) fn populate(&mut self, n: usize) {
        for _ in 0..n {
            self.kernel.create(&mut self.rng);
        }
        self.cache = ModelCache::from_kernel(&self.kernel);
    }

    /// Schedules `ops` random changes at `rate` per second from now.
    pub(super) fn workload(&mut self, ops: usize, rate: u64) {
        self.workload = Some(Workload {
            remaining: ops,
            interval: Duration::from_nanos(1_000_000_000 / rate.max(1)),
            next_at: self.now,
        });
    }

    fn one_op(&mut self) {
        let agent_up = self.sender.is_some();
        let roll = self.rng.below(100);
        if roll < 45 || self.kernel.len() < 10 {
            let e = self.kernel.create(&mut self.rng);
            if agent_up {
                self.cache.upsert(&e);
            }
        } else if roll < 80 {
            if let Some(e) = self.kernel.update(&mut self.rng)
                && agent_up
            {
                self.cache.upsert(&e);
            }
        } else if let Some(k) = self.kernel.destroy(&mut self.rng)
            && agent_up
        {
            self.cache.remove(&k);
        }
    }

    fn run_workload_due(&mut self) {
        while let Some(w) = &mut self.workload {
            if w.remaining == 0 {
                self.workload = None;
                break;
            }
            if w.next_at > self.now {
                break;
            }
            w.remaining -= 1;
            w.next_at += w.interval;
            self.one_op();
        }
    }

    /// The primary's agent stops (its cache is gone with it).
    pub(super) fn stop_sender(&mut self) {
        self.sender = None;
    }

    /// The primary's agent starts: a new session, its cache rebuilt from
    /// the kernel table with fresh versions.
    pub(super) fn start_sender(&mut self) {
        self.cache = ModelCache::from_kernel(&self.kernel);
        let cfg = SenderConfig {
            seed: self.seed(),
            incarnation: self.incarnation(),
            ..self.scfg.clone()
        };
        self.sender = Some(Sender::new(cfg, self.now));
    }

    /// The backup's agent restarts; its external cache survives or not.
    pub(super) fn restart_receiver(&mut self, keep_cache: bool) {
        let cfg = ReceiverConfig {
            seed: self.seed(),
            incarnation: self.incarnation(),
            ..self.rcfg.clone()
        };
        self.receiver = Receiver::new(cfg);
        if !keep_cache {
            self.ext = ExternalTable::new();
        }
    }

    /// The agents' loop: push changes, send datagrams, act on events, until
    /// nothing moves.
    pub(super) fn drive(&mut self) {
        loop {
            let mut progress = false;
            if let Some(s) = &mut self.sender {
                let budget = if self.conforming {
                    s.credit().min(1024)
                } else {
                    1024
                };
                if budget > 0 && self.cache.pending() > 0 {
                    for c in self.cache.drain(budget) {
                        if self.trace == Some(*c.key()) {
                            eprintln!("{:?} push {c:?}", self.now - self.start);
                        }
                        s.push(c);
                    }
                    progress = true;
                }
                while let Some(n) = s.poll_transmit(self.now, &mut self.buf, &self.cache) {
                    self.net.send(self.now, true, &self.buf[..n]);
                    progress = true;
                }
                self.max_in_flight = self.max_in_flight.max(s.in_flight());
                while let Some(e) = s.poll_event() {
                    self.sender_events.push(e);
                }
            }
            while let Some(n) = self.receiver.poll_transmit(self.now, &mut self.buf) {
                self.net.send(self.now, false, &self.buf[..n]);
                progress = true;
            }
            while let Some(e) = self.receiver.poll_event() {
                match e {
                    ReceiverEvent::Record { stamp, record } => {
                        let changed = self.ext.apply(stamp, &record);
                        if self.trace == Some(*record.key()) {
                            eprintln!(
                                "{:?} apply {stamp:?} v{} destroy={} changed={changed}",
                                self.now - self.start,
                                record.version(),
                                record.is_destroy()
                            );
                        }
                    }
                    ReceiverEvent::BulkFinished { purge, .. } => {
                        if let Some(k) = self.trace {
                            eprintln!(
                                "{:?} purge {purge:?} has={:?} stamp={:?}",
                                self.now - self.start,
                                self.ext.get(&k).map(|(r, _)| r.version),
                                self.ext.stamp(&k)
                            );
                        }
                        self.purged += self.ext.purge(&purge);
                        self.receiver_events.push(e);
                    }
                    _ => self.receiver_events.push(e),
                }
            }
            if !progress {
                break;
            }
        }
    }

    /// Runs the agents, then moves the clock to the next thing that happens
    /// and delivers it. Returns false when nothing is scheduled at all.
    pub(super) fn step(&mut self) -> bool {
        self.drive();
        let next = [
            self.net.next_at(),
            self.sender.as_ref().and_then(|s| s.poll_timeout()),
            self.receiver.poll_timeout(),
            self.workload.map(|w| w.next_at),
        ]
        .into_iter()
        .flatten()
        .min();
        let Some(t) = next else {
            return false;
        };
        self.now = self.now.max(t);
        self.run_workload_due();
        while let Some(p) = self.net.pop_due(self.now) {
            if p.to_receiver {
                if !(self.xdp && self.xdp_receive(&p.bytes)) {
                    let _ = self.receiver.handle_datagram(self.now, &p.bytes);
                }
            } else if let Some(s) = &mut self.sender {
                let _ = s.handle_datagram(self.now, &p.bytes);
            }
        }
        if let Some(s) = &mut self.sender {
            s.handle_timeout(self.now);
        }
        self.receiver.handle_timeout(self.now);
        true
    }

    /// What the XDP program does with a datagram, per the contract in
    /// docs/wire-format.md: drop damaged ones; apply the records of data
    /// datagrams that pass the receiver's accept filter and report their
    /// header; pass everything else (markers, control, other sessions) up.
    /// Returns false for "pass up".
    fn xdp_receive(&mut self, bytes: &[u8]) -> bool {
        let Ok(d) = wire::decode(bytes) else {
            return true; // XDP_DROP
        };
        let h = *d.header();
        if d.kind() != Kind::Data || h.flags & wire::flags::MARKERS != 0 {
            return false;
        }
        let Some(f) = self.receiver.accept_filter() else {
            return false;
        };
        if h.session != f.session {
            return false;
        }
        if f.floor
            .is_some_and(|floor| (h.seq.wrapping_sub(floor) as i32) < 0)
        {
            return true;
        }
        let stamp = Stamp {
            session: h.session,
            seq: h.seq,
        };
        for r in d.records() {
            if let Some(rec) = DataRecord::from_wire(&r) {
                let changed = self.ext.apply(stamp, &rec);
                if self.trace == Some(*rec.key()) {
                    eprintln!(
                        "{:?} xdp apply {stamp:?} v{} destroy={} changed={changed} now={:?}",
                        self.now - self.start,
                        rec.version(),
                        rec.is_destroy(),
                        self.ext.stamp(rec.key())
                    );
                }
            }
        }
        let _ = self.receiver.handle_seen(self.now, &h);
        true
    }

    /// Test hook: the sender's first sequence number.
    pub(super) fn force_first_seq(&mut self, seq: u32) {
        if let Some(s) = &mut self.sender {
            s.force_next_seq(seq);
        }
    }

    /// Steps until `done` holds or `limit` of virtual time passes from now.
    pub(super) fn run_until(
        &mut self,
        limit: Duration,
        mut done: impl FnMut(&Pair) -> bool,
    ) -> bool {
        let end = self.now + limit;
        loop {
            self.drive();
            if done(self) {
                return true;
            }
            if self.now >= end || !self.step() {
                return done(self);
            }
        }
    }

    pub(super) fn run_for(&mut self, d: Duration) {
        let end = self.now + d;
        self.run_until(d, |p| p.now >= end);
    }

    /// Traffic stopped and every change is sent and acknowledged.
    pub(super) fn quiescent(&self) -> bool {
        self.workload.is_none()
            && self.cache.pending() == 0
            && self.sender.as_ref().is_some_and(|s| {
                s.is_idle()
                    && s.peer_session() == Some(self.receiver.session())
                    && self.receiver.peer_session() == Some(s.session())
            })
    }

    /// Runs until quiescent (bounded virtual time), then checks that the
    /// external cache equals the primary's cache and its kernel table.
    pub(super) fn settle_and_check(&mut self, limit: Duration) {
        let ok = self.run_until(limit, Pair::quiescent);
        assert!(
            ok,
            "not quiescent after {:?}: {}",
            self.elapsed(),
            self.report()
        );
        // Stragglers still in the network must not change anything.
        self.run_for(Duration::from_millis(50));
        self.check_converged();
    }

    pub(super) fn report(&self) -> String {
        let s = self.sender.as_ref();
        format!(
            "seed={} t={:?} kernel={} cache={} ext={} (tombstones {}) pending={} in_flight={:?} queued={:?} \
             connected={:?} bulk={:?}\nnet={:?} net_in_flight={}\nsender={:#?}\nreceiver={:#?} gaps={}\nsender events={:?}",
            self.seed,
            self.elapsed(),
            self.kernel.len(),
            self.cache.live().len(),
            self.ext.len(),
            self.ext.tombstones(),
            self.cache.pending(),
            s.map(|s| s.in_flight()),
            s.map(|s| s.queued()),
            s.map(|s| s.is_connected()),
            s.map(|s| s.bulk_in_progress()),
            self.net.stats,
            self.net.in_flight(),
            s.map(|s| s.stats()),
            self.receiver.stats(),
            self.receiver.gaps(),
            &self.sender_events[self.sender_events.len().saturating_sub(12)..],
        )
    }

    pub(super) fn check_converged(&self) {
        let want = self.cache.live();
        // The model itself: the cache mirrors the kernel table.
        assert_eq!(want.len(), self.kernel.len());
        for (k, (r, e)) in &want {
            let ke = &self.kernel.entries[k];
            let mut kr = ke.rec;
            kr.version = r.version;
            assert_eq!((&kr, &ke.ext), (r, e), "cache differs from kernel");
        }
        let mut missing = Vec::new();
        let mut wrong = Vec::new();
        for (k, (r, e)) in &want {
            match self.ext.get(k) {
                None => missing.push(k),
                Some((gr, ge)) if (gr, ge) != (r, e.as_ref()) => {
                    wrong.push((r.version, gr.version))
                }
                Some(_) => {}
            }
        }
        let extras: Vec<_> = self
            .ext
            .iter()
            .filter(|(r, _)| !want.contains_key(&r.orig))
            .map(|(r, _)| (r.orig, r.version))
            .collect();
        let extra = extras.len();

        assert!(
            missing.is_empty() && wrong.is_empty() && extra == 0,
            "external cache differs: {} missing (e.g. {:?}), {} wrong (versions want/got {:?}), \
             {} extra (key, version: {:?})\n{}",
            missing.len(),
            missing.first(),
            wrong.len(),
            &wrong[..wrong.len().min(5)],
            extra,
            extras.first(),
            self.report()
        );
    }
}

//! FT-FW scenario tests: targeted exchanges driven by hand, then whole runs
//! of the simulated pair ([`super::sim`]) under loss, reordering,
//! duplication, corruption, restarts, overflow and a large bulk send, each
//! ending with "the external cache equals the primary's cache".

use std::time::{Duration, Instant};

use ctsync_common::wire::{self, HEADER_LEN, Kind, Record, STATE_LEN};
use proptest::prelude::*;

use super::Rng;
use super::sim::{Entry, Kernel, ModelCache, NetConfig, Pair};
use super::*;

fn small_datagrams() -> (SenderConfig, ReceiverConfig) {
    // One STATE record per data datagram, to control sequence numbers.
    (
        SenderConfig {
            max_datagram: HEADER_LEN + STATE_LEN,
            ..SenderConfig::default()
        },
        ReceiverConfig::default(),
    )
}

/// Hand-driven pair over a perfect, instant channel, for targeted tests.
struct Manual {
    now: Instant,
    s: Sender,
    r: Receiver,
    kernel: Kernel,
    cache: ModelCache,
    ext: ExternalTable,
    rng: Rng,
    buf: Vec<u8>,
}

impl Manual {
    fn new(scfg: SenderConfig, rcfg: ReceiverConfig) -> Manual {
        let now = Instant::now();
        let kernel = Kernel::default();
        let mut m = Manual {
            now,
            s: Sender::new(scfg, now),
            r: Receiver::new(rcfg),
            cache: ModelCache::from_kernel(&kernel),
            kernel,
            ext: ExternalTable::new(),
            rng: Rng::new(7),
            buf: vec![0; 2048],
        };
        m.settle();
        m
    }

    /// Exchanges and fires timers until the sender is idle (all acked).
    fn settle(&mut self) {
        for _ in 0..100 {
            self.exchange();
            if self.s.is_idle() {
                return;
            }
            self.fire_next_timer();
        }
        panic!("not idle: {:?} / {:?}", self.s.stats(), self.r.stats());
    }

    /// Datagrams the sender has to send now.
    fn sent_by_sender(&mut self) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        while let Some(n) = self.s.poll_transmit(self.now, &mut self.buf, &self.cache) {
            out.push(self.buf[..n].to_vec());
        }
        out
    }

    fn sent_by_receiver(&mut self) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        while let Some(n) = self.r.poll_transmit(self.now, &mut self.buf) {
            out.push(self.buf[..n].to_vec());
        }
        out
    }

    fn deliver(&mut self, d: &[u8]) {
        let _ = self.r.handle_datagram(self.now, d);
        self.apply_events();
    }

    fn apply_events(&mut self) -> Vec<DataRecord> {
        let mut got = Vec::new();
        while let Some(e) = self.r.poll_event() {
            match e {
                ReceiverEvent::Record { stamp, record } => {
                    self.ext.apply(stamp, &record);
                    got.push(record);
                }
                ReceiverEvent::BulkFinished { purge, .. } => {
                    self.ext.purge(&purge);
                }
                _ => {}
            }
        }
        got
    }

    fn push_changes(&mut self) {
        for c in self.cache.drain(usize::MAX) {
            self.s.push(c);
        }
    }

    /// Delivers everything both ways until nothing moves (timers untouched).
    fn exchange(&mut self) {
        loop {
            self.push_changes();
            let a = self.sent_by_sender();
            let b = self.sent_by_receiver();
            if a.is_empty() && b.is_empty() {
                break;
            }
            for d in &a {
                self.deliver(d);
            }
            for d in &b {
                let _ = self.s.handle_datagram(self.now, d);
            }
        }
    }

    /// Moves the clock to the earliest deadline and fires it.
    fn fire_next_timer(&mut self) {
        let t = [self.s.poll_timeout(), self.r.poll_timeout()]
            .into_iter()
            .flatten()
            .min()
            .expect("a timer");
        self.now = self.now.max(t);
        self.s.handle_timeout(self.now);
        self.r.handle_timeout(self.now);
    }

    fn create(&mut self) -> Entry {
        let e = self.kernel.create(&mut self.rng);
        self.cache.upsert(&e);
        e
    }

    fn converged(&self) -> bool {
        let want = self.cache.live();
        want.len() == self.ext.len()
            && want
                .iter()
                .all(|(k, (r, e))| self.ext.get(k) == Some((r, e.as_ref())))
    }
}

fn records_of(d: &[u8]) -> Vec<Record> {
    wire::decode(d).unwrap().records().collect()
}

#[test]
fn reordered_datagram_after_its_nack_is_still_accepted() {
    let (sc, rc) = small_datagrams();
    let mut m = Manual::new(sc, rc);
    for _ in 0..3 {
        m.create();
    }
    m.push_changes();
    let d = m.sent_by_sender();
    assert_eq!(d.len(), 3);
    m.deliver(&d[0]);
    m.deliver(&d[2]);
    assert_eq!(m.r.gaps(), 1);
    assert_eq!(m.r.stats().reordered, 0);
    // A duplicate of a datagram still tracked is not delivered twice.
    let _ = m.r.handle_datagram(m.now, &d[2]);
    assert!(m.apply_events().is_empty());
    assert_eq!(m.r.stats().duplicates, 1);
    assert_eq!(m.r.stats().reordered, 0, "a duplicate is not a reordering");
    // The receiver NACKs the gap at once...
    let ctl = m.sent_by_receiver();
    let nacks: Vec<_> = ctl
        .iter()
        .flat_map(|c| records_of(c))
        .filter(|r| matches!(r, Record::Nack { .. }))
        .collect();
    let seq2 = wire::decode(&d[1]).unwrap().header().seq;
    assert_eq!(
        nacks,
        [Record::Nack {
            from: seq2,
            to: seq2
        }]
    );
    // ... and the late original still fills the gap and is delivered.
    let _ = m.r.handle_datagram(m.now, &d[1]);
    assert_eq!(m.apply_events().len(), 1);
    assert_eq!(m.r.gaps(), 0);
    assert_eq!(m.r.stats().reordered, 1);
    assert!(m.converged());
}

#[test]
fn corrupt_payload_is_a_gap_not_a_reception() {
    let (sc, rc) = small_datagrams();
    let mut m = Manual::new(sc, rc);
    for _ in 0..3 {
        m.create();
    }
    m.push_changes();
    let d = m.sent_by_sender();
    let mut bad = d[1].clone();
    bad[HEADER_LEN + 60] ^= 0x10;
    m.deliver(&d[0]);
    m.deliver(&bad);
    m.deliver(&d[2]);
    assert_eq!(m.r.stats().corrupt, 1);
    assert_eq!(m.r.gaps(), 1);
    assert!(!m.converged());
    // NACK, resend, converge.
    m.settle();
    assert!(m.converged());
    assert_eq!(m.s.stats().retransmits, 1);
    assert!(m.s.is_idle());
}

#[test]
fn lost_tail_is_found_by_alive_and_nacked() {
    let (sc, rc) = small_datagrams();
    let mut m = Manual::new(sc, rc);
    m.create();
    m.create();
    m.push_changes();
    let d = m.sent_by_sender();
    m.deliver(&d[0]); // the tail, d[1], is lost
    m.exchange(); // ACK for d[0] after the ack delay only
    assert!(!m.converged());
    for _ in 0..10 {
        if m.converged() && m.s.is_idle() {
            break;
        }
        m.fire_next_timer();
        m.exchange();
    }
    assert!(m.converged() && m.s.is_idle());
    assert!(m.s.stats().alives_sent >= 1);
    assert_eq!(m.s.stats().retransmits, 1);
}

#[test]
fn nack_resends_the_current_state_once() {
    let (sc, rc) = small_datagrams();
    let mut m = Manual::new(sc, rc);
    let e = m.create();
    m.push_changes();
    let lost = m.sent_by_sender();
    assert_eq!(lost.len(), 1);
    // The entry changes twice more; the sender got the first change (sent,
    // lost too) and the second is still in the cache's queue.
    let mut e2 = e;
    e2.rec.mark ^= 1;
    m.cache.upsert(&e2);
    m.push_changes();
    let lost2 = m.sent_by_sender();
    assert_eq!(lost2.len(), 1);
    let mut e3 = e2;
    e3.rec.mark ^= 2;
    m.cache.upsert(&e3);
    // A third datagram (another entry) reveals the gap.
    m.create();
    m.push_changes();
    let d = m.sent_by_sender();
    assert_eq!(d.len(), 2, "the entry's newest state, and the new entry");
    m.deliver(&d[1]);
    // Only deliver the receiver's NACK (covering the two lost datagrams).
    for c in m.sent_by_receiver() {
        let _ = m.s.handle_datagram(m.now, &c);
    }
    let resent = m.sent_by_sender();
    let recs: Vec<_> = resent.iter().flat_map(|d| records_of(d)).collect();
    // One record for the two NACKed copies: the current state.
    assert_eq!(recs.len(), 1, "{recs:?}");
    let Record::State(r) = recs[0] else {
        panic!("{recs:?}")
    };
    assert_eq!(r.mark, e3.rec.mark);
    m.exchange();
    m.deliver(&d[0]);
    m.exchange();
    assert!(m.converged());
}

#[test]
fn destroy_is_resent_even_when_the_cache_forgot_the_key() {
    let (sc, rc) = small_datagrams();
    let mut m = Manual::new(sc, rc);
    let e = m.create();
    m.exchange();
    m.cache.remove(&e.rec.orig);
    m.push_changes(); // drains the tombstone: the cache forgets the key
    assert_eq!(m.cache.current(&e.rec.orig), Lookup::Unknown);
    let lost = m.sent_by_sender();
    assert_eq!(records_of(&lost[0]).len(), 1);
    m.create();
    m.exchange();
    assert!(m.converged(), "the DESTROY was NACKed and resent");
    assert!(m.ext.get(&e.rec.orig).is_none());
}

#[test]
fn sender_restart_is_a_new_session_and_a_purging_bulk() {
    let mut m = Manual::new(SenderConfig::default(), ReceiverConfig::default());
    for _ in 0..50 {
        m.create();
    }
    m.settle();
    assert!(m.converged());
    let old = m.s.session();
    // The primary restarts; meanwhile 10 entries went away.
    for _ in 0..10 {
        m.kernel.destroy(&mut m.rng);
    }
    m.cache = ModelCache::from_kernel(&m.kernel);
    m.s = Sender::new(
        SenderConfig {
            seed: 99,
            incarnation: 2,
            ..SenderConfig::default()
        },
        m.now,
    );
    assert_ne!(m.s.session(), old);
    m.settle();
    assert!(m.converged());
    assert_eq!(m.r.stats().peer_restarts, 1);
    assert_eq!(m.r.peer_session(), Some(m.s.session()));
}

#[test]
fn receiver_restart_is_noticed_by_the_sender() {
    let mut m = Manual::new(SenderConfig::default(), ReceiverConfig::default());
    for _ in 0..20 {
        m.create();
    }
    m.settle();
    m.r = Receiver::new(ReceiverConfig {
        seed: 5,
        incarnation: 2,
        ..ReceiverConfig::default()
    });
    m.ext = ExternalTable::new();
    m.create();
    m.settle();
    assert!(m.converged());
    assert_eq!(m.s.stats().peer_restarts, 1);
    assert_eq!(m.s.stats().bulks_completed, 2);
}

#[test]
fn control_datagrams_are_checked_too() {
    let mut m = Manual::new(SenderConfig::default(), ReceiverConfig::default());
    // A receiver-side datagram given to the receiver, and garbage.
    let mut buf = [0u8; 64];
    let mut enc = wire::Encoder::new(&mut buf, Kind::ReceiverCtl).unwrap();
    enc.push(&Record::Ack { from: 0, to: 1 }).unwrap();
    let n = enc.finish(wire::HeaderFields {
        node: 9,
        ..Default::default()
    });
    assert!(matches!(
        m.r.handle_datagram(m.now, &buf[..n]),
        Err(Error::WrongKind { .. })
    ));
    assert!(matches!(
        m.s.handle_datagram(m.now, b"hello"),
        Err(Error::Malformed { .. })
    ));
    // Our own node id (multicast loop) is refused.
    let n = {
        let mut enc = wire::Encoder::new(&mut buf, Kind::ReceiverCtl).unwrap();
        enc.push(&Record::Ack { from: 0, to: 1 }).unwrap();
        enc.finish(wire::HeaderFields {
            node: 1,
            ..Default::default()
        })
    };
    assert!(matches!(
        m.s.handle_datagram(m.now, &buf[..n]),
        Err(Error::OwnNode { node: 1 })
    ));
    assert_eq!(m.s.stats().malformed, 1);
}

// ---- whole runs of the simulated pair ----

const SETTLE: Duration = Duration::from_secs(120);

fn run_workload(seed: u64, net: NetConfig, entries: usize, ops: usize) -> Pair {
    let mut p = Pair::new(
        seed,
        net,
        SenderConfig::default(),
        ReceiverConfig::default(),
    );
    p.populate(entries);
    p.workload(ops, 20_000);
    p.settle_and_check(SETTLE);
    p
}

#[test]
fn perfect_network_replicates_without_retransmits() {
    let p = run_workload(1, NetConfig::perfect(), 500, 5000);
    let s = p.sender.as_ref().unwrap().stats();
    assert_eq!(s.retransmits, 0);
    assert_eq!(s.bulks_completed, 1);
    assert_eq!(p.receiver.stats().corrupt, 0);
}

#[test]
fn hostile_networks_converge_over_many_seeds() {
    for seed in 0..100 {
        let loss = (seed % 7) as f64 * 0.05; // 0 .. 30 %
        run_workload(seed, NetConfig::hostile(loss), 200, 1500);
    }
}

#[test]
fn heavy_loss_with_corruption_converges() {
    let net = NetConfig {
        corrupt_payload: 0.1,
        corrupt_header: 0.05,
        ..NetConfig::hostile(0.3)
    };
    let p = run_workload(77, net, 300, 3000);
    let r = p.receiver.stats();
    assert!(r.corrupt > 0 && r.nacks_sent > 0, "{r:?}");
    assert!(p.sender.as_ref().unwrap().stats().corrupt > 0);
}

fn restart_receiver_mid_stream(seed: u64, keep_cache: bool) {
    let mut p = Pair::new(
        seed,
        NetConfig::hostile(0.1),
        SenderConfig::default(),
        ReceiverConfig::default(),
    );
    p.populate(300);
    assert!(p.run_until(SETTLE, |p| p.sender.as_ref().unwrap().is_connected()));
    p.workload(4000, 20_000);
    p.run_for(Duration::from_millis(60));
    p.restart_receiver(keep_cache);
    p.run_for(Duration::from_millis(40));
    p.restart_receiver(keep_cache);
    p.settle_and_check(SETTLE);
    assert!(
        p.sender.as_ref().unwrap().stats().peer_restarts >= 1,
        "seed {seed}: {}\n{:?}",
        p.report(),
        p.receiver_events
    );
}

#[test]
fn receiver_restart_keeping_its_cache() {
    for seed in 0..4 {
        restart_receiver_mid_stream(seed, true);
    }
}

#[test]
fn receiver_restart_losing_its_cache() {
    for seed in 0..4 {
        restart_receiver_mid_stream(seed, false);
    }
}

#[test]
fn sender_restart_mid_stream() {
    for seed in 0..4 {
        let mut p = Pair::new(
            seed,
            NetConfig::hostile(0.1),
            SenderConfig::default(),
            ReceiverConfig::default(),
        );
        p.populate(300);
        assert!(p.run_until(SETTLE, |p| p.sender.as_ref().unwrap().is_connected()));
        p.workload(4000, 20_000);
        p.run_for(Duration::from_millis(60));
        // The agent dies; the kernel table keeps changing; a new agent
        // dumps it (versions restart from 1) and connects as a new session.
        p.stop_sender();
        p.run_for(Duration::from_millis(30));
        p.start_sender();
        p.settle_and_check(SETTLE);
        let r = p.receiver.stats();
        assert_eq!(r.peer_restarts, 1, "{r:?}");
        assert!(
            p.purged > 0,
            "entries destroyed while the agent was down were purged"
        );
    }
}

#[test]
fn overflow_falls_back_to_a_bulk_resync_and_loses_nothing() {
    let scfg = SenderConfig {
        resend_capacity: 64,
        tx_capacity: 128,
        ..SenderConfig::default()
    };
    let mut p = Pair::new(3, NetConfig::hostile(0.05), scfg, ReceiverConfig::default());
    p.conforming = false; // pushes past credit()
    p.populate(500);
    p.workload(6000, 50_000);
    p.run_for(Duration::from_millis(20));
    p.net.down = true; // the link goes away: the window fills, then the queue
    p.run_for(Duration::from_millis(40));
    p.net.down = false;
    p.settle_and_check(SETTLE);
    let s = p.sender.as_ref().unwrap().stats();
    assert!(s.overflows > 0 && s.overflow_dropped > 0, "{s:?}");
    assert!(
        p.sender_events
            .iter()
            .any(|e| matches!(e, SenderEvent::Overflow { .. }))
    );
    assert!(p.max_in_flight <= 64);
}

#[test]
fn conforming_agent_never_overflows_a_stalled_link() {
    let scfg = SenderConfig {
        resend_capacity: 64,
        tx_capacity: 128,
        ..SenderConfig::default()
    };
    let mut p = Pair::new(4, NetConfig::hostile(0.05), scfg, ReceiverConfig::default());
    p.populate(500);
    p.workload(6000, 50_000);
    p.run_for(Duration::from_millis(20));
    p.net.down = true;
    p.run_for(Duration::from_millis(40));
    p.net.down = false;
    p.settle_and_check(SETTLE);
    let s = p.sender.as_ref().unwrap().stats();
    assert_eq!(s.overflows, 0);
    assert_eq!(s.bulks_started, 1, "recovered by NACKs, without a resync");
}

#[test]
fn bulk_of_200k_entries_through_a_1k_window() {
    let scfg = SenderConfig {
        resend_capacity: 1000,
        ..SenderConfig::default()
    };
    let mut p = Pair::new(5, NetConfig::hostile(0.02), scfg, ReceiverConfig::default());
    p.populate(200_000);
    p.workload(5000, 20_000); // live changes during the bulk
    p.settle_and_check(SETTLE);
    let s = p.sender.as_ref().unwrap().stats();
    assert!(
        p.max_in_flight <= 1000,
        "window exceeded: {}",
        p.max_in_flight
    );
    assert!(s.bulk_records >= 200_000, "{s:?}");
    assert_eq!(s.overflows, 0);
    assert_eq!(p.ext.len(), p.kernel.len());
}

#[test]
fn resync_request_repopulates_and_purges() {
    let mut p = Pair::new(
        6,
        NetConfig::hostile(0.3),
        SenderConfig::default(),
        ReceiverConfig::default(),
    );
    p.populate(1000);
    p.workload(1000, 20_000);
    p.settle_and_check(SETTLE);
    // The backup's cache is flushed and gets an entry the primary does not
    // have (stamped by an old datagram); the operator asks for a resync.
    let mut stray = p.kernel.entries.values().next().unwrap().rec;
    let old = p.ext.stamp(&stray.orig).unwrap();
    p.ext = ExternalTable::new();
    stray.orig.zone = 999;
    p.ext.apply(
        old,
        &DataRecord::State {
            record: stray,
            ext: None,
        },
    );
    let now = p.now;
    p.receiver.request_resync(now);
    p.run_until(SETTLE, |p| !p.receiver.resync_pending());
    p.settle_and_check(SETTLE);
    assert_eq!(p.sender.as_ref().unwrap().stats().resync_requests, 1);
    assert!(p.purged >= 1);
}

#[test]
fn idle_pair_only_exchanges_alives() {
    let mut p = Pair::new(
        8,
        NetConfig::perfect(),
        SenderConfig::default(),
        ReceiverConfig::default(),
    );
    p.populate(10);
    p.settle_and_check(SETTLE);
    let before = p.net.stats.sent;
    p.run_for(Duration::from_secs(10));
    let sent = p.net.stats.sent - before;
    // One ALIVE a second, each answered.
    assert!(
        (18..=22).contains(&sent),
        "{sent} datagrams in 10 idle seconds"
    );
}

#[test]
fn sequence_numbers_wrap_around() {
    for seed in 0..3 {
        let mut p = Pair::new(
            seed,
            NetConfig::hostile(0.1),
            SenderConfig::default(),
            ReceiverConfig::default(),
        );
        p.force_first_seq(u32::MAX - 100);
        p.populate(300);
        assert!(p.run_until(SETTLE, |p| p.sender.as_ref().unwrap().is_connected()));
        p.workload(3000, 20_000);
        p.settle_and_check(SETTLE);
        let s = p.sender.as_ref().unwrap().stats();
        assert!(s.data_datagrams > 300, "{s:?}");
    }
}

#[test]
fn xdp_receive_path_converges() {
    for seed in 0..6 {
        let mut p = Pair::new(
            seed,
            NetConfig::hostile(0.15),
            SenderConfig::default(),
            ReceiverConfig::default(),
        );
        p.xdp = true;
        p.populate(300);
        assert!(p.run_until(SETTLE, |p| p.sender.as_ref().unwrap().is_connected()));
        p.workload(3000, 20_000);
        p.run_for(Duration::from_millis(40));
        if seed % 2 == 0 {
            p.restart_receiver(seed % 4 == 0);
        } else {
            p.stop_sender();
            p.run_for(Duration::from_millis(20));
            p.start_sender();
        }
        p.settle_and_check(SETTLE);
        // Data went the XDP way: the receiver saw headers only.
        assert!(p.receiver.stats().records_delivered < p.ext.len() as u64);
    }
}

#[test]
fn mismatched_receiver_window_loses_nothing() {
    // The receiver tracks fewer sequence numbers than the sender may have
    // in flight (a misconfiguration): slower, but nothing is lost.
    let rcfg = ReceiverConfig {
        max_window: 48,
        ..ReceiverConfig::default()
    };
    for seed in 0..3 {
        let mut p = Pair::new(
            seed,
            NetConfig::hostile(0.05),
            SenderConfig::default(),
            rcfg.clone(),
        );
        p.populate(3000);
        p.workload(3000, 20_000);
        p.settle_and_check(SETTLE);
        let r = p.receiver.stats();
        assert!(r.window_overruns > 0, "{r:?}");
    }
}

#[test]
fn a_late_hello_of_an_older_sender_does_not_take_over() {
    let mut r = Receiver::new(ReceiverConfig::default());
    let mut now = Instant::now();
    let hello = |session: u32, incarnation: u64| {
        let mut buf = vec![0u8; 64];
        let mut enc = wire::Encoder::new(&mut buf, Kind::SenderCtl).unwrap();
        enc.push(&Record::Hello { incarnation }).unwrap();
        let n = enc.finish(wire::HeaderFields {
            node: 1,
            session,
            seq: 100,
            floor: 100,
            flags: 0,
        });
        buf.truncate(n);
        buf
    };
    r.handle_datagram(now, &hello(0xB, 10)).unwrap();
    assert_eq!(r.peer_session(), Some(0xB));
    // The predecessor's late HELLO (older incarnation) is refused...
    assert!(matches!(
        r.handle_datagram(now, &hello(0xA, 9)),
        Err(Error::StaleSession { session: 0xA })
    ));
    assert_eq!(r.peer_session(), Some(0xB));
    // ... a successor's is not ...
    r.handle_datagram(now, &hello(0xC, 11)).unwrap();
    assert_eq!(r.peer_session(), Some(0xC));
    // ... and once the session we follow has been silent long enough, even
    // an older incarnation (a clock stepped back) may take over; a retired
    // session never does.
    now += ReceiverConfig::default().session_timeout;
    assert!(r.handle_datagram(now, &hello(0xB, 10)).is_err());
    r.handle_datagram(now, &hello(0xD, 1)).unwrap();
    assert_eq!(r.peer_session(), Some(0xD));
    assert_eq!(r.stats().peer_restarts, 2);
}

/// A random sweep over scenarios: 200 seeds in every run; a long sweep with
/// `SWEEP=20000 SWEEP_BASE=0 cargo test --release -p ctsync --lib ftfw::tests::random_sweep`
#[test]
fn random_sweep() {
    let n: u64 = std::env::var("SWEEP")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let base: u64 = std::env::var("SWEEP_BASE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    for seed in base..base + n {
        let mut r = Rng::new(seed);
        let loss = r.below(31) as f64 / 100.0;
        let net = NetConfig {
            loss,
            reorder: r.below(50) as f64 / 100.0,
            dup: r.below(20) as f64 / 100.0,
            corrupt_payload: r.below(10) as f64 / 100.0,
            corrupt_header: r.below(5) as f64 / 100.0,
            ..NetConfig::hostile(loss)
        };
        let small = r.chance(0.3);
        let scfg = if small {
            SenderConfig {
                resend_capacity: 32 + r.below(200) as usize,
                tx_capacity: 64 + r.below(200) as usize,
                ..SenderConfig::default()
            }
        } else {
            SenderConfig::default()
        };
        let mut p = Pair::new(seed, net, scfg, ReceiverConfig::default());
        p.conforming = !r.chance(0.3);
        p.clock_steps = r.chance(0.2);
        p.xdp = r.chance(0.3);
        let rcfg = ReceiverConfig {
            nack_delay: Duration::from_micros(r.below(3000)),
            ..ReceiverConfig::default()
        };
        p.rcfg = rcfg.clone();
        p.receiver = Receiver::new(ReceiverConfig {
            seed,
            incarnation: 1,
            ..rcfg
        });
        p.populate(r.below(800) as usize);
        p.workload(r.below(5000) as usize, 5_000 + r.below(50_000));
        for _ in 0..r.below(4) {
            p.run_for(Duration::from_millis(r.below(80)));
            let action = r.below(5);
            match action {
                0 => p.restart_receiver(true),
                1 => p.restart_receiver(false),
                2 => {
                    p.stop_sender();
                    p.run_for(Duration::from_millis(r.below(50)));
                    p.start_sender();
                }
                3 => {
                    p.net.down = true;
                    p.run_for(Duration::from_millis(r.below(100)));
                    p.net.down = false;
                }
                _ => {
                    let now = p.now;
                    p.receiver.request_resync(now);
                }
            }
        }
        let ok = p.run_until(SETTLE, Pair::quiescent);
        assert!(ok, "seed {seed}: not quiescent {}", p.report());
        p.run_for(Duration::from_millis(50));
        p.check_converged();
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn converges_under_any_faults(
        seed in any::<u64>(),
        loss in 0.0..0.3f64,
        reorder in 0.0..0.5f64,
        dup in 0.0..0.2f64,
        corrupt in 0.0..0.1f64,
        nack_delay_us in 0u64..3000,
        entries in 0usize..500,
        ops in 0usize..2000,
    ) {
        let net = NetConfig {
            loss,
            reorder,
            dup,
            corrupt_payload: corrupt,
            corrupt_header: corrupt / 2.0,
            ..NetConfig::hostile(loss)
        };
        let rcfg = ReceiverConfig {
            nack_delay: Duration::from_micros(nack_delay_us),
            ..ReceiverConfig::default()
        };
        let mut p = Pair::new(seed, net, SenderConfig::default(), rcfg);
        p.populate(entries);
        p.workload(ops, 20_000);
        p.settle_and_check(SETTLE);
    }

    #[test]
    fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..2000)) {
        if let Ok(d) = wire::decode(&bytes) {
            prop_assert_eq!(d.records().count(), d.header().count as usize);
        }
    }

    #[test]
    fn data_records_round_trip(
        raw in proptest::collection::vec(
            (proptest::collection::vec(any::<u8>(), 128), any::<bool>(), any::<u8>()),
            0..20,
        ),
        seq in any::<u32>(),
    ) {
        let recs: Vec<DataRecord> = raw
            .iter()
            .map(|(bytes, destroy, x)| {
                let r: ctsync_common::CtRecord = bytemuck::pod_read_unaligned(bytes);
                if *destroy {
                    DataRecord::Destroy { key: r.orig, version: r.version }
                } else {
                    let mut e = ctsync_common::CtExt::default();
                    e.helper[0] = *x;
                    DataRecord::state(&r, Some(&e))
                }
            })
            .collect();
        let mut buf = vec![0u8; wire::MAX_DATAGRAM];
        let mut enc = wire::Encoder::new(&mut buf, Kind::Data).unwrap();
        for r in &recs {
            enc.push(&r.to_wire()).unwrap();
        }
        let n = enc.finish(wire::HeaderFields { seq, ..Default::default() });
        let d = wire::decode(&buf[..n]).unwrap();
        let back: Vec<_> = d.records().filter_map(|r| DataRecord::from_wire(&r)).collect();
        prop_assert_eq!(back, recs);
        prop_assert_eq!(d.header().seq, seq);
    }
}

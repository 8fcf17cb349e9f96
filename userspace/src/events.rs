//! The event source: the ctnetlink event socket with the eBPF filter on it,
//! the table dump, and the internal cache they keep.
//!
//! Start-up subscribes first and dumps second, so nothing created in between
//! is missed (events queued during the dump are applied after it, in order).
//! On overrun (ENOBUFS: the kernel dropped events for us) the socket buffer
//! doubles, up to the configured cap, and the cache is resynchronised from a
//! dump, so it converges to the kernel table again.

use std::{io, time::Instant};

use ctsync_common::{CtExt, CtRecord, filter::COUNTERS};
use serde::Serialize;

use crate::{
    cache::Cache,
    config::Config,
    ctnetlink::{self, Decoded, EventKind},
    filter::{EventFilter, FilterError, Rules},
    nlsock::{self, NlSocket, RecvBatch, groups},
};

/// Largest event message we accept; events are well under 1 KiB.
const EVENT_BUF: usize = 8192;
/// Dump replies are batched by the kernel into datagrams of up to ~32 KiB.
const DUMP_BUF: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum EventsError {
    #[error(
        "cannot open the ctnetlink event socket: {0} (ctsync needs root or CAP_NET_ADMIN, and a kernel with nf_conntrack_netlink)"
    )]
    Open(#[source] io::Error),
    #[error("setting the event socket's receive buffer to {bytes} bytes failed: {source}")]
    Buffer { bytes: usize, source: io::Error },
    #[error(transparent)]
    Filter(#[from] FilterError),
    #[error("conntrack table dump failed: {0}")]
    Dump(#[source] io::Error),
    #[error("reading conntrack events failed: {0}")]
    Read(#[source] io::Error),
    #[error("changing the event socket's multicast membership failed: {0}")]
    Membership(#[source] io::Error),
}

/// Counters of the event source (what `ctsync stats` shows under "events").
#[derive(Debug, Clone, Default, Serialize)]
pub struct EventStats {
    pub new: u64,
    pub update: u64,
    pub destroy: u64,
    /// Messages userspace could not decode (never applied).
    pub malformed: u64,
    /// ENOBUFS seen on the event socket: the kernel dropped events.
    pub overruns: u64,
    /// Cache resynchronisations from a dump (start-up, overruns, reloads, requests).
    pub resyncs: u64,
    /// Entries received by dumps.
    pub dumped: u64,
    /// Entries dumps no longer had (removed from the cache).
    pub resync_removed: u64,
    /// Dumped entries the filter rules excluded.
    pub dump_filtered: u64,
    /// Duration of the last dump, in milliseconds.
    pub last_resync_ms: u64,
    /// The event socket's receive buffer now.
    pub socket_buffer: usize,
    /// recvmmsg calls that returned data.
    pub reads: u64,
}

pub struct EventSource {
    sock: NlSocket,
    batch: RecvBatch,
    filter: EventFilter,
    rules: Rules,
    /// Port ids of the agent's own ctnetlink write sockets.
    self_portids: Vec<u32>,
    buffer_max: usize,
    pub stats: EventStats,
    rec: CtRecord,
    ext: CtExt,
}

impl EventSource {
    /// Opens and subscribes the event socket, loads and attaches the filter.
    /// Call `resync` next to fill the cache.
    pub fn open(config: &Config) -> Result<EventSource, EventsError> {
        let sock = NlSocket::open(groups::CT_ALL, true).map_err(EventsError::Open)?;
        let bytes = config.events.socket_buffer;
        let socket_buffer = sock
            .set_recv_buffer(bytes)
            .map_err(|source| EventsError::Buffer { bytes, source })?;
        let mut filter = EventFilter::load()?;
        let rules = Rules::for_agent(config);
        filter.apply(&rules)?;
        filter.attach(&sock)?;
        Ok(EventSource {
            sock,
            batch: RecvBatch::new(config.events.read_batch, EVENT_BUF),
            filter,
            rules,
            self_portids: Vec::new(),
            buffer_max: config.events.socket_buffer_max,
            stats: EventStats {
                socket_buffer,
                ..Default::default()
            },
            rec: CtRecord::default(),
            ext: CtExt::default(),
        })
    }

    pub fn socket(&self) -> &NlSocket {
        &self.sock
    }

    pub fn rules(&self) -> &Rules {
        &self.rules
    }

    /// The eBPF filter's counters, indexed by `ctsync_common::filter::Counter`.
    pub fn filter_counters(&self) -> Result<[u64; COUNTERS as usize], FilterError> {
        self.filter.counters()
    }

    /// Events caused by writes on sockets with these port ids are dropped in the kernel.
    pub fn set_self_portids(&mut self, ids: &[u32]) -> Result<(), FilterError> {
        self.filter.set_self_portids(ids)?;
        self.self_portids = ids.to_vec();
        Ok(())
    }

    /// Installs new filter rules and reconciles the cache with them: a dump
    /// brings in what the old rules excluded, and what the new rules exclude
    /// leaves the cache.
    pub fn set_rules(&mut self, rules: Rules, cache: &mut Cache) -> Result<(), EventsError> {
        self.filter.apply(&rules)?;
        self.rules = rules;
        // Events the permissive window let through are drained first, so the
        // dump's view (filtered in userspace) is the last word.
        self.drain(cache)?;
        self.resync(cache)
    }

    /// Rebuilds the cache from a table dump: dumped entries are upserted,
    /// entries the dump no longer has are removed.
    pub fn resync(&mut self, cache: &mut Cache) -> Result<(), EventsError> {
        let t0 = Instant::now();
        let dump = NlSocket::open(0, false).map_err(EventsError::Dump)?;
        let mut req = Vec::with_capacity(64);
        ctnetlink::encode::dump_request(&mut req, 1);
        dump.send(&req).map_err(EventsError::Dump)?;
        let mut buf = vec![0u8; DUMP_BUF];
        cache.begin_resync();
        'outer: loop {
            let n = dump.recv(&mut buf).map_err(EventsError::Dump)?;
            for msg in ctnetlink::messages(&buf[..n]) {
                let Ok(msg) = msg else {
                    self.stats.malformed += 1;
                    break;
                };
                match ctnetlink::decode(msg, &mut self.rec, &mut self.ext) {
                    Ok(Decoded::Conntrack { .. }) => {
                        self.stats.dumped += 1;
                        if self.rules.verdict(&self.rec, 0, &[], true).is_some() {
                            self.stats.dump_filtered += 1;
                            continue;
                        }
                        cache.upsert(&self.rec, Some(&self.ext));
                    }
                    Ok(Decoded::Done) => break 'outer,
                    Ok(Decoded::Error { errno }) if errno != 0 => {
                        return Err(EventsError::Dump(io::Error::from_raw_os_error(errno)));
                    }
                    Ok(_) => {}
                    Err(e) => {
                        self.stats.malformed += 1;
                        tracing::warn!("malformed message in table dump: {e}");
                    }
                }
            }
        }
        let removed = cache.end_resync();
        self.stats.resync_removed += removed as u64;
        self.stats.resyncs += 1;
        self.stats.last_resync_ms = t0.elapsed().as_millis() as u64;
        tracing::info!(
            entries = cache.len(),
            removed,
            ms = self.stats.last_resync_ms,
            "internal cache synchronised with the kernel table"
        );
        Ok(())
    }

    /// Applies every queued event to the cache, until the socket is empty.
    /// Handles overruns (grow buffer, resync). Returns events applied.
    ///
    /// After an overrun the queue is drained *before* the resync dump: the
    /// kernel reports a further overrun only once the queue has been empty,
    /// so dumping with a full queue would let events dropped during the dump
    /// go unreported.
    pub fn drain(&mut self, cache: &mut Cache) -> Result<usize, EventsError> {
        let mut applied = 0;
        let mut need_resync = false;
        loop {
            let n = match self.batch.recv(&self.sock) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if !need_resync {
                        return Ok(applied);
                    }
                    need_resync = false;
                    self.resync(cache)?;
                    continue;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if nlsock::is_overrun(&e) => {
                    self.overrun()?;
                    need_resync = true;
                    continue;
                }
                Err(e) => return Err(EventsError::Read(e)),
            };
            self.stats.reads += 1;
            for i in 0..n {
                let (data, truncated) = self.batch.get(i);
                if truncated {
                    self.stats.malformed += 1;
                    continue;
                }
                applied += apply_events(data, cache, &mut self.stats, &mut self.rec, &mut self.ext);
            }
        }
    }

    /// Stops listening for events, after applying those queued: while no
    /// socket listens, the kernel does not build events at all, which
    /// nearly doubles the rate of a bulk write of our own (the commit).
    /// [`EventSource::resume`] listens again.
    pub fn pause(&mut self, cache: &mut Cache) -> Result<(), EventsError> {
        self.drain(cache)?;
        self.sock
            .set_membership(groups::CT_ALL, false)
            .map_err(EventsError::Membership)
    }

    /// Listens again after [`EventSource::pause`] and rebuilds the cache
    /// from a dump, which covers everything that changed meanwhile.
    pub fn resume(&mut self, cache: &mut Cache) -> Result<(), EventsError> {
        self.sock
            .set_membership(groups::CT_ALL, true)
            .map_err(EventsError::Membership)?;
        self.resync(cache)
    }

    /// The kernel dropped events: grow the buffer (up to the cap); the
    /// caller rebuilds the cache from a dump so nothing stays lost.
    fn overrun(&mut self) -> Result<(), EventsError> {
        self.stats.overruns += 1;
        let cur = self.stats.socket_buffer;
        if cur < self.buffer_max {
            let bytes = (cur * 2).min(self.buffer_max);
            self.stats.socket_buffer = self
                .sock
                .set_recv_buffer(bytes)
                .map_err(|source| EventsError::Buffer { bytes, source })?;
        }
        tracing::warn!(
            overruns = self.stats.overruns,
            socket_buffer = self.stats.socket_buffer,
            "event socket overrun: the kernel dropped events; resynchronising from a dump"
        );
        Ok(())
    }
}

/// Decodes the messages of one datagram and applies them to the cache.
fn apply_events(
    data: &[u8],
    cache: &mut Cache,
    stats: &mut EventStats,
    rec: &mut CtRecord,
    ext: &mut CtExt,
) -> usize {
    let mut applied = 0;
    for msg in ctnetlink::messages(data) {
        let Ok(msg) = msg else {
            stats.malformed += 1;
            break;
        };
        match ctnetlink::decode(msg, rec, ext) {
            Ok(Decoded::Conntrack { kind, .. }) => {
                applied += 1;
                match kind {
                    EventKind::New => {
                        stats.new += 1;
                        cache.upsert(rec, Some(ext));
                    }
                    EventKind::Update => {
                        stats.update += 1;
                        cache.upsert(rec, Some(ext));
                    }
                    EventKind::Destroy => {
                        stats.destroy += 1;
                        cache.remove(&rec.orig);
                    }
                }
            }
            Ok(_) => {}
            Err(e) => {
                stats.malformed += 1;
                tracing::debug!("malformed event: {e}");
            }
        }
    }
    applied
}

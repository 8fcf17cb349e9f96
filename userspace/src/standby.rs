//! Hot standby: the backup writes the peer's replicated state into its own
//! kernel table as it arrives, so that a takeover has nothing left to
//! commit (`failover.standby = "hot"`).
//!
//! Changes of the external cache are queued here, coalesced by key (only
//! the newest state of an entry is written), and written in batches
//! through the agent's ctnetlink writer: a create, or an update where the
//! entry exists (as the commit does), with the timeout left of the state;
//! a delete for a DESTROY or a purge. The writer's port id is in the event
//! filter's self-origin list, so the kernel's events for these writes never
//! reach the backup's internal cache (and are never sent back).

use std::{collections::VecDeque, time::Instant};

use ctsync_common::{CtExt, CtRecord, Tuple};
use hashbrown::HashMap;
use serde::Serialize;

use crate::{
    commit::{self, CommitOptions},
    ctnetlink::encode,
    ctwrite::{WriteError, Writer, errno_name},
};

/// Changes written per flush, at most (the agent flushes every loop turn).
pub const FLUSH_MAX: usize = 8192;

#[derive(Clone, Copy, Debug)]
enum Pending {
    Upsert(CtRecord, Option<CtExt>),
    Delete,
}

#[derive(Debug, Default, Clone, Serialize)]
pub struct MirrorStats {
    /// Entries created in the kernel table.
    pub created: u64,
    /// Entries that existed and were updated.
    pub updated: u64,
    pub deleted: u64,
    /// Deletes of entries the kernel no longer had (expired there first).
    pub delete_missing: u64,
    /// Writes the kernel refused, by errno name.
    pub failed: u64,
    pub errors: std::collections::BTreeMap<String, u64>,
    /// Changes merged into one still waiting (the newest state wins).
    pub coalesced: u64,
    pub flushes: u64,
    /// Full rewrites of the external cache (mode switch, lost changes).
    pub full_syncs: u64,
}

/// The queue of external-cache changes not yet in the kernel table.
pub struct Mirror {
    pending: HashMap<Tuple, (Pending, Instant)>,
    order: VecDeque<Tuple>,
    pub stats: MirrorStats,
    /// Change noted → written into the kernel table, µs.
    pub write_latency: hdrhistogram::Histogram<u64>,
}

impl Default for Mirror {
    fn default() -> Mirror {
        Mirror {
            pending: HashMap::new(),
            order: VecDeque::new(),
            stats: MirrorStats::default(),
            write_latency: crate::latency::histogram(),
        }
    }
}

impl Mirror {
    pub fn new() -> Mirror {
        Mirror::default()
    }

    fn note(&mut self, key: Tuple, p: Pending, now: Instant) {
        match self.pending.get_mut(&key) {
            Some(slot) => {
                // Keeps its place (and age) in the queue.
                slot.0 = p;
                self.stats.coalesced += 1;
            }
            None => {
                self.pending.insert(key, (p, now));
                self.order.push_back(key);
            }
        }
    }

    /// The entry's state changed in the external cache.
    pub fn note_state(&mut self, rec: &CtRecord, ext: Option<&CtExt>, now: Instant) {
        self.note(rec.orig, Pending::Upsert(*rec, ext.copied()), now);
    }

    /// The entry left the external cache (DESTROY, purge).
    pub fn note_gone(&mut self, key: &Tuple, now: Instant) {
        self.note(*key, Pending::Delete, now);
    }

    /// Queues every entry (a switch to hot standby, or changes lost).
    pub fn note_all(&mut self, entries: impl IntoIterator<Item = (CtRecord, Option<CtExt>)>) {
        let now = Instant::now();
        for (r, e) in entries {
            self.note_state(&r, e.as_ref(), now);
        }
        self.stats.full_syncs += 1;
    }

    /// Changes waiting.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// How long the oldest waiting change has waited, ms.
    pub fn lag_ms(&self, now: Instant) -> f64 {
        self.order
            .front()
            .and_then(|k| self.pending.get(k))
            .map_or(0.0, |(_, t)| now.duration_since(*t).as_secs_f64() * 1e3)
    }

    /// Writes up to `max` waiting changes, oldest first.
    pub fn flush(
        &mut self,
        w: &mut Writer,
        opts: &CommitOptions,
        max: usize,
    ) -> Result<usize, WriteError> {
        if self.order.is_empty() {
            return Ok(0);
        }
        let now = Instant::now();
        let mut upserts = Vec::new();
        let mut deletes = Vec::new();
        let mut noted = Vec::new();
        let n = self.order.len().min(max);
        for key in self.order.drain(..n) {
            let Some((p, since)) = self.pending.remove(&key) else {
                continue;
            };
            noted.push(since);
            match p {
                Pending::Upsert(mut r, e) => {
                    // The timer runs from when the state arrived.
                    let waited = now.duration_since(since).as_secs() as u32;
                    r.timeout = r.timeout.saturating_sub(waited);
                    upserts.push((r, e));
                }
                Pending::Delete => deletes.push(key),
            }
        }
        self.stats.flushes += 1;
        if !upserts.is_empty() {
            // Timeouts as they are: a hot standby's entries expire with the
            // primary's (min_timeout is for the commit of an old cache).
            let opts = CommitOptions {
                min_timeout: 0,
                ..*opts
            };
            let r = commit::commit(w, upserts.into_iter(), &opts)?;
            self.stats.created += r.created;
            self.stats.updated += r.updated;
            self.stats.failed += r.failed;
            for (k, v) in r.errors {
                *self.stats.errors.entry(k).or_default() += v;
            }
            if r.failed > 0 {
                tracing::warn!(
                    failed = r.failed,
                    samples = ?r.failed_samples,
                    "hot standby: the kernel refused entries"
                );
            }
        }
        if !deletes.is_empty() {
            let mut missing = 0;
            let mut refused = Vec::new();
            w.write(&deletes, encode::delete, |_, errno| {
                if errno == libc::ENOENT {
                    missing += 1;
                } else {
                    refused.push(errno);
                }
            })?;
            self.stats.deleted += (deletes.len() - missing - refused.len()) as u64;
            self.stats.delete_missing += missing as u64;
            self.stats.failed += refused.len() as u64;
            for errno in refused {
                *self.stats.errors.entry(errno_name(errno)).or_default() += 1;
            }
        }
        let done = Instant::now();
        for since in noted {
            crate::latency::record(&mut self.write_latency, done.duration_since(since));
        }
        Ok(n)
    }
}

/// How many of `keys` the kernel table lacks (a `notify master` check that
/// the hot standby's table is current).
pub fn missing_in_kernel(w: &mut Writer, keys: &[Tuple]) -> Result<usize, WriteError> {
    let mut missing = 0;
    w.write(keys, encode::get, |_, errno| {
        if errno == libc::ENOENT {
            missing += 1;
        }
    })?;
    Ok(missing)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(src: u8, version: u64) -> CtRecord {
        let mut r = CtRecord {
            version,
            timeout: 100,
            ..Default::default()
        };
        r.orig.src[0] = src;
        r
    }

    #[test]
    fn changes_coalesce_by_key_and_keep_their_place() {
        let mut m = Mirror::new();
        let t = Instant::now();
        m.note_state(&rec(1, 1), None, t);
        m.note_state(&rec(2, 1), None, t);
        m.note_state(&rec(1, 2), None, t);
        m.note_gone(&rec(2, 1).orig, t);
        assert_eq!(m.len(), 2);
        assert_eq!(m.stats.coalesced, 2);
        assert_eq!(m.order.front(), Some(&rec(1, 0).orig));
        match m.pending[&rec(1, 0).orig].0 {
            Pending::Upsert(r, _) => assert_eq!(r.version, 2),
            Pending::Delete => panic!("newest state lost"),
        }
        assert!(matches!(m.pending[&rec(2, 0).orig].0, Pending::Delete));
    }
}

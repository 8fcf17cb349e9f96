//! The internal cache: the local conntrack table as the agent knows it, keyed
//! by (original tuple, zone), with coalescing of changes for the sender.
//!
//! Memory matters (target: under 150 bytes per entry at a million entries), so
//! entries live in fixed-size chunks of 128-byte `CtRecord`s (no per-entry
//! allocation, no doubling of a giant Vec) and the hash index holds only a u32
//! slot number. The rare extension data (NAT sequence adjustment, helper) sits
//! in a side map.
//!
//! Coalescing: a changed entry is queued once; however often it changes
//! before the sender drains it, it goes out once, with its newest state. A
//! destroyed entry becomes a tombstone until drained, so the sender learns of
//! the DESTROY in order.

use std::hash::BuildHasher;

use ctsync_common::{
    CtExt, CtRecord, Tuple,
    conntrack::{IPPROTO_SCTP, record_flags},
};
use hashbrown::{HashMap, HashTable};

const CHUNK: usize = 4096;

/// Per-slot state bits, kept beside the records (1 byte per slot).
mod slot {
    /// Holds an entry present in the kernel table.
    pub const LIVE: u8 = 1 << 0;
    /// Destroyed, waiting for the sender to drain the DESTROY.
    pub const TOMBSTONE: u8 = 1 << 1;
    /// In the change queue.
    pub const QUEUED: u8 = 1 << 2;
    /// Seen during the current resync.
    pub const SEEN: u8 = 1 << 3;
}

/// What [`Cache::lookup`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup<'a> {
    Live(&'a CtRecord, Option<&'a CtExt>),
    /// Destroyed at this version; the DESTROY is still queued.
    Gone(u64),
    Unknown,
}

/// What `upsert` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upsert {
    Inserted,
    Updated,
}

/// A change for the sender, borrowed from the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change<'a> {
    /// The entry's newest state.
    Upsert(&'a CtRecord, Option<&'a CtExt>),
    /// The entry is gone, as of this version.
    Destroy(&'a Tuple, u64),
}

pub struct Cache {
    chunks: Vec<Box<[CtRecord]>>,
    states: Vec<u8>,
    free: Vec<u32>,
    index: HashTable<u32>,
    hasher: hashbrown::DefaultHashBuilder,
    ext: HashMap<u32, CtExt>,
    /// Tombstones waiting in the queue, by key (the newest per key).
    graves: HashMap<Tuple, u32>,
    queue: std::collections::VecDeque<u32>,
    /// Changes ever queued and ever handed out (or dropped by `clear`):
    /// positions in the queue's history, for latency bookkeeping.
    queued_total: u64,
    drained_total: u64,
    live: usize,
    next_version: u64,
}

impl Default for Cache {
    fn default() -> Self {
        Self::new()
    }
}

impl Cache {
    pub fn new() -> Cache {
        Cache {
            chunks: Vec::new(),
            states: Vec::new(),
            free: Vec::new(),
            index: HashTable::new(),
            hasher: Default::default(),
            ext: HashMap::new(),
            graves: HashMap::new(),
            queue: Default::default(),
            queued_total: 0,
            drained_total: 0,
            live: 0,
            next_version: 1,
        }
    }

    /// Number of live entries.
    pub fn len(&self) -> usize {
        self.live
    }

    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    /// Changes waiting for the sender.
    pub fn pending(&self) -> usize {
        self.queue.len()
    }

    /// (changes ever queued, changes ever drained): the queue is FIFO, so a
    /// change queued as number `q` is drained once the second reaches `q`.
    pub fn queue_totals(&self) -> (u64, u64) {
        (self.queued_total, self.drained_total)
    }

    /// Heap bytes held: records, slot states, free list, index, queue, extensions.
    pub fn memory_bytes(&self) -> usize {
        self.chunks.len() * CHUNK * size_of::<CtRecord>()
            + self.chunks.capacity() * size_of::<Box<[CtRecord]>>()
            + self.states.capacity()
            + self.free.capacity() * 4
            + index_bytes(self.index.capacity())
            + self.queue.capacity() * 4
            + self.ext.capacity() * (size_of::<u32>() + size_of::<CtExt>() + 1)
            + self.graves.capacity() * (size_of::<Tuple>() + size_of::<u32>() + 1)
    }

    fn hash(&self, key: &Tuple) -> u64 {
        self.hasher.hash_one(bytemuck::bytes_of(key))
    }

    fn rec(&self, slot: u32) -> &CtRecord {
        &self.chunks[slot as usize / CHUNK][slot as usize % CHUNK]
    }

    fn rec_mut(&mut self, slot: u32) -> &mut CtRecord {
        &mut self.chunks[slot as usize / CHUNK][slot as usize % CHUNK]
    }

    fn find(&self, key: &Tuple) -> Option<u32> {
        let h = self.hash(key);
        self.index.find(h, |&s| self.rec(s).orig == *key).copied()
    }

    fn alloc(&mut self) -> u32 {
        if let Some(s) = self.free.pop() {
            return s;
        }
        let s = self.states.len();
        if s.is_multiple_of(CHUNK) {
            self.chunks
                .push(vec![CtRecord::default(); CHUNK].into_boxed_slice());
        }
        self.states.push(0);
        s as u32
    }

    fn enqueue(&mut self, s: u32) {
        let st = &mut self.states[s as usize];
        if *st & slot::QUEUED == 0 {
            *st |= slot::QUEUED;
            self.queue.push_back(s);
            self.queued_total += 1;
        }
    }

    /// Looks an entry up by its key (original tuple with zone).
    pub fn get(&self, key: &Tuple) -> Option<(&CtRecord, Option<&CtExt>)> {
        self.find(key).map(|s| (self.rec(s), self.ext.get(&s)))
    }

    /// Applies a NEW/UPDATE event or a dump entry. Attributes the message did
    /// not carry (per `record_flags`) keep their cached values, because update
    /// events only carry what changed.
    pub fn upsert(&mut self, rec: &CtRecord, ext: Option<&CtExt>) -> Upsert {
        let version = self.next_version;
        self.next_version += 1;
        let (slot, result) = match self.find(&rec.orig) {
            Some(s) => {
                let old = *self.rec(s);
                let merged = merge(&old, rec, version);
                *self.rec_mut(s) = merged;
                (s, Upsert::Updated)
            }
            None => {
                let s = self.alloc();
                let mut r = *rec;
                r.version = version;
                *self.rec_mut(s) = r;
                self.states[s as usize] = slot::LIVE;
                let h = self.hash(&rec.orig);
                let Cache {
                    index,
                    chunks,
                    hasher,
                    ..
                } = self;
                index.insert_unique(h, s, |&x| {
                    hasher.hash_one(bytemuck::bytes_of(
                        &chunks[x as usize / CHUNK][x as usize % CHUNK].orig,
                    ))
                });
                self.live += 1;
                (s, Upsert::Inserted)
            }
        };
        // SCTP protocol info always comes with both verification tags (only
        // destroy events lack them): the message's tags replace the cached
        // ones, zero included. The other parts are only sent when set.
        let sctp_tags =
            rec.orig.proto == IPPROTO_SCTP && rec.flags & record_flags::HAS_PROTOINFO != 0;
        if let Some(e) =
            ext.filter(|e| !e.is_empty() || (sctp_tags && self.ext.contains_key(&slot)))
        {
            let cur = self.ext.entry(slot).or_default();
            if e.nat_seq != [Default::default(); 2] {
                cur.nat_seq = e.nat_seq;
            }
            if e.helper[0] != 0 {
                cur.helper = e.helper;
            }
            if sctp_tags {
                cur.sctp_vtag = e.sctp_vtag;
            }
            if cur.is_empty() {
                self.ext.remove(&slot);
                self.rec_mut(slot).flags &= !record_flags::HAS_EXT;
            } else {
                self.rec_mut(slot).flags |= record_flags::HAS_EXT;
            }
        }
        self.states[slot as usize] |= slot::SEEN;
        self.enqueue(slot);
        result
    }

    /// Applies a DESTROY. Returns whether the entry was known.
    pub fn remove(&mut self, key: &Tuple) -> bool {
        let h = self.hash(key);
        let Cache { index, chunks, .. } = self;
        let Ok(entry) = index.find_entry(h, |&s| {
            chunks[s as usize / CHUNK][s as usize % CHUNK].orig == *key
        }) else {
            return false;
        };
        let (s, _) = entry.remove();
        self.live -= 1;
        let v = self.next_version;
        self.next_version += 1;
        self.rec_mut(s).version = v;
        self.ext.remove(&s);
        self.states[s as usize] = (self.states[s as usize] & slot::QUEUED) | slot::TOMBSTONE;
        self.graves.insert(*key, s);
        self.enqueue(s);
        true
    }

    /// Hands up to `max` queued changes, oldest first, to `f`.
    pub fn drain_changes(&mut self, max: usize, mut f: impl FnMut(Change<'_>)) -> usize {
        let mut n = 0;
        while n < max {
            let Some(s) = self.queue.pop_front() else {
                break;
            };
            self.drained_total += 1;
            let st = self.states[s as usize];
            if st & slot::TOMBSTONE != 0 {
                let r = self.rec(s);
                f(Change::Destroy(&r.orig, r.version));
                if self.graves.get(&r.orig) == Some(&s) {
                    let key = r.orig;
                    self.graves.remove(&key);
                }
                self.states[s as usize] = 0;
                self.free.push(s);
            } else {
                self.states[s as usize] &= !slot::QUEUED;
                f(Change::Upsert(self.rec(s), self.ext.get(&s)));
            }
            n += 1;
        }
        n
    }

    /// What the cache knows of `key`: live state, a tombstone not yet drained
    /// (with the version of the destruction), or nothing.
    pub fn lookup(&self, key: &Tuple) -> Lookup<'_> {
        if let Some((r, e)) = self.get(key) {
            return Lookup::Live(r, e);
        }
        self.graves
            .get(key)
            .map_or(Lookup::Unknown, |&s| Lookup::Gone(self.rec(s).version))
    }

    /// Visits up to `max` live entries from slot `cursor` on; returns the
    /// slot to continue from, or `None` at the end of the cache. Entries
    /// live for the whole walk are visited once.
    pub fn walk(
        &self,
        cursor: u64,
        max: usize,
        mut visit: impl FnMut(&CtRecord, Option<&CtExt>),
    ) -> Option<u64> {
        let mut s = cursor as usize;
        let mut seen = 0;
        while s < self.states.len() {
            if seen == max {
                return Some(s as u64);
            }
            if self.states[s] & slot::LIVE != 0 {
                visit(self.rec(s as u32), self.ext.get(&(s as u32)));
                seen += 1;
            }
            s += 1;
        }
        None
    }

    /// Drops every entry and every queued change.
    pub fn clear(&mut self) {
        *self = Cache {
            next_version: self.next_version,
            queued_total: self.queued_total,
            drained_total: self.queued_total,
            ..Cache::new()
        };
    }

    /// Iterates over live entries.
    pub fn iter(&self) -> impl Iterator<Item = (&CtRecord, Option<&CtExt>)> + '_ {
        self.states
            .iter()
            .enumerate()
            .filter(|(_, st)| **st & slot::LIVE != 0)
            .map(|(s, _)| (self.rec(s as u32), self.ext.get(&(s as u32))))
    }

    /// Starts a resync: entries not upserted before `end_resync` are removed then.
    pub fn begin_resync(&mut self) {
        for st in &mut self.states {
            *st &= !slot::SEEN;
        }
    }

    /// Ends a resync: removes (as DESTROYs) the live entries not seen since
    /// `begin_resync`. Returns how many.
    pub fn end_resync(&mut self) -> usize {
        let stale: Vec<Tuple> = self
            .states
            .iter()
            .enumerate()
            .filter(|(_, st)| **st & (slot::LIVE | slot::SEEN) == slot::LIVE)
            .map(|(s, _)| self.rec(s as u32).orig)
            .collect();
        for k in &stale {
            self.remove(k);
        }
        stale.len()
    }
}

/// hashbrown keeps a power-of-two number of buckets, at most 7/8 full; each
/// is a u32 slot plus one control byte.
fn index_bytes(capacity: usize) -> usize {
    if capacity == 0 {
        0
    } else {
        (capacity * 8).div_ceil(7).next_power_of_two() * 5
    }
}

/// The newest state: `new`'s attributes, and `old`'s where `new` lacks them.
fn merge(old: &CtRecord, new: &CtRecord, version: u64) -> CtRecord {
    use record_flags::*;
    let mut r = *new;
    let has = |f| new.flags & f != 0;
    if !has(HAS_PROTOINFO) {
        r.proto_state = old.proto_state;
        r.tcp_wscale_orig = old.tcp_wscale_orig;
        r.tcp_wscale_reply = old.tcp_wscale_reply;
        r.tcp_flags_orig = old.tcp_flags_orig;
        r.tcp_flags_reply = old.tcp_flags_reply;
        r.dccp_role = old.dccp_role;
    }
    if !has(HAS_MARK) {
        r.mark = old.mark;
    }
    if !has(HAS_LABELS) {
        r.labels = old.labels;
    }
    if !has(HAS_TIMEOUT) {
        r.timeout = old.timeout;
    }
    if !has(HAS_REPLY) {
        r.reply = old.reply;
    }
    if new.id == 0 {
        r.id = old.id;
    }
    r.flags |=
        old.flags & (HAS_PROTOINFO | HAS_MARK | HAS_LABELS | HAS_TIMEOUT | HAS_REPLY | HAS_EXT);
    r.version = version;
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use ctsync_common::conntrack::{AF_INET, IPPROTO_TCP};

    fn rec(i: u32) -> CtRecord {
        let mut r = CtRecord::default();
        r.orig.family = AF_INET;
        r.orig.proto = IPPROTO_TCP;
        r.orig.src[..4].copy_from_slice(&i.to_be_bytes());
        r.orig.dst[..4].copy_from_slice(&[10, 0, 0, 1]);
        r.orig.src_port = 1234u16.to_be();
        r.orig.dst_port = 80u16.to_be();
        r.reply = r.orig;
        r.flags = record_flags::HAS_PROTOINFO | record_flags::HAS_REPLY;
        r.proto_state = 1;
        r
    }

    fn drain(c: &mut Cache) -> Vec<(bool, Tuple, u8)> {
        let mut out = vec![];
        c.drain_changes(usize::MAX, |ch| match ch {
            Change::Upsert(r, _) => out.push((true, r.orig, r.proto_state)),
            Change::Destroy(k, _) => out.push((false, *k, 0)),
        });
        out
    }

    #[test]
    fn coalesces_updates_into_one_change_with_the_newest_state() {
        let mut c = Cache::new();
        let mut r = rec(1);
        assert_eq!(c.upsert(&r, None), Upsert::Inserted);
        for st in 2..=3 {
            r.proto_state = st;
            assert_eq!(c.upsert(&r, None), Upsert::Updated);
        }
        assert_eq!(drain(&mut c), vec![(true, r.orig, 3)]);
        assert!(drain(&mut c).is_empty());
    }

    #[test]
    fn update_without_protoinfo_keeps_the_cached_state() {
        let mut c = Cache::new();
        let mut r = rec(1);
        r.proto_state = 3;
        r.mark = 7;
        r.flags |= record_flags::HAS_MARK;
        c.upsert(&r, None);
        let mut u = rec(1);
        u.flags = record_flags::HAS_REPLY;
        u.proto_state = 0;
        c.upsert(&u, None);
        let (got, _) = c.get(&r.orig).unwrap();
        assert_eq!((got.proto_state, got.mark), (3, 7));
    }

    #[test]
    fn sctp_tags_follow_the_protocol_info() {
        use ctsync_common::conntrack::IPPROTO_SCTP;
        let mut c = Cache::new();
        let mut r = rec(1);
        r.orig.proto = IPPROTO_SCTP;
        let tagged = |orig, reply| CtExt {
            sctp_vtag: [orig, reply],
            ..Default::default()
        };
        c.upsert(&r, Some(&tagged(0x11, 0)));
        let ext = |c: &Cache| c.get(&r.orig).and_then(|(_, e)| e.copied());
        assert_eq!(ext(&c), Some(tagged(0x11, 0)));
        assert_ne!(c.get(&r.orig).unwrap().0.flags & record_flags::HAS_EXT, 0);
        c.upsert(&r, Some(&tagged(0x11, 0x22)));
        assert_eq!(ext(&c), Some(tagged(0x11, 0x22)));
        // An update without protocol info (no tags) keeps them.
        let mut u = r;
        u.flags = record_flags::HAS_REPLY;
        c.upsert(&u, Some(&CtExt::default()));
        assert_eq!(ext(&c), Some(tagged(0x11, 0x22)));
        // The helper merges in beside them.
        let mut h = CtExt::default();
        h.helper[..3].copy_from_slice(b"abc");
        c.upsert(&u, Some(&h));
        assert_eq!(ext(&c).unwrap().sctp_vtag, [0x11, 0x22]);
        assert_eq!(ext(&c).unwrap().helper_name(), b"abc");
        // Protocol info with zero tags clears them; an extension left empty
        // is dropped.
        let mut s = rec(2);
        s.orig.proto = IPPROTO_SCTP;
        c.upsert(&s, Some(&tagged(5, 6)));
        c.upsert(&s, Some(&CtExt::default()));
        let (got, e) = c.get(&s.orig).unwrap();
        assert_eq!((e, got.flags & record_flags::HAS_EXT), (None, 0));
    }

    #[test]
    fn destroy_is_ordered_after_earlier_changes_and_recreate_after_it() {
        let mut c = Cache::new();
        let r = rec(1);
        c.upsert(&r, None);
        assert!(c.remove(&r.orig));
        assert!(!c.remove(&r.orig));
        c.upsert(&r, None);
        assert_eq!(drain(&mut c), vec![(false, r.orig, 0), (true, r.orig, 1)]);
        assert_eq!(c.len(), 1);
    }

    #[test]
    fn lookup_sees_live_entries_and_undrained_tombstones_and_walk_visits_all() {
        let mut c = Cache::new();
        for i in 0..10 {
            c.upsert(&rec(i), None);
        }
        c.remove(&rec(3).orig);
        let Lookup::Gone(v) = c.lookup(&rec(3).orig) else {
            panic!("tombstone not found")
        };
        assert!(matches!(c.lookup(&rec(4).orig), Lookup::Live(r, None) if r.version < v));
        drain(&mut c);
        assert_eq!(c.lookup(&rec(3).orig), Lookup::Unknown);
        let mut seen = vec![];
        let mut cursor = Some(0);
        while let Some(cur) = cursor {
            cursor = c.walk(cur, 4, |r, _| seen.push(r.orig));
        }
        assert_eq!(seen.len(), 9);
    }

    #[test]
    fn resync_removes_what_the_dump_no_longer_has() {
        let mut c = Cache::new();
        for i in 0..10 {
            c.upsert(&rec(i), None);
        }
        drain(&mut c);
        c.begin_resync();
        for i in 0..5 {
            c.upsert(&rec(i), None);
        }
        assert_eq!(c.end_resync(), 5);
        assert_eq!(c.len(), 5);
        let changes = drain(&mut c);
        assert_eq!(changes.iter().filter(|(up, _, _)| !up).count(), 5);
        assert!(c.get(&rec(7).orig).is_none() && c.get(&rec(3).orig).is_some());
    }

    #[test]
    fn slots_are_reused_and_memory_per_entry_stays_small() {
        let mut c = Cache::new();
        let n = 200_000;
        for i in 0..n {
            c.upsert(&rec(i), None);
        }
        drain(&mut c);
        let per_entry = c.memory_bytes() / n as usize;
        assert!(per_entry < 150, "{per_entry} bytes per entry");
        for i in 0..n {
            assert!(c.remove(&rec(i).orig));
        }
        drain(&mut c);
        for i in 0..n {
            c.upsert(&rec(i + n), None);
        }
        assert_eq!(c.len(), n as usize);
        assert_eq!(c.chunks.len(), (n as usize).div_ceil(CHUNK));
        assert_eq!(c.iter().count(), n as usize);
    }
}

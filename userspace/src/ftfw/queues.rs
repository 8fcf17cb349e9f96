//! The sender's two queues.
//!
//! - [`TxQueue`]: records waiting to be sent, coalesced by key (a key is in
//!   it at most once, with its newest state), bounded by the caller through
//!   `credit()`. NACKed entries come back here as "resend the current
//!   state", resolved through the caller's lookup at transmit time.
//! - [`ResendQueue`]: what was sent and not yet acknowledged, per datagram
//!   sequence number. It keeps keys and versions only (56 bytes a record),
//!   not the datagram bytes: a NACK resends current state, not old copies.
//!   Its size is the send window.

use std::{collections::VecDeque, time::Instant};

use ctsync_common::{CtExt, CtRecord, Tuple};
use hashbrown::HashMap;
use hashbrown::hash_map::Entry;

/// A reliable marker in the data stream.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Marker {
    BulkBegin { bulk: u32, request: u32 },
    BulkEnd { bulk: u32, begin_seq: u32 },
}

/// What a queued key will be sent as.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum PendingState {
    State(CtRecord, Option<CtExt>),
    Destroy(u64),
    /// NACKed: send whatever the lookup says now. `version`/`destroy` are
    /// what was sent last, the fallback when the lookup knows nothing.
    Resend {
        version: u64,
        destroy: bool,
    },
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) struct Pending {
    pub(crate) state: PendingState,
    /// Part of the current bulk send (counted until acknowledged).
    pub(crate) bulk: bool,
}

#[derive(Debug, Default)]
pub(crate) struct TxQueue {
    order: VecDeque<Tuple>,
    pending: HashMap<Tuple, Pending>,
}

impl TxQueue {
    pub(crate) fn len(&self) -> usize {
        self.pending.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    pub(crate) fn contains(&self, key: &Tuple) -> bool {
        self.pending.contains_key(key)
    }

    /// A change from the caller: the newest state, replacing whatever is
    /// queued for the key (keeping its place and its bulk mark).
    pub(crate) fn push_change(&mut self, key: Tuple, state: PendingState) {
        match self.pending.entry(key) {
            Entry::Occupied(mut e) => e.get_mut().state = state,
            Entry::Vacant(e) => {
                e.insert(Pending { state, bulk: false });
                self.order.push_back(key);
            }
        }
    }

    /// A NACKed entry, queued at the front (retransmissions go first). If the
    /// key is already queued, its queued state is at least as new: only the
    /// bulk mark is merged. Returns true when two bulk-marked items merged
    /// into one (the caller's count of bulk items drops by one).
    pub(crate) fn requeue(&mut self, key: Tuple, version: u64, destroy: bool, bulk: bool) -> bool {
        match self.pending.entry(key) {
            Entry::Occupied(mut e) => {
                let p = e.get_mut();
                if let PendingState::Resend {
                    version: v,
                    destroy: d,
                } = &mut p.state
                    && version > *v
                {
                    *v = version;
                    *d = destroy;
                }
                let merged = p.bulk && bulk;
                p.bulk |= bulk;
                merged
            }
            Entry::Vacant(e) => {
                e.insert(Pending {
                    state: PendingState::Resend { version, destroy },
                    bulk,
                });
                self.order.push_front(key);
                false
            }
        }
    }

    pub(crate) fn pop(&mut self) -> Option<(Tuple, Pending)> {
        while let Some(key) = self.order.pop_front() {
            if let Some(p) = self.pending.remove(&key) {
                return Some((key, p));
            }
        }
        None
    }

    /// Puts back what `pop` returned (it did not fit in the datagram).
    pub(crate) fn push_front(&mut self, key: Tuple, p: Pending) {
        if self.pending.insert(key, p).is_none() {
            self.order.push_front(key);
        }
    }

    /// Drops everything; returns how many records were dropped.
    pub(crate) fn clear(&mut self) -> usize {
        let n = self.pending.len();
        self.order.clear();
        self.pending.clear();
        n
    }

    pub(crate) fn clear_bulk_marks(&mut self) {
        for p in self.pending.values_mut() {
            p.bulk = false;
        }
    }
}

/// One record sent and not yet acknowledged.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum SentItem {
    Entry {
        key: Tuple,
        version: u64,
        destroy: bool,
        bulk: bool,
    },
    Marker(Marker),
}

/// Unacknowledged datagrams by sequence number (a dense ring from the lowest
/// one still held).
#[derive(Debug)]
pub(crate) struct ResendQueue {
    base: u64,
    slots: VecDeque<Option<Vec<SentItem>>>,
    /// When each datagram in `slots` was sent (for the ACK round trip).
    sent: VecDeque<Instant>,
    records: usize,
    pool: Vec<Vec<SentItem>>,
}

impl ResendQueue {
    pub(crate) fn new(base: u64) -> ResendQueue {
        ResendQueue {
            base,
            slots: VecDeque::new(),
            sent: VecDeque::new(),
            records: 0,
            pool: Vec::new(),
        }
    }

    /// Records held (entries and markers).
    pub(crate) fn records(&self) -> usize {
        self.records
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// The lowest sequence number still held, or `next_seq` if none.
    pub(crate) fn floor(&self, next_seq: u64) -> u64 {
        if self.slots.is_empty() {
            next_seq
        } else {
            self.base
        }
    }

    /// An empty item vector (recycled).
    pub(crate) fn take_vec(&mut self) -> Vec<SentItem> {
        self.pool.pop().unwrap_or_default()
    }

    pub(crate) fn recycle(&mut self, mut v: Vec<SentItem>) {
        if self.pool.len() < 64 {
            v.clear();
            self.pool.push(v);
        }
    }

    /// Records datagram `seq` (always the next one after the last pushed),
    /// sent at `now`.
    pub(crate) fn push(&mut self, seq: u64, items: Vec<SentItem>, now: Instant) {
        if self.slots.is_empty() {
            self.base = seq;
        }
        debug_assert_eq!(seq, self.base + self.slots.len() as u64);
        self.records += items.len();
        self.slots.push_back(Some(items));
        self.sent.push_back(now);
    }

    /// Removes the datagrams in `from..=to` still held, hands their items
    /// to `f` (then recycles them) and each one's send time to `sent_at`.
    pub(crate) fn take_range(
        &mut self,
        from: u64,
        to: u64,
        mut f: impl FnMut(&SentItem),
        mut sent_at: impl FnMut(Instant),
    ) -> usize {
        let end = self.base + self.slots.len() as u64;
        let lo = from.max(self.base);
        let hi = to.saturating_add(1).min(end);
        let mut n = 0;
        for seq in lo..hi {
            let i = (seq - self.base) as usize;
            if let Some(items) = self.slots[i].take() {
                self.records -= items.len();
                items.iter().for_each(&mut f);
                self.recycle(items);
                sent_at(self.sent[i]);
                n += 1;
            }
        }
        while let Some(None) = self.slots.front() {
            self.slots.pop_front();
            self.sent.pop_front();
            self.base += 1;
        }
        n
    }

    /// Drops everything; returns how many records were dropped.
    pub(crate) fn clear(&mut self) -> usize {
        let n = self.records;
        while let Some(s) = self.slots.pop_front() {
            if let Some(v) = s {
                self.recycle(v);
            }
        }
        self.sent.clear();
        self.records = 0;
        n
    }

    pub(crate) fn clear_bulk_marks(&mut self) {
        for items in self.slots.iter_mut().flatten() {
            for it in items {
                if let SentItem::Entry { bulk, .. } = it {
                    *bulk = false;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(k: u8) -> Tuple {
        let mut t = Tuple::default();
        t.src[0] = k;
        t
    }

    fn entry(k: u8) -> SentItem {
        SentItem::Entry {
            key: key(k),
            version: u64::from(k),
            destroy: false,
            bulk: false,
        }
    }

    #[test]
    fn tx_coalesces_and_requeues_in_front() {
        let mut q = TxQueue::default();
        q.push_change(key(1), PendingState::Destroy(1));
        q.push_change(key(2), PendingState::Destroy(2));
        q.push_change(key(1), PendingState::Destroy(3));
        assert_eq!(q.len(), 2);
        assert!(!q.requeue(key(9), 4, false, true));
        // A requeue never overrides a newer change from the caller.
        assert!(!q.requeue(key(2), 1, false, true));
        assert!(q.requeue(key(2), 1, false, true));
        let got: Vec<_> = std::iter::from_fn(|| q.pop()).collect();
        assert_eq!(got[0].0, key(9));
        assert_eq!(got[1].1.state, PendingState::Destroy(3));
        assert_eq!(
            got[2].1,
            Pending {
                state: PendingState::Destroy(2),
                bulk: true
            }
        );
        assert!(q.is_empty());
    }

    #[test]
    fn resend_ranges_and_floor() {
        let mut q = ResendQueue::new(100);
        assert_eq!(q.floor(100), 100);
        for seq in 100..110 {
            q.push(seq, vec![entry(seq as u8), entry(0)], Instant::now());
        }
        assert_eq!((q.records(), q.floor(110)), (20, 100));
        let mut seen = 0;
        assert_eq!(q.take_range(103, 105, |_| seen += 1, |_| ()), 3);
        assert_eq!((seen, q.floor(110)), (6, 100));
        assert_eq!(q.take_range(0, 101, |_| (), |_| ()), 2);
        assert_eq!(q.floor(110), 102);
        assert_eq!(q.take_range(102, 102, |_| (), |_| ()), 1);
        assert_eq!(q.floor(110), 106);
        // Out-of-range and repeated ranges are no-ops.
        assert_eq!(q.take_range(200, 300, |_| (), |_| ()), 0);
        assert_eq!(q.take_range(103, 105, |_| (), |_| ()), 0);
        assert_eq!(q.take_range(0, u64::MAX, |_| (), |_| ()), 4);
        assert!(q.is_empty());
        assert_eq!(q.floor(110), 110);
        q.push(110, vec![entry(1)], Instant::now());
        assert_eq!(q.floor(111), 110);
    }
}

//! How the backup applies delivered records to its external cache, and a
//! reference table that does it (used by the simulation tests and by the
//! userspace receive path; the XDP program applies the same rule to its BPF
//! map).
//!
//! The receiver delivers every valid record it gets, duplicates and late
//! arrivals included; this rule is what makes them harmless:
//!
//! 1. Each stored entry (live or a tombstone) remembers the version it holds
//!    and the [`Stamp`] (sender session, sequence number) of the datagram
//!    that last set or refreshed it.
//! 2. An incoming record replaces the stored one when it comes from another
//!    sender session than the stored stamp (versions of different sessions
//!    are not comparable: a restarted primary counts again from its own
//!    start), or when its version is higher. At an equal version it only
//!    refreshes the stamp (bulk sends resend unchanged entries).
//! 3. A DESTROY leaves a tombstone (version, stamp), so that an older state
//!    arriving late cannot resurrect the entry. Tombstones can be expired once
//!    no older datagram can still arrive (a few reorder horizons; the
//!    simulation keeps them).
//! 4. At the end of a bulk send the receiver emits a [`Purge`]: every entry
//!    whose stamp is outside the purge's window was not refreshed by the
//!    bulk, so the primary no longer has it (it was destroyed while the two
//!    were apart, or the DESTROY was dropped in a sender overflow): remove it.

// Rule 2 is `apply_rule`, shared with the XDP program, which applies it to
// its map.
use ctsync_common::{
    CtExt, CtRecord, Tuple,
    xdp::{Apply, apply_rule},
};
use hashbrown::HashMap;

use super::DataRecord;

/// Which datagram last set an entry: the sender's session and the
/// datagram's (wire) sequence number.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default, Hash)]
pub struct Stamp {
    pub session: u32,
    pub seq: u32,
}

/// "Keep only entries set or refreshed since the bulk began": the entries
/// whose stamp has this `session` and a sequence number at or after `from`
/// (serial arithmetic: within 2^31 after it). Everything else is stale.
///
/// The window is open-ended on purpose: XDP keeps applying records while
/// the agent purges, and anything it applies meanwhile is newer than the
/// bulk's start. (An entry left untouched for 2^31 datagrams, hours at full
/// rate, could look recent; the agent's timeout expiry bounds that.)
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Purge {
    pub session: u32,
    /// The sequence number the bulk began at.
    pub from: u32,
}

impl Purge {
    pub fn keeps(&self, stamp: &Stamp) -> bool {
        stamp.session == self.session && stamp.seq.wrapping_sub(self.from) < 1 << 31
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Held {
    Live(CtRecord, Option<CtExt>),
    Gone(u64),
}

#[derive(Clone, Copy, Debug)]
struct Slot {
    held: Held,
    stamp: Stamp,
    /// The table's clock when the entry was last set or refreshed.
    at: u32,
}

impl Slot {
    fn version(&self) -> u64 {
        match self.held {
            Held::Live(r, _) => r.version,
            Held::Gone(v) => v,
        }
    }
}

/// An external cache in a hash map, applying the rule above.
#[derive(Clone, Debug, Default)]
pub struct ExternalTable {
    map: HashMap<Tuple, Slot>,
    live: usize,
    /// Seconds, set by the owner (see [`ExternalTable::expire`]).
    clock: u32,
}

impl ExternalTable {
    pub fn new() -> ExternalTable {
        ExternalTable::default()
    }

    /// Applies one delivered record; returns whether it changed the entry's
    /// state (a refresh of the stamp alone returns false).
    pub fn apply(&mut self, stamp: Stamp, rec: &DataRecord) -> bool {
        let held = match *rec {
            DataRecord::State { record, ext } => Held::Live(record, ext),
            DataRecord::Destroy { version, .. } => Held::Gone(version),
        };
        let version = rec.version();
        let new = Slot {
            held,
            stamp,
            at: self.clock,
        };
        match self.map.get_mut(rec.key()) {
            None => {
                self.live += usize::from(matches!(held, Held::Live(..)));
                self.map.insert(*rec.key(), new);
                true
            }
            Some(slot) => {
                let rule = apply_rule(
                    slot.stamp.session,
                    slot.stamp.seq,
                    slot.version(),
                    stamp.session,
                    stamp.seq,
                    version,
                );
                match rule {
                    Apply::Replace => {
                        let was_live = matches!(slot.held, Held::Live(..));
                        let is_live = matches!(held, Held::Live(..));
                        self.live = self.live + usize::from(is_live) - usize::from(was_live);
                        *slot = new;
                        true
                    }
                    Apply::Refresh => {
                        slot.stamp = stamp;
                        slot.at = self.clock;
                        false
                    }
                    Apply::Keep => false,
                }
            }
        }
    }

    /// Sets the clock (seconds, any origin) that stamps entries as they are
    /// set or refreshed.
    pub fn set_clock(&mut self, secs: u32) {
        self.clock = secs;
    }

    /// Removes live entries whose timeout (as of their last update) has run
    /// out, and tombstones older than `tombstone_ttl`; returns how many live
    /// entries went. The agent calls this only while the peer is silent:
    /// while it is alive its DESTROYs are authoritative, and a flow that
    /// stays busy without state changes (a long UDP stream) sends no update,
    /// so its recorded timeout says nothing about its end.
    pub fn expire(&mut self, tombstone_ttl: u32) -> usize {
        let now = self.clock;
        let mut gone = 0;
        self.map.retain(|_, slot| {
            let age = now.saturating_sub(slot.at);
            match slot.held {
                Held::Live(r, _) if age > r.timeout => {
                    gone += 1;
                    false
                }
                Held::Gone(_) => age <= tombstone_ttl,
                Held::Live(..) => true,
            }
        });
        self.live -= gone;
        gone
    }

    /// Removes every entry and tombstone the purge does not keep; returns how
    /// many live entries went.
    pub fn purge(&mut self, purge: &Purge) -> usize {
        self.purge_with(purge, |_| {})
    }

    /// [`ExternalTable::purge`], telling `gone` each live entry removed.
    pub fn purge_with(&mut self, purge: &Purge, mut gone: impl FnMut(&Tuple)) -> usize {
        let before = self.live;
        let mut live = self.live;
        self.map.retain(|key, slot| {
            let keep = purge.keeps(&slot.stamp);
            if !keep && matches!(slot.held, Held::Live(..)) {
                live -= 1;
                gone(key);
            }
            keep
        });
        self.live = live;
        before - live
    }

    /// A live entry.
    pub fn get(&self, key: &Tuple) -> Option<(&CtRecord, Option<&CtExt>)> {
        match &self.map.get(key)?.held {
            Held::Live(r, e) => Some((r, e.as_ref())),
            Held::Gone(_) => None,
        }
    }

    /// The stamp of an entry or tombstone.
    pub fn stamp(&self, key: &Tuple) -> Option<Stamp> {
        self.map.get(key).map(|s| s.stamp)
    }

    /// Live entries.
    pub fn len(&self) -> usize {
        self.live
    }

    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    /// Tombstones held.
    pub fn tombstones(&self) -> usize {
        self.map.len() - self.live
    }

    /// Live entries with their timeout counted down by the time since the
    /// peer last set or refreshed them (by the table's clock): what a
    /// commit writes into the kernel.
    pub fn iter_remaining(&self) -> impl Iterator<Item = (CtRecord, Option<CtExt>)> + '_ {
        self.map.values().filter_map(|s| match s.held {
            Held::Live(mut r, e) => {
                r.timeout = r.timeout.saturating_sub(self.clock.saturating_sub(s.at));
                Some((r, e))
            }
            Held::Gone(_) => None,
        })
    }

    /// Forgets every entry and tombstone.
    pub fn clear(&mut self) {
        self.map.clear();
        self.live = 0;
    }

    /// Iterates over live entries.
    pub fn iter(&self) -> impl Iterator<Item = (&CtRecord, Option<&CtExt>)> + '_ {
        self.map.values().filter_map(|s| match &s.held {
            Held::Live(r, e) => Some((r, e.as_ref())),
            Held::Gone(_) => None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expire_removes_timed_out_entries_and_old_tombstones() {
        let mut t = ExternalTable::new();
        let st = Stamp { session: 1, seq: 1 };
        let a = CtRecord {
            timeout: 10,
            version: 1,
            ..Default::default()
        };
        let mut b = a;
        b.orig.src[0] = 2;
        b.timeout = 100;
        t.set_clock(5);
        t.apply(st, &DataRecord::state(&a, None));
        t.apply(st, &DataRecord::state(&b, None));
        t.apply(
            st,
            &DataRecord::Destroy {
                key: {
                    let mut k = a.orig;
                    k.src[0] = 3;
                    k
                },
                version: 1,
            },
        );
        t.set_clock(15);
        assert_eq!(t.expire(60), 0, "10 s old, timeout 10: not yet");
        t.set_clock(16);
        assert_eq!(t.expire(60), 1);
        assert!(t.get(&a.orig).is_none() && t.get(&b.orig).is_some());
        assert_eq!(t.tombstones(), 1);
        t.set_clock(70);
        t.expire(60);
        assert_eq!((t.len(), t.tombstones()), (1, 0));
    }

    fn rec(k: u8, version: u64) -> DataRecord {
        let mut r = CtRecord::default();
        r.orig.src[0] = k;
        r.version = version;
        DataRecord::State {
            record: r,
            ext: None,
        }
    }

    fn key(k: u8) -> Tuple {
        let mut t = Tuple::default();
        t.src[0] = k;
        t
    }

    const S1: Stamp = Stamp {
        session: 1,
        seq: 10,
    };

    #[test]
    fn newer_versions_win_and_late_ones_do_not() {
        let mut t = ExternalTable::new();
        assert!(t.apply(S1, &rec(1, 5)));
        assert!(t.apply(S1, &rec(1, 7)));
        assert!(!t.apply(S1, &rec(1, 6)));
        assert_eq!(t.get(&key(1)).unwrap().0.version, 7);
        // A late older state cannot resurrect a destroyed entry.
        assert!(t.apply(
            S1,
            &DataRecord::Destroy {
                key: key(1),
                version: 8
            }
        ));
        assert!(!t.apply(S1, &rec(1, 7)));
        assert!(t.get(&key(1)).is_none());
        assert_eq!((t.len(), t.tombstones()), (0, 1));
        // A re-creation is newer.
        assert!(t.apply(S1, &rec(1, 9)));
        assert_eq!((t.len(), t.tombstones()), (1, 0));
    }

    #[test]
    fn another_session_always_wins() {
        let mut t = ExternalTable::new();
        t.apply(S1, &rec(1, 1000));
        let s2 = Stamp { session: 2, seq: 1 };
        assert!(t.apply(s2, &rec(1, 3)));
        assert_eq!(t.get(&key(1)).unwrap().0.version, 3);
    }

    #[test]
    fn purge_keeps_only_what_the_bulk_refreshed() {
        let mut t = ExternalTable::new();
        let at = |seq| Stamp { session: 1, seq };
        t.apply(at(u32::MAX - 1), &rec(1, 5)); // before the bulk
        t.apply(at(u32::MAX - 1), &rec(2, 5)); // refreshed by the bulk
        t.apply(
            at(u32::MAX),
            &DataRecord::Destroy {
                key: key(3),
                version: 2,
            },
        );
        t.apply(Stamp { session: 9, seq: 3 }, &rec(4, 1)); // old session
        // The bulk begins at u32::MAX (wrapping) and refreshes entry 2 at an
        // equal version.
        assert!(!t.apply(at(2), &rec(2, 5)));
        t.apply(at(3), &rec(5, 1));
        let p = Purge {
            session: 1,
            from: u32::MAX,
        };
        assert_eq!(t.purge(&p), 2);
        let mut keys: Vec<u8> = t.iter().map(|(r, _)| r.orig.src[0]).collect();
        keys.sort();
        assert_eq!(keys, [2, 5]);
        assert_eq!(t.tombstones(), 1);
    }
}

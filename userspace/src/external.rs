//! The external cache (the peer's state, committed at failover), held
//! either in the agent's memory (the userspace receive path) or in the XDP
//! program's BPF map. Both apply the same rule (`ctsync_common::xdp::
//! apply_rule`, documented in [`crate::ftfw::apply`]).

use std::{io, os::fd::RawFd};

use aya::maps::{HashMap, MapData};
use bytemuck::Zeroable;
use ctsync_common::{
    CtExt, CtRecord, Tuple,
    xdp::{Apply, ExternalEntry, apply_rule, entry_state},
};

use crate::ftfw::{DataRecord, ExternalTable, Purge, Stamp};

pub enum External {
    Memory(ExternalTable),
    Map(MapExternal),
}

/// A live entry as committed or dumped: timeout counted down to now.
pub type Remaining = (CtRecord, Option<CtExt>);

impl External {
    /// Applies one record; returns whether it changed the entry.
    pub fn apply(&mut self, stamp: Stamp, rec: &DataRecord) -> bool {
        match self {
            External::Memory(t) => t.apply(stamp, rec),
            External::Map(m) => m.apply(stamp, rec),
        }
    }

    /// The memory table's clock (seconds since the agent started); the map
    /// keeps `CLOCK_MONOTONIC` seconds, as XDP stamps them.
    pub fn set_clock(&mut self, secs: u32) {
        if let External::Memory(t) = self {
            t.set_clock(secs);
        }
    }

    /// See [`ExternalTable::expire`].
    pub fn expire(&mut self, tombstone_ttl: u32) -> usize {
        match self {
            External::Memory(t) => t.expire(tombstone_ttl),
            External::Map(m) => m.expire(tombstone_ttl),
        }
    }

    /// Removes what the bulk did not refresh; returns the live entries gone
    /// and tells `gone` each one.
    pub fn purge(&mut self, purge: &Purge, gone: impl FnMut(&Tuple)) -> usize {
        match self {
            External::Memory(t) => t.purge_with(purge, gone),
            External::Map(m) => m.retain_with(|e| purge.keeps(&stamp(e)), gone),
        }
    }

    /// Live entries.
    pub fn len(&self) -> usize {
        match self {
            External::Memory(t) => t.len(),
            External::Map(m) => m.live(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn clear(&mut self) {
        match self {
            External::Memory(t) => t.clear(),
            External::Map(m) => m.clear(),
        }
    }

    /// Live entries with their remaining timeouts: what a commit writes.
    pub fn remaining(&self) -> Vec<Remaining> {
        match self {
            External::Memory(t) => t.iter_remaining().collect(),
            External::Map(m) => m.remaining(),
        }
    }
}

fn stamp(e: &ExternalEntry) -> Stamp {
    Stamp {
        session: e.session,
        seq: e.seq,
    }
}

/// `CLOCK_MONOTONIC` in whole seconds: the clock XDP's `bpf_ktime_get_ns`
/// reads, so entries keep their age across agent restarts.
pub fn monotonic_secs() -> u32 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u32
}

/// The XDP program's external-cache map.
pub struct MapExternal {
    map: HashMap<MapData, Tuple, ExternalEntry>,
    fd: RawFd,
    capacity: u32,
    /// Records the map refused (full), from the agent's own applies.
    pub refused: u64,
}

impl MapExternal {
    pub fn new(map: HashMap<MapData, Tuple, ExternalEntry>, fd: RawFd, capacity: u32) -> Self {
        MapExternal {
            map,
            fd,
            capacity,
            refused: 0,
        }
    }

    pub fn capacity(&self) -> u32 {
        self.capacity
    }

    /// The agent's own applies (records of datagrams XDP passed up: bulk
    /// markers, ring buffer full).
    pub fn apply(&mut self, st: Stamp, rec: &DataRecord) -> bool {
        let key = *rec.key();
        let version = rec.version();
        let now = monotonic_secs();
        if let Ok(mut stored) = self.map.get(&key, 0) {
            match apply_rule(
                stored.session,
                stored.seq,
                stored.record.version,
                st.session,
                st.seq,
                version,
            ) {
                Apply::Replace => {}
                Apply::Refresh => {
                    stored.seq = st.seq;
                    stored.at = now;
                    let _ = self.map.insert(&key, &stored, 0);
                    return false;
                }
                Apply::Keep => return false,
            }
        }
        let mut e = ExternalEntry {
            session: st.session,
            seq: st.seq,
            at: now,
            ..ExternalEntry::zeroed()
        };
        match *rec {
            DataRecord::State { record, ext } => {
                e.record = record;
                e.state = entry_state::LIVE;
                if let Some(x) = ext {
                    e.ext = x;
                    e.has_ext = 1;
                }
            }
            DataRecord::Destroy { key, version } => {
                e.record.orig = key;
                e.record.version = version;
                e.state = entry_state::GONE;
            }
        }
        match self.map.insert(&key, &e, 0) {
            Ok(()) => true,
            Err(err) => {
                self.refused += 1;
                if self.refused.is_power_of_two() {
                    tracing::error!(
                        refused = self.refused,
                        capacity = self.capacity,
                        "the XDP external cache refused an entry ({err}): raise sync.xdp_map_entries"
                    );
                }
                false
            }
        }
    }

    /// Every entry and tombstone, read in batches.
    pub fn entries(&self) -> io::Result<Vec<(Tuple, ExternalEntry)>> {
        lookup_batch(self.fd)
    }

    fn entries_logged(&self) -> Vec<(Tuple, ExternalEntry)> {
        self.entries().unwrap_or_else(|e| {
            tracing::error!("reading the XDP external cache: {e}");
            vec![]
        })
    }

    pub fn live(&self) -> usize {
        self.entries_logged()
            .iter()
            .filter(|(_, e)| e.state == entry_state::LIVE)
            .count()
    }

    /// Tombstones held.
    pub fn tombstones(&self) -> usize {
        self.entries_logged()
            .iter()
            .filter(|(_, e)| e.state != entry_state::LIVE)
            .count()
    }

    /// Deletes the entries `keep` refuses; returns the live ones deleted.
    pub fn retain(&mut self, keep: impl FnMut(&ExternalEntry) -> bool) -> usize {
        self.retain_with(keep, |_| {})
    }

    /// [`MapExternal::retain`], telling `gone` each live entry deleted.
    pub fn retain_with(
        &mut self,
        mut keep: impl FnMut(&ExternalEntry) -> bool,
        mut gone: impl FnMut(&Tuple),
    ) -> usize {
        let mut n = 0;
        for (k, e) in self.entries_logged() {
            if !keep(&e) && self.map.remove(&k).is_ok() && e.state == entry_state::LIVE {
                n += 1;
                gone(&k);
            }
        }
        n
    }

    /// Deletes everything, in batches.
    pub fn clear(&mut self) {
        let keys: Vec<Tuple> = self.entries_logged().into_iter().map(|(k, _)| k).collect();
        for chunk in keys.chunks(BATCH) {
            if let Err(e) = delete_batch(self.fd, chunk) {
                tracing::error!("clearing the XDP external cache: {e}");
                return;
            }
        }
    }

    /// As [`ExternalTable::expire`], by `CLOCK_MONOTONIC`.
    pub fn expire(&mut self, tombstone_ttl: u32) -> usize {
        let now = monotonic_secs();
        self.retain(|e| {
            let age = now.saturating_sub(e.at);
            if e.state == entry_state::LIVE {
                age <= e.record.timeout
            } else {
                age <= tombstone_ttl
            }
        })
    }

    pub fn remaining(&self) -> Vec<Remaining> {
        let now = monotonic_secs();
        self.entries_logged()
            .into_iter()
            .filter(|(_, e)| e.state == entry_state::LIVE)
            .map(|(_, e)| {
                let mut r = e.record;
                r.timeout = r.timeout.saturating_sub(now.saturating_sub(e.at));
                (r, (e.has_ext != 0).then_some(e.ext))
            })
            .collect()
    }
}

/// `BPF_MAP_LOOKUP_BATCH`'s part of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
const BPF_MAP_DELETE_BATCH: libc::c_long = 27;
/// Entries per batch call (more than any hash bucket holds).
const BATCH: usize = 8192;

/// Reads a whole hash map with `BPF_MAP_LOOKUP_BATCH` (aya has no batch
/// calls; one lookup syscall per entry would take seconds at 1M entries).
fn lookup_batch(fd: RawFd) -> io::Result<Vec<(Tuple, ExternalEntry)>> {
    let mut keys = vec![Tuple::zeroed(); BATCH];
    let mut values = vec![ExternalEntry::zeroed(); BATCH];
    let mut out = Vec::new();
    // Hash maps use a u32 bucket cursor as the batch token.
    let mut token_in: u32 = 0;
    let mut token_out: u32 = 0;
    let mut first = true;
    loop {
        let mut attr = BatchAttr {
            in_batch: if first { 0 } else { &raw const token_in as u64 },
            out_batch: &raw mut token_out as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: BATCH as u32,
            map_fd: fd as u32,
            ..Default::default()
        };
        // SAFETY: the attr points at buffers of `count` keys and values of
        // the map's sizes, and at the u32 tokens.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_LOOKUP_BATCH,
                &raw mut attr,
                size_of::<BatchAttr>(),
            )
        };
        let err = (rc < 0).then(io::Error::last_os_error);
        let n = (attr.count as usize).min(BATCH);
        out.extend(keys[..n].iter().copied().zip(values[..n].iter().copied()));
        match err {
            None => {}
            Some(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(out),
            Some(e) => return Err(e),
        }
        token_in = token_out;
        first = false;
    }
}

/// Deletes `keys` with `BPF_MAP_DELETE_BATCH`. A key already gone stops a
/// batch with ENOENT after `count` deletes: skip it and go on.
fn delete_batch(fd: RawFd, mut keys: &[Tuple]) -> io::Result<()> {
    while !keys.is_empty() {
        let mut attr = BatchAttr {
            keys: keys.as_ptr() as u64,
            count: keys.len() as u32,
            map_fd: fd as u32,
            ..Default::default()
        };
        // SAFETY: the attr points at `count` keys of the map's key size.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_DELETE_BATCH,
                &raw mut attr,
                size_of::<BatchAttr>(),
            )
        };
        if rc >= 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::ENOENT) {
            return Err(e);
        }
        let done = (attr.count as usize).min(keys.len());
        keys = &keys[(done + 1).min(keys.len())..];
    }
    Ok(())
}

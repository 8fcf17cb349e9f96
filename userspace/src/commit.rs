//! Writing replicated state into the kernel at takeover (the commit), and
//! shortening the timers of entries a node no longer carries traffic for
//! (the purge, conntrackd's `-t`).
//!
//! The commit creates every entry with an exclusive create, then updates
//! the ones that already exist (an update cannot carry NAT or a helper, and
//! the kernel refuses those on an existing entry, so create-or-update in one
//! message would fail NATed entries). Failures are collected per entry and
//! reported by errno, never silently dropped.

use std::{collections::BTreeMap, time::Instant};

use ctsync_common::{CtExt, CtRecord, conntrack::record_flags};
use serde::Serialize;

use crate::{
    ctnetlink::{CreateMode, EntryOptions, encode},
    ctwrite::{WriteError, Writer, errno_name},
    display::EntryView,
};

/// Entries handled per round of create-then-update.
const CHUNK: usize = 4096;
/// Failed entries described in a report, at most.
const SAMPLES: usize = 5;

#[derive(Debug, Clone, Copy)]
pub struct CommitOptions {
    /// Mark TCP entries be-liberal: the backup never saw their windows.
    pub tcp_be_liberal: bool,
    /// Committed entries live at least this long (seconds). The external
    /// cache's timeouts are those of the last update the peer sent, and a
    /// busy flow that changes no state sends none, so a timeout that has
    /// run out says little about a flow the peer still had; its next packet
    /// refreshes the timer.
    pub min_timeout: u32,
}

#[derive(Debug, Default, Clone, Serialize)]
pub struct CommitReport {
    pub entries: u64,
    pub created: u64,
    pub updated: u64,
    pub failed: u64,
    /// Failures by errno name.
    pub errors: BTreeMap<String, u64>,
    /// The first few failed entries, with their errno.
    pub failed_samples: Vec<String>,
    pub ms: f64,
}

impl CommitReport {
    fn fail(&mut self, errno: i32, rec: &CtRecord, ext: Option<&CtExt>) {
        self.failed += 1;
        let name = errno_name(errno);
        if self.failed_samples.len() < SAMPLES {
            self.failed_samples
                .push(format!("{name}: {}", EntryView::new(rec, ext).to_line()));
        }
        *self.errors.entry(name).or_default() += 1;
    }
}

/// Writes `entries` into the kernel table through `w`.
pub fn commit(
    w: &mut Writer,
    entries: impl Iterator<Item = (CtRecord, Option<CtExt>)>,
    opts: &CommitOptions,
) -> Result<CommitReport, WriteError> {
    let t0 = Instant::now();
    let entry_opts = EntryOptions {
        tcp_be_liberal: opts.tcp_be_liberal,
    };
    let mut report = CommitReport::default();
    let mut chunk: Vec<(CtRecord, Option<CtExt>)> = Vec::with_capacity(CHUNK);
    let mut exist: Vec<usize> = Vec::new();
    let mut entries = entries.peekable();
    while entries.peek().is_some() {
        chunk.clear();
        chunk.extend(entries.by_ref().take(CHUNK).map(|(mut r, e)| {
            r.timeout = r.timeout.max(opts.min_timeout);
            r.flags |= record_flags::HAS_TIMEOUT;
            (r, e)
        }));
        report.entries += chunk.len() as u64;
        exist.clear();
        let mut refused = Vec::new();
        w.write(
            &chunk,
            |buf, req, (r, e)| {
                encode::create(buf, req, CreateMode::Exclusive, r, e.as_ref(), entry_opts)
            },
            |i, errno| {
                if errno == libc::EEXIST {
                    exist.push(i);
                } else {
                    refused.push((i, errno));
                }
            },
        )?;
        report.created += (chunk.len() - exist.len() - refused.len()) as u64;
        for (i, errno) in refused {
            let (r, e) = &chunk[i];
            report.fail(errno, r, e.as_ref());
        }
        let mut update_failed = Vec::new();
        w.write(
            &exist,
            |buf, req, &i| {
                let (r, e) = &chunk[i];
                encode::update(buf, req, r, e.as_ref(), entry_opts)
            },
            |j, errno| update_failed.push((exist[j], errno)),
        )?;
        report.updated += (exist.len() - update_failed.len()) as u64;
        for (i, errno) in update_failed {
            let (r, e) = &chunk[i];
            report.fail(errno, r, e.as_ref());
        }
    }
    report.ms = t0.elapsed().as_secs_f64() * 1e3;
    Ok(report)
}

#[derive(Debug, Default, Clone, Serialize)]
pub struct PurgeReport {
    /// Entries whose timer was shortened.
    pub shortened: u64,
    /// Entries that were gone already (ENOENT) or refused.
    pub failed: u64,
    pub errors: BTreeMap<String, u64>,
    pub ms: f64,
}

/// Shortens to `timeout` the timers of the entries (as last dumped) whose
/// timeout is longer: they expire soon unless traffic refreshes them.
pub fn purge<'a>(
    w: &mut Writer,
    entries: impl Iterator<Item = &'a CtRecord>,
    timeout: u32,
) -> Result<PurgeReport, WriteError> {
    let t0 = Instant::now();
    let keys: Vec<_> = entries
        .filter(|r| r.timeout > timeout)
        .map(|r| r.orig)
        .collect();
    let mut report = PurgeReport::default();
    w.write(
        &keys,
        |buf, req, k| encode::set_timeout(buf, req, k, timeout),
        |_, errno| {
            report.failed += 1;
            *report.errors.entry(errno_name(errno)).or_default() += 1;
        },
    )?;
    report.shortened = keys.len() as u64 - report.failed;
    report.ms = t0.elapsed().as_secs_f64() * 1e3;
    Ok(report)
}

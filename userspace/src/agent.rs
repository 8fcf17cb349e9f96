//! The agent: the event source, the internal cache and the control socket,
//! driven by one current-thread tokio loop (so a namespace entered before
//! start-up holds for all of it).

use std::{
    future::Future,
    io,
    os::{
        fd::{AsRawFd, RawFd},
        unix::fs::FileTypeExt,
    },
    path::{Path, PathBuf},
    task::Poll,
    time::{Duration, Instant},
};

use ctsync_common::{CtExt, CtRecord};
use serde_json::json;
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Interest},
    net::{UnixListener, UnixStream},
};

use crate::{
    cache::Cache,
    commit::{self, CommitOptions},
    config::{Config, Standby},
    control::{CacheName, NotifyState, Reply, Request},
    ctwrite::{WriteError, Writer},
    display::EntryView,
    events::{EventSource, EventsError},
    filter::Rules,
    latency,
    replication::Replication,
    standby::{self, FLUSH_MAX},
    transport::TransportError,
};

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(
        "ctsync must run as root (it opens ctnetlink and loads eBPF programs): run it with sudo or as a service"
    )]
    NotRoot,
    #[error(transparent)]
    Events(#[from] EventsError),
    #[error(
        "control socket {path} is in use by another running agent: stop it, or choose another path with --socket or general.control_socket"
    )]
    SocketInUse { path: PathBuf },
    #[error("cannot create control socket {path}: {source}")]
    Socket { path: PathBuf, source: io::Error },
    #[error(
        "cannot serve metrics on {addr} (general.metrics_listen): {source}; pick a free local address and port, or remove the key"
    )]
    Metrics {
        addr: std::net::SocketAddr,
        source: io::Error,
    },
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error(transparent)]
    Write(#[from] WriteError),
    #[error("event loop: {0}")]
    Io(#[from] io::Error),
}

/// How often the sync links' carrier state is read.
const LINK_CHECK: Duration = Duration::from_millis(100);

/// Waits until one of the sockets is readable (clearing its readiness: the
/// caller drains every socket).
async fn any_readable(fds: &[tokio::io::unix::AsyncFd<FdRef>]) {
    if fds.is_empty() {
        return std::future::pending().await;
    }
    std::future::poll_fn(|cx| {
        for fd in fds {
            if let Poll::Ready(Ok(mut guard)) = fd.poll_read_ready(cx) {
                guard.clear_ready();
                return Poll::Ready(());
            }
        }
        Poll::Pending
    })
    .await
}

/// A drain that found this many events means the event rate is high...
const BUSY_EVENTS: usize = 16;
/// ...so wait this long before the next one (tokio's timers are coarser).
const BUSY_PAUSE: Duration = Duration::from_micros(200);

/// The event socket's fd, for readiness only (the event source owns it).
struct FdRef(RawFd);

impl AsRawFd for FdRef {
    fn as_raw_fd(&self) -> RawFd {
        self.0
    }
}

/// Removes the control socket file when the agent stops.
struct SocketGuard(PathBuf);

impl Drop for SocketGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn bind_control(path: &Path) -> Result<(UnixListener, SocketGuard), AgentError> {
    let sock_err = |source| AgentError::Socket {
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(sock_err)?;
    }
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(sock_err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "a file that is not a socket is in the way",
            )));
        }
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(AgentError::SocketInUse {
                path: path.to_owned(),
            });
        }
        // A stale socket from an agent that died: take it over.
        std::fs::remove_file(path).map_err(sock_err)?;
    }
    let l = UnixListener::bind(path).map_err(sock_err)?;
    Ok((l, SocketGuard(path.to_owned())))
}

/// The agent's state, owned by the loop.
pub struct Agent {
    config: Config,
    config_path: Option<PathBuf>,
    source: EventSource,
    cache: Cache,
    /// Replication to and from the peer, when sync links are configured.
    repl: Option<Replication>,
    /// Commits and purges write through this socket; the event filter
    /// drops the events it causes.
    writer: Writer,
    /// What the last `notify` did.
    last_notify: Option<serde_json::Value>,
    /// `notify master` in hot standby left the external cache to empty.
    flush_external_later: bool,
    /// Durations of commits and of whole `notify` sequences, µs.
    commit_time: hdrhistogram::Histogram<u64>,
    notify_time: hdrhistogram::Histogram<u64>,
    /// Per step of `notify` (commit, resync_kernel, purge, ...).
    notify_step_time: std::collections::BTreeMap<String, hdrhistogram::Histogram<u64>>,
}

impl Agent {
    /// Opens the event source and fills the cache from the kernel table.
    pub fn start(config: Config, config_path: Option<PathBuf>) -> Result<Agent, AgentError> {
        // SAFETY: plain syscall.
        if unsafe { libc::geteuid() } != 0 {
            return Err(AgentError::NotRoot);
        }
        let mut source = EventSource::open(&config)?;
        let writer = Writer::open()?;
        source
            .set_self_portids(&[writer.portid()])
            .map_err(EventsError::from)?;
        let mut cache = Cache::new();
        source.resync(&mut cache)?;
        let repl = if config.sync.links.is_empty() {
            tracing::info!("no [[sync.links]] configured: replication is off");
            None
        } else {
            let mut r = Replication::open(&config.sync, Instant::now())?;
            r.set_hot_standby(config.failover.standby == Standby::Hot);
            Some(r)
        };
        Ok(Agent {
            config,
            config_path,
            source,
            cache,
            repl,
            writer,
            last_notify: None,
            flush_external_later: false,
            commit_time: latency::histogram(),
            notify_time: latency::histogram(),
            notify_step_time: Default::default(),
        })
    }

    pub fn cache(&self) -> &Cache {
        &self.cache
    }

    fn latency(&self) -> serde_json::Value {
        let mut v = json!({
            "event_to_send": self.repl.as_ref().map(|r| latency::summary(r.event_to_send())),
            "ack_rtt": self.repl.as_ref().map(|r| latency::summary(r.ack_rtt())),
            "receive_to_apply": self.repl.as_ref().map(|r| latency::summary(r.receive_to_apply())),
            "standby_write": self.repl.as_ref().and_then(|r| r.standby_write()).map(latency::summary),
            "commit": latency::summary(&self.commit_time),
            "notify": latency::summary(&self.notify_time),
        });
        for (step, h) in &self.notify_step_time {
            v[format!("notify_step_{step}")] = latency::summary(h);
        }
        v
    }

    fn stats(&self) -> serde_json::Value {
        let filter = match self.source.filter_counters() {
            Ok(c) => {
                let m: serde_json::Map<_, _> = ctsync_common::filter::COUNTER_NAMES
                    .iter()
                    .zip(c)
                    .map(|(n, v)| (n.to_string(), json!(v)))
                    .collect();
                serde_json::Value::Object(m)
            }
            Err(e) => json!({ "error": e.to_string() }),
        };
        let sync = self.repl.as_ref().map(Replication::stats_json);
        json!({
            "last_notify": self.last_notify,
            "sync": sync,
            "events": self.source.stats,
            "filter": filter,
            "cache": {
                "entries": self.cache.len(),
                "pending_changes": self.cache.pending(),
                "memory_bytes": self.cache.memory_bytes(),
                "bytes_per_entry": self.cache.memory_bytes().checked_div(self.cache.len()).unwrap_or(0),
            },
        })
    }

    fn reload(&mut self) -> Result<serde_json::Value, String> {
        let Some(path) = self.config_path.clone() else {
            return Err(
                "the agent runs with built-in defaults (no --config): nothing to reload".into(),
            );
        };
        let new = Config::load(&path)
            .map_err(|e| format!("{e}; the running configuration is unchanged"))?;
        let mut changed = vec![];
        if new.filter != self.config.filter {
            self.source
                .set_rules(
                    Rules::for_agent(&Config {
                        sync: self.config.sync.clone(),
                        ..new.clone()
                    }),
                    &mut self.cache,
                )
                .map_err(|e| format!("applying the new filter failed: {e}"))?;
            changed.push("filter");
        }
        let needs_restart: Vec<&str> = [
            (
                "general.control_socket",
                new.general.control_socket != self.config.general.control_socket,
            ),
            ("events", new.events != self.config.events),
            ("sync", new.sync != self.config.sync),
        ]
        .into_iter()
        .filter_map(|(k, c)| c.then_some(k))
        .collect();
        if !needs_restart.is_empty() {
            tracing::warn!(keys = ?needs_restart, "these settings change only at restart");
        }
        if new.failover != self.config.failover {
            if new.failover.standby != self.config.failover.standby
                && let Some(r) = &mut self.repl
            {
                r.set_hot_standby(new.failover.standby == Standby::Hot);
            }
            self.config.failover = new.failover.clone();
            changed.push("failover");
        }
        let filter = new.filter.clone();
        self.config.filter = filter;
        tracing::info!(?changed, "configuration reloaded from {}", path.display());
        Ok(json!({ "changed": changed, "need_restart": needs_restart }))
    }

    async fn serve(&mut self, stream: UnixStream) -> io::Result<()> {
        let (r, mut w) = stream.into_split();
        let mut line = String::new();
        let mut reader = BufReader::new(r);
        match tokio::time::timeout(Duration::from_secs(5), reader.read_line(&mut line)).await {
            Ok(res) => res?,
            Err(_) => return Ok(()),
        };
        let req: Request = match serde_json::from_str(&line) {
            Ok(r) => r,
            Err(e) => {
                return write_line(
                    &mut w,
                    &Reply::err(format!("bad request {:?}: {e}", line.trim())),
                )
                .await;
            }
        };
        tracing::debug!(?req, "control request");
        match req {
            Request::Stats => write_line(&mut w, &Reply::ok(self.stats())).await,
            Request::Latency => write_line(&mut w, &Reply::ok(self.latency())).await,
            Request::Reload => {
                let r = self.reload();
                write_line(&mut w, &r.map_or_else(Reply::err, Reply::ok)).await
            }
            Request::ResyncKernel => {
                let before = self.cache.len();
                let r = self
                    .source
                    .resync(&mut self.cache)
                    .map_err(|e| e.to_string());
                let r = r.map(|()| json!({ "before": before, "after": self.cache.len() }));
                write_line(&mut w, &r.map_or_else(Reply::err, Reply::ok)).await
            }
            Request::DumpInternal => {
                let n = self.cache.len();
                write_dump(&mut w, n, self.cache.iter()).await
            }
            Request::DumpExternal => match &self.repl {
                Some(r) => {
                    let entries = r.external().remaining();
                    write_dump(
                        &mut w,
                        entries.len(),
                        entries.iter().map(|(r, e)| (r, e.as_ref())),
                    )
                    .await
                }
                None => write_line(&mut w, &Reply::err(NO_SYNC)).await,
            },
            Request::ResyncRequest => {
                let reply = match &mut self.repl {
                    Some(r) => Reply::ok(json!({ "request": r.request_resync(Instant::now()) })),
                    None => Reply::err(NO_SYNC),
                };
                write_line(&mut w, &reply).await
            }
            Request::Commit => {
                let r = self.commit().map(|r| json!(r));
                write_line(&mut w, &r.map_or_else(Reply::err, Reply::ok)).await
            }
            Request::Flush { cache } => {
                let r = self.flush(cache);
                write_line(&mut w, &r.map_or_else(Reply::err, Reply::ok)).await
            }
            Request::Purge => {
                let r = self.purge().map(|r| json!(r));
                write_line(&mut w, &r.map_or_else(Reply::err, Reply::ok)).await
            }
            Request::Notify { state } => {
                let r = self.notify(state);
                write_line(&mut w, &r.map_or_else(Reply::err, Reply::ok)).await
            }
            Request::ResyncBulk => {
                let reply = match &mut self.repl {
                    Some(r) => {
                        r.start_bulk();
                        Reply::ok(json!({ "entries": self.cache.len() }))
                    }
                    None => Reply::err(NO_SYNC),
                };
                write_line(&mut w, &reply).await
            }
        }
    }

    /// Writes the external cache into the kernel table. The event socket
    /// stops listening meanwhile (the kernel then builds no events for the
    /// commit, which nearly doubles its speed) and resynchronises from a
    /// dump afterwards, so the internal cache holds the committed entries
    /// and whatever else changed.
    fn commit(&mut self) -> Result<commit::CommitReport, String> {
        let repl = self.repl.as_ref().ok_or(NO_SYNC)?;
        let opts = commit_options(&self.config);
        self.source
            .pause(&mut self.cache)
            .map_err(|e| e.to_string())?;
        let result = commit::commit(
            &mut self.writer,
            repl.external().remaining().into_iter(),
            &opts,
        );
        let resumed = self.source.resume(&mut self.cache);
        let report = result.map_err(|e| format!("commit failed: {e}"))?;
        latency::record(
            &mut self.commit_time,
            std::time::Duration::from_secs_f64(report.ms / 1e3),
        );
        resumed.map_err(|e| format!("commit done, but the event socket: {e}"))?;
        if report.failed > 0 {
            tracing::warn!(
                entries = report.entries,
                created = report.created,
                updated = report.updated,
                failed = report.failed,
                errors = ?report.errors,
                samples = ?report.failed_samples,
                "external cache committed with failures"
            );
        } else {
            tracing::info!(
                entries = report.entries,
                created = report.created,
                updated = report.updated,
                ms = report.ms,
                "external cache committed to the kernel table"
            );
        }
        Ok(report)
    }

    fn flush(&mut self, which: CacheName) -> Result<serde_json::Value, String> {
        let flushed = match which {
            CacheName::Internal => {
                let n = self.cache.len();
                self.cache.clear();
                n
            }
            CacheName::External => {
                let repl = self.repl.as_mut().ok_or(NO_SYNC)?;
                let n = repl.external().len();
                repl.flush_external();
                n
            }
        };
        tracing::info!(?which, flushed, "cache flushed");
        Ok(json!({ "flushed": flushed }))
    }

    /// Shortens the timers of the entries in the kernel table (as the
    /// internal cache last saw them) to `failover.purge_timeout`.
    fn purge(&mut self) -> Result<commit::PurgeReport, String> {
        let timeout = self.config.failover.purge_timeout;
        let r = commit::purge(&mut self.writer, self.cache.iter().map(|(r, _)| r), timeout)
            .map_err(|e| format!("purge failed: {e}"))?;
        tracing::info!(
            shortened = r.shortened,
            failed = r.failed,
            timeout,
            ms = r.ms,
            "kernel entries' timers shortened"
        );
        Ok(r)
    }

    /// `notify master` in hot standby: the kernel table already holds the
    /// peer's state. Write what is still queued, check a sample, commit
    /// what may have expired here while alive on the peer, take the
    /// external cache into the internal one (it is what the kernel holds
    /// now, and the mirror's writes raised no events here), then go on as
    /// the primary.
    fn notify_master_hot(
        &mut self,
        step: &mut impl FnMut(&str, Instant, Result<serde_json::Value, String>) -> Result<(), String>,
    ) -> Result<(), String> {
        let opts = commit_options(&self.config);
        let t = Instant::now();
        let repl = self.repl.as_mut().ok_or(NO_SYNC)?;
        let lag = repl.mirror_lag();
        let r = repl
            .flush_mirror_all(&mut self.writer, &opts)
            .map(|n| json!({ "written": n, "lag_entries": lag.0, "lag_ms": lag.1 }))
            .map_err(|e| e.to_string());
        step("mirror_flush", t, r)?;
        let t = Instant::now();
        let entries = repl.external().remaining();
        // Entries whose replicated timeout ran out: a flow that stays busy
        // without state changes sends no update, so its copy here may have
        // expired while the peer still had it.
        let stale: Vec<_> = entries
            .iter()
            .filter(|(r, _)| r.timeout <= STALE_TIMEOUT)
            .copied()
            .collect();
        let sample: Vec<_> = entries
            .iter()
            .step_by((entries.len() / VERIFY_SAMPLE).max(1))
            .filter(|(r, _)| r.timeout > STALE_TIMEOUT)
            .map(|(r, _)| r.orig)
            .collect();
        let missing = standby::missing_in_kernel(&mut self.writer, &sample)
            .map_err(|e| format!("checking the kernel table: {e}"))?;
        step(
            "verify",
            t,
            Ok(json!({ "sampled": sample.len(), "missing": missing, "stale": stale.len() })),
        )?;
        let t = Instant::now();
        let r = if missing > 0 {
            tracing::warn!(
                missing,
                sampled = sample.len(),
                "hot standby: the kernel table lacks sampled entries; committing everything"
            );
            self.commit().map(|r| json!(r))
        } else {
            commit::commit(&mut self.writer, stale.into_iter(), &opts)
                .map(|r| json!(r))
                .map_err(|e| format!("commit failed: {e}"))
        };
        step("commit_difference", t, r)?;
        let t = Instant::now();
        for (r, e) in &entries {
            self.cache.upsert(r, e.as_ref());
        }
        step("adopt_external", t, Ok(json!({ "entries": entries.len() })))?;
        // Emptying a large map takes a while and holds up nothing: after
        // the answer (see `after_input`).
        self.flush_external_later = true;
        step(
            "flush_external",
            Instant::now(),
            Ok(json!({ "deferred": entries.len() })),
        )?;
        let t = Instant::now();
        let repl = self.repl.as_mut().ok_or(NO_SYNC)?;
        repl.start_bulk();
        step("bulk_send", t, Ok(json!({ "entries": self.cache.len() })))?;
        Ok(())
    }

    /// Every step of a state change, in order; each step's result and
    /// duration go into the answer (and the log). A step that fails stops
    /// the sequence: the answer says which.
    fn notify(&mut self, state: NotifyState) -> Result<serde_json::Value, String> {
        let t0 = Instant::now();
        let mut steps = Vec::new();
        let outcome = self.notify_steps(state, &mut steps);
        let total = t0.elapsed();
        latency::record(&mut self.notify_time, total);
        for s in &steps {
            if let (Some(name), Some(ms)) = (s["step"].as_str(), s["ms"].as_f64()) {
                let h = self
                    .notify_step_time
                    .entry(name.to_owned())
                    .or_insert_with(latency::histogram);
                latency::record(h, std::time::Duration::from_secs_f64(ms / 1e3));
            }
        }
        let total_ms = total.as_secs_f64() * 1e3;
        let unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let report = json!({
            "state": state,
            "at_unix": unix,
            "total_ms": total_ms,
            "steps": steps,
            "error": outcome.as_ref().err(),
        });
        match &outcome {
            Ok(()) => tracing::info!(?state, total_ms, steps = %report["steps"], "notify done"),
            Err(e) => tracing::error!(?state, total_ms, steps = %report["steps"], "notify: {e}"),
        }
        self.last_notify = Some(report.clone());
        outcome.map(|()| report)
    }

    fn notify_steps(
        &mut self,
        state: NotifyState,
        steps: &mut Vec<serde_json::Value>,
    ) -> Result<(), String> {
        let mut step = |name: &str, t: Instant, r: Result<serde_json::Value, String>| {
            let ms = t.elapsed().as_secs_f64() * 1e3;
            let v = r.map_err(|e| format!("notify {state:?}: step {name} failed: {e}"))?;
            steps.push(json!({ "step": name, "ms": ms, "result": v }));
            Ok::<(), String>(())
        };
        match state {
            NotifyState::Master if self.repl.as_ref().is_some_and(Replication::hot_standby) => {
                self.notify_master_hot(&mut step)?;
            }
            NotifyState::Master => {
                let t = Instant::now();
                let r = self.commit().map(|r| json!(r));
                step("commit", t, r)?;
                // The commit ends with a resync of the internal cache
                // from the kernel (see `commit`): its own figures.
                let resync = json!({
                    "entries": self.cache.len(),
                    "ms": self.source.stats.last_resync_ms,
                });
                step("resync_kernel", Instant::now(), Ok(resync))?;
                let t = Instant::now();
                let r = self.flush(CacheName::External);
                step("flush_external", t, r)?;
                let t = Instant::now();
                let repl = self.repl.as_mut().ok_or(NO_SYNC)?;
                repl.start_bulk();
                step("bulk_send", t, Ok(json!({ "entries": self.cache.len() })))?;
            }
            NotifyState::Backup => {
                let t = Instant::now();
                let repl = self.repl.as_mut().ok_or(NO_SYNC)?;
                let id = repl.request_resync(Instant::now());
                step("resync_request", t, Ok(json!({ "request": id })))?;
                let t = Instant::now();
                let r = self.purge().map(|r| json!(r));
                step("purge", t, r)?;
            }
            NotifyState::Fault => {
                let t = Instant::now();
                let r = self.purge().map(|r| json!(r));
                step("purge", t, r)?;
            }
        }
        Ok(())
    }

    /// One HTTP exchange on the metrics address: the request head (at most
    /// 8 KiB, within a second), then the exposition, then close.
    async fn serve_metrics(&self, mut stream: tokio::net::TcpStream) -> io::Result<()> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut head = Vec::with_capacity(1024);
        let mut buf = [0u8; 1024];
        let read = async {
            while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 8192 {
                let n = stream.read(&mut buf).await?;
                if n == 0 {
                    break;
                }
                head.extend_from_slice(&buf[..n]);
            }
            Ok::<_, io::Error>(())
        };
        tokio::time::timeout(std::time::Duration::from_secs(1), read)
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "request head too slow"))??;
        let answer = crate::metrics::http_response(&String::from_utf8_lossy(&head), || {
            crate::metrics::render(&self.stats(), &self.latency())
        });
        stream.write_all(answer.as_bytes()).await?;
        stream.shutdown().await
    }

    /// Hands queued changes to the sender and sends what is due; without
    /// replication, drops them so that tombstones don't pile up.
    fn after_input(&mut self) {
        if std::mem::take(&mut self.flush_external_later)
            && let Err(e) = self.flush(CacheName::External)
        {
            tracing::error!("flushing the external cache: {e}");
        }
        match &mut self.repl {
            Some(r) => {
                // Whatever the input queued (events, a resync) entered the
                // queue just now.
                let now = Instant::now();
                r.note_read(&self.cache, now);
                r.flush(now, &mut self.cache);
                if r.hot_standby() {
                    let opts = commit_options(&self.config);
                    if let Err(e) = r.flush_mirror(&mut self.writer, &opts, FLUSH_MAX) {
                        tracing::error!("hot standby: writing into the kernel table: {e}");
                    }
                }
            }
            None => {
                self.cache.drain_changes(usize::MAX, |_| {});
            }
        }
    }

    /// Runs until `shutdown` completes or a fatal error.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) -> Result<(), AgentError> {
        let (listener, _guard) = bind_control(&self.config.general.control_socket)?;
        // SAFETY: the event source owns the socket's fd for as long as this
        // AsyncFd (a borrow of it, dropped before `self`) is registered.
        let ev_fd = FdRef(self.source.socket().as_raw_fd());
        let events =
            unsafe { tokio::io::unix::AsyncFd::register_with_interest(ev_fd, Interest::READABLE) }
                .map_err(|e| AgentError::Io(e.into()))?;
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
        let mut links = Vec::new();
        if let Some(r) = &self.repl {
            // The XDP ring buffer wakes the loop like a socket does.
            let fds = r.transport().sockets().map(|s| s.as_raw_fd());
            for s in fds.chain(r.xdp_fd()) {
                // SAFETY: the transport owns these sockets for as long as the
                // AsyncFds (dropped before `self`) are registered.
                let fd = unsafe {
                    tokio::io::unix::AsyncFd::register_with_interest(FdRef(s), Interest::READABLE)
                }
                .map_err(|e| AgentError::Io(e.into()))?;
                links.push(fd);
            }
        }
        let metrics = match self.config.general.metrics_listen {
            Some(addr) => {
                let l = tokio::net::TcpListener::bind(addr)
                    .await
                    .map_err(|source| AgentError::Metrics { addr, source })?;
                tracing::info!(%addr, "serving Prometheus metrics at GET /metrics");
                Some(l)
            }
            None => None,
        };
        let mut link_check = tokio::time::interval(LINK_CHECK);
        tracing::info!(
            entries = self.cache.len(),
            socket = %self.config.general.control_socket.display(),
            "agent running"
        );
        tokio::pin!(shutdown);
        loop {
            let deadline = self.repl.as_ref().and_then(Replication::poll_timeout);
            let timer = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(tokio::time::Instant::from_std(d)).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = &mut shutdown => break,
                _ = any_readable(&links) => {
                    if let Some(r) = &mut self.repl {
                        r.receive(Instant::now());
                    }
                    self.after_input();
                }
                _ = timer => {
                    if let Some(r) = &mut self.repl {
                        r.handle_timeout(Instant::now());
                    }
                    self.after_input();
                }
                _ = link_check.tick(), if self.repl.is_some() => {
                    if let Some(r) = &mut self.repl {
                        r.poll_links();
                        r.tick(Instant::now());
                    }
                }
                guard = events.readable() => {
                    let mut guard = guard?;
                    let n = self.source.drain(&mut self.cache)?;
                    self.after_input();
                    guard.clear_ready();
                    // Under load, let events accumulate briefly so that one
                    // wake-up drains many (waking per event costs about 2.5x
                    // the CPU); at low rates every event is handled at once.
                    if n >= BUSY_EVENTS {
                        std::thread::sleep(BUSY_PAUSE);
                    }
                }
                conn = listener.accept() => {
                    if let Ok((stream, _)) = conn
                        && let Err(e) = self.serve(stream).await
                    {
                        tracing::debug!("control connection: {e}");
                    }
                    self.after_input();
                }
                conn = async { metrics.as_ref().expect("guarded").accept().await }, if metrics.is_some() => {
                    if let Ok((stream, _)) = conn
                        && let Err(e) = self.serve_metrics(stream).await
                    {
                        tracing::debug!("metrics connection: {e}");
                    }
                }
                _ = hup.recv() => {
                    if let Err(e) = self.reload() {
                        tracing::error!("reload failed: {e}");
                    }
                    self.after_input();
                }
            }
        }
        tracing::info!("agent stopped");
        Ok(())
    }
}

/// The commit's settings from the config.
fn commit_options(c: &Config) -> CommitOptions {
    CommitOptions {
        tcp_be_liberal: c.failover.tcp_be_liberal,
        min_timeout: c.failover.commit_min_timeout,
    }
}

/// Hot standby's `notify master`: entries with at most this many seconds
/// left are committed again (they may have expired here).
const STALE_TIMEOUT: u32 = 2;
/// ...and this many others are looked up in the kernel table.
const VERIFY_SAMPLE: usize = 256;

const NO_SYNC: &str = "replication is off: configure [[sync.links]] to sync with a peer";

/// A dump: the header line with the count, then one JSON line per entry.
async fn write_dump<'a>(
    w: &mut (impl AsyncWriteExt + Unpin),
    count: usize,
    entries: impl Iterator<Item = (&'a CtRecord, Option<&'a CtExt>)>,
) -> io::Result<()> {
    let mut head = Reply::ok(serde_json::Value::Null);
    head.data = None;
    head.count = Some(count);
    write_line(w, &head).await?;
    let mut buf = Vec::with_capacity(1 << 16);
    for (r, e) in entries.take(count) {
        serde_json::to_writer(&mut buf, &EntryView::new(r, e)).expect("entries serialise");
        buf.push(b'\n');
        if buf.len() > 60_000 {
            w.write_all(&buf).await?;
            buf.clear();
        }
    }
    w.write_all(&buf).await
}

async fn write_line(w: &mut (impl AsyncWriteExt + Unpin), reply: &Reply) -> io::Result<()> {
    let mut line = serde_json::to_vec(reply).expect("replies serialise");
    line.push(b'\n');
    w.write_all(&line).await
}

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
    time::Duration,
};

use serde_json::json;
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Interest},
    net::{UnixListener, UnixStream},
};

use crate::{
    cache::Cache,
    config::Config,
    control::{Reply, Request},
    display::EntryView,
    events::{EventSource, EventsError},
    filter::Rules,
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
    #[error("event loop: {0}")]
    Io(#[from] io::Error),
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
}

impl Agent {
    /// Opens the event source and fills the cache from the kernel table.
    pub fn start(config: Config, config_path: Option<PathBuf>) -> Result<Agent, AgentError> {
        // SAFETY: plain syscall.
        if unsafe { libc::geteuid() } != 0 {
            return Err(AgentError::NotRoot);
        }
        let mut source = EventSource::open(&config)?;
        let mut cache = Cache::new();
        source.resync(&mut cache)?;
        Ok(Agent {
            config,
            config_path,
            source,
            cache,
        })
    }

    pub fn cache(&self) -> &Cache {
        &self.cache
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
        json!({
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
                .set_rules(Rules::from_config(&new.filter), &mut self.cache)
                .map_err(|e| format!("applying the new filter failed: {e}"))?;
            changed.push("filter");
        }
        let needs_restart: Vec<&str> = [
            (
                "general.control_socket",
                new.general.control_socket != self.config.general.control_socket,
            ),
            ("events", new.events != self.config.events),
        ]
        .into_iter()
        .filter_map(|(k, c)| c.then_some(k))
        .collect();
        if !needs_restart.is_empty() {
            tracing::warn!(keys = ?needs_restart, "these settings change only at restart");
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
                let mut head = Reply::ok(serde_json::Value::Null);
                head.data = None;
                head.count = Some(self.cache.len());
                write_line(&mut w, &head).await?;
                let mut buf = Vec::with_capacity(1 << 16);
                for (rec, ext) in self.cache.iter() {
                    serde_json::to_writer(&mut buf, &EntryView::new(rec, ext))
                        .expect("entries serialise");
                    buf.push(b'\n');
                    if buf.len() > 60_000 {
                        w.write_all(&buf).await?;
                        buf.clear();
                    }
                }
                w.write_all(&buf).await
            }
        }
    }

    /// Changes have no consumer until replication exists: drop them so that
    /// tombstones don't pile up.
    fn discard_changes(&mut self) {
        self.cache.drain_changes(usize::MAX, |_| {});
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
        tracing::info!(
            entries = self.cache.len(),
            socket = %self.config.general.control_socket.display(),
            "agent running"
        );
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                guard = events.readable() => {
                    let mut guard = guard?;
                    let n = self.source.drain(&mut self.cache)?;
                    self.discard_changes();
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
                    self.discard_changes();
                }
                _ = hup.recv() => {
                    if let Err(e) = self.reload() {
                        tracing::error!("reload failed: {e}");
                    }
                    self.discard_changes();
                }
            }
        }
        tracing::info!("agent stopped");
        Ok(())
    }
}

async fn write_line(w: &mut (impl AsyncWriteExt + Unpin), reply: &Reply) -> io::Result<()> {
    let mut line = serde_json::to_vec(reply).expect("replies serialise");
    line.push(b'\n');
    w.write_all(&line).await
}

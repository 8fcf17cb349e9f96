//! The control socket: one request per connection, as a JSON line; the
//! answer is one JSON line, and for dumps one more line per entry after it.
//! The daemon and the CLI share these types.

use std::{
    io::{self, BufRead, BufReader, Write},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{Deserialize, Serialize};

use crate::display::EntryView;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Request {
    /// Counters and sizes.
    Stats,
    /// Latency histograms (summaries with percentiles and buckets).
    Latency,
    /// Every entry of the internal cache.
    DumpInternal,
    /// Re-read the config file and apply what can change at run time (the filter).
    Reload,
    /// Rebuild the internal cache from a kernel table dump.
    ResyncKernel,
    /// Every entry of the external cache (the peer's state).
    DumpExternal,
    /// Ask the peer to resend its whole internal cache.
    ResyncRequest,
    /// Send our whole internal cache to the peer.
    ResyncBulk,
    /// Write the external cache into the kernel table.
    Commit,
    /// Empty a cache (without telling the peer).
    Flush { cache: CacheName },
    /// Shorten the timers of the entries in the kernel table.
    Purge,
    /// A state change (from keepalived): every step it needs, in order.
    Notify { state: NotifyState },
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum CacheName {
    Internal,
    External,
}

/// The VRRP states keepalived notifies.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum NotifyState {
    /// This node carries the traffic now: commit the peer's state, then
    /// replicate ours.
    Master,
    /// The peer carries the traffic: ask it for its state, let ours age out.
    Backup,
    /// This node is broken: let its entries age out.
    Fault,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Reply {
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub error: Option<String>,
    /// For `Stats`: the stats object. For `Reload`/`ResyncKernel`: what happened.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub data: Option<serde_json::Value>,
    /// For dumps: how many entry lines follow.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub count: Option<usize>,
}

impl Reply {
    pub fn ok(data: serde_json::Value) -> Reply {
        Reply {
            ok: true,
            error: None,
            data: Some(data),
            count: None,
        }
    }
    pub fn err(msg: impl Into<String>) -> Reply {
        Reply {
            ok: false,
            error: Some(msg.into()),
            data: None,
            count: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "cannot connect to the control socket {path}: {source} (is `ctsync run` running? \
         --socket or the config's general.control_socket select another path)"
    )]
    Connect { path: PathBuf, source: io::Error },
    #[error("control socket {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("control socket {path}: bad answer: {source}")]
    Decode {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("the agent says: {0}")]
    Agent(String),
}

/// A CLI-side connection to the agent.
pub struct Client {
    path: PathBuf,
    reader: BufReader<UnixStream>,
}

impl Client {
    /// Sends `req` and reads the answer's first line.
    pub fn request(path: &Path, req: &Request) -> Result<(Client, Reply), ClientError> {
        let io_err = |source| ClientError::Io {
            path: path.to_owned(),
            source,
        };
        let mut s = UnixStream::connect(path).map_err(|source| ClientError::Connect {
            path: path.to_owned(),
            source,
        })?;
        s.set_read_timeout(Some(Duration::from_secs(120)))
            .map_err(io_err)?;
        let mut line = serde_json::to_vec(req).expect("requests serialise");
        line.push(b'\n');
        s.write_all(&line).map_err(io_err)?;
        let mut c = Client {
            path: path.to_owned(),
            reader: BufReader::new(s),
        };
        let reply: Reply = c.next_line()?.ok_or_else(|| {
            io_err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the agent closed the connection without answering",
            ))
        })?;
        if !reply.ok {
            return Err(ClientError::Agent(reply.error.unwrap_or_default()));
        }
        Ok((c, reply))
    }

    /// Reads one more JSON line (dump entries), `None` at the end.
    pub fn next_line<T: serde::de::DeserializeOwned>(&mut self) -> Result<Option<T>, ClientError> {
        let mut line = String::new();
        let n = self
            .reader
            .read_line(&mut line)
            .map_err(|source| ClientError::Io {
                path: self.path.clone(),
                source,
            })?;
        if n == 0 {
            return Ok(None);
        }
        serde_json::from_str(&line)
            .map(Some)
            .map_err(|source| ClientError::Decode {
                path: self.path.clone(),
                source,
            })
    }

    /// Reads `count` dump entries.
    pub fn entries(mut self, count: usize) -> impl Iterator<Item = Result<EntryView, ClientError>> {
        (0..count).map_while(move |_| self.next_line::<EntryView>().transpose())
    }
}

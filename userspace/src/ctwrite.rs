//! Batched ctnetlink writes: many messages per `sendmsg`, an ACK requested
//! only on the last one of each batch as a barrier, and every failure
//! collected by position. ctnetlink refuses nfnetlink's batch begin/end
//! (EOPNOTSUPP), but it processes every message of a datagram in order and
//! answers each failure with its own `NLMSG_ERROR` carrying the request's
//! sequence number, so packing is as good as a batch.
//!
//! Used by the commit at takeover, the purge of stale entries and the load
//! generators. I/O only: what to write is the caller's business.

use std::io;

use ctsync_common::{CtExt, CtRecord};

use crate::{
    ctnetlink::{self, Decoded, Request, encode},
    nlsock::NlSocket,
};

/// Bytes of messages per `sendmsg`: a few hundred entries. The kernel
/// refuses a datagram larger than the socket's send buffer, which `open`
/// raises well above this.
const BATCH_BYTES: usize = 128 << 10;
/// Room for the kernel's answers to one batch (error messages are capped to
/// their header with `NETLINK_CAP_ACK`, but each is its own skb).
const RECV_BUFFER: usize = 16 << 20;
const SEND_BUFFER: usize = 4 << 20;

#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("cannot open a ctnetlink socket for writing: {0}")]
    Open(#[source] io::Error),
    #[error("sending a batch of {messages} ctnetlink messages: {source}")]
    Send {
        messages: usize,
        #[source]
        source: io::Error,
    },
    #[error(
        "reading the kernel's answers to a batch: {source} (answers lost; the entries of this batch may or may not have been written)"
    )]
    Recv {
        #[source]
        source: io::Error,
    },
    #[error("malformed answer from the kernel: {0}")]
    Malformed(#[from] ctnetlink::DecodeError),
}

/// One write socket. Its port id identifies the events its writes cause
/// (for the event filter's self-origin rule).
pub struct Writer {
    sock: NlSocket,
    buf: Vec<u8>,
    rx: Vec<u8>,
    seq: u32,
    /// Start offsets of the messages in `buf`.
    starts: Vec<usize>,
    /// The scratch record the decoder wants for answers (never filled).
    rec: CtRecord,
    ext: CtExt,
}

/// Sets an int socket option, ignoring failure (the defaults still work,
/// only with smaller batches' worth of headroom).
fn set_opt(sock: &NlSocket, level: libc::c_int, name: libc::c_int, val: libc::c_int) -> bool {
    use std::os::fd::AsRawFd;
    // SAFETY: val outlives the call; the fd is valid.
    unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            level,
            name,
            (&raw const val).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        ) == 0
    }
}

impl Writer {
    pub fn open() -> Result<Writer, WriteError> {
        let sock = NlSocket::open(0, false).map_err(WriteError::Open)?;
        sock.set_recv_buffer(RECV_BUFFER)
            .map_err(WriteError::Open)?;
        if !set_opt(
            &sock,
            libc::SOL_SOCKET,
            libc::SO_SNDBUFFORCE,
            SEND_BUFFER as _,
        ) {
            set_opt(&sock, libc::SOL_SOCKET, libc::SO_SNDBUF, SEND_BUFFER as _);
        }
        // Error answers carry only the failed message's header, not all of it.
        set_opt(&sock, libc::SOL_NETLINK, libc::NETLINK_CAP_ACK, 1);
        Ok(Writer {
            sock,
            buf: Vec::with_capacity(BATCH_BYTES + 4096),
            rx: vec![0; 1 << 16],
            seq: 0,
            starts: Vec::new(),
            rec: CtRecord::default(),
            ext: CtExt::default(),
        })
    }

    pub fn portid(&self) -> u32 {
        self.sock.portid()
    }

    /// Writes one message per item (`encode` appends it to the buffer with
    /// the `Request` given), in as few `sendmsg` calls as fit, and calls
    /// `failed(index, errno)` for every item the kernel refused.
    pub fn write<T>(
        &mut self,
        items: &[T],
        mut encode: impl FnMut(&mut Vec<u8>, Request, &T) -> usize,
        mut failed: impl FnMut(usize, i32),
    ) -> Result<(), WriteError> {
        let mut first = 0;
        while first < items.len() {
            self.buf.clear();
            self.starts.clear();
            let base = self.seq;
            let mut end = first;
            while end < items.len() && self.buf.len() < BATCH_BYTES {
                let req = Request::new(base.wrapping_add((end - first) as u32));
                self.starts.push(encode(&mut self.buf, req, &items[end]));
                end += 1;
            }
            let last = *self.starts.last().expect("at least one message");
            encode::set_ack(&mut self.buf, last);
            let n = end - first;
            self.seq = base.wrapping_add(n as u32);
            self.sock
                .send(&self.buf)
                .map_err(|source| WriteError::Send {
                    messages: n,
                    source,
                })?;
            self.wait_barrier(base, n, |i, errno| failed(first + i, errno))?;
            first = end;
        }
        Ok(())
    }

    /// Reads answers until the last message's (ACK or error); errors of
    /// earlier messages arrive before it.
    fn wait_barrier(
        &mut self,
        base: u32,
        n: usize,
        mut failed: impl FnMut(usize, i32),
    ) -> Result<(), WriteError> {
        let last = base.wrapping_add(n as u32 - 1);
        loop {
            let len = self
                .sock
                .recv(&mut self.rx)
                .map_err(|source| WriteError::Recv { source })?;
            for msg in ctnetlink::messages(&self.rx[..len]) {
                let msg = msg?;
                let h = ctnetlink::header(msg)?;
                let Decoded::Error { errno } =
                    ctnetlink::decode(msg, &mut self.rec, &mut self.ext)?
                else {
                    continue;
                };
                let i = h.seq.wrapping_sub(base) as usize;
                if errno != 0 && i < n {
                    failed(i, errno);
                }
                if h.seq == last {
                    return Ok(());
                }
            }
        }
    }
}

/// A short name for an errno, for reports ("EEXIST: 3").
pub fn errno_name(errno: i32) -> String {
    let name = match errno {
        libc::EEXIST => "EEXIST",
        libc::ENOENT => "ENOENT",
        libc::EINVAL => "EINVAL",
        libc::EBUSY => "EBUSY",
        libc::ENOMEM => "ENOMEM",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        libc::EPERM => "EPERM",
        libc::ENOSPC => "ENOSPC",
        libc::EAFNOSUPPORT => "EAFNOSUPPORT",
        libc::ENOBUFS => "ENOBUFS",
        _ => return format!("errno {errno}"),
    };
    name.to_owned()
}

//! A thin NETLINK_NETFILTER socket: open, subscribe, send, and batched receive
//! (`recvmmsg`). No protocol logic here: that is `ctnetlink`'s.

use std::{
    io,
    os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd},
};

/// `NF_NETLINK_CONNTRACK_*` multicast group bits, for `NlSocket::open`.
pub mod groups {
    pub const CT_NEW: u32 = 1 << 0;
    pub const CT_UPDATE: u32 = 1 << 1;
    pub const CT_DESTROY: u32 = 1 << 2;
    pub const CT_ALL: u32 = CT_NEW | CT_UPDATE | CT_DESTROY;
}

/// `NETLINK_NETFILTER`.
const NETLINK_NETFILTER: libc::c_int = 12;

pub struct NlSocket {
    fd: OwnedFd,
    portid: u32,
}

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

impl NlSocket {
    /// Opens a socket subscribed to the multicast `groups` (0 for none),
    /// non-blocking when asked.
    pub fn open(groups: u32, nonblocking: bool) -> io::Result<NlSocket> {
        let mut ty = libc::SOCK_RAW | libc::SOCK_CLOEXEC;
        if nonblocking {
            ty |= libc::SOCK_NONBLOCK;
        }
        // SAFETY: plain syscall; the fd is owned right away.
        let fd = unsafe {
            OwnedFd::from_raw_fd(cvt(libc::socket(libc::AF_NETLINK, ty, NETLINK_NETFILTER))?)
        };
        // SAFETY: zeroed sockaddr_nl is valid.
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as u16;
        addr.nl_groups = groups;
        let len = size_of::<libc::sockaddr_nl>() as libc::socklen_t;
        // SAFETY: addr is a valid sockaddr_nl of `len` bytes.
        cvt(unsafe { libc::bind(fd.as_raw_fd(), (&raw const addr).cast(), len) })?;
        let mut got: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        let mut glen = len;
        // SAFETY: got has room for a sockaddr_nl.
        cvt(unsafe { libc::getsockname(fd.as_raw_fd(), (&raw mut got).cast(), &mut glen) })?;
        Ok(NlSocket {
            fd,
            portid: got.nl_pid,
        })
    }

    /// The kernel-assigned port id: events this socket's requests cause carry it.
    pub fn portid(&self) -> u32 {
        self.portid
    }

    fn setsockopt(
        &self,
        level: libc::c_int,
        name: libc::c_int,
        val: libc::c_int,
    ) -> io::Result<()> {
        // SAFETY: val is a c_int that outlives the call.
        cvt(unsafe {
            libc::setsockopt(
                self.fd.as_raw_fd(),
                level,
                name,
                (&raw const val).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            )
        })
        .map(drop)
    }

    fn getsockopt(&self, level: libc::c_int, name: libc::c_int) -> io::Result<libc::c_int> {
        let mut val: libc::c_int = 0;
        let mut len = size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: val has room for a c_int.
        cvt(unsafe {
            libc::getsockopt(
                self.fd.as_raw_fd(),
                level,
                name,
                (&raw mut val).cast(),
                &mut len,
            )
        })?;
        Ok(val)
    }

    /// Joins (`join`) or leaves the multicast `groups` (bits as in [`groups`]).
    /// While no socket listens, the kernel does not even build the events.
    pub fn set_membership(&self, groups: u32, join: bool) -> io::Result<()> {
        let opt = if join {
            libc::NETLINK_ADD_MEMBERSHIP
        } else {
            libc::NETLINK_DROP_MEMBERSHIP
        };
        for bit in 0..32 {
            if groups & (1 << bit) != 0 {
                self.setsockopt(libc::SOL_NETLINK, opt, bit + 1)?;
            }
        }
        Ok(())
    }

    /// Sets the receive buffer, beyond `rmem_max` when we may (SO_RCVBUFFORCE
    /// needs CAP_NET_ADMIN). Returns the size the kernel reports.
    pub fn set_recv_buffer(&self, bytes: usize) -> io::Result<usize> {
        let want = bytes.min(i32::MAX as usize / 2) as libc::c_int;
        if self
            .setsockopt(libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, want)
            .is_err()
        {
            self.setsockopt(libc::SOL_SOCKET, libc::SO_RCVBUF, want)?;
        }
        self.recv_buffer()
    }

    /// The receive buffer size (the kernel doubles what was asked for bookkeeping).
    pub fn recv_buffer(&self) -> io::Result<usize> {
        Ok(self.getsockopt(libc::SOL_SOCKET, libc::SO_RCVBUF)? as usize / 2)
    }

    /// Sends one buffer (one or many netlink messages) to the kernel.
    pub fn send(&self, buf: &[u8]) -> io::Result<()> {
        // SAFETY: zeroed sockaddr_nl addresses the kernel (pid 0).
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as u16;
        loop {
            // SAFETY: buf and addr are valid for the call.
            let r = unsafe {
                libc::sendto(
                    self.fd.as_raw_fd(),
                    buf.as_ptr().cast(),
                    buf.len(),
                    0,
                    (&raw const addr).cast(),
                    size_of::<libc::sockaddr_nl>() as libc::socklen_t,
                )
            };
            if r >= 0 {
                return Ok(());
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }

    /// Receives one datagram (a multicast message or a dump/ACK batch).
    /// Errors with `InvalidData` if the datagram did not fit in `buf`.
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            // SAFETY: buf is valid for writes of its length.
            let r = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_TRUNC,
                )
            };
            if r >= 0 {
                let n = r as usize;
                if n > buf.len() {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("netlink datagram of {n} bytes truncated to {}", buf.len()),
                    ));
                }
                return Ok(n);
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }
}

impl AsFd for NlSocket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for NlSocket {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// Buffers for receiving many datagrams with one `recvmmsg` call.
pub struct RecvBatch {
    bufs: Vec<u8>,
    size: usize,
    lens: Vec<usize>,
    iovecs: Vec<libc::iovec>,
    msgs: Vec<libc::mmsghdr>,
}

// SAFETY: the raw pointers in iovecs/msgs point into `bufs`, owned by the batch.
unsafe impl Send for RecvBatch {}

impl RecvBatch {
    /// `count` datagrams of up to `size` bytes each.
    pub fn new(count: usize, size: usize) -> RecvBatch {
        let mut b = RecvBatch {
            bufs: vec![0; count * size],
            size,
            lens: vec![0; count],
            iovecs: Vec::with_capacity(count),
            msgs: Vec::with_capacity(count),
        };
        for i in 0..count {
            b.iovecs.push(libc::iovec {
                // SAFETY: in bounds of bufs.
                iov_base: unsafe { b.bufs.as_mut_ptr().add(i * size) }.cast(),
                iov_len: size,
            });
        }
        for i in 0..count {
            // SAFETY: zeroed mmsghdr is valid; we point it at our iovec.
            let mut m: libc::mmsghdr = unsafe { std::mem::zeroed() };
            m.msg_hdr.msg_iov = &raw mut b.iovecs[i];
            m.msg_hdr.msg_iovlen = 1;
            b.msgs.push(m);
        }
        b
    }

    /// Receives up to the batch's count of datagrams without blocking.
    /// `Ok(0)` never happens: no data is `WouldBlock`.
    pub fn recv(&mut self, sock: &NlSocket) -> io::Result<usize> {
        for m in &mut self.msgs {
            m.msg_len = 0;
            m.msg_hdr.msg_flags = 0;
        }
        // SAFETY: msgs/iovecs point into bufs, which lives as long as self.
        let r = unsafe {
            libc::recvmmsg(
                sock.as_raw_fd(),
                self.msgs.as_mut_ptr(),
                self.msgs.len() as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        let n = r as usize;
        for i in 0..n {
            self.lens[i] = self.msgs[i].msg_len as usize;
        }
        Ok(n)
    }

    /// Datagram `i` of the last `recv`; `truncated` is true if it did not fit.
    pub fn get(&self, i: usize) -> (&[u8], bool) {
        let truncated = self.msgs[i].msg_hdr.msg_flags & libc::MSG_TRUNC != 0;
        let len = self.lens[i].min(self.size);
        (&self.bufs[i * self.size..i * self.size + len], truncated)
    }
}

/// Whether an error is the kernel telling us it dropped multicast messages.
pub fn is_overrun(e: &io::Error) -> bool {
    e.raw_os_error() == Some(libc::ENOBUFS)
}

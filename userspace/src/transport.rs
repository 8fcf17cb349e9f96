//! UDP over the dedicated sync links: one socket per link, bound to the
//! link's interface and local address. Datagrams go out on the active link;
//! when its interface loses carrier the next link that is up takes over, and
//! the first configured link takes back over when it returns. Every link
//! receives. Datagrams from anyone but the configured peers are dropped and
//! counted here, before any parsing.
//!
//! Thin I/O only: what to send and what a datagram means is `ftfw`'s.

use std::{
    ffi::CString,
    io,
    net::{IpAddr, SocketAddr, UdpSocket},
    os::fd::AsRawFd,
};

use serde::Serialize;

/// One dedicated link as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkConfig {
    /// Interface name (the socket is bound to it).
    pub interface: String,
    /// Our address on the link.
    pub local: IpAddr,
    /// The peer's address, or a multicast group that every node joins.
    pub peer: IpAddr,
    pub port: u16,
}

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error(
        "sync link {interface}: cannot bind UDP {local}:{port}: {source} (is the address configured on {interface}? is another agent using the port?)"
    )]
    Bind {
        interface: String,
        local: IpAddr,
        port: u16,
        source: io::Error,
    },
    #[error("sync link {interface}: {what}: {source}")]
    Setup {
        interface: String,
        what: &'static str,
        source: io::Error,
    },
    #[error("no sync link is configured")]
    NoLinks,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct LinkStats {
    pub interface: String,
    pub up: bool,
    pub active: bool,
    pub tx_datagrams: u64,
    pub tx_bytes: u64,
    pub tx_errors: u64,
    pub rx_datagrams: u64,
    pub rx_bytes: u64,
    /// Datagrams from an address that is not the configured peer.
    pub rx_strangers: u64,
}

struct Link {
    cfg: LinkConfig,
    sock: UdpSocket,
    dest: SocketAddr,
    up: bool,
    stats: LinkStats,
}

pub struct Transport {
    links: Vec<Link>,
    active: usize,
    /// Times the active link changed.
    pub failovers: u64,
}

/// What `poll_links` saw change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActiveChanged {
    pub from: String,
    pub to: String,
}

fn setsockopt<T>(
    sock: &UdpSocket,
    level: libc::c_int,
    name: libc::c_int,
    val: &T,
) -> io::Result<()> {
    // SAFETY: `val` is a valid T for the duration of the call.
    let r = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            level,
            name,
            (val as *const T).cast(),
            size_of::<T>() as libc::socklen_t,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// `IFF_UP && IFF_RUNNING` for the interface, in the caller's namespace.
fn link_is_up(sock: &UdpSocket, name: &str) -> bool {
    // SAFETY: zeroed ifreq is valid; the name fits (checked at open).
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in ifr.ifr_name.iter_mut().zip(name.bytes()) {
        *d = s as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS fills ifr_ifru.ifru_flags.
    let r = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut ifr) };
    if r < 0 {
        return false;
    }
    // SAFETY: the union member SIOCGIFFLAGS wrote.
    let flags = i32::from(unsafe { ifr.ifr_ifru.ifru_flags });
    flags & libc::IFF_UP != 0 && flags & libc::IFF_RUNNING != 0
}

impl Transport {
    pub fn open(links: &[LinkConfig]) -> Result<Transport, TransportError> {
        if links.is_empty() {
            return Err(TransportError::NoLinks);
        }
        let mut out = Vec::with_capacity(links.len());
        for cfg in links {
            out.push(Link::open(cfg)?);
        }
        let mut t = Transport {
            links: out,
            active: 0,
            failovers: 0,
        };
        t.poll_links();
        Ok(t)
    }

    /// Sends one datagram on the active link; if that fails because the link
    /// went away, marks it down and tries the others.
    pub fn send(&mut self, buf: &[u8]) -> io::Result<()> {
        let n = self.links.len();
        let mut last_err = None;
        for i in 0..n {
            let idx = (self.active + i) % n;
            let link = &mut self.links[idx];
            if i > 0 && !link.up {
                continue;
            }
            match link.sock.send_to(buf, link.dest) {
                Ok(_) => {
                    link.stats.tx_datagrams += 1;
                    link.stats.tx_bytes += buf.len() as u64;
                    if idx != self.active {
                        self.set_active(idx);
                    }
                    return Ok(());
                }
                // A full socket buffer is back-pressure, not a dead link.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Err(e),
                Err(e) => {
                    link.stats.tx_errors += 1;
                    link.up = false;
                    last_err = Some(e);
                }
            }
        }
        Err(last_err.unwrap_or_else(|| {
            io::Error::new(io::ErrorKind::NotConnected, "every sync link is down")
        }))
    }

    /// Receives one datagram from any link: `(link index, sender, length)`.
    /// Strangers are counted and skipped. `None` when every socket is empty.
    pub fn recv(&mut self, buf: &mut [u8]) -> Option<(usize, SocketAddr, usize)> {
        for (i, link) in self.links.iter_mut().enumerate() {
            // Any error, WouldBlock included, ends this socket's turn.
            while let Ok((len, from)) = link.sock.recv_from(buf) {
                if from.ip() != link.cfg.peer && !link.cfg.peer.is_multicast() {
                    link.stats.rx_strangers += 1;
                    continue;
                }
                if link.cfg.peer.is_multicast() && from.ip() == link.cfg.local {
                    continue; // our own multicast
                }
                link.stats.rx_datagrams += 1;
                link.stats.rx_bytes += len as u64;
                return Some((i, from, len));
            }
        }
        None
    }

    /// Re-reads the links' carrier state and moves the active link if needed:
    /// to the first link that is up, preferring the configured order.
    pub fn poll_links(&mut self) -> Option<ActiveChanged> {
        for link in &mut self.links {
            link.up = link_is_up(&link.sock, &link.cfg.interface);
        }
        let best = self.links.iter().position(|l| l.up)?;
        if best != self.active {
            let from = self.links[self.active].cfg.interface.clone();
            self.set_active(best);
            return Some(ActiveChanged {
                from,
                to: self.links[best].cfg.interface.clone(),
            });
        }
        None
    }

    fn set_active(&mut self, idx: usize) {
        tracing::warn!(
            from = %self.links[self.active].cfg.interface,
            to = %self.links[idx].cfg.interface,
            "sync link failover"
        );
        self.active = idx;
        self.failovers += 1;
    }

    /// The sockets, for readiness polling.
    pub fn sockets(&self) -> impl Iterator<Item = &UdpSocket> {
        self.links.iter().map(|l| &l.sock)
    }

    pub fn stats(&self) -> Vec<LinkStats> {
        self.links
            .iter()
            .enumerate()
            .map(|(i, l)| LinkStats {
                up: l.up,
                active: i == self.active,
                ..l.stats.clone()
            })
            .collect()
    }
}

impl Link {
    fn open(cfg: &LinkConfig) -> Result<Link, TransportError> {
        let setup = |what, source| TransportError::Setup {
            interface: cfg.interface.clone(),
            what,
            source,
        };
        if cfg.interface.is_empty() || cfg.interface.len() >= libc::IFNAMSIZ {
            return Err(setup(
                "interface name",
                io::Error::from(io::ErrorKind::InvalidInput),
            ));
        }
        let multicast = cfg.peer.is_multicast();
        // A multicast receiver binds the group's port on any address.
        let bind_addr = if multicast {
            match cfg.peer {
                IpAddr::V4(_) => {
                    SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), cfg.port)
                }
                IpAddr::V6(_) => {
                    SocketAddr::new(IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED), cfg.port)
                }
            }
        } else {
            SocketAddr::new(cfg.local, cfg.port)
        };
        let sock =
            bind_to_device(bind_addr, &cfg.interface).map_err(|source| TransportError::Bind {
                interface: cfg.interface.clone(),
                local: cfg.local,
                port: cfg.port,
                source,
            })?;
        if multicast {
            let ifindex = ifindex(&cfg.interface).map_err(|e| setup("interface index", e))?;
            match (cfg.peer, cfg.local) {
                (IpAddr::V4(group), IpAddr::V4(local)) => {
                    sock.join_multicast_v4(&group, &local)
                        .map_err(|e| setup("join multicast group", e))?;
                    let addr = libc::in_addr {
                        s_addr: u32::from_ne_bytes(local.octets()),
                    };
                    setsockopt(&sock, libc::IPPROTO_IP, libc::IP_MULTICAST_IF, &addr)
                        .map_err(|e| setup("multicast interface", e))?;
                    sock.set_multicast_loop_v4(false)
                        .map_err(|e| setup("multicast loop", e))?;
                }
                (IpAddr::V6(group), IpAddr::V6(_)) => {
                    sock.join_multicast_v6(&group, ifindex)
                        .map_err(|e| setup("join multicast group", e))?;
                    setsockopt(
                        &sock,
                        libc::IPPROTO_IPV6,
                        libc::IPV6_MULTICAST_IF,
                        &(ifindex as libc::c_int),
                    )
                    .map_err(|e| setup("multicast interface", e))?;
                    sock.set_multicast_loop_v6(false)
                        .map_err(|e| setup("multicast loop", e))?;
                }
                _ => {
                    return Err(setup(
                        "address families of local and peer differ",
                        io::Error::from(io::ErrorKind::InvalidInput),
                    ));
                }
            }
        }
        sock.set_nonblocking(true)
            .map_err(|e| setup("non-blocking", e))?;
        // Bursts (bulk resyncs) should queue, not drop.
        let size: libc::c_int = 8 << 20;
        let _ = setsockopt(&sock, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, &size);
        let _ = setsockopt(&sock, libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, &size);
        Ok(Link {
            cfg: cfg.clone(),
            dest: SocketAddr::new(cfg.peer, cfg.port),
            sock,
            up: true,
            stats: LinkStats {
                interface: cfg.interface.clone(),
                ..Default::default()
            },
        })
    }
}

fn ifindex(name: &str) -> io::Result<u32> {
    let c = CString::new(name).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: c is a valid C string.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if idx == 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(idx)
    }
}

/// A UDP socket bound to `addr` and to the interface `dev` (SO_BINDTODEVICE),
/// so that its traffic never takes another path.
fn bind_to_device(addr: SocketAddr, dev: &str) -> io::Result<UdpSocket> {
    let domain = if addr.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    // SAFETY: plain syscall; ownership passes to UdpSocket right away.
    let fd = unsafe { libc::socket(domain, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh, owned socket.
    let sock = unsafe { <UdpSocket as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let name = CString::new(dev).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: name is a valid C string of the given length.
    let r = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_BINDTODEVICE,
            name.as_ptr().cast(),
            name.as_bytes().len() as libc::socklen_t,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    let one: libc::c_int = 1;
    setsockopt(&sock, libc::SOL_SOCKET, libc::SO_REUSEADDR, &one)?;
    let (sa, len) = sockaddr(addr);
    // SAFETY: sa is a valid sockaddr of `len` bytes.
    if unsafe { libc::bind(fd, (&raw const sa).cast(), len) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(sock)
}

fn sockaddr(addr: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: zeroed sockaddr_storage is valid, and large enough for either family.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_in fits in sockaddr_storage.
            unsafe { std::ptr::write((&raw mut ss).cast(), sin) };
            (ss, size_of::<libc::sockaddr_in>() as libc::socklen_t)
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: sockaddr_in6 fits in sockaddr_storage.
            unsafe { std::ptr::write((&raw mut ss).cast(), sin6) };
            (ss, size_of::<libc::sockaddr_in6>() as libc::socklen_t)
        }
    }
}

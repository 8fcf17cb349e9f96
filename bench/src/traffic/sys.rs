//! The few system calls std and tokio do not expose: the open-file limit,
//! `IPV6_V6ONLY` before bind, and files written atomically for scripts to poll.

use std::fs;
use std::io;
use std::mem::size_of;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use ctsync_bench::sockaddr::to_sockaddr;

/// Makes sure this process may hold `needed` open files, raising the soft limit
/// (and the hard limit, which needs `CAP_SYS_RESOURCE`) if it is lower.
///
/// Thousands of connections fail halfway with `EMFILE` under the usual soft limit
/// of 1024; failing here, before any traffic, gives a clear error instead.
/// Returns the soft limit in force afterwards.
pub fn ensure_nofile(needed: u64) -> Result<u64> {
    let cur = get_nofile()?;
    if cur.rlim_cur >= needed {
        return Ok(cur.rlim_cur);
    }
    let new = libc::rlimit {
        rlim_cur: needed,
        rlim_max: cur.rlim_max.max(needed),
    };
    // SAFETY: `new` is a valid rlimit that outlives the call.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &new) } != 0 {
        let err = io::Error::last_os_error();
        bail!(
            "need {needed} open files but RLIMIT_NOFILE is {} (hard limit {}) and raising it \
             failed: {err}; run as root or raise the hard limit (ulimit -Hn / limits.conf; \
             above fs.nr_open it cannot be raised at all)",
            cur.rlim_cur,
            fmt_limit(cur.rlim_max)
        );
    }
    Ok(needed)
}

/// Raises the soft open-file limit towards `wanted` as far as permitted, never
/// failing: the server does not know in advance how many clients will connect, so it
/// takes what it can get and reports it.
pub fn raise_nofile_best_effort(wanted: u64) -> u64 {
    if let Ok(n) = ensure_nofile(wanted) {
        return n;
    }
    let Ok(cur) = get_nofile() else { return 0 };
    let target = cur.rlim_max.min(wanted);
    if target > cur.rlim_cur {
        let new = libc::rlimit {
            rlim_cur: target,
            rlim_max: cur.rlim_max,
        };
        // SAFETY: `new` is a valid rlimit that outlives the call.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &new) } == 0 {
            return target;
        }
    }
    cur.rlim_cur
}

fn get_nofile() -> Result<libc::rlimit> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid, writable rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error()).context("getrlimit(RLIMIT_NOFILE)");
    }
    Ok(lim)
}

fn fmt_limit(v: libc::rlim_t) -> String {
    if v == libc::RLIM_INFINITY {
        "unlimited".to_string()
    } else {
        v.to_string()
    }
}

/// Sets `IPV6_V6ONLY` on an IPv6 socket before it is bound.
///
/// Linux's default (`net.ipv6.bindv6only=0`) makes `[::]:P` also take IPv4
/// traffic, so binding `0.0.0.0:P` and `[::]:P` side by side would fail with
/// `EADDRINUSE`; with V6ONLY each address family gets its own socket, as asked.
pub fn set_v6only(fd: RawFd) -> io::Result<()> {
    let one: libc::c_int = 1;
    // SAFETY: `one` is a valid c_int for the duration of the call.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_IPV6,
            libc::IPV6_V6ONLY,
            (&one as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Creates a non-blocking UDP socket bound to `addr` (V6ONLY if IPv6): std has no
/// way to set a socket option between `socket()` and `bind()`.
pub fn bind_udp(addr: SocketAddr) -> io::Result<std::net::UdpSocket> {
    let domain = if addr.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    // SAFETY: plain socket(2) call; the result is checked below.
    let fd = unsafe {
        libc::socket(
            domain,
            libc::SOCK_DGRAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by socket(2) and nothing else owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    if addr.is_ipv6() {
        set_v6only(fd.as_raw_fd())?;
    }
    let (storage, len) = to_sockaddr(addr);
    // SAFETY: `storage` holds a sockaddr of length `len` for the socket's family.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&storage as *const libc::sockaddr_storage).cast(),
            len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(std::net::UdpSocket::from(fd))
}

/// The wildcard address of the same family as `ip`, for binding a client socket.
pub fn unspecified_like(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    }
}

/// Writes `contents` to `path` through a temporary file and a rename, so a script
/// polling for the file never sees it half-written.
pub fn write_atomic(path: &Path, contents: &[u8]) -> Result<()> {
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(format!(".tmp.{}", std::process::id()));
    let tmp: PathBuf = path.with_file_name(tmp_name);
    fs::write(&tmp, contents).with_context(|| format!("writing {}", tmp.display()))?;
    fs::rename(&tmp, path).with_context(|| format!("renaming {} into place", tmp.display()))?;
    Ok(())
}

/// Removes a file left by an earlier run, so that its presence means this run.
pub fn remove_stale(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing stale {}", path.display())),
    }
}

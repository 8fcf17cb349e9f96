//! The XDP receive path's loader: attaches `xdp_receive` to the sync links,
//! keeps its config and peer maps in step with the FT-FW receiver, drains
//! its seen reports and reads its counters. The external cache it fills is
//! [`crate::external::MapExternal`].

use std::{
    net::IpAddr,
    os::fd::{AsFd, AsRawFd, RawFd},
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, MapData, PerCpuArray, RingBuf},
    programs::{Xdp, XdpMode as AyaXdpMode},
};
use ctsync_common::{
    Tuple,
    conntrack::{AF_INET, AF_INET6},
    xdp::{
        self as x, ExternalEntry, PeerAddr, SeenReport, XDP_COUNTER_NAMES, XDP_COUNTERS, XdpConfig,
    },
};

use crate::{
    config::{self, XdpMode},
    ftfw::AcceptFilter,
};

#[derive(Debug, thiserror::Error)]
pub enum XdpError {
    #[error("loading the XDP object: {0}")]
    Load(#[source] aya::EbpfError),
    #[error("the XDP object lacks {0}")]
    Missing(&'static str),
    #[error("XDP map {name}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("XDP program: {0}")]
    Program(#[source] aya::programs::ProgramError),
    #[error("attaching XDP to {interface}: {source}")]
    Attach {
        interface: String,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("interface name {0:?} holds a NUL byte")]
    BadInterface(String),
    #[error(
        "pin directory {dir}: {source}; give sync.xdp_pin_dir on a bpffs, or set sync.xdp = \"off\""
    )]
    Pin {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("no link can use XDP (every link's peer is a multicast group): set sync.xdp = \"off\"")]
    NoLinks,
}

/// How XDP ended up attached to one link.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LinkMode {
    pub interface: String,
    /// `native` or `generic`.
    pub mode: &'static str,
    /// Why generic, when native was asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fallback: Option<String>,
}

/// The external-cache map as the agent holds it.
pub type ExternalMap = HashMap<MapData, Tuple, ExternalEntry>;

pub struct XdpReceive {
    /// Owns the program and its links: dropping it detaches.
    _ebpf: Ebpf,
    config: Array<MapData, XdpConfig>,
    peers: HashMap<MapData, PeerAddr, u8>,
    seen: RingBuf<MapData>,
    changes: RingBuf<MapData>,
    stats: PerCpuArray<MapData, u64>,
    current: XdpConfig,
    pub links: Vec<LinkMode>,
    pub pin_path: PathBuf,
}

/// The bpffs magic (`statfs.f_type`).
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

fn is_bpffs(dir: &Path) -> bool {
    let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid C string and out pointer.
    unsafe { libc::statfs(c.as_ptr(), &mut st) == 0 && st.f_type as i64 == BPF_FS_MAGIC }
}

/// The default pin directory: one per network namespace, so that agents in
/// different namespaces of one host keep apart.
pub fn default_pin_dir() -> PathBuf {
    use std::os::unix::fs::MetadataExt;
    let ino = std::fs::metadata("/proc/self/ns/net").map_or(0, |m| m.ino());
    PathBuf::from(format!("/sys/fs/bpf/ctsync/net{ino}"))
}

/// Makes sure `dir` exists on a bpffs, mounting one at /sys/fs/bpf if
/// that is where it should be and nothing is mounted there.
fn prepare_pin_dir(dir: &Path) -> Result<(), std::io::Error> {
    let root = Path::new("/sys/fs/bpf");
    if dir.starts_with(root) && !is_bpffs(root) {
        std::fs::create_dir_all(root)?;
        let src = c"bpf";
        let target = c"/sys/fs/bpf";
        // SAFETY: valid C strings.
        let rc = unsafe {
            libc::mount(
                src.as_ptr(),
                target.as_ptr(),
                src.as_ptr(),
                0,
                std::ptr::null(),
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        tracing::info!("mounted bpffs at /sys/fs/bpf");
        if in_private_mount_ns() {
            tracing::warn!(
                "this agent runs in its own mount namespace (ip netns exec?): the bpffs it \
                 mounted goes away with it, so the XDP external cache won't survive a restart; \
                 mount bpffs on the host and point sync.xdp_pin_dir at it"
            );
        }
    }
    std::fs::create_dir_all(dir)?;
    if !is_bpffs(dir) {
        return Err(std::io::Error::other(
            "not on a bpffs (mount -t bpf bpf <dir>)",
        ));
    }
    Ok(())
}

fn in_private_mount_ns() -> bool {
    use std::os::unix::fs::MetadataExt;
    let ino = |p| std::fs::metadata(p).map(|m| m.ino()).ok();
    ino("/proc/self/ns/mnt") != ino("/proc/1/ns/mnt")
}

pub fn peer_addr(a: IpAddr) -> PeerAddr {
    let mut p = PeerAddr::default();
    match a {
        IpAddr::V4(v4) => {
            p.family = AF_INET;
            p.addr[..4].copy_from_slice(&v4.octets());
        }
        IpAddr::V6(v6) => {
            p.family = AF_INET6;
            p.addr = v6.octets();
        }
    }
    p
}

impl XdpReceive {
    /// Loads the program, attaches it to every unicast link and returns it
    /// with the external cache map (pinned in `pin_dir`).
    pub fn open(
        cfg: &config::Sync,
        node: u32,
    ) -> Result<(XdpReceive, ExternalMap, RawFd), XdpError> {
        let pin_dir = if cfg.xdp_pin_dir.as_os_str().is_empty() {
            default_pin_dir()
        } else {
            cfg.xdp_pin_dir.clone()
        };
        prepare_pin_dir(&pin_dir).map_err(|source| XdpError::Pin {
            dir: pin_dir.clone(),
            source,
        })?;
        let pin_path = pin_dir.join("external");
        let reused = pin_path.exists();
        let mut ebpf = EbpfLoader::new()
            .map_max_entries(x::MAP_EXTERNAL, cfg.xdp_map_entries)
            .map_pin_path(x::MAP_EXTERNAL, pin_path.as_path())
            .load(crate::bpf::XDP_OBJECT)
            .map_err(XdpError::Load)?;
        let take = |ebpf: &mut Ebpf, name: &'static str| {
            ebpf.take_map(name).ok_or(XdpError::Missing(name))
        };
        let map_err = |name| move |source| XdpError::Map { name, source };
        let external = take(&mut ebpf, x::MAP_EXTERNAL)?;
        // For batch reads (aya has none); valid while the map lives.
        let external_fd = match &external {
            aya::maps::Map::HashMap(d) => d.fd().as_fd().as_raw_fd(),
            _ => return Err(XdpError::Missing("XDP_EXTERNAL as a hash map")),
        };
        let external = HashMap::try_from(external).map_err(map_err(x::MAP_EXTERNAL))?;
        let config =
            Array::try_from(take(&mut ebpf, x::MAP_CONFIG)?).map_err(map_err(x::MAP_CONFIG))?;
        let peers =
            HashMap::try_from(take(&mut ebpf, x::MAP_PEERS)?).map_err(map_err(x::MAP_PEERS))?;
        let seen =
            RingBuf::try_from(take(&mut ebpf, x::MAP_SEEN)?).map_err(map_err(x::MAP_SEEN))?;
        let changes =
            RingBuf::try_from(take(&mut ebpf, x::MAP_CHANGES)?).map_err(map_err(x::MAP_CHANGES))?;
        let stats =
            PerCpuArray::try_from(take(&mut ebpf, x::MAP_STATS)?).map_err(map_err(x::MAP_STATS))?;
        let current = XdpConfig {
            node,
            port: cfg.port.to_be(),
            flags: x::flags::ENABLED,
            ..Default::default()
        };
        let mut me = XdpReceive {
            _ebpf: ebpf,
            config,
            peers,
            seen,
            changes,
            stats,
            current,
            links: vec![],
            pin_path,
        };
        me.set_peers(cfg)?;
        me.write_config()?;
        let prog: &mut Xdp = me
            ._ebpf
            .program_mut(x::PROG_XDP_RECEIVE)
            .ok_or(XdpError::Missing(x::PROG_XDP_RECEIVE))?
            .try_into()
            .map_err(XdpError::Program)?;
        prog.load().map_err(XdpError::Program)?;
        for l in &cfg.links {
            if l.peer.is_multicast() {
                tracing::warn!(
                    interface = %l.interface,
                    "the link's peer is a multicast group: XDP can't tell peers by address \
                     there, so the agent's socket receives this link"
                );
                continue;
            }
            let ifname = std::ffi::CString::new(l.interface.as_str())
                .map_err(|_| XdpError::BadInterface(l.interface.clone()))?;
            let mut attach = |mode| prog.attach(ifname.as_c_str(), mode);
            let link = match cfg.xdp {
                XdpMode::Generic => {
                    attach(AyaXdpMode::Skb).map_err(|source| XdpError::Attach {
                        interface: l.interface.clone(),
                        source,
                    })?;
                    LinkMode {
                        interface: l.interface.clone(),
                        mode: "generic",
                        fallback: None,
                    }
                }
                XdpMode::Native => match attach(AyaXdpMode::Driver) {
                    Ok(_) => LinkMode {
                        interface: l.interface.clone(),
                        mode: "native",
                        fallback: None,
                    },
                    Err(e) => {
                        let why = format!("native mode refused: {e}");
                        attach(AyaXdpMode::Skb).map_err(|source| XdpError::Attach {
                            interface: l.interface.clone(),
                            source,
                        })?;
                        LinkMode {
                            interface: l.interface.clone(),
                            mode: "generic",
                            fallback: Some(why),
                        }
                    }
                },
                XdpMode::Off => unreachable!("XdpReceive::open with xdp = off"),
            };
            me.links.push(link);
        }
        if me.links.is_empty() {
            return Err(XdpError::NoLinks);
        }
        for l in &me.links {
            match &l.fallback {
                None => {
                    tracing::info!(interface = %l.interface, mode = l.mode, "XDP receive path attached")
                }
                Some(why) => tracing::warn!(
                    interface = %l.interface,
                    mode = l.mode,
                    "XDP receive path attached in generic mode: {why}"
                ),
            }
        }
        tracing::info!(
            pin = %me.pin_path.display(),
            reused,
            capacity = cfg.xdp_map_entries,
            "XDP external cache {}",
            if reused { "reused from before the restart" } else { "created" }
        );
        Ok((me, external, external_fd))
    }

    /// The peers' addresses (unicast links) into the peer map.
    pub fn set_peers(&mut self, cfg: &config::Sync) -> Result<(), XdpError> {
        let want: Vec<PeerAddr> = cfg
            .links
            .iter()
            .filter(|l| !l.peer.is_multicast())
            .map(|l| peer_addr(l.peer))
            .collect();
        let have: Vec<PeerAddr> = self.peers.keys().filter_map(Result::ok).collect();
        let err = |source| XdpError::Map {
            name: x::MAP_PEERS,
            source,
        };
        for p in &have {
            if !want.contains(p) {
                self.peers.remove(p).map_err(err)?;
            }
        }
        for p in &want {
            self.peers.insert(p, &1, 0).map_err(err)?;
        }
        Ok(())
    }

    fn write_config(&mut self) -> Result<(), XdpError> {
        self.config
            .set(0, &self.current, 0)
            .map_err(|source| XdpError::Map {
                name: x::MAP_CONFIG,
                source,
            })
    }

    /// Mirrors the receiver's accept filter (call after every input).
    pub fn set_accept(&mut self, f: Option<AcceptFilter>) {
        let mut c = self.current;
        c.flags &= !(x::flags::ACCEPT | x::flags::FLOOR);
        c.session = 0;
        c.floor = 0;
        if let Some(f) = f {
            c.flags |= x::flags::ACCEPT;
            c.session = f.session;
            if let Some(floor) = f.floor {
                c.flags |= x::flags::FLOOR;
                c.floor = floor;
            }
        }
        if c != self.current {
            self.current = c;
            if let Err(e) = self.write_config() {
                tracing::error!("updating the XDP config: {e}");
            }
        }
    }

    /// Hot standby: XDP copies every entry it changes into the changes ring.
    pub fn set_mirror(&mut self, on: bool) {
        let mut c = self.current;
        if on {
            c.flags |= x::flags::MIRROR;
        } else {
            c.flags &= !x::flags::MIRROR;
        }
        if c != self.current {
            self.current = c;
            if let Err(e) = self.write_config() {
                tracing::error!("updating the XDP config: {e}");
            }
        }
    }

    /// Hands every changed entry waiting in the changes ring to `f`.
    pub fn drain_changes(&mut self, mut f: impl FnMut(&ExternalEntry)) -> usize {
        let mut n = 0;
        while let Some(item) = self.changes.next() {
            if item.len() >= size_of::<ExternalEntry>() {
                let e: ExternalEntry =
                    bytemuck::pod_read_unaligned(&item[..size_of::<ExternalEntry>()]);
                f(&e);
                n += 1;
            }
        }
        n
    }

    /// Only the peer node id (`None`: any) may author data XDP applies.
    pub fn set_peer_node(&mut self, node: Option<u32>) {
        self.current.peer_node = node.unwrap_or(0);
        if let Err(e) = self.write_config() {
            tracing::error!("updating the XDP config: {e}");
        }
    }

    /// Hands every waiting report to `f`.
    pub fn drain_seen(&mut self, mut f: impl FnMut(&SeenReport)) -> usize {
        let mut n = 0;
        while let Some(item) = self.seen.next() {
            if item.len() >= size_of::<SeenReport>() {
                let r: SeenReport = bytemuck::pod_read_unaligned(&item[..size_of::<SeenReport>()]);
                f(&r);
                n += 1;
            }
        }
        n
    }

    /// The ring buffer's fd, for readiness.
    pub fn seen_fd(&self) -> RawFd {
        self.seen.as_raw_fd()
    }

    /// The program's counters, summed over CPUs.
    pub fn counters(&self) -> [u64; XDP_COUNTERS as usize] {
        let mut out = [0; XDP_COUNTERS as usize];
        for (i, o) in out.iter_mut().enumerate() {
            if let Ok(v) = self.stats.get(&(i as u32), 0) {
                *o = v.iter().sum();
            }
        }
        out
    }

    pub fn stats_json(&self) -> serde_json::Value {
        let c = self.counters();
        let mut m = serde_json::Map::new();
        for (name, v) in XDP_COUNTER_NAMES.iter().zip(c) {
            m.insert((*name).into(), v.into());
        }
        // The kernel counts these only while kernel.bpf_stats_enabled = 1.
        let info = self
            ._ebpf
            .program(x::PROG_XDP_RECEIVE)
            .and_then(|p| p.info().ok());
        serde_json::json!({
            "links": self.links,
            "pin": self.pin_path,
            "counters": m,
            "prog_run_ns": info.as_ref().map(|i| i.run_time().as_nanos() as u64),
            "prog_runs": info.as_ref().map(|i| i.run_count()),
        })
    }
}

//! The agent's configuration: a TOML file where every key has a working default.
//!
//! `examples/ctsync.toml` documents every key. Parse errors come from the
//! `toml` crate and name the key, line and column; value errors (a bad CIDR, an
//! unknown protocol) are raised while deserialising, so they carry the line too.

use std::{
    fmt,
    net::IpAddr,
    path::{Path, PathBuf},
    str::FromStr,
};

use serde::{Deserialize, Deserializer, Serialize, de};

/// Default control socket path.
pub const DEFAULT_CONTROL_SOCKET: &str = "/run/ctsync/ctsync.sock";

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub general: General,
    pub events: Events,
    pub filter: Filter,
    pub sync: Sync,
    pub failover: Failover,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct General {
    /// Unix socket that `ctsync dump`, `ctsync stats` etc. talk to.
    pub control_socket: PathBuf,
    /// tracing filter (`RUST_LOG` syntax) when `RUST_LOG` is not set.
    pub log_level: String,
    /// Serve Prometheus metrics over HTTP at this address (`GET /metrics`);
    /// off when not set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Run under SCHED_RR at this priority (1-99), as conntrackd does by
    /// default, so that events and sync datagrams are handled as they
    /// arrive rather than when the scheduler gets round to the agent; 0
    /// keeps normal scheduling.
    pub realtime_priority: u8,
}

impl Default for General {
    fn default() -> Self {
        General {
            control_socket: DEFAULT_CONTROL_SOCKET.into(),
            log_level: "info".into(),
            metrics_listen: None,
            realtime_priority: 0,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Events {
    /// Initial receive buffer of the ctnetlink event socket, in bytes.
    pub socket_buffer: usize,
    /// The buffer doubles after each overrun (ENOBUFS), up to this cap.
    pub socket_buffer_max: usize,
    /// Messages fetched per `recvmmsg` call.
    pub read_batch: usize,
}

impl Default for Events {
    fn default() -> Self {
        Events {
            socket_buffer: 8 << 20,
            socket_buffer_max: 128 << 20,
            read_batch: 64,
        }
    }
}

/// Replication over the dedicated links (FT-FW over UDP).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Sync {
    /// The dedicated links, in order of preference (at most 4). None: no
    /// replication, the agent only keeps its internal cache.
    pub links: Vec<SyncLink>,
    /// UDP port on every link.
    pub port: u16,
    /// MTU of the links: datagrams are packed up to it.
    pub mtu: u16,
    /// This node's id in every datagram (0: derived from the first link's
    /// local address). Peers must differ.
    pub node_id: u32,
    /// Records sent and not yet acknowledged, at most.
    pub window: usize,
    /// Ask the peer for a full resend at start-up.
    pub startup_resync: bool,
    /// Where the peer's data datagrams are applied: `native` (XDP in the
    /// driver, falling back to generic where the driver lacks it),
    /// `generic` (XDP in the kernel's generic hook) or `off` (the agent's
    /// socket). With XDP, replicated records land in a BPF map without
    /// waking the agent.
    pub xdp: XdpMode,
    /// Most entries the XDP external cache holds: size it at or above
    /// `nf_conntrack_max` of the peer. Preallocated, about 280 bytes per
    /// entry (72 MiB for the default); a full map is counted and logged.
    pub xdp_map_entries: u32,
    /// bpffs directory where the XDP external cache is pinned, so that it
    /// outlives an agent restart. Empty: `/sys/fs/bpf/ctsync/net<inode of
    /// this network namespace>`. Must be unique per agent on a host.
    pub xdp_pin_dir: PathBuf,
}

/// `sync.xdp`.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum XdpMode {
    #[default]
    Native,
    Generic,
    Off,
}

impl Default for Sync {
    fn default() -> Self {
        Sync {
            links: vec![],
            port: 3780,
            mtu: 1500,
            node_id: 0,
            window: 16384,
            startup_resync: true,
            xdp: XdpMode::Native,
            xdp_map_entries: 1 << 18,
            xdp_pin_dir: PathBuf::new(),
        }
    }
}

/// What `ctsync commit` and `ctsync notify` do at a state change.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Failover {
    /// Commit TCP entries with window tracking relaxed (be-liberal), as
    /// conntrackd does: the backup never saw their windows, and strict
    /// tracking could drop their first packets as invalid.
    pub tcp_be_liberal: bool,
    /// Committed entries live at least this long (seconds): the external
    /// cache's timeouts date from the peer's last update of each entry, and
    /// a busy flow without state changes sends none. Its next packet
    /// refreshes the timer.
    pub commit_min_timeout: u32,
    /// `notify backup` and `notify fault` shorten the timers of the
    /// entries in this node's table to this many seconds (conntrackd's
    /// `-t`): the other firewall carries the traffic now, and entries that
    /// no packet refreshes go away.
    pub purge_timeout: u32,
    /// What the backup does with the peer's state: keep it in the external
    /// cache and commit it at takeover (`external`), or also write it into
    /// its own kernel table as it arrives, so that a takeover has nothing
    /// to commit (`hot`). Switchable by reload.
    pub standby: Standby,
}

/// `failover.standby`.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Standby {
    #[default]
    External,
    Hot,
}

impl Default for Failover {
    fn default() -> Self {
        Failover {
            tcp_be_liberal: true,
            commit_min_timeout: 60,
            purge_timeout: 60,
            standby: Standby::External,
        }
    }
}

/// One dedicated link.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SyncLink {
    /// The interface (sockets are bound to it).
    pub interface: String,
    /// This node's address on the link.
    pub local: IpAddr,
    /// The peer's address, or a multicast group both nodes join.
    pub peer: IpAddr,
}

/// Accept lists keep only what they name; ignore lists drop what they name.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Accept,
    #[default]
    Ignore,
}

/// Which events the kernel-side filter drops before they reach the agent.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Filter {
    pub protocol: ProtocolFilter,
    pub address: AddressFilter,
    pub tcp_state: TcpStateFilter,
    pub zone: ZoneFilter,
    pub mark: MarkFilter,
}

impl Default for Filter {
    fn default() -> Self {
        Filter {
            protocol: ProtocolFilter::default(),
            address: AddressFilter {
                mode: Mode::Ignore,
                // The firewall's own loopback traffic is never worth syncing.
                source: vec!["127.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()],
                destination: vec![],
            },
            tcp_state: TcpStateFilter::default(),
            zone: ZoneFilter::default(),
            mark: MarkFilter::default(),
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ProtocolFilter {
    pub mode: Mode,
    pub list: Vec<Protocol>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AddressFilter {
    pub mode: Mode,
    /// Prefixes matched against the original source address.
    pub source: Vec<Cidr>,
    /// Prefixes matched against the original destination address.
    pub destination: Vec<Cidr>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TcpStateFilter {
    pub mode: Mode,
    pub list: Vec<TcpState>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ZoneFilter {
    pub mode: Mode,
    pub list: Vec<u16>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct MarkFilter {
    pub mode: Mode,
    /// `"VALUE"` or `"VALUE/MASK"`, decimal or 0x-hex; at most 8.
    pub list: Vec<MarkRule>,
}

/// Implements `Deserialize` through `FromStr`, so value errors carry the line.
macro_rules! deserialize_from_str {
    ($t:ty, $expecting:literal) => {
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct V;
                impl de::Visitor<'_> for V {
                    type Value = $t;
                    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                        f.write_str($expecting)
                    }
                    fn visit_str<E: de::Error>(self, s: &str) -> Result<$t, E> {
                        s.parse().map_err(E::custom)
                    }
                    fn visit_i64<E: de::Error>(self, n: i64) -> Result<$t, E> {
                        n.to_string().parse().map_err(E::custom)
                    }
                }
                d.deserialize_any(V)
            }
        }
        impl Serialize for $t {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
    };
}

/// An IP protocol, by name (`tcp`, `udp`, `icmp`, `ipv6-icmp`, `sctp`, `dccp`,
/// `gre`, `udplite`) or number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Protocol(pub u8);

const PROTOCOL_NAMES: [(&str, u8); 9] = [
    ("icmp", 1),
    ("tcp", 6),
    ("udp", 17),
    ("dccp", 33),
    ("gre", 47),
    ("ipv6-icmp", 58),
    ("icmpv6", 58),
    ("sctp", 132),
    ("udplite", 136),
];

impl FromStr for Protocol {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let lower = s.to_ascii_lowercase();
        if let Some((_, n)) = PROTOCOL_NAMES.iter().find(|(name, _)| *name == lower) {
            return Ok(Protocol(*n));
        }
        s.parse::<u8>().map(Protocol).map_err(|_| {
            format!(
                "unknown protocol {s:?}: use a name (tcp, udp, icmp, ipv6-icmp, sctp, dccp, gre, udplite) or a number 0-255"
            )
        })
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match PROTOCOL_NAMES.iter().find(|(_, n)| *n == self.0) {
            Some((name, _)) => f.write_str(name),
            None => write!(f, "{}", self.0),
        }
    }
}
deserialize_from_str!(Protocol, "a protocol name or number");

/// An address prefix such as `10.0.0.0/8` or `fd00::/8` (a bare address is a /32 or /128).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix_len: u8,
}

impl FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (a, p) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = a
            .parse()
            .map_err(|_| format!("{s:?} is not an address prefix (like 10.0.0.0/8 or fd00::/8)"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix_len = match p {
            None => max,
            Some(p) => match p.parse::<u8>() {
                Ok(n) if n <= max => n,
                _ => return Err(format!("{s:?}: prefix length must be 0..={max}")),
            },
        };
        Ok(Cidr { addr, prefix_len })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}
deserialize_from_str!(Cidr, "an address prefix such as 10.0.0.0/8");

/// A TCP conntrack state by name, as conntrack(8) prints it (`ESTABLISHED`, `TIME_WAIT`, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpState(pub u8);

impl FromStr for TcpState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let upper = s.to_ascii_uppercase();
        ctsync_common::conntrack::tcp_state::NAMES
            .iter()
            .position(|n| *n == upper)
            .map(|i| TcpState(i as u8))
            .ok_or_else(|| {
                format!(
                    "unknown TCP state {s:?}: one of {}",
                    ctsync_common::conntrack::tcp_state::NAMES.join(", ")
                )
            })
    }
}

impl fmt::Display for TcpState {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(ctsync_common::conntrack::tcp_state::NAMES[usize::from(self.0)])
    }
}
deserialize_from_str!(TcpState, "a TCP state name such as ESTABLISHED");

/// A mark rule: matches when `mark & mask == value`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MarkRule {
    pub value: u32,
    pub mask: u32,
}

fn parse_u32(s: &str) -> Option<u32> {
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u32::from_str_radix(hex, 16).ok(),
        None => s.parse().ok(),
    }
}

impl FromStr for MarkRule {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad =
            || format!("{s:?} is not a mark rule: use VALUE or VALUE/MASK (decimal or 0x-hex)");
        let (v, m) = match s.split_once('/') {
            Some((v, m)) => (v, Some(m)),
            None => (s, None),
        };
        let value = parse_u32(v.trim()).ok_or_else(bad)?;
        let mask = match m {
            Some(m) => parse_u32(m.trim()).ok_or_else(bad)?,
            None => u32::MAX,
        };
        if value & !mask != 0 {
            return Err(format!(
                "{s:?}: the value has bits outside the mask, so it can never match"
            ));
        }
        Ok(MarkRule { value, mask })
    }
}

impl fmt::Display for MarkRule {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "{:#x}/{:#x}", self.value, self.mask)
    }
}
deserialize_from_str!(MarkRule, "a mark rule VALUE or VALUE/MASK");

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {source}")]
    Parse {
        path: PathBuf,
        source: Box<toml::de::Error>,
    },
    #[error("config file {path}: {key}: {problem}")]
    Invalid {
        path: PathBuf,
        key: &'static str,
        problem: String,
    },
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::parse(&text, path)
    }

    /// Parses and validates config text; `path` is only used in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            source: Box::new(e),
        })?;
        config
            .validate()
            .map_err(|(key, problem)| ConfigError::Invalid {
                path: path.to_owned(),
                key,
                problem,
            })?;
        Ok(config)
    }

    /// Checks that need more than one key.
    fn validate(&self) -> Result<(), (&'static str, String)> {
        let ev = &self.events;
        if ev.socket_buffer < 64 << 10 {
            return Err((
                "events.socket_buffer",
                format!(
                    "{} bytes is too small: use at least 65536",
                    ev.socket_buffer
                ),
            ));
        }
        if ev.socket_buffer_max < ev.socket_buffer {
            return Err((
                "events.socket_buffer_max",
                format!(
                    "{} is below events.socket_buffer ({})",
                    ev.socket_buffer_max, ev.socket_buffer
                ),
            ));
        }
        if !(1..=1024).contains(&ev.read_batch) {
            return Err((
                "events.read_batch",
                format!("{} is out of range 1..=1024", ev.read_batch),
            ));
        }
        if !(1024..=1 << 26).contains(&self.sync.xdp_map_entries) {
            return Err((
                "sync.xdp_map_entries",
                format!(
                    "{} is out of range 1024..=67108864 (size it above nf_conntrack_max)",
                    self.sync.xdp_map_entries
                ),
            ));
        }
        if !self.sync.xdp_pin_dir.as_os_str().is_empty() && !self.sync.xdp_pin_dir.is_absolute() {
            return Err((
                "sync.xdp_pin_dir",
                format!(
                    "{:?} is relative: give an absolute path on a bpffs (e.g. under /sys/fs/bpf)",
                    self.sync.xdp_pin_dir
                ),
            ));
        }
        if self.failover.purge_timeout == 0 {
            return Err((
                "failover.purge_timeout",
                "0 would delete every entry at once: use at least 1 (seconds)".into(),
            ));
        }
        if self.filter.mark.list.len() > ctsync_common::filter::MAX_MARKS {
            return Err((
                "filter.mark.list",
                format!(
                    "{} rules given, at most {} are supported",
                    self.filter.mark.list.len(),
                    ctsync_common::filter::MAX_MARKS
                ),
            ));
        }
        let prefixes = self
            .filter
            .address
            .source
            .len()
            .max(self.filter.address.destination.len());
        if prefixes > ctsync_common::filter::MAX_PREFIXES as usize {
            return Err((
                "filter.address",
                format!(
                    "{prefixes} prefixes in one list, at most {}",
                    ctsync_common::filter::MAX_PREFIXES
                ),
            ));
        }
        let sync = &self.sync;
        if sync.links.len() > 4 {
            return Err((
                "sync.links",
                format!("{} links given, at most 4 are supported", sync.links.len()),
            ));
        }
        for (i, l) in sync.links.iter().enumerate() {
            if l.interface.is_empty() || l.interface.len() > 15 {
                return Err((
                    "sync.links.interface",
                    format!("link {}: {:?} is not an interface name", i + 1, l.interface),
                ));
            }
            if l.local.is_ipv4() != l.peer.is_ipv4() {
                return Err((
                    "sync.links",
                    format!(
                        "link {} ({}): local and peer addresses are of different families",
                        i + 1,
                        l.interface
                    ),
                ));
            }
            if l.local == l.peer || l.local.is_unspecified() || l.local.is_multicast() {
                return Err((
                    "sync.links.local",
                    format!(
                        "link {} ({}): {} can't be this node's address on the link",
                        i + 1,
                        l.interface,
                        l.local
                    ),
                ));
            }
        }
        if !(576..=65535).contains(&sync.mtu) {
            return Err((
                "sync.mtu",
                format!("{} is out of range 576..=65535", sync.mtu),
            ));
        }
        if self.general.realtime_priority > 99 {
            return Err((
                "general.realtime_priority",
                format!(
                    "{} is out of range 0..=99 (0: normal scheduling)",
                    self.general.realtime_priority
                ),
            ));
        }
        if sync.port == 0 {
            return Err(("sync.port", "0 is not a port".into()));
        }
        if !(64..=1 << 20).contains(&sync.window) {
            return Err((
                "sync.window",
                format!("{} is out of range 64..=1048576", sync.window),
            ));
        }
        if self.filter.zone.list.len() > ctsync_common::filter::MAX_ZONES as usize {
            return Err((
                "filter.zone.list",
                format!("at most {} zones", ctsync_common::filter::MAX_ZONES),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Config, ConfigError> {
        Config::parse(s, Path::new("test.toml"))
    }

    #[test]
    fn empty_file_gives_working_defaults() {
        let c = parse("").unwrap();
        assert_eq!(c, Config::default());
        assert_eq!(c.filter.address.source.len(), 2);
    }

    #[test]
    fn example_config_parses_and_matches_defaults_where_it_says_so() {
        let text = include_str!("../../examples/ctsync.toml");
        parse(text).unwrap();
    }

    #[test]
    fn realtime_priority_beyond_99_is_refused() {
        let err = parse("[general]\nrealtime_priority = 100\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("general.realtime_priority"), "{err}");
        assert!(err.contains("0..=99"), "{err}");
        let c = parse("[general]\nrealtime_priority = 99\n").unwrap();
        assert_eq!(c.general.realtime_priority, 99);
    }

    #[test]
    fn bad_metrics_address_is_named_with_its_line() {
        let err = parse("[general]\nmetrics_listen = \"localhost\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("metrics_listen")
                && err.contains("line 2")
                && err.contains("socket address"),
            "{err}"
        );
        let c = parse("[general]\nmetrics_listen = \"127.0.0.1:9780\"\n").unwrap();
        assert_eq!(
            c.general.metrics_listen,
            Some("127.0.0.1:9780".parse().unwrap())
        );
    }

    #[test]
    fn unknown_key_is_named_with_its_line() {
        let err = parse("[events]\nsocket_buffer = 1000000\nbufer_max = 3\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("bufer_max") && err.contains("line 3"), "{err}");
    }

    #[test]
    fn bad_values_name_the_line_and_say_what_to_write() {
        let err = parse("[filter.address]\nsource = [\n \"10.0.0.0/33\"]\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("line 3") && err.contains("prefix length"),
            "{err}"
        );
        let err = parse("[filter.protocol]\nlist = [\"tcpp\"]\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("unknown protocol") && err.contains("line 2"),
            "{err}"
        );
        let err = parse("[filter.tcp_state]\nlist = [\"ESTABLISHD\"]\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("ESTABLISHED"), "{err}");
        let err = parse("[filter.mark]\nlist = [\"0x11/0x10\"]\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("never match"), "{err}");
    }

    #[test]
    fn cross_key_checks_name_the_key() {
        let err = parse("[events]\nsocket_buffer = 1048576\nsocket_buffer_max = 1024\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("events.socket_buffer_max"), "{err}");
    }

    #[test]
    fn sync_links_parse_and_are_checked() {
        let c = parse(
            "[sync]\nport = 3799\n[[sync.links]]\ninterface = \"sync0\"\nlocal = \"10.9.1.1\"\npeer = \"10.9.1.2\"\n\
             [[sync.links]]\ninterface = \"sync1\"\nlocal = \"fd09::1\"\npeer = \"ff02::1:3\"\n",
        )
        .unwrap();
        assert_eq!(c.sync.links.len(), 2);
        assert_eq!(c.sync.port, 3799);
        let err = parse(
            "[[sync.links]]\ninterface = \"sync0\"\nlocal = \"10.9.1.1\"\npeer = \"fd00::2\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("different families"), "{err}");
        let err = parse("[[sync.links]]\ninterface = \"sync0\"\nlocal = \"10.9.1.1\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("peer") && err.contains("line 1"), "{err}");
    }

    #[test]
    fn values_parse() {
        let c = parse(
            "[filter.protocol]\nmode = \"accept\"\nlist = [\"tcp\", 17, \"ipv6-icmp\"]\n\
             [filter.mark]\nlist = [\"0x10/0xf0\", \"7\"]\n[filter.zone]\nlist = [1, 2]\n",
        )
        .unwrap();
        assert_eq!(c.filter.protocol.mode, Mode::Accept);
        assert_eq!(
            c.filter.protocol.list,
            vec![Protocol(6), Protocol(17), Protocol(58)]
        );
        assert_eq!(
            c.filter.mark.list[0],
            MarkRule {
                value: 0x10,
                mask: 0xf0
            }
        );
        assert_eq!(
            c.filter.mark.list[1],
            MarkRule {
                value: 7,
                mask: u32::MAX
            }
        );
    }
}

//! The lab: two stateful firewalls between a client LAN and a server WAN, built
//! in network namespaces, for the demo, the tests and the bench.
//!
//! ```text
//!   client ns                fw1 ns                        server ns
//!  ┌─────────────┐        ┌─────────────────────┐        ┌─────────────┐
//!  │         fw1 ├────────┤ lan0           wan0 ├────────┤ fw1         │
//!  │ br0         │        │ sync0 10.9.1.1/24   │        │         br0 │
//!  │ 10.1.0.10   │        │ sync1 10.9.2.1/24   │        │   10.2.0.10 │
//!  │ fd00:1::10  │        └───┬────────────┬────┘        │  fd00:2::10 │
//!  │             │          sync0        sync1           │             │
//!  │             │        ┌───┴────────────┴────┐        │             │
//!  │         fw2 ├────────┤ lan0           wan0 ├────────┤ fw2         │
//!  └─────────────┘        │ sync0 10.9.1.2/24   │        └─────────────┘
//!                         │ sync1 10.9.2.2/24   │
//!                         └─────────────────────┘
//!                                fw2 ns
//! ```
//!
//! The firewalls' own addresses are 10.1.0.2/.3 and fd00:1::2/::3 on `lan0`,
//! 10.2.0.2/.3 and fd00:2::2/::3 on `wan0` (see [`Fw`]); the virtual addresses
//! are .1 / ::1 on both sides.
//!
//! - The client routes everything via the LAN virtual addresses ([`LAN_VIP_V4`],
//!   [`LAN_VIP_V6`]); the server routes the LAN via the WAN virtual addresses
//!   ([`WAN_VIP_V4`], [`WAN_VIP_V6`]). Whichever firewall holds them carries the
//!   traffic; [`Lab::move_vips`] moves them (or keepalived does, with
//!   [`LabOptions::vips`] off).
//! - Each firewall forwards, tracks connections (`nf_conntrack_tcp_loose=0`, so an
//!   unsynchronised TCP flow dies on failover, and `nf_conntrack_events=1`) and
//!   filters statefully: new connections only from `lan0` to `wan0`, established
//!   and related accepted, invalid dropped; IPv4 from the LAN is SNATed to the WAN
//!   virtual address, IPv6 is routed. Input is accepted (sync traffic, VRRP),
//!   except invalid packets: replies to unknown connections, which the local
//!   stack would reset.
//! - `sync0` and `sync1` are the two dedicated sync links between the firewalls.
//! - Nothing is created in, or routed to, the root namespace: interfaces are
//!   created directly in their namespaces, so names never collide between labs,
//!   and each lab has its own name prefix (`cts12ab-client`, `cts12ab-fw1`, ...).
//! - Every veth uses NAPI (`gro on`, `tso off`) with a 20000-packet pfifo, so
//!   bursts queue instead of overflowing the per-CPU backlog (DESIGN.md pitfalls).
//!
//! A [`Lab`] returned by [`Lab::up`] owns its namespaces and removes them, and
//! every process left in them, when dropped (also when a test panics).
//! [`Lab::keep`] disarms that; [`Lab::attach`] refers to an existing lab without
//! owning it. Labs left behind by a killed process are removed by [`down_all`]
//! (`cargo xtask lab down --all`).

use std::collections::hash_map::RandomState;
use std::ffi::OsStr;
use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, anyhow, bail};

use crate::exec;

/// Name of the firewalls' LAN interface (towards the client).
pub const LAN_IF: &str = "lan0";
/// Name of the firewalls' WAN interface (towards the server).
pub const WAN_IF: &str = "wan0";
/// Names of the dedicated sync links between the firewalls (same name on both).
pub const SYNC_IFS: [&str; 2] = ["sync0", "sync1"];
/// Name of the bridge in the client and server namespaces that carries their address.
pub const BRIDGE: &str = "br0";

/// The client's address (on its `br0`).
pub const CLIENT_V4: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 10);
/// The client's IPv6 address (on its `br0`).
pub const CLIENT_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 1, 0, 0, 0, 0, 0, 0x10);
/// The server's address (on its `br0`).
pub const SERVER_V4: Ipv4Addr = Ipv4Addr::new(10, 2, 0, 10);
/// The server's IPv6 address (on its `br0`).
pub const SERVER_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 2, 0, 0, 0, 0, 0, 0x10);
/// The LAN virtual address: the client's IPv4 gateway.
pub const LAN_VIP_V4: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 1);
/// The LAN virtual IPv6 address: the client's IPv6 gateway.
pub const LAN_VIP_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 1, 0, 0, 0, 0, 0, 1);
/// The WAN virtual address: the server's route to the LAN, and the SNAT address
/// the server sees IPv4 clients as.
pub const WAN_VIP_V4: Ipv4Addr = Ipv4Addr::new(10, 2, 0, 1);
/// The WAN virtual IPv6 address: the server's route to the LAN.
pub const WAN_VIP_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 2, 0, 0, 0, 0, 0, 1);
/// Prefix length of every IPv4 subnet in the lab.
pub const PREFIX_V4: u8 = 24;
/// Prefix length of every IPv6 subnet in the lab.
pub const PREFIX_V6: u8 = 64;

/// The virtual addresses and the firewall interface each lives on.
pub const VIPS: [(&str, IpAddr); 4] = [
    (LAN_IF, IpAddr::V4(LAN_VIP_V4)),
    (LAN_IF, IpAddr::V6(LAN_VIP_V6)),
    (WAN_IF, IpAddr::V4(WAN_VIP_V4)),
    (WAN_IF, IpAddr::V6(WAN_VIP_V6)),
];

/// Prefix of generated lab names; [`down_all`] removes labs whose names start with it.
pub const DEFAULT_PREFIX_STEM: &str = "cts";

/// A namespace of the lab.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Node {
    Client,
    Server,
    Fw1,
    Fw2,
}

impl Node {
    /// Every node, in build order.
    pub const ALL: [Node; 4] = [Node::Client, Node::Server, Node::Fw1, Node::Fw2];

    /// The node's name, also the suffix of its namespace (`{prefix}-{name}`).
    pub fn name(self) -> &'static str {
        match self {
            Node::Client => "client",
            Node::Server => "server",
            Node::Fw1 => "fw1",
            Node::Fw2 => "fw2",
        }
    }

    /// The firewall this node is, if it is one.
    pub fn fw(self) -> Option<Fw> {
        match self {
            Node::Fw1 => Some(Fw::Fw1),
            Node::Fw2 => Some(Fw::Fw2),
            Node::Client | Node::Server => None,
        }
    }
}

impl fmt::Display for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One of the two firewalls.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Fw {
    Fw1,
    Fw2,
}

impl Fw {
    /// Both firewalls.
    pub const BOTH: [Fw; 2] = [Fw::Fw1, Fw::Fw2];

    /// The other firewall (its peer).
    pub fn other(self) -> Fw {
        match self {
            Fw::Fw1 => Fw::Fw2,
            Fw::Fw2 => Fw::Fw1,
        }
    }

    /// The lab node of this firewall.
    pub fn node(self) -> Node {
        match self {
            Fw::Fw1 => Node::Fw1,
            Fw::Fw2 => Node::Fw2,
        }
    }

    /// 1 or 2: the last byte of its addresses is `index + 1` on the LAN and WAN.
    fn index(self) -> u8 {
        match self {
            Fw::Fw1 => 1,
            Fw::Fw2 => 2,
        }
    }

    /// Its own (not virtual) LAN address: 10.1.0.2 or 10.1.0.3.
    pub fn lan_v4(self) -> Ipv4Addr {
        Ipv4Addr::new(10, 1, 0, 1 + self.index())
    }

    /// Its own LAN IPv6 address: fd00:1::2 or fd00:1::3.
    pub fn lan_v6(self) -> Ipv6Addr {
        Ipv6Addr::new(0xfd00, 1, 0, 0, 0, 0, 0, 1 + u16::from(self.index()))
    }

    /// Its own WAN address: 10.2.0.2 or 10.2.0.3.
    pub fn wan_v4(self) -> Ipv4Addr {
        Ipv4Addr::new(10, 2, 0, 1 + self.index())
    }

    /// Its own WAN IPv6 address: fd00:2::2 or fd00:2::3.
    pub fn wan_v6(self) -> Ipv6Addr {
        Ipv6Addr::new(0xfd00, 2, 0, 0, 0, 0, 0, 1 + u16::from(self.index()))
    }

    /// Its address on sync link `link` (0 or 1, see [`SYNC_IFS`]): 10.9.{link+1}.{1,2}.
    ///
    /// # Panics
    /// If `link` is not 0 or 1.
    pub fn sync_v4(self, link: usize) -> Ipv4Addr {
        assert!(
            link < SYNC_IFS.len(),
            "the lab has sync links 0 and 1, not {link}"
        );
        Ipv4Addr::new(10, 9, link as u8 + 1, self.index())
    }
}

impl From<Fw> for Node {
    fn from(fw: Fw) -> Node {
        fw.node()
    }
}

impl fmt::Display for Fw {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.node().name())
    }
}

/// How to build a lab. `LabOptions::default()` is a lab with a generated name
/// and the virtual addresses on fw1.
#[derive(Clone, Debug)]
pub struct LabOptions {
    /// Namespace name prefix; `None` generates a fresh `cts` + 4 hex digits.
    /// Letters, digits, `_` and `-` only.
    pub prefix: Option<String>,
    /// Put the virtual addresses on fw1 at start and let [`Lab::move_vips`] move
    /// them. Off when keepalived manages them.
    pub vips: bool,
}

impl Default for LabOptions {
    fn default() -> Self {
        LabOptions {
            prefix: None,
            vips: true,
        }
    }
}

/// A running lab: four network namespaces named `{prefix}-{node}`.
///
/// Owned labs (from [`Lab::up`]) are torn down on drop: every process in their
/// namespaces gets SIGTERM (then SIGKILL after 2 s) and the namespaces are
/// deleted. Errors during that are printed, not raised.
#[derive(Debug)]
pub struct Lab {
    prefix: String,
    /// Namespace names, indexed like [`Node::ALL`].
    names: [String; 4],
    owned: bool,
}

impl Lab {
    /// Builds a lab and returns it, owned: it is torn down when dropped.
    ///
    /// Needs root, and `ip`, `tc`, `nft` and `ethtool` (`cargo xtask setup`
    /// installs them). If building fails half-way, what was built is removed.
    pub fn up(opts: LabOptions) -> Result<Lab> {
        preflight()?;
        let prefix = match opts.prefix {
            Some(prefix) => {
                validate_prefix(&prefix)?;
                let lab = Lab::attach(&prefix);
                if lab.exists() {
                    bail!(
                        "a lab named {prefix} already exists: remove it with \
                         `cargo xtask lab down --prefix {prefix}` or choose another prefix"
                    );
                }
                prefix
            }
            None => fresh_prefix(),
        };
        let mut lab = Lab::attach(&prefix);
        lab.create_namespaces()?;
        // From here on, an error drops `lab`, which removes what was built.
        lab.owned = true;
        lab.build(opts.vips)
            .with_context(|| format!("building lab {prefix}"))?;
        Ok(lab)
    }

    /// Refers to the lab named `prefix`, which may or may not exist, without
    /// owning it: dropping the result removes nothing. See [`Lab::down`].
    pub fn attach(prefix: &str) -> Lab {
        Lab {
            prefix: prefix.to_owned(),
            names: Node::ALL.map(|node| format!("{prefix}-{}", node.name())),
            owned: false,
        }
    }

    /// Disarms the teardown on drop, leaving the lab running, and returns its
    /// prefix (for [`Lab::attach`] or `cargo xtask lab down --prefix`).
    pub fn keep(mut self) -> String {
        self.owned = false;
        std::mem::take(&mut self.prefix)
    }

    /// Tears the lab down now, owned or not: kills every process in its
    /// namespaces and deletes them. Returns the first error, after trying every
    /// step.
    pub fn down(mut self) -> Result<()> {
        self.owned = false;
        let errors: Vec<String> = self.teardown().iter().map(|e| format!("{e:#}")).collect();
        if errors.is_empty() {
            Ok(())
        } else {
            bail!("tearing down lab {}: {}", self.prefix, errors.join("; "))
        }
    }

    /// The lab's name prefix, e.g. `cts12ab`.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The network namespace name of `node`, e.g. `cts12ab-fw1`.
    pub fn ns(&self, node: impl Into<Node>) -> &str {
        let node = node.into();
        let i = Node::ALL
            .iter()
            .position(|n| *n == node)
            .expect("Node::ALL lists every node");
        &self.names[i]
    }

    /// Whether any of the lab's namespaces exists.
    pub fn exists(&self) -> bool {
        self.names.iter().any(|ns| ns_exists(ns))
    }

    /// A `Command` that runs `args` (program first) inside `node`'s namespace
    /// (`ip netns exec NS ...`), to configure (stdio, env) and spawn yourself.
    /// Convert it with `tokio::process::Command::from` for async use.
    pub fn command<S: AsRef<OsStr>>(&self, node: impl Into<Node>, args: &[S]) -> Command {
        exec::ns_command(self.ns(node), args)
    }

    /// Runs `args` inside `node`'s namespace and waits, capturing its output;
    /// fails with the command line, exit status and stderr unless it exits 0.
    pub fn exec<S: AsRef<OsStr>>(&self, node: impl Into<Node>, args: &[S]) -> Result<Output> {
        exec::output(&mut self.command(node, args))
    }

    /// Starts `args` inside `node`'s namespace in the background (stdin empty,
    /// stdout and stderr inherited). The process is killed when the lab is torn
    /// down if it is still running; waiting for it is the caller's business.
    pub fn spawn<S: AsRef<OsStr>>(&self, node: impl Into<Node>, args: &[S]) -> Result<Child> {
        let mut cmd = self.command(node, args);
        cmd.stdin(Stdio::null())
            .spawn()
            .with_context(|| format!("could not start `{}`", exec::cmdline(&cmd)))
    }

    /// Runs `f` on a thread inside `node`'s namespace (see [`exec::in_netns`]):
    /// sockets it creates stay there, e.g. a `TcpListener` on the server.
    pub fn in_ns<T, F>(&self, node: impl Into<Node>, f: F) -> Result<T>
    where
        T: Send,
        F: FnOnce() -> T + Send,
    {
        exec::in_netns(self.ns(node), f)
    }

    /// Moves the virtual addresses to firewall `to`: removes them from the other
    /// one, adds them to `to`, and flushes the client's and the server's neighbour
    /// caches so that they re-resolve the gateways to `to` at once (the lab sends
    /// no gratuitous ARP; keepalived does when it manages the addresses).
    pub fn move_vips(&self, to: Fw) -> Result<()> {
        let from = to.other();
        let held_by_from = self.vips_on(from)?;
        let held_by_to = self.vips_on(to)?;
        // Remove first: both holding an address at once would split the LAN.
        for (dev, addr) in VIPS {
            if held_by_from.contains(&addr) {
                self.ip(from, &format!("addr del {} dev {dev}", with_prefix(addr)))?;
            }
        }
        for (dev, addr) in VIPS {
            if !held_by_to.contains(&addr) {
                self.add_addr(to, dev, addr)?;
            }
        }
        for node in [Node::Client, Node::Server] {
            self.ip(node, &format!("neigh flush dev {BRIDGE}"))?;
        }
        Ok(())
    }

    /// The virtual addresses ([`VIPS`]) that firewall `fw` holds now.
    pub fn vips_on(&self, fw: Fw) -> Result<Vec<IpAddr>> {
        let ifaces = interfaces(self.ns(fw))?;
        Ok(VIPS
            .iter()
            .filter(|(dev, addr)| {
                ifaces
                    .iter()
                    .any(|i| i.name == *dev && i.addrs.iter().any(|(a, _)| a == addr))
            })
            .map(|(_, addr)| *addr)
            .collect())
    }

    /// The firewall holding the virtual addresses (any of them), `None` if
    /// neither does; an error if both hold some (a split, e.g. VRRP split brain).
    pub fn vip_holder(&self) -> Result<Option<Fw>> {
        let fw1 = self.vips_on(Fw::Fw1)?;
        let fw2 = self.vips_on(Fw::Fw2)?;
        match (fw1.is_empty(), fw2.is_empty()) {
            (true, true) => Ok(None),
            (false, true) => Ok(Some(Fw::Fw1)),
            (true, false) => Ok(Some(Fw::Fw2)),
            (false, false) => bail!(
                "virtual addresses split in lab {}: fw1 holds {}, fw2 holds {}",
                self.prefix,
                join(&fw1),
                join(&fw2)
            ),
        }
    }

    /// Forwarded packets `fw` has dropped since the lab came up: as invalid
    /// (conntrack could not place them in a connection), and by the policy
    /// (new connections not from the LAN, e.g. a reply whose entry is missing).
    pub fn dropped(&self, fw: Fw) -> Result<Dropped> {
        Ok(Dropped {
            invalid: self.nft_packets(fw, "ctsync_lab", "invalid")?,
            unmatched: self.nft_packets(fw, "ctsync_lab", "unmatched")?,
        })
    }

    /// Packets counted by the named nftables counter of `inet` table `table` in `node`.
    pub fn nft_packets(&self, node: impl Into<Node>, table: &str, name: &str) -> Result<u64> {
        let out = self.exec(node, &["nft", "list", "counter", "inet", table, name])?;
        let text = String::from_utf8_lossy(&out.stdout);
        text.split_whitespace()
            .skip_while(|w| *w != "packets")
            .nth(1)
            .and_then(|n| n.parse().ok())
            .with_context(|| {
                format!("no packet count in `nft list counter {table} {name}`: {text}")
            })
    }

    /// A human-readable report: namespaces, interfaces with their addresses,
    /// processes running in them, and who holds the virtual addresses.
    pub fn status(&self) -> Result<String> {
        use fmt::Write;
        let mut out = String::new();
        let _ = writeln!(out, "lab {}", self.prefix);
        for node in Node::ALL {
            let ns = self.ns(node);
            if !ns_exists(ns) {
                let _ = writeln!(out, "  {ns}: missing");
                continue;
            }
            let _ = writeln!(out, "  {ns}:");
            for iface in interfaces(ns)? {
                let addrs: Vec<String> = iface
                    .addrs
                    .iter()
                    .filter(|(addr, _)| !is_link_local(addr))
                    .map(|(addr, len)| format!("{addr}/{len}"))
                    .collect();
                let line = format!(
                    "    {:<7} {:<8} {}",
                    iface.name,
                    iface.state,
                    addrs.join(" ")
                );
                let _ = writeln!(out, "{}", line.trim_end());
            }
            let procs: Vec<String> = ns_pids(ns)?
                .into_iter()
                .map(|pid| format!("{pid} {}", process_name(pid)))
                .collect();
            if !procs.is_empty() {
                let _ = writeln!(out, "    processes: {}", procs.join(", "));
            }
        }
        let holder = if Fw::BOTH.iter().all(|fw| ns_exists(self.ns(*fw))) {
            let fw1 = self.vips_on(Fw::Fw1)?;
            let fw2 = self.vips_on(Fw::Fw2)?;
            match (fw1.is_empty(), fw2.is_empty()) {
                (true, true) => "nobody".to_owned(),
                (false, true) => format!("fw1 ({})", join(&fw1)),
                (true, false) => format!("fw2 ({})", join(&fw2)),
                (false, false) => format!("SPLIT: fw1 ({}), fw2 ({})", join(&fw1), join(&fw2)),
            }
        } else {
            "unknown (a firewall namespace is missing)".to_owned()
        };
        let _ = writeln!(out, "  virtual addresses: {holder}");
        Ok(out)
    }

    /// Creates the namespaces, or none of them: on failure it removes only those
    /// it created, never a namespace of the same name that was already there.
    fn create_namespaces(&self) -> Result<()> {
        // The first `ip netns add` on a machine makes /run/netns a shared mount;
        // two doing that at once (parallel tests) stack mounts.
        static NETNS_ADD: Mutex<()> = Mutex::new(());
        let _serialised = NETNS_ADD
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        for (i, ns) in self.names.iter().enumerate() {
            if let Err(e) = exec::output(Command::new("ip").args(["netns", "add", ns])) {
                for created in &self.names[..i] {
                    let _ = exec::output(Command::new("ip").args(["netns", "del", created]));
                }
                return Err(e.context(format!(
                    "creating the namespaces of lab {} (does another lab of that name exist? `cargo xtask lab status`)",
                    self.prefix
                )));
            }
        }
        Ok(())
    }

    fn build(&self, vips: bool) -> Result<()> {
        for node in Node::ALL {
            // Before any interface exists, so that every interface inherits
            // `default`: no duplicate address detection, addresses usable at once.
            let mut sysctls = vec![
                ("net/ipv6/conf/all/accept_dad", "0"),
                ("net/ipv6/conf/default/accept_dad", "0"),
            ];
            if node.fw().is_some() {
                sysctls.extend([
                    ("net/ipv4/ip_forward", "1"),
                    ("net/ipv6/conf/all/forwarding", "1"),
                    // An unsynchronised TCP flow must really die on failover.
                    ("net/netfilter/nf_conntrack_tcp_loose", "0"),
                    // Events whether or not a listener is subscribed.
                    ("net/netfilter/nf_conntrack_events", "1"),
                ]);
            }
            self.sysctl(node, &sysctls)?;
            self.ip(node, "link set lo up")?;
        }

        // Each veth is created with both ends in their namespaces, never in the
        // root namespace, so the names only need to be unique per namespace.
        let veths = [
            ((Node::Client, "fw1"), (Node::Fw1, LAN_IF)),
            ((Node::Client, "fw2"), (Node::Fw2, LAN_IF)),
            ((Node::Server, "fw1"), (Node::Fw1, WAN_IF)),
            ((Node::Server, "fw2"), (Node::Fw2, WAN_IF)),
            ((Node::Fw1, SYNC_IFS[0]), (Node::Fw2, SYNC_IFS[0])),
            ((Node::Fw1, SYNC_IFS[1]), (Node::Fw2, SYNC_IFS[1])),
        ];
        for ((a, a_dev), (b, b_dev)) in veths {
            let b_ns = self.ns(b);
            self.ip(
                a,
                &format!("link add {a_dev} type veth peer name {b_dev} netns {b_ns}"),
            )?;
            self.tune_veth(a, a_dev)?;
            self.tune_veth(b, b_dev)?;
        }

        for node in [Node::Client, Node::Server] {
            // No STP and no multicast snooping: ports forward at once, and VRRP
            // and neighbour discovery reach both firewalls.
            self.ip(
                node,
                &format!(
                    "link add {BRIDGE} type bridge stp_state 0 forward_delay 0 mcast_snooping 0"
                ),
            )?;
            for port in ["fw1", "fw2"] {
                self.ip(node, &format!("link set {port} master {BRIDGE}"))?;
            }
        }

        let mut addrs: Vec<(Node, &str, IpAddr)> = vec![
            (Node::Client, BRIDGE, CLIENT_V4.into()),
            (Node::Client, BRIDGE, CLIENT_V6.into()),
            (Node::Server, BRIDGE, SERVER_V4.into()),
            (Node::Server, BRIDGE, SERVER_V6.into()),
        ];
        for fw in Fw::BOTH {
            addrs.extend([
                (fw.node(), LAN_IF, fw.lan_v4().into()),
                (fw.node(), LAN_IF, fw.lan_v6().into()),
                (fw.node(), WAN_IF, fw.wan_v4().into()),
                (fw.node(), WAN_IF, fw.wan_v6().into()),
            ]);
            for (link, dev) in SYNC_IFS.iter().enumerate() {
                addrs.push((fw.node(), dev, fw.sync_v4(link).into()));
            }
        }
        for (node, dev, addr) in addrs {
            self.add_addr(node, dev, addr)?;
        }

        for node in Node::ALL {
            for iface in interfaces(self.ns(node))? {
                if iface.name != "lo" {
                    self.ip(node, &format!("link set {} up", iface.name))?;
                }
            }
        }

        // Routes only towards the other lab subnets: nothing leads out of the lab.
        self.ip(
            Node::Client,
            &format!("-4 route add default via {LAN_VIP_V4} dev {BRIDGE}"),
        )?;
        self.ip(
            Node::Client,
            &format!("-6 route add default via {LAN_VIP_V6} dev {BRIDGE}"),
        )?;
        self.ip(
            Node::Server,
            &format!("-4 route add 10.1.0.0/24 via {WAN_VIP_V4} dev {BRIDGE}"),
        )?;
        self.ip(
            Node::Server,
            &format!("-6 route add fd00:1::/64 via {WAN_VIP_V6} dev {BRIDGE}"),
        )?;

        for fw in Fw::BOTH {
            exec::output_with_input(
                &mut self.command(fw, &["nft", "-f", "-"]),
                FW_RULESET.as_bytes(),
            )?;
        }
        if vips {
            self.move_vips(Fw::Fw1)?;
        }
        Ok(())
    }

    /// NAPI mode and a long pfifo, so bursts queue instead of being dropped.
    fn tune_veth(&self, node: Node, dev: &str) -> Result<()> {
        exec::output(&mut self.command(node, &["ethtool", "-K", dev, "gro", "on", "tso", "off"]))?;
        let tc = format!(
            "-n {} qdisc replace dev {dev} root pfifo limit 20000",
            self.ns(node)
        );
        exec::output(Command::new("tc").args(tc.split_whitespace()))?;
        Ok(())
    }

    fn add_addr(&self, node: impl Into<Node>, dev: &str, addr: IpAddr) -> Result<()> {
        // `nodad`: usable at once, even if a namespace's accept_dad got reset.
        let nodad = if addr.is_ipv6() { "nodad" } else { "" };
        self.ip(
            node,
            &format!("addr add {} dev {dev} {nodad}", with_prefix(addr)),
        )
    }

    /// `ip -n NS ARGS`, ARGS split at whitespace (lab names and addresses have
    /// none). ip enters the namespace itself: cheaper than `ip netns exec`.
    fn ip(&self, node: impl Into<Node>, args: &str) -> Result<()> {
        exec::output(
            Command::new("ip")
                .args(["-n", self.ns(node)])
                .args(args.split_whitespace()),
        )?;
        Ok(())
    }

    /// Writes `/proc/sys/KEY` in `node`'s namespace, for each setting, from a
    /// thread inside the namespace: /proc/sys/net shows the writing thread's
    /// namespace.
    pub fn sysctl(&self, node: Node, settings: &[(&str, &str)]) -> Result<()> {
        let ns = self.ns(node);
        self.in_ns(node, || {
            for (key, value) in settings {
                let path = format!("/proc/sys/{key}");
                std::fs::write(&path, value)
                    .with_context(|| format!("writing {value} to {path} in namespace {ns}"))?;
            }
            Ok(())
        })?
    }

    /// Reads `/proc/sys/<key>` in `node`'s namespace (trimmed).
    pub fn sysctl_value(&self, node: Node, key: &str) -> Result<String> {
        let ns = self.ns(node);
        self.in_ns(node, || {
            let path = format!("/proc/sys/{key}");
            std::fs::read_to_string(&path)
                .map(|v| v.trim().to_owned())
                .with_context(|| format!("reading {path} in namespace {ns}"))
        })?
    }

    /// Kills the processes in the namespaces and deletes them; returns every error.
    fn teardown(&self) -> Vec<anyhow::Error> {
        let mut errors = Vec::new();
        let present: Vec<&str> = self
            .names
            .iter()
            .map(String::as_str)
            .filter(|ns| ns_exists(ns))
            .collect();
        if let Err(e) = kill_all(&present) {
            errors.push(e);
        }
        for ns in present {
            if let Err(e) = exec::output(Command::new("ip").args(["netns", "del", ns])) {
                errors.push(e);
            }
        }
        errors
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if !self.owned {
            return;
        }
        for err in self.teardown() {
            eprintln!("warning: tearing down lab {}: {err:#}", self.prefix);
        }
    }
}

/// Packets a firewall dropped (see [`Lab::dropped`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Dropped {
    pub invalid: u64,
    pub unmatched: u64,
}

/// The firewalls' nftables ruleset (see the module documentation).
pub const FW_RULESET: &str = r#"
table inet ctsync_lab {
    # What the firewall drops, for the failover tests (see Lab::dropped).
    counter invalid {}
    counter unmatched {}
    chain forward {
        type filter hook forward priority filter; policy drop;
        ct state established,related accept
        ct state invalid counter name "invalid" drop
        # New connections only from the LAN to the WAN (ping included).
        iifname "lan0" oifname "wan0" accept
        # Anything else: dropped by the policy.
        counter name "unmatched"
    }
    chain input {
        type filter hook input priority filter; policy accept;
        # A reply to a connection the firewall does not know yet (taken over,
        # not committed) is addressed to the SNAT address it now holds: the
        # local stack would answer it with a reset. Dropped, it is resent once
        # the connection is committed.
        ct state invalid counter name "invalid" drop
        # Everything else (sync traffic, VRRP): accepted by the policy.
    }
}
table ip ctsync_lab_nat {
    chain postrouting {
        type nat hook postrouting priority srcnat; policy accept;
        oifname "wan0" ip saddr 10.1.0.0/24 snat to 10.2.0.1
    }
}
"#;

/// Checks what [`Lab::up`] needs, with errors that say what to do.
pub fn preflight() -> Result<()> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "the lab needs root (network namespaces, veths, nftables): run as root, \
             e.g. `sudo -E cargo xtask lab up`, or the tests with `sudo -E cargo test`"
        );
    }
    let tools = [
        ("ip", "iproute2"),
        ("tc", "iproute2"),
        ("nft", "nftables"),
        ("ethtool", "ethtool"),
    ];
    let missing: Vec<String> = tools
        .iter()
        .filter(|(tool, _)| crate::setup::find_in_path(tool).is_none())
        .map(|(tool, package)| format!("`{tool}` (package {package})"))
        .collect();
    if !missing.is_empty() {
        bail!(
            "the lab needs {} and they are not on PATH: run `cargo xtask setup` as root",
            missing.join(", ")
        );
    }
    if !Path::new("/proc/sys/net/netfilter/nf_conntrack_max").exists() {
        bail!(
            "the kernel has no connection tracking loaded: run `cargo xtask setup` as root (it runs `modprobe nf_conntrack`)"
        );
    }
    Ok(())
}

/// Prefixes of the labs present, found by their namespace names: every
/// `cts*-{client,server,fw1,fw2}` namespace (including half-built or
/// half-removed labs).
pub fn list() -> Result<Vec<String>> {
    let mut prefixes: Vec<String> = netns_list()?
        .iter()
        .filter_map(|ns| lab_prefix_of(ns))
        .map(str::to_owned)
        .collect();
    prefixes.sort();
    prefixes.dedup();
    Ok(prefixes)
}

/// Tears down every lab [`list`] finds, including those of other running
/// processes (use after crashes). Returns the prefixes removed.
pub fn down_all() -> Result<Vec<String>> {
    let prefixes = list()?;
    let mut first_error = None;
    for prefix in &prefixes {
        if let Err(e) = Lab::attach(prefix).down() {
            eprintln!("warning: tearing down lab {prefix}: {e:#}");
            first_error.get_or_insert(e);
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(prefixes),
    }
}

/// `cts12ab-fw1` -> `cts12ab`, for names that follow the lab pattern.
fn lab_prefix_of(ns: &str) -> Option<&str> {
    if !ns.starts_with(DEFAULT_PREFIX_STEM) {
        return None;
    }
    Node::ALL
        .iter()
        .find_map(|node| ns.strip_suffix(node.name())?.strip_suffix('-'))
}

fn validate_prefix(prefix: &str) -> Result<()> {
    let ok = !prefix.is_empty()
        && prefix.len() <= 32
        && prefix
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if !ok {
        bail!("invalid lab prefix {prefix:?}: use 1 to 32 letters, digits, `_` or `-`");
    }
    Ok(())
}

/// `cts` + 4 hex digits, not in use. Random per call (not only per process:
/// tests in one process build labs in parallel).
fn fresh_prefix() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    loop {
        let mut hasher = RandomState::new().build_hasher();
        hasher.write_u32(std::process::id());
        hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
        if let Ok(t) = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH) {
            hasher.write_u128(t.as_nanos());
        }
        let prefix = format!("{DEFAULT_PREFIX_STEM}{:04x}", hasher.finish() as u16);
        if !Lab::attach(&prefix).exists() {
            return prefix;
        }
    }
}

fn ns_exists(ns: &str) -> bool {
    Path::new("/run/netns").join(ns).exists()
}

/// Names from `ip netns list` (lines like `cts12ab-fw1 (id: 3)`).
fn netns_list() -> Result<Vec<String>> {
    let out = exec::stdout(Command::new("ip").args(["netns", "list"]))?;
    Ok(out
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .map(str::to_owned)
        .collect())
}

fn ns_pids(ns: &str) -> Result<Vec<i32>> {
    let out = exec::stdout(Command::new("ip").args(["netns", "pids", ns]))?;
    let me = std::process::id() as i32;
    Ok(out
        .split_whitespace()
        .filter_map(|pid| pid.parse().ok())
        // Never ourselves, whatever the main thread's namespace.
        .filter(|pid| *pid != me)
        .collect())
}

fn process_name(pid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "?".to_owned())
}

/// SIGTERM to every process in `namespaces`, SIGKILL to those left after 2 s.
fn kill_all(namespaces: &[&str]) -> Result<()> {
    let pids = |namespaces: &[&str]| -> Result<Vec<i32>> {
        let mut all = Vec::new();
        for ns in namespaces {
            all.extend(ns_pids(ns)?);
        }
        Ok(all)
    };
    let mut left = pids(namespaces)?;
    for (signal, grace) in [
        (libc::SIGTERM, Duration::from_secs(2)),
        (libc::SIGKILL, Duration::from_secs(2)),
    ] {
        if left.is_empty() {
            return Ok(());
        }
        for pid in &left {
            // SAFETY: plain syscall; a pid that already exited is harmless (ESRCH).
            unsafe { libc::kill(*pid, signal) };
        }
        let deadline = Instant::now() + grace;
        while !left.is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
            left = pids(namespaces)?;
        }
    }
    if left.is_empty() {
        Ok(())
    } else {
        Err(anyhow!(
            "processes {left:?} survived SIGKILL in {}",
            namespaces.join(", ")
        ))
    }
}

/// An interface and its addresses, from `ip -j addr show`.
struct Iface {
    name: String,
    state: String,
    addrs: Vec<(IpAddr, u8)>,
}

fn interfaces(ns: &str) -> Result<Vec<Iface>> {
    let out = exec::stdout(Command::new("ip").args(["-n", ns, "-j", "addr", "show"]))?;
    let json: serde_json::Value =
        serde_json::from_str(&out).with_context(|| format!("parsing `ip -n {ns} -j addr show`"))?;
    let mut ifaces = Vec::new();
    for iface in json.as_array().into_iter().flatten() {
        let name = iface["ifname"].as_str().unwrap_or_default().to_owned();
        let state = iface["operstate"].as_str().unwrap_or("?").to_owned();
        let addrs = iface["addr_info"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|a| {
                let addr = a["local"].as_str()?.parse().ok()?;
                let len = a["prefixlen"].as_u64()? as u8;
                Some((addr, len))
            })
            .collect();
        ifaces.push(Iface { name, state, addrs });
    }
    Ok(ifaces)
}

fn with_prefix(addr: IpAddr) -> String {
    match addr {
        IpAddr::V4(_) => format!("{addr}/{PREFIX_V4}"),
        IpAddr::V6(_) => format!("{addr}/{PREFIX_V6}"),
    }
}

fn is_link_local(addr: &IpAddr) -> bool {
    match addr {
        IpAddr::V4(a) => a.is_link_local(),
        IpAddr::V6(a) => a.is_unicast_link_local(),
    }
}

fn join(addrs: &[IpAddr]) -> String {
    addrs
        .iter()
        .map(IpAddr::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespace_names_follow_the_prefix() {
        let lab = Lab::attach("cts12ab");
        assert_eq!(lab.ns(Node::Client), "cts12ab-client");
        assert_eq!(lab.ns(Fw::Fw2), "cts12ab-fw2");
        assert!(!lab.owned);
    }

    #[test]
    fn lab_names_are_recognised() {
        assert_eq!(lab_prefix_of("cts12ab-fw1"), Some("cts12ab"));
        assert_eq!(lab_prefix_of("cts-a-b-server"), Some("cts-a-b"));
        assert_eq!(lab_prefix_of("cts-client"), Some("cts"));
        assert_eq!(lab_prefix_of("cts12ab-fw3"), None);
        assert_eq!(lab_prefix_of("other-fw1"), None);
        assert_eq!(lab_prefix_of("cts12abfw1"), None);
    }

    #[test]
    fn firewall_addresses() {
        assert_eq!(Fw::Fw1.lan_v4(), Ipv4Addr::new(10, 1, 0, 2));
        assert_eq!(Fw::Fw2.wan_v6().to_string(), "fd00:2::3");
        assert_eq!(Fw::Fw2.sync_v4(1), Ipv4Addr::new(10, 9, 2, 2));
        assert_eq!(LAN_VIP_V6.to_string(), "fd00:1::1");
        assert_eq!(CLIENT_V6.to_string(), "fd00:1::10");
    }

    #[test]
    fn prefixes_are_validated() {
        assert!(validate_prefix("cts12ab").is_ok());
        assert!(validate_prefix("").is_err());
        assert!(validate_prefix("a/b").is_err());
        let a = fresh_prefix();
        assert!(a.starts_with("cts") && a.len() == 7, "{a}");
    }
}

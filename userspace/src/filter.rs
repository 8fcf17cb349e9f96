//! The conntrack event filter: its rules, compiled from the config, and the
//! eBPF socket filter that applies them in the kernel.
//!
//! [`Rules::verdict`] is the same decision in userspace. The agent uses it
//! when the rules change (entries the new rules exclude leave the cache) and
//! the tests use it as the reference the kernel side must agree with.

use std::{io, net::IpAddr, os::fd::AsFd};

use aya::{
    Ebpf,
    maps::{
        Array, HashMap, MapData, PerCpuArray,
        lpm_trie::{Key, LpmTrie},
    },
    programs::{ProgramError, SocketFilter},
};
use ctsync_common::{
    CtRecord,
    conntrack::{AF_INET6, IPPROTO_TCP},
    filter::{self as f, COUNTERS, Counter, FilterConfig, MarkMatch, flags},
};

use crate::config::{self, Cidr, Mode};

/// The filter configuration in the form both sides use.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Rules {
    pub config: FilterConfig,
    pub source: Vec<Cidr>,
    pub destination: Vec<Cidr>,
    pub zones: Vec<u16>,
}

impl Rules {
    /// The agent's rules: the filter config, plus (in ignore mode) the sync
    /// links' own addresses, so that the replication traffic itself is never
    /// replicated.
    pub fn for_agent(c: &config::Config) -> Rules {
        let mut filter = c.filter.clone();
        if filter.address.mode == Mode::Ignore {
            for l in &c.sync.links {
                for a in [l.local, l.peer] {
                    if !a.is_multicast() {
                        let prefix_len = if a.is_ipv4() { 32 } else { 128 };
                        filter.address.source.push(Cidr {
                            addr: a,
                            prefix_len,
                        });
                    }
                }
            }
        }
        Rules::from_config(&filter)
    }

    pub fn from_config(c: &config::Filter) -> Rules {
        let mut cfg = FilterConfig {
            flags: flags::CONFIGURED,
            ..Default::default()
        };
        // Accept lists become "drop everything else" bitmaps.
        let proto_listed = |p: u8| c.protocol.list.iter().any(|x| x.0 == p);
        for p in 0..=255u8 {
            let drop = match c.protocol.mode {
                Mode::Ignore => proto_listed(p),
                Mode::Accept => !c.protocol.list.is_empty() && !proto_listed(p),
            };
            if drop {
                cfg.drop_proto[usize::from(p >> 6)] |= 1 << (p & 63);
            }
        }
        for st in 0..ctsync_common::conntrack::tcp_state::NAMES.len() as u8 {
            let listed = c.tcp_state.list.iter().any(|x| x.0 == st);
            let drop = match c.tcp_state.mode {
                Mode::Ignore => listed,
                Mode::Accept => !c.tcp_state.list.is_empty() && !listed,
            };
            if drop {
                cfg.drop_tcp_state |= 1 << st;
            }
        }
        if c.address.mode == Mode::Accept {
            cfg.flags |= flags::ADDR_ACCEPT;
        }
        if !c.address.source.is_empty() {
            cfg.flags |= flags::ADDR_SRC;
        }
        if !c.address.destination.is_empty() {
            cfg.flags |= flags::ADDR_DST;
        }
        if !c.zone.list.is_empty() {
            cfg.flags |= flags::ZONE_ACTIVE;
            if c.zone.mode == Mode::Accept {
                cfg.flags |= flags::ZONE_ACCEPT;
            }
        }
        if c.mark.mode == Mode::Accept {
            cfg.flags |= flags::MARK_ACCEPT;
        }
        cfg.mark_count = c.mark.list.len() as u32;
        for (slot, m) in cfg.marks.iter_mut().zip(&c.mark.list) {
            *slot = MarkMatch {
                value: m.value,
                mask: m.mask,
            };
        }
        Rules {
            config: cfg,
            source: c.address.source.clone(),
            destination: c.address.destination.clone(),
            zones: c.zone.list.clone(),
        }
    }

    /// What the kernel filter does with an event for `rec` sent by `portid`:
    /// `None` passes, `Some(counter)` drops for that reason. `self_portids` are
    /// the agent's own write sockets. DESTROY events carry no TCP state: pass
    /// `has_state = false` for them.
    pub fn verdict(
        &self,
        rec: &CtRecord,
        portid: u32,
        self_portids: &[u32],
        has_state: bool,
    ) -> Option<Counter> {
        let cfg = &self.config;
        if portid != 0 && self_portids.contains(&portid) {
            return Some(Counter::DroppedSelf);
        }
        if cfg.drops_proto(rec.orig.proto) {
            return Some(Counter::DroppedProto);
        }
        let (src, dst) = addrs(rec);
        let has_src = cfg.flags & flags::ADDR_SRC != 0;
        let has_dst = cfg.flags & flags::ADDR_DST != 0;
        let src_in = self.source.iter().any(|c| contains(c, src));
        let dst_in = self.destination.iter().any(|c| contains(c, dst));
        let drop = if cfg.flags & flags::ADDR_ACCEPT != 0 {
            (has_src && !src_in) || (has_dst && !dst_in)
        } else {
            (has_src && src_in) || (has_dst && dst_in)
        };
        if drop {
            return Some(Counter::DroppedAddr);
        }
        if cfg.flags & flags::ZONE_ACTIVE != 0 {
            let listed = self.zones.contains(&rec.orig.zone);
            if listed != (cfg.flags & flags::ZONE_ACCEPT != 0) {
                return Some(Counter::DroppedZone);
            }
        }
        if cfg.mark_count != 0 {
            let n = cfg.mark_count as usize;
            let matched = cfg.marks[..n].iter().any(|m| rec.mark & m.mask == m.value);
            if matched != (cfg.flags & flags::MARK_ACCEPT != 0) {
                return Some(Counter::DroppedMark);
            }
        }
        if has_state
            && rec.orig.proto == IPPROTO_TCP
            && rec.proto_state < 32
            && cfg.drop_tcp_state & (1 << rec.proto_state) != 0
        {
            return Some(Counter::DroppedState);
        }
        None
    }
}

fn addrs(rec: &CtRecord) -> (IpAddr, IpAddr) {
    if rec.orig.family == AF_INET6 {
        (IpAddr::from(rec.orig.src), IpAddr::from(rec.orig.dst))
    } else {
        let v4 = |a: &[u8; 16]| IpAddr::from([a[0], a[1], a[2], a[3]]);
        (v4(&rec.orig.src), v4(&rec.orig.dst))
    }
}

fn contains(c: &Cidr, a: IpAddr) -> bool {
    let (net, addr, bits): (u128, u128, u32) = match (c.addr, a) {
        (IpAddr::V4(n), IpAddr::V4(a)) => (u32::from(n).into(), u32::from(a).into(), 32),
        (IpAddr::V6(n), IpAddr::V6(a)) => (n.into(), a.into(), 128),
        _ => return false,
    };
    let shift = bits - u32::from(c.prefix_len);
    shift >= bits || (net >> shift) == (addr >> shift)
}

#[derive(Debug, thiserror::Error)]
pub enum FilterError {
    #[error("loading the eBPF object failed: {0}")]
    Object(#[source] aya::EbpfError),
    #[error("the eBPF object has no {what} named {name}")]
    Missing {
        what: &'static str,
        name: &'static str,
    },
    #[error("the kernel refused the event filter program (verifier log follows): {0}")]
    Program(#[source] ProgramError),
    #[error("attaching the event filter to the event socket failed: {0}")]
    Attach(#[source] ProgramError),
    #[error("updating filter map {map} failed: {source}")]
    Map {
        map: &'static str,
        source: aya::maps::MapError,
    },
}

/// The loaded socket filter and its maps.
pub struct EventFilter {
    ebpf: Ebpf,
}

impl EventFilter {
    /// Loads the embedded object and the program (not yet attached).
    pub fn load() -> Result<EventFilter, FilterError> {
        raise_memlock_limit();
        let mut ebpf = Ebpf::load(crate::bpf::EBPF_OBJECT).map_err(FilterError::Object)?;
        let prog: &mut SocketFilter = ebpf
            .program_mut(f::PROG_EVENT_FILTER)
            .ok_or(FilterError::Missing {
                what: "program",
                name: f::PROG_EVENT_FILTER,
            })?
            .try_into()
            .map_err(FilterError::Program)?;
        prog.load().map_err(FilterError::Program)?;
        Ok(EventFilter { ebpf })
    }

    /// Attaches the filter to a socket. Detaches when the socket closes.
    pub fn attach(&mut self, socket: impl AsFd) -> Result<(), FilterError> {
        let prog: &mut SocketFilter = self
            .ebpf
            .program_mut(f::PROG_EVENT_FILTER)
            .ok_or(FilterError::Missing {
                what: "program",
                name: f::PROG_EVENT_FILTER,
            })?
            .try_into()
            .map_err(FilterError::Attach)?;
        prog.attach(socket).map_err(FilterError::Attach)
    }

    fn map(&mut self, name: &'static str) -> Result<&mut aya::maps::Map, FilterError> {
        self.ebpf
            .map_mut(name)
            .ok_or(FilterError::Missing { what: "map", name })
    }

    /// Installs new rules. While the lists change, the filter passes
    /// everything (it never drops an event it should keep); the caller then
    /// reconciles its cache with `Rules::verdict`.
    pub fn apply(&mut self, rules: &Rules) -> Result<(), FilterError> {
        let map_err = |map| move |source| FilterError::Map { map, source };
        let mut open = rules.config;
        open.flags &= !flags::CONFIGURED;
        set_config(self.map(f::MAP_CONFIG)?, &open)?;

        let v4 = |list: &[Cidr]| -> Vec<(u8, [u8; 4])> {
            list.iter()
                .filter_map(|c| match c.addr {
                    IpAddr::V4(a) => Some((c.prefix_len, a.octets())),
                    IpAddr::V6(_) => None,
                })
                .collect()
        };
        let v6 = |list: &[Cidr]| -> Vec<(u8, [u8; 16])> {
            list.iter()
                .filter_map(|c| match c.addr {
                    IpAddr::V6(a) => Some((c.prefix_len, a.octets())),
                    IpAddr::V4(_) => None,
                })
                .collect()
        };
        fill_lpm(self.map(f::MAP_SRC4)?, &v4(&rules.source)).map_err(map_err(f::MAP_SRC4))?;
        fill_lpm(self.map(f::MAP_DST4)?, &v4(&rules.destination)).map_err(map_err(f::MAP_DST4))?;
        fill_lpm(self.map(f::MAP_SRC6)?, &v6(&rules.source)).map_err(map_err(f::MAP_SRC6))?;
        fill_lpm(self.map(f::MAP_DST6)?, &v6(&rules.destination)).map_err(map_err(f::MAP_DST6))?;

        let mut zones: HashMap<&mut MapData, u16, u8> =
            HashMap::try_from(self.map(f::MAP_ZONES)?).map_err(map_err(f::MAP_ZONES))?;
        let old: Vec<u16> = zones.keys().filter_map(Result::ok).collect();
        for z in old {
            zones.remove(&z).map_err(map_err(f::MAP_ZONES))?;
        }
        for z in &rules.zones {
            zones.insert(z, &1, 0).map_err(map_err(f::MAP_ZONES))?;
        }
        set_config(self.map(f::MAP_CONFIG)?, &rules.config)
    }

    /// Registers the port ids of the agent's own ctnetlink write sockets:
    /// the events their writes cause are dropped in the kernel.
    pub fn set_self_portids(&mut self, ids: &[u32]) -> Result<(), FilterError> {
        let map_err = |source| FilterError::Map {
            map: f::MAP_SELF_PORTIDS,
            source,
        };
        let mut m: HashMap<&mut MapData, u32, u8> =
            HashMap::try_from(self.map(f::MAP_SELF_PORTIDS)?).map_err(map_err)?;
        let old: Vec<u32> = m.keys().filter_map(Result::ok).collect();
        for id in old.iter().filter(|id| !ids.contains(id)) {
            m.remove(id).map_err(map_err)?;
        }
        for id in ids {
            m.insert(id, &1, 0).map_err(map_err)?;
        }
        Ok(())
    }

    /// The filter's counters, summed over CPUs, indexed by `Counter`.
    pub fn counters(&self) -> Result<[u64; COUNTERS as usize], FilterError> {
        let map_err = |source| FilterError::Map {
            map: f::MAP_STATS,
            source,
        };
        let m = self.ebpf.map(f::MAP_STATS).ok_or(FilterError::Missing {
            what: "map",
            name: f::MAP_STATS,
        })?;
        let stats: PerCpuArray<&MapData, u64> = PerCpuArray::try_from(m).map_err(map_err)?;
        let mut out = [0u64; COUNTERS as usize];
        for (i, slot) in out.iter_mut().enumerate() {
            *slot = stats.get(&(i as u32), 0).map_err(map_err)?.iter().sum();
        }
        Ok(out)
    }
}

fn set_config(map: &mut aya::maps::Map, cfg: &FilterConfig) -> Result<(), FilterError> {
    let map_err = |source| FilterError::Map {
        map: f::MAP_CONFIG,
        source,
    };
    let mut a: Array<&mut MapData, FilterConfig> = Array::try_from(map).map_err(map_err)?;
    a.set(0, cfg, 0).map_err(map_err)
}

/// Replaces the prefixes of an LPM trie keyed by `N`-byte addresses.
fn fill_lpm<const N: usize>(
    map: &mut aya::maps::Map,
    prefixes: &[(u8, [u8; N])],
) -> Result<(), aya::maps::MapError> {
    let mut t: LpmTrie<&mut MapData, [u8; N], u8> = LpmTrie::try_from(map)?;
    let old: Vec<Key<[u8; N]>> = t.keys().filter_map(Result::ok).collect();
    for k in &old {
        t.remove(k)?;
    }
    for (len, addr) in prefixes {
        t.insert(&Key::new((*len).into(), *addr), &1, 0)?;
    }
    Ok(())
}

/// Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK; harmless elsewhere.
fn raise_memlock_limit() {
    let lim = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: plain syscall with a valid struct.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &lim) } != 0 {
        tracing::debug!(
            "setrlimit(RLIMIT_MEMLOCK) failed: {}",
            io::Error::last_os_error()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use ctsync_common::conntrack::{AF_INET, IPPROTO_UDP, tcp_state};

    fn rules(toml: &str) -> Rules {
        Rules::from_config(
            &Config::parse(toml, std::path::Path::new("t"))
                .unwrap()
                .filter,
        )
    }

    fn rec(src: [u8; 4], dst: [u8; 4], proto: u8) -> CtRecord {
        let mut r = CtRecord::default();
        r.orig.family = AF_INET;
        r.orig.proto = proto;
        r.orig.src[..4].copy_from_slice(&src);
        r.orig.dst[..4].copy_from_slice(&dst);
        r
    }

    #[test]
    fn defaults_drop_loopback_only() {
        let r = rules("");
        assert_eq!(
            r.verdict(
                &rec([127, 0, 0, 1], [127, 0, 0, 1], IPPROTO_TCP),
                5,
                &[],
                true
            ),
            Some(Counter::DroppedAddr)
        );
        assert_eq!(
            r.verdict(
                &rec([10, 0, 0, 1], [10, 0, 0, 2], IPPROTO_TCP),
                5,
                &[],
                true
            ),
            None
        );
    }

    #[test]
    fn self_origin_protocol_state_zone_mark() {
        let r = rules(
            "[filter.protocol]\nlist=[\"udp\"]\n[filter.tcp_state]\nlist=[\"SYN_SENT\"]\n\
             [filter.zone]\nmode=\"accept\"\nlist=[0, 3]\n[filter.mark]\nlist=[\"0x100/0xf00\"]\n",
        );
        let mut t = rec([10, 0, 0, 1], [10, 0, 0, 2], IPPROTO_TCP);
        assert_eq!(r.verdict(&t, 77, &[77], true), Some(Counter::DroppedSelf));
        assert_eq!(
            r.verdict(&rec([10, 0, 0, 1], [1, 1, 1, 1], IPPROTO_UDP), 0, &[], true),
            Some(Counter::DroppedProto)
        );
        t.proto_state = tcp_state::SYN_SENT;
        assert_eq!(r.verdict(&t, 0, &[], true), Some(Counter::DroppedState));
        assert_eq!(
            r.verdict(&t, 0, &[], false),
            None,
            "DESTROY events carry no state"
        );
        t.proto_state = tcp_state::ESTABLISHED;
        t.orig.zone = 2;
        assert_eq!(r.verdict(&t, 0, &[], true), Some(Counter::DroppedZone));
        t.orig.zone = 3;
        t.mark = 0x1134;
        assert_eq!(r.verdict(&t, 0, &[], true), Some(Counter::DroppedMark));
        t.mark = 0x1034;
        assert_eq!(r.verdict(&t, 0, &[], true), None);
    }

    #[test]
    fn accept_addresses_need_both_lists_to_match() {
        let r = rules(
            "[filter.address]\nmode=\"accept\"\nsource=[\"10.1.0.0/16\"]\ndestination=[\"10.2.0.0/24\", \"fd00::/8\"]\n",
        );
        assert_eq!(
            r.verdict(
                &rec([10, 1, 2, 3], [10, 2, 0, 9], IPPROTO_TCP),
                0,
                &[],
                true
            ),
            None
        );
        assert_eq!(
            r.verdict(
                &rec([10, 1, 2, 3], [10, 2, 1, 9], IPPROTO_TCP),
                0,
                &[],
                true
            ),
            Some(Counter::DroppedAddr)
        );
        assert_eq!(
            r.verdict(
                &rec([10, 3, 2, 3], [10, 2, 0, 9], IPPROTO_TCP),
                0,
                &[],
                true
            ),
            Some(Counter::DroppedAddr)
        );
    }
}

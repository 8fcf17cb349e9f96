//! Shared by the kernel tests: a private network namespace for the calling
//! thread, and a `ctsync run` under test. The comparison with the kernel
//! table (`conntrack -L`, the independent oracle) is `xtask::ctcompare`.
#![allow(dead_code)]

pub use xtask::{agent::AgentProcess, ctcompare::Entry};

/// Runs the tests that take it one at a time. The conntrack table's limit
/// and count are global across namespaces, so a test that fills it (a 1M
/// burst) makes a concurrent test's connections fail to be tracked.
pub fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    // A failed test poisons the lock; the next one still runs.
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// Moves the calling thread into a new, empty network namespace (with its
/// own conntrack table). Children spawned from this thread inherit it.
pub fn enter_private_netns() {
    assert!(
        unsafe { libc::geteuid() } == 0,
        "these tests use the real kernel (network namespaces, ctnetlink, eBPF) and must run as root: use `cargo xtask test`"
    );
    let r = unsafe { libc::unshare(libc::CLONE_NEWNET) };
    assert_eq!(
        r,
        0,
        "unshare(CLONE_NEWNET) failed: {}",
        std::io::Error::last_os_error()
    );
}

/// A target-dir binary of another package of the workspace (built by
/// `cargo xtask test` before the tests run).
pub fn workspace_bin(name: &str) -> std::path::PathBuf {
    // target/release/deps/<test-exe> -> target/release/<name>
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe.parent().and_then(|d| d.parent()).expect("target dir");
    let p = dir.join(name);
    assert!(
        p.exists(),
        "{} is missing: run the tests with `cargo xtask test`, which builds every binary first",
        p.display()
    );
    p
}

/// The ctsync binary under test.
pub fn ctsync_bin() -> std::path::PathBuf {
    env!("CARGO_BIN_EXE_ctsync").into()
}

/// Starts the agent under test in `node` of `lab`.
pub fn start_agent(
    lab: &xtask::lab::Lab,
    node: xtask::lab::Node,
    name: &str,
    extra_config: &str,
) -> AgentProcess {
    AgentProcess::start(lab, node, &ctsync_bin(), name, extra_config)
        .unwrap_or_else(|e| panic!("{e:#}"))
}

/// Panics with the difference unless the agent's cache converges to `expected`.
pub fn assert_converges(
    agent: &AgentProcess,
    secs: u64,
    mut expected: impl FnMut() -> Vec<Entry>,
) -> usize {
    agent
        .wait_converged(std::time::Duration::from_secs(secs), || Ok(expected()))
        .unwrap_or_else(|e| panic!("{e:#}"))
}

pub fn stats(agent: &AgentProcess) -> serde_json::Value {
    agent
        .stats()
        .unwrap_or_else(|e| panic!("{e:#}\n{}", agent.log()))
}

/// How the backup receives the peer's data datagrams (`sync.xdp`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Receive {
    /// XDP in the veth driver.
    Native,
    /// XDP in the kernel's generic hook.
    Generic,
    /// No XDP: the agent's socket.
    Socket,
}

impl Receive {
    pub fn xdp(self) -> &'static str {
        match self {
            Receive::Native => "native",
            Receive::Generic => "generic",
            Receive::Socket => "off",
        }
    }
}

/// A counter of the XDP program (`stats.sync.xdp.counters`), 0 without XDP.
pub fn xdp_counter(stats: &serde_json::Value, name: &str) -> u64 {
    stats["sync"]["xdp"]["counters"][name].as_u64().unwrap_or(0)
}

/// [`agent_pair`] with the receive path set, checked: a test meant for
/// XDP must not pass on a silent fallback to the socket.
pub fn agent_pair_in(
    lab: &xtask::lab::Lab,
    name: &str,
    receive: Receive,
    extra_config: &str,
) -> (AgentProcess, AgentProcess) {
    let pair = xtask::agent::start_pair_with(
        lab,
        &ctsync_bin(),
        &format!("{}-{name}", lab.prefix()),
        &format!("xdp = \"{}\"\n", receive.xdp()),
        extra_config,
    )
    .unwrap_or_else(|e| panic!("{e:#}"));
    for agent in [&pair.0, &pair.1] {
        let s = stats(agent);
        let xdp = &s["sync"]["xdp"];
        match receive {
            Receive::Socket => assert!(xdp["off"].is_string(), "{xdp}"),
            _ => {
                let links = xdp["links"]
                    .as_array()
                    .unwrap_or_else(|| panic!("XDP did not attach: {xdp}\n{}", agent.log()));
                assert_eq!(links.len(), 2, "{xdp}");
                for l in links {
                    assert_eq!(l["mode"], receive.xdp(), "{xdp}");
                }
            }
        }
    }
    pair
}

/// Agents on fw1 and fw2 replicating to each other over both sync links,
/// with `extra_config` (TOML) after the sync section.
pub fn agent_pair(
    lab: &xtask::lab::Lab,
    name: &str,
    extra_config: &str,
) -> (AgentProcess, AgentProcess) {
    xtask::agent::start_pair(
        lab,
        &ctsync_bin(),
        &format!("{}-{name}", lab.prefix()),
        extra_config,
    )
    .unwrap_or_else(|e| panic!("{e:#}"))
}

/// A firewall's kernel table (`conntrack -L`) without the replication
/// traffic itself (the agents ignore their sync links' addresses).
pub fn fw_table(lab: &xtask::lab::Lab, fw: xtask::lab::Fw) -> Vec<Entry> {
    xtask::ctcompare::without_sync_links(
        xtask::ctcompare::kernel_table(Some(lab.ns(fw))).unwrap_or_else(|e| panic!("{e:#}")),
    )
}

/// Runs `ctgen` with `args` on `fw` and waits; panics unless it succeeds.
pub fn ctgen_on(lab: &xtask::lab::Lab, fw: xtask::lab::Fw, args: &[&str]) {
    let bin = workspace_bin("ctgen");
    let mut argv = vec![bin.to_str().unwrap()];
    argv.extend(args);
    let out = lab
        .exec(fw, &argv)
        .unwrap_or_else(|e| panic!("ctgen {}: {e:#}", args.join(" ")));
    assert!(out.status.success());
}

/// A firewall's kernel table read through ctnetlink (a dump) and decoded by
/// ctsync's codec, keyed by original tuple (with zone): the attributes that
/// `conntrack -L` does not print, such as the SCTP verification tags.
pub fn fw_ctnetlink_table(
    lab: &xtask::lab::Lab,
    fw: xtask::lab::Fw,
) -> std::collections::HashMap<ctsync_common::Tuple, (ctsync_common::CtRecord, ctsync_common::CtExt)>
{
    use ctsync::ctnetlink::{self, Decoded, encode};
    let dump = || -> Result<_, String> {
        let sock = ctsync::nlsock::NlSocket::open(0, false).map_err(|e| e.to_string())?;
        sock.set_recv_buffer(8 << 20).map_err(|e| e.to_string())?;
        let mut req = Vec::new();
        encode::dump_request(&mut req, 1);
        sock.send(&req).map_err(|e| e.to_string())?;
        let mut buf = vec![0u8; 1 << 20];
        let mut out = std::collections::HashMap::new();
        loop {
            let n = sock.recv(&mut buf).map_err(|e| e.to_string())?;
            for msg in ctnetlink::messages(&buf[..n]) {
                let msg = msg.map_err(|e| e.to_string())?;
                let mut rec = Default::default();
                let mut ext = Default::default();
                match ctnetlink::decode(msg, &mut rec, &mut ext).map_err(|e| e.to_string())? {
                    Decoded::Conntrack { .. } => {
                        out.insert(rec.orig, (rec, ext));
                    }
                    Decoded::Done => return Ok(out),
                    Decoded::Error { errno } => {
                        return Err(format!(
                            "dump failed: {}",
                            std::io::Error::from_raw_os_error(errno)
                        ));
                    }
                    _ => {}
                }
            }
        }
    };
    lab.in_ns(fw, dump)
        .unwrap_or_else(|e| panic!("{e:#}"))
        .unwrap_or_else(|e| panic!("ctnetlink dump on {fw}: {e}"))
}

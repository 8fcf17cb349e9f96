//! keepalived (Debian's) on the lab's firewalls: VRRP for the LAN and WAN
//! virtual addresses in one sync group, whose notify lines call
//! `ctsync notify master|backup|fault` on the firewall's agent. Used by the
//! failover tests and the demo; `examples/keepalived.conf` is the same
//! configuration for a real pair.

use std::{
    path::{Path, PathBuf},
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::agent::AgentProcess;
use crate::lab::{Fw, LAN_IF, LAN_VIP_V4, LAN_VIP_V6, Lab, PREFIX_V4, PREFIX_V6, WAN_IF};

/// VRRP advertisement interval (vrrp_version 3 allows sub-second ones):
/// the backup takes over about 3.6 intervals after the master goes silent.
pub const ADVERT_INT: &str = "0.1";

/// What the notify lines run.
#[derive(Clone, Debug)]
pub enum Notify {
    /// `ctsync --socket SOCKET notify STATE`.
    Ctsync {
        /// The ctsync binary.
        ctsync: PathBuf,
        /// The agent's control socket.
        socket: PathBuf,
    },
    /// `SCRIPT STATE` (as conntrackd's primary-backup.sh is called).
    Script(PathBuf),
}

impl Notify {
    /// The notify line's command for `state` (master, backup, fault).
    fn command(&self, state: &str) -> String {
        match self {
            Notify::Ctsync { ctsync, socket } => format!(
                "{} --socket {} notify {state}",
                ctsync.display(),
                socket.display()
            ),
            Notify::Script(script) => format!("{} {state}", script.display()),
        }
    }
}

/// keepalived's configuration for `fw`: four instances (IPv4 and IPv6 on
/// the LAN and the WAN) in one sync group, so the addresses move together;
/// fw1 has the higher priority. Without `notify`, no ctsync is called (the
/// control case: failover without state sync).
pub fn config(fw: Fw, notify: Option<&Notify>) -> String {
    let priority = match fw {
        Fw::Fw1 => 150,
        Fw::Fw2 => 100,
    };
    let mut s = format!(
        "global_defs {{\n  router_id ctsync-{fw}\n  vrrp_version 3\n  script_user root\n  \
         vrrp_garp_master_repeat 2\n  vrrp_garp_master_refresh 0\n}}\n\n"
    );
    s += "vrrp_sync_group FIREWALL {\n  group {\n    LAN4\n    LAN6\n    WAN4\n    WAN6\n  }\n";
    if let Some(n) = notify {
        for state in ["master", "backup", "fault"] {
            s += &format!("  notify_{state} \"{}\"\n", n.command(state));
        }
    }
    s += "}\n";
    let wan_v4 = crate::lab::WAN_VIP_V4;
    let wan_v6 = crate::lab::WAN_VIP_V6;
    let instances = [
        ("LAN4", LAN_IF, 51, format!("{LAN_VIP_V4}/{PREFIX_V4}")),
        ("LAN6", LAN_IF, 52, format!("{LAN_VIP_V6}/{PREFIX_V6}")),
        ("WAN4", WAN_IF, 53, format!("{wan_v4}/{PREFIX_V4}")),
        ("WAN6", WAN_IF, 54, format!("{wan_v6}/{PREFIX_V6}")),
    ];
    for (name, dev, vrid, vip) in instances {
        s += &format!(
            "\nvrrp_instance {name} {{\n  state BACKUP\n  interface {dev}\n  \
             virtual_router_id {vrid}\n  priority {priority}\n  advert_int {ADVERT_INT}\n  \
             virtual_ipaddress {{\n    {vip} dev {dev}\n  }}\n}}\n"
        );
    }
    s
}

/// A keepalived in a firewall's namespace, killed on drop.
pub struct Keepalived {
    child: Child,
    pub fw: Fw,
    dir: PathBuf,
}

impl Keepalived {
    /// Starts keepalived on `fw` with [`config`], its files in `dir`.
    pub fn start(lab: &Lab, fw: Fw, notify: Option<&Notify>, dir: &Path) -> Result<Keepalived> {
        let dir = dir.join(format!("keepalived-{fw}"));
        std::fs::create_dir_all(&dir)?;
        let conf = dir.join("keepalived.conf");
        std::fs::write(&conf, config(fw, notify))?;
        let log = std::fs::File::create(dir.join("keepalived.log"))?;
        let f = |n: &str| dir.join(n).display().to_string();
        let mut cmd = lab.command(
            fw,
            &[
                "keepalived",
                "--dont-fork",
                "--log-console",
                "--log-detail",
                "--vrrp",
                "--use-file",
                &conf.display().to_string(),
                "--pid",
                &f("keepalived.pid"),
                "--vrrp_pid",
                &f("vrrp.pid"),
                "--checkers_pid",
                &f("checkers.pid"),
            ],
        );
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let child = cmd.spawn().context(
            "starting keepalived (apt-get install keepalived; `cargo xtask setup` does)",
        )?;
        Ok(Keepalived { child, fw, dir })
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("keepalived.log")).unwrap_or_default()
    }

    /// Kills keepalived at once (SIGKILL: no farewell advertisement, as
    /// when the firewall dies).
    pub fn kill(&mut self) {
        // The VRRP child first: the parent's death would make it say
        // goodbye (a priority-0 advertisement), which a dead firewall can't.
        if let Ok(pid) = std::fs::read_to_string(self.dir.join("vrrp.pid"))
            && let Ok(pid) = pid.trim().parse::<i32>()
        {
            // SAFETY: plain syscall.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        // SAFETY: plain syscall on our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

impl Drop for Keepalived {
    fn drop(&mut self) {
        // SAFETY: plain syscall on our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

/// Waits until `fw` holds every virtual address. (The other may still hold
/// some: a firewall that died with its links cut keeps its addresses.)
pub fn wait_master(lab: &Lab, fw: Fw, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let mine = lab.vips_on(fw)?;
        if mine.len() == crate::lab::VIPS.len() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{fw} did not become VRRP master within {timeout:?}: it holds {mine:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// keepalived on both firewalls, fw1 first (the higher priority), fw2 once
/// fw1 holds the addresses. With `agents` (fw1's, fw2's), the notify lines
/// call them; without, keepalived moves the addresses and nothing else.
pub fn start_pair(
    lab: &Lab,
    ctsync: &Path,
    dir: &Path,
    agents: Option<(&AgentProcess, &AgentProcess)>,
) -> Result<(Keepalived, Keepalived)> {
    let notify = |a: &AgentProcess| Notify::Ctsync {
        ctsync: ctsync.to_owned(),
        socket: a.socket.clone(),
    };
    let (n1, n2) = match agents {
        Some((a1, a2)) => (Some(notify(a1)), Some(notify(a2))),
        None => (None, None),
    };
    start_pair_notify(lab, dir, n1, n2)
}

/// [`start_pair`] with fw1's and fw2's notify lines calling what `n1` and
/// `n2` say.
pub fn start_pair_notify(
    lab: &Lab,
    dir: &Path,
    n1: Option<Notify>,
    n2: Option<Notify>,
) -> Result<(Keepalived, Keepalived)> {
    let k1 = Keepalived::start(lab, Fw::Fw1, n1.as_ref(), dir)?;
    wait_master(lab, Fw::Fw1, Duration::from_secs(20))
        .with_context(|| format!("keepalived on fw1:\n{}", k1.log()))?;
    let k2 = Keepalived::start(lab, Fw::Fw2, n2.as_ref(), dir)?;
    Ok((k1, k2))
}

/// fw1 dies: its keepalived is killed and its LAN and WAN links cut, at
/// once (kill its agent first if it should die too). Returns when fw2
/// holds every address, with the time that took.
pub fn fail_fw1(lab: &Lab, k1: &mut Keepalived, k2: &Keepalived) -> Result<Duration> {
    let t0 = Instant::now();
    k1.kill();
    for dev in [LAN_IF, WAN_IF] {
        lab.exec(Fw::Fw1, &["ip", "link", "set", dev, "down"])?;
    }
    wait_master(lab, Fw::Fw2, Duration::from_secs(10))
        .with_context(|| format!("keepalived on fw2:\n{}", k2.log()))?;
    Ok(t0.elapsed())
}

/// fw1's keepalived is stopped (SIGTERM: it says goodbye with a priority-0
/// advertisement, as at a planned switch-over); fw1 stays up. Returns when
/// fw2 holds every address, with the time that took.
pub fn stop_fw1(lab: &Lab, k1: &mut Keepalived, k2: &Keepalived) -> Result<Duration> {
    let t0 = Instant::now();
    // SAFETY: plain syscall on our own child.
    unsafe { libc::kill(k1.child.id() as i32, libc::SIGTERM) };
    let _ = k1.child.wait();
    wait_master(lab, Fw::Fw2, Duration::from_secs(10))
        .with_context(|| format!("keepalived on fw2:\n{}", k2.log()))?;
    Ok(t0.elapsed())
}

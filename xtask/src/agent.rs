//! A `ctsync run` in a lab namespace, with its own config file and control
//! socket, stopped (SIGTERM) on drop. Used by the demo and the kernel tests.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::{
    ctcompare::{self, Entry},
    lab::{Lab, Node},
};

/// The `[sync]` config for the agent on `fw`: both lab sync links, towards
/// the other firewall.
pub fn sync_config(fw: crate::lab::Fw) -> String {
    sync_config_with(fw, "")
}

/// [`sync_config`] with more `[sync]` keys (TOML lines, e.g. `xdp = "off"`).
pub fn sync_config_with(fw: crate::lab::Fw, sync_keys: &str) -> String {
    let (me, peer) = (fw, fw.other());
    let mut s = format!("[sync]\nport = 3780\n{sync_keys}");
    for link in 0..2 {
        s += &format!(
            "[[sync.links]]\ninterface = \"{}\"\nlocal = \"{}\"\npeer = \"{}\"\n",
            crate::lab::SYNC_IFS[link],
            me.sync_v4(link),
            peer.sync_v4(link)
        );
    }
    s
}

/// `bin run` on fw1 and fw2, replicating to each other over both sync links
/// ([`sync_config`], then `extra_config`), named `{name}-fw1`/`{name}-fw2`.
pub fn start_pair(
    lab: &crate::lab::Lab,
    bin: &Path,
    name: &str,
    extra_config: &str,
) -> Result<(AgentProcess, AgentProcess)> {
    start_pair_with(lab, bin, name, "", extra_config)
}

/// [`start_pair`] with more `[sync]` keys (see [`sync_config_with`]).
pub fn start_pair_with(
    lab: &crate::lab::Lab,
    bin: &Path,
    name: &str,
    sync_keys: &str,
    extra_config: &str,
) -> Result<(AgentProcess, AgentProcess)> {
    use crate::lab::Fw;
    let start = |fw: Fw| {
        let cfg = format!("{}{extra_config}", sync_config_with(fw, sync_keys));
        AgentProcess::start(lab, fw.node(), bin, &format!("{name}-{fw}"), &cfg)
    };
    Ok((start(Fw::Fw1)?, start(Fw::Fw2)?))
}

/// Where lab agents pin their XDP external cache: a bpffs outside /sys,
/// which `ip netns exec` remounts (a pin under it would vanish with the
/// agent's mount namespace, and with it the restart-survival under test).
pub const LAB_BPFFS: &str = "/run/ctsync-lab/bpf";

/// Mounts the lab's bpffs on the host, once.
pub fn ensure_lab_bpffs() -> Result<()> {
    let mounts =
        std::fs::read_to_string("/proc/self/mounts").context("reading /proc/self/mounts")?;
    if mounts
        .lines()
        .any(|l| l.split(' ').nth(1) == Some(LAB_BPFFS) && l.split(' ').nth(2) == Some("bpf"))
    {
        return Ok(());
    }
    std::fs::create_dir_all(LAB_BPFFS).with_context(|| format!("creating {LAB_BPFFS}"))?;
    let st = Command::new("mount")
        .args(["-t", "bpf", "bpf", LAB_BPFFS])
        .status()
        .context("running mount")?;
    if !st.success() {
        bail!("mount -t bpf bpf {LAB_BPFFS} failed ({st})");
    }
    Ok(())
}

pub struct AgentProcess {
    pub child: Child,
    /// The agent's XDP pin directory (removed with the agent).
    pin_dir: Option<PathBuf>,
    /// Holds the config, the control socket and the log.
    pub dir: PathBuf,
    pub socket: PathBuf,
    pub config: PathBuf,
    bin: PathBuf,
}

impl AgentProcess {
    /// Starts `bin run` in `node`'s namespace with `extra_config` (TOML)
    /// after a `[general]` section that points the control socket into a
    /// fresh directory named after `name`, and waits until it answers.
    pub fn start(
        lab: &Lab,
        node: Node,
        bin: &Path,
        name: &str,
        extra_config: &str,
    ) -> Result<AgentProcess> {
        let dir = std::env::temp_dir().join(format!("ctsync-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let socket = dir.join("ctsync.sock");
        let config = dir.join("ctsync.toml");
        // Replicating agents pin their XDP external cache in the lab's
        // bpffs, unless the config says where.
        let mut pin_dir = None;
        let mut extra_config = extra_config.to_owned();
        if extra_config.contains("[sync]\n") && !extra_config.contains("xdp_pin_dir") {
            ensure_lab_bpffs()?;
            let d = Path::new(LAB_BPFFS).join(format!("{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&d);
            extra_config = extra_config.replacen(
                "[sync]\n",
                &format!("[sync]\nxdp_pin_dir = {:?}\n", d.display().to_string()),
                1,
            );
            pin_dir = Some(d);
        }
        std::fs::write(
            &config,
            format!(
                "[general]\ncontrol_socket = {:?}\nlog_level = \"info\"\n{extra_config}",
                socket.display().to_string()
            ),
        )?;
        let log = std::fs::File::create(dir.join("agent.log"))?;
        let child = Command::new("ip")
            .args(["netns", "exec", lab.ns(node)])
            .arg(bin)
            .args(["run", "--config"])
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {} run", bin.display()))?;
        let mut agent = AgentProcess {
            child,
            pin_dir,
            dir,
            socket,
            config,
            bin: bin.to_owned(),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while agent.ctl(&["stats", "--json"]).is_err() {
            if let Some(st) = agent.child.try_wait()? {
                bail!("the agent exited ({st}) during start-up:\n{}", agent.log());
            }
            if Instant::now() > deadline {
                bail!("the agent did not answer within 30 s:\n{}", agent.log());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(agent)
    }

    /// What the agent logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("agent.log")).unwrap_or_default()
    }

    /// Runs a `ctsync` CLI verb against this agent; stdout, or stderr as the error.
    pub fn ctl(&self, args: &[&str]) -> Result<String> {
        let o = Command::new(&self.bin)
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .output()?;
        if !o.status.success() {
            bail!(
                "ctsync {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&o.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&o.stdout).into_owned())
    }

    pub fn stats(&self) -> Result<Value> {
        Ok(serde_json::from_str(&self.ctl(&["stats", "--json"])?)?)
    }

    /// The internal cache, normalised and sorted.
    pub fn dump_internal(&self) -> Result<Vec<Entry>> {
        self.dump("internal")
    }

    /// A cache (`internal` or `external`), normalised and sorted.
    pub fn dump(&self, which: &str) -> Result<Vec<Entry>> {
        ctcompare::parse_ctsync_dump(&self.ctl(&["dump", which, "--json"])?)
    }

    /// Polls until the internal cache equals `expected()` for up to `timeout`;
    /// returns the entry count, or the difference as the error.
    pub fn wait_converged(
        &self,
        timeout: Duration,
        expected: impl FnMut() -> Result<Vec<Entry>>,
    ) -> Result<usize> {
        self.wait_cache_equals("internal", timeout, expected)
    }

    /// Polls until cache `which` equals `expected()` for up to `timeout`.
    pub fn wait_cache_equals(
        &self,
        which: &str,
        timeout: Duration,
        mut expected: impl FnMut() -> Result<Vec<Entry>>,
    ) -> Result<usize> {
        let deadline = Instant::now() + timeout;
        loop {
            let k = expected()?;
            let a = self.dump(which)?;
            if k == a {
                return Ok(k.len());
            }
            if Instant::now() > deadline {
                bail!(
                    "the {which} cache did not converge within {timeout:?}: {}\nagent log:\n{}",
                    ctcompare::diff(&k, &a),
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// Stops the agent the hard way (a crash), keeping its directory.
    /// Polls `ctsync stats` until the last `notify` it ran is `state`
    /// (keepalived runs notify lines in the background) and returns that
    /// notify's report. Fails if the notify failed.
    pub fn wait_notify(&self, state: &str, timeout: Duration) -> Result<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let s = self.stats()?;
            let last = &s["last_notify"];
            if last["state"] == state {
                if !last["error"].is_null() {
                    bail!("notify {state} failed: {last}");
                }
                return Ok(last.clone());
            }
            if Instant::now() > deadline {
                bail!(
                    "no notify {state} within {timeout:?} (last: {last})\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn kill(&mut self) {
        self.signal(libc::SIGKILL);
        let _ = self.child.wait();
    }

    /// Starts the agent again with the same config (after `kill`).
    pub fn restart(&mut self, lab: &Lab, node: Node) -> Result<()> {
        let log = std::fs::OpenOptions::new()
            .append(true)
            .open(self.dir.join("agent.log"))?;
        self.child = Command::new("ip")
            .args(["netns", "exec", lab.ns(node)])
            .arg(&self.bin)
            .args(["run", "--config"])
            .arg(&self.config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.ctl(&["stats", "--json"]).is_err() {
            if Instant::now() > deadline {
                bail!(
                    "the restarted agent did not answer within 30 s:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }

    /// Sends a signal to the agent (e.g. SIGSTOP/SIGCONT in tests).
    pub fn signal(&self, sig: i32) {
        // SAFETY: plain syscall on our own child.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        self.signal(libc::SIGTERM);
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
        if let Some(d) = &self.pin_dir {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

//! Debian's conntrackd on a lab firewall, FT-FW over UDP on the first sync
//! link towards the other firewall: the contender the benchmarks compare
//! ctsync with. Stopped (SIGTERM) on drop.

use std::{
    path::{Path, PathBuf},
    process::{Child, Stdio},
    time::Duration,
};

use anyhow::{Context, Result, bail};

use crate::{exec, lab::Fw, lab::Lab};

pub struct Conntrackd {
    child: Child,
    dir: PathBuf,
    pub fw: Fw,
}

impl Conntrackd {
    /// Starts conntrackd on `fw` with [`config`], its files in `dir/<fw>`,
    /// and fails if it exits within its first two seconds.
    pub fn start(lab: &Lab, fw: Fw, dir: &Path) -> Result<Conntrackd> {
        Conntrackd::start_with(lab, fw, dir, Backup::ExternalCache)
    }

    /// [`Conntrackd::start`], keeping the peer's state as `backup` says.
    pub fn start_with(lab: &Lab, fw: Fw, dir: &Path, backup: Backup) -> Result<Conntrackd> {
        let dir = dir.join(format!("conntrackd-{fw}"));
        std::fs::create_dir_all(&dir)?;
        let cfg = dir.join("conntrackd.conf");
        std::fs::write(&cfg, config(&dir, fw, backup))?;
        let child = lab
            .command(fw.node(), &["conntrackd", "-C", path_str(&cfg)?])
            .stdout(Stdio::null())
            .spawn()
            .context("starting conntrackd (installed by `cargo xtask setup`)")?;
        let mut c = Conntrackd { child, dir, fw };
        std::thread::sleep(Duration::from_secs(2));
        if let Some(st) = c.child.try_wait()? {
            bail!("conntrackd on {fw} exited ({st}):\n{}", c.log());
        }
        Ok(c)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its configuration file (for `conntrackd -C FILE <command>` from scripts).
    pub fn config_path(&self) -> PathBuf {
        self.dir.join("conntrackd.conf")
    }

    /// Kills it at once (SIGKILL, as when the firewall dies).
    pub fn kill(&mut self) {
        // SAFETY: plain syscall on our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGKILL) };
        let _ = self.child.wait();
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("conntrackd.log")).unwrap_or_default()
    }

    /// `conntrackd <args>` against this daemon (its UNIX socket), in `fw`'s
    /// namespace (the commit writes to that namespace's table).
    pub fn ctl(&self, lab: &Lab, args: &[&str]) -> Result<String> {
        let cfg = self.config_path();
        let mut argv = vec!["conntrackd", "-C", path_str(&cfg)?];
        argv.extend_from_slice(args);
        exec::stdout(&mut lab.command(self.fw.node(), &argv))
    }

    /// Entries in the external cache (`conntrackd -e`, one per line).
    pub fn external_entries(&self, lab: &Lab) -> Result<usize> {
        Ok(self
            .ctl(lab, &["-e"])?
            .lines()
            .filter(|l| l.contains("src="))
            .count())
    }

    /// Entries in the external cache from `conntrackd -s` (its counter:
    /// cheap to poll, unlike a dump of every entry with `-e`).
    pub fn external_count(&self, lab: &Lab) -> Result<u64> {
        let out = self.ctl(lab, &["-s"])?;
        external_active(&out)
            .with_context(|| format!("no external cache count in `conntrackd -s`:\n{out}"))
    }
}

/// "current active connections" of the "cache external:" section of
/// `conntrackd -s`.
fn external_active(stats: &str) -> Option<u64> {
    let mut lines = stats
        .lines()
        .skip_while(|l| !l.trim_start().starts_with("cache external"));
    lines.next()?;
    let line = lines.find(|l| l.contains("current active connections"))?;
    line.rsplit(':').next()?.trim().parse().ok()
}

impl Drop for Conntrackd {
    fn drop(&mut self) {
        // SAFETY: plain syscall on our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

fn path_str(p: &Path) -> Result<&str> {
    p.to_str().context("temporary path is not UTF-8")
}

/// Where a conntrackd backup keeps the peer's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backup {
    /// In its external cache, committed at takeover (the default).
    ExternalCache,
    /// Straight in the kernel table (`DisableExternalCache on`).
    KernelTable,
}

/// conntrackd as Debian ships it, FT-FW over UDP on the first sync link
/// towards the other firewall, with buffers and hash sized for a million
/// entries.
pub fn config(dir: &Path, fw: Fw, backup: Backup) -> String {
    let d = dir.display();
    let (me, peer) = (fw.sync_v4(0), fw.other().sync_v4(0));
    let disable = match backup {
        Backup::ExternalCache => "",
        Backup::KernelTable => "        DisableExternalCache on\n",
    };
    format!(
        r#"Sync {{
    Mode FTFW {{
{disable}    }}
    UDP {{
        IPv4_address {me}
        IPv4_Destination_Address {peer}
        Port 3780
        Interface sync0
        SndSocketBuffer 1249280
        RcvSocketBuffer 1249280
        Checksum on
    }}
}}
General {{
    Systemd off
    HashSize 65536
    HashLimit 4194304
    LogFile {d}/conntrackd.log
    LockFile {d}/conntrackd.lock
    UNIX {{
        Path {d}/conntrackd.sock
    }}
    NetlinkBufferSize 8388608
    NetlinkBufferSizeMaxGrowth 134217728
    Filter From Kernelspace {{
        Address Ignore {{
            IPv4_address 127.0.0.1
            IPv6_address ::1
        }}
    }}
}}
"#
    )
}

#[cfg(test)]
mod tests {
    use super::external_active;

    #[test]
    fn external_count_from_stats() {
        let s = "cache internal:\ncurrent active connections:                4\n\
                 connections created:                       4    failed:            0\n\n\
                 cache external:\ncurrent active connections:           1234\n\
                 connections created:                       0    failed:            0\n";
        assert_eq!(external_active(s), Some(1234));
        assert_eq!(
            external_active("cache internal:\ncurrent active connections: 4\n"),
            None
        );
    }
}

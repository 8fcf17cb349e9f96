//! `cargo xtask setup`: checks, and installs where it can, what building ctsync
//! and running its lab need. Idempotent, and fast (well under a second) when
//! everything is there, so other commands call [`ensure`] every time.
//!
//! Checks, one line each: Debian packages, the pinned Rust toolchain and its
//! components, bpf-linker, kernel connection tracking, the BPF filesystem.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::exec;

/// Debian packages and why ctsync needs each.
pub const APT_PACKAGES: &[(&str, &str)] = &[
    ("llvm-22-dev", "bpf-linker is built against LLVM 22"),
    ("libpolly-22-dev", "bpf-linker links LLVM's Polly"),
    ("libzstd-dev", "bpf-linker links zstd"),
    ("iproute2", "lab: ip, tc"),
    ("nftables", "lab: firewall rules"),
    ("ethtool", "lab: veth offloads"),
    ("conntrack", "tests: conntrack -L/-E"),
    ("conntrackd", "bench: the baseline"),
    ("keepalived", "tests: VRRP failover"),
    ("iputils-ping", "tests: ping"),
    ("curl", "tests: scrape the metrics endpoint"),
    ("procps", "tests: ps, pgrep"),
    (
        "linux-libc-dev",
        "tests: the ctnetlink constants are checked against the kernel UAPI headers",
    ),
];

/// Packages whose Debian install may start a system-wide daemon; the lab runs
/// its own instances in namespaces instead.
const DAEMONS: &[&str] = &["conntrackd", "keepalived"];

const BPF_LINKER_VERSION: &str = "0.13.0";
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";
const BPF_FS: &str = "/sys/fs/bpf";

/// The workspace's toolchain file: the single source of the pinned version.
const TOOLCHAIN_TOML: &str = include_str!("../../rust-toolchain.toml");

/// Runs every check, printing one line each, and fixes what it can. Needs root.
pub fn run() -> Result<()> {
    Setup { verbose: true }.run()
}

/// Like [`run`], but prints only what it changed or found missing: for commands
/// that make sure of the prerequisites before they start.
pub fn ensure() -> Result<()> {
    Setup { verbose: false }.run()
}

/// The path of `program` as found on `PATH`, like `which`.
pub fn find_in_path(program: &str) -> Option<PathBuf> {
    env::split_paths(&env::var_os("PATH")?)
        .map(|dir| dir.join(program))
        .find(|path| path.is_file())
}

struct Setup {
    verbose: bool,
}

/// A check that could not be fixed: what, and what the user should do.
struct Missing(String);

impl Setup {
    fn run(&self) -> Result<()> {
        // SAFETY: geteuid has no preconditions and cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            bail!(
                "`cargo xtask setup` installs packages and mounts bpffs: run it as root (e.g. `sudo -E cargo xtask setup`)"
            );
        }
        let mut missing = Vec::new();
        for check in [Self::apt, Self::rust, Self::bpf_linker, Self::kernel] {
            if let Err(m) = check(self) {
                missing.push(m);
            }
        }
        if missing.is_empty() {
            return Ok(());
        }
        let list: Vec<String> = missing
            .into_iter()
            .map(|Missing(m)| format!("  - {m}"))
            .collect();
        bail!("setup is incomplete:\n{}", list.join("\n"))
    }

    fn ok(&self, what: &str) {
        if self.verbose {
            println!("ok         {what}");
        }
    }

    fn changed(&self, verb: &str, what: &str) {
        println!("{verb:<10} {what}");
    }

    fn missing(&self, what: &str, todo: String) -> Missing {
        println!("MISSING    {what}: {todo}");
        Missing(format!("{what}: {todo}"))
    }

    fn apt(&self) -> Result<(), Missing> {
        let names: Vec<&str> = APT_PACKAGES.iter().map(|(name, _)| *name).collect();
        // One dpkg-query for all: it prints the known ones and exits 1 if any is
        // unknown, which is just "missing" here.
        let out = Command::new("dpkg-query")
            .args(["-W", "-f=${Package}\t${Status}\n"])
            .args(&names)
            .output()
            .map_err(|e| {
                self.missing(
                    "dpkg-query",
                    format!(
                        "{e}: setup installs with apt on Debian; install {} yourself",
                        names.join(" ")
                    ),
                )
            })?;
        let installed: Vec<&str> = std::str::from_utf8(&out.stdout)
            .unwrap_or_default()
            .lines()
            .filter_map(|line| line.split_once('\t'))
            .filter(|(_, status)| *status == "install ok installed")
            .map(|(name, _)| name)
            .collect();
        let absent: Vec<&str> = names
            .iter()
            .copied()
            .filter(|n| !installed.contains(n))
            .collect();
        for name in &names {
            if !absent.contains(name) {
                self.ok(&format!("apt {name}"));
            }
        }
        if absent.is_empty() {
            return Ok(());
        }
        let install = || -> Result<()> {
            exec::exec(Command::new("apt-get").arg("update"))?;
            exec::exec(
                Command::new("apt-get")
                    .env("DEBIAN_FRONTEND", "noninteractive")
                    .args(["install", "-y"])
                    .args(&absent),
            )
        };
        if let Err(e) = install() {
            return Err(self.missing(
                &format!("apt {}", absent.join(" ")),
                format!(
                    "installing failed ({e:#}); run `apt-get install {}`",
                    absent.join(" ")
                ),
            ));
        }
        for name in &absent {
            self.changed("installed", &format!("apt {name}"));
        }
        let daemons: Vec<&str> = DAEMONS
            .iter()
            .copied()
            .filter(|d| absent.contains(d))
            .collect();
        if !daemons.is_empty() {
            self.stop_daemons(&daemons);
        }
        Ok(())
    }

    /// Stops and disables the system-wide daemons a package install may have
    /// started; failures are ignored (most often: none was started).
    fn stop_daemons(&self, daemons: &[&str]) {
        let stopped = if Path::new("/run/systemd/system").exists() {
            Command::new("systemctl")
                .args(["disable", "--now"])
                .args(daemons)
                .output()
        } else {
            // No systemd: the packages' SysV scripts may have started them.
            let mut last = None;
            for daemon in daemons {
                let script = format!("/etc/init.d/{daemon}");
                if Path::new(&script).exists() {
                    last = Some(Command::new(&script).arg("stop").output());
                }
            }
            match last {
                Some(result) => result,
                None => return,
            }
        };
        if stopped.is_ok() {
            self.changed(
                "stopped",
                &format!(
                    "system services {}, if the install started them (the lab runs its own)",
                    daemons.join(", ")
                ),
            );
        }
    }

    fn rust(&self) -> Result<(), Missing> {
        let (toolchain, components) = pinned_toolchain();
        let what = format!("rust toolchain {toolchain} ({})", components.join(", "));
        if find_in_path("rustup").is_none() {
            return Err(self.missing(
                &what,
                "rustup is not on PATH: install rustup (https://rustup.rs), or run setup with the PATH that has it (`sudo -E`)".to_owned(),
            ));
        }
        let listed = Command::new("rustup")
            .args([
                "component",
                "list",
                "--installed",
                "--toolchain",
                &toolchain,
            ])
            .output();
        let result = match listed {
            Ok(out) if out.status.success() => {
                let stdout = String::from_utf8_lossy(&out.stdout);
                let absent: Vec<&String> = components
                    .iter()
                    .filter(|c| !stdout.lines().any(|line| component_matches(line.trim(), c)))
                    .collect();
                if absent.is_empty() {
                    self.ok(&what);
                    return Ok(());
                }
                let mut cmd = Command::new("rustup");
                cmd.args(["component", "add", "--toolchain", &toolchain])
                    .args(absent);
                exec::exec(&mut cmd)
            }
            // The toolchain itself is missing.
            _ => {
                let mut cmd = Command::new("rustup");
                cmd.args(["toolchain", "install", &toolchain, "--profile", "minimal"]);
                for c in &components {
                    cmd.args(["--component", c]);
                }
                exec::exec(&mut cmd)
            }
        };
        match result {
            Ok(()) => {
                self.changed("installed", &what);
                Ok(())
            }
            Err(e) => Err(self.missing(&what, format!("{e:#}"))),
        }
    }

    fn bpf_linker(&self) -> Result<(), Missing> {
        let what = format!("bpf-linker {BPF_LINKER_VERSION}");
        let found = if find_in_path("bpf-linker").is_none() {
            "not on PATH".to_owned()
        } else {
            match bpf_linker_version() {
                Ok(v) if v == BPF_LINKER_VERSION => {
                    self.ok(&what);
                    return Ok(());
                }
                Ok(v) => format!("version {v} found"),
                Err(e) => format!("unusable ({e:#})"),
            }
        };
        println!("building   {what}: {found}; this takes 2-3 minutes");
        let (toolchain, _) = pinned_toolchain();
        let todo = format!(
            "install it with `LLVM_PREFIX={LLVM_PREFIX} cargo +{toolchain} install bpf-linker@{BPF_LINKER_VERSION} --locked --no-default-features --features llvm-22` (needs llvm-22-dev, libpolly-22-dev, libzstd-dev) and make sure ~/.cargo/bin is on PATH"
        );
        // `rustup run` rather than `cargo +toolchain`: under `cargo xtask`, the
        // `cargo` on PATH need not be rustup's proxy. Run outside the workspace
        // so that its .cargo/config.toml does not apply.
        let install = exec::exec(
            Command::new("rustup")
                .args(["run", &toolchain, "cargo", "install"])
                .arg(format!("bpf-linker@{BPF_LINKER_VERSION}"))
                .args([
                    "--locked",
                    "--force",
                    "--no-default-features",
                    "--features",
                    "llvm-22",
                ])
                .env("LLVM_PREFIX", LLVM_PREFIX)
                .current_dir(env::temp_dir()),
        );
        if let Err(e) = install {
            return Err(self.missing(&what, format!("building failed ({e:#}); {todo}")));
        }
        match bpf_linker_version() {
            Ok(v) if v == BPF_LINKER_VERSION => {
                self.changed("installed", &what);
                Ok(())
            }
            Ok(v) => Err(self.missing(&what, format!("built it, but `bpf-linker --version` still says {v}: an older one earlier on PATH? {todo}"))),
            Err(e) => Err(self.missing(&what, format!("built it, but {e}; {todo}"))),
        }
    }

    fn kernel(&self) -> Result<(), Missing> {
        let mut result = Ok(());
        // Built into the kernel here; a modular one needs loading first.
        let conntrack = Path::new("/proc/sys/net/netfilter/nf_conntrack_max");
        let what = "kernel connection tracking (/proc/sys/net/netfilter)";
        if conntrack.exists() {
            self.ok(what);
        } else {
            let _ = Command::new("modprobe").arg("nf_conntrack").output();
            if conntrack.exists() {
                self.changed("loaded", what);
            } else {
                result = Err(self.missing(
                    what,
                    "`modprobe nf_conntrack` did not help: install kmod (`apt-get install kmod`) or use a kernel with CONFIG_NF_CONNTRACK".to_owned(),
                ));
            }
        }

        let what = format!("bpffs on {BPF_FS}");
        if bpffs_mounted() {
            self.ok(&what);
        } else if !Path::new(BPF_FS).is_dir() {
            result = Err(self.missing(
                &what,
                format!("{BPF_FS} does not exist: the kernel needs CONFIG_BPF_SYSCALL"),
            ));
        } else {
            match exec::output(Command::new("mount").args(["-t", "bpf", "bpf", BPF_FS])) {
                Ok(_) => self.changed("mounted", &what),
                Err(e) => {
                    result =
                        Err(self.missing(&what, format!("{e:#}; run `mount -t bpf bpf {BPF_FS}`")))
                }
            }
        }
        result
    }
}

/// The version `bpf-linker --version` reports (`bpf-linker 0.13.0` -> `0.13.0`).
fn bpf_linker_version() -> Result<String> {
    let out = exec::stdout(Command::new("bpf-linker").arg("--version"))?;
    out.split_whitespace()
        .nth(1)
        .map(str::to_owned)
        .with_context(|| format!("`bpf-linker --version` printed {out:?}"))
}

fn bpffs_mounted() -> bool {
    std::fs::read_to_string("/proc/self/mounts")
        .unwrap_or_default()
        .lines()
        .any(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            fields.get(1) == Some(&BPF_FS) && fields.get(2) == Some(&"bpf")
        })
}

/// `rustfmt-x86_64-unknown-linux-gnu` is component `rustfmt` for a target triple
/// (three dashes); `rust-src` has no target.
fn component_matches(installed: &str, component: &str) -> bool {
    installed == component
        || installed
            .strip_prefix(component)
            .and_then(|rest| rest.strip_prefix('-'))
            .is_some_and(|triple| triple.matches('-').count() == 3)
}

/// The channel and components of `rust-toolchain.toml`.
fn pinned_toolchain() -> (String, Vec<String>) {
    parse_toolchain(TOOLCHAIN_TOML)
}

fn parse_toolchain(toml: &str) -> (String, Vec<String>) {
    let quoted = |line: &str| -> Vec<String> {
        line.split('"')
            .skip(1)
            .step_by(2)
            .map(str::to_owned)
            .collect()
    };
    let field = |key: &str| {
        toml.lines()
            .map(str::trim)
            .find(|line| line.split('=').next().is_some_and(|k| k.trim() == key))
            .map(quoted)
            .unwrap_or_default()
    };
    let channel = field("channel")
        .into_iter()
        .next()
        .expect("rust-toolchain.toml has channel = \"...\"");
    (channel, field("components"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pinned_toolchain_is_read_from_rust_toolchain_toml() {
        let (channel, components) = pinned_toolchain();
        assert!(channel.starts_with("1."), "{channel}");
        assert!(components.iter().any(|c| c == "rust-src"), "{components:?}");
        let (channel, components) = parse_toolchain(
            "[toolchain]\n# x\nchannel = \"1.98.0\"\ncomponents = [\"rust-src\", \"clippy\"]\n",
        );
        assert_eq!(channel, "1.98.0");
        assert_eq!(components, ["rust-src", "clippy"]);
    }

    #[test]
    fn components_match_with_or_without_target() {
        assert!(component_matches("rust-src", "rust-src"));
        assert!(component_matches(
            "rustfmt-x86_64-unknown-linux-gnu",
            "rustfmt"
        ));
        assert!(!component_matches(
            "rust-std-x86_64-unknown-linux-gnu",
            "rust-src"
        ));
        assert!(!component_matches("rustc-x86_64-unknown-linux-gnu", "rust"));
        assert!(!component_matches(
            "rust-std-x86_64-unknown-linux-gnu",
            "rust"
        ));
    }
}

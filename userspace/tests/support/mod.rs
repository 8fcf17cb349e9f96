//! Shared by the kernel tests: a private network namespace for the calling
//! thread, and the kernel table as `conntrack -L` (the independent oracle)
//! prints it, in a form comparable with the agent's dumps.
#![allow(dead_code)]

use std::{collections::BTreeMap, net::IpAddr, process::Command};

use ctsync::display::{EntryView, IPS_ASSURED, IPS_SEEN_REPLY};

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

/// The fields of an entry that both sides know, normalised for comparison.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Entry {
    pub family: String,
    pub proto: u8,
    pub orig: String,
    pub reply: String,
    pub zone: u16,
    pub mark: u32,
    pub state: Option<String>,
    pub assured: bool,
    pub unreplied: bool,
}

fn tuple_text(t: &ctsync::display::TupleView) -> String {
    let mut s = format!("src={} dst={}", t.src, t.dst);
    if let (Some(sp), Some(dp)) = (t.sport, t.dport) {
        s += &format!(" sport={sp} dport={dp}");
    }
    if let Some((ty, code, id)) = t.icmp {
        s += &format!(" type={ty} code={code} id={id}");
    }
    s
}

impl From<&EntryView> for Entry {
    fn from(e: &EntryView) -> Entry {
        Entry {
            family: e.family.clone(),
            proto: e.proto,
            orig: tuple_text(&e.orig),
            reply: tuple_text(&e.reply),
            zone: e.zone,
            mark: e.mark,
            state: if e.proto == 6 { e.state.clone() } else { None },
            assured: e.status & IPS_ASSURED != 0,
            unreplied: e.status & IPS_SEEN_REPLY == 0,
        }
    }
}

/// Parses one line of `conntrack -L -o extended`.
pub fn parse_conntrack_line(line: &str) -> Option<Entry> {
    let mut words = line.split_whitespace();
    let family = words.next()?.to_string();
    words.next()?; // l3 number
    words.next()?; // protocol name
    let proto: u8 = words.next()?.parse().ok()?;
    words.next()?; // timeout
    let mut tuples: Vec<BTreeMap<String, String>> = vec![BTreeMap::new()];
    let mut e = Entry {
        family,
        proto,
        orig: String::new(),
        reply: String::new(),
        zone: 0,
        mark: 0,
        state: None,
        assured: false,
        unreplied: false,
    };
    for w in words {
        match w.split_once('=') {
            Some(("mark", v)) => e.mark = v.parse().ok()?,
            Some(("zone", v)) => e.zone = v.parse().ok()?,
            Some(("use" | "secctx" | "labels" | "helper", _)) => {}
            Some((k, v)) => {
                let cur = tuples.last_mut().unwrap();
                if k == "src" && cur.contains_key("src") {
                    tuples.push(BTreeMap::new());
                }
                tuples
                    .last_mut()
                    .unwrap()
                    .insert(k.to_string(), v.to_string());
            }
            None if w == "[ASSURED]" => e.assured = true,
            None if w == "[UNREPLIED]" => e.unreplied = true,
            None if w.starts_with('[') => {}
            None if proto == 6 => e.state = Some(w.to_string()),
            None => {}
        }
    }
    let text = |t: &BTreeMap<String, String>| -> Option<String> {
        let src: IpAddr = t.get("src")?.parse().ok()?;
        let dst: IpAddr = t.get("dst")?.parse().ok()?;
        let mut s = format!("src={src} dst={dst}");
        if let (Some(sp), Some(dp)) = (t.get("sport"), t.get("dport")) {
            s += &format!(" sport={sp} dport={dp}");
        }
        if let (Some(ty), Some(code), Some(id)) = (t.get("type"), t.get("code"), t.get("id")) {
            s += &format!(" type={ty} code={code} id={id}");
        }
        Some(s)
    };
    e.orig = text(tuples.first()?)?;
    e.reply = text(tuples.get(1)?)?;
    Some(e)
}

/// The kernel table of the namespace `cmd_prefix` runs in (empty prefix: the
/// calling thread's), both families.
pub fn kernel_table(cmd_prefix: &[&str]) -> Vec<Entry> {
    let mut out = vec![];
    for fam in ["ipv4", "ipv6"] {
        let mut argv: Vec<&str> = cmd_prefix.to_vec();
        argv.extend(["conntrack", "-L", "-o", "extended", "-f", fam]);
        let o = Command::new(argv[0])
            .args(&argv[1..])
            .output()
            .unwrap_or_else(|e| {
                panic!("running {argv:?}: {e} (install conntrack: `cargo xtask setup`)")
            });
        assert!(
            o.status.success(),
            "{argv:?} failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        for line in String::from_utf8_lossy(&o.stdout).lines() {
            match parse_conntrack_line(line) {
                Some(e) => out.push(e),
                None => panic!("cannot parse conntrack output line: {line:?}"),
            }
        }
    }
    out.sort();
    out
}

/// Differences between two sorted entry lists, for assertion messages.
pub fn diff(kernel: &[Entry], agent: &[Entry]) -> String {
    use std::collections::BTreeSet;
    let k: BTreeSet<_> = kernel.iter().collect();
    let a: BTreeSet<_> = agent.iter().collect();
    let only_k: Vec<_> = k.difference(&a).take(5).collect();
    let only_a: Vec<_> = a.difference(&k).take(5).collect();
    format!(
        "kernel {} entries, agent {} entries; {} only in the kernel (first: {:#?}); {} only in the agent (first: {:#?})",
        kernel.len(),
        agent.len(),
        k.difference(&a).count(),
        only_k,
        a.difference(&k).count(),
        only_a
    )
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

/// A `ctsync run` in a lab namespace with its own config and control socket;
/// stopped (SIGTERM) on drop.
pub struct RunningAgent {
    pub child: std::process::Child,
    pub dir: std::path::PathBuf,
    pub socket: std::path::PathBuf,
    pub config: std::path::PathBuf,
}

impl RunningAgent {
    /// Starts the agent with `extra_config` (TOML, appended after the
    /// [general] section this sets) and waits until it answers.
    pub fn start(mut cmd_prefix: Command, name: &str, extra_config: &str) -> RunningAgent {
        let dir = std::env::temp_dir().join(format!("ctsync-test-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let socket = dir.join("ctsync.sock");
        let config = dir.join("ctsync.toml");
        std::fs::write(
            &config,
            format!(
                "[general]\ncontrol_socket = {:?}\nlog_level = \"info\"\n{extra_config}",
                socket.display().to_string()
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.join("agent.log")).unwrap();
        let child = cmd_prefix
            .arg(ctsync_bin())
            .args(["run", "--config"])
            .arg(&config)
            .stdin(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting ctsync run");
        let mut agent = RunningAgent {
            child,
            dir,
            socket,
            config,
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while !agent.socket.exists() || agent.ctl(&["stats", "--json"]).is_err() {
            if let Ok(Some(st)) = agent.child.try_wait() {
                panic!("the agent exited ({st}) during start-up:\n{}", agent.log());
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the agent did not answer within 30 s:\n{}",
                agent.log()
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        agent
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("agent.log")).unwrap_or_default()
    }

    /// Runs a `ctsync` CLI verb against this agent (from the root namespace:
    /// the control socket is a file).
    pub fn ctl(&self, args: &[&str]) -> Result<String, String> {
        let o = Command::new(ctsync_bin())
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .output()
            .map_err(|e| e.to_string())?;
        if o.status.success() {
            Ok(String::from_utf8_lossy(&o.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&o.stderr).into_owned())
        }
    }

    pub fn stats(&self) -> serde_json::Value {
        let out = self
            .ctl(&["stats", "--json"])
            .unwrap_or_else(|e| panic!("ctsync stats: {e}\n{}", self.log()));
        serde_json::from_str(&out).unwrap()
    }

    pub fn dump(&self) -> Vec<Entry> {
        let out = self
            .ctl(&["dump", "internal", "--json"])
            .unwrap_or_else(|e| panic!("ctsync dump: {e}\n{}", self.log()));
        let views: Vec<EntryView> = serde_json::from_str(&out).unwrap();
        let mut v: Vec<Entry> = views.iter().map(Entry::from).collect();
        v.sort();
        v
    }

    /// Polls until the agent's cache equals `kernel()` (both sorted), for up to
    /// `secs`; panics with the difference otherwise.
    pub fn assert_converges(&self, secs: u64, mut kernel: impl FnMut() -> Vec<Entry>) -> usize {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
        loop {
            let k = kernel();
            let a = self.dump();
            if k == a {
                return k.len();
            }
            if std::time::Instant::now() > deadline {
                panic!(
                    "the internal cache did not converge to the kernel table: {}\nagent log:\n{}",
                    diff(&k, &a),
                    self.log()
                );
            }
            std::thread::sleep(std::time::Duration::from_millis(500));
        }
    }
}

impl Drop for RunningAgent {
    fn drop(&mut self) {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

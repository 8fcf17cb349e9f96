//! `cargo xtask bench`: measurements, not tests. Prints a report.
//!
//! - `ctsync-bench decode` and `memory`: decode cost per real kernel event,
//!   internal-cache memory per entry.
//! - events side by side: ctsync and conntrackd (Debian's, FT-FW over UDP on
//!   the sync link) each run alone on fw1 while `ctgen` creates and then
//!   deletes the same entries; their CPU time per event is read from
//!   /proc/PID/stat and reported as a ratio.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use xtask::{
    agent::{AgentProcess, sync_config},
    build, exec,
    lab::{Fw, Lab, LabOptions, Node},
    setup,
};

#[derive(clap::Args)]
pub struct Args {
    /// Entries created then deleted per contender (two events each).
    #[arg(long, default_value_t = 200_000)]
    entries: u32,
}

pub fn run(args: Args) -> Result<()> {
    setup::ensure()?;
    build::release_bins()?;
    let bench = build::bin("ctsync-bench");
    println!("== decode and memory (ctsync-bench) ==");
    exec::exec(std::process::Command::new(&bench).arg("decode"))?;
    exec::exec(std::process::Command::new(&bench).arg("memory"))?;

    println!(
        "\n== replication: CPU per conntrack event on the primary (fw1) and the backup (fw2), \
         ctsync vs conntrackd, same lab, same load =="
    );
    let lab = Lab::up(LabOptions::default())?;
    let ctsync = {
        let start = |fw: Fw| {
            AgentProcess::start(
                &lab,
                fw.node(),
                &build::bin("ctsync"),
                &format!("bench-{}-{fw}", lab.prefix()),
                &sync_config(fw),
            )
        };
        let (fw1, fw2) = (start(Fw::Fw1)?, start(Fw::Fw2)?);
        let r = measure(
            &lab,
            &[fw1.child.id(), fw2.child.id()],
            args.entries,
            || Ok(fw2.dump("external")?.len()),
        )?;
        let (s1, s2) = (fw1.stats()?, fw2.stats()?);
        println!(
            "ctsync:     primary {:.2} µs/event, backup {:.2} µs/event over {} events ({:.0}/s offered); \
             {} of {} entries replicated after the create burst; overruns {}, retransmits {}, \
             backup external cache {} entries after the deletes",
            r.us_per_event[0],
            r.us_per_event[1],
            r.events,
            r.offered_rate,
            r.replicated,
            args.entries,
            s1["events"]["overruns"],
            s1["sync"]["sender"]["retransmits"],
            s2["sync"]["external_entries"]
        );
        r
    };
    let conntrackd = {
        let dir =
            std::env::temp_dir().join(format!("ctsync-bench-conntrackd-{}", std::process::id()));
        let mut children = vec![];
        for fw in [Fw::Fw1, Fw::Fw2] {
            let d = dir.join(fw.to_string());
            std::fs::create_dir_all(&d)?;
            let cfg = d.join("conntrackd.conf");
            std::fs::write(&cfg, conntrackd_config(&d, fw))?;
            let child = lab
                .command(
                    fw.node(),
                    &[
                        "conntrackd",
                        "-C",
                        cfg.to_str().context("temp path not UTF-8")?,
                    ],
                )
                .stdout(std::process::Stdio::null())
                .spawn()
                .context("starting conntrackd (installed by `cargo xtask setup`)")?;
            children.push((child, d));
        }
        std::thread::sleep(Duration::from_secs(2));
        for (child, d) in &mut children {
            if let Some(st) = child.try_wait()? {
                bail!(
                    "conntrackd exited ({st}): {}",
                    std::fs::read_to_string(d.join("conntrackd.log")).unwrap_or_default()
                );
            }
        }
        let pids: Vec<u32> = children.iter().map(|(c, _)| c.id()).collect();
        let backup_cfg = children[1].1.join("conntrackd.conf");
        let r = measure(&lab, &pids, args.entries, || {
            // `conntrackd -e` prints the external cache, one entry per line.
            let out = exec::stdout(
                std::process::Command::new("conntrackd")
                    .arg("-C")
                    .arg(&backup_cfg)
                    .arg("-e"),
            )?;
            Ok(out.lines().filter(|l| l.contains("src=")).count())
        });
        for (mut child, _) in children {
            // SAFETY: plain syscall on our own child.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&dir);
        let r = r?;
        println!(
            "conntrackd: primary {:.2} µs/event, backup {:.2} µs/event over {} events ({:.0}/s offered); \
             {} of {} entries replicated after the create burst",
            r.us_per_event[0],
            r.us_per_event[1],
            r.events,
            r.offered_rate,
            r.replicated,
            args.entries
        );
        r
    };
    println!(
        "ratio ctsync/conntrackd (lower is better): primary {:.2}x, backup {:.2}x. \
         Targets: primary at most 1.2 µs/event; backup 0.2 µs/record needs the XDP path (open issue).",
        ctsync.us_per_event[0] / conntrackd.us_per_event[0],
        ctsync.us_per_event[1] / conntrackd.us_per_event[1]
    );
    lab.down()?;
    Ok(())
}

struct Measured {
    events: u64,
    /// Per process, in the order given to `measure`.
    us_per_event: Vec<f64>,
    offered_rate: f64,
    /// Entries in the backup's external cache once the create burst settled.
    replicated: usize,
}

/// CPU time (user + system) of `pid`, in seconds.
fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("process {pid} is gone"))?;
    // Fields after the command name (which may contain spaces) start at ") ".
    let rest = stat.rsplit_once(") ").context("odd /proc/PID/stat")?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f[11].parse::<f64>()? + f[12].parse::<f64>()?;
    // SAFETY: plain libc call.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok(ticks / hz)
}

/// Flushes fw1's table, creates then deletes `n` entries with ctgen, and
/// returns each process's CPU per event once all have gone idle again.
fn measure(
    lab: &Lab,
    pids: &[u32],
    n: u32,
    mut replicated: impl FnMut() -> Result<usize>,
) -> Result<Measured> {
    exec::output(&mut lab.command(Node::Fw1, &["conntrack", "-F"]))?;
    std::thread::sleep(Duration::from_secs(1));
    let ctgen = build::bin("ctgen");
    let ctgen = ctgen.to_str().context("path not UTF-8")?;
    let count = n.to_string();
    let cpu = || {
        pids.iter()
            .map(|&p| cpu_seconds(p))
            .collect::<Result<Vec<f64>>>()
    };
    // Idle: no process used CPU for a whole second.
    let idle = || -> Result<Vec<f64>> {
        let mut last = cpu()?;
        loop {
            std::thread::sleep(Duration::from_secs(1));
            let now = cpu()?;
            if now.iter().zip(&last).all(|(a, b)| a - b < 0.005) {
                return Ok(now);
            }
            last = now;
        }
    };
    // CPU spent on the two bursts only, not on counting the copies between them.
    let mut used = vec![0.0; pids.len()];
    let mut offered = 0.0;
    let mut copies = 0;
    for extra in [&[][..], &["--delete"][..]] {
        let before = cpu()?;
        let mut argv = vec![
            ctgen, "--count", &count, "--family", "4", "--proto", "mixed", "--nat", "--batch", "64",
        ];
        argv.extend_from_slice(extra);
        let t0 = Instant::now();
        exec::output(&mut lab.command(Node::Fw1, &argv))?;
        offered += t0.elapsed().as_secs_f64();
        let after = idle()?;
        for (u, (a, b)) in used.iter_mut().zip(after.iter().zip(&before)) {
            *u += a - b;
        }
        if extra.is_empty() {
            copies = replicated()?;
        }
    }
    let events = 2 * u64::from(n);
    Ok(Measured {
        events,
        us_per_event: used.iter().map(|u| u * 1e6 / events as f64).collect(),
        offered_rate: events as f64 / offered,
        replicated: copies,
    })
}

/// conntrackd as Debian ships it, FT-FW over UDP on the first sync link
/// towards the other firewall, with buffers sized for this load.
fn conntrackd_config(dir: &Path, fw: Fw) -> String {
    let d = dir.display();
    let (me, peer) = (fw.sync_v4(0), fw.other().sync_v4(0));
    format!(
        r#"Sync {{
    Mode FTFW {{
    }}
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
    HashLimit 1048576
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

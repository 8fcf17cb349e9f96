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
    agent::AgentProcess,
    build, exec,
    lab::{Lab, LabOptions, Node},
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

    println!("\n== primary: CPU per conntrack event, ctsync vs conntrackd, same lab, same load ==");
    let lab = Lab::up(LabOptions::default())?;
    let ctsync = {
        let agent = AgentProcess::start(
            &lab,
            Node::Fw1,
            &build::bin("ctsync"),
            &format!("bench-{}", lab.prefix()),
            "",
        )?;
        let r = measure(&lab, agent.child.id(), args.entries)?;
        let s = agent.stats()?;
        println!(
            "ctsync:     {:.2} µs CPU/event over {} events ({:.0} events/s offered); overruns {}, cache {} entries after deletes",
            r.us_per_event,
            r.events,
            r.offered_rate,
            s["events"]["overruns"],
            s["cache"]["entries"]
        );
        r
    };
    let conntrackd = {
        let dir =
            std::env::temp_dir().join(format!("ctsync-bench-conntrackd-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let cfg = dir.join("conntrackd.conf");
        std::fs::write(&cfg, conntrackd_config(&dir))?;
        let mut child = lab
            .command(
                Node::Fw1,
                &[
                    "conntrackd",
                    "-C",
                    cfg.to_str().context("temp path not UTF-8")?,
                ],
            )
            .stdout(std::process::Stdio::null())
            .spawn()
            .context("starting conntrackd (installed by `cargo xtask setup`)")?;
        std::thread::sleep(Duration::from_secs(2));
        if let Some(st) = child.try_wait()? {
            bail!(
                "conntrackd exited ({st}): {}",
                std::fs::read_to_string(dir.join("conntrackd.log")).unwrap_or_default()
            );
        }
        let r = measure(&lab, child.id(), args.entries);
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let _ = child.wait();
        let _ = std::fs::remove_dir_all(&dir);
        let r = r?;
        println!(
            "conntrackd: {:.2} µs CPU/event over {} events ({:.0} events/s offered)",
            r.us_per_event, r.events, r.offered_rate
        );
        r
    };
    println!(
        "ratio: ctsync uses {:.2}x the CPU per event of conntrackd (lower is better; target: at most 1.2 µs/event).\n\
         note: conntrackd also sends FT-FW to fw2 here; ctsync has no sender yet, so this is the event path only",
        ctsync.us_per_event / conntrackd.us_per_event
    );
    lab.down()?;
    Ok(())
}

struct Measured {
    events: u64,
    us_per_event: f64,
    offered_rate: f64,
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
/// returns the daemon's CPU per event once it has gone idle again.
fn measure(lab: &Lab, pid: u32, n: u32) -> Result<Measured> {
    exec::output(&mut lab.command(Node::Fw1, &["conntrack", "-F"]))?;
    std::thread::sleep(Duration::from_millis(500));
    let ctgen = build::bin("ctgen");
    let ctgen = ctgen.to_str().context("path not UTF-8")?;
    let count = n.to_string();
    let cpu0 = cpu_seconds(pid)?;
    let t0 = Instant::now();
    for extra in [&[][..], &["--delete"][..]] {
        let mut argv = vec![
            ctgen, "--count", &count, "--family", "4", "--proto", "mixed", "--nat", "--batch", "64",
        ];
        argv.extend_from_slice(extra);
        exec::output(&mut lab.command(Node::Fw1, &argv))?;
    }
    let offered = t0.elapsed().as_secs_f64();
    // Idle: no CPU used for a whole second.
    let mut last = cpu_seconds(pid)?;
    loop {
        std::thread::sleep(Duration::from_secs(1));
        let now = cpu_seconds(pid)?;
        if now - last < 0.005 {
            break;
        }
        last = now;
    }
    let events = 2 * u64::from(n);
    Ok(Measured {
        events,
        us_per_event: (last - cpu0) * 1e6 / events as f64,
        offered_rate: events as f64 / offered,
    })
}

/// conntrackd as Debian ships it, FT-FW over UDP on fw1's first sync link
/// towards fw2, with buffers sized for this load.
fn conntrackd_config(dir: &Path) -> String {
    let d = dir.display();
    format!(
        r#"Sync {{
    Mode FTFW {{
    }}
    UDP {{
        IPv4_address 10.9.1.1
        IPv4_Destination_Address 10.9.1.2
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

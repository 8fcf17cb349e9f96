//! `cargo xtask bench`: measurements, not tests. Prints a report.
//!
//! - `ctsync-bench decode` and `memory`: decode cost per real kernel event,
//!   internal-cache memory per entry.
//! - events side by side: ctsync and conntrackd (Debian's, FT-FW over UDP on
//!   the sync link) each run alone on fw1 while `ctgen` creates and then
//!   deletes the same entries; their CPU time per event is read from
//!   /proc/PID/stat and reported as a ratio.
//! - latency, zero-loss rate, commit, failover and forwarding capacity: see
//!   their modules.
//!
//! Progress goes to stderr, one numbered line per step (`progress`); the
//! measurements to stdout; the report and its SVG charts (`plot`) to
//! `target/bench-results/`.

mod commit;
mod failover;
mod flows;
mod forwarding;
mod latency;
mod plot;
mod progress;
mod report;
mod zeroloss;

use progress::Progress;
use report::Report;

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use xtask::{
    agent::start_pair_with,
    build,
    conntrackd::{Backup, Conntrackd},
    exec,
    lab::{Fw, Lab, LabOptions, Node},
    setup,
};

#[derive(clap::Args)]
pub struct Args {
    /// Entries created then deleted per contender (two events each);
    /// default 200000, 50000 with --quick.
    #[arg(long)]
    entries: Option<u32>,
    /// Entries each daemon commits into the backup's kernel table; default
    /// 1000000, 100000 with --quick.
    #[arg(long)]
    commit_entries: Option<u32>,
    /// A small run (a few minutes less): fewer entries per part.
    #[arg(long)]
    quick: bool,
    /// Run one part only.
    #[arg(long, value_enum)]
    only: Option<Part>,
    /// Name prefix of the bench's lab (see `cargo xtask lab`); default: a
    /// fresh `cts` + 4 hex digits. Fails if a lab of that name exists.
    #[arg(long)]
    prefix: Option<String>,
}

#[derive(clap::ValueEnum, Clone, Copy, PartialEq)]
enum Part {
    /// Decode cost and memory per entry (no lab).
    Decode,
    /// CPU per replicated event, both daemons.
    Events,
    /// Replication latency at set rates, kernel to kernel, both daemons.
    Latency,
    /// The highest rate both daemons replicate without loss (ctgen, real flows).
    Zeroloss,
    /// Commit of a replicated table, both daemons, against the kernel's ceiling.
    Commit,
    /// Data gaps of live connections at failover: ctsync in each standby mode, conntrackd.
    Failover,
    /// New-flow rate fw1 forwards with no daemon, ctsync, conntrackd.
    Forwarding,
}

pub fn run(args: Args) -> Result<()> {
    setup::ensure()?;
    build::release_bins()?;
    let part = |p: Part| args.only.is_none_or(|o| o == p);
    let entries = args
        .entries
        .unwrap_or(if args.quick { 50_000 } else { 200_000 });
    let commit_entries =
        args.commit_entries
            .unwrap_or(if args.quick { 100_000 } else { 1_000_000 });
    let latency_rates: &[u32] = if args.quick {
        &[10_000, 50_000]
    } else {
        &[10_000, 50_000, 100_000]
    };
    // 0: unpaced, as fast as ctgen gets the kernel to create.
    let zeroloss_rates: &[u32] = if args.quick {
        &[100_000, 0]
    } else {
        &[50_000, 100_000, 150_000, 0]
    };
    // Real flows through fw1, per kind.
    let zeroloss_flow_rates: &[u32] = if args.quick { &[0] } else { &[50_000, 0] };
    let failover_tcp = if args.quick { 1000 } else { 5000 };
    let forwarding_rounds = if args.quick { 1 } else { 3 };
    let lab_parts = [
        Part::Events,
        Part::Latency,
        Part::Zeroloss,
        Part::Commit,
        Part::Forwarding,
    ];
    let needs_lab = lab_parts.into_iter().any(part);
    // The steps, counted before the first one runs.
    let steps = [
        (part(Part::Decode), 1),
        (needs_lab, 2), // lab up, lab down
        (part(Part::Events), 5),
        (part(Part::Latency), latency::steps(latency_rates)),
        (
            part(Part::Zeroloss),
            zeroloss::steps(zeroloss_rates, zeroloss_flow_rates),
        ),
        (part(Part::Commit), commit::STEPS),
        (part(Part::Forwarding), forwarding::steps(forwarding_rounds)),
        (part(Part::Failover), failover::STEPS),
    ];
    let mut progress = Progress::new(steps.iter().filter(|s| s.0).map(|s| s.1).sum());
    let mut report = Report::default();
    if part(Part::Decode) {
        progress.step("decode and memory (ctsync-bench)", decode)?;
    }
    if needs_lab {
        let opts = LabOptions {
            prefix: args.prefix.clone(),
            ..LabOptions::default()
        };
        let lab = progress.step("lab up", || Lab::up(opts))?;
        eprintln!("the bench's lab: {}", lab.prefix());
        if part(Part::Events) {
            events(&lab, entries, &mut report, &mut progress)?;
        }
        if part(Part::Latency) {
            latency::run(&lab, latency_rates, &mut report, &mut progress)?;
        }
        if part(Part::Zeroloss) {
            zeroloss::run(
                &lab,
                zeroloss_rates,
                zeroloss_flow_rates,
                &mut report,
                &mut progress,
            )?;
        }
        if part(Part::Commit) {
            commit::run(&lab, commit_entries, &mut report, &mut progress)?;
        }
        if part(Part::Forwarding) {
            forwarding::run(&lab, forwarding_rounds, &mut report, &mut progress)?;
        }
        progress.step("lab down", || lab.down())?;
    }
    // Its own labs: a failover leaves fw1's links cut.
    if part(Part::Failover) {
        failover::run(failover_tcp, &mut report, &mut progress)?;
    }
    progress.finish();
    let (path, charts) = report.write("ctsync vs conntrackd: cargo xtask bench")?;
    println!(
        "\n{}\nreport: {}",
        report.markdown("summary"),
        path.display()
    );
    for c in charts {
        println!("chart:  {}", c.display());
    }
    Ok(())
}

fn decode() -> Result<()> {
    let bench = build::bin("ctsync-bench");
    println!("== decode and memory (ctsync-bench) ==");
    exec::exec(std::process::Command::new(&bench).arg("decode"))?;
    exec::exec(std::process::Command::new(&bench).arg("memory"))?;
    Ok(())
}

fn events(lab: &Lab, entries: u32, report: &mut Report, progress: &mut Progress) -> Result<()> {
    println!(
        "\n== replication: CPU per conntrack event on the primary (fw1) and the backup (fw2), \
         ctsync vs conntrackd, same lab, same load =="
    );
    // The XDP program's own run time counts as backup CPU (softirq time no
    // process is charged for); the kernel measures it only while asked to.
    let bpf_stats = BpfStats::enable()?;
    let (xdp, (ack_p50, ack_p99)) = progress.step("events ctsync, XDP receive", || {
        ctsync_events(lab, entries, "native", Standby::External)
    })?;
    let (socket, _) = progress.step("events ctsync, socket receive", || {
        ctsync_events(lab, entries, "off", Standby::External)
    })?;
    let (hot, _) = progress.step("events ctsync, XDP receive, hot standby", || {
        ctsync_events(lab, entries, "native", Standby::Hot)
    })?;
    drop(bpf_stats);
    // The XDP run is ctsync's default.
    let ctsync = &xdp;
    let conntrackd = progress.step("events conntrackd", || {
        conntrackd_events(lab, entries, Backup::ExternalCache)
    })?;
    let conntrackd_kernel = progress.step("events conntrackd, DisableExternalCache on", || {
        conntrackd_events(lab, entries, Backup::KernelTable)
    })?;
    println!(
        "ratio ctsync/conntrackd (lower is better): primary {:.2}x; backup with XDP {:.2}x, \
         with the socket path {:.2}x. Targets: primary at most 1.2 µs/event, backup 0.2 µs/record.",
        ctsync.us_per_event[0] / conntrackd.us_per_event[0],
        ctsync.us_per_event[1] / conntrackd.us_per_event[1],
        socket.us_per_event[1] / conntrackd.us_per_event[1]
    );
    let rows = [
        ("primary", &xdp, 0, "1.2 µs"),
        (
            "backup, XDP receive (agent + XDP program)",
            &xdp,
            1,
            "0.2 µs",
        ),
        ("backup, socket receive", &socket, 1, "0.2 µs"),
    ];
    for (side, run, i, target) in rows {
        report.row(
            &format!("{side} CPU per event ({} events)", run.events),
            format!("{:.2} µs", run.us_per_event[i]),
            format!("{:.2} µs", conntrackd.us_per_event[i]),
            format!(
                "{:.2}x (target {target})",
                run.us_per_event[i] / conntrackd.us_per_event[i],
            ),
        );
    }
    // Hot standby against conntrackd writing straight into its kernel table.
    println!(
        "hot standby: backup {:.2} µs/event (external-cache mode {:.2}); conntrackd with \
         DisableExternalCache on {:.2} µs/event: ratio {:.2}x",
        hot.us_per_event[1],
        xdp.us_per_event[1],
        conntrackd_kernel.us_per_event[1],
        hot.us_per_event[1] / conntrackd_kernel.us_per_event[1]
    );
    report.row(
        &format!(
            "backup CPU per event, kernel table kept current ({} events; ctsync hot standby vs \
             conntrackd DisableExternalCache on)",
            hot.events
        ),
        format!(
            "{:.2} µs ({:.1}x its external-cache mode)",
            hot.us_per_event[1],
            hot.us_per_event[1] / xdp.us_per_event[1]
        ),
        format!("{:.2} µs", conntrackd_kernel.us_per_event[1]),
        format!(
            "{:.2}x",
            hot.us_per_event[1] / conntrackd_kernel.us_per_event[1]
        ),
    );
    report.row(
        &format!(
            "entries in the backup's kernel table after a {entries}-entry create burst (kept current)"
        ),
        hot.replicated.to_string(),
        conntrackd_kernel.replicated.to_string(),
        "all".into(),
    );
    report.row(
        &format!("entries on the backup after a {entries}-entry create burst"),
        format!(
            "{} ({:.0}/s offered)",
            ctsync.replicated, ctsync.offered_rate
        ),
        format!(
            "{} ({:.0}/s offered)",
            conntrackd.replicated, conntrackd.offered_rate
        ),
        "all".into(),
    );
    report.row(
        "sync datagram sent to ACK, p50 / p99",
        format!("{} / {} µs", ack_p50, ack_p99),
        String::new(),
        "p99 < 0.3 ms at 50k/s (not this load)".into(),
    );
    Ok(())
}

/// A conntrackd pair under the events load, the backup keeping the peer's
/// state as `backup` says.
fn conntrackd_events(lab: &Lab, entries: u32, backup: Backup) -> Result<Measured> {
    let dir = std::env::temp_dir().join(format!("ctsync-bench-conntrackd-{}", std::process::id()));
    let r = (|| {
        let c1 = Conntrackd::start_with(lab, Fw::Fw1, &dir, backup)?;
        let c2 = Conntrackd::start_with(lab, Fw::Fw2, &dir, backup)?;
        measure(lab, &[c1.pid(), c2.pid()], entries, || match backup {
            Backup::ExternalCache => c2.external_entries(lab),
            Backup::KernelTable => kernel_count(lab, Fw::Fw2),
        })
    })();
    let _ = std::fs::remove_dir_all(&dir);
    let r = r?;
    println!(
        "conntrackd ({backup:?}): primary {:.2} µs/event, backup {:.2} µs/event over {} events \
         ({:.0}/s offered); {} of {} entries replicated after the create burst",
        r.us_per_event[0], r.us_per_event[1], r.events, r.offered_rate, r.replicated, entries
    );
    Ok(r)
}

/// `kernel.bpf_stats_enabled` on for as long as this lives (global: it
/// makes every BPF program a little slower), restored on drop.
struct BpfStats(String);

const BPF_STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";

impl BpfStats {
    fn enable() -> Result<BpfStats> {
        let old =
            std::fs::read_to_string(BPF_STATS).with_context(|| format!("reading {BPF_STATS}"))?;
        std::fs::write(BPF_STATS, "1").with_context(|| format!("writing {BPF_STATS}"))?;
        Ok(BpfStats(old.trim().to_owned()))
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        let _ = std::fs::write(BPF_STATS, &self.0);
    }
}

/// A ctsync pair under the events load with `sync.xdp = xdp`. The XDP
/// program's run time on each side is added to that side's CPU. Returns
/// the measurement and fw1's ACK round trip p50/p99.
fn ctsync_events(
    lab: &Lab,
    entries: u32,
    xdp: &str,
    standby: Standby,
) -> Result<(Measured, (serde_json::Value, serde_json::Value))> {
    let failover = match standby {
        Standby::External => "",
        Standby::Hot => "[failover]\nstandby = \"hot\"\n",
    };
    let (fw1, fw2) = start_pair_with(
        lab,
        &build::bin("ctsync"),
        &format!("bench-{}", lab.prefix()),
        &format!("xdp = \"{xdp}\"\n"),
        failover,
    )?;
    let prog_ns = |a: &xtask::agent::AgentProcess| -> Result<u64> {
        Ok(a.stats()?["sync"]["xdp"]["prog_run_ns"]
            .as_u64()
            .unwrap_or(0))
    };
    let before = [prog_ns(&fw1)?, prog_ns(&fw2)?];
    let mut r = measure(
        lab,
        &[fw1.child.id(), fw2.child.id()],
        entries,
        || match standby {
            Standby::External => Ok(fw2.dump("external")?.len()),
            Standby::Hot => kernel_count(lab, Fw::Fw2),
        },
    )?;
    let after = [prog_ns(&fw1)?, prog_ns(&fw2)?];
    let mut in_xdp = [0.0; 2];
    for i in 0..2 {
        in_xdp[i] = (after[i] - before[i]) as f64 / 1e3 / r.events as f64;
        r.us_per_event[i] += in_xdp[i];
    }
    let (s1, s2) = (fw1.stats()?, fw2.stats()?);
    println!(
        "ctsync (xdp = {xdp}, {standby:?} standby): primary {:.2} µs/event, backup {:.2} µs/event (of which in the XDP \
         program: {:.3} / {:.3}) over {} events ({:.0}/s offered); {} of {} entries replicated \
         after the create burst; overruns {}, retransmits {}, backup external cache {} entries \
         after the deletes",
        r.us_per_event[0],
        r.us_per_event[1],
        in_xdp[0],
        in_xdp[1],
        r.events,
        r.offered_rate,
        r.replicated,
        entries,
        s1["events"]["overruns"],
        s1["sync"]["sender"]["retransmits"],
        s2["sync"]["external_entries"]
    );
    let l: serde_json::Value = serde_json::from_str(&fw1.ctl(&["latency", "--json"])?)?;
    let rtt = &l["ack_rtt"];
    let ack = (rtt["p50_us"].clone(), rtt["p99_us"].clone());
    println!(
        "ctsync:     sync datagram sent -> acknowledged by fw2 (upper bound of the time to \
         reach the backup), µs: p50 {}, p99 {}, p99.9 {}, max {} over {} datagrams",
        rtt["p50_us"], rtt["p99_us"], rtt["p999_us"], rtt["max_us"], rtt["count"]
    );
    Ok((r, ack))
}

/// Entries in `fw`'s kernel table.
fn kernel_count(lab: &Lab, fw: Fw) -> Result<usize> {
    let out = exec::stdout(&mut lab.command(fw.node(), &["conntrack", "-C"]))?;
    out.trim()
        .parse()
        .with_context(|| format!("`conntrack -C` printed {out:?}"))
}

/// Which standby mode a ctsync pair runs in.
#[derive(Clone, Copy, Debug)]
enum Standby {
    External,
    Hot,
}

/// Runs `ctgen <args>` in `fw`'s namespace; returns how long it took.
fn ctgen(lab: &Lab, fw: Fw, args: &[&str]) -> Result<Duration> {
    let bin = build::bin("ctgen");
    let mut argv = vec![bin.to_str().context("path not UTF-8")?];
    argv.extend_from_slice(args);
    let t0 = Instant::now();
    exec::output(&mut lab.command(fw.node(), &argv))?;
    Ok(t0.elapsed())
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
/// Resident memory of a process (VmRSS of /proc/PID/status), bytes.
fn rss_bytes(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("process {pid} is gone"))?;
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no VmRSS in /proc/{pid}/status"))?;
    Ok(kib * 1024)
}

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
            "--count", &count, "--family", "4", "--proto", "mixed", "--nat", "--batch", "64",
        ];
        argv.extend_from_slice(extra);
        offered += ctgen(lab, Fw::Fw1, &argv)?.as_secs_f64();
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

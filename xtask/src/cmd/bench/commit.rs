//! Commit at takeover: how long each daemon takes to write a replicated
//! table of `n` entries into the backup's kernel, against the kernel's own
//! ctnetlink create ceiling measured in the same run (`ctgen` writing the
//! same entries into fw2's empty table, with no listener and with one).

use std::{
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use xtask::{
    agent::{AgentProcess, sync_config},
    build,
    conntrackd::Conntrackd,
    exec,
    lab::{Fw, Lab},
};

const CONNTRACK_MAX: &str = "/proc/sys/net/netfilter/nf_conntrack_max";

/// Raises the kernel's conntrack limit (it applies to every namespace) for
/// the run, and puts the old one back on drop.
struct ConntrackMax(String);

impl ConntrackMax {
    fn at_least(n: u64) -> Result<ConntrackMax> {
        let old = std::fs::read_to_string(CONNTRACK_MAX).context(CONNTRACK_MAX)?;
        if old.trim().parse::<u64>()? < n {
            std::fs::write(CONNTRACK_MAX, n.to_string()).context(CONNTRACK_MAX)?;
        }
        Ok(ConntrackMax(old))
    }
}

impl Drop for ConntrackMax {
    fn drop(&mut self) {
        let _ = std::fs::write(CONNTRACK_MAX, self.0.trim());
    }
}

/// ctgen's arguments for the `n` entries every contender writes.
fn spec(n: &str) -> Vec<&str> {
    vec![
        "--count",
        n,
        "--family",
        "4",
        "--proto",
        "mixed",
        "--nat",
        "--timeout",
        "1200",
    ]
}

fn ctgen(lab: &Lab, fw: Fw, n: u32) -> Result<Duration> {
    let bin = build::bin("ctgen");
    let count = n.to_string();
    let mut argv = vec![bin.to_str().context("path not UTF-8")?];
    argv.extend(spec(&count));
    let t0 = Instant::now();
    exec::output(&mut lab.command(fw.node(), &argv))?;
    Ok(t0.elapsed())
}

fn flush(lab: &Lab, fw: Fw) -> Result<()> {
    exec::output(&mut lab.command(fw.node(), &["conntrack", "-F"]))?;
    Ok(())
}

/// Entries in `fw`'s kernel table.
fn table_count(lab: &Lab, fw: Fw) -> Result<u64> {
    let out = exec::stdout(&mut lab.command(fw.node(), &["conntrack", "-C"]))?;
    out.trim()
        .parse()
        .with_context(|| format!("conntrack -C printed {out:?}"))
}

/// Polls `count` until it reaches `n`.
fn wait_for(what: &str, n: u64, secs: u64, mut count: impl FnMut() -> Result<u64>) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let c = count()?;
        if c >= n {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{what}: {c} of {n} entries after {secs} s");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

pub fn run(lab: &Lab, n: u32) -> Result<()> {
    println!(
        "\n== commit: {n} replicated entries (IPv4, TCP/UDP mixed, SNAT) written into fw2's empty table =="
    );
    let _max = ConntrackMax::at_least(2 * u64::from(n) + 100_000)?;
    let rate = |d: Duration| f64::from(n) / d.as_secs_f64();
    let (wanted, fw1, fw2) = (u64::from(n), Fw::Fw1, Fw::Fw2);
    for fw in [fw1, fw2] {
        flush(lab, fw)?;
    }
    // fw1's table, which both daemons replicate to fw2. It is there while
    // the ceiling is measured too: conntrack's hash table is shared by all
    // namespaces, and a fuller one makes every create slower.
    ctgen(lab, fw1, n)?;

    // The ceiling: the same entries, straight from a batched generator,
    // the better of two runs (the first into a table never used, the
    // second after a flush, as the commits below).
    let mut bare = Duration::MAX;
    for _ in 0..2 {
        bare = bare.min(ctgen(lab, fw2, n)?);
        flush(lab, fw2)?;
    }
    let mut listener = lab
        .command(fw2.node(), &["conntrack", "-E"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("conntrack -E")?;
    std::thread::sleep(Duration::from_millis(300));
    let listened = ctgen(lab, fw2, n);
    let _ = listener.kill();
    let _ = listener.wait();
    let listened = listened?;
    flush(lab, fw2)?;
    println!(
        "kernel ceiling (ctgen, 256 per batch, {n} entries in fw1's table meanwhile): \
         {:.0} entries/s with no listener ({:.2} s, best of two), {:.0}/s with one (`conntrack -E`)",
        rate(bare),
        bare.as_secs_f64(),
        rate(listened)
    );

    // ctsync: replicate (fw2's agent asks for everything at start), then
    // `ctsync commit` on fw2 (the same code path as `notify master`'s
    // first step).
    let ctsync = {
        let start = |fw: Fw| {
            AgentProcess::start(
                lab,
                fw.node(),
                &build::bin("ctsync"),
                &format!("bench-commit-{}-{fw}", lab.prefix()),
                &sync_config(fw),
            )
        };
        let (a1, a2) = (start(fw1)?, start(fw2)?);
        wait_for("ctsync's external cache on fw2", wanted, 300, || {
            a2.stats()?["sync"]["external_entries"]
                .as_u64()
                .context("stats without sync.external_entries")
        })?;
        let t0 = Instant::now();
        let out = a2.ctl(&["commit"])?;
        let wall = t0.elapsed();
        let r: serde_json::Value = serde_json::from_str(&out).context("ctsync commit output")?;
        let in_table = table_count(lab, fw2)?;
        drop(a1);
        drop(a2);
        let ms = r["ms"].as_f64().context("commit report without ms")?;
        println!(
            "ctsync:     commit {:.2} s ({:.0} entries/s; {} created, {} failed; {} in fw2's table); \
             the reply, after the resync of the internal cache, took {:.2} s",
            ms / 1e3,
            f64::from(n) / (ms / 1e3),
            r["created"],
            r["failed"],
            in_table,
            wall.as_secs_f64()
        );
        if in_table < wanted {
            bail!("ctsync's commit left {in_table} of {n} entries in fw2's table: {r}");
        }
        Duration::from_secs_f64(ms / 1e3)
    };
    flush(lab, fw2)?;

    // conntrackd: replicate (a bulk send from fw1), then `conntrackd -c` on fw2.
    let dir = std::env::temp_dir().join(format!("ctsync-bench-commit-{}", std::process::id()));
    let conntrackd = (|| {
        let c1 = Conntrackd::start(lab, fw1, &dir)?;
        let c2 = Conntrackd::start(lab, fw2, &dir)?;
        c1.ctl(lab, &["-B"])?;
        wait_for("conntrackd's external cache on fw2", wanted, 300, || {
            Ok(c2.external_entries(lab)? as u64)
        })?;
        let t0 = Instant::now();
        c2.ctl(lab, &["-c"])?;
        let returned = t0.elapsed();
        // Until the table holds them all (conntrackd may answer first).
        wait_for("conntrackd's commit on fw2", wanted, 120, || {
            table_count(lab, fw2)
        })?;
        let done = t0.elapsed();
        println!(
            "conntrackd: commit {:.2} s ({:.0} entries/s; `conntrackd -c` returned after {:.2} s)",
            done.as_secs_f64(),
            rate(done),
            returned.as_secs_f64()
        );
        Ok::<_, anyhow::Error>(done)
    })();
    let _ = std::fs::remove_dir_all(&dir);
    for fw in [fw1, fw2] {
        flush(lab, fw)?;
    }
    let conntrackd = conntrackd?;
    println!(
        "ctsync's commit: {:.2}x the no-listener ceiling's time (target at most 1.10x), \
         {:.2}x conntrackd's (lower is better)",
        ctsync.as_secs_f64() / bare.as_secs_f64(),
        ctsync.as_secs_f64() / conntrackd.as_secs_f64()
    );
    Ok(())
}

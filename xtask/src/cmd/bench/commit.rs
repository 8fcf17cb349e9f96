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
    agent::start_pair_with,
    build,
    conntrackd::Conntrackd,
    exec,
    lab::{Fw, Lab},
};

use xtask::sysctl::{CONNTRACK_MAX, HASHSIZE, Raised};

use super::{
    plot::{self, Bar, BarChart},
    progress::Progress,
    rss_bytes,
};

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
    super::ctgen(lab, fw, &spec(&n.to_string()))
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

/// The times of one commit run.
#[derive(Clone, Copy, Debug)]
pub struct Times {
    /// Entries committed.
    pub n: u32,
    /// `ctsync commit`'s own time for the writes.
    pub ctsync: Duration,
    /// `conntrackd -c` until fw2's table held every entry.
    pub conntrackd: Duration,
    /// ctgen writing the same entries with no listener, best of two.
    pub ceiling: Duration,
    /// The same with one listener (`conntrack -E`) on fw2.
    pub ceiling_listened: Duration,
}

/// Progress steps of [`run`]: conntrackd, the ceiling, ctsync.
pub const STEPS: usize = 3;

/// The four times as bars.
pub fn chart(t: &Times) -> BarChart {
    let bar = |label: &str, d: Duration| {
        let s = d.as_secs_f64();
        Bar {
            label: label.to_owned(),
            value: s,
            note: format!(
                "{s:.2} s\n{}/s",
                plot::number(f64::from(t.n) / s, 1000.0, 1e6)
            ),
        }
    };
    BarChart {
        title: format!(
            "commit of {} replicated entries into fw2's empty table (lower is better)",
            t.n
        ),
        y_label: "time to commit (s)".to_owned(),
        bars: vec![
            bar("ctsync commit", t.ctsync),
            bar("kernel ceiling: ctgen, no listener", t.ceiling),
            bar("ctgen with a listener (conntrack -E)", t.ceiling_listened),
            bar("conntrackd -c", t.conntrackd),
        ],
    }
}

pub fn run(
    lab: &Lab,
    n: u32,
    report: &mut super::Report,
    progress: &mut Progress,
) -> Result<Times> {
    println!(
        "\n== commit: {n} replicated entries (IPv4, TCP/UDP mixed, SNAT) written into fw2's empty table =="
    );
    // Room for fw1's and fw2's copies, and a hash table sized for them as
    // an operator would (`hashsize`; the default is a quarter of that here).
    let total = 2 * u64::from(n) + 100_000;
    let _max = Raised::at_least(CONNTRACK_MAX, total)?;
    let _hash = Raised::at_least(HASHSIZE, total.next_power_of_two() / 2)?;
    println!(
        "kernel: nf_conntrack_max {}, hashsize {}",
        std::fs::read_to_string(CONNTRACK_MAX)?.trim(),
        std::fs::read_to_string(HASHSIZE)?.trim()
    );
    let rate = |d: Duration| f64::from(n) / d.as_secs_f64();
    let (wanted, fw1, fw2) = (u64::from(n), Fw::Fw1, Fw::Fw2);
    for fw in [fw1, fw2] {
        flush(lab, fw)?;
    }

    // The kernel builds an event for every write whenever any socket in any
    // namespace listens to the conntrack groups (netlink's listener masks
    // are global; delivery then filters by namespace), so each contender's
    // primary is stopped before the backup commits, as it is at a real
    // takeover, and the ceiling runs with no daemon at all.
    //
    // conntrackd first: it replicates fw1's entries as they are created
    // (its bulk send is not made for a million), then `conntrackd -c` on fw2.
    // fw1's table stays for the rest: conntrack's hash table is shared by
    // all namespaces, and every contender writes with the same neighbours.
    let dir = std::env::temp_dir().join(format!("ctsync-bench-commit-{}", std::process::id()));
    let mut conntrackd_memory = [0.0; 2];
    let conntrackd = progress.step("commit conntrackd", || {
        let c1 = Conntrackd::start(lab, fw1, &dir)?;
        let c2 = Conntrackd::start(lab, fw2, &dir)?;
        let rss = || -> Result<[u64; 2]> { Ok([rss_bytes(c1.pid())?, rss_bytes(c2.pid())?]) };
        let empty = rss()?;
        ctgen(lab, fw1, n)?;
        wait_for("conntrackd's external cache on fw2", wanted, 300, || {
            Ok(c2.external_entries(lab)? as u64)
        })?;
        // Memory per entry: the primary's internal cache, the backup's external one.
        let full = rss()?;
        let per_entry = |i: usize| full[i].saturating_sub(empty[i]) as f64 / f64::from(n);
        conntrackd_memory = [per_entry(0), per_entry(1)];
        println!(
            "conntrackd: resident memory per entry {:.0} bytes on fw1 (internal cache), {:.0} on \
             fw2 (external cache)",
            conntrackd_memory[0], conntrackd_memory[1]
        );
        // The primary is gone at takeover; its event socket would cost the
        // backup's writes too (see below).
        drop(c1);
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
    });
    let _ = std::fs::remove_dir_all(&dir);
    let conntrackd = conntrackd?;
    flush(lab, fw2)?;

    // The ceiling: the same entries, straight from a batched generator,
    // the better of two runs, each into fw2's table after a flush, as the
    // commits.
    let (bare, listened) = progress.step("commit ceiling (ctgen)", || {
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
        Ok((bare, listened))
    })?;
    println!(
        "kernel ceiling (ctgen, 256 per batch): {:.0} entries/s with no listener ({:.2} s, best of two), \
         {:.0}/s with one (`conntrack -E`)",
        rate(bare),
        bare.as_secs_f64(),
        rate(listened)
    );

    // ctsync: fw2's agent asks fw1's for everything at start, then
    // `ctsync commit` on fw2 (the code path of `notify master`'s first step).
    let ctsync = progress.step("commit ctsync", || {
        // The XDP external cache must hold them all (with room to spare).
        let (a1, a2) = start_pair_with(
            lab,
            &build::bin("ctsync"),
            &format!("bench-commit-{}", lab.prefix()),
            &format!("xdp_map_entries = {}\n", wanted + wanted / 8 + 1024),
            "",
        )?;
        wait_for("ctsync's external cache on fw2", wanted, 300, || {
            a2.stats()?["sync"]["external_entries"]
                .as_u64()
                .context("stats without sync.external_entries")
        })?;
        drop(a1);
        let t0 = Instant::now();
        let out = a2.ctl(&["commit"])?;
        let wall = t0.elapsed();
        let r: serde_json::Value = serde_json::from_str(&out).context("ctsync commit output")?;
        let in_table = table_count(lab, fw2)?;
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
        Ok(Duration::from_secs_f64(ms / 1e3))
    })?;
    for fw in [fw1, fw2] {
        flush(lab, fw)?;
    }
    println!(
        "ctsync's commit took {:.2}x the no-listener ceiling's time (target at most 1.10x) \
         and {:.2}x conntrackd's (lower is better)",
        ctsync.as_secs_f64() / bare.as_secs_f64(),
        ctsync.as_secs_f64() / conntrackd.as_secs_f64()
    );
    report.row(
        &format!("commit of {n} replicated entries"),
        format!("{:.2} s", ctsync.as_secs_f64()),
        format!("{:.2} s", conntrackd.as_secs_f64()),
        format!("{:.2}x", ctsync.as_secs_f64() / conntrackd.as_secs_f64()),
    );
    report.row(
        &format!("resident memory per entry with {n} entries, primary / backup"),
        "see `ctsync-bench memory` (internal cache)".into(),
        format!(
            "{:.0} / {:.0} bytes",
            conntrackd_memory[0], conntrackd_memory[1]
        ),
        "target under 150 bytes".into(),
    );
    report.row(
        &format!("commit of {n} vs the ctnetlink create ceiling"),
        format!("{:.2} s", ctsync.as_secs_f64()),
        format!("ceiling {:.2} s (ctgen, no listener)", bare.as_secs_f64()),
        format!(
            "{:.2}x (target 1.10x)",
            ctsync.as_secs_f64() / bare.as_secs_f64()
        ),
    );
    let times = Times {
        n,
        ctsync,
        conntrackd,
        ceiling: bare,
        ceiling_listened: listened,
    };
    report.plot(
        "commit.svg",
        &format!("commit of {n} entries: ctsync, the kernel's ceiling, conntrackd"),
        chart(&times).svg(),
    );
    Ok(times)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn four_bars_with_time_and_rate() {
        let s = Duration::from_secs_f64;
        let c = chart(&Times {
            n: 100_000,
            ctsync: s(0.25),
            conntrackd: s(2.0),
            ceiling: s(0.2),
            ceiling_listened: s(0.4),
        });
        let values: Vec<f64> = c.bars.iter().map(|b| b.value).collect();
        assert_eq!(values, [0.25, 0.2, 0.4, 2.0]);
        assert_eq!(c.bars[0].note, "0.25 s\n400k/s");
        assert_eq!(c.bars[3].note, "2.00 s\n50k/s");
        let svg = c.svg();
        assert_eq!(svg.matches("<rect").count(), 2 + 4);
    }
}

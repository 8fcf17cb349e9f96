//! `cargo xtask demo`: what ctsync does, on real parts, from a fresh
//! machine: set-up, build, the lab, agents on both firewalls (eBPF event
//! filter, FT-FW over the sync links), keepalived (VRRP) moving the virtual
//! gateways, real TCP/UDP/ICMP traffic through fw1 (IPv4 with SNAT, IPv6)
//! plus bulk ctnetlink inserts; fw1's internal cache and fw2's external
//! cache checked against fw1's kernel table as `conntrack -L` prints it;
//! then fw1 dies, keepalived on fw2 takes over and runs `ctsync notify
//! master`, and the live connections carry on. Cleans up after itself.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use xtask::{
    agent::{AgentProcess, start_pair},
    build, ctcompare, exec, keepalived,
    lab::{Lab, LabOptions, Node, SERVER_V4, SERVER_V6},
    setup,
    traffic::{Load, Traffic},
};

#[derive(clap::Args)]
pub struct Args {
    /// TCP connections per address family.
    #[arg(long, default_value_t = 500)]
    tcp: u32,
    /// UDP flows per address family.
    #[arg(long, default_value_t = 100)]
    udp: u32,
    /// Synthetic entries inserted through ctnetlink (half IPv4 with SNAT, half IPv6).
    #[arg(long, default_value_t = 100_000)]
    bulk: u32,
}

const STEPS: u32 = 9;

fn step(n: u32, what: &str) {
    println!("\n[{n}/{STEPS}] {what}");
}

pub fn run(args: Args) -> Result<()> {
    let t0 = Instant::now();
    println!(
        "ctsync demo: conntrack state of a firewall, kept by the agent, checked against the kernel"
    );
    step(1, "prerequisites (cargo xtask setup)");
    setup::ensure()?;
    println!("      ok");
    step(2, "build (release, eBPF object embedded)");
    build::release_bins()?;
    step(
        3,
        "lab: client -- [fw1 | fw2] -- server, two sync links, stateful nftables, tcp_loose=0",
    );
    // keepalived places the virtual gateway addresses.
    let lab = Lab::up(LabOptions {
        vips: false,
        ..LabOptions::default()
    })?;
    println!("      lab {} up", lab.prefix());

    step(
        4,
        "ctsync on fw1 and fw2 (eBPF filter on the event socket; FT-FW over sync0, sync1 as backup)",
    );
    let (mut agent, backup) = start_pair(
        &lab,
        &build::bin("ctsync"),
        &format!("demo-{}", lab.prefix()),
        "",
    )?;
    println!(
        "      running; control sockets {} and {}",
        agent.socket.display(),
        backup.socket.display()
    );
    let ctsync = build::bin("ctsync");
    let (mut k1, k2) = keepalived::start_pair(&lab, &ctsync, &agent.dir, Some((&agent, &backup)))?;
    println!(
        "      keepalived (VRRPv3, adverts every {} s) on both: fw1 is master of the LAN and WAN gateways; \
         its notify lines run `ctsync notify master|backup|fault`",
        keepalived::ADVERT_INT
    );

    step(5, "traffic through fw1, and bulk inserts");
    let traffic = Traffic::start(
        &lab,
        &build::bin("ctsync-traffic"),
        &agent.dir,
        &Load {
            tcp: args.tcp,
            udp: args.udp,
            interval_ms: 200,
            drain_ms: Load::FAILOVER_DRAIN_MS,
        },
    )?;
    let (tcp, udp) = (args.tcp, args.udp);
    lab.exec(
        Node::Client,
        &["ping", "-c", "3", "-i", "0.2", &SERVER_V4.to_string()],
    )?;
    lab.exec(
        Node::Client,
        &["ping", "-c", "3", "-i", "0.2", &SERVER_V6.to_string()],
    )?;
    println!(
        "      {tcp} TCP connections and {udp} UDP flows over IPv4 (SNAT) and over IPv6, echoing; ping both"
    );
    let ctgen = build::bin("ctgen");
    let ctgen = ctgen.to_str().context("binary path is not UTF-8")?;
    let half = (args.bulk / 2).to_string();
    for fam in ["4", "6"] {
        let out = exec::stdout(&mut lab.command(
            Node::Fw1,
            &[
                ctgen,
                "--count",
                &half,
                "--family",
                fam,
                "--proto",
                "mixed",
                "--nat",
                "--timeout",
                "600",
            ],
        ))?;
        println!("      ctgen IPv{fam}: {}", out.trim());
    }

    step(
        6,
        "fw1's internal cache vs. its kernel table (conntrack -L)",
    );
    let ns = lab.ns(Node::Fw1).to_string();
    let fw1_table = || {
        Ok(ctcompare::without_sync_links(ctcompare::kernel_table(
            Some(&ns),
        )?))
    };
    let n = agent.wait_converged(Duration::from_secs(60), fw1_table)?;
    println!(
        "      identical: {n} entries, every field conntrack -L shows (tuples both ways, NAT, state, flags, mark, zone)"
    );
    let stats = agent.stats()?;
    let ev = &stats["events"];
    let f = &stats["filter"];
    let c = &stats["cache"];
    println!(
        "      events: {} new, {} update, {} destroy, {} malformed, {} overruns; eBPF filter: {} seen, {} passed",
        ev["new"],
        ev["update"],
        ev["destroy"],
        ev["malformed"],
        ev["overruns"],
        f["seen"],
        f["passed"]
    );
    println!(
        "      cache: {} entries, {} bytes per entry",
        c["entries"], c["bytes_per_entry"]
    );
    let sample = agent.ctl(&["dump", "internal"])?;
    println!("      a few entries (ctsync dump internal):");
    // One of each kind: TCP and UDP through SNAT, ICMP, IPv6, a bulk entry.
    let kinds: [fn(&str) -> bool; 5] = [
        |l| l.starts_with("ipv4") && l.contains("dport=5001"),
        |l| l.starts_with("ipv4") && l.contains("dport=5002"),
        |l| l.contains("type=8"),
        |l| l.starts_with("ipv6") && l.contains("dport=5001"),
        |l| l.contains("src=10.70."),
    ];
    for kind in kinds {
        if let Some(line) = sample.lines().find(|l| kind(l)) {
            println!("        {line}");
        }
    }
    step(
        7,
        "replication: fw2's external cache vs. fw1's kernel table",
    );
    let n = backup.wait_cache_equals("external", Duration::from_secs(120), fw1_table)?;
    println!("      identical: {n} entries replicated to fw2 over FT-FW");
    let s1 = agent.stats()?;
    let s2 = backup.stats()?;
    let (tx, rx) = (&s1["sync"]["sender"], &s2["sync"]["receiver"]);
    println!(
        "      fw1 sent {} records in {} datagrams ({} retransmitted); fw2 sent {} ACKs, {} NACKs; link {}",
        tx["records_sent"],
        tx["data_datagrams"],
        tx["retransmits"],
        rx["acks_sent"],
        rx["nacks_sent"],
        s1["sync"]["links"][0]["interface"]
    );
    print_latency(&agent)?;

    step(
        8,
        "failover: fw1 dies (agent and keepalived killed, LAN and WAN links cut)",
    );
    agent.kill();
    let takeover = keepalived::fail_fw1(&lab, &mut k1, &k2)?;
    println!(
        "      fw2 holds every virtual address {:.0} ms after fw1 died",
        takeover.as_secs_f64() * 1e3
    );
    let notify = backup.wait_notify("master", Duration::from_secs(30))?;
    println!("      keepalived ran `ctsync notify master` on fw2:");
    for s in notify["steps"].as_array().into_iter().flatten() {
        println!(
            "        {:<14} {:>8.1} ms  {}",
            s["step"].as_str().unwrap_or("?"),
            s["ms"].as_f64().unwrap_or(0.0),
            s["result"]
        );
    }
    let commit = &notify["steps"][0]["result"];
    println!(
        "      commit: {} entries into fw2's kernel table ({} created, {} updated, {} failed) in {:.1} ms",
        commit["entries"],
        commit["created"],
        commit["updated"],
        commit["failed"],
        commit["ms"].as_f64().unwrap_or(0.0)
    );

    step(
        9,
        "the connections after the takeover (4 s of traffic through fw2)",
    );
    std::thread::sleep(Duration::from_secs(4));
    let reports = traffic.stop()?;
    for (fam, r) in ["IPv4", "IPv6"].iter().zip(&reports) {
        let (t, u) = (&r["tcp"], &r["udp"]);
        println!(
            "      {fam}: {}/{} TCP connections alive and echoing, {}/{} UDP flows replying",
            t["alive_at_end"], t["requested"], u["flows_with_replies_at_end"], u["requested"]
        );
        println!(
            "            longest gap per connection p50/p99/max: TCP {}/{}/{} ms, UDP {}/{}/{} ms",
            t["max_gap_ms_p50"],
            t["max_gap_ms_p99"],
            t["max_gap_ms_max"],
            u["max_gap_ms_p50"],
            u["max_gap_ms_p99"],
            u["max_gap_ms_max"]
        );
    }
    drop(k2);
    drop(k1);
    drop(agent);
    drop(backup);
    lab.down()?;
    println!(
        "\ndone in {:.0} s; lab removed.",
        t0.elapsed().as_secs_f64()
    );
    println!("Not yet shown (open issue): the XDP receive path on the backup.");
    Ok(())
}

/// fw1's replication latency (`ctsync latency`): change read from the
/// kernel to sent, and data datagram sent to its ACK from fw2.
fn print_latency(agent: &AgentProcess) -> Result<()> {
    let out = agent.ctl(&["latency"])?;
    println!("      replication latency on fw1 (ctsync latency):");
    let mut show = false;
    for line in out.lines() {
        if !line.starts_with(' ') {
            show = line.starts_with("ack_rtt") || line.starts_with("event_to_send");
        }
        if show {
            println!("        {line}");
        }
    }
    Ok(())
}

//! Real traffic through the lab: `ctsync-traffic serve` on the server and one
//! `ctsync-traffic client` per address family on the client (IPv4, which the
//! firewalls SNAT, and IPv6), until [`Traffic::stop`].

use std::{
    path::{Path, PathBuf},
    process::Child,
    time::Duration,
};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::lab::{Lab, Node, SERVER_V4, SERVER_V6};

pub const TCP_PORT: &str = "5001";
pub const UDP_PORT: &str = "5002";

pub struct Traffic {
    _server: Child,
    clients: Vec<Child>,
    stop: PathBuf,
    reports: Vec<PathBuf>,
}

/// What the clients do.
pub struct Load {
    /// TCP connections per family.
    pub tcp: u32,
    /// UDP flows per family.
    pub udp: u32,
    /// Message interval on every connection and flow.
    pub interval_ms: u32,
    /// How long, after the stop, the final probes may take to be answered.
    pub drain_ms: u32,
}

impl Load {
    /// Drain for runs with a failover in them: a TCP segment lost while the
    /// addresses moved is resent on the backed-off retransmission timer
    /// (0.2, 0.6, 1.4, 3, 6.2, 12.6, 25.4 s after the loss), so a live
    /// connection can need that long to answer its final probe.
    pub const FAILOVER_DRAIN_MS: u32 = 30_000;
    /// Drain for runs without a failover.
    pub const DRAIN_MS: u32 = 2_000;
}

fn wait_for(p: &Path) -> Result<()> {
    for _ in 0..300 {
        if p.exists() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("{} did not appear within 30 s", p.display())
}

impl Traffic {
    /// Starts the server and the clients (`bin` is ctsync-traffic; `dir` holds
    /// the ready, stop and report files) and returns once every connection is set up.
    pub fn start(lab: &Lab, bin: &Path, dir: &Path, load: &Load) -> Result<Traffic> {
        let t = bin.to_str().context("ctsync-traffic path is not UTF-8")?;
        let file = |name: &str| dir.join(name).display().to_string();
        let ready = file("server.ready");
        let server = lab.spawn(
            Node::Server,
            &[
                t,
                "serve",
                "--listen",
                "0.0.0.0",
                "--listen",
                "::",
                "--tcp-port",
                TCP_PORT,
                "--udp-port",
                UDP_PORT,
                "--ready-file",
                &ready,
            ],
        )?;
        wait_for(Path::new(&ready))?;
        let (tcp, udp, interval, drain) = (
            load.tcp.to_string(),
            load.udp.to_string(),
            load.interval_ms.to_string(),
            load.drain_ms.to_string(),
        );
        let stop = dir.join("stop");
        let mut clients = vec![];
        let mut reports = vec![];
        for (i, server) in [SERVER_V4.to_string(), SERVER_V6.to_string()]
            .iter()
            .enumerate()
        {
            let ready = file(&format!("client{i}.ready"));
            let report = file(&format!("client{i}.json"));
            clients.push(lab.spawn(
                Node::Client,
                &[
                    t,
                    "client",
                    "--server",
                    server,
                    "--tcp-port",
                    TCP_PORT,
                    "--udp-port",
                    UDP_PORT,
                    "--tcp",
                    &tcp,
                    "--udp",
                    &udp,
                    "--interval-ms",
                    &interval,
                    "--drain-timeout-ms",
                    &drain,
                    "--max-duration-s",
                    "600",
                    "--until-file",
                    &file("stop"),
                    "--ready-file",
                    &ready,
                    "--report-json",
                    &report,
                ],
            )?);
            reports.push(PathBuf::from(report));
            wait_for(Path::new(&ready))?;
        }
        Ok(Traffic {
            _server: server,
            clients,
            stop,
            reports,
        })
    }

    /// Stops the clients and returns their JSON reports (IPv4, IPv6).
    pub fn stop(mut self) -> Result<Vec<Value>> {
        std::fs::write(&self.stop, b"")?;
        for c in &mut self.clients {
            c.wait()?;
        }
        self.reports
            .iter()
            .map(|p| {
                let text = std::fs::read_to_string(p)
                    .with_context(|| format!("reading {}", p.display()))?;
                Ok(serde_json::from_str(&text)?)
            })
            .collect()
    }
}

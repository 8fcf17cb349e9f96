//! Real flows through fw1 for the benches: `ctflows` in the client sends
//! one packet per new flow (a UDP datagram or a TCP SYN) to the server,
//! and a sink in the server's namespace counts and drops them before any
//! socket, so nothing answers and each flow stays one conntrack entry
//! (with its SNAT mapping, for IPv4) on fw1.

use std::{
    net::IpAddr,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use serde_json::Value;
use xtask::{
    build, exec,
    lab::{Fw, Lab, Node, SERVER_V4, SERVER_V6},
};

/// What a flow is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Kind {
    pub tcp: bool,
    pub v6: bool,
}

impl Kind {
    pub const UDP4: Kind = Kind {
        tcp: false,
        v6: false,
    };
    pub const TCP4: Kind = Kind {
        tcp: true,
        v6: false,
    };
    pub const UDP6: Kind = Kind {
        tcp: false,
        v6: true,
    };

    pub fn proto(self) -> &'static str {
        if self.tcp { "tcp" } else { "udp" }
    }

    pub fn server(self) -> IpAddr {
        if self.v6 {
            SERVER_V6.into()
        } else {
            SERVER_V4.into()
        }
    }

    /// `UDP/IPv4 (SNAT)`, `TCP SYN/IPv4 (SNAT)`, `UDP/IPv6`.
    pub fn label(self) -> String {
        format!(
            "{}/IPv{}",
            if self.tcp { "TCP SYN" } else { "UDP" },
            if self.v6 { "6" } else { "4 (SNAT)" }
        )
    }
}

const TABLE: &str = "ctflows_sink";

/// Counts the generator's packets where they arrive, then drops them.
const SINK: &str = r#"
table inet ctflows_sink {
    counter rx {}
    chain prerouting {
        type filter hook prerouting priority raw; policy accept;
        meta l4proto { tcp, udp } th dport 10000-59999 counter name "rx" drop
    }
}
"#;

/// The sink in the server's namespace, removed on drop.
pub struct Sink<'a> {
    lab: &'a Lab,
}

impl<'a> Sink<'a> {
    pub fn install(lab: &'a Lab) -> Result<Sink<'a>> {
        let _ = lab.exec(Node::Server, &["nft", "delete", "table", "inet", TABLE]);
        exec::output_with_input(
            &mut lab.command(Node::Server, &["nft", "-f", "-"]),
            SINK.as_bytes(),
        )
        .context("installing the flow sink in the server")?;
        Ok(Sink { lab })
    }

    /// Packets the sink has counted so far.
    pub fn received(&self) -> Result<u64> {
        self.lab.nft_packets(Node::Server, TABLE, "rx")
    }
}

impl Drop for Sink<'_> {
    fn drop(&mut self) {
        let _ = self
            .lab
            .exec(Node::Server, &["nft", "delete", "table", "inet", TABLE]);
    }
}

/// What `ctflows` reported.
pub struct Sent {
    pub sent: u64,
    /// From its first to its last send.
    pub seconds: f64,
}

/// `flows` new flows of `kind` from the client, at most `rate` per second
/// (0: unpaced).
pub fn send(lab: &Lab, kind: Kind, flows: u32, rate: u32) -> Result<Sent> {
    let bin = build::bin("ctflows");
    let (flows, rate, server) = (
        flows.to_string(),
        rate.to_string(),
        kind.server().to_string(),
    );
    let out = exec::stdout(&mut lab.command(
        Node::Client,
        &[
            bin.to_str().context("path not UTF-8")?,
            "--server",
            &server,
            "--proto",
            kind.proto(),
            "--flows",
            &flows,
            "--rate",
            &rate,
        ],
    ))?;
    let v: Value = serde_json::from_str(out.trim()).with_context(|| format!("ctflows: {out}"))?;
    Ok(Sent {
        sent: v["sent"].as_u64().context("ctflows: no sent")?,
        seconds: v["seconds"].as_f64().context("ctflows: no seconds")?,
    })
}

/// Entries of `kind` towards the server in fw1's kernel table (what a
/// backup must hold once replication is quiet).
pub fn on_fw1(lab: &Lab, kind: Kind) -> Result<u64> {
    let server = kind.server().to_string();
    let family = if kind.v6 { "ipv6" } else { "ipv4" };
    let out = exec::output(&mut lab.command(
        Fw::Fw1.node(),
        &[
            "conntrack",
            "-L",
            "-f",
            family,
            "-p",
            kind.proto(),
            "-d",
            &server,
        ],
    ))?;
    // The count is conntrack's summary on stderr: "... N flow entries have been shown."
    let err = String::from_utf8_lossy(&out.stderr);
    err.split_whitespace()
        .zip(err.split_whitespace().skip(1))
        .find(|(_, w)| *w == "flow")
        .and_then(|(n, _)| n.parse().ok())
        .with_context(|| format!("no entry count in conntrack's output: {err}"))
}

/// Waits until `count` stops changing for two seconds, reaches `want`, or
/// two minutes pass; returns the last count.
pub fn settle(want: u64, mut count: impl FnMut() -> Result<u64>) -> Result<u64> {
    let mut last = (count()?, Instant::now());
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        std::thread::sleep(Duration::from_millis(500));
        let c = count()?;
        if c >= want || Instant::now() > deadline {
            return Ok(c);
        }
        if c != last.0 {
            last = (c, Instant::now());
        } else if last.1.elapsed() > Duration::from_secs(2) {
            return Ok(c);
        }
    }
}

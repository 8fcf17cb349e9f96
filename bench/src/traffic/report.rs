//! The end-of-run summary: one human line and a JSON document for the caller to
//! judge (the client itself never decides whether a run passed).

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::time::Instant;

use super::client::{Config, Kind, Open, Outcome, Proto};

/// Version of the JSON layout below; bumped on incompatible changes.
pub const REPORT_VERSION: u32 = 1;

/// Why the traffic stopped.
#[derive(Debug, Clone, Copy, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    Duration,
    UntilFile,
    Signal,
    MaxDuration,
}

impl StopReason {
    /// The same name as in the JSON report.
    pub fn name(self) -> &'static str {
        match self {
            Self::Duration => "duration",
            Self::UntilFile => "until_file",
            Self::Signal => "signal",
            Self::MaxDuration => "max_duration",
        }
    }
}

/// Milestones of the run.
pub struct Times {
    pub epoch: Instant,
    pub ready_at: Instant,
    pub stop_at: Instant,
    pub done_at: Instant,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub version: u32,
    /// `"echo"` (a message every interval) or `"hold"` (idle after one exchange).
    pub mode: &'static str,
    pub server: String,
    pub tcp_port: u16,
    pub udp_port: u16,
    pub interval_ms: u64,
    pub message_bytes: usize,
    pub stop_reason: StopReason,
    /// Start to end of setup (all connections opened and first echoes back).
    pub setup_ms: f64,
    /// End of setup to stop: the traffic proper.
    pub run_ms: f64,
    /// Stop to all final probes answered or timed out.
    pub drain_ms: f64,
    pub tcp: TcpReport,
    pub udp: UdpReport,
}

#[derive(Debug, Default, Serialize)]
pub struct TcpReport {
    /// `--tcp N`.
    pub requested: u64,
    /// Connections established.
    pub opened: u64,
    /// Connects that failed (kinds in `connect_errors_by_kind`).
    pub failed_to_open: u64,
    /// Connects never tried because the run stopped during setup.
    pub not_attempted: u64,
    /// Opened and still echoing everything, final probe included, at the end.
    pub alive_at_end: u64,
    /// Ended by a reset (`reset` or `broken_pipe` kinds).
    pub reset: u64,
    /// Ended by the server closing (FIN).
    pub closed_by_peer: u64,
    /// Still open but the final probe's echo did not come back within the drain.
    pub stalled_at_end: u64,
    pub connect_errors_by_kind: BTreeMap<String, u64>,
    /// Why each opened connection that is not alive ended, by kind.
    pub errors_by_kind: BTreeMap<String, u64>,
    pub messages_sent: u64,
    pub messages_echoed: u64,
    /// Ticks skipped because a connection had too much unsent data queued.
    pub sends_skipped: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    /// Per-connection longest silence (ms); `null` in hold mode or with no data.
    pub max_gap_ms_p50: Option<f64>,
    pub max_gap_ms_p99: Option<f64>,
    pub max_gap_ms_max: Option<f64>,
    /// The first few connections that failed or died, for debugging.
    pub dead_samples: Vec<DeadSample>,
}

#[derive(Debug, Default, Serialize)]
pub struct UdpReport {
    /// `--udp M`.
    pub requested: u64,
    /// Flows whose socket was opened.
    pub flows: u64,
    pub failed_to_open: u64,
    pub not_attempted: u64,
    /// Datagrams sent successfully, and distinct replies received.
    pub sent: u64,
    pub received: u64,
    pub send_failed: u64,
    /// Flows that got at least one reply.
    pub flows_with_any_reply: u64,
    /// Flows whose final probe was answered within the drain timeout.
    pub flows_with_replies_at_end: u64,
    pub open_errors_by_kind: BTreeMap<String, u64>,
    /// Transient errors summed over flows (ICMP errors, duplicates, strays).
    pub errors_by_kind: BTreeMap<String, u64>,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub max_gap_ms_p50: Option<f64>,
    pub max_gap_ms_p99: Option<f64>,
    pub max_gap_ms_max: Option<f64>,
    pub dead_samples: Vec<DeadSample>,
}

/// One connection or flow that did not make it to the end alive.
#[derive(Debug, Serialize)]
pub struct DeadSample {
    /// Index of the connection or flow (0-based, per protocol).
    pub id: u32,
    /// Local (source) port, when the socket got that far: the conntrack tuple's key.
    pub local_port: Option<u16>,
    pub reason: String,
}

fn ms(d: Duration) -> f64 {
    d.as_micros() as f64 / 1000.0
}

fn bump(map: &mut BTreeMap<String, u64>, kind: &Kind, n: u64) {
    *map.entry(kind.to_string()).or_default() += n;
}

/// Gap histogram in microseconds (3 significant digits is plenty for ms reporting).
struct Gaps(Histogram<u64>);

impl Gaps {
    fn new() -> Self {
        Self(Histogram::new(3).expect("3 significant figures is valid"))
    }
    fn record(&mut self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        // Auto-resizing histogram: recording only fails on absurd values; saturate.
        let _ = self.0.record(us).or_else(|_| self.0.record(self.0.max()));
    }
    /// (p50, p99, max) in ms, or all `None` with no samples.
    fn stats(&self) -> (Option<f64>, Option<f64>, Option<f64>) {
        if self.0.is_empty() {
            return (None, None, None);
        }
        let q = |q: f64| Some(self.0.value_at_quantile(q) as f64 / 1000.0);
        (q(0.5), q(0.99), Some(self.0.max() as f64 / 1000.0))
    }
}

/// Sums the outcomes into the report.
pub fn build(
    cfg: &Config,
    outcomes: &[Outcome],
    stop_reason: StopReason,
    t: Times,
    dead_samples: usize,
) -> Report {
    let mut tcp = TcpReport {
        requested: cfg.tcp.into(),
        ..Default::default()
    };
    let mut udp = UdpReport {
        requested: cfg.udp.into(),
        ..Default::default()
    };
    let mut tcp_gaps = Gaps::new();
    let mut udp_gaps = Gaps::new();
    for o in outcomes {
        let dead_reason: Option<String> = match o.proto {
            Proto::Tcp => match &o.open {
                Open::NotAttempted => {
                    tcp.not_attempted += 1;
                    None
                }
                Open::Failed(k) => {
                    tcp.failed_to_open += 1;
                    bump(&mut tcp.connect_errors_by_kind, k, 1);
                    Some(format!("connect: {k}"))
                }
                Open::Opened => {
                    tcp.opened += 1;
                    tcp.messages_sent += o.sent;
                    tcp.messages_echoed += o.replies;
                    tcp.sends_skipped += o.sends_skipped;
                    tcp.bytes_sent += o.bytes_sent;
                    tcp.bytes_received += o.bytes_received;
                    if !cfg.hold
                        && let Some(g) = o.max_gap_until(t.stop_at)
                    {
                        tcp_gaps.record(g);
                    }
                    if o.alive_at_end {
                        tcp.alive_at_end += 1;
                        None
                    } else {
                        let k = o.end_error.clone().unwrap_or(Kind::Borrowed("unknown"));
                        match &*k {
                            "reset" | "broken_pipe" => tcp.reset += 1,
                            "closed_by_peer" => tcp.closed_by_peer += 1,
                            "stalled_at_end" => tcp.stalled_at_end += 1,
                            _ => {}
                        }
                        bump(&mut tcp.errors_by_kind, &k, 1);
                        Some(k.into_owned())
                    }
                }
            },
            Proto::Udp => match &o.open {
                Open::NotAttempted => {
                    udp.not_attempted += 1;
                    None
                }
                Open::Failed(k) => {
                    udp.failed_to_open += 1;
                    bump(&mut udp.open_errors_by_kind, k, 1);
                    Some(format!("open: {k}"))
                }
                Open::Opened => {
                    udp.flows += 1;
                    udp.sent += o.sent - o.send_failed;
                    udp.send_failed += o.send_failed;
                    udp.received += o.replies;
                    udp.bytes_sent += o.bytes_sent;
                    udp.bytes_received += o.bytes_received;
                    for (k, n) in &o.errors {
                        bump(&mut udp.errors_by_kind, k, *n);
                    }
                    if o.replies > 0 {
                        udp.flows_with_any_reply += 1;
                    }
                    if !cfg.hold
                        && let Some(g) = o.max_gap_until(t.stop_at)
                    {
                        udp_gaps.record(g);
                    }
                    if o.alive_at_end {
                        udp.flows_with_replies_at_end += 1;
                        None
                    } else {
                        let errs: Vec<String> =
                            o.errors.iter().map(|(k, n)| format!("{k}x{n}")).collect();
                        Some(if errs.is_empty() {
                            "no reply at end".to_string()
                        } else {
                            format!("no reply at end ({})", errs.join(", "))
                        })
                    }
                }
            },
        };
        if let Some(reason) = dead_reason {
            let samples = match o.proto {
                Proto::Tcp => &mut tcp.dead_samples,
                Proto::Udp => &mut udp.dead_samples,
            };
            if samples.len() < dead_samples {
                samples.push(DeadSample {
                    id: o.id,
                    local_port: o.local_port,
                    reason,
                });
            }
        }
    }
    (tcp.max_gap_ms_p50, tcp.max_gap_ms_p99, tcp.max_gap_ms_max) = tcp_gaps.stats();
    (udp.max_gap_ms_p50, udp.max_gap_ms_p99, udp.max_gap_ms_max) = udp_gaps.stats();
    Report {
        version: REPORT_VERSION,
        mode: if cfg.hold { "hold" } else { "echo" },
        server: cfg.server.to_string(),
        tcp_port: cfg.tcp_port,
        udp_port: cfg.udp_port,
        interval_ms: cfg.interval.as_millis() as u64,
        message_bytes: cfg.message_bytes,
        stop_reason,
        setup_ms: ms(t.ready_at - t.epoch),
        run_ms: ms(t.stop_at.saturating_duration_since(t.ready_at)),
        drain_ms: ms(t.done_at - t.stop_at),
        tcp,
        udp,
    }
}

fn opt_ms(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_string(), |v| format!("{v:.1}"))
}

impl Report {
    /// The one-line human summary.
    pub fn summary(&self) -> String {
        let t = &self.tcp;
        let u = &self.udp;
        let mut parts = Vec::new();
        if t.requested > 0 {
            parts.push(format!(
                "tcp {}/{} opened ({} failed, {} not tried), {} alive at end, {} reset, \
                 {} closed, {} stalled, {} other; max gap p50/p99/max {}/{}/{} ms",
                t.opened,
                t.requested,
                t.failed_to_open,
                t.not_attempted,
                t.alive_at_end,
                t.reset,
                t.closed_by_peer,
                t.stalled_at_end,
                t.opened - t.alive_at_end - t.reset - t.closed_by_peer - t.stalled_at_end,
                opt_ms(t.max_gap_ms_p50),
                opt_ms(t.max_gap_ms_p99),
                opt_ms(t.max_gap_ms_max),
            ));
        }
        if u.requested > 0 {
            parts.push(format!(
                "udp {}/{} flows ({} failed, {} not tried), {}/{} replies, \
                 {} replying at end; max gap p50/p99/max {}/{}/{} ms",
                u.flows,
                u.requested,
                u.failed_to_open,
                u.not_attempted,
                u.received,
                u.sent,
                u.flows_with_replies_at_end,
                opt_ms(u.max_gap_ms_p50),
                opt_ms(u.max_gap_ms_p99),
                opt_ms(u.max_gap_ms_max),
            ));
        }
        format!(
            "ctsync-traffic {}: {} | stopped by {} after {:.1} s",
            self.mode,
            parts.join(" | "),
            self.stop_reason.name(),
            self.run_ms / 1000.0
        )
    }
}

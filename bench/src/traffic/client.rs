//! `client`: opens TCP connections and UDP flows to one server, sends a numbered
//! message on each every interval, checks the echoes, and reports per-connection
//! survival and the longest silence each one saw.
//!
//! Life of a run, each phase bounded in time:
//! 1. setup: connections and flows start in small batches (no SYN burst), each sends
//!    message 0; setup ends when every one has its first echo or has failed (or
//!    2 s after the last batch's connect timeout). The client's
//!    `--ready-file` is written then, so a test knows the conntrack entries exist.
//! 2. run: traffic until `--duration-s` (counted from the end of setup), the
//!    `--until-file` appears, SIGINT/SIGTERM, or `--max-duration-s` since start.
//! 3. drain: every connection and flow sends a final probe; a TCP connection is
//!    alive at the end if every message it sent, probe included, came back within
//!    `--drain-timeout-ms`; an UDP flow if any probe got a reply in that time.
//!
//! Cost: about 14 µs of client CPU per message on loopback on a 2-core test machine
//! (kernel TCP work included), so 5000 connections every 100 ms (50k messages/s)
//! saturate such a machine together with the server, and the measured gaps then show
//! scheduling delay; for thousands of connections use `--interval-ms 1000` or `--hold`.
//!
//! Gaps: for each connection, the longest time without an echo, from its first send
//! through every echo to the moment the run stopped (echoes during the drain count
//! as arriving at the stop). In steady state it is about the interval; a failover
//! shows up as a longer one; a connection that died keeps its gap growing until the
//! stop.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Result, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream, UdpSocket};
use tokio::sync::watch;
use tokio::time::{Instant, MissedTickBehavior};

use super::report::{self, Report, StopReason};
use super::{sys, wire};

/// Arguments of `ctsync-traffic client`.
#[derive(Debug, clap::Args)]
pub struct ClientArgs {
    /// Server address (IPv4 or IPv6). Required: traffic only ever goes there.
    #[arg(long, value_name = "ADDR")]
    pub server: IpAddr,
    /// Server TCP echo port.
    #[arg(long, value_name = "PORT", default_value_t = super::DEFAULT_PORT,
          value_parser = clap::value_parser!(u16).range(1..))]
    pub tcp_port: u16,
    /// Server UDP echo port.
    #[arg(long, value_name = "PORT", default_value_t = super::DEFAULT_PORT,
          value_parser = clap::value_parser!(u16).range(1..))]
    pub udp_port: u16,
    /// Number of TCP connections.
    #[arg(long = "tcp", value_name = "N", default_value_t = 0)]
    pub tcp: u32,
    /// Number of UDP flows (one socket, hence one source port, each).
    #[arg(long = "udp", value_name = "M", default_value_t = 0)]
    pub udp: u32,
    /// Milliseconds between two messages on one connection or flow.
    #[arg(long, value_name = "MS", default_value_t = 100)]
    pub interval_ms: u64,
    /// Seconds of traffic after setup. Optional with --until-file.
    #[arg(long, value_name = "S")]
    pub duration_s: Option<f64>,
    /// Stop once this file exists (polled every 50 ms). Must not exist at start.
    #[arg(long, value_name = "FILE")]
    pub until_file: Option<PathBuf>,
    /// Hard cap on the whole run, setup included, whatever else is set.
    #[arg(long, value_name = "S", default_value_t = 3600.0)]
    pub max_duration_s: f64,
    /// Exchange one message per connection/flow, then stay idle until the stop
    /// (many ESTABLISHED entries cheaply); the final probe still checks survival.
    #[arg(long)]
    pub hold: bool,
    /// Write the JSON report here (`-` for stdout).
    #[arg(long, value_name = "FILE")]
    pub report_json: Option<PathBuf>,
    /// Written (atomically) once setup is complete; a stale one is removed at start.
    #[arg(long, value_name = "FILE")]
    pub ready_file: Option<PathBuf>,
    /// Timeout of one TCP connect.
    #[arg(long, value_name = "MS", default_value_t = 3000)]
    pub connect_timeout_ms: u64,
    /// Connections and flows started together.
    #[arg(long, value_name = "K", default_value_t = 100)]
    pub connect_batch: u32,
    /// Milliseconds between two batches (5000 connections: 1 s at the defaults).
    #[arg(long, value_name = "MS", default_value_t = 20)]
    pub connect_batch_interval_ms: u64,
    /// How long, after the stop, the final probes may take to be answered.
    #[arg(long, value_name = "MS", default_value_t = 2000)]
    pub drain_timeout_ms: u64,
    /// Bind fixed source ports: TCP connection i uses BASE+i, UDP flow j uses
    /// BASE+N+j, so the conntrack tuples are known in advance. Default: ephemeral.
    #[arg(long, value_name = "PORT")]
    pub source_port_base: Option<u16>,
    /// Size of each message, header included.
    #[arg(long, value_name = "BYTES", default_value_t = 64)]
    pub message_bytes: usize,
}

/// Limits on counts, so that a typo cannot ask for something absurd.
const MAX_CONNECTIONS: u32 = 60_000;
const MAX_SECONDS: f64 = 7.0 * 24.0 * 3600.0;
/// Open files beyond the sockets: runtime, stdio, report file.
const NOFILE_SLACK: u64 = 64;
/// How often the stop conditions (until-file, duration) are checked.
const POLL: Duration = Duration::from_millis(50);
/// How long setup waits, past the last batch's connect timeout, for first echoes
/// that are late (on a saturated machine message 0 can be resent on TCP's backoff);
/// then it runs anyway. Not the drain timeout: failover runs need a long drain but
/// must not wait as long to start.
const SETUP_ECHO_WAIT: Duration = Duration::from_secs(2);
/// Interval between final UDP probes during the drain: a single lost datagram
/// must not mark a flow dead.
const UDP_PROBE_INTERVAL: Duration = Duration::from_millis(200);
/// Bytes a TCP connection may have queued unsent in userspace; beyond that, new
/// messages are skipped (and counted) until the connection drains.
const MAX_TCP_BACKLOG: usize = 256 * 1024;
/// Transient UDP errors after which a flow gives up (bounds a pathological loop).
const MAX_UDP_ERRORS: u64 = 100_000;
/// Connections and flows whose failure is listed individually in the report.
const DEAD_SAMPLES: usize = 20;

/// A validated client configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub server: IpAddr,
    pub tcp_port: u16,
    pub udp_port: u16,
    pub tcp: u32,
    pub udp: u32,
    pub interval: Duration,
    pub duration: Option<Duration>,
    pub until_file: Option<PathBuf>,
    pub max_duration: Duration,
    pub hold: bool,
    pub ready_file: Option<PathBuf>,
    pub connect_timeout: Duration,
    pub connect_batch: u32,
    pub connect_batch_interval: Duration,
    pub drain_timeout: Duration,
    pub source_port_base: Option<u16>,
    pub message_bytes: usize,
}

fn seconds(name: &str, v: f64) -> Result<Duration> {
    if !(v.is_finite() && v > 0.0 && v <= MAX_SECONDS) {
        bail!("{name} must be > 0 and at most {MAX_SECONDS} s, got {v}");
    }
    Ok(Duration::from_secs_f64(v))
}

fn millis(name: &str, v: u64, min: u64, max: u64) -> Result<Duration> {
    if !(min..=max).contains(&v) {
        bail!("{name} must be between {min} and {max} ms, got {v}");
    }
    Ok(Duration::from_millis(v))
}

impl ClientArgs {
    /// Checks the arguments against each other and against the limits.
    pub fn validate(&self) -> Result<Config> {
        if self.tcp == 0 && self.udp == 0 {
            bail!("nothing to do: give --tcp N and/or --udp M");
        }
        if self.tcp > MAX_CONNECTIONS || self.udp > MAX_CONNECTIONS {
            bail!("--tcp and --udp are limited to {MAX_CONNECTIONS} each");
        }
        if self.server.is_unspecified() || self.server.is_multicast() {
            bail!("--server {} is not a unicast host address", self.server);
        }
        if self.duration_s.is_none() && self.until_file.is_none() {
            bail!("give --duration-s and/or --until-file: the run needs an end");
        }
        if let Some(f) = &self.until_file
            && f.exists()
        {
            bail!(
                "--until-file {} already exists (left by an earlier run?); remove it first",
                f.display()
            );
        }
        if let Some(base) = self.source_port_base {
            let last = u64::from(base) + u64::from(self.tcp) + u64::from(self.udp) - 1;
            if base == 0 || last > 65_535 {
                bail!("--source-port-base {base}: ports {base}..={last} do not fit in 1..=65535");
            }
        }
        if !(wire::MIN_MESSAGE_BYTES..=wire::MAX_MESSAGE_BYTES).contains(&self.message_bytes) {
            bail!(
                "--message-bytes must be between {} and {}",
                wire::MIN_MESSAGE_BYTES,
                wire::MAX_MESSAGE_BYTES
            );
        }
        if self.connect_batch == 0 {
            bail!("--connect-batch must be at least 1");
        }
        Ok(Config {
            server: self.server,
            tcp_port: self.tcp_port,
            udp_port: self.udp_port,
            tcp: self.tcp,
            udp: self.udp,
            interval: millis("--interval-ms", self.interval_ms, 1, 3_600_000)?,
            duration: self
                .duration_s
                .map(|d| seconds("--duration-s", d))
                .transpose()?,
            until_file: self.until_file.clone(),
            max_duration: seconds("--max-duration-s", self.max_duration_s)?,
            hold: self.hold,
            ready_file: self.ready_file.clone(),
            connect_timeout: millis("--connect-timeout-ms", self.connect_timeout_ms, 1, 600_000)?,
            connect_batch: self.connect_batch,
            connect_batch_interval: millis(
                "--connect-batch-interval-ms",
                self.connect_batch_interval_ms,
                0,
                60_000,
            )?,
            drain_timeout: millis("--drain-timeout-ms", self.drain_timeout_ms, 1, 600_000)?,
            source_port_base: self.source_port_base,
            message_bytes: self.message_bytes,
        })
    }
}

/// Error kinds are mostly static names; a `Cow` avoids allocating per UDP error.
pub type Kind = Cow<'static, str>;

/// Names an I/O error for the report's `*errors_by_kind` maps.
fn io_kind(e: &std::io::Error) -> Kind {
    use std::io::ErrorKind as K;
    Cow::Borrowed(match e.kind() {
        K::ConnectionRefused => "refused",
        K::ConnectionReset => "reset",
        K::ConnectionAborted => "aborted",
        K::BrokenPipe => "broken_pipe",
        K::TimedOut => "timed_out",
        K::HostUnreachable => "host_unreachable",
        K::NetworkUnreachable => "network_unreachable",
        K::NetworkDown => "network_down",
        K::AddrInUse => "addr_in_use",
        K::AddrNotAvailable => "addr_not_available",
        K::PermissionDenied => "permission_denied",
        K::UnexpectedEof => "closed_by_peer",
        _ => {
            return Cow::Owned(match e.raw_os_error() {
                Some(n) => format!("errno_{n}"),
                None => format!("{:?}", e.kind()).to_lowercase(),
            });
        }
    })
}

/// Which protocol an outcome belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    Tcp,
    Udp,
}

/// Whether a connection or flow got going.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Open {
    /// The run stopped before its batch came up.
    NotAttempted,
    /// connect (TCP) or socket/bind (UDP) failed.
    Failed(Kind),
    Opened,
}

/// What one connection or flow did, returned by its task and summed by `report`.
#[derive(Debug)]
pub struct Outcome {
    pub proto: Proto,
    pub id: u32,
    pub local_port: Option<u16>,
    pub open: Open,
    /// TCP: echoes all came back after the final probe; UDP: a probe was answered.
    pub alive_at_end: bool,
    /// TCP: why the connection ended early (or `stalled_at_end`).
    pub end_error: Option<Kind>,
    /// UDP: transient errors by kind (ICMP errors, duplicates, stray datagrams).
    pub errors: BTreeMap<Kind, u64>,
    /// Messages sent (TCP: queued for sending) and distinct echoes received.
    pub sent: u64,
    pub replies: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    /// TCP: messages not queued because the connection had too much unsent.
    pub sends_skipped: u64,
    /// UDP: sends that failed (their sequence number is used up all the same).
    pub send_failed: u64,
    /// When message 0 was sent; the gap clock starts there.
    pub first_send: Option<Instant>,
    /// When the last echo arrived (the trailing gap is measured from it).
    pub last_reply: Option<Instant>,
    /// Longest time between consecutive echoes (first send counts as one).
    pub max_gap: Duration,
}

impl Outcome {
    fn new(proto: Proto, id: u32) -> Self {
        Self {
            proto,
            id,
            local_port: None,
            open: Open::NotAttempted,
            alive_at_end: false,
            end_error: None,
            errors: BTreeMap::new(),
            sent: 0,
            replies: 0,
            bytes_sent: 0,
            bytes_received: 0,
            sends_skipped: 0,
            send_failed: 0,
            first_send: None,
            last_reply: None,
            max_gap: Duration::ZERO,
        }
    }

    fn mark_first_send(&mut self, now: Instant) {
        if self.first_send.is_none() {
            self.first_send = Some(now);
        }
    }

    /// Records an echo received at `now`. Gaps are measured over the traffic window
    /// only: an echo that arrives during the drain counts as arriving at the stop, so
    /// the final probes' own latency (all connections probe at once) is not a gap.
    fn mark_reply(&mut self, now: Instant, stop: Option<Instant>) {
        let now = stop.map_or(now, |s| now.min(s));
        if let Some(prev) = self.last_reply.or(self.first_send) {
            self.max_gap = self.max_gap.max(now.saturating_duration_since(prev));
        }
        self.last_reply = Some(self.last_reply.map_or(now, |l| l.max(now)));
    }

    /// The longest silence including the one from the last echo to the stop.
    pub fn max_gap_until(&self, stop: Instant) -> Option<Duration> {
        let start = self.first_send?;
        let last = self.last_reply.unwrap_or(start);
        Some(self.max_gap.max(stop.saturating_duration_since(last)))
    }

    fn count_error(&mut self, kind: Kind) {
        *self.errors.entry(kind).or_default() += 1;
    }
}

/// State shared by the driver and every connection task.
struct Shared {
    cfg: Config,
    /// `Some(stop instant)` once the run is over; tasks then send their final probe.
    stop: watch::Receiver<Option<Instant>>,
    /// Tasks that got their first echo, failed, or were never started.
    settled: AtomicUsize,
    /// No task outlives this, whatever happens to the network.
    hard_deadline: Instant,
}

/// Counts a task as settled exactly once, on first echo or, failing that, on exit.
struct Settle<'a> {
    counter: &'a AtomicUsize,
    done: bool,
}

impl<'a> Settle<'a> {
    fn new(counter: &'a AtomicUsize) -> Self {
        Self {
            counter,
            done: false,
        }
    }
    fn settle(&mut self) {
        if !self.done {
            self.done = true;
            self.counter.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl Drop for Settle<'_> {
    fn drop(&mut self) {
        self.settle();
    }
}

/// SIGINT or SIGTERM: stop the traffic and still write the report.
struct Signals {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self {
            int: signal(SignalKind::interrupt())?,
            term: signal(SignalKind::terminate())?,
        })
    }
    async fn recv(&mut self) {
        tokio::select! {
            _ = self.int.recv() => {}
            _ = self.term.recv() => {}
        }
    }
}

/// Runs the client and returns its report.
pub async fn run(cfg: Config) -> Result<Report> {
    let total = (cfg.tcp + cfg.udp) as usize;
    sys::ensure_nofile(total as u64 + NOFILE_SLACK)?;
    if let Some(f) = &cfg.ready_file {
        sys::remove_stale(f)?;
    }
    let mut signals = Signals::new()?;

    let epoch = Instant::now();
    let cap = epoch + cfg.max_duration;
    let last_batch = ((total - 1) / cfg.connect_batch as usize) as u32;
    let last_start = epoch + cfg.connect_batch_interval * last_batch;
    let setup_limit = last_start + cfg.connect_timeout + SETUP_ECHO_WAIT;
    let (stop_tx, stop_rx) = watch::channel(None);
    let shared = Arc::new(Shared {
        hard_deadline: cap.max(setup_limit)
            + cfg.connect_timeout
            + cfg.drain_timeout
            + Duration::from_secs(5),
        cfg,
        stop: stop_rx,
        settled: AtomicUsize::new(0),
    });
    let cfg = &shared.cfg;
    eprintln!(
        "ctsync-traffic client: {} tcp + {} udp to {} (tcp port {}, udp port {}), {}",
        cfg.tcp,
        cfg.udp,
        cfg.server,
        cfg.tcp_port,
        cfg.udp_port,
        if cfg.hold {
            "hold".to_string()
        } else {
            format!("every {} ms", cfg.interval.as_millis())
        }
    );

    let mut tasks = Vec::with_capacity(total);
    for i in 0..total {
        let start_at = epoch + cfg.connect_batch_interval * (i / cfg.connect_batch as usize) as u32;
        let sh = shared.clone();
        let i = i as u32;
        tasks.push(if i < cfg.tcp {
            tokio::spawn(async move { tcp_conn(i, start_at, &sh).await })
        } else {
            tokio::spawn(async move { udp_flow(i - sh.cfg.tcp, start_at, &sh).await })
        });
    }

    // Setup phase: until every connection and flow has settled.
    let mut poll = tokio::time::interval(POLL);
    poll.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut stop_reason = None;
    while stop_reason.is_none() {
        tokio::select! {
            _ = poll.tick() => {}
            _ = signals.recv() => stop_reason = Some(StopReason::Signal),
        }
        if shared.settled.load(Ordering::Relaxed) >= total {
            break;
        }
        let now = Instant::now();
        if now >= setup_limit {
            eprintln!(
                "ctsync-traffic client: setup not complete after {:.1} s; running anyway",
                (now - epoch).as_secs_f64()
            );
            break;
        }
        stop_reason = stop_reason.or_else(|| check_stop(cfg, now, cap, None));
    }
    let ready_at = Instant::now();

    // Run phase.
    if stop_reason.is_none() {
        if let Some(f) = &cfg.ready_file {
            sys::write_atomic(f, format!("pid={}\n", std::process::id()).as_bytes())?;
        }
        eprintln!(
            "ctsync-traffic client: setup done in {:.2} s",
            (ready_at - epoch).as_secs_f64()
        );
        let end = cfg.duration.map(|d| ready_at + d);
        while stop_reason.is_none() {
            tokio::select! {
                _ = poll.tick() => {}
                _ = signals.recv() => stop_reason = Some(StopReason::Signal),
            }
            stop_reason = stop_reason.or_else(|| check_stop(cfg, Instant::now(), cap, end));
        }
    }
    let stop_reason = stop_reason.unwrap_or(StopReason::Duration);
    let stop_at = Instant::now();
    stop_tx.send_replace(Some(stop_at));
    eprintln!(
        "ctsync-traffic client: stopping ({}), draining",
        stop_reason.name()
    );

    // Drain phase: every task ends by itself within connect timeout + drain timeout
    // (and before the hard deadline); abort any that somehow does not.
    let collect_deadline =
        (stop_at + cfg.connect_timeout + cfg.drain_timeout + Duration::from_secs(2))
            .min(shared.hard_deadline);
    let mut outcomes = Vec::with_capacity(total);
    for (i, task) in tasks.into_iter().enumerate() {
        let abort = task.abort_handle();
        let (proto, id) = if (i as u32) < cfg.tcp {
            (Proto::Tcp, i as u32)
        } else {
            (Proto::Udp, i as u32 - cfg.tcp)
        };
        let outcome = match tokio::time::timeout_at(collect_deadline, task).await {
            Ok(Ok(o)) => o,
            Ok(Err(e)) => lost_task(proto, id, if e.is_panic() { "panic" } else { "cancelled" }),
            Err(_) => {
                abort.abort();
                lost_task(proto, id, "task_timeout")
            }
        };
        outcomes.push(outcome);
    }
    let done_at = Instant::now();
    Ok(report::build(
        cfg,
        &outcomes,
        stop_reason,
        report::Times {
            epoch,
            ready_at,
            stop_at,
            done_at,
        },
        DEAD_SAMPLES,
    ))
}

/// The outcome of a task that could not report (it panicked or overran).
fn lost_task(proto: Proto, id: u32, why: &'static str) -> Outcome {
    let mut o = Outcome::new(proto, id);
    o.open = Open::Opened;
    o.end_error = Some(Cow::Borrowed(why));
    o
}

fn check_stop(
    cfg: &Config,
    now: Instant,
    cap: Instant,
    end: Option<Instant>,
) -> Option<StopReason> {
    if cfg.until_file.as_ref().is_some_and(|f| f.exists()) {
        Some(StopReason::UntilFile)
    } else if end.is_some_and(|e| now >= e) {
        Some(StopReason::Duration)
    } else if now >= cap {
        Some(StopReason::MaxDuration)
    } else {
        None
    }
}

/// Waits for this task's batch, unless the run stops first (then returns false).
async fn wait_start(start_at: Instant, stop: &mut watch::Receiver<Option<Instant>>) -> bool {
    if stop.borrow_and_update().is_some() {
        return false;
    }
    tokio::select! {
        _ = tokio::time::sleep_until(start_at) => stop.borrow_and_update().is_none(),
        _ = stop.changed() => false,
    }
}

/// Spreads the messages of different connections over the interval, so that the
/// network sees a steady rate rather than one burst per interval. Less than one
/// interval, so message 1 follows message 0 within an interval and the first gap is
/// no longer than the steady ones.
fn phase(id: u32, interval: Duration) -> Duration {
    let spread = u64::from(id).wrapping_mul(2_654_435_761) % 1024;
    interval.mul_f64(spread as f64 / 1024.0)
}

fn source_port(cfg: &Config, index: u32) -> u16 {
    cfg.source_port_base.map_or(0, |b| b + index as u16)
}

async fn connect_tcp(id: u32, cfg: &Config) -> Result<TcpStream, Kind> {
    let server = SocketAddr::new(cfg.server, cfg.tcp_port);
    let sock = if server.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(|e| io_kind(&e))?;
    if cfg.source_port_base.is_some() {
        // A fixed port from the previous run may still be in TIME_WAIT.
        sock.set_reuseaddr(true).map_err(|e| io_kind(&e))?;
        let local = SocketAddr::new(sys::unspecified_like(cfg.server), source_port(cfg, id));
        sock.bind(local).map_err(|e| io_kind(&e))?;
    }
    match tokio::time::timeout(cfg.connect_timeout, sock.connect(server)).await {
        Ok(Ok(s)) => Ok(s),
        Ok(Err(e)) => Err(io_kind(&e)),
        Err(_) => Err(Cow::Borrowed("timeout")),
    }
}

/// One TCP connection: connect, then a single loop that writes queued messages,
/// reads echoes, queues a message per tick and reacts to the stop, all through
/// cancel-safe operations so that none of them blocks the others.
async fn tcp_conn(id: u32, start_at: Instant, sh: &Shared) -> Outcome {
    let cfg = &sh.cfg;
    let mut out = Outcome::new(Proto::Tcp, id);
    let mut settle = Settle::new(&sh.settled);
    let mut stop = sh.stop.clone();
    if !wait_start(start_at, &mut stop).await {
        return out;
    }
    let mut stream = match connect_tcp(id, cfg).await {
        Ok(s) => s,
        Err(kind) => {
            out.open = Open::Failed(kind);
            return out;
        }
    };
    out.open = Open::Opened;
    out.local_port = stream.local_addr().ok().map(|a| a.port());
    // Each message must leave at once, or Nagle would add gaps of its own.
    let _ = stream.set_nodelay(true);
    let (mut rd, mut wr) = stream.split();

    let len = cfg.message_bytes;
    let mut scratch = vec![0u8; len];
    let mut rbuf = vec![0u8; len * 8];
    let mut filled = 0usize;
    let mut wbuf: Vec<u8> = Vec::with_capacity(len * 4);
    let mut wpos = 0usize;
    let queue = |wbuf: &mut Vec<u8>, out: &mut Outcome| {
        let at = wbuf.len();
        wbuf.resize(at + len, 0);
        wire::encode(&mut wbuf[at..], id, out.sent);
        out.sent += 1;
    };

    queue(&mut wbuf, &mut out);
    let now = Instant::now();
    out.mark_first_send(now);
    let mut tick = tokio::time::interval_at(now + phase(id, cfg.interval), cfg.interval);
    tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let deadline = tokio::time::sleep_until(sh.hard_deadline);
    tokio::pin!(deadline);
    let mut stopping = false;
    let mut stop_at = None;

    loop {
        let stopped = *stop.borrow_and_update();
        if !stopping && let Some(at) = stopped {
            // Final probe: proves the connection still carries data right now.
            stopping = true;
            stop_at = Some(at);
            queue(&mut wbuf, &mut out);
            let drain_end = (Instant::now() + cfg.drain_timeout).min(sh.hard_deadline);
            deadline.as_mut().reset(drain_end);
        }
        if stopping && out.replies == out.sent {
            out.alive_at_end = true;
            break;
        }
        tokio::select! {
            r = rd.read(&mut rbuf[filled..]) => match r {
                Ok(0) => {
                    out.end_error = Some(Cow::Borrowed("closed_by_peer"));
                    break;
                }
                Ok(n) => {
                    out.bytes_received += n as u64;
                    filled += n;
                    let now = Instant::now();
                    let mut used = 0;
                    while filled - used >= len {
                        let frame = &rbuf[used..used + len];
                        let expected = out.replies < out.sent
                            && wire::matches(frame, id, out.replies, &mut scratch);
                        if !expected {
                            out.end_error = Some(Cow::Borrowed("echo_mismatch"));
                            break;
                        }
                        used += len;
                        out.replies += 1;
                        out.mark_reply(now, stop_at);
                        settle.settle();
                    }
                    if out.end_error.is_some() {
                        break;
                    }
                    rbuf.copy_within(used..filled, 0);
                    filled -= used;
                }
                Err(e) => {
                    out.end_error = Some(io_kind(&e));
                    break;
                }
            },
            r = wr.write(&wbuf[wpos..]), if wpos < wbuf.len() => match r {
                Ok(n) => {
                    out.bytes_sent += n as u64;
                    wpos += n;
                    if wpos == wbuf.len() {
                        wbuf.clear();
                        wpos = 0;
                    }
                }
                Err(e) => {
                    out.end_error = Some(io_kind(&e));
                    break;
                }
            },
            _ = tick.tick(), if !stopping && !cfg.hold => {
                if wbuf.len() - wpos >= MAX_TCP_BACKLOG {
                    out.sends_skipped += 1;
                } else {
                    queue(&mut wbuf, &mut out);
                }
            }
            _ = stop.changed(), if !stopping => {}
            _ = &mut deadline => {
                let why = if stopping { "stalled_at_end" } else { "hard_deadline" };
                out.end_error = Some(Cow::Borrowed(why));
                break;
            }
        }
    }
    if cfg.source_port_base.is_some() {
        // The side that closes first keeps the port in TIME_WAIT for 60 s, and
        // outside loopback (`tcp_tw_reuse=2`) a fixed port in TIME_WAIT makes the
        // next run's connect fail with EADDRNOTAVAIL: close with a RST instead.
        let _ = stream.set_zero_linger();
    } else if out.alive_at_end {
        let _ = tokio::time::timeout(Duration::from_millis(100), stream.shutdown()).await;
    }
    out
}

/// Remembers which of the latest `WINDOW` sequence numbers were answered, so a
/// duplicated UDP reply is not counted twice; older ones are counted as new.
struct SeqWindow {
    bits: [u64; (Self::WINDOW / 64) as usize],
    /// One past the highest sequence number seen.
    high: u64,
}

impl SeqWindow {
    const WINDOW: u64 = 4096;

    fn new() -> Self {
        Self {
            bits: [0; (Self::WINDOW / 64) as usize],
            high: 0,
        }
    }

    fn slot(seq: u64) -> (usize, u64) {
        let i = seq % Self::WINDOW;
        ((i / 64) as usize, 1u64 << (i % 64))
    }

    /// Records `seq`; returns false if it was already recorded.
    fn insert(&mut self, seq: u64) -> bool {
        if seq >= self.high {
            if seq - self.high >= Self::WINDOW {
                self.bits = [0; (Self::WINDOW / 64) as usize];
            } else {
                for s in self.high..seq {
                    let (w, b) = Self::slot(s);
                    self.bits[w] &= !b;
                }
            }
            self.high = seq + 1;
            let (w, b) = Self::slot(seq);
            self.bits[w] |= b;
            return true;
        }
        if self.high - seq > Self::WINDOW {
            return true;
        }
        let (w, b) = Self::slot(seq);
        let new = self.bits[w] & b == 0;
        self.bits[w] |= b;
        new
    }
}

fn open_udp(id: u32, cfg: &Config) -> Result<UdpSocket, Kind> {
    let local = SocketAddr::new(
        sys::unspecified_like(cfg.server),
        source_port(cfg, cfg.tcp + id),
    );
    let sock = sys::bind_udp(local).map_err(|e| io_kind(&e))?;
    // Connected: the kernel then filters replies to the server's address and
    // reports ICMP errors (e.g. port unreachable) to us.
    sock.connect(SocketAddr::new(cfg.server, cfg.udp_port))
        .map_err(|e| io_kind(&e))?;
    UdpSocket::from_std(sock).map_err(|e| io_kind(&e))
}

/// One UDP flow: a connected socket, a message per tick, replies matched by
/// sequence number; at the stop, probes every 200 ms until one is answered, then
/// waits (within the drain timeout) for the replies still in flight.
async fn udp_flow(id: u32, start_at: Instant, sh: &Shared) -> Outcome {
    let cfg = &sh.cfg;
    let mut out = Outcome::new(Proto::Udp, id);
    let mut settle = Settle::new(&sh.settled);
    let mut stop = sh.stop.clone();
    if !wait_start(start_at, &mut stop).await {
        return out;
    }
    let sock = match open_udp(id, cfg) {
        Ok(s) => s,
        Err(kind) => {
            out.open = Open::Failed(kind);
            return out;
        }
    };
    out.open = Open::Opened;
    out.local_port = sock.local_addr().ok().map(|a| a.port());

    let len = cfg.message_bytes;
    let mut msg = vec![0u8; len];
    let mut scratch = vec![0u8; len];
    let mut rbuf = vec![0u8; wire::MAX_MESSAGE_BYTES + 1];
    let mut seen = SeqWindow::new();
    let mut error_total = 0u64;

    send_udp(&sock, &mut msg, id, &mut out).await;
    let now = Instant::now();
    out.mark_first_send(now);
    let mut tick = tokio::time::interval_at(now + phase(id, cfg.interval), cfg.interval);
    tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let deadline = tokio::time::sleep_until(sh.hard_deadline);
    tokio::pin!(deadline);
    let probe = tokio::time::sleep_until(sh.hard_deadline);
    tokio::pin!(probe);
    // Replies to sequence numbers from here on answer a final probe.
    let mut final_seq: Option<u64> = None;
    let mut stop_at = None;

    loop {
        // Copied out: the watch guard must not be held across the sends below.
        let stopped = *stop.borrow_and_update();
        if final_seq.is_none()
            && let Some(at) = stopped
        {
            stop_at = Some(at);
            final_seq = Some(out.sent);
            send_udp(&sock, &mut msg, id, &mut out).await;
            let now = Instant::now();
            probe.as_mut().reset(now + UDP_PROBE_INTERVAL);
            deadline
                .as_mut()
                .reset((now + cfg.drain_timeout).min(sh.hard_deadline));
        }
        // Done once everything sent has been answered, so that a lossless run reports
        // sent == received; otherwise the drain deadline ends the flow.
        if (final_seq.is_some() && out.replies >= out.sent) || error_total >= MAX_UDP_ERRORS {
            break;
        }
        let stopping = final_seq.is_some();
        tokio::select! {
            r = sock.recv(&mut rbuf) => match r {
                Ok(n) => {
                    let frame = &rbuf[..n];
                    match wire::decode(frame) {
                        Some((fid, seq)) if fid == id && seq < out.sent
                            && wire::matches(frame, id, seq, &mut scratch) => {
                            if seen.insert(seq) {
                                out.replies += 1;
                                out.bytes_received += n as u64;
                                out.mark_reply(Instant::now(), stop_at);
                                settle.settle();
                                if final_seq.is_some_and(|f| seq >= f) {
                                    out.alive_at_end = true;
                                }
                            } else {
                                out.count_error(Cow::Borrowed("duplicate"));
                            }
                        }
                        _ => {
                            error_total += 1;
                            out.count_error(Cow::Borrowed("bad_reply"));
                        }
                    }
                }
                Err(e) => {
                    error_total += 1;
                    out.count_error(io_kind(&e));
                }
            },
            _ = tick.tick(), if !stopping && !cfg.hold => {
                send_udp(&sock, &mut msg, id, &mut out).await;
            }
            _ = &mut probe, if stopping && !out.alive_at_end => {
                send_udp(&sock, &mut msg, id, &mut out).await;
                probe.as_mut().reset(Instant::now() + UDP_PROBE_INTERVAL);
            }
            _ = stop.changed(), if !stopping => {}
            _ = &mut deadline => break,
        }
    }
    if error_total >= MAX_UDP_ERRORS {
        out.count_error(Cow::Borrowed("too_many_errors"));
    }
    out
}

/// Sends the flow's next message; a failed send still uses up its sequence number.
async fn send_udp(sock: &UdpSocket, msg: &mut [u8], id: u32, out: &mut Outcome) {
    wire::encode(msg, id, out.sent);
    out.sent += 1;
    match sock.send(msg).await {
        Ok(n) => out.bytes_sent += n as u64,
        Err(e) => {
            out.send_failed += 1;
            out.count_error(io_kind(&e));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seq_window_counts_each_seq_once() {
        let mut w = SeqWindow::new();
        assert!(w.insert(0));
        assert!(!w.insert(0));
        assert!(w.insert(5));
        assert!(w.insert(3));
        assert!(!w.insert(3));
        assert!(w.insert(10_000));
        // Slot of 3 was cleared when the window moved past it.
        assert!(w.insert(10_000 - 4096 + 1));
        assert!(!w.insert(10_000));
        assert!(w.insert(3), "too old to tell: counted");
    }
}

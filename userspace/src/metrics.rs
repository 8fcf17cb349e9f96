//! The Prometheus text exposition of `ctsync stats` and `ctsync latency`
//! (`general.metrics_listen`), and the tiny HTTP exchange that serves it.
//!
//! Every numeric (or boolean) leaf of the stats object becomes one metric
//! named after its path (`ctsync_sync_sender_retransmits_total`); arrays of
//! objects (the sync links) become one series per element, labelled by its
//! `interface`. Leaves that are levels rather than counts are gauges; all
//! others are counters (`_total`). Latency histograms become summaries in
//! seconds with p50/p90/p99/p99.9.

use std::fmt::Write;

use serde_json::Value;

/// Leaf names that are levels (gauges), not monotonic counts.
const GAUGES: &[&str] = &[
    "entries",
    "pending_changes",
    "memory_bytes",
    "bytes_per_entry",
    "socket_buffer",
    "last_resync_ms",
    "external_entries",
    "sender_connected",
    "sessions",
    "up",
    "active",
    "at_unix",
    "total_ms",
];

/// Sections of the stats that are reports, not metrics.
const SKIP: &[&str] = &["last_notify"];

fn name_part(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect()
}

fn number(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::Bool(b) => Some(f64::from(u8::from(*b))),
        _ => None,
    }
}

#[derive(Default)]
struct Out {
    text: String,
    /// Metric families already given HELP/TYPE lines.
    declared: std::collections::HashSet<String>,
}

impl Out {
    fn sample(&mut self, path: &[String], labels: &str, v: f64) {
        let leaf = path.last().map(String::as_str).unwrap_or_default();
        let gauge = GAUGES.contains(&leaf);
        let mut name = format!("ctsync_{}", path.join("_"));
        if !gauge {
            name += "_total";
        }
        if self.declared.insert(name.clone()) {
            let kind = if gauge { "gauge" } else { "counter" };
            let _ = writeln!(self.text, "# HELP {name} ctsync stats: {}", path.join("."));
            let _ = writeln!(self.text, "# TYPE {name} {kind}");
        }
        let _ = writeln!(self.text, "{name}{labels} {v}");
    }

    fn walk(&mut self, path: &mut Vec<String>, labels: &str, v: &Value) {
        match v {
            Value::Object(m) => {
                for (k, v) in m {
                    if path.is_empty() && SKIP.contains(&k.as_str()) {
                        continue;
                    }
                    path.push(name_part(k));
                    self.walk(path, labels, v);
                    path.pop();
                }
            }
            Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    let label = match item.get("interface").and_then(Value::as_str) {
                        Some(dev) => format!("{{interface=\"{}\"}}", dev.replace(['"', '\\'], "_")),
                        None => format!("{{index=\"{i}\"}}"),
                    };
                    self.walk(path, &label, item);
                }
            }
            v => {
                if let Some(x) = number(v) {
                    self.sample(path, labels, x);
                }
            }
        }
    }
}

/// The exposition of `stats` and `latency` (the control socket's answers).
pub fn render(stats: &Value, latency: &Value) -> String {
    let mut out = Out::default();
    out.walk(&mut Vec::new(), "", stats);
    for (name, h) in latency.as_object().into_iter().flatten() {
        let Some(count) = h.get("count").and_then(Value::as_u64) else {
            continue; // no replication configured
        };
        let family = format!("ctsync_latency_{}_seconds", name_part(name));
        let _ = writeln!(out.text, "# HELP {family} ctsync latency: {name}");
        let _ = writeln!(out.text, "# TYPE {family} summary");
        for (q, key) in [
            ("0.5", "p50_us"),
            ("0.9", "p90_us"),
            ("0.99", "p99_us"),
            ("0.999", "p999_us"),
        ] {
            if let Some(us) = h.get(key).and_then(Value::as_f64) {
                let _ = writeln!(out.text, "{family}{{quantile=\"{q}\"}} {}", us / 1e6);
            }
        }
        let mean = h.get("mean_us").and_then(Value::as_f64).unwrap_or(0.0);
        let _ = writeln!(out.text, "{family}_sum {}", mean * count as f64 / 1e6);
        let _ = writeln!(out.text, "{family}_count {count}");
    }
    out.text
}

/// The HTTP answer to one request's head (`GET /metrics` gets `body`).
pub fn http_response(request_head: &str, body: impl FnOnce() -> String) -> String {
    let line = request_head.lines().next().unwrap_or_default();
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next(), parts.next());
    let (status, ctype, body) = match (method, path) {
        (Some("GET"), Some("/metrics")) => ("200 OK", "text/plain; version=0.0.4", body()),
        (Some("GET"), _) => ("404 Not Found", "text/plain", "try /metrics\n".into()),
        _ => (
            "405 Method Not Allowed",
            "text/plain",
            "GET /metrics only\n".into(),
        ),
    };
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn stats_become_counters_gauges_and_labelled_link_series() {
        let stats = json!({
            "events": { "new": 5, "socket_buffer": 1024 },
            "sync": {
                "sender_connected": true,
                "links": [
                    { "interface": "sync0", "up": true, "tx_datagrams": 7 },
                    { "interface": "sync1", "up": false, "tx_datagrams": 0 }
                ]
            },
            "last_notify": { "total_ms": 3.0 },
            "note": "text is skipped"
        });
        let latency = json!({
            "ack_rtt": { "count": 4, "mean_us": 250.0, "p50_us": 200, "p90_us": 300,
                         "p99_us": 400, "p999_us": 400, "max_us": 400 },
            "commit": { "count": 0 },
            "event_to_send": null
        });
        let text = render(&stats, &latency);
        for line in [
            "# TYPE ctsync_events_new_total counter",
            "ctsync_events_new_total 5",
            "# TYPE ctsync_events_socket_buffer gauge",
            "ctsync_events_socket_buffer 1024",
            "ctsync_sync_sender_connected 1",
            "ctsync_sync_links_up{interface=\"sync0\"} 1",
            "ctsync_sync_links_up{interface=\"sync1\"} 0",
            "ctsync_sync_links_tx_datagrams_total{interface=\"sync0\"} 7",
            "# TYPE ctsync_latency_ack_rtt_seconds summary",
            "ctsync_latency_ack_rtt_seconds{quantile=\"0.99\"} 0.0004",
            "ctsync_latency_ack_rtt_seconds_sum 0.001",
            "ctsync_latency_ack_rtt_seconds_count 4",
            "ctsync_latency_commit_seconds_count 0",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in:\n{text}"
            );
        }
        assert!(
            !text.contains("last_notify") && !text.contains("event_to_send"),
            "{text}"
        );
        // One TYPE line per family even with several series.
        assert_eq!(text.matches("# TYPE ctsync_sync_links_up gauge").count(), 1);
    }

    #[test]
    fn only_get_metrics_is_served() {
        let ok = http_response("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", || {
            "a 1\n".into()
        });
        assert!(
            ok.starts_with("HTTP/1.1 200 OK\r\n") && ok.ends_with("\r\n\r\na 1\n"),
            "{ok}"
        );
        assert!(ok.contains("Content-Length: 4\r\n"));
        assert!(http_response("GET / HTTP/1.1\r\n\r\n", String::new).starts_with("HTTP/1.1 404"));
        assert!(
            http_response("POST /metrics HTTP/1.1\r\n\r\n", String::new)
                .starts_with("HTTP/1.1 405")
        );
    }
}

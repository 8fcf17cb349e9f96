//! Latency histograms the agent keeps (hdrhistogram, microseconds) and
//! their summaries for `ctsync latency` and the stats.

use std::time::Duration;

use hdrhistogram::Histogram;
use serde_json::{Value, json};

/// 1 µs to one hour, two significant digits (1% resolution, a few KiB).
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 2).expect("valid histogram bounds")
}

/// Records `d` (clamped into the histogram's range).
pub fn record(h: &mut Histogram<u64>, d: Duration) {
    h.saturating_record(d.as_micros().clamp(1, u128::from(u64::MAX)) as u64);
}

/// Count, mean and percentiles in µs, and the non-empty power-of-two
/// buckets (`le_us`: upper bound) for a text histogram.
pub fn summary(h: &Histogram<u64>) -> Value {
    if h.is_empty() {
        return json!({ "count": 0 });
    }
    let buckets: Vec<Value> = h
        .iter_log(1, 2.0)
        .filter(|v| v.count_since_last_iteration() > 0)
        .map(|v| json!({ "le_us": v.value_iterated_to(), "count": v.count_since_last_iteration() }))
        .collect();
    json!({
        "count": h.len(),
        "min_us": h.min(),
        "mean_us": (h.mean() * 10.0).round() / 10.0,
        "p50_us": h.value_at_quantile(0.5),
        "p90_us": h.value_at_quantile(0.9),
        "p99_us": h.value_at_quantile(0.99),
        "p999_us": h.value_at_quantile(0.999),
        "max_us": h.max(),
        "buckets": buckets,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_has_percentiles_and_buckets_that_add_up() {
        let mut h = histogram();
        for us in 1..=1000u64 {
            record(&mut h, Duration::from_micros(us));
        }
        record(&mut h, Duration::from_secs(7200)); // beyond the range: clamped
        let s = summary(&h);
        assert_eq!(s["count"], 1001);
        let p50 = s["p50_us"].as_u64().unwrap();
        assert!((495..=505).contains(&p50), "{s}");
        assert!(s["max_us"].as_u64().unwrap() >= 3_500_000_000, "{s}");
        let total: u64 = s["buckets"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["count"].as_u64().unwrap())
            .sum();
        assert_eq!(total, 1001);
        assert_eq!(summary(&histogram())["count"], 0);
    }
}

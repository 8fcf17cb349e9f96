//! Latency histograms the agent keeps (hdrhistogram, microseconds) and
//! their summaries for `ctsync latency` and the stats.

use std::{
    collections::VecDeque,
    time::{Duration, Instant},
};

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

/// Time from reading a change from the kernel to handing it to a datagram,
/// through a FIFO queue that only counts: the agent notes how many changes
/// were ever queued after each read, and settles marks once that many were
/// ever drained. One mark per read batch (every change of a batch counts
/// with the batch's read time); at most `MAX_MARKS` outstanding, beyond
/// which the newest mark absorbs more changes (they then count as older
/// than they are: an overestimate, never an underestimate).
#[derive(Debug)]
pub struct QueueDelay {
    marks: VecDeque<(u64, Instant)>,
    settled: u64,
    pub histogram: Histogram<u64>,
}

const MAX_MARKS: usize = 4096;

impl Default for QueueDelay {
    fn default() -> Self {
        QueueDelay {
            marks: VecDeque::new(),
            settled: 0,
            histogram: histogram(),
        }
    }
}

impl QueueDelay {
    /// Changes up to number `queued_total` were read at `at`.
    pub fn note(&mut self, queued_total: u64, at: Instant) {
        let last = self.marks.back().map_or(self.settled, |m| m.0);
        if queued_total <= last {
            return;
        }
        if self.marks.len() >= MAX_MARKS {
            self.marks.back_mut().expect("non-empty").0 = queued_total;
        } else {
            self.marks.push_back((queued_total, at));
        }
    }

    /// Changes up to number `drained_total` left the queue by `now`.
    pub fn settle(&mut self, drained_total: u64, now: Instant) {
        while let Some(&(mark, at)) = self.marks.front() {
            if mark > drained_total {
                break;
            }
            let us = now.saturating_duration_since(at).as_micros().max(1) as u64;
            let _ = self
                .histogram
                .record_n(us.min(self.histogram.high()), mark - self.settled);
            self.settled = mark;
            self.marks.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_delay_counts_each_change_with_its_batch_read_time() {
        let t0 = Instant::now();
        let mut q = QueueDelay::default();
        q.note(10, t0); // changes 1..=10 read at t0
        q.note(10, t0); // nothing new
        q.note(15, t0 + Duration::from_millis(5)); // 11..=15 at t0+5ms
        q.settle(12, t0 + Duration::from_millis(8)); // batch 2 only partly out
        assert_eq!(q.histogram.len(), 10);
        assert!(q.histogram.equivalent(q.histogram.max(), 8000));
        q.settle(15, t0 + Duration::from_millis(9));
        assert_eq!(q.histogram.len(), 15);
        assert!(q.histogram.equivalent(q.histogram.min(), 4000));
        q.settle(100, t0 + Duration::from_millis(20)); // no marks left
        assert_eq!(q.histogram.len(), 15);
    }

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

//! The bench's progress on stderr: one numbered line when a step starts and
//! one when it ends, with the total known up front, e.g.
//!
//! ```text
//! [3/12] zeroloss ctsync 100k/s ...
//! [3/12] zeroloss ctsync 100k/s ... done in 8.2 s
//! ```
//!
//! Plain lines (no cursor movement), so that CI logs, where stdout and
//! stderr interleave, stay readable; the measurements themselves go to
//! stdout as before.

use std::time::Instant;

use anyhow::Result;

pub struct Progress {
    total: usize,
    done: usize,
    start: Instant,
}

impl Progress {
    pub fn new(total: usize) -> Progress {
        Progress {
            total,
            done: 0,
            start: Instant::now(),
        }
    }

    /// Runs one step, announcing it and how it ended.
    pub fn step<T>(&mut self, what: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
        self.done += 1;
        let tag = format!("[{}/{}] {what} ...", self.done, self.total);
        eprintln!("{tag}");
        let t0 = Instant::now();
        let r = f();
        let secs = t0.elapsed().as_secs_f64();
        match &r {
            Ok(_) => eprintln!("{tag} done in {secs:.1} s"),
            Err(_) => eprintln!("{tag} failed after {secs:.1} s"),
        }
        r
    }

    /// The closing line; warns if fewer or more steps ran than announced
    /// (a miscount in the plan, not an error of the run).
    pub fn finish(&self) {
        let secs = self.start.elapsed().as_secs_f64();
        if self.done != self.total {
            eprintln!(
                "warning: the bench ran {} steps, {} were announced",
                self.done, self.total
            );
        }
        eprintln!("bench: {} steps in {secs:.1} s", self.done);
    }
}

/// A rate for step names: `50k/s`, `1500/s`, or `unpaced` for 0.
pub fn rate_label(rate: u32) -> String {
    match rate {
        0 => "unpaced".into(),
        r if r % 1000 == 0 => format!("{}k/s", r / 1000),
        r => format!("{r}/s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_labels() {
        assert_eq!(rate_label(0), "unpaced");
        assert_eq!(rate_label(50_000), "50k/s");
        assert_eq!(rate_label(1_500), "1500/s");
    }

    #[test]
    fn steps_count_and_pass_results_through() {
        let mut p = Progress::new(2);
        assert_eq!(p.step("one", || Ok(1)).unwrap(), 1);
        assert!(
            p.step("two", || Err::<(), _>(anyhow::anyhow!("no")))
                .is_err()
        );
        assert_eq!(p.done, 2);
    }
}

//! The figures of a bench run as a markdown table, written at the end into
//! `target/bench-results/report.md` (the printed log says how they came
//! about; the table is what to compare across runs and machines).

use std::{fmt::Write, path::PathBuf};

use anyhow::{Context, Result};

#[derive(Default)]
pub struct Report {
    rows: Vec<[String; 4]>,
}

impl Report {
    /// One figure: what, ctsync's value, conntrackd's (or the reference's),
    /// and the ratio or the target it is held against.
    pub fn row(&mut self, what: &str, ctsync: String, other: String, ratio: String) {
        self.rows.push([what.to_owned(), ctsync, other, ratio]);
    }

    pub fn markdown(&self, title: &str) -> String {
        let mut s = format!(
            "# {title}\n\n| what | ctsync | conntrackd / reference | ratio or target |\n| --- | --- | --- | --- |\n"
        );
        for r in &self.rows {
            let _ = writeln!(s, "| {} | {} | {} | {} |", r[0], r[1], r[2], r[3]);
        }
        s
    }

    /// Writes the table; returns where.
    pub fn write(&self, title: &str) -> Result<PathBuf> {
        let dir = xtask::build::workspace_root().join("target/bench-results");
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let path = dir.join("report.md");
        std::fs::write(&path, self.markdown(title))
            .with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }
}

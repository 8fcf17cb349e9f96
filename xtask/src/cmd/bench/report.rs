//! The figures of a bench run as a markdown table, written at the end into
//! `target/bench-results/report.md` (the printed log says how they came
//! about; the table is what to compare across runs and machines), and the
//! run's charts as SVG files beside it, linked from the report.

use std::{fmt::Write, path::PathBuf};

use anyhow::{Context, Result};

#[derive(Default)]
pub struct Report {
    rows: Vec<[String; 4]>,
    /// (file name, caption, SVG).
    plots: Vec<(String, String, String)>,
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

    /// A chart, written as `file` (a plain name ending in `.svg`) beside
    /// the report.
    pub fn plot(&mut self, file: &str, caption: &str, svg: String) {
        debug_assert!(file.ends_with(".svg") && !file.contains('/'));
        self.plots.push((file.to_owned(), caption.to_owned(), svg));
    }

    /// The table, then a link to each chart.
    fn document(&self, title: &str) -> String {
        let mut s = self.markdown(title);
        if !self.plots.is_empty() {
            s.push_str("\n## Charts\n");
            for (file, caption, _) in &self.plots {
                let _ = write!(s, "\n### {caption}\n\n![{caption}]({file})\n");
            }
        }
        s
    }

    /// Writes the report and its charts; returns the report's path and the
    /// charts' paths. The charts of an earlier run (every `*.svg` in the
    /// folder) are removed first, so that the folder holds one run.
    pub fn write(&self, title: &str) -> Result<(PathBuf, Vec<PathBuf>)> {
        let dir = xtask::build::workspace_root().join("target/bench-results");
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        for entry in
            std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))?
        {
            let p = entry?.path();
            if p.extension().is_some_and(|e| e == "svg") {
                std::fs::remove_file(&p).with_context(|| format!("removing {}", p.display()))?;
            }
        }
        let mut charts = Vec::new();
        for (file, _, svg) in &self.plots {
            let p = dir.join(file);
            std::fs::write(&p, svg).with_context(|| format!("writing {}", p.display()))?;
            charts.push(p);
        }
        let path = dir.join("report.md");
        std::fs::write(&path, self.document(title))
            .with_context(|| format!("writing {}", path.display()))?;
        Ok((path, charts))
    }
}

//! The results: samples per measurement, one table of medians with min and
//! max and the ratios between rows, the machine it ran on, written as text,
//! markdown (the generated region of the benchmark page, see
//! [`crate::page`]) and a PNG chart.

use std::{fmt::Write as _, fs, path::Path};

use anyhow::{Context as _, Result};

/// One measured quantity: a sample per run.
pub struct Row {
    pub section: &'static str,
    pub name: String,
    pub unit: &'static str,
    pub samples: Vec<f64>,
    /// Ratios printed beside this row: (label, name of the other row);
    /// the ratio is this row's median over the other's.
    pub versus: Vec<(&'static str, String)>,
    /// Targets of issue 5 printed beside this row: (`"<="` or `">="`,
    /// value in the row's unit); shown as the median over the target and
    /// whether the median meets it.
    pub targets: Vec<(&'static str, f64)>,
}

impl Row {
    pub fn new(section: &'static str, name: impl Into<String>, unit: &'static str) -> Row {
        Row {
            section,
            name: name.into(),
            unit,
            samples: Vec::new(),
            versus: Vec::new(),
            targets: Vec::new(),
        }
    }

    /// A target this row is held to: `op` is `"<="` or `">="`.
    pub fn target(mut self, op: &'static str, value: f64) -> Row {
        self.targets.push((op, value));
        self
    }

    pub fn vs(mut self, label: &'static str, other: impl Into<String>) -> Row {
        self.versus.push((label, other.into()));
        self
    }

    pub fn median(&self) -> f64 {
        let mut s = self.samples.clone();
        s.sort_by(f64::total_cmp);
        match s.len() {
            0 => f64::NAN,
            n if n % 2 == 1 => s[n / 2],
            n => (s[n / 2 - 1] + s[n / 2]) / 2.0,
        }
    }

    fn min(&self) -> f64 {
        self.samples.iter().copied().fold(f64::INFINITY, f64::min)
    }

    fn max(&self) -> f64 {
        self.samples
            .iter()
            .copied()
            .fold(f64::NEG_INFINITY, f64::max)
    }
}

/// Per-map kernel memory, from the kernel's own accounting.
pub struct MapMemory {
    pub owner: &'static str,
    pub name: String,
    pub map_type: u32,
    pub max_entries: u64,
    pub bytes: u64,
}

#[derive(Default)]
pub struct Report {
    pub rows: Vec<Row>,
    pub maps: Vec<MapMemory>,
    pub notes: Vec<String>,
    pub not_measured: Vec<String>,
}

impl Report {
    pub fn push(&mut self, row: Row) {
        self.rows.push(row);
    }

    /// Section names in the order they first appear.
    fn sections(&self) -> Vec<&'static str> {
        let mut sections: Vec<&'static str> = Vec::new();
        for r in &self.rows {
            if !sections.contains(&r.section) {
                sections.push(r.section);
            }
        }
        sections
    }

    /// Rows grouped by section (sections in order of first appearance,
    /// rows in the order they were measured).
    fn ordered(&self) -> Vec<&Row> {
        self.sections()
            .into_iter()
            .flat_map(|s| self.rows.iter().filter(move |r| r.section == s))
            .collect()
    }

    fn find(&self, name: &str) -> Option<&Row> {
        self.rows.iter().find(|r| r.name == name)
    }

    fn ratios(&self, row: &Row) -> String {
        row.versus
            .iter()
            .filter_map(|(label, other)| {
                let o = self.find(other)?.median();
                let m = row.median();
                (o.is_finite() && o != 0.0 && m.is_finite())
                    .then(|| format!("{:.3}x {label}", m / o))
            })
            .chain(row.targets.iter().map(|&(op, t)| {
                let m = row.median();
                // The worst run: a median that meets the target while
                // single runs do not is said so (noise, not a margin).
                let (met, every) = match op {
                    "<=" => (m <= t, row.max() <= t),
                    _ => (m >= t, row.min() >= t),
                };
                let verdict = if !m.is_finite() {
                    "not measured"
                } else if met && every {
                    "met"
                } else if met {
                    "met by the median, not by every run"
                } else {
                    "not met"
                };
                let ratio = if t != 0.0 && m.is_finite() {
                    format!("{:.3}x ", m / t)
                } else {
                    String::new()
                };
                format!("{ratio}target ({op} {} {}): {verdict}", fmt(t), row.unit)
            }))
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// The table, as a markdown table (also readable as text).
    pub fn table(&self) -> String {
        let mut t = String::new();
        let _ = writeln!(
            t,
            "| section | measurement | median | min | max | unit | runs | ratios (median / median) and targets |"
        );
        let _ = writeln!(t, "|---|---|---:|---:|---:|---|---:|---|");
        for r in self.ordered() {
            let _ = writeln!(
                t,
                "| {} | {} | {} | {} | {} | {} | {} | {} |",
                r.section,
                r.name,
                fmt(r.median()),
                fmt(r.min()),
                fmt(r.max()),
                r.unit,
                r.samples.len(),
                self.ratios(r)
            );
        }
        t
    }

    /// The generated part of the benchmark page (`docs/benchmarks.md`,
    /// between its markers, under its "The full results" heading): the
    /// machine, the table, kernel memory per map, how each figure was
    /// measured, what was not.
    pub fn markdown(&self, machine: &str) -> String {
        let mut md = String::new();
        let _ = writeln!(md, "### Machine\n\n{machine}\n");
        md.push_str("### Results\n\n");
        md.push_str(&self.table());
        if !self.maps.is_empty() {
            md.push_str("\n### Kernel memory per map\n\n");
            md.push_str("From `memlock:` in /proc/self/fdinfo of each map fd: since Linux 6.4 that is the map's own `map_mem_usage()` (kernel/bpf/syscall.c, `bpf_map_memory_usage`), what the map really holds, not a max_entries estimate.\n\n");
            md.push_str("| owner | map | type | max_entries | bytes | MiB |\n|---|---|---:|---:|---:|---:|\n");
            for m in &self.maps {
                let _ = writeln!(
                    md,
                    "| {} | {} | {} | {} | {} | {:.2} |",
                    m.owner,
                    m.name,
                    m.map_type,
                    m.max_entries,
                    m.bytes,
                    m.bytes as f64 / 1048576.0
                );
            }
        }
        if !self.notes.is_empty() {
            md.push_str("\n### How it was measured\n\n");
            for n in &self.notes {
                let _ = writeln!(md, "- {n}");
            }
        }
        md.push_str("\n### Not measured yet\n\n");
        if self.not_measured.is_empty() {
            md.push_str("Nothing: every measurement of issue 5 is in the table.\n");
        }
        for n in &self.not_measured {
            let _ = writeln!(md, "- {n}");
        }
        md
    }

    /// Bars per section, no text (see [`Report::markdown`]).
    pub fn chart(&self, path: &Path) -> Result<()> {
        use plotters::prelude::*;
        let sections = self.sections();
        let panel_h = 160u32;
        let height = panel_h * sections.len().max(1) as u32;
        let root = BitMapBackend::new(path, (900, height)).into_drawing_area();
        root.fill(&WHITE).context("chart background")?;
        let panels = root.split_evenly((sections.len().max(1), 1));
        let palette = [BLUE, RED, GREEN, MAGENTA, CYAN, BLACK];
        for (panel, section) in panels.iter().zip(&sections) {
            let rows: Vec<&Row> = self.rows.iter().filter(|r| r.section == *section).collect();
            let top = rows
                .iter()
                .map(|r| r.max())
                .filter(|v| v.is_finite())
                .fold(0.0f64, f64::max)
                .max(f64::MIN_POSITIVE);
            let (w, h) = panel.dim_in_pixel();
            let (w, h) = (w as i32, h as i32 - 10);
            let n = rows.len().max(1) as i32;
            let slot = (w - 20) / n;
            panel
                .draw(&PathElement::new(vec![(10, h), (w - 10, h)], BLACK))
                .context("axis")?;
            for (i, r) in rows.iter().enumerate() {
                let x0 = 10 + slot * i as i32 + slot / 6;
                let x1 = 10 + slot * (i as i32 + 1) - slot / 6;
                let y = |v: f64| h - ((v / top).clamp(0.0, 1.0) * (h - 10) as f64) as i32;
                let med = r.median();
                if med.is_finite() {
                    panel
                        .draw(&Rectangle::new(
                            [(x0, y(med)), (x1, h)],
                            palette[i % palette.len()].filled(),
                        ))
                        .context("bar")?;
                    let xm = (x0 + x1) / 2;
                    panel
                        .draw(&PathElement::new(
                            vec![(xm, y(r.min())), (xm, y(r.max()))],
                            BLACK.stroke_width(2),
                        ))
                        .context("range")?;
                }
            }
        }
        root.present().context("writing the PNG")?;
        Ok(())
    }

    /// Writes the chart (`latest.png` in `dir`) and the generated region
    /// of the benchmark page `page`.
    pub fn write(&self, dir: &Path, page: &Path, machine: &str) -> Result<()> {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        self.chart(&dir.join("latest.png"))?;
        crate::page::update(page, &self.markdown(machine))
    }
}

fn fmt(v: f64) -> String {
    if !v.is_finite() {
        "-".into()
    } else if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.4}")
    }
}

/// CPU model, cores, memory and kernel.
pub fn machine() -> String {
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|l| l.trim_start_matches([' ', '\t', ':']).to_owned())
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mem = fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .map(|l| l.trim().to_owned())
        .unwrap_or_default();
    format!(
        "- CPU: {model}\n- cores available: {cores}\n- memory: {mem}\n- kernel: Linux {}",
        kernel.trim()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shown(samples: &[f64], op: &'static str, t: f64) -> String {
        let mut row = Row::new("s", "r", "ns").target(op, t);
        row.samples = samples.to_vec();
        Report::default().ratios(&row)
    }

    #[test]
    fn the_page_region_has_the_machine_and_the_table() {
        let mut rep = Report::default();
        let mut row = Row::new("s", "r", "ns");
        row.samples = vec![1.0, 2.0, 3.0];
        rep.push(row);
        let machine = "- CPU: test";
        let region = rep.markdown(machine);
        assert!(region.contains(machine), "{region}");
        assert!(region.contains(&rep.table()), "{region}");
        // It sits under the page's own second-level heading.
        assert!(
            !region
                .lines()
                .any(|l| l.starts_with("# ") || l.starts_with("## ")),
            "{region}"
        );
    }

    #[test]
    fn targets_say_whether_the_median_meets_them() {
        assert_eq!(
            shown(&[100.0, 120.0, 140.0], "<=", 150.0),
            "0.800x target (<= 150 ns): met"
        );
        assert_eq!(
            shown(&[100.0, 120.0, 900.0], "<=", 150.0),
            "0.800x target (<= 150 ns): met by the median, not by every run"
        );
        assert_eq!(
            shown(&[0.5, 1.0, 1.2], ">=", 0.9),
            "1.111x target (>= 0.9000 ns): met by the median, not by every run"
        );
        assert_eq!(
            shown(&[200.0], "<=", 150.0),
            "1.333x target (<= 150 ns): not met"
        );
        assert_eq!(
            shown(&[0.97], ">=", 0.98),
            "0.990x target (>= 0.9800 ns): not met"
        );
        assert_eq!(
            shown(&[f64::NAN], ">=", 3.0),
            "target (>= 3.00 ns): not measured"
        );
    }
}

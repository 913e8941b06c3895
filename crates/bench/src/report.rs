//! The result table (stdout) and its JSON twin (`target/bench/last.json`).

use serde::Serialize;

/// How a row's target compares ours with something.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub enum Target {
    /// No target: shown for context.
    None,
    /// ours ≤ factor × peer.
    AtMostPeer(f64),
    /// ours ≥ factor × peer.
    AtLeastPeer(f64),
    /// ours ≤ value.
    AtMost(f64),
    /// ours < value.
    Below(f64),
    /// ours ≥ value.
    AtLeast(f64),
    /// ours ≤ factor × reference (a figure of ours, e.g. the P1 floor).
    AtMostRef(f64, f64),
}

impl Target {
    pub fn describe(&self) -> String {
        match *self {
            Target::None => "-".into(),
            Target::AtMostPeer(f) => format!("≤ {} × peer", fmt_num(f)),
            Target::AtLeastPeer(f) => format!("≥ {} × peer", fmt_num(f)),
            Target::AtMost(v) => format!("≤ {}", fmt_num(v)),
            Target::Below(v) => format!("< {}", fmt_num(v)),
            Target::AtLeast(v) => format!("≥ {}", fmt_num(v)),
            Target::AtMostRef(f, r) => format!("≤ {}× floor ({})", fmt_num(f), fmt_num(f * r)),
        }
    }

    /// `None` when it cannot be judged (no figure, or no peer figure).
    pub fn met(&self, ours: Option<f64>, peer: Option<f64>) -> Option<bool> {
        let o = ours?;
        match *self {
            Target::None => None,
            Target::AtMostPeer(f) => peer.map(|p| o <= f * p),
            Target::AtLeastPeer(f) => peer.map(|p| o >= f * p),
            Target::AtMost(v) => Some(o <= v),
            Target::Below(v) => Some(o < v),
            Target::AtLeast(v) => Some(o >= v),
            Target::AtMostRef(f, r) => Some(o <= f * r),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub scenario: String,
    pub metric: String,
    pub unit: String,
    pub ours: Option<f64>,
    pub peer: Option<f64>,
    /// ours / peer.
    pub ratio: Option<f64>,
    pub target: String,
    pub met: Option<bool>,
    /// Why a figure is missing, or how it was taken.
    pub note: String,
}

#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub rows: Vec<Row>,
    pub notes: Vec<String>,
}

impl Report {
    #[allow(clippy::too_many_arguments)]
    pub fn add(
        &mut self,
        scenario: &str,
        metric: &str,
        unit: &str,
        ours: Option<f64>,
        peer: Option<f64>,
        target: Target,
        note: &str,
    ) {
        let ratio = match (ours, peer) {
            (Some(o), Some(p)) if p != 0.0 => Some(o / p),
            _ => None,
        };
        self.rows.push(Row {
            scenario: scenario.into(),
            metric: metric.into(),
            unit: unit.into(),
            ours,
            peer,
            ratio,
            target: target.describe(),
            met: target.met(ours, peer),
            note: note.into(),
        });
    }

    /// A scenario that produced no figure.
    pub fn skip(&mut self, scenario: &str, metric: &str, reason: &str) {
        self.rows.push(Row {
            scenario: scenario.into(),
            metric: metric.into(),
            unit: String::new(),
            ours: None,
            peer: None,
            ratio: None,
            target: "-".into(),
            met: None,
            note: format!("skipped: {reason}"),
        });
    }

    pub fn note(&mut self, text: impl Into<String>) {
        let text = text.into();
        eprintln!("[bench] note: {text}");
        self.notes.push(text);
    }

    /// The table as Markdown (printed, and pasted into BENCHMARKS.md).
    pub fn table(&self) -> String {
        let mut out = String::from(
            "| metric | ours | peer | ratio (ours/peer) | target | met? | note |\n|---|---|---|---|---|---|---|\n",
        );
        for r in &self.rows {
            let cell = |v: Option<f64>| match v {
                Some(v) => format!("{} {}", fmt_num(v), r.unit).trim().to_string(),
                None => "-".into(),
            };
            out.push_str(&format!(
                "| {} {} | {} | {} | {} | {} | {} | {} |\n",
                r.scenario,
                r.metric,
                cell(r.ours),
                cell(r.peer),
                r.ratio
                    .map(|x| format!("{}×", fmt_num(x)))
                    .unwrap_or("-".into()),
                r.target,
                match r.met {
                    Some(true) => "yes",
                    Some(false) => "NO",
                    None => "-",
                },
                r.note.replace('|', "/"),
            ));
        }
        out
    }
}

/// One table of several reports (one per setup, measured in one run):
/// a row per metric (in first-seen order), a column per setup with our
/// figure, then the ratio of each setup to the one before it.
pub fn matrix_table(columns: &[(String, &Report)]) -> String {
    let mut keys: Vec<(String, String, String)> = Vec::new();
    for (_, r) in columns {
        for row in &r.rows {
            let key = (row.scenario.clone(), row.metric.clone(), row.unit.clone());
            if !keys.contains(&key) {
                keys.push(key);
            }
        }
    }
    let mut out = String::from("| metric |");
    for (label, _) in columns {
        out.push_str(&format!(" {label} |"));
    }
    for pair in columns.windows(2) {
        out.push_str(&format!(" {} / {} |", pair[1].0, pair[0].0));
    }
    out.push_str("\n|---|");
    out.push_str(&"---|".repeat(columns.len() + columns.len().saturating_sub(1)));
    out.push('\n');
    for (scenario, metric, unit) in keys {
        let values: Vec<Option<f64>> = columns
            .iter()
            .map(|(_, r)| {
                r.rows
                    .iter()
                    .find(|row| row.scenario == scenario && row.metric == metric)
                    .and_then(|row| row.ours)
            })
            .collect();
        out.push_str(&format!("| {scenario} {metric} |"));
        for v in &values {
            let cell = v
                .map(|v| format!("{} {unit}", fmt_num(v)).trim().to_string())
                .unwrap_or("-".into());
            out.push_str(&format!(" {cell} |"));
        }
        for pair in values.windows(2) {
            let cell = match (pair[0], pair[1]) {
                (Some(a), Some(b)) if a != 0.0 => format!("{}×", fmt_num(b / a)),
                _ => "-".into(),
            };
            out.push_str(&format!(" {cell} |"));
        }
        out.push('\n');
    }
    out
}

/// Three significant figures, no exponent for everyday magnitudes.
pub fn fmt_num(v: f64) -> String {
    let a = v.abs();
    if a == 0.0 {
        "0".into()
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else if a >= 0.001 {
        format!("{v:.3}")
    } else {
        format!("{v:.2e}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_judge_against_peer_and_values() {
        assert_eq!(
            Target::AtMostPeer(0.2).met(Some(1.0), Some(10.0)),
            Some(true)
        );
        assert_eq!(
            Target::AtMostPeer(0.2).met(Some(3.0), Some(10.0)),
            Some(false)
        );
        assert_eq!(Target::AtMostPeer(0.2).met(Some(3.0), None), None);
        assert_eq!(
            Target::AtLeastPeer(10.0).met(Some(100.0), Some(9.0)),
            Some(true)
        );
        assert_eq!(Target::AtMost(250.0).met(Some(250.0), None), Some(true));
        assert_eq!(Target::Below(0.1).met(Some(0.1), None), Some(false));
        assert_eq!(Target::AtMostRef(5.0, 2.0).met(Some(9.9), None), Some(true));
        assert_eq!(Target::AtMost(1.0).met(None, Some(1.0)), None);
    }

    #[test]
    fn rows_carry_ratio_and_render() {
        let mut r = Report::default();
        r.add(
            "P2",
            "throughput",
            "jobs/s",
            Some(50.0),
            Some(5.0),
            Target::AtLeastPeer(10.0),
            "",
        );
        r.skip("P3", "exit → terminal", "subagent_run not supported");
        assert_eq!(r.rows[0].ratio, Some(10.0));
        assert_eq!(r.rows[0].met, Some(true));
        let t = r.table();
        assert!(
            t.contains(
                "| P2 throughput | 50.0 jobs/s | 5.00 jobs/s | 10.0× | ≥ 10.0 × peer | yes |"
            ),
            "{t}"
        );
        assert!(t.contains("skipped: subagent_run not supported"));
    }

    #[test]
    fn matrix_lines_up_setups_and_ratios() {
        let mut a = Report::default();
        a.add(
            "P2",
            "throughput",
            "jobs/s",
            Some(100.0),
            None,
            Target::None,
            "",
        );
        a.add(
            "P6",
            "10 sims: pickup p99",
            "ms",
            Some(2.0),
            None,
            Target::None,
            "",
        );
        let mut b = Report::default();
        b.add(
            "P2",
            "throughput",
            "jobs/s",
            Some(50.0),
            None,
            Target::None,
            "",
        );
        let mut c = Report::default();
        c.add(
            "P2",
            "throughput",
            "jobs/s",
            Some(75.0),
            None,
            Target::None,
            "",
        );
        c.add(
            "P6",
            "30 sims: pickup p99",
            "ms",
            Some(4.0),
            None,
            Target::None,
            "",
        );
        let t = matrix_table(&[("A".into(), &a), ("B".into(), &b), ("C".into(), &c)]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[0], "| metric | A | B | C | B / A | C / B |");
        assert_eq!(lines[1], "|---|---|---|---|---|---|");
        assert_eq!(
            lines[2],
            "| P2 throughput | 100 jobs/s | 50.0 jobs/s | 75.0 jobs/s | 0.500× | 1.50× |"
        );
        assert_eq!(
            lines[3],
            "| P6 10 sims: pickup p99 | 2.00 ms | - | - | - | - |"
        );
        assert_eq!(
            lines[4],
            "| P6 30 sims: pickup p99 | - | - | 4.00 ms | - | - |"
        );
    }

    #[test]
    fn number_format() {
        assert_eq!(fmt_num(1234.4), "1234");
        assert_eq!(fmt_num(12.345), "12.3");
        assert_eq!(fmt_num(1.2345), "1.23");
        assert_eq!(fmt_num(0.01234), "0.012");
        assert_eq!(fmt_num(0.0), "0");
    }
}

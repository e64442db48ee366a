//! The one results table: each figure's median (min–max over the repetitions) for ours, the
//! dqlite-demo anchor and etcd, the ratio ours / anchor, the target and whether it is met.

use comfy_table::Table;
use comfy_table::presets::ASCII_MARKDOWN;

use crate::procfs::median;

/// What a row's figure must reach.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Target {
    /// ours / anchor ≤ x.
    RatioAtMost(f64),
    /// ours / anchor ≥ x.
    RatioAtLeast(f64),
    /// ours ≤ x (in the row's unit).
    AtMost(f64),
    /// ours < x.
    Below(f64),
    /// ours is 0 in every repetition.
    Zero,
}

impl Target {
    fn text(self) -> String {
        match self {
            Target::RatioAtMost(x) => format!("≤ {x}×"),
            Target::RatioAtLeast(x) => format!("≥ {x}×"),
            Target::AtMost(x) => format!("≤ {x}"),
            Target::Below(x) => format!("< {x}"),
            Target::Zero => "0".into(),
        }
    }
}

/// One row: the figure of each repetition, per side (empty: not measured).
#[derive(Debug)]
pub(crate) struct Row {
    pub(crate) name: String,
    pub(crate) unit: &'static str,
    pub(crate) ours: Vec<f64>,
    pub(crate) anchor: Vec<f64>,
    pub(crate) etcd: Vec<f64>,
    pub(crate) target: Option<Target>,
}

/// A number with as many decimals as its size deserves.
fn num(v: f64) -> String {
    match v.abs() {
        x if !x.is_finite() => "n/a".into(),
        x if x >= 100.0 => format!("{v:.0}"),
        x if x >= 10.0 => format!("{v:.1}"),
        x if x >= 1.0 => format!("{v:.2}"),
        _ => format!("{v:.3}"),
    }
}

/// `median (min–max)`, or the value alone for one repetition, or "—" when not measured;
/// repetitions without a figure (NaN: e.g. writes never resumed) are left out and counted.
fn cell(values: &[f64]) -> String {
    if values.is_empty() {
        return "—".into();
    }
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    let missing = values.len() - v.len();
    let note = if missing > 0 { format!(" [{missing}× n/a]") } else { String::new() };
    if v.is_empty() {
        return format!("n/a{note}");
    }
    let m = median(&mut v);
    let (lo, hi) = (v[0], v[v.len() - 1]);
    let text = if v.len() == 1 || lo == hi { num(m) } else { format!("{} ({}–{})", num(m), num(lo), num(hi)) };
    format!("{text}{note}")
}

/// The median of the figures that exist.
fn finite_median(values: &[f64]) -> f64 {
    median(&mut values.iter().copied().filter(|x| x.is_finite()).collect::<Vec<_>>())
}

impl Row {
    fn medians(&self) -> (f64, f64) {
        (finite_median(&self.ours), finite_median(&self.anchor))
    }

    fn ratio(&self) -> f64 {
        let (o, a) = self.medians();
        o / a
    }

    fn met(&self) -> &'static str {
        let Some(target) = self.target else { return "" };
        let (o, _) = self.medians();
        let r = self.ratio();
        let yes = match target {
            Target::RatioAtMost(x) if r.is_finite() => r <= x,
            Target::RatioAtLeast(x) if r.is_finite() => r >= x,
            Target::RatioAtMost(_) | Target::RatioAtLeast(_) => return "n/a",
            Target::AtMost(x) => o <= x,
            Target::Below(x) => o < x,
            Target::Zero => !self.ours.is_empty() && self.ours.iter().all(|v| *v == 0.0),
        };
        if yes { "yes" } else { "NO" }
    }
}

/// The table as Markdown.
pub(crate) fn render(rows: &[Row], anchor: &str, etcd: &str) -> String {
    let mut table = Table::new();
    table.load_preset(ASCII_MARKDOWN);
    table.set_header(vec!["workload", "unit", "ours", anchor, "ratio", etcd, "target", "met?"]);
    for row in rows {
        let ratio = if row.anchor.is_empty() || row.ours.is_empty() { String::new() } else { num(row.ratio()) };
        table.add_row(vec![
            row.name.clone(),
            row.unit.to_owned(),
            cell(&row.ours),
            cell(&row.anchor),
            ratio,
            cell(&row.etcd),
            row.target.map(Target::text).unwrap_or_default(),
            row.met().to_owned(),
        ]);
    }
    table.to_string()
}

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
    /// ours / etcd ≤ x.
    EtcdAtMost(f64),
    /// ours / etcd ≥ x.
    EtcdAtLeast(f64),
    /// The worst repetition of ours ≤ x.
    WorstAtMost(f64),
    /// Every one of these.
    All(&'static [Target]),
}

impl Target {
    fn text(self) -> String {
        match self {
            Target::RatioAtMost(x) => format!("≤ {x}×"),
            Target::RatioAtLeast(x) => format!("≥ {x}×"),
            Target::AtMost(x) => format!("≤ {x}"),
            Target::Below(x) => format!("< {x}"),
            Target::Zero => "0".into(),
            Target::EtcdAtMost(x) => format!("≤ {x}× etcd"),
            Target::EtcdAtLeast(x) => format!("≥ {x}× etcd"),
            Target::WorstAtMost(x) => format!("worst ≤ {x}"),
            Target::All(targets) => targets.iter().map(|t| t.text()).collect::<Vec<_>>().join(", "),
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

    fn etcd_ratio(&self) -> f64 {
        finite_median(&self.ours) / finite_median(&self.etcd)
    }

    /// Whether `target` is met; `None` when a side it compares with was not measured.
    fn meets(&self, target: Target) -> Option<bool> {
        let (o, _) = self.medians();
        let ratio = |r: f64| r.is_finite().then_some(r);
        Some(match target {
            Target::RatioAtMost(x) => ratio(self.ratio())? <= x,
            Target::RatioAtLeast(x) => ratio(self.ratio())? >= x,
            Target::EtcdAtMost(x) => ratio(self.etcd_ratio())? <= x,
            Target::EtcdAtLeast(x) => ratio(self.etcd_ratio())? >= x,
            Target::AtMost(x) => o <= x,
            Target::Below(x) => o < x,
            Target::WorstAtMost(x) => !self.ours.is_empty() && self.ours.iter().all(|v| *v <= x),
            Target::Zero => !self.ours.is_empty() && self.ours.iter().all(|v| *v == 0.0),
            Target::All(targets) => {
                let each: Vec<Option<bool>> = targets.iter().map(|t| self.meets(*t)).collect();
                // A comparison that could not be made does not hide one that failed.
                if each.contains(&Some(false)) {
                    false
                } else {
                    each.into_iter().collect::<Option<Vec<bool>>>()?.into_iter().all(|b| b)
                }
            }
        })
    }

    fn met(&self) -> &'static str {
        let Some(target) = self.target else { return "" };
        match self.meets(target) {
            Some(true) => "yes",
            Some(false) => "NO",
            None => "n/a",
        }
    }
}

/// The table as Markdown.
pub(crate) fn render(rows: &[Row], anchor: &str, etcd: &str) -> String {
    let mut table = Table::new();
    table.load_preset(ASCII_MARKDOWN);
    table.set_header(vec!["workload", "unit", "ours", anchor, "ratio", etcd, "ratio to etcd", "target", "met?"]);
    for row in rows {
        let ratio = if row.anchor.is_empty() || row.ours.is_empty() { String::new() } else { num(row.ratio()) };
        let etcd_ratio = if row.etcd.is_empty() || row.ours.is_empty() { String::new() } else { num(row.etcd_ratio()) };
        table.add_row(vec![
            row.name.clone(),
            row.unit.to_owned(),
            cell(&row.ours),
            cell(&row.anchor),
            ratio,
            cell(&row.etcd),
            etcd_ratio,
            row.target.map(Target::text).unwrap_or_default(),
            row.met().to_owned(),
        ]);
    }
    table.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(ours: &[f64], anchor: &[f64], etcd: &[f64], target: Target) -> Row {
        Row {
            name: "r".into(),
            unit: "ms",
            ours: ours.to_vec(),
            anchor: anchor.to_vec(),
            etcd: etcd.to_vec(),
            target: Some(target),
        }
    }

    #[test]
    fn a_target_is_met_not_met_or_not_judged_when_a_side_is_missing() {
        const BOTH: Target = Target::All(&[Target::RatioAtMost(0.8), Target::EtcdAtMost(1.0)]);
        const FAILOVER: Target = Target::All(&[Target::AtMost(1000.0), Target::WorstAtMost(1500.0)]);
        let cases = [
            (row(&[1.0], &[2.0], &[1.1], BOTH), "yes"),
            (row(&[1.0], &[2.0], &[0.9], BOTH), "NO"),
            (row(&[1.0], &[1.1], &[2.0], BOTH), "NO"),
            (row(&[1.0], &[2.0], &[], BOTH), "n/a"),
            // One comparison failed: no missing side makes that "n/a".
            (row(&[1.0], &[1.1], &[], BOTH), "NO"),
            (row(&[900.0, 950.0, 1000.0], &[], &[], FAILOVER), "yes"),
            (row(&[900.0, 950.0, 1600.0], &[], &[], FAILOVER), "NO"),
            (row(&[2.0], &[], &[1.0], Target::EtcdAtLeast(1.5)), "yes"),
        ];
        for (row, expected) in cases {
            assert_eq!(row.met(), expected, "{row:?}");
        }
    }
}

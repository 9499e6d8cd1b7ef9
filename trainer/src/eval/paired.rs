//! Paired comparison of a table's rows across subjects: does one method (the reference, e.g.
//! EchoDistill's one-step student) score above another on the subjects both were run on?
//!
//! The overall standard errors of a table are over images, which treats every image of every
//! subject as an independent draw. A method's advantage, though, varies from subject to subject
//! far more than the images of one subject vary, and a claim such as "EchoDistill beats every
//! baseline in CLIP-I" is a claim about subjects. So each row is compared with the reference
//! subject by subject: per subject, the reference's mean minus the row's; then the mean and
//! standard error of those differences over the subjects (a paired comparison), on how many
//! subjects the reference is higher, and the exact sign test of that count: with 8 subjects, a
//! split of 6 to 2 or more uneven, either way, happens by chance alone 29% of the time (p 0.29),
//! 8 to 0 less than 1%.

use std::fmt::Write as _;

use anyhow::{bail, Result};
use serde::Serialize;

use super::chart::{BarChart, Series};
use super::metrics::Stat;
use super::table::{Metrics, TableRow};

/// The reference's advantage over one row in one metric, over the subjects both have.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct PairedDiff {
    /// Mean over the subjects of (reference − row).
    pub mean: f64,
    /// Standard error of that mean over the subjects.
    pub se: f64,
    /// Subjects on which the reference's mean is strictly higher.
    pub higher: usize,
    /// Subjects on which it is strictly lower (the rest are ties).
    pub lower: usize,
    /// Two-sided exact sign test of `higher` against `lower` (ties dropped): the chance of a
    /// split at least this uneven if, on every subject, either row were as likely to be higher.
    /// Robust to the one outlying subject a mean ± SE is not.
    pub sign_p: f64,
    /// Subjects compared.
    pub n: usize,
}

impl PairedDiff {
    fn of(pairs: &[(f64, f64)]) -> Self {
        let d: Vec<f64> = pairs.iter().map(|(r, o)| r - o).collect();
        let s = Stat::of(&d);
        let higher = d.iter().filter(|x| **x > 0.0).count();
        let lower = d.iter().filter(|x| **x < 0.0).count();
        Self {
            mean: s.mean,
            se: s.se,
            higher,
            lower,
            sign_p: sign_test(higher, lower),
            n: d.len(),
        }
    }

    /// "+0.050 ± 0.020 (5/6, p 0.22)".
    pub fn cell(&self) -> String {
        format!(
            "{:+.3} ± {:.3} ({}/{}, p {})",
            self.mean,
            self.se,
            self.higher,
            self.n,
            format_p(self.sign_p)
        )
    }
}

/// Two-sided exact sign test: P(a Binomial(a + b, ½) count at most min(a, b) or at least
/// max(a, b)), 1 when there is nothing to test.
pub fn sign_test(a: usize, b: usize) -> f64 {
    let m = a + b;
    let k = a.min(b);
    // C(m, i) / 2^m summed in f64: exact enough for any table (m is a subject count).
    let mut term = 0.5f64.powi(m as i32);
    let mut tail = 0.0;
    for i in 0..=k {
        if i > 0 {
            term *= (m - i + 1) as f64 / i as f64;
        }
        tail += term;
    }
    (2.0 * tail).min(1.0)
}

/// Three decimals below 0.1, two above, and no false precision near 0.
fn format_p(p: f64) -> String {
    if p < 0.001 {
        "< 0.001".into()
    } else if p < 0.1 {
        format!("{p:.3}")
    } else {
        format!("{p:.2}")
    }
}

/// The reference against one other row.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Comparison {
    /// The other row's label.
    pub label: String,
    /// The other row's steps.
    pub steps: usize,
    /// CLIP-T, reference minus this row.
    pub clip_t: PairedDiff,
    /// CLIP-I, reference minus this row.
    pub clip_i: PairedDiff,
    /// DINO, reference minus this row.
    pub dino: PairedDiff,
}

/// Every row of a table against its reference row.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Paired {
    /// The reference row's label.
    pub reference: String,
    /// The reference row's steps.
    pub steps: usize,
    /// One per other row sharing at least [`MIN_SUBJECTS`] subjects with the reference, in the
    /// table's order.
    pub rows: Vec<Comparison>,
}

/// Fewer subjects in common than this give no comparison: one subject's difference has no
/// spread over subjects (its image-level error is in the table already).
pub const MIN_SUBJECTS: usize = 2;

/// Compares every row of `rows` with `rows[reference]` over the subjects both have; `None` when
/// no row shares [`MIN_SUBJECTS`] subjects with it (a table of one subject, for instance).
pub fn compare(rows: &[TableRow], reference: usize) -> Option<Paired> {
    let base = rows.get(reference)?;
    let comparisons: Vec<Comparison> = rows
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != reference)
        .filter_map(|(_, row)| {
            let common: Vec<(&Metrics, &Metrics)> = base
                .subjects
                .iter()
                .filter_map(|(s, m)| row.subjects.get(s).map(|o| (m, o)))
                .collect();
            if common.len() < MIN_SUBJECTS {
                return None;
            }
            let diff = |f: fn(&Metrics) -> f64| {
                PairedDiff::of(&common.iter().map(|(r, o)| (f(r), f(o))).collect::<Vec<_>>())
            };
            Some(Comparison {
                label: row.label.clone(),
                steps: row.steps,
                clip_t: diff(|m| m.clip_t.mean),
                clip_i: diff(|m| m.clip_i.mean),
                dino: diff(|m| m.dino.mean),
            })
        })
        .collect();
    (!comparisons.is_empty()).then(|| Paired {
        reference: base.label.clone(),
        steps: base.steps,
        rows: comparisons,
    })
}

/// The index of the row `spec` names: a label ("EchoDistill (distillation)"), the first row with
/// it in table order, or a label and a step count ("Custom Diffusion@25"). Unknown names are
/// refused with the table's rows listed, the message starting with `flag` (the option that
/// named the row).
pub fn find_reference(rows: &[TableRow], spec: &str, flag: &str) -> Result<usize> {
    let (label, steps) = match spec
        .rsplit_once('@')
        .and_then(|(l, s)| Some((l.trim(), s.trim().parse::<usize>().ok()?)))
    {
        Some((l, s)) => (l, Some(s)),
        None => (spec.trim(), None),
    };
    if let Some(i) = rows
        .iter()
        .position(|r| r.label == label && steps.is_none_or(|s| r.steps == s))
    {
        return Ok(i);
    }
    let known: Vec<String> = rows
        .iter()
        .map(|r| format!("{}@{}", r.label, r.steps))
        .collect();
    bail!(
        "{flag} {spec:?} names no row of the table; its rows are: {}",
        known.join(", ")
    )
}

impl Paired {
    /// A bar chart of the differences: one group per metric, one bar per compared row, error
    /// bars one standard error over subjects; bars above zero are where the reference leads.
    pub fn chart(&self) -> Result<image::RgbImage> {
        let groups = ["CLIP-T".to_string(), "CLIP-I".into(), "DINO".into()];
        let series: Vec<Series> = self
            .rows
            .iter()
            .map(|c| Series {
                label: TableRow::title_of(&c.label, c.steps),
                values: [c.clip_t, c.clip_i, c.dino]
                    .iter()
                    .map(|d| d.mean.is_finite().then_some((d.mean, d.se.max(0.0))))
                    .collect(),
            })
            .collect();
        let subjects = self.rows.iter().map(|c| c.clip_i.n).max().unwrap_or(0);
        let title = format!(
            "{} minus each row, {subjects} subjects",
            TableRow::title_of(&self.reference, self.steps)
        );
        BarChart {
            title: &title,
            groups: &groups,
            series: &series,
            y_max: None,
            signed: true,
        }
        .render()
        .map_err(|e| anyhow::anyhow!("paired chart: {e}"))
    }

    /// A markdown section: one line per compared row, each metric's mean difference ± its
    /// standard error over subjects and on how many subjects the reference is higher.
    pub fn markdown(&self) -> String {
        let mut out = format!(
            "\n### Paired by subject: {} minus each row\n\n",
            TableRow::title_of(&self.reference, self.steps)
        );
        out.push_str(
            "Per subject, the reference row's mean minus the other row's; then the mean ± standard \
             error of those differences over the subjects both rows have (the spread between \
             subjects, which the image-level errors above leave out), and (k/n, p): on k of the \
             n subjects the reference row is higher, and p the two-sided exact sign test of that \
             count (ties dropped; each p stands alone, uncorrected for the table's many \
             comparisons).\n\n",
        );
        out.push_str("| Method | Steps | Subjects | Δ CLIP-T | Δ CLIP-I | Δ DINO |\n");
        out.push_str("| --- | ---: | ---: | ---: | ---: | ---: |\n");
        for c in &self.rows {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} |",
                c.label,
                c.steps,
                c.clip_i.n,
                c.clip_t.cell(),
                c.clip_i.cell(),
                c.dino.cell()
            );
        }
        out
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn stat(mean: f64) -> Stat {
        Stat {
            mean,
            se: 0.01,
            n: 100,
        }
    }

    /// A row whose subjects' CLIP-T, CLIP-I and DINO means are `v`, `2v` and `3v`.
    pub(crate) fn row(label: &str, steps: usize, subjects: &[(&str, f64)]) -> TableRow {
        let m = |v: f64| Metrics {
            clip_t: stat(v),
            clip_i: stat(2.0 * v),
            dino: stat(3.0 * v),
            clip_self: None,
        };
        let subjects: BTreeMap<String, Metrics> = subjects
            .iter()
            .map(|(s, v)| (s.to_string(), m(*v)))
            .collect();
        TableRow {
            label: label.into(),
            steps,
            overall: Metrics::pool(subjects.values()),
            subjects,
        }
    }

    #[test]
    fn rows_are_compared_subject_by_subject() {
        let rows = vec![
            row("Ours", 1, &[("a", 0.5), ("b", 0.4), ("c", 0.3)]),
            // Differences 0.1, -0.1, 0.3: mean 0.1, sample sd 0.2, se 0.2/√3.
            row("Base", 1, &[("a", 0.4), ("b", 0.5), ("c", 0.0)]),
            // Shares one subject only: no comparison.
            row("Lone", 1, &[("a", 0.1), ("z", 0.1)]),
            // Shares two of its three subjects.
            row("Ours", 25, &[("b", 0.2), ("c", 0.3), ("z", 9.0)]),
        ];
        let p = compare(&rows, 0).unwrap();
        assert_eq!((p.reference.as_str(), p.steps), ("Ours", 1));
        assert_eq!(p.rows.len(), 2);
        let base = &p.rows[0];
        assert_eq!(base.label, "Base");
        assert!((base.clip_t.mean - 0.1).abs() < 1e-12);
        assert!((base.clip_t.se - 0.2 / 3f64.sqrt()).abs() < 1e-12);
        assert_eq!((base.clip_t.higher, base.clip_t.n), (2, 3));
        assert!((base.clip_i.mean - 0.2).abs() < 1e-12);
        assert!((base.dino.mean - 0.3).abs() < 1e-12);
        // Ours@25 on b and c only: differences 0.2 and 0.0 (a tie is not "higher").
        let slow = &p.rows[1];
        assert_eq!((slow.label.as_str(), slow.steps), ("Ours", 25));
        assert!((slow.clip_t.mean - 0.1).abs() < 1e-12);
        assert_eq!((slow.clip_t.higher, slow.clip_t.n), (1, 2));
        assert_eq!((slow.clip_t.lower, slow.clip_t.sign_p), (0, 1.0));

        let md = p.markdown();
        assert!(
            md.contains("### Paired by subject: Ours (1 step) minus each row"),
            "{md}"
        );
        assert!(
            md.contains(
                "| Base | 1 | 3 | +0.100 ± 0.115 (2/3, p 1.00) | +0.200 ± 0.231 (2/3, p 1.00) |"
            ),
            "{md}"
        );
        assert!(!md.contains("| Lone |"), "{md}");
        let img = p.chart().unwrap();
        assert!(img.width() >= 480 && img.height() > 300);

        // Against another reference, the signs turn.
        let q = compare(&rows, 1).unwrap();
        assert!((q.rows[0].clip_t.mean + 0.1).abs() < 1e-12);
        assert_eq!(q.rows[0].clip_t.higher, 1);
        // One subject each: nothing to compare.
        assert!(compare(&[row("A", 1, &[("a", 1.0)]), row("B", 1, &[("a", 0.0)])], 0).is_none());
        assert!(compare(&rows, 9).is_none());
    }

    /// Against the binomial tail summed with exact integers (Python's `math.comb`), which is
    /// also what `scipy.stats.binomtest(k, n).pvalue` gives for p = ½.
    #[test]
    fn the_sign_test_is_the_exact_binomial_tail() {
        let cases = [
            ((7, 1), 0.0703125),
            ((1, 7), 0.0703125),
            ((6, 2), 0.2890625),
            ((2, 1), 1.0),
            ((4, 4), 1.0),
            ((5, 0), 0.0625),
            ((20, 10), 0.09873714670538902),
            ((25, 5), 0.00032491423189640045),
            ((30, 0), 1.862645149230957e-09),
            ((0, 0), 1.0),
        ];
        for ((a, b), want) in cases {
            let got = sign_test(a, b);
            assert!(
                (got - want).abs() <= 1e-12 * want.max(1e-9),
                "{a}/{b}: {got} {want}"
            );
        }
        assert_eq!(format_p(0.0703125), "0.070");
        assert_eq!(format_p(0.2890625), "0.29");
        assert_eq!(format_p(0.0078125), "0.008");
        assert_eq!(format_p(1.862645149230957e-09), "< 0.001");
        // A tie is neither higher nor lower, and drops out of the test.
        let d = PairedDiff::of(&[(1.0, 0.0), (1.0, 0.0), (1.0, 0.0), (0.5, 0.5), (0.0, 1.0)]);
        assert_eq!((d.higher, d.lower, d.n), (3, 1, 5));
        assert_eq!(d.sign_p, sign_test(3, 1));
        assert_eq!(d.cell(), "+0.400 ± 0.400 (3/5, p 0.62)");
    }

    #[test]
    fn the_reference_is_named_by_label_and_steps() {
        let rows = vec![
            row("Ours", 1, &[("a", 0.5)]),
            row("Ours", 25, &[("a", 0.5)]),
            row("Custom Diffusion @ home", 1, &[("a", 0.5)]),
        ];
        assert_eq!(find_reference(&rows, "Ours", "--reference").unwrap(), 0);
        assert_eq!(find_reference(&rows, "Ours@25", "--reference").unwrap(), 1);
        assert_eq!(
            find_reference(&rows, " Ours @ 25 ", "--reference").unwrap(),
            1
        );
        // An "@" not followed by a number is part of the label.
        assert_eq!(
            find_reference(&rows, "Custom Diffusion @ home", "--reference").unwrap(),
            2
        );
        let e = find_reference(&rows, "Ours@4", "--reference")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("\"Ours@4\" names no row") && e.contains("Ours@1, Ours@25"),
            "{e}"
        );
    }
}

//! Per subject, one row of a table (the reference, e.g. EchoDistill's one-step student) against
//! the best of a chosen set of rows on that subject (e.g. the one-step baselines).
//!
//! The paired comparison ([`super::paired`]) answers "is the reference above this baseline,
//! subject by subject?" one baseline at a time. A user choosing a method for a concept asks
//! something else: "on this subject, does it beat whatever else I could have run?". Here each
//! subject's best among `versus` is picked separately for CLIP-I and for DINO (the best in one
//! is often not the best in the other), and the count of subjects on which the reference is
//! strictly above that best is the headline.

use std::fmt::Write as _;

use serde::Serialize;

use super::table::TableRow;

/// The best row on one subject in one metric.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Best {
    /// Its label.
    pub label: String,
    /// Its steps.
    pub steps: usize,
    /// Its mean on the subject.
    pub mean: f64,
}

/// The reference and the best of the others on one subject.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SubjectBest {
    /// The subject.
    pub subject: String,
    /// The reference's CLIP-I mean on it.
    pub clip_i: f64,
    /// The best CLIP-I among the compared rows.
    pub best_clip_i: Best,
    /// The reference's DINO mean on it.
    pub dino: f64,
    /// The best DINO among the compared rows.
    pub best_dino: Best,
    /// The reference's CLIP-self on it, when scored (a collapse shows here: near 1 is one
    /// picture whatever the prompt).
    pub clip_self: Option<f64>,
}

/// The reference against the best of `versus`, subject by subject.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BestOf {
    /// The reference row's label.
    pub reference: String,
    /// The reference row's steps.
    pub steps: usize,
    /// The compared rows, "label (n steps)", in the table's order.
    pub versus: Vec<String>,
    /// One per subject of the reference that at least one compared row has.
    pub subjects: Vec<SubjectBest>,
    /// Subjects on which the reference's CLIP-I is strictly above the best.
    pub above_clip_i: usize,
    /// Subjects on which the reference's DINO is strictly above the best.
    pub above_dino: usize,
}

/// `rows[reference]` against the best of `rows[versus]` on each subject; `None` when `versus`
/// names no row other than the reference or shares no subject with it. Ties go to the row
/// first in the table.
pub fn best_of(rows: &[TableRow], reference: usize, versus: &[usize]) -> Option<BestOf> {
    let base = rows.get(reference)?;
    // The compared rows once each, in the table's order (which decides ties).
    let mut ordered: Vec<usize> = versus
        .iter()
        .copied()
        .filter(|&i| i != reference && i < rows.len())
        .collect();
    ordered.sort_unstable();
    ordered.dedup();
    let others: Vec<&TableRow> = ordered.iter().map(|&i| &rows[i]).collect();
    let pick = |subject: &str, f: fn(&super::table::Metrics) -> f64| -> Option<Best> {
        let mut best: Option<Best> = None;
        for row in &others {
            if let Some(m) = row.subjects.get(subject) {
                let v = f(m);
                if best.as_ref().is_none_or(|b| v > b.mean) {
                    best = Some(Best {
                        label: row.label.clone(),
                        steps: row.steps,
                        mean: v,
                    });
                }
            }
        }
        best
    };
    let subjects: Vec<SubjectBest> = base
        .subjects
        .iter()
        .filter_map(|(s, m)| {
            Some(SubjectBest {
                subject: s.clone(),
                clip_i: m.clip_i.mean,
                best_clip_i: pick(s, |m| m.clip_i.mean)?,
                dino: m.dino.mean,
                best_dino: pick(s, |m| m.dino.mean)?,
                clip_self: m.clip_self.map(|c| c.mean),
            })
        })
        .collect();
    if subjects.is_empty() {
        return None;
    }
    Some(BestOf {
        reference: base.label.clone(),
        steps: base.steps,
        versus: others.iter().map(|r| r.title()).collect(),
        above_clip_i: subjects
            .iter()
            .filter(|s| s.clip_i > s.best_clip_i.mean)
            .count(),
        above_dino: subjects
            .iter()
            .filter(|s| s.dino > s.best_dino.mean)
            .count(),
        subjects,
    })
}

impl BestOf {
    /// The compared row's name in a cell: its label, with its steps when they differ from the
    /// reference's.
    fn name(&self, b: &Best) -> String {
        if b.steps == self.steps {
            b.label.clone()
        } else {
            TableRow::title_of(&b.label, b.steps)
        }
    }

    /// A markdown section: one line per subject, then on how many subjects the reference is
    /// above the best.
    pub fn markdown(&self) -> String {
        let reference = TableRow::title_of(&self.reference, self.steps);
        let mut out = format!(
            "\n### Per subject: {reference} against the best of {}\n\n",
            self.versus.join(", ")
        );
        out.push_str(
            "On each subject, the reference row's mean beside the highest mean among the \
             compared rows (picked separately for CLIP-I and DINO, so the two may be other rows), \
             and the reference's CLIP-self (near 1: one picture whatever the prompt).\n\n",
        );
        out.push_str(
            "| Subject | CLIP-I | best CLIP-I | DINO | best DINO | CLIP-self |\n\
             | --- | ---: | ---: | ---: | ---: | ---: |\n",
        );
        for s in &self.subjects {
            let _ = writeln!(
                out,
                "| {} | {:.3} | {:.3} ({}) | {:.3} | {:.3} ({}) | {} |",
                s.subject,
                s.clip_i,
                s.best_clip_i.mean,
                self.name(&s.best_clip_i),
                s.dino,
                s.best_dino.mean,
                self.name(&s.best_dino),
                s.clip_self.map_or("–".into(), |c| format!("{c:.3}")),
            );
        }
        let n = self.subjects.len();
        let _ = writeln!(
            out,
            "\n{reference} is above the best of them in CLIP-I on {} of {n} subjects, in DINO on {} of {n}.",
            self.above_clip_i, self.above_dino
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::paired::tests::row;

    #[test]
    fn each_subject_gets_its_own_best_per_metric() {
        // row() gives CLIP-T = v, CLIP-I = 2v, DINO = 3v from one value per subject, so the
        // best in CLIP-I and DINO is the same row here; a second table checks they split.
        let rows = vec![
            row("Echo", 1, &[("a", 0.5), ("b", 0.1), ("c", 0.3)]),
            row("CD", 1, &[("a", 0.2), ("b", 0.4), ("c", 0.3)]),
            row("LoRA", 1, &[("a", 0.3), ("b", 0.0)]),
            row("ablation", 1, &[("a", 0.9), ("b", 0.9), ("c", 0.9)]),
            row("CD", 25, &[("a", 0.8), ("b", 0.8), ("c", 0.8)]),
        ];
        let b = best_of(&rows, 0, &[1, 2, 4]).unwrap();
        assert_eq!(b.versus, ["CD (1 step)", "LoRA (1 step)", "CD (25 steps)"]);
        assert_eq!(b.subjects.len(), 3);
        assert_eq!(b.subjects[0].best_clip_i.label, "CD");
        assert_eq!(b.subjects[0].best_clip_i.steps, 25);
        let b = best_of(&rows, 0, &[1, 2]).unwrap();
        // The rows are taken once each in the table's order, whatever order they are named in.
        assert_eq!(best_of(&rows, 0, &[2, 1, 2, 0]).as_ref(), Some(&b));
        let best: Vec<(&str, f64)> = b
            .subjects
            .iter()
            .map(|s| (s.best_clip_i.label.as_str(), s.best_clip_i.mean))
            .collect();
        // a: LoRA 0.6 over CD 0.4; b: CD; c: only CD has it. The ablation is not compared.
        assert_eq!(best[0].0, "LoRA");
        assert!((best[0].1 - 0.6).abs() < 1e-12);
        assert_eq!(best[1].0, "CD");
        assert_eq!(best[2].0, "CD");
        // Above on a (1.0 > 0.6) only; c is a tie (0.6 = 0.6), which is not above.
        assert_eq!((b.above_clip_i, b.above_dino), (1, 1));
        let md = b.markdown();
        assert!(
            md.contains("against the best of CD (1 step), LoRA (1 step)"),
            "{md}"
        );
        assert!(
            md.contains("| a | 1.000 | 0.600 (LoRA) | 1.500 | 0.900 (LoRA) |"),
            "{md}"
        );
        assert!(
            md.contains("in CLIP-I on 1 of 3 subjects, in DINO on 1 of 3"),
            "{md}"
        );

        // CLIP-I and DINO picked separately.
        let mut split = rows[..3].to_vec();
        split[2].subjects.get_mut("b").unwrap().dino.mean = 1.5;
        let b = best_of(&split, 0, &[1, 2]).unwrap();
        assert_eq!(b.subjects[1].best_clip_i.label, "CD");
        assert_eq!(b.subjects[1].best_dino.label, "LoRA");
        // Another step count is named in the cell.
        let b = best_of(&rows, 0, &[4]).unwrap();
        assert!(
            b.markdown().contains("1.600 (CD (25 steps))"),
            "{}",
            b.markdown()
        );
    }

    #[test]
    fn nothing_to_compare_gives_none() {
        let rows = vec![row("Echo", 1, &[("a", 0.5)]), row("CD", 1, &[("b", 0.2)])];
        assert!(best_of(&rows, 0, &[0]).is_none());
        assert!(best_of(&rows, 0, &[1]).is_none());
        assert!(best_of(&rows, 0, &[]).is_none());
    }
}

//! The results of one or many evaluations as tables: per (method, steps) row the overall and
//! per-subject means of CLIP-T, CLIP-I and DINO with standard errors, in `metrics.csv`,
//! `metrics.json`, `metrics.md` (shaped like the paper's Table 1) and a bar chart
//! `metrics.png`; plus the per-image `scores.jsonl` / `scores.csv` they come from.
//!
//! Overall numbers are over all images of all subjects (each subject has the same number of
//! prompts and seeds, so this equals the mean of the subject means); the standard error is over
//! images.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::best_of::{self, BestOf};
use super::chart::{BarChart, Series};
use super::metrics::Stat;
use super::paired::{self, Paired};
use super::protocol::ScoreRecord;
use crate::checkpoint::write_text_atomic;
use crate::sampling::write_png;

/// The three metrics of a set of images.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    /// CLIP-T.
    pub clip_t: Stat,
    /// CLIP-I.
    pub clip_i: Stat,
    /// DINO.
    pub dino: Stat,
    /// CLIP-self (a diagnostic: [`super::metrics::ImageScore::clip_self`]), when every image
    /// has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clip_self: Option<Stat>,
}

impl Metrics {
    fn of(records: &[&ScoreRecord]) -> Self {
        let get =
            |f: fn(&ScoreRecord) -> f64| -> Vec<f64> { records.iter().map(|r| f(r)).collect() };
        let clip_self: Option<Vec<f64>> = records.iter().map(|r| r.score.clip_self).collect();
        Self {
            clip_t: Stat::of(&get(|r| r.score.clip_t)),
            clip_i: Stat::of(&get(|r| r.score.clip_i)),
            dino: Stat::of(&get(|r| r.score.dino)),
            clip_self: clip_self.map(|v| Stat::of(&v)),
        }
    }

    /// The metrics of the union of disjoint groups of images ([`Stat::pool`] of each), e.g.
    /// every subject of a row; CLIP-self only when every group has it.
    pub fn pool<'a>(groups: impl Iterator<Item = &'a Metrics> + Clone) -> Self {
        let pool = |f: fn(&Metrics) -> Stat| Stat::pool(&groups.clone().map(f).collect::<Vec<_>>());
        let clip_self: Option<Vec<Stat>> = groups.clone().map(|m| m.clip_self).collect();
        Self {
            clip_t: pool(|m| m.clip_t),
            clip_i: pool(|m| m.clip_i),
            dino: pool(|m| m.dino),
            clip_self: clip_self.map(|s| Stat::pool(&s)),
        }
    }
}

/// One row of the table: a method at one step count.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TableRow {
    /// The method's label.
    pub label: String,
    /// Sampling steps.
    pub steps: usize,
    /// Over every image.
    pub overall: Metrics,
    /// Per subject.
    pub subjects: BTreeMap<String, Metrics>,
}

impl TableRow {
    /// "label (n steps)", or the label alone when it names its steps already ("Custom
    /// Diffusion (teacher, 25 steps)").
    pub fn title(&self) -> String {
        Self::title_of(&self.label, self.steps)
    }

    /// [`TableRow::title`] of a row labelled `label` at `steps` steps.
    pub fn title_of(label: &str, steps: usize) -> String {
        let n = format!("{steps} step{}", if steps == 1 { "" } else { "s" });
        if label.contains(&n) {
            label.to_string()
        } else {
            format!("{label} ({n})")
        }
    }
}

/// Groups records by (label, steps), in order of first appearance.
pub fn aggregate(records: &[ScoreRecord]) -> Vec<TableRow> {
    let mut keys: Vec<(String, usize)> = Vec::new();
    for r in records {
        let k = (r.label.clone(), r.steps);
        if !keys.contains(&k) {
            keys.push(k);
        }
    }
    keys.into_iter()
        .map(|(label, steps)| {
            let mine: Vec<&ScoreRecord> = records
                .iter()
                .filter(|r| r.label == label && r.steps == steps)
                .collect();
            let mut by_subject: BTreeMap<String, Vec<&ScoreRecord>> = BTreeMap::new();
            for r in &mine {
                by_subject.entry(r.subject.clone()).or_default().push(r);
            }
            TableRow {
                overall: Metrics::of(&mine),
                subjects: by_subject
                    .into_iter()
                    .map(|(s, rs)| (s, Metrics::of(&rs)))
                    .collect(),
                label,
                steps,
            }
        })
        .collect()
}

pub(crate) fn cell(s: &Stat) -> String {
    format!("{:.3} ± {:.3}", s.mean, s.se)
}

/// A CLIP-self cell, "—" where the scores have none.
fn self_cell(s: &Option<Stat>) -> String {
    s.as_ref().map_or("—".into(), cell)
}

/// A CSV field, quoted when it must be.
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// `metrics.csv`: one line per (label, steps, subject), subject `all` for the overall line.
pub fn to_csv(rows: &[TableRow]) -> String {
    let mut out =
        String::from("label,steps,subject,images,clip_t,clip_t_se,clip_i,clip_i_se,dino,dino_se,clip_self,clip_self_se\n");
    for r in rows {
        let mut line = |subject: &str, m: &Metrics| {
            let clip_self = m
                .clip_self
                .map_or(",".into(), |s| format!("{:.6},{:.6}", s.mean, s.se));
            let _ = writeln!(
                out,
                "{},{},{},{},{:.6},{:.6},{:.6},{:.6},{:.6},{:.6},{clip_self}",
                csv_field(&r.label),
                r.steps,
                csv_field(subject),
                m.clip_t.n,
                m.clip_t.mean,
                m.clip_t.se,
                m.clip_i.mean,
                m.clip_i.se,
                m.dino.mean,
                m.dino.se
            );
        };
        line("all", &r.overall);
        for (s, m) in &r.subjects {
            line(s, m);
        }
    }
    out
}

/// The Table 1 shape (method, steps, CLIP-T, CLIP-I, DINO) with `notes` under it.
pub fn summary_markdown(rows: &[TableRow], notes: &[String]) -> String {
    let mut out =
        String::from("| Method | Steps | CLIP-T ↑ | CLIP-I ↑ | DINO ↑ | Images | CLIP-self |\n");
    out.push_str("| --- | ---: | ---: | ---: | ---: | ---: | ---: |\n");
    for r in rows {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} |",
            r.label,
            r.steps,
            cell(&r.overall.clip_t),
            cell(&r.overall.clip_i),
            cell(&r.overall.dino),
            r.overall.clip_t.n,
            self_cell(&r.overall.clip_self)
        );
    }
    out.push_str(
        "\nMean ± standard error over the generated images. CLIP-self, a diagnostic outside the \
         paper's protocol: the mean CLIP cosine between the images of one subject (1 = the same \
         picture for every prompt and seed).\n",
    );
    for n in notes {
        let _ = writeln!(out, "{n}");
    }
    out
}

/// `metrics.md`: [`summary_markdown`], the rows against a reference row subject by subject
/// (`paired`, when given), then the same numbers per subject.
pub fn to_markdown(
    rows: &[TableRow],
    notes: &[String],
    paired: Option<&Paired>,
    best: Option<&BestOf>,
) -> String {
    let mut out = summary_markdown(rows, notes);
    if let Some(p) = paired {
        out.push_str(&p.markdown());
    }
    if let Some(b) = best {
        out.push_str(&b.markdown());
    }
    out.push_str(
        "\n### Per subject\n\n| Subject | Method | Steps | CLIP-T | CLIP-I | DINO | Images | CLIP-self |\n",
    );
    out.push_str("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |\n");
    let subjects: std::collections::BTreeSet<&String> =
        rows.iter().flat_map(|r| r.subjects.keys()).collect();
    for s in subjects {
        for r in rows {
            if let Some(m) = r.subjects.get(s) {
                let _ = writeln!(
                    out,
                    "| {s} | {} | {} | {} | {} | {} | {} | {} |",
                    r.label,
                    r.steps,
                    cell(&m.clip_t),
                    cell(&m.clip_i),
                    cell(&m.dino),
                    m.clip_t.n,
                    self_cell(&m.clip_self)
                );
            }
        }
    }
    out
}

/// The bar chart: groups CLIP-T, CLIP-I, DINO; one bar per row.
pub fn chart(rows: &[TableRow], title: &str) -> Result<image::RgbImage> {
    let groups = ["CLIP-T".to_string(), "CLIP-I".into(), "DINO".into()];
    let series: Vec<Series> = rows
        .iter()
        .map(|r| Series {
            label: r.title(),
            values: [r.overall.clip_t, r.overall.clip_i, r.overall.dino]
                .iter()
                .map(|s| s.mean.is_finite().then_some((s.mean, s.se.max(0.0))))
                .collect(),
        })
        .collect();
    BarChart {
        title,
        groups: &groups,
        series: &series,
        y_max: Some(1.0),
        signed: false,
    }
    .render()
    .map_err(|e| anyhow::anyhow!("drawing the metrics chart: {e}"))
}

/// Per-image records as CSV.
pub fn scores_csv(records: &[ScoreRecord]) -> String {
    let mut out = String::from(
        "label,subject,steps,prompt_index,seed,prompt,clip_prompt,clip_t,clip_i,dino,image\n",
    );
    for r in records {
        let _ = writeln!(
            out,
            "{},{},{},{},{},{},{},{:.6},{:.6},{:.6},{}",
            csv_field(&r.label),
            csv_field(&r.subject),
            r.steps,
            r.prompt_index,
            r.seed,
            csv_field(&r.prompt),
            csv_field(&r.clip_prompt),
            r.score.clip_t,
            r.score.clip_i,
            r.score.dino,
            csv_field(&r.image)
        );
    }
    out
}

/// Writes `scores.jsonl` and `scores.csv` into `dir`.
pub fn write_scores(records: &[ScoreRecord], dir: &Path) -> Result<()> {
    let mut lines = String::new();
    for r in records {
        lines.push_str(&serde_json::to_string(r)?);
        lines.push('\n');
    }
    write_text_atomic(&dir.join("scores.jsonl"), &lines)?;
    write_text_atomic(&dir.join("scores.csv"), &scores_csv(records))
}

/// Reads `scores.jsonl`.
pub fn read_scores(path: &Path) -> Result<Vec<ScoreRecord>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(i, l)| {
            serde_json::from_str(l)
                .with_context(|| format!("{} line {}: not a score record", path.display(), i + 1))
        })
        .collect()
}

/// Which rows the written tables compare.
#[derive(Debug, Clone, Copy, Default)]
pub struct Comparisons<'a> {
    /// Every other row is compared with this one, subject by subject ([`paired`]).
    pub reference: usize,
    /// Per subject, the reference against the best of these rows ([`best_of`]); none when empty.
    pub versus: &'a [usize],
}

/// Writes `metrics.csv`, `metrics.json` (rows, `meta`, `paired`: every row against the
/// reference subject by subject, when they share subjects, and `best_of`: the reference against
/// the best of `versus` per subject), `metrics.md`, `metrics.png` and, with `paired`, its chart
/// `paired.png` into `dir`. Returns those comparisons.
pub fn write_tables(
    rows: &[TableRow],
    dir: &Path,
    meta: serde_json::Value,
    notes: &[String],
    title: &str,
    compare: Comparisons,
) -> Result<(Option<Paired>, Option<BestOf>)> {
    write_text_atomic(&dir.join("metrics.csv"), &to_csv(rows))?;
    let mut json = serde_json::json!({ "meta": meta, "rows": rows });
    let paired = paired::compare(rows, compare.reference);
    if let Some(p) = &paired {
        json["paired"] = serde_json::to_value(p)?;
    }
    let best = best_of::best_of(rows, compare.reference, compare.versus);
    if let Some(b) = &best {
        json["best_of"] = serde_json::to_value(b)?;
    }
    write_text_atomic(
        &dir.join("metrics.json"),
        &serde_json::to_string_pretty(&json)?,
    )?;
    write_text_atomic(
        &dir.join("metrics.md"),
        &to_markdown(rows, notes, paired.as_ref(), best.as_ref()),
    )?;
    write_png(&chart(rows, title)?, &dir.join("metrics.png"))?;
    if let Some(p) = &paired {
        write_png(&p.chart()?, &dir.join("paired.png"))?;
    }
    Ok((paired, best))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::eval::metrics::ImageScore;

    /// A record whose three scores are `v`, `v + 0.1` and `v + 0.2`.
    pub(crate) fn record(label: &str, subject: &str, steps: usize, v: f64) -> ScoreRecord {
        ScoreRecord {
            label: label.into(),
            subject: subject.into(),
            steps,
            prompt_index: 0,
            seed: 0,
            prompt: "a <new1> dog, \"x\"".into(),
            clip_prompt: "a dog".into(),
            score: ImageScore {
                clip_t: v,
                clip_i: v + 0.1,
                dino: v + 0.2,
                clip_self: Some(v + 0.3),
            },
            image: "i.png".into(),
        }
    }

    #[test]
    fn rows_group_by_label_and_steps_with_subject_means() {
        let recs = vec![
            record("A", "dog", 1, 0.1),
            record("A", "dog", 1, 0.3),
            record("A", "cat", 1, 0.5),
            record("B", "dog", 1, 0.9),
            record("A", "dog", 2, 0.0),
        ];
        let rows = aggregate(&recs);
        assert_eq!(rows.len(), 3);
        assert_eq!((rows[0].label.as_str(), rows[0].steps), ("A", 1));
        assert!((rows[0].overall.clip_t.mean - 0.3).abs() < 1e-12);
        assert_eq!(rows[0].overall.clip_t.n, 3);
        assert!((rows[0].subjects["dog"].clip_t.mean - 0.2).abs() < 1e-12);
        assert!((rows[0].subjects["dog"].dino.mean - 0.4).abs() < 1e-12);
        assert_eq!(rows[2].title(), "A (2 steps)");
        let named = TableRow {
            label: "B (teacher, 25 steps)".into(),
            steps: 25,
            ..rows[0].clone()
        };
        assert_eq!(named.title(), "B (teacher, 25 steps)");
        let md = to_markdown(&rows, &[], None, None);
        assert!(md.contains("| A | 1 | 0.300 ± 0.115 |"), "{md}");
        let csv = to_csv(&rows);
        assert_eq!(csv.lines().count(), 1 + 3 + 2 + 2);
        assert!(scores_csv(&recs).contains("\"a <new1> dog, \"\"x\"\"\""));
    }
}

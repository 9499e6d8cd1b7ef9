//! `trainer eval`: the DreamBench evaluation (SPEC §8). The dataset and its prompt lists
//! ([`dreambench`]), the metric backbones and the metrics ([`metrics`]), generating and scoring
//! one run on one subject ([`protocol`]), the tables and the bar chart ([`table`], [`chart`]),
//! and the browsable image grids ([`gallery`]); the whole table over methods and subjects,
//! resumable and shardable ([`bench_table`]), the fingerprints of their inputs
//! ([`fingerprint`]), tables of disjoint subjects merged into one ([`merge`]), and their rows
//! compared subject by subject ([`paired`], [`best_of`]).

pub mod bench_table;
pub mod best_of;
pub mod chart;
pub mod dreambench;
pub mod fingerprint;
pub mod gallery;
pub mod merge;
pub mod metrics;
pub mod paired;
pub mod protocol;
pub mod table;

use std::path::Path;

use anyhow::{Context, Result};
use serde_json::json;

use crate::checkpoint::LoadOptions;
use protocol::{EvalOutcome, EvalSettings};
use table::TableRow;

/// Everything `trainer eval` writes, and what it measured.
pub struct EvalReport {
    /// The evaluation's numbers and timings.
    pub outcome: EvalOutcome,
    /// The table rows (one per step count).
    pub rows: Vec<TableRow>,
}

/// Evaluates `run` into `out`: the images, `scores.jsonl`/`.csv`, `metrics.csv`/`.json`/`.md`/
/// `.png` and `gallery.html`.
pub fn evaluate_into(
    run: &Path,
    settings: &EvalSettings,
    out: &Path,
    opts: LoadOptions,
) -> Result<EvalReport> {
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let outcome = protocol::evaluate(run, settings, out, opts)?;
    table::write_scores(&outcome.records, out)?;
    let rows = table::aggregate(&outcome.records);
    let (prompts, seeds) = count_prompts_and_seeds(&outcome.records);
    // The same roles as a bench-table's inputs, so their tables can be merged.
    let config = crate::fit::run_dir::run_config(run)?;
    let mut named = vec![
        ("clip".to_string(), settings.clip.clone()),
        ("dino".to_string(), settings.dino.clone()),
        ("student".to_string(), config.student.clone().into()),
        ("teacher".to_string(), config.teacher.clone().into()),
    ];
    named.extend(config.towers.clone().map(|t| ("towers".to_string(), t)));
    let inputs = fingerprint::fingerprints(&named)?;
    let meta = json!({
        "run": run.display().to_string(),
        "inputs": inputs,
        "network": outcome.network,
        "clip": settings.clip.display().to_string(),
        "dino": settings.dino.display().to_string(),
        "prompts_per_subject": prompts,
        "seeds": seeds,
        "steps": outcome.steps,
    });
    let notes = vec![backbone_note(
        &settings.clip,
        &settings.dino,
        prompts,
        &seeds,
    )];
    let (paired, best) = table::write_tables(
        &rows,
        out,
        meta,
        &notes,
        "DreamBench",
        table::Comparisons::default(),
    )?;
    gallery::write_gallery(
        out,
        &outcome.records,
        "DreamBench evaluation",
        vec![
            ("run".into(), run.display().to_string()),
            (
                "table".into(),
                table::to_markdown(&rows, &notes, paired.as_ref(), best.as_ref()),
            ),
        ],
        format!("{settings:#?}"),
    )?;
    Ok(EvalReport { outcome, rows })
}

/// Prompts per subject and the seeds used.
pub fn count_prompts_and_seeds(records: &[protocol::ScoreRecord]) -> (usize, Vec<u64>) {
    let mut prompts: Vec<(String, usize)> = records
        .iter()
        .map(|r| (r.subject.clone(), r.prompt_index))
        .collect();
    prompts.sort();
    prompts.dedup();
    let subjects = records
        .iter()
        .map(|r| r.subject.as_str())
        .collect::<std::collections::BTreeSet<_>>()
        .len()
        .max(1);
    let mut seeds: Vec<u64> = records.iter().map(|r| r.seed).collect();
    seeds.sort_unstable();
    seeds.dedup();
    (prompts.len() / subjects, seeds)
}

/// The line under the table naming the backbones and the protocol.
pub fn backbone_note(clip: &Path, dino: &Path, prompts: usize, seeds: &[u64]) -> String {
    format!(
        "CLIP: {}; DINO: {}; {prompts} prompts per subject, seeds {seeds:?}.",
        clip.display(),
        dino.display()
    )
}

//! `trainer eval`, `trainer bench-eval`, `trainer bench-table` and `trainer merge-tables`: the
//! DreamBench protocol on a run, on a manifest's table, and tables merged.

use std::time::Instant;

use anyhow::Result;
use trainer::eval::bench_table::{collect, run_units, Manifest};
use trainer::eval::evaluate_into;
use trainer::eval::protocol::EvalSettings;
use trainer::eval::table::summary_markdown;

use super::sample::{load_options, scheduler_kind};
use crate::cli::{BenchEvalArgs, BenchTableArgs, EvalArgs, EvalProtocolArgs, MergeTablesArgs};

fn settings(p: &EvalProtocolArgs, quiet: bool) -> EvalSettings {
    let scheduler = scheduler_kind(p.scheduler.as_deref());
    EvalSettings {
        dataset: p.dataset.clone(),
        subject: p.subject.clone(),
        references: p.references.clone(),
        label: p.label.clone(),
        teacher: p.teacher,
        steps: p.steps.clone(),
        seeds: p.seeds.clone(),
        prompts: p.prompts,
        scheduler,
        guidance: p.guidance,
        resolution: p.resolution,
        clip: p.clip.clone(),
        dino: p.dino.clone(),
        dino_size: p.dino_size,
        quiet,
    }
}

pub fn run(args: &EvalArgs) -> Result<()> {
    let opts = load_options(&args.protocol.device)?;
    let s = settings(&args.protocol, args.quiet);
    let report = evaluate_into(&args.run, &s, &args.out, opts)?;
    println!("{}", summary_markdown(&report.rows, &[]).trim_end());
    println!(
        "wrote {} ({} images, {} generated now): metrics.md, metrics.csv, metrics.json, metrics.png, scores.csv, gallery.html",
        args.out.display(),
        report.outcome.records.len(),
        report.outcome.generated
    );
    Ok(())
}

/// Seconds per generated-and-scored image: evaluates into a fresh temporary folder so every
/// image is generated.
pub fn bench(args: &BenchEvalArgs) -> Result<()> {
    let opts = load_options(&args.protocol.device)?;
    let s = settings(&args.protocol, true);
    let tmp = tempfile::tempdir()?;
    let start = Instant::now();
    let report = evaluate_into(&args.run, &s, tmp.path(), opts)?;
    let total = start.elapsed().as_secs_f64();
    let o = &report.outcome;
    let n = o.records.len().max(1) as f64;
    println!(
        "bench-eval: {} images ({} steps {:?}, {} seeds) on {device:?} {kind:?}",
        o.records.len(),
        o.network,
        o.steps,
        s.seeds.len(),
        device = opts.device,
        kind = opts.kind
    );
    println!(
        "  generate  {:.4} s/image ({:.2} s total)",
        o.generate_seconds / o.generated.max(1) as f64,
        o.generate_seconds
    );
    println!(
        "  score     {:.4} s/image ({:.2} s total, towers and references included)",
        o.score_seconds / n,
        o.score_seconds
    );
    println!(
        "  end to end {:.4} s per generated-and-scored image ({total:.2} s with loading and writing)",
        total / n
    );
    Ok(())
}

/// `trainer bench-table`: the manifest's fits and evaluations (this shard's, or all), then the
/// table (unless sharded: each shard stops after its cells; `--collect` merges them).
pub fn bench_table(args: &BenchTableArgs) -> Result<()> {
    let mut manifest = Manifest::load(&args.manifest)?;
    manifest.narrow(&args.subjects, &args.set, args.prompts, &args.seeds);
    if !args.collect {
        let opts = load_options(&args.device)?;
        run_units(
            &manifest,
            &args.out,
            args.shard,
            opts,
            args.quiet,
            &mut |line| eprintln!("{line}"),
        )?;
        if let Some(s) = args.shard {
            println!(
                "shard {}/{} done; when every shard is, merge with: trainer bench-table --manifest {} --out {} --collect",
                s.index,
                s.count,
                args.manifest.display(),
                args.out.display()
            );
            return Ok(());
        }
    }
    let (rows, paired) = collect(&manifest, &args.out)?;
    println!("{}", summary_markdown(&rows, &[]).trim_end());
    if let Some(p) = paired {
        println!("{}", p.markdown().trim_end());
    }
    println!(
        "wrote {}: metrics.md, metrics.csv, metrics.json, metrics.png",
        args.out.display()
    );
    Ok(())
}

/// `trainer merge-tables`: one table from tables of disjoint subjects.
pub fn merge_tables(args: &MergeTablesArgs) -> Result<()> {
    let merged = trainer::eval::merge::merge_files(
        &args.tables,
        &args.out,
        args.reference.as_deref(),
        &args.versus,
    )?;
    println!("{}", summary_markdown(&merged.rows, &[]).trim_end());
    if let Some(p) = merged.paired {
        println!("{}", p.markdown().trim_end());
    }
    if let Some(b) = merged.best {
        println!("{}", b.markdown().trim_end());
    }
    println!(
        "wrote {}: metrics.md, metrics.csv, metrics.json, metrics.png",
        args.out.display()
    );
    Ok(())
}

//! The whole run: every stage's iterations with a progress bar, `log.jsonl`, checkpoints (every
//! `save_every` iterations, at stage boundaries, at the end and on Ctrl-C), resume, divergence
//! recovery (NaN/inf or a loss spike restores the last checkpoint and lowers the learning
//! rates, a bounded number of times, each event in `events.jsonl`), sample grids and the
//! self-contained `report.html`. The same loop runs EchoDistill and every baseline (see
//! [`super::method`]).

use std::collections::VecDeque;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use serde_json::json;

use super::baseline::Baseline;
use super::config::FitConfig;
use super::distill::{Distiller, StepLog};
use super::failpoint::{maybe_pause, Failpoint};
use super::method::Method;
use super::{grids, report};
use crate::checkpoint::write_text_atomic;

/// How to run.
#[derive(Default, Clone)]
pub struct RunOptions {
    /// Continue from `RUN/checkpoint`.
    pub resume: bool,
    /// Set from outside (Ctrl-C) to stop after the current iteration with a checkpoint.
    pub stop: Option<Arc<AtomicBool>>,
    /// Faults to inject (tests).
    pub failpoints: Vec<Failpoint>,
    /// Hide the progress bar (tests, logs).
    pub quiet: bool,
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunOutcome {
    /// Every iteration done; results written.
    Finished,
    /// Stopped on request after this many iterations, with a checkpoint to resume from.
    Interrupted(usize),
}

fn append_line(path: &Path, value: &serde_json::Value) -> Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    writeln!(f, "{value}").with_context(|| format!("cannot write {}", path.display()))
}

/// Keeps the first `n` lines of `path` (iterations after a checkpoint run again).
fn truncate_lines(path: &Path, n: usize) -> Result<()> {
    let kept: String = std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .take(n)
        .map(|l| format!("{l}\n"))
        .collect();
    write_text_atomic(path, &kept)
}

/// Why an iteration counts as divergence, if it does.
fn divergence(log: &StepLog, recent: &VecDeque<f64>, config: &FitConfig) -> Option<String> {
    if !log.is_finite() {
        return Some("a loss or gradient is NaN or infinite".into());
    }
    let r = &config.recovery;
    if r.spike_factor > 0.0 && r.spike_window > 0 && recent.len() >= r.spike_window {
        let mean = recent.iter().sum::<f64>() / recent.len() as f64;
        let total = log.total_loss();
        if mean > 0.0 && total > r.spike_factor * mean {
            return Some(format!(
                "loss {total:.4} is above {}x the mean {mean:.4} of the last {} iterations",
                r.spike_factor,
                recent.len()
            ));
        }
    }
    None
}

/// Runs `config` into `out` (see the module documentation). With `options.resume`, continues
/// from `out/checkpoint` to the same final weights an uninterrupted run reaches.
pub fn run(config: FitConfig, out: &Path, options: &RunOptions) -> Result<RunOutcome> {
    let mut method: Box<dyn Method> = if config.method.is_baseline() {
        Box::new(Baseline::new(config)?)
    } else {
        Box::new(Distiller::new(config)?)
    };
    run_method(method.as_mut(), out, options)
}

/// Runs an already built method into `out` (see [`run`]).
pub fn run_method(d: &mut dyn Method, out: &Path, options: &RunOptions) -> Result<RunOutcome> {
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let log_path = out.join("log.jsonl");
    let events_path = out.join("events.jsonl");
    let failpoints = options.failpoints.clone();
    let save = |d: &mut dyn Method| -> Result<()> {
        let at = d.iteration();
        d.save_checkpoint(out, &|point| maybe_pause(&failpoints, point, at))
    };
    if options.resume {
        d.load_checkpoint(out)?;
        truncate_lines(&log_path, d.iteration())?;
    } else {
        write_text_atomic(&out.join("config.yaml"), &d.config().to_yaml()?)?;
        write_text_atomic(&log_path, "")?;
        write_text_atomic(&events_path, "")?;
        // A checkpoint before the first step: divergence recovery always has one to go back to.
        save(d)?;
    }
    for f in &options.failpoints {
        if let Failpoint::Nan(k) = f {
            d.poison_iteration(*k);
        }
    }
    let c = d.config().clone();
    let total = c.total_iterations();
    let bar = if options.quiet {
        indicatif::ProgressBar::hidden()
    } else {
        indicatif::ProgressBar::new(total as u64)
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:30} {pos}/{len} it  {per_sec}  ETA {eta}  {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_position(d.iteration() as u64);
    if d.iteration() == 0 && !d.grid_path(out, 0).exists() {
        bar.set_message("sampling the untrained model");
        d.write_grid(out, 0)?;
    }
    let mut recent: VecDeque<f64> = VecDeque::new();
    let mut last_stage = c.stage_after(d.iteration());
    while d.iteration() < total {
        if options
            .stop
            .as_ref()
            .is_some_and(|s| s.load(Ordering::SeqCst))
        {
            save(d)?;
            bar.abandon_with_message("interrupted");
            write_report(d, out)?;
            return Ok(RunOutcome::Interrupted(d.iteration()));
        }
        let stage = c.stage_after(d.iteration());
        if stage != last_stage {
            recent.clear();
            last_stage = stage;
        }
        if let Some(message) = d.pending() {
            // E.g. the echo stage's boundary: checkpoint, sample the student, checkpoint again,
            // so a crash in between regenerates the same samples from the first checkpoint.
            save(d)?;
            bar.set_message(message);
            d.prepare(out)?;
            save(d)?;
        }
        let s = d.step()?;
        if let Some(reason) = divergence(&s, &recent, &c) {
            let (scale, done) = (d.lr_scale(), d.recoveries());
            if done >= c.recovery.max_events {
                write_report(d, out).ok();
                bail!(
                    "training diverged at iteration {} ({reason}) after {done} recoveries; the last good checkpoint is in {}. Lower the learning rates in {} and continue with --resume",
                    s.iteration,
                    out.join("checkpoint").display(),
                    out.join("config.yaml").display()
                );
            }
            d.load_checkpoint(out)?;
            // The checkpoint predates this event: keep the event's count and lowered rate.
            d.restore_recovery_state(scale, done);
            d.lower_learning_rates(c.recovery.lr_factor);
            truncate_lines(&log_path, d.iteration())?;
            let event = json!({
                "event": "recovered",
                "iteration": s.iteration,
                "reason": reason,
                "restored_iteration": d.iteration(),
                "lr_scale": d.lr_scale(),
                "recoveries": d.recoveries(),
            });
            append_line(&events_path, &event)?;
            bar.println(format!(
                "warning: iteration {}: {reason}; restored the checkpoint of iteration {} and lowered the learning rates to x{} ({} of {} recoveries)",
                s.iteration,
                d.iteration(),
                d.lr_scale(),
                d.recoveries(),
                c.recovery.max_events
            ));
            bar.set_position(d.iteration() as u64);
            recent.clear();
            save(d)?;
            continue;
        }
        append_line(&log_path, &s.to_json(&d.learning_rates()))?;
        recent.push_back(s.total_loss());
        if recent.len() > c.recovery.spike_window {
            recent.pop_front();
        }
        bar.set_message(s.summary());
        bar.inc(1);
        let i = d.iteration();
        if c.samples.every > 0 && i.is_multiple_of(c.samples.every) && i < total {
            d.write_grid(out, i)?;
            write_report(d, out)?;
        }
        if c.save_every > 0 && i.is_multiple_of(c.save_every) && i < total {
            save(d)?;
        }
    }
    bar.finish();
    save(d)?;
    d.save_outputs(out)?;
    d.write_grid(out, total)?;
    d.write_final_grids(out)?;
    write_report(d, out)?;
    Ok(RunOutcome::Finished)
}

/// Writes `RUN/report.html`: loss curves, the grids so far, recovery events and the config.
pub fn write_report(d: &dyn Method, run: &Path) -> Result<PathBuf> {
    let config = d.config();
    let log_path = run.join("log.jsonl");
    let records = if log_path.exists() {
        report::read_log(&log_path)?
    } else {
        Vec::new()
    };
    let events = if run.join("events.jsonl").exists() {
        report::read_log(&run.join("events.jsonl"))?
    } else {
        Vec::new()
    };
    let mut markers = Vec::new();
    let mut start = 0;
    for (stage, n) in config.stages() {
        if start > 0 {
            markers.push(report::Marker {
                iteration: start as f64,
                label: format!("{} starts", stage.name()),
            });
        }
        start += n;
    }
    for e in &events {
        if let Some(i) = e["iteration"].as_f64() {
            markers.push(report::Marker {
                iteration: i,
                label: format!("recovered, lr x{}", e["lr_scale"]),
            });
        }
    }
    let series = [
        "teacher_loss",
        "student_loss",
        "identity",
        "mse",
        "swd",
        "adversarial",
        "discriminator_loss",
        "c_t",
        "grad_norm_teacher",
        "grad_norm_student",
        "loss",
        "prior_loss",
        "grad_norm",
    ];
    let curves = report::loss_curves_svg_with_markers(&records, &series, &markers);
    let rows = grids::rows(config, d.subjects());
    let row_text: String = rows
        .iter()
        .map(|r| format!("{} (seed {})", r.prompt, r.seed))
        .collect::<Vec<_>>()
        .join("; ");
    let steps: Vec<String> = config.samples.steps.iter().map(|s| s.to_string()).collect();
    let mut images = Vec::new();
    let mut grid_files: Vec<PathBuf> = std::fs::read_dir(run.join("samples"))
        .map(|rd| {
            rd.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                        (n.starts_with("student-") || n.starts_with("teacher-"))
                            && n.ends_with(".png")
                            && n != "teacher-final.png"
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    grid_files.sort();
    for path in grid_files {
        let stem = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or_default()
            .to_string();
        let (network, iteration) = stem.split_once('-').unwrap_or(("student", "0"));
        let iteration = iteration.parse::<usize>().unwrap_or(0);
        let caption = if network == "teacher" {
            format!(
                "{} steps, guidance {}. Rows: {row_text}.",
                config.samples.teacher_steps, config.samples.teacher_guidance
            )
        } else {
            format!(
                "Columns: {} steps ({}). Rows: {row_text}.",
                steps.join(" / "),
                config.samples.scheduler
            )
        };
        let mut title = network.to_string();
        title[..1].make_ascii_uppercase();
        images.push(report::ReportImage {
            title: format!("{title} after {iteration} iterations"),
            caption,
            path,
        });
    }
    let teacher = grids::teacher_path(run);
    if teacher.exists() {
        images.push(report::ReportImage {
            title: "Teacher at the end".into(),
            caption: format!(
                "{} steps, guidance {}. Rows: {row_text}.",
                config.samples.teacher_steps, config.samples.teacher_guidance
            ),
            path: teacher,
        });
    }
    let last = records.last();
    let number = |k: &str| {
        last.and_then(|r| r[k].as_f64())
            .map(|v| format!("{v:.5}"))
            .unwrap_or_else(|| "-".into())
    };
    let seconds: f64 = records.iter().filter_map(|r| r["seconds"].as_f64()).sum();
    let (title, models) = d.report_heading();
    let mut summary = vec![
        ("method".into(), config.method.display_name().to_string()),
        ("concepts".into(), d.subjects().join(", ")),
    ];
    summary.extend(models);
    summary.extend([
        (
            "iterations".into(),
            format!("{} of {}", records.len(), config.total_iterations()),
        ),
        (
            "stages".into(),
            config
                .stages()
                .iter()
                .map(|(s, n)| format!("{} {n}", s.name()))
                .collect::<Vec<_>>()
                .join(", "),
        ),
        (
            "last loss".into(),
            [
                ("teacher", "teacher_loss"),
                ("student", "student_loss"),
                ("fine-tuning", "loss"),
            ]
            .iter()
            .filter(|(_, k)| last.is_some_and(|r| r[*k].is_number()))
            .map(|(name, k)| format!("{name} {}", number(k)))
            .collect::<Vec<_>>()
            .join(", "),
        ),
        (
            "training time".into(),
            format!(
                "{seconds:.1} s ({:.3} s/iteration)",
                seconds / records.len().max(1) as f64
            ),
        ),
        ("recoveries".into(), events.len().to_string()),
    ]);
    let page = report::Report {
        title,
        summary,
        curves_svg: curves,
        images,
        events: events.iter().map(|e| e.to_string()).collect(),
        config_yaml: config.to_yaml()?,
    };
    let path = run.join("report.html");
    write_text_atomic(&path, &page.render_html()?)?;
    Ok(path)
}

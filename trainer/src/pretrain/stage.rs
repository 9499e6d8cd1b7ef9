//! The loop every pre-training stage runs: a progress bar, a warm-up then cosine learning rate,
//! one torch seed per step (a resumed stage draws the same noise), `work/<stage>.jsonl`, and a
//! checkpoint (weights, optimiser moments and the step, in one safetensors file renamed into
//! place) every `save_every` steps and on Ctrl-C.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use tch::{nn, Kind, Tensor};

use crate::checkpoint::{load_strict, read_tensors, write_beside};
use crate::fit::optim::AdamW;

/// One trainable stage.
pub trait Stage {
    /// Short name: files in `work/`, the progress bar.
    fn name(&self) -> &'static str;
    /// Every store a checkpoint must hold (trained weights, EMA copies, running buffers).
    fn stores(&self) -> Vec<(&'static str, &nn::VarStore)>;
    /// The optimisers, by name.
    fn optimizers(&mut self) -> Vec<(&'static str, &mut AdamW)>;
    /// One step at `lr_scale` × the base learning rates; returns the losses to log.
    fn step(&mut self, step: usize, lr_scale: f64) -> Result<Vec<(&'static str, f64)>>;
}

/// How a stage's loop ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StageOutcome {
    /// Every step ran.
    Finished,
    /// Ctrl-C: a checkpoint was written, the run can resume.
    Interrupted,
}

/// Where and how stages run.
pub struct StageContext<'a> {
    /// `OUT/work`.
    pub work: &'a Path,
    /// Steps between checkpoints.
    pub save_every: usize,
    /// Set by Ctrl-C.
    pub stop: Option<&'a AtomicBool>,
    /// No progress bar (tests).
    pub quiet: bool,
    /// The run's seed.
    pub seed: u64,
}

/// The learning-rate factor at `step` of `steps`: linear warm-up over the first 5% (at most 200
/// steps), then a cosine down to 10%.
pub fn lr_scale(step: usize, steps: usize) -> f64 {
    let warmup = (steps / 20).clamp(1, 200);
    if step < warmup {
        return (step + 1) as f64 / warmup as f64;
    }
    let progress = (step - warmup) as f64 / (steps - warmup).max(1) as f64;
    0.1 + 0.9 * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
}

/// The checkpoint file of stage `name`.
pub fn checkpoint_path(work: &Path, name: &str) -> PathBuf {
    work.join(format!("{name}.safetensors"))
}

/// The loss log of stage `name`.
pub fn log_path(work: &Path, name: &str) -> PathBuf {
    work.join(format!("{name}.jsonl"))
}

/// Runs `stage` from its checkpoint (if any) to `steps`.
pub fn train(stage: &mut dyn Stage, steps: usize, ctx: &StageContext) -> Result<StageOutcome> {
    let name = stage.name();
    let ckpt = checkpoint_path(ctx.work, name);
    let start = if ckpt.is_file() {
        load(stage, &ckpt)?
    } else {
        0
    };
    let log = log_path(ctx.work, name);
    let seconds_before = truncate_log(&log, start)?;
    let mut log_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .with_context(|| format!("cannot open {}", log.display()))?;
    let bar = if ctx.quiet {
        indicatif::ProgressBar::hidden()
    } else {
        indicatif::ProgressBar::new(steps as u64)
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{prefix:>8} {bar:30} {pos}/{len}  {per_sec}  ETA {eta}  {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_prefix(name);
    bar.set_position(start as u64);
    let started = Instant::now();
    for step in start..steps {
        tch::manual_seed(step_seed(ctx.seed, name, step));
        let losses = stage.step(step, lr_scale(step, steps))?;
        if let Some((what, v)) = losses.iter().find(|(_, v)| !v.is_finite()) {
            bail!(
                "pre-training stage {name} diverged at step {step}: {what} = {v}; lower its lr in the config and resume (--resume) from the last checkpoint"
            );
        }
        let mut record = serde_json::Map::new();
        record.insert("iteration".into(), step.into());
        record.insert(
            "seconds".into(),
            (seconds_before + started.elapsed().as_secs_f64()).into(),
        );
        for (k, v) in &losses {
            record.insert((*k).into(), (*v).into());
        }
        writeln!(log_file, "{}", serde_json::Value::Object(record))
            .with_context(|| format!("cannot write {}", log.display()))?;
        bar.set_message(
            losses
                .iter()
                .map(|(k, v)| format!("{k} {v:.4}"))
                .collect::<Vec<_>>()
                .join("  "),
        );
        bar.inc(1);
        let stopping = ctx.stop.is_some_and(|s| s.load(Ordering::SeqCst));
        if stopping || (step + 1) % ctx.save_every.max(1) == 0 {
            save(stage, &ckpt, step + 1)?;
            if !ctx.quiet && bar.is_hidden() {
                // No terminal (a log file): one line per checkpoint instead of the bar.
                eprintln!(
                    "{name} {}/{steps} {:.0} s: {}",
                    step + 1,
                    seconds_before + started.elapsed().as_secs_f64(),
                    bar.message()
                );
            }
        }
        if stopping && step + 1 < steps {
            bar.abandon_with_message(format!("interrupted; checkpoint at step {}", step + 1));
            return Ok(StageOutcome::Interrupted);
        }
    }
    bar.finish_with_message(format!("done in {:.0} s", started.elapsed().as_secs_f64()));
    Ok(StageOutcome::Finished)
}

/// The torch seed of one step: the run's seed, the stage and the step, mixed.
fn step_seed(seed: u64, name: &str, step: usize) -> i64 {
    let mut h = seed ^ 0x9E37_79B9_7F4A_7C15;
    for b in name.bytes().chain((step as u64).to_le_bytes()) {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01B3);
    }
    (h >> 1) as i64
}

fn save(stage: &mut dyn Stage, path: &Path, step: usize) -> Result<()> {
    let mut tensors: Vec<(String, Tensor)> = Vec::new();
    for (store, vs) in stage.stores() {
        for (name, t) in vs.variables() {
            tensors.push((format!("{store}/{name}"), t));
        }
    }
    for (name, opt) in stage.optimizers() {
        let (state, steps) = opt.state(&format!("optim.{name}"));
        tensors.extend(state);
        tensors.push((format!("meta.optim.{name}"), Tensor::from(steps)));
    }
    tensors.push(("meta.step".into(), Tensor::from(step as i64)));
    write_beside(path, |tmp| {
        Tensor::write_safetensors(&tensors, tmp)
            .with_context(|| format!("cannot write {}", tmp.display()))
    })
}

fn load(stage: &mut dyn Stage, path: &Path) -> Result<usize> {
    let tensors = read_tensors(&[path.to_path_buf()])?;
    let scalar = |key: &str| -> Result<i64> {
        Ok(tensors
            .get(key)
            .with_context(|| {
                format!(
                    "{} has no {key}: not a pre-training checkpoint",
                    path.display()
                )
            })?
            .to_kind(Kind::Int64)
            .int64_value(&[]))
    };
    let step = scalar("meta.step")?;
    for (store, vs) in stage.stores() {
        let prefix = format!("{store}/");
        let part: HashMap<String, Tensor> = tensors
            .iter()
            .filter_map(|(k, t)| {
                k.strip_prefix(&prefix)
                    .map(|n| (n.to_string(), t.shallow_clone()))
            })
            .collect();
        load_strict(vs, &part, &format!("{} ({store})", path.display()))?;
    }
    let mut steps = Vec::new();
    for (name, _) in stage.optimizers() {
        steps.push(scalar(&format!("meta.optim.{name}"))?);
    }
    for ((name, opt), steps) in stage.optimizers().into_iter().zip(steps) {
        opt.load_state(&format!("optim.{name}"), &tensors, steps)?;
    }
    Ok(step as usize)
}

/// Keeps the log lines of steps before `start` (a resumed stage rewrites the rest); returns the
/// seconds the kept steps took.
fn truncate_log(path: &Path, start: usize) -> Result<f64> {
    if !path.is_file() {
        return Ok(0.0);
    }
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let kept: String = text
        .lines()
        .filter(|line| {
            serde_json::from_str::<serde_json::Value>(line)
                .ok()
                .and_then(|v| v["iteration"].as_u64())
                .is_some_and(|s| (s as usize) < start)
        })
        .map(|l| format!("{l}\n"))
        .collect();
    crate::checkpoint::write_text_atomic(path, &kept)?;
    Ok(stage_seconds(path))
}

/// The seconds a stage's logged steps took, from its log (0 without one).
pub fn stage_seconds(log: &Path) -> f64 {
    std::fs::read_to_string(log)
        .ok()
        .and_then(|text| {
            let last = text.lines().last()?.to_string();
            serde_json::from_str::<serde_json::Value>(&last).ok()?["seconds"].as_f64()
        })
        .unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_learning_rate_warms_up_then_decays_to_a_tenth() {
        assert!((lr_scale(0, 1000) - 1.0 / 50.0).abs() < 1e-12);
        assert!((lr_scale(49, 1000) - 1.0).abs() < 1e-12);
        assert!((lr_scale(50, 1000) - 1.0).abs() < 1e-12);
        assert!(lr_scale(500, 1000) < 0.7 && lr_scale(500, 1000) > 0.4);
        assert!((lr_scale(1000, 1000) - 0.1).abs() < 1e-9);
        assert!(lr_scale(0, 1) > 0.0);
    }
}

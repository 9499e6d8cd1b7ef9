//! Sample grids: fixed prompts and seeds drawn by the student at 1/2/4 steps (one column per
//! step count, one row per prompt and seed) during and after training, and by the teacher at
//! the end, so progress can be seen rather than read. Written to `RUN/samples/`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use image::RgbImage;
use runtime::scheduler::SchedulerKind;
use runtime::Scheduler;

use super::config::FitConfig;
use super::distill::Distiller;
use super::report::compose_grid;
use crate::sampling::{to_rgb_image, write_png, Networks, NoiseSource, SampleRequest};

/// Padding between tiles in pixels.
const PAD: u32 = 4;

/// One row of a grid.
#[derive(Debug, Clone, PartialEq)]
pub struct GridRow {
    /// The prompt, with the concept's "<token> <class>" filled in.
    pub prompt: String,
    /// The noise seed.
    pub seed: u64,
}

/// The grid's rows: every concept × prompt × seed, in that order.
pub fn rows(config: &FitConfig, subjects: &[String]) -> Vec<GridRow> {
    let mut rows = Vec::new();
    for subject in subjects {
        for p in &config.samples.prompts {
            for &seed in &config.samples.seeds {
                rows.push(GridRow {
                    prompt: p.replace("{}", subject),
                    seed,
                });
            }
        }
    }
    rows
}

/// Where the grid of `network` (`student` or `teacher`) after `iteration` goes.
pub fn grid_path(run: &Path, network: &str, iteration: usize) -> PathBuf {
    run.join("samples")
        .join(format!("{network}-{iteration:06}.png"))
}

/// Where the student's grid after `iteration` goes.
pub fn student_path(run: &Path, iteration: usize) -> PathBuf {
    grid_path(run, "student", iteration)
}

/// Where the teacher's final grid goes.
pub fn teacher_path(run: &Path) -> PathBuf {
    run.join("samples").join("teacher-final.png")
}

/// The student's sampler for grids (`samples.scheduler`).
pub fn student_kind(config: &FitConfig) -> SchedulerKind {
    match config.samples.scheduler.as_str() {
        "euler" => SchedulerKind::Euler,
        _ => SchedulerKind::EulerAncestral,
    }
}

/// A one-step model's grid: one column per `samples.steps` count with the student's sampler
/// (guidance 0), one row per prompt and seed; `scheduler(kind, steps)` builds the sampler.
pub fn one_step_grid(
    nets: &Networks<'_>,
    scheduler: &dyn Fn(SchedulerKind, usize) -> Result<Scheduler>,
    config: &FitConfig,
    subjects: &[String],
) -> Result<RgbImage> {
    let kind = student_kind(config);
    let mut tiles = Vec::new();
    for row in rows(config, subjects) {
        for &steps in &config.samples.steps {
            let scheduler = scheduler(kind, steps)?;
            let req = SampleRequest {
                prompt: row.prompt.clone(),
                negative_prompt: String::new(),
                steps,
                guidance: 0.0,
                scheduler: Some(kind),
                height: config.resolution,
                width: config.resolution,
            };
            let out = nets.sample(&scheduler, &req, &NoiseSource::Seed(row.seed))?;
            tiles.push(to_rgb_image(&out.images.get(0))?);
        }
    }
    compose_grid(&tiles, config.samples.steps.len(), PAD)
}

/// A multi-step model's grid: one column, its own `scheduler` (set to `samples.teacher_steps`)
/// with `samples.teacher_guidance`, one row per prompt and seed.
pub fn multi_step_grid(
    nets: &Networks<'_>,
    scheduler: &Scheduler,
    config: &FitConfig,
    subjects: &[String],
) -> Result<RgbImage> {
    let mut tiles = Vec::new();
    for row in rows(config, subjects) {
        let req = SampleRequest {
            prompt: row.prompt.clone(),
            negative_prompt: String::new(),
            steps: config.samples.teacher_steps,
            guidance: config.samples.teacher_guidance,
            scheduler: None,
            height: config.resolution,
            width: config.resolution,
        };
        let out = nets.sample(scheduler, &req, &NoiseSource::Seed(row.seed))?;
        tiles.push(to_rgb_image(&out.images.get(0))?);
    }
    compose_grid(&tiles, 1, PAD)
}

/// Writes a grid image to `path` (creating `samples/`).
pub fn write_grid(grid: &RgbImage, path: &Path) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    write_png(grid, path)
}

/// Draws the student's grid (columns: `samples.steps`) and writes it for `iteration`.
pub fn write_student_grid(d: &Distiller, run: &Path, iteration: usize) -> Result<PathBuf> {
    let grid = one_step_grid(
        &d.student_networks(),
        &|kind, steps| d.student_scheduler(Some(kind), steps),
        d.config(),
        d.subjects(),
    )?;
    let path = student_path(run, iteration);
    write_grid(&grid, &path)?;
    Ok(path)
}

/// Draws the teacher's grid (one column, its own scheduler with guidance) and writes it, if
/// the run has a teacher and `samples.teacher_steps` is not 0.
pub fn write_teacher_grid(d: &Distiller, run: &Path) -> Result<Option<PathBuf>> {
    let steps = d.config().samples.teacher_steps;
    let (Some(nets), true) = (d.teacher_networks(), steps > 0) else {
        return Ok(None);
    };
    let scheduler = d.teacher_scheduler(steps)?.context("no teacher")?;
    let grid = multi_step_grid(&nets, &scheduler, d.config(), d.subjects())?;
    let path = teacher_path(run);
    write_grid(&grid, &path)?;
    Ok(Some(path))
}

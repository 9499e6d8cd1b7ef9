//! `trainer eval`: the DreamBench protocol on one trained run and one subject. For each step
//! count, every prompt of the subject's list (object or live) with each seed is generated
//! (the student with its one-step sampler, or the teacher with DDIM and guidance), kept as PNG,
//! and scored against the subject's reference photos; the per-image scores go to
//! `scores.jsonl`/`scores.csv` and the summaries to the tables of [`super::table`].
//! Images already on disk are reused, so an interrupted evaluation continues where it stopped.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use image::RgbImage;
use runtime::scheduler::SchedulerKind;
use serde::{Deserialize, Serialize};

use super::dreambench::{DreamBench, EvalPrompt, Subject, LIVE_CLASSES};
use super::metrics::{ImageScore, MetricTowers};
use crate::checkpoint::LoadOptions;
use crate::fit::config::FitConfig;
use crate::fit::data::load_photos;
use crate::fit::run_dir::{load_trained, method_label, run_config, trained_network, Trained};
use crate::sampling::{to_rgb_image, write_png, NoiseSource, Pipeline, SampleRequest};

/// What to evaluate and how.
#[derive(Debug, Clone)]
pub struct EvalSettings {
    /// The DreamBench folder (prompt lists, and the references of its subjects).
    pub dataset: PathBuf,
    /// The DreamBench subject (default: the run's image folder's name).
    pub subject: Option<String>,
    /// Reference photos of a subject outside DreamBench (scores a user's own concept).
    pub references: Option<PathBuf>,
    /// The row label in the tables (default: the method's name).
    pub label: Option<String>,
    /// Evaluate the run's multi-step teacher instead of its student (a baseline's run has one
    /// model and is evaluated on it either way).
    pub teacher: bool,
    /// Step counts, one table row each (empty: 1, 2 and 4 for the one-step student, 25 for a
    /// multi-step teacher).
    pub steps: Vec<usize>,
    /// Seeds per prompt (the protocol's 4).
    pub seeds: Vec<u64>,
    /// Use only the first this many prompts (all 25 by default).
    pub prompts: Option<usize>,
    /// The sampler (default: Euler ancestral for the student, the model's own for the teacher).
    pub scheduler: Option<SchedulerKind>,
    /// Guidance scale (default: 0 for the student, 7.5 for the teacher).
    pub guidance: Option<f64>,
    /// Image side (default: the run's training resolution).
    pub resolution: Option<i64>,
    /// A transformers CLIPModel folder.
    pub clip: PathBuf,
    /// A DINOv1 or DINOv2 folder.
    pub dino: PathBuf,
    /// DINO input side (default: its config's).
    pub dino_size: Option<i64>,
    /// Hide the progress bar.
    pub quiet: bool,
}

/// One generated image and its scores (a line of `scores.jsonl`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScoreRecord {
    /// The table row's label (method).
    pub label: String,
    /// The subject.
    pub subject: String,
    /// Sampling steps.
    pub steps: usize,
    /// Index of the prompt in the subject's list.
    pub prompt_index: usize,
    /// The seed.
    pub seed: u64,
    /// The prompt the model saw.
    pub prompt: String,
    /// The prompt CLIP-T used (no modifier token).
    pub clip_prompt: String,
    /// The scores.
    #[serde(flatten)]
    pub score: ImageScore,
    /// The image, relative to the evaluation folder.
    pub image: String,
}

/// What one evaluation produced.
pub struct EvalOutcome {
    /// Every image's record.
    pub records: Vec<ScoreRecord>,
    /// Images generated now (the rest were on disk already).
    pub generated: usize,
    /// Seconds spent generating.
    pub generate_seconds: f64,
    /// Seconds spent scoring (towers and references included).
    pub score_seconds: f64,
    /// The network evaluated: "student" or "teacher".
    pub network: &'static str,
    /// The step counts evaluated.
    pub steps: Vec<usize>,
}

/// The subject to evaluate, its modifier token and its references.
fn resolve_subject(
    bench: &DreamBench,
    config: &FitConfig,
    settings: &EvalSettings,
) -> Result<(Subject, String, Vec<RgbImage>)> {
    if let Some(refs) = &settings.references {
        let concept = config.concepts.first().context("the run has no concept")?;
        let name = refs
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "subject".into());
        let subject = Subject {
            name: settings.subject.clone().unwrap_or(name),
            live: LIVE_CLASSES.contains(&concept.class.as_str()),
            class: concept.class.clone(),
        };
        let photos = load_photos(refs)?;
        return Ok((
            subject,
            concept.token.clone(),
            photos.into_iter().map(|p| p.image).collect(),
        ));
    }
    let folder_name = |c: &crate::fit::config::Concept| {
        c.images
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
    };
    let (subject, token) = match &settings.subject {
        Some(name) => {
            let subject = bench.subject(name)?.clone();
            let concept = config
                .concepts
                .iter()
                .find(|c| folder_name(c).as_deref() == Some(name))
                .or_else(|| config.concepts.first())
                .context("the run has no concept")?;
            (subject, concept.token.clone())
        }
        None => {
            let found = config.concepts.iter().find_map(|c| {
                let name = folder_name(c)?;
                bench
                    .subject(&name)
                    .ok()
                    .map(|s| (s.clone(), c.token.clone()))
            });
            found.with_context(|| {
                "the run's image folder is not a DreamBench subject: give --subject NAME, or --references DIR for your own concept"
            })?
        }
    };
    let photos = bench.references(&subject)?;
    Ok((
        subject,
        token,
        photos.into_iter().map(|p| p.image).collect(),
    ))
}

/// The image file of one (steps, prompt, seed), relative to the evaluation folder.
fn image_path(subject: &str, steps: usize, prompt: usize, seed: u64) -> String {
    format!("images/{subject}/{steps}-step/p{prompt:02}-s{seed}.png")
}

/// Generates (or reuses) one image.
fn image_for(
    pipeline: &Pipeline,
    request: &SampleRequest,
    seed: u64,
    path: &Path,
) -> Result<(RgbImage, bool)> {
    if path.is_file() {
        // Written atomically, so a file that exists is complete; a damaged one is redrawn.
        if let Ok(img) = image::open(path) {
            return Ok((img.to_rgb8(), false));
        }
    }
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    let out = pipeline.sample(request, &NoiseSource::Seed(seed))?;
    let img = to_rgb_image(&out.images.get(0))?;
    write_png(&img, path)?;
    Ok((img, true))
}

/// Runs the protocol for `run` into `out` (images, scores); the tables are written by the
/// caller from the returned records.
pub fn evaluate(
    run: &Path,
    settings: &EvalSettings,
    out: &Path,
    opts: LoadOptions,
) -> Result<EvalOutcome> {
    if settings.steps.contains(&0) {
        bail!("--steps must list step counts of at least 1");
    }
    if settings.seeds.is_empty() {
        bail!("--seeds must list at least one seed");
    }
    let config = run_config(run)?;
    let bench = DreamBench::open(&settings.dataset)?;
    let (subject, token, reference_images) = resolve_subject(&bench, &config, settings)?;
    let mut prompts: Vec<EvalPrompt> = bench.prompts(&subject, &token);
    if let Some(n) = settings.prompts {
        if n == 0 {
            bail!("--prompts must be at least 1");
        }
        prompts.truncate(n);
    }
    let which = trained_network(run, &config, settings.teacher)?;
    let multi_step = which == Trained::Teacher;
    let label = settings
        .label
        .clone()
        .unwrap_or_else(|| method_label(&config, which));
    let steps_list = if settings.steps.is_empty() {
        if multi_step {
            vec![25]
        } else {
            vec![1, 2, 4]
        }
    } else {
        settings.steps.clone()
    };
    let towers = MetricTowers::load(&settings.clip, &settings.dino, settings.dino_size, opts)?;
    let pipeline = load_trained(run, which, opts)?;
    let side = settings.resolution.unwrap_or(config.resolution);
    let (default_kind, default_guidance) = if multi_step {
        (None, config.samples.teacher_guidance)
    } else {
        (Some(SchedulerKind::EulerAncestral), 0.0)
    };

    let total = steps_list.len() * prompts.len() * settings.seeds.len();
    let bar = if settings.quiet {
        indicatif::ProgressBar::hidden()
    } else {
        indicatif::ProgressBar::new(total as u64)
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:30} {pos}/{len} images  {per_sec}  ETA {eta}  {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_message(format!("{} on {}", label, subject.name));

    let score_start = std::time::Instant::now();
    let refs = towers.references(&reference_images)?;
    let mut score_seconds = score_start.elapsed().as_secs_f64();
    let (mut generated, mut generate_seconds) = (0, 0.0);
    let mut records = Vec::new();
    for &steps in &steps_list {
        let mut images = Vec::new();
        let mut meta = Vec::new();
        for (pi, prompt) in prompts.iter().enumerate() {
            for &seed in &settings.seeds {
                let request = SampleRequest {
                    prompt: prompt.text.clone(),
                    negative_prompt: String::new(),
                    steps,
                    guidance: settings.guidance.unwrap_or(default_guidance),
                    scheduler: settings.scheduler.or(default_kind),
                    height: side,
                    width: side,
                };
                let rel = image_path(&subject.name, steps, pi, seed);
                let start = std::time::Instant::now();
                let (img, new) = image_for(&pipeline, &request, seed, &out.join(&rel))?;
                if new {
                    generated += 1;
                    generate_seconds += start.elapsed().as_secs_f64();
                }
                images.push(img);
                meta.push((pi, seed, prompt.clone(), rel));
                bar.inc(1);
            }
        }
        let start = std::time::Instant::now();
        let texts: Vec<String> = meta.iter().map(|m| m.2.clip_text.clone()).collect();
        let scores = towers.score(&images, &texts, &refs)?;
        score_seconds += start.elapsed().as_secs_f64();
        for ((pi, seed, prompt, rel), score) in meta.into_iter().zip(scores) {
            records.push(ScoreRecord {
                label: label.clone(),
                subject: subject.name.clone(),
                steps,
                prompt_index: pi,
                seed,
                prompt: prompt.text,
                clip_prompt: prompt.clip_text,
                score,
                image: rel,
            });
        }
    }
    bar.finish_and_clear();
    Ok(EvalOutcome {
        records,
        generated,
        generate_seconds,
        score_seconds,
        network: if multi_step { "teacher" } else { "student" },
        steps: steps_list,
    })
}

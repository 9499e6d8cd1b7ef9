//! The pre-training quality gates and the report:
//! - the autoencoder's reconstruction error (mean absolute error in 0–255 levels, PSNR) on
//!   scenes outside the training pool;
//! - the toy CLIP's own top-1 retrieval (image → caption) on those scenes;
//! - caption accuracy: for seeded "a {colour} {shape} on a … background" prompts, the toy CLIP
//!   picks the colour among the 12 and the shape among the 11 for the teacher's 25-step
//!   guided samples, the student's one-step samples and the true renders (its ceiling);
//! - sample grids of truth, teacher and student on held-in captions, reconstructions, the
//!   stages' loss curves; all in `report/report.html` and `manifest.yaml`.

use std::path::Path;

use anyhow::{Context, Result};
use image::RgbImage;
use serde::Serialize;
use tch::{Device, Kind, Tensor};

use super::contrastive::unit;
use super::stage::{log_path, stage_seconds};
use super::PretrainConfig;
use crate::checkpoint::component::{load_vae, LoadOptions};
use crate::checkpoint::write_text_atomic;
use crate::fit::report::{compose_grid, loss_curves_svg, read_log, Report, ReportImage};
use crate::models::clip_text::ClipTextModelWithProjection;
use crate::models::clip_vision::ClipVisionModelWithProjection;
use crate::sampling::{to_rgb_image, token_ids, write_png, NoiseSource, Pipeline, SampleRequest};
use crate::towers::{clip_input, load_clip_model};
use crate::toy::rng::ToyRng;
use crate::toy::vocab::{article, Colour, Shape};
use crate::toy::{parse, ToyWorld};
use crate::vision::prepare;

/// Key stream of the gate prompts.
const PROMPTS: u64 = 40;
/// Fresh gate scenes start this far past the pool, so none was trained on.
const FRESH: u64 = 1 << 40;

/// Accuracy of the toy CLIP's colour and shape calls on one source of images.
#[derive(Debug, Clone, Serialize)]
pub struct CaptionAccuracy {
    /// Share of images whose colour the CLIP names right (chance 1/12).
    pub colour: f64,
    /// Share whose shape it names right (chance 1/11).
    pub shape: f64,
    /// Share with both right (chance 1/132).
    pub both: f64,
}

/// Every measured gate.
#[derive(Debug, Clone, Serialize)]
pub struct Gates {
    /// Autoencoder mean absolute error, 0–255 levels.
    pub vae_mae: f64,
    /// Autoencoder PSNR in dB.
    pub vae_psnr: f64,
    /// Toy CLIP image → caption top-1 among the gate scenes (identical captions count).
    pub clip_retrieval_top1: f64,
    /// Scenes in that retrieval (chance is about 1 / this).
    pub clip_retrieval_pool: usize,
    /// Prompts behind the caption accuracies.
    pub prompts: usize,
    /// On true renders of the prompts: the CLIP's ceiling.
    pub renders: CaptionAccuracy,
    /// On the teacher's samples.
    pub teacher: CaptionAccuracy,
    /// On the student's one-step samples.
    pub student: CaptionAccuracy,
    /// Chance for colour, shape, both.
    pub chance: [f64; 3],
}

/// The toy CLIP, loaded.
struct Clip {
    vision: ClipVisionModelWithProjection,
    text: ClipTextModelWithProjection,
    tokenizer: runtime::ClipTokenizer,
    device: Device,
}

impl Clip {
    fn images(&self, images: &Tensor) -> Result<Tensor> {
        let input = clip_input(self.vision.image_size(), true);
        tch::no_grad(|| {
            Ok(unit(
                &self
                    .vision
                    .forward(&prepare(&images.to_device(self.device), input))?
                    .image_embeds,
            ))
        })
    }

    fn texts(&self, texts: &[String]) -> Tensor {
        let ids = token_ids(&self.tokenizer, texts, self.device);
        tch::no_grad(|| unit(&self.text.text_embeds(&ids)))
    }
}

/// One gate prompt: its colour, shape and background word.
struct GatePrompt {
    colour: Colour,
    shape: Shape,
    background: Colour,
}

impl GatePrompt {
    fn text(&self, colour: Colour, shape: Shape) -> String {
        format!(
            "{} {} {} on a {} background",
            article(colour.word()),
            colour.word(),
            shape.word(),
            self.background.word()
        )
    }

    fn prompt(&self) -> String {
        self.text(self.colour, self.shape)
    }
}

fn gate_prompts(seed: u64, n: usize) -> Vec<GatePrompt> {
    (0..n)
        .map(|k| {
            let mut rng = ToyRng::keyed(seed, PROMPTS, k as u64);
            let colour = rng.pick(Colour::ALL);
            let shape = rng.pick(Shape::ALL);
            let background = if colour == Colour::Gray {
                Colour::White
            } else {
                Colour::Gray
            };
            GatePrompt {
                colour,
                shape,
                background,
            }
        })
        .collect()
}

/// The CLIP's colour and shape calls on `images` (one per prompt).
fn caption_accuracy(
    clip: &Clip,
    prompts: &[GatePrompt],
    images: &Tensor,
) -> Result<CaptionAccuracy> {
    let embeds = clip.images(images)?;
    let (mut colour, mut shape, mut both) = (0usize, 0usize, 0usize);
    for (k, p) in prompts.iter().enumerate() {
        let e = embeds.get(k as i64);
        let best = |texts: Vec<String>| -> i64 {
            clip.texts(&texts).mv(&e).argmax(0, false).int64_value(&[])
        };
        let c =
            Colour::ALL[best(Colour::ALL.iter().map(|&c| p.text(c, p.shape)).collect()) as usize];
        let s =
            Shape::ALL[best(Shape::ALL.iter().map(|&s| p.text(p.colour, s)).collect()) as usize];
        colour += usize::from(c == p.colour);
        shape += usize::from(s == p.shape);
        both += usize::from(c == p.colour && s == p.shape);
    }
    let n = prompts.len().max(1) as f64;
    Ok(CaptionAccuracy {
        colour: colour as f64 / n,
        shape: shape as f64 / n,
        both: both as f64 / n,
    })
}

/// One image per prompt (prompt k from seed k), (n, 3, s, s) in [-1, 1] on the CPU.
fn generate(
    pipeline: &Pipeline,
    prompts: &[String],
    steps: usize,
    guidance: f64,
    side: i64,
) -> Result<Tensor> {
    let mut images = Vec::new();
    for (k, prompt) in prompts.iter().enumerate() {
        let req = SampleRequest {
            prompt: prompt.clone(),
            negative_prompt: String::new(),
            steps,
            guidance,
            scheduler: None,
            height: side,
            width: side,
        };
        let out = pipeline.sample(&req, &NoiseSource::Seed(k as u64))?;
        images.push(out.images.clamp(-1.0, 1.0).to_device(Device::Cpu));
    }
    Ok(Tensor::cat(&images, 0))
}

fn tiles(images: &Tensor) -> Result<Vec<RgbImage>> {
    (0..images.size()[0])
        .map(|i| to_rgb_image(&images.get(i)))
        .collect()
}

/// Measures the gates on the finished models in `out` and writes `report/` and
/// `manifest.yaml`.
pub fn write_report(
    out: &Path,
    config: &PretrainConfig,
    world: &ToyWorld,
    opts: LoadOptions,
    quiet: bool,
) -> Result<Gates> {
    let r = &config.report;
    let side = i64::from(world.config().resolution);
    let report_dir = out.join("report");
    std::fs::create_dir_all(&report_dir)
        .with_context(|| format!("cannot create {}", report_dir.display()))?;

    // The autoencoder on fresh scenes.
    let fresh = world.batch(FRESH..FRESH + r.gate_scenes as u64, 0.0);
    let vae = load_vae(&out.join("teacher/vae"), opts)?;
    let recon = tch::no_grad(|| {
        let x = fresh.images.to_device(opts.device);
        vae.model
            .decode(&vae.model.encode(&x).mean)
            .clamp(-1.0, 1.0)
            .to_device(Device::Cpu)
    });
    let err = (&recon - &fresh.images) * 127.5;
    let vae_mae = err.abs().mean(Kind::Float).double_value(&[]);
    let mse = err.square().mean(Kind::Float).double_value(&[]);
    let vae_psnr = 10.0 * (255.0f64.powi(2) / mse.max(1e-12)).log10();
    let shown = 8.min(r.gate_scenes) as i64;
    let mut recon_tiles = tiles(&fresh.images.narrow(0, 0, shown))?;
    recon_tiles.extend(tiles(&recon.narrow(0, 0, shown))?);
    write_png(
        &compose_grid(&recon_tiles, shown as usize, 2)?,
        &report_dir.join("vae.png"),
    )?;

    // The toy CLIP's own retrieval.
    let (vision, text, tokenizer) = load_clip_model(&out.join("towers/clip"), opts)?;
    let clip = Clip {
        vision: vision.model,
        text: text.model,
        tokenizer,
        device: opts.device,
    };
    let image_embeds = clip.images(&fresh.images)?;
    let text_embeds = clip.texts(&fresh.captions);
    let picks = image_embeds.mm(&text_embeds.tr()).argmax(1, false);
    let picks: Vec<i64> = Vec::try_from(&picks.to_device(Device::Cpu))?;
    let hits = picks
        .iter()
        .enumerate()
        .filter(|(i, &j)| fresh.captions[*i] == fresh.captions[j as usize])
        .count();
    let clip_retrieval_top1 = hits as f64 / fresh.captions.len().max(1) as f64;

    // Caption accuracy of truth, teacher and student.
    let prompts = gate_prompts(world.config().seed, r.gate_prompts);
    let texts: Vec<String> = prompts.iter().map(GatePrompt::prompt).collect();
    let mut truth = Vec::new();
    for t in &texts {
        let scene = parse(t)?.to_scene()?;
        let image = world.render(&scene);
        truth.push(Tensor::from_slice(&runtime::image_tensor::rgb8_to_chw(
            image.as_raw(),
            side as usize,
            side as usize,
        )));
    }
    let truth = Tensor::stack(&truth, 0).view([-1, 3, side, side]);
    if !quiet {
        eprintln!(
            "  sampling {} gate prompts with the teacher and the student",
            texts.len()
        );
    }
    let teacher = Pipeline::load(&out.join("teacher"), opts)?;
    let student = Pipeline::load(&out.join("student"), opts)?;
    let teacher_images = generate(&teacher, &texts, r.teacher_steps, r.guidance, side)?;
    let student_images = generate(&student, &texts, 1, 0.0, side)?;
    let gates = Gates {
        vae_mae,
        vae_psnr,
        clip_retrieval_top1,
        clip_retrieval_pool: fresh.captions.len(),
        prompts: prompts.len(),
        renders: caption_accuracy(&clip, &prompts, &truth)?,
        teacher: caption_accuracy(&clip, &prompts, &teacher_images)?,
        student: caption_accuracy(&clip, &prompts, &student_images)?,
        chance: [1.0 / 12.0, 1.0 / 11.0, 1.0 / 132.0],
    };

    // Sample grids on held-in captions (the pool's first items).
    let held_in: Vec<String> = (0..)
        .map(|i| world.sample(i).caption)
        .take(r.grid_captions)
        .collect();
    let held_truth = world.batch(0..r.grid_captions as u64, 0.0).images;
    let columns = 8.min(r.grid_captions.max(1));
    let grids = [
        ("truth.png", "The scenes", held_truth),
        (
            "teacher.png",
            "Teacher, 25 DDIM steps with guidance",
            generate(&teacher, &held_in, r.teacher_steps, r.guidance, side)?,
        ),
        (
            "student.png",
            "Student, one step",
            generate(&student, &held_in, 1, 0.0, side)?,
        ),
    ];
    let mut images = Vec::new();
    let numbered: String = held_in
        .iter()
        .enumerate()
        .map(|(i, c)| format!("{}. {c}\n", i + 1))
        .collect();
    for (file, title, batch) in &grids {
        let path = report_dir.join(file);
        write_png(&compose_grid(&tiles(batch)?, columns, 2)?, &path)?;
        images.push(ReportImage {
            title: (*title).into(),
            caption: format!("Held-in captions, left to right, top to bottom:\n{numbered}"),
            path,
        });
    }
    images.push(ReportImage {
        title: "Autoencoder".into(),
        caption: format!(
            "Fresh scenes (top) and their reconstructions (bottom): MAE {vae_mae:.2} levels, PSNR {vae_psnr:.1} dB"
        ),
        path: report_dir.join("vae.png"),
    });

    // Loss curves, one panel row per stage.
    let work = out.join("work");
    let mut curves = String::new();
    let stages = [
        ("vae", vec!["l1", "kl"]),
        ("clip", vec!["loss", "top1"]),
        ("dino", vec!["loss", "entropy"]),
        ("teacher", vec!["eps_mse"]),
        ("student", vec!["distill", "adv", "disc"]),
    ];
    let mut stage_rows = Vec::new();
    for (name, series) in &stages {
        let log = log_path(&work, name);
        let records = if log.is_file() {
            read_log(&log)?
        } else {
            Vec::new()
        };
        curves.push_str(&format!("<h3>{name}</h3>"));
        curves.push_str(&loss_curves_svg(&records, series));
        stage_rows.push(serde_json::json!({
            "stage": name,
            "steps": records.len(),
            "seconds": stage_seconds(&log),
        }));
    }
    let total: f64 = stage_rows
        .iter()
        .filter_map(|r| r["seconds"].as_f64())
        .sum();
    let pct = |x: f64| format!("{:.1}%", 100.0 * x);
    let acc = |a: &CaptionAccuracy| {
        format!(
            "colour {} · shape {} · both {}",
            pct(a.colour),
            pct(a.shape),
            pct(a.both)
        )
    };
    let mut summary = vec![
        (
            "training time".into(),
            format!("{:.1} min (stages only)", total / 60.0),
        ),
        (
            "autoencoder".into(),
            format!("MAE {vae_mae:.2} levels, PSNR {vae_psnr:.1} dB"),
        ),
        (
            "CLIP retrieval".into(),
            format!(
                "top-1 {} among {} fresh scenes",
                pct(clip_retrieval_top1),
                fresh.captions.len()
            ),
        ),
        ("caption accuracy: renders".into(), acc(&gates.renders)),
        ("caption accuracy: teacher".into(), acc(&gates.teacher)),
        ("caption accuracy: student".into(), acc(&gates.student)),
        (
            "chance".into(),
            "colour 8.3% · shape 9.1% · both 0.8%".into(),
        ),
    ];
    for row in &stage_rows {
        summary.push((
            format!("stage {}", row["stage"].as_str().unwrap_or("?")),
            format!(
                "{} steps, {:.1} min",
                row["steps"],
                row["seconds"].as_f64().unwrap_or(0.0) / 60.0
            ),
        ));
    }
    let report = Report {
        title: "Toy world pre-training".into(),
        summary,
        curves_svg: curves,
        images,
        events: Vec::new(),
        config_yaml: serde_yaml::to_string(config)?,
    };
    write_text_atomic(&report_dir.join("report.html"), &report.render_html()?)?;

    let manifest = serde_json::json!({
        "kind": "echodistill toy world pre-training",
        "world": world.config(),
        "device": format!("{:?}", opts.device),
        "stages": stage_rows,
        "training_seconds": total,
        "gates": gates,
        "pipelines": {
            "teacher": "teacher/ (SD 2.1 layout: DDIM, epsilon)",
            "student": "student/ (SD-Turbo layout: Euler trailing, epsilon, one step)",
        },
        "towers": {
            "clip": "towers/clip (transformers CLIPModel, with tokenizer files)",
            "dino": "towers/dino-v1 (transformers ViTModel)",
        },
    });
    let yaml = serde_yaml::to_string(&manifest)?;
    write_text_atomic(&out.join("manifest.yaml"), &yaml)?;
    Ok(gates)
}

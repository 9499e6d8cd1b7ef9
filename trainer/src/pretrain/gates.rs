//! The pre-training quality gates and the report:
//! - the autoencoder's reconstruction error (mean absolute error in 0–255 levels, PSNR) on
//!   scenes outside the training pool;
//! - the toy CLIP's own top-1 retrieval (image → caption) on those scenes;
//! - subject separation: whether the metric towers (the toy CLIP for CLIP-I, the toy DINO)
//!   tell the 30 held-out subjects apart at all: leave-one-out nearest neighbour among their
//!   reference renders, and the mean cosine of two references of one subject against two of
//!   different subjects (the range CLIP-I and DINO scores can move in);
//! - caption accuracy: for seeded "a {colour} {shape} on a … background" prompts, the toy CLIP
//!   picks the colour among the 12 and the shape among the 11 for the teacher's 25-step
//!   guided samples, the student's one-step samples, the true renders (its ceiling) and the
//!   autoencoder's reconstructions of those (the ceiling of anything decoded by it);
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
use crate::eval::metrics::MetricTowers;
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
    /// On the autoencoder's reconstructions of those renders: the ceiling of every image a
    /// diffusion model here draws (all of them are decoded by it).
    pub reconstructions: CaptionAccuracy,
    /// On the teacher's samples.
    pub teacher: CaptionAccuracy,
    /// On the student's one-step samples.
    pub student: CaptionAccuracy,
    /// Chance for colour, shape, both.
    pub chance: [f64; 3],
    /// The held-out subjects' reference renders behind the separation gates.
    pub subject_references: usize,
    /// How the toy CLIP's image embeddings (CLIP-I) separate the subjects.
    pub clip_subjects: SubjectSeparation,
    /// How the toy DINO's CLS features (DINO) separate the subjects.
    pub dino_subjects: SubjectSeparation,
}

/// How one metric backbone separates the held-out subjects.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SubjectSeparation {
    /// Share of references whose nearest other reference (cosine) shows the same subject.
    pub top1: f64,
    /// Mean cosine between two references of the same subject.
    pub same: f64,
    /// Mean cosine between references of different subjects.
    pub different: f64,
    /// `top1` by chance: the mean share of the other references that show the same subject.
    pub chance: f64,
}

/// [`SubjectSeparation`] of unit feature rows `features` (n, d) owned by `owner[i]`.
pub fn separation(features: &Tensor, owner: &[usize]) -> Result<SubjectSeparation> {
    let n = owner.len();
    anyhow::ensure!(
        n >= 2 && features.size()[0] == n as i64,
        "{} owners for {:?} features",
        n,
        features.size()
    );
    let f = features.to_kind(Kind::Float).to_device(Device::Cpu);
    let sim: Vec<f32> = Vec::try_from(f.mm(&f.tr()).reshape([-1]))?;
    let (mut hits, mut chance) = (0usize, 0.0);
    let (mut same, mut same_n, mut diff, mut diff_n) = (0.0f64, 0usize, 0.0f64, 0usize);
    for i in 0..n {
        let mut best = (f32::NEG_INFINITY, i);
        for j in (0..n).filter(|&j| j != i) {
            let s = sim[i * n + j];
            if s > best.0 {
                best = (s, j);
            }
            if owner[i] == owner[j] {
                same += f64::from(s);
                same_n += 1;
            } else {
                diff += f64::from(s);
                diff_n += 1;
            }
        }
        hits += usize::from(owner[best.1] == owner[i]);
        let mates = owner.iter().filter(|&&o| o == owner[i]).count() - 1;
        chance += mates as f64 / (n - 1) as f64;
    }
    let mean = |sum: f64, k: usize| if k == 0 { f64::NAN } else { sum / k as f64 };
    Ok(SubjectSeparation {
        top1: hits as f64 / n as f64,
        same: mean(same, same_n),
        different: mean(diff, diff_n),
        chance: chance / n as f64,
    })
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
    // decode(encode(x)) at the posterior mean, clamped to the images' range, on the CPU.
    let reconstruct = |images: &Tensor| {
        tch::no_grad(|| {
            let x = images.to_device(opts.device);
            vae.model
                .decode(&vae.model.encode(&x).mean)
                .clamp(-1.0, 1.0)
                .to_device(Device::Cpu)
        })
    };
    let recon = reconstruct(&fresh.images);
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
    let truth_reconstructed = reconstruct(&truth);
    let teacher = Pipeline::load(&out.join("teacher"), opts)?;
    let student = Pipeline::load(&out.join("student"), opts)?;
    let teacher_images = generate(&teacher, &texts, r.teacher_steps, r.guidance, side)?;
    let student_images = generate(&student, &texts, 1, 0.0, side)?;

    // Subject separation, with the evaluation's own feature code.
    let metric = MetricTowers::load(
        &out.join("towers/clip"),
        &out.join("towers/dino-v1"),
        None,
        opts,
    )?;
    let (mut references, mut owner) = (Vec::new(), Vec::new());
    for (k, subject) in world.subjects().iter().enumerate() {
        for scene in world.reference_scenes(subject) {
            references.push(world.render(&scene));
            owner.push(k);
        }
    }
    let clip_subjects = separation(&metric.clip_images(&references)?, &owner)?;
    let dino_subjects = separation(&metric.dino_images(&references)?, &owner)?;

    let gates = Gates {
        vae_mae,
        vae_psnr,
        clip_retrieval_top1,
        clip_retrieval_pool: fresh.captions.len(),
        prompts: prompts.len(),
        renders: caption_accuracy(&clip, &prompts, &truth)?,
        reconstructions: caption_accuracy(&clip, &prompts, &truth_reconstructed)?,
        teacher: caption_accuracy(&clip, &prompts, &teacher_images)?,
        student: caption_accuracy(&clip, &prompts, &student_images)?,
        chance: [1.0 / 12.0, 1.0 / 11.0, 1.0 / 132.0],
        subject_references: references.len(),
        clip_subjects,
        dino_subjects,
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
    let separated = |s: &SubjectSeparation| {
        format!(
            "nearest reference of the same subject {} (chance {}) · mean cosine same {:.3}, different {:.3}",
            pct(s.top1),
            pct(s.chance),
            s.same,
            s.different
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
        (
            "subject separation: CLIP".into(),
            separated(&gates.clip_subjects),
        ),
        (
            "subject separation: DINO".into(),
            separated(&gates.dino_subjects),
        ),
        ("caption accuracy: renders".into(), acc(&gates.renders)),
        (
            "caption accuracy: renders through the autoencoder".into(),
            acc(&gates.reconstructions),
        ),
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
            "student": "student/ (SD-Turbo layout: Euler trailing, one step; v-prediction, see the README)",
        },
        "towers": {
            "clip": "towers/clip (transformers CLIPModel, with tokenizer files)",
            "dino": "towers/dino-v1 (transformers ViTModel)",
            "identity": "towers/image_encoder + towers/ip-adapter.safetensors (the toy CLIP's vision tower; a seeded orthogonal stand-in for IP-Adapter's projection), with dino-v1 what `trainer fit --set towers=towers` reads",
        },
    });
    let yaml = serde_yaml::to_string(&manifest)?;
    write_text_atomic(&out.join("manifest.yaml"), &yaml)?;
    Ok(gates)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two subjects, two references each, on a circle: the nearest neighbours, the mean
    /// cosines and chance computed by hand.
    #[test]
    fn separation_counts_nearest_neighbours_and_mean_cosines() {
        // Angles 0°, 10° (subject 0), 90°, 60° (subject 1).
        let deg = |a: f64| {
            let r = a.to_radians();
            [r.cos() as f32, r.sin() as f32]
        };
        let rows: Vec<f32> = [0.0, 10.0, 90.0, 60.0]
            .iter()
            .flat_map(|&a| deg(a))
            .collect();
        let features = Tensor::from_slice(&rows).view([4, 2]);
        let s = separation(&features, &[0, 0, 1, 1]).unwrap();
        // 0°→10°, 10°→0°, 90°→60°, 60°→90°: every nearest neighbour is a mate.
        assert_eq!(s.top1, 1.0);
        let c = |a: f64| a.to_radians().cos();
        assert!((s.same - (c(10.0) + c(30.0)) / 2.0).abs() < 1e-6);
        let different = (c(90.0) + c(60.0) + c(80.0) + c(50.0)) / 4.0;
        assert!((s.different - different).abs() < 1e-6);
        assert!((s.chance - 1.0 / 3.0).abs() < 1e-12);
        // With 0° owned by subject 1 instead, its nearest (10°) is not a mate.
        let s = separation(&features, &[1, 0, 1, 0]).unwrap();
        assert!(s.top1 < 1.0);
        assert!(separation(&features, &[0]).is_err());
    }
}

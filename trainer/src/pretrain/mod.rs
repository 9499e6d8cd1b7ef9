//! `trainer pretrain-toy`: pre-trains, on the toy world's scenes and with the project's own
//! networks and losses, every model EchoDistill and its evaluation need, in the layouts of the
//! real ones. One module per stage, run in order:
//! 1. [`autoencoder`]: the AutoencoderKL (`teacher/vae`, copied to `student/vae`);
//! 2. [`contrastive`]: the evaluation CLIP (`towers/clip`, a transformers `CLIPModel`);
//! 3. [`self_distillation`]: the evaluation DINO (`towers/dino-v1`, a `ViTModel`);
//! 4. [`teacher`]: the multi-step teacher's UNet and the shared text encoder (`teacher/unet`,
//!    `teacher/text_encoder`, copied to `student/text_encoder`);
//! 5. [`student`]: the one-step student's UNet (`student/unet`);
//!
//! [`id_encoder`] derives, from the toy CLIP, the identity loss's encoder in `trainer fit`'s
//! towers layout (`towers/image_encoder`, `towers/ip-adapter.safetensors`); then [`gates`]
//! measures the quality gates and writes `report/` and `manifest.yaml`.
//! A finished stage is a component folder in place; an unfinished one resumes from
//! `work/<stage>.safetensors`.

pub mod autoencoder;
pub mod contrastive;
pub mod gates;
pub mod id_encoder;
pub mod latents;
pub mod pack;
pub mod pool;
pub mod self_distillation;
pub mod stage;
pub mod student;
pub mod teacher;

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use anyhow::{bail, ensure, Context, Result};
use runtime::scheduler::SchedulerConfig;
use runtime::ClipTokenizer;
use serde::{Deserialize, Serialize};
use tch::{nn, Device, Kind, Tensor};

use crate::checkpoint::component::{load_text_encoder, load_unet, load_vae, LoadOptions};
use crate::checkpoint::{create_folder_beside, write_text_atomic};
use crate::discriminator::{Backbone, Ensemble};
use crate::losses::adversarial::AdversarialLoss;
use crate::models::clip_text::ClipTextConfig;
use crate::models::unet_2d_condition::{UNet2DConditionModel, UNetConfig};
use crate::models::vae::VaeConfig;
use crate::models::vit::VitConfig;
use crate::toy::{ToyWorld, ToyWorldConfig};
use autoencoder::{AutoencoderSettings, AutoencoderStage};
use contrastive::{ContrastiveSettings, ContrastiveStage};
use latents::PoolLatents;
use pool::Pool;
use self_distillation::{SelfDistillationSettings, SelfDistillationStage};
use stage::{train, StageContext, StageOutcome};
use student::{Frozen, StudentSettings, StudentStage};
use teacher::{TeacherParts, TeacherSettings, TeacherStage};

/// The embedded toy architectures (`trainer/configs/toy/`).
pub mod configs {
    /// The autoencoder.
    pub const VAE: &str = include_str!("../../configs/toy/vae/config.json");
    /// The UNet of teacher and student.
    pub const UNET: &str = include_str!("../../configs/toy/unet/config.json");
    /// The shared text encoder.
    pub const TEXT_ENCODER: &str = include_str!("../../configs/toy/text_encoder/config.json");
    /// The evaluation CLIP.
    pub const CLIP: &str = include_str!("../../configs/toy/clip/config.json");
    /// The evaluation DINO.
    pub const DINO: &str = include_str!("../../configs/toy/dino-v1/config.json");
    /// Pipeline index and scheduler of the student (Euler, trailing, ε) and the teacher (DDIM).
    pub const STUDENT_INDEX: &str = include_str!("../../configs/toy/student/model_index.json");
    /// See [`STUDENT_INDEX`].
    pub const STUDENT_SCHEDULER: &str =
        include_str!("../../configs/toy/student/scheduler/scheduler_config.json");
    /// See [`STUDENT_INDEX`].
    pub const TEACHER_INDEX: &str = include_str!("../../configs/toy/teacher/model_index.json");
    /// See [`STUDENT_INDEX`].
    pub const TEACHER_SCHEDULER: &str =
        include_str!("../../configs/toy/teacher/scheduler/scheduler_config.json");
}

/// The report's settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ReportSettings {
    /// Held-in captions in the sample grids.
    pub grid_captions: usize,
    /// "a {colour} {shape}" prompts the caption-accuracy gates generate.
    pub gate_prompts: usize,
    /// The teacher's sampling steps.
    pub teacher_steps: usize,
    /// The teacher's guidance scale.
    pub guidance: f64,
    /// Fresh scenes the autoencoder and CLIP gates measure on.
    pub gate_scenes: usize,
}

impl Default for ReportSettings {
    fn default() -> Self {
        Self {
            grid_captions: 16,
            gate_prompts: 96,
            teacher_steps: 25,
            guidance: 4.0,
            gate_scenes: 256,
        }
    }
}

/// Everything `pretrain-toy` does, as a YAML file (every key optional). The default steps are
/// sized for under three hours on a 2-core CPU, measured per stage (seconds per step at the
/// default batch): vae 0.9, clip 0.5, dino 0.37, teacher 0.83, student 1.3.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PretrainConfig {
    /// Seed of the networks' initialisation and of every step's noise.
    pub seed: u64,
    /// The toy world.
    pub world: ToyWorldConfig,
    /// Scenes rendered once and shared by the stages.
    pub pool: usize,
    /// Steps between checkpoints.
    pub save_every: usize,
    /// Stage 1.
    pub vae: AutoencoderSettings,
    /// Stage 2.
    pub clip: ContrastiveSettings,
    /// Stage 3.
    pub dino: SelfDistillationSettings,
    /// Stage 4.
    pub teacher: TeacherSettings,
    /// Stage 5.
    pub student: StudentSettings,
    /// The report and quality gates.
    pub report: ReportSettings,
}

impl Default for PretrainConfig {
    fn default() -> Self {
        Self {
            seed: 0,
            world: ToyWorldConfig::default(),
            pool: 30000,
            save_every: 500,
            vae: AutoencoderSettings::default(),
            clip: ContrastiveSettings::default(),
            dino: SelfDistillationSettings::default(),
            teacher: TeacherSettings::default(),
            student: StudentSettings::default(),
            report: ReportSettings::default(),
        }
    }
}

impl PretrainConfig {
    /// Reads a YAML config (missing keys take their defaults).
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let config: Self = serde_yaml::from_str(&text)
            .with_context(|| format!("{}: not a pretrain-toy config", path.display()))?;
        config.check()?;
        Ok(config)
    }

    fn check(&self) -> Result<()> {
        ensure!(self.pool > 0, "pool must be at least 1 scene");
        for (name, steps, batch) in [
            ("vae", self.vae.steps, self.vae.batch),
            ("clip", self.clip.steps, self.clip.batch),
            ("dino", self.dino.steps, self.dino.batch),
            ("teacher", self.teacher.steps, self.teacher.batch),
            ("student", self.student.steps, self.student.batch),
        ] {
            ensure!(
                steps > 0 && batch > 0,
                "{name}: steps and batch must be at least 1 (steps {steps}, batch {batch})"
            );
        }
        ensure!(
            self.clip.batch >= 2,
            "clip.batch must be at least 2: each pair's negatives are the batch's other items"
        );
        ensure!(
            !self.student.timesteps.is_empty() && self.student.timesteps.iter().all(|&t| t < 1000),
            "student.timesteps must be training timesteps in 0..1000, got {:?}",
            self.student.timesteps
        );
        Ok(())
    }
}

/// How to run `pretrain-toy`.
pub struct PretrainOptions<'a> {
    /// The output folder.
    pub out: &'a Path,
    /// The settings.
    pub config: PretrainConfig,
    /// The real CLIP tokenizer folder (the toy models use its vocabulary).
    pub tokenizer: &'a Path,
    /// Continue the run in `out`.
    pub resume: bool,
    /// Set by Ctrl-C.
    pub stop: Option<&'a AtomicBool>,
    /// No progress output (tests).
    pub quiet: bool,
    /// Where to train.
    pub device: Device,
}

/// How `pretrain-toy` ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PretrainOutcome {
    /// Every stage and the report are done.
    Finished,
    /// Ctrl-C: resume with `--resume`.
    Interrupted,
}

/// Offset of the seed of the identity loss's stand-in IP-Adapter projection.
const IP_SEED: u64 = 17;

/// The file with the run's resolved settings.
const CONFIG_FILE: &str = "pretrain.yaml";

fn say(quiet: bool, message: &str) {
    if !quiet {
        eprintln!("{message}");
    }
}

/// Runs every unfinished stage, then the gates and the report.
///
/// Initial weights and each step's noise come from torch's global generator, seeded per stage
/// and per step, so a resumed run ends with the bytes of an uninterrupted one only while no
/// other thread of the process draws from that generator (building any network does).
pub fn run(o: &PretrainOptions) -> Result<PretrainOutcome> {
    let out = o.out;
    let config_path = out.join(CONFIG_FILE);
    let config_text = serde_yaml::to_string(&o.config)?;
    if o.resume {
        let saved = std::fs::read_to_string(&config_path).with_context(|| {
            format!(
                "nothing to resume: {} is missing (start without --resume)",
                config_path.display()
            )
        })?;
        let saved: PretrainConfig = serde_yaml::from_str(&saved)
            .with_context(|| format!("{}: not a pretrain-toy config", config_path.display()))?;
        ensure!(
            saved == o.config,
            "{} was started with other settings; resume with the same --config (its settings are in {})",
            out.display(),
            config_path.display()
        );
    } else if out.exists() {
        bail!(
            "{} already exists: pass --resume to continue that run, or choose another --out",
            out.display()
        );
    }
    o.config.check()?;
    let work = out.join("work");
    std::fs::create_dir_all(&work).with_context(|| format!("cannot create {}", work.display()))?;
    write_text_atomic(&config_path, &config_text)?;
    let tokenizer = ClipTokenizer::from_dir(o.tokenizer)?;
    write_pipeline_files(out, &tokenizer)?;

    let c = &o.config;
    let started = Instant::now();
    say(o.quiet, &format!("rendering {} toy scenes", c.pool));
    let world = ToyWorld::new(c.world)?;
    let pool = Pool::render(&world, c.pool)?;
    say(
        o.quiet,
        &format!("  done in {:.1} s", started.elapsed().as_secs_f64()),
    );
    let ctx = StageContext {
        work: &work,
        save_every: c.save_every,
        stop: o.stop,
        quiet: o.quiet,
        seed: c.seed,
    };
    let device = o.device;
    let opts = LoadOptions {
        device,
        kind: Kind::Float,
        variant: None,
    };
    let teacher_dir = out.join("teacher");
    let student_dir = out.join("student");
    let towers = out.join("towers");

    // 1. The autoencoder.
    let vae_dir = teacher_dir.join("vae");
    if !vae_dir.exists() {
        seed_stage(c.seed, autoencoder::STREAM);
        let mut s = AutoencoderStage::new(
            &pool,
            VaeConfig::from_json(configs::VAE)?,
            c.vae.clone(),
            device,
        );
        if train(&mut s, c.vae.steps, &ctx)? == StageOutcome::Interrupted {
            return Ok(PretrainOutcome::Interrupted);
        }
        let sample = pool.range(0, pool.len().min(512)).to_device(device);
        let scaling = autoencoder::scaling_factor(&s.vae, &sample);
        autoencoder::write_folder(&s.vs, configs::VAE, scaling, &vae_dir)?;
        finish_stage(&work, "vae")?;
    }
    mirror(&teacher_dir, &student_dir, "vae")?;

    // 2. The evaluation CLIP.
    let clip_dir = towers.join("clip");
    if !clip_dir.exists() {
        let clip_config: serde_json::Value = serde_json::from_str(configs::CLIP)?;
        seed_stage(c.seed, contrastive::STREAM);
        let mut s = ContrastiveStage::new(&pool, &tokenizer, &clip_config, c.clip.clone(), device)?;
        if train(&mut s, c.clip.steps, &ctx)? == StageOutcome::Interrupted {
            return Ok(PretrainOutcome::Interrupted);
        }
        contrastive::write_folder(&s.clip, &clip_config, &tokenizer, &clip_dir)?;
        finish_stage(&work, "clip")?;
    }

    // 3. The evaluation DINO.
    let dino_dir = towers.join("dino-v1");
    if !dino_dir.exists() {
        let vit: VitConfig = serde_json::from_str(configs::DINO)?;
        seed_stage(c.seed, self_distillation::STREAM);
        let mut s = SelfDistillationStage::new(&pool, &vit, c.dino.clone(), c.dino.steps, device)?;
        if train(&mut s, c.dino.steps, &ctx)? == StageOutcome::Interrupted {
            return Ok(PretrainOutcome::Interrupted);
        }
        self_distillation::write_folder(&s, configs::DINO, &dino_dir)?;
        finish_stage(&work, "dino")?;
    }
    let cross_attention_dim = UNetConfig::from_json(configs::UNET)?.cross_attention_dim()?;
    id_encoder::write_fit_towers(&towers, cross_attention_dim, c.seed.wrapping_add(IP_SEED))?;

    // 4. The teacher and the shared text encoder, on the autoencoder's latents.
    let mut vae = load_vae(&vae_dir, opts)?;
    vae.vs.freeze();
    let scaling = vae.model.config().scaling_factor;
    let teacher_scheduler = SchedulerConfig::from_json(configs::TEACHER_SCHEDULER)?;
    let alphas_cumprod = runtime::scheduler::NoiseSchedule::new(
        &teacher_scheduler.betas,
        teacher_scheduler.num_train_timesteps,
    )
    .alphas_cumprod;
    let need_latents = !teacher_dir.join("unet").exists() || !student_dir.join("unet").exists();
    let latents = if need_latents {
        say(o.quiet, "encoding the scenes with the autoencoder");
        Some(PoolLatents::encode(&vae.model, &pool, scaling, device, 256))
    } else {
        None
    };
    if !teacher_dir.join("unet").exists() {
        let latents = latents.as_ref().context("latents")?;
        let parts = TeacherParts {
            unet: UNetConfig::from_json(configs::UNET)?,
            text: ClipTextConfig::from_json(configs::TEXT_ENCODER)?,
            alphas_cumprod: alphas_cumprod.clone(),
            prediction: teacher_scheduler.prediction_type,
            tokenizer: &tokenizer,
        };
        seed_stage(c.seed, teacher::STREAM);
        let mut s = TeacherStage::new(&pool, latents, parts, c.teacher.clone(), device)?;
        if train(&mut s, c.teacher.steps, &ctx)? == StageOutcome::Interrupted {
            return Ok(PretrainOutcome::Interrupted);
        }
        let text_config: serde_json::Value = serde_json::from_str(configs::TEXT_ENCODER)?;
        let text_dir = teacher_dir.join("text_encoder");
        if !text_dir.exists() {
            write_component(&text_dir, &text_config, &s.text_vs, "model", |_| true)?;
        }
        let unet_config: serde_json::Value = serde_json::from_str(configs::UNET)?;
        write_component(
            &teacher_dir.join("unet"),
            &unet_config,
            &s.unet_vs,
            "diffusion_pytorch_model",
            |_| true,
        )?;
        finish_stage(&work, "teacher")?;
    }
    mirror(&teacher_dir, &student_dir, "text_encoder")?;

    // 5. The one-step student.
    if !student_dir.join("unet").exists() {
        let latents = latents.as_ref().context("latents")?;
        let mut teacher_unet = load_unet(&teacher_dir.join("unet"), opts)?;
        teacher_unet.vs.freeze();
        let mut text = load_text_encoder(&teacher_dir.join("text_encoder"), opts)?;
        text.vs.freeze();
        let mut dino = crate::towers::load_dino_v1(&dino_dir, opts)?;
        dino.vs.freeze();
        let size = dino.model.image_size();
        seed_stage(c.seed, student::STREAM);
        let ensemble = Ensemble::new(
            vec![Backbone::DinoV1(
                dino,
                crate::towers::dino_input(size, true),
            )],
            AdversarialLoss::Hinge,
            device,
        )?;
        let frozen = Frozen {
            teacher: &teacher_unet.model,
            teacher_weights: &teacher_unet.vs,
            text: &text.model,
            vae: &vae.model,
            tokenizer: &tokenizer,
            alphas_cumprod: alphas_cumprod.clone(),
            teacher_prediction: teacher_scheduler.prediction_type,
            student_prediction: SchedulerConfig::from_json(configs::STUDENT_SCHEDULER)?
                .prediction_type,
        };
        let unet_config = UNetConfig::from_json(configs::UNET)?;
        let mut s = StudentStage::new(
            &pool,
            latents,
            frozen,
            |p| UNet2DConditionModel::new(p, unet_config),
            ensemble,
            c.student.clone(),
            device,
        )?;
        if train(&mut s, c.student.steps, &ctx)? == StageOutcome::Interrupted {
            return Ok(PretrainOutcome::Interrupted);
        }
        let unet_config: serde_json::Value = serde_json::from_str(configs::UNET)?;
        write_component(
            &student_dir.join("unet"),
            &unet_config,
            &s.vs,
            "diffusion_pytorch_model",
            |_| true,
        )?;
        finish_stage(&work, "student")?;
    }
    drop(latents);
    drop(pool);

    say(
        o.quiet,
        "measuring the quality gates and writing the report",
    );
    gates::write_report(out, &o.config, &world, opts, o.quiet)?;
    Ok(PretrainOutcome::Finished)
}

/// Seeds torch before a stage builds its networks, so a stage's initial weights do not depend
/// on which stages ran before it in this process (a resumed run skips the finished ones).
fn seed_stage(seed: u64, stage: u64) {
    tch::manual_seed(seed.wrapping_mul(1000).wrapping_add(stage) as i64);
}

/// The fixed files of both pipeline folders: model_index.json, the scheduler and the
/// tokenizer (written once; a resumed run finds them).
fn write_pipeline_files(out: &Path, tokenizer: &ClipTokenizer) -> Result<()> {
    for (name, index, scheduler) in [
        (
            "student",
            configs::STUDENT_INDEX,
            configs::STUDENT_SCHEDULER,
        ),
        (
            "teacher",
            configs::TEACHER_INDEX,
            configs::TEACHER_SCHEDULER,
        ),
    ] {
        let dir = out.join(name);
        std::fs::create_dir_all(dir.join("scheduler"))
            .with_context(|| format!("cannot create {}", dir.display()))?;
        write_text_atomic(&dir.join("model_index.json"), index)?;
        write_text_atomic(&dir.join("scheduler/scheduler_config.json"), scheduler)?;
        let tok = dir.join("tokenizer");
        if !tok.exists() {
            create_folder_beside(&tok, "tokenizer", |tmp| Ok(tokenizer.save_dir(tmp)?))?;
        }
    }
    Ok(())
}

/// Copies the component `name` from the teacher's folder to the student's unless it is there
/// (the two pipelines share the autoencoder and the text encoder, as SD-Turbo and SD 2.1 do).
fn mirror(teacher: &Path, student: &Path, name: &str) -> Result<()> {
    let (from, to) = (teacher.join(name), student.join(name));
    if to.exists() {
        return Ok(());
    }
    create_folder_beside(&to, name, |tmp| {
        for entry in
            std::fs::read_dir(&from).with_context(|| format!("cannot read {}", from.display()))?
        {
            let entry = entry?;
            std::fs::copy(entry.path(), tmp.join(entry.file_name()))
                .with_context(|| format!("cannot copy {}", entry.path().display()))?;
        }
        Ok(())
    })
}

/// A finished stage no longer needs its checkpoint (its log stays for the report).
fn finish_stage(work: &Path, name: &str) -> Result<()> {
    let path = stage::checkpoint_path(work, name);
    if path.exists() {
        std::fs::remove_file(&path).with_context(|| format!("cannot remove {}", path.display()))?;
    }
    Ok(())
}

/// Writes a component folder: `config.json` and `<weights>.safetensors` with the variables of
/// `vs` that `keep` accepts, in name order.
pub fn write_component(
    dir: &Path,
    config: &serde_json::Value,
    vs: &nn::VarStore,
    weights: &str,
    keep: impl Fn(&str) -> bool,
) -> Result<()> {
    write_component_with(dir, config, vs, weights, keep, |_| Ok(()))
}

/// [`write_component`], with `extra` adding files to the folder before it is renamed into place.
pub fn write_component_with(
    dir: &Path,
    config: &serde_json::Value,
    vs: &nn::VarStore,
    weights: &str,
    keep: impl Fn(&str) -> bool,
    extra: impl FnOnce(&Path) -> Result<()>,
) -> Result<()> {
    let mut vars: Vec<(String, Tensor)> = vs
        .variables()
        .into_iter()
        .filter(|(n, _)| keep(n))
        .map(|(n, t)| (n, t.to_device(Device::Cpu)))
        .collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    if let Some(parent) = dir.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    create_folder_beside(dir, "component", |tmp| {
        std::fs::write(
            tmp.join("config.json"),
            serde_json::to_string_pretty(config)? + "\n",
        )?;
        let file = tmp.join(format!("{weights}.safetensors"));
        Tensor::write_safetensors(&vars, &file)
            .with_context(|| format!("cannot write {}", file.display()))?;
        extra(tmp)
    })
}

/// Re-initialises token, position and class embeddings as transformers does for training from
/// scratch (N(0, 0.02)); the layers' constructors start them at zero or N(0, 1), which suit
/// loading weights, not learning them.
pub fn init_embeddings(vs: &nn::VarStore) {
    // In name order: the store's map iterates in a different order in every process.
    let mut vars: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    tch::no_grad(|| {
        for (name, mut t) in vars {
            let is_embedding = name.ends_with("token_embedding.weight")
                || name.ends_with("position_embedding.weight")
                || name.ends_with("position_embeddings")
                || name.ends_with("cls_token")
                || name.ends_with("class_embedding");
            if is_embedding {
                t.copy_(&(t.randn_like() * 0.02));
            }
        }
    });
}

/// The folders a finished run holds, for messages.
pub fn outputs(out: &Path) -> Vec<PathBuf> {
    [
        "teacher",
        "student",
        "towers/clip",
        "towers/dino-v1",
        "towers/image_encoder",
        "towers/ip-adapter.safetensors",
        "report/report.html",
        "manifest.yaml",
    ]
    .iter()
    .map(|p| out.join(p))
    .collect()
}

//! One training iteration of EchoDistill (SPEC §4): a teacher step on the photos, a student step
//! against the teacher's denoised target and the discriminators, and a discriminator step; the
//! echo stage's data (SPEC §5: the student's own samples replace the photos); checkpoints.
//! Teacher and student share the teacher's text encoder; only the cross-attention K/V copies,
//! the new token rows and the discriminator heads train. The ablation switches (`ablation:` in
//! the config) drop the teacher, unshare the text encoder or split the stage in two.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{ensure, Context, Result};
use runtime::scheduler::config::SchedulerConfigFile;
use runtime::scheduler::{PredictionType, SchedulerConfig, SchedulerKind};
use runtime::{ClipTokenizer, GaussianRng, Scheduler};
use serde_json::json;
use tch::nn;
use tch::{Device, Kind, Tensor};

use super::config::{DiscriminatorReal, FitConfig, Stage};
use super::data::{draw_photos, echo_prompt, load_concept_photos, prompt, Photo};
use super::optim::AdamW;
use super::readout::read_scalars;
use super::run_checkpoint::{self, Contents};
use super::trainable::{add_concept_tokens, CrossAttentionKv, TokenRows};
use crate::checkpoint::{load_text_encoder, load_unet, load_vae, model_dir, LoadOptions, Loaded};
use crate::device::{parse_device, parse_kind, upload};
use crate::discriminator::Backbone;
use crate::losses::adversarial::AdversarialLoss;
use crate::losses::alignment::AlignmentWeights;
use crate::losses::diffusion;
use crate::losses::stack::{LossStack, StackConfig, StudentLoss};
use crate::models::clip_text::ClipTextModel;
use crate::models::unet_2d_condition::UNet2DConditionModel;
use crate::models::unet_checkpoint::CheckpointedForward;
use crate::models::vae::AutoencoderKL;
use crate::sampling::{apply_step, token_ids, write_png, Networks};

/// The smallest crop side relative to the photo's short side in the augmentation.
pub(crate) const MIN_CROP_SCALE: f64 = 0.6;

/// The multi-step teacher: its UNet, the K/V it trains and their optimiser.
pub struct TeacherNet {
    unet: Loaded<UNet2DConditionModel>,
    /// The trained K/V.
    pub kv: CrossAttentionKv,
    opt: AdamW,
    prediction: PredictionType,
    scheduler: SchedulerConfigFile,
    /// Where the teacher came from (a folder or repo id, as configured).
    pub source: PathBuf,
}

/// The student's own text encoder and token rows (the unshared-encoder ablation).
pub struct StudentText {
    text: Loaded<ClipTextModel>,
    /// The student's token rows.
    pub rows: TokenRows,
    opt: AdamW,
}

/// Everything a run holds.
pub struct Distiller {
    config: FitConfig,
    device: Device,
    kind: Kind,
    /// The teacher's tokenizer with the added tokens.
    pub tokenizer: ClipTokenizer,
    text: Loaded<ClipTextModel>,
    /// The teacher (absent in the no-teacher ablation).
    pub teacher: Option<TeacherNet>,
    student: Loaded<UNet2DConditionModel>,
    /// The student's own encoder (the unshared-encoder ablation).
    pub student_text: Option<StudentText>,
    vae: Loaded<AutoencoderKL>,
    alphas_cumprod: Vec<f32>,
    student_scheduler: Scheduler,
    student_scheduler_config: SchedulerConfigFile,
    /// Where the student came from.
    pub student_source: PathBuf,
    /// The student's trained K/V.
    pub kv_student: CrossAttentionKv,
    /// The new token rows of the shared encoder.
    pub rows: TokenRows,
    /// Losses and discriminators.
    pub losses: LossStack,
    opt_rows: AdamW,
    opt_student: AdamW,
    opt_heads: Option<AdamW>,
    photos: Vec<(usize, Photo)>,
    real_photos: Vec<(usize, Photo)>,
    echo_ready: bool,
    subjects: Vec<String>,
    rng: GaussianRng,
    iteration: usize,
    lr_scale: f64,
    recoveries: usize,
    poison_at: Option<usize>,
    profile: bool,
}

/// Everything random about one iteration, drawn up front so that a batch can be replayed.
pub struct Batch {
    /// Augmented photos in [-1, 1].
    pub images: Tensor,
    /// Their prompts.
    pub prompts: Vec<String>,
    /// The noise that samples the VAE posterior of `images`.
    pub posterior_noise: Tensor,
    ts: Vec<usize>,
    eps: Tensor,
    z: Tensor,
    t_prime: usize,
}

/// The teacher step's numbers.
#[derive(Debug, Clone)]
pub struct TeacherLog {
    /// The diffusion loss.
    pub loss: f64,
    /// Gradient norm of the teacher K/V before clipping.
    pub grad_norm: f64,
}

/// The student and discriminator steps' numbers.
#[derive(Debug, Clone)]
pub struct StudentLog {
    /// The student's total loss.
    pub loss: f64,
    /// c(t') = ᾱ_t' (0 without a teacher: no alignment loss).
    pub c_t: f64,
    /// L_id.
    pub identity: f64,
    /// L_mse.
    pub mse: f64,
    /// L_swd.
    pub swd: f64,
    /// Σ_k adversarial.
    pub adversarial: f64,
    /// The discriminators' loss (0 with none).
    pub discriminator_loss: f64,
    /// Gradient norm of the student K/V before clipping.
    pub grad_norm: f64,
}

/// The teacher step's numbers while still on the device.
struct TeacherScalars {
    loss: Tensor,
    grad_norm: Option<Tensor>,
}

/// The student and discriminator steps' numbers while still on the device.
struct StudentScalars {
    loss: Tensor,
    c_t: f64,
    identity: Tensor,
    mse: Tensor,
    swd: Tensor,
    adversarial: Tensor,
    discriminator_loss: Option<Tensor>,
    grad_norm: Option<Tensor>,
}

/// The iteration's numbers, read to the host together (see `readout`).
fn read_step(
    teacher: Option<TeacherScalars>,
    student: Option<StudentScalars>,
) -> Result<(Option<TeacherLog>, Option<StudentLog>)> {
    let t = teacher.as_ref();
    let s = student.as_ref();
    let v = read_scalars(&[
        t.map(|t| &t.loss),
        t.and_then(|t| t.grad_norm.as_ref()),
        s.map(|s| &s.loss),
        s.map(|s| &s.identity),
        s.map(|s| &s.mse),
        s.map(|s| &s.swd),
        s.map(|s| &s.adversarial),
        s.and_then(|s| s.discriminator_loss.as_ref()),
        s.and_then(|s| s.grad_norm.as_ref()),
    ])?;
    let teacher = teacher.map(|_| TeacherLog {
        loss: v[0],
        grad_norm: v[1],
    });
    let student = student.map(|s| StudentLog {
        loss: v[2],
        c_t: s.c_t,
        identity: v[3],
        mse: v[4],
        swd: v[5],
        adversarial: v[6],
        discriminator_loss: v[7],
        grad_norm: v[8],
    });
    Ok((teacher, student))
}

/// A baseline's step numbers.
#[derive(Debug, Clone)]
pub struct FinetuneLog {
    /// The diffusion loss on the photos plus the weighted prior loss.
    pub loss: f64,
    /// The prior-preservation loss on the class images (0 without).
    pub prior_loss: f64,
    /// Gradient norm of what trains, before clipping.
    pub grad_norm: f64,
}

/// One iteration's numbers, as logged.
#[derive(Debug, Clone)]
pub struct StepLog {
    /// 1-based iteration.
    pub iteration: usize,
    /// The stage it belongs to.
    pub stage: Stage,
    /// The teacher step, if it ran.
    pub teacher: Option<TeacherLog>,
    /// The student step, if it ran.
    pub student: Option<StudentLog>,
    /// A baseline's step, if it ran.
    pub finetune: Option<FinetuneLog>,
    /// Seconds the iteration took.
    pub seconds: f64,
    /// Seconds per part of the iteration, in order.
    pub phases: Vec<(&'static str, f64)>,
}

impl StepLog {
    /// Whether every loss and gradient norm is finite.
    pub fn is_finite(&self) -> bool {
        let t = self
            .teacher
            .as_ref()
            .is_none_or(|t| t.loss.is_finite() && t.grad_norm.is_finite());
        let s = self.student.as_ref().is_none_or(|s| {
            [s.loss, s.discriminator_loss, s.grad_norm]
                .iter()
                .all(|v| v.is_finite())
        });
        let f = self.finetune.as_ref().is_none_or(|f| {
            [f.loss, f.prior_loss, f.grad_norm]
                .iter()
                .all(|v| v.is_finite())
        });
        t && s && f
    }

    /// Teacher plus student loss (what the spike test watches).
    pub fn total_loss(&self) -> f64 {
        self.teacher.as_ref().map_or(0.0, |t| t.loss)
            + self.student.as_ref().map_or(0.0, |s| s.loss)
            + self.finetune.as_ref().map_or(0.0, |f| f.loss)
    }

    /// A short summary for the progress bar.
    pub fn summary(&self) -> String {
        let mut parts = Vec::new();
        if let Some(t) = &self.teacher {
            parts.push(format!("teacher {:.4}", t.loss));
        }
        if let Some(s) = &self.student {
            parts.push(format!("student {:.4}", s.loss));
        }
        if let Some(f) = &self.finetune {
            parts.push(format!("loss {:.4}", f.loss));
        }
        parts.join("  ")
    }

    /// One `log.jsonl` line (non-finite numbers become null; absent steps are left out), with
    /// the learning rates by name as `lr_<name>`.
    pub fn to_json(&self, lr: &[(&str, f64)]) -> serde_json::Value {
        let mut line = json!({
            "iteration": self.iteration,
            "stage": self.stage.name(),
            "seconds": self.seconds,
            "phases": self.phases.iter().map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>(),
        });
        let map = line.as_object_mut().expect("a JSON object");
        for (name, value) in lr {
            map.insert(format!("lr_{name}"), json!(value));
        }
        if let Some(f) = &self.finetune {
            map.insert("loss".into(), json!(f.loss));
            map.insert("prior_loss".into(), json!(f.prior_loss));
            map.insert("grad_norm".into(), json!(f.grad_norm));
        }
        if let Some(t) = &self.teacher {
            map.insert("teacher_loss".into(), json!(t.loss));
            map.insert("grad_norm_teacher".into(), json!(t.grad_norm));
        }
        if let Some(s) = &self.student {
            for (k, v) in [
                ("student_loss", s.loss),
                ("c_t", s.c_t),
                ("identity", s.identity),
                ("mse", s.mse),
                ("swd", s.swd),
                ("adversarial", s.adversarial),
                ("discriminator_loss", s.discriminator_loss),
                ("grad_norm_student", s.grad_norm),
            ] {
                map.insert(k.into(), json!(v));
            }
        }
        line
    }
}

/// Scales the gradients of `vs` to an L2 norm of at most `max`, on the device, and returns
/// their norm before clipping as a 0-dim f64 tensor (`None` without gradients). No host read:
/// the factor min(1, max / (norm + 1e-6)) stays a tensor, and multiplying by exactly 1 leaves a
/// gradient as it was, so the result is the host-side `if factor < 1` version's, bit for bit.
pub(crate) fn clip_gradients(vs: &nn::VarStore, max: f64) -> Option<Tensor> {
    tch::no_grad(|| {
        let grads: Vec<Tensor> = vs
            .trainable_variables()
            .iter()
            .map(Tensor::grad)
            .filter(Tensor::defined)
            .collect();
        if grads.is_empty() {
            return None;
        }
        let norms: Vec<Tensor> = grads
            .iter()
            .map(|g| g.norm().to_kind(Kind::Double))
            .collect();
        let total = Tensor::stack(&norms, 0).norm();
        let factor = (Tensor::full([], max, (Kind::Double, total.device())) / (&total + 1e-6))
            .clamp_max(1.0);
        for mut g in grads {
            let _ = g.g_mul_(&factor.to_kind(g.kind()));
        }
        Some(total)
    })
}

/// The second half of the student's backward pass when the VAE decoder is checkpointed:
/// `total.backward()` has left the loss's gradients on the leaves `x_leaf` (the latents) and
/// `images` (their decoding); this recomputes the decoding of `x_s` with its graph and sends
/// both gradients into the student through one backward pass. d/dy Σ(y·g) = g exactly, so the
/// student's gradients are those of the single graph (bit for bit on the CPU: test
/// `checkpointed_decoder_gives_the_same_update`), with the towers' and the decoder's
/// activations never held at the same time.
fn backward_through_decoder(
    x_s: &Tensor,
    x_leaf: &Tensor,
    images: &Tensor,
    decode: impl Fn(&Tensor) -> Tensor,
) {
    // A leaf no loss term reached has no gradient (the latents, without a teacher).
    let (g_images, g_latents) = (images.grad(), x_leaf.grad());
    let terms = [
        g_images
            .defined()
            .then(|| (decode(x_s) * g_images).sum(Kind::Float)),
        g_latents
            .defined()
            .then(|| (x_s * g_latents).sum(Kind::Float)),
    ];
    if let Some(surrogate) = terms.into_iter().flatten().reduce(|a, b| a + b) {
        surrogate.backward();
    }
}

/// Timesteps `ts` as the f32 tensor the UNet takes, on `device`.
pub(crate) fn timestep_tensor(ts: &[usize], device: Device) -> Tensor {
    upload(
        &Tensor::from_slice(&ts.iter().map(|&t| t as f32).collect::<Vec<_>>()),
        device,
    )
}

/// A tensor of `shape` drawn from `rng`'s standard normal, on `device`.
pub(crate) fn normal(rng: &mut GaussianRng, shape: &[i64], device: Device) -> Tensor {
    let n: i64 = shape.iter().product();
    upload(
        &Tensor::from_slice(&rng.normal(n as usize)).view(shape),
        device,
    )
}

/// The photos' latents without gradient: the VAE posterior of `images` (in [-1, 1], run in
/// `kind`) sampled with `noise`, times the VAE's scaling factor, in f32.
pub(crate) fn encode_latents(
    vae: &AutoencoderKL,
    images: &Tensor,
    noise: &Tensor,
    kind: Kind,
) -> Tensor {
    let scaling = vae.config().scaling_factor;
    tch::no_grad(|| {
        let posterior = vae.encode(&images.to_kind(kind));
        let noise = noise.to_kind(posterior.mean.kind());
        posterior.sample_with(&noise).to_kind(Kind::Float) * scaling
    })
}

/// Linear layers' usual scale: weights N(0, 1/fan_in), biases zero.
fn init_heads(vs: &nn::VarStore, rng: &mut GaussianRng) {
    let mut vars: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    tch::no_grad(|| {
        for (_, mut var) in vars {
            let size = var.size();
            let value = if size.len() == 2 {
                let n = (size[0] * size[1]) as usize;
                Tensor::from_slice(&rng.normal(n)).view(size.as_slice()) / (size[1] as f64).sqrt()
            } else {
                Tensor::zeros(size.as_slice(), (Kind::Float, Device::Cpu))
            };
            var.copy_(&value);
        }
    });
}

/// A model folder's `scheduler/scheduler_config.json`.
pub(crate) fn scheduler_config(model: &Path) -> Result<SchedulerConfigFile> {
    let path = model.join("scheduler").join("scheduler_config.json");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{}: malformed JSON", path.display()))
}

/// Times the parts of one iteration. On the CPU the marks cost nothing and are always taken;
/// on CUDA each mark waits for the queued kernels, so only a profiled run (`trainer bench
/// --profile`) takes them and a training run keeps the GPU's queue full.
pub(crate) struct Phases {
    device: Device,
    enabled: bool,
    last: Instant,
    pub(crate) done: Vec<(&'static str, f64)>,
}

impl Phases {
    pub(crate) fn new(device: Device, profile: bool) -> Self {
        Self {
            device,
            enabled: profile || device == Device::Cpu,
            last: Instant::now(),
            done: Vec::new(),
        }
    }

    pub(crate) fn mark(&mut self, name: &'static str) {
        if !self.enabled {
            return;
        }
        crate::device::synchronize(self.device);
        let now = Instant::now();
        self.done
            .push((name, now.duration_since(self.last).as_secs_f64()));
        self.last = now;
    }
}

/// The folder of the frozen towers (the discriminators' backbones, the IP encoder).
pub(crate) fn towers_dir(config: &FitConfig) -> Result<PathBuf> {
    config.towers.clone().context(
        "towers: give the folder with dino-v1/, dino-v2/, image_encoder/ and ip-adapter.safetensors",
    )
}

/// The student's losses and discriminators as `config` sets them.
pub(crate) fn stack_config(config: &FitConfig) -> StackConfig {
    StackConfig {
        discriminators: config.discriminators.clone(),
        adversarial: if config.losses.adversarial == "hinge" {
            AdversarialLoss::Hinge
        } else {
            AdversarialLoss::CrossEntropy
        },
        normalize: config.normalize_tower_inputs,
        weights: AlignmentWeights {
            identity: config.losses.identity,
            mse: config.losses.mse,
            swd: config.losses.swd,
        },
        adversarial_weight: config.losses.adversarial_weight,
        dino_v1_size: None,
        dino_v2_size: Some(config.dino_v2_size),
        seed: config.seed.wrapping_add(1),
        swd_scales: config.losses.swd_scales,
    }
}

impl Distiller {
    /// Loads the models, adds the tokens, attaches what trains, and reads the photos; refuses
    /// bad input before any training.
    pub fn new(config: FitConfig) -> Result<Self> {
        config.validate()?;
        let device = parse_device(&config.device)?;
        let kind = parse_kind(&config.dtype)?;
        let mut rng = GaussianRng::new(config.seed);

        let photos = load_concept_photos(&config.concepts)?;

        let teacher_dir = model_dir(&config.teacher)?;
        let student_dir = model_dir(&config.student)?;
        let towers = towers_dir(&config)?;
        let opts = LoadOptions {
            device,
            kind,
            variant: None,
        };
        let mut tokenizer = ClipTokenizer::from_dir(&teacher_dir.join("tokenizer"))?;
        let base_ids = tokenizer.len() as i64;
        let (new_rows, subjects) = add_concept_tokens(&mut tokenizer, &config.concepts)?;
        let mut text = load_text_encoder(&teacher_dir.join("text_encoder"), opts)?;
        ensure!(
            text.model.num_ids() == base_ids,
            "the teacher's text encoder has {} token rows but its tokenizer {base_ids} ids",
            text.model.num_ids()
        );
        let rows = TokenRows::attach(&mut text.model, &new_rows, device)?;
        let row_lr = config.lr_teacher;
        let opt_rows = AdamW::new(&rows.vs, row_lr, &config.adam);

        let student_text = if config.ablation.shared_text_encoder {
            None
        } else {
            let mut own = load_text_encoder(&student_dir.join("text_encoder"), opts)?;
            ensure!(
                own.model.num_ids() == base_ids,
                "the student's own text encoder has {} token rows but the teacher's tokenizer {base_ids} ids; the unshared-encoder ablation needs the same vocabulary",
                own.model.num_ids()
            );
            let rows = TokenRows::attach(&mut own.model, &new_rows, device)?;
            let opt = AdamW::new(&rows.vs, row_lr, &config.adam);
            Some(StudentText {
                text: own,
                rows,
                opt,
            })
        };

        let teacher = if config.ablation.teacher {
            let mut unet = load_unet(&teacher_dir.join("unet"), opts)?;
            let kv = CrossAttentionKv::attach(&mut unet.model, device)?;
            let scheduler = scheduler_config(&teacher_dir)?;
            let prediction = SchedulerConfig::from_file(&scheduler)?.prediction_type;
            let opt = AdamW::new(&kv.vs, config.lr_teacher, &config.adam);
            Some(TeacherNet {
                unet,
                kv,
                opt,
                prediction,
                scheduler,
                source: teacher_dir.clone(),
            })
        } else {
            None
        };
        let mut student = load_unet(&student_dir.join("unet"), opts)?;
        let vae = load_vae(&student_dir.join("vae"), opts)?;
        let factor = vae.model.config().downscale_factor();
        ensure!(
            config.resolution % factor == 0,
            "resolution {} is not a multiple of {factor}",
            config.resolution
        );
        let kv_student = CrossAttentionKv::attach(&mut student.model, device)?;

        let student_scheduler_config = scheduler_config(&student_dir)?;
        let student_sched = SchedulerConfig::from_file(&student_scheduler_config)?;
        let alphas_cumprod = runtime::scheduler::NoiseSchedule::new(
            &student_sched.betas,
            student_sched.num_train_timesteps,
        )
        .alphas_cumprod;
        let mut student_scheduler = Scheduler::new(student_sched);
        student_scheduler.set_timesteps(1)?;

        let losses = LossStack::load(&towers, opts, &stack_config(&config))?;

        // Heads start from the run's generator, not torch's global one, so a seed fixes the run
        // whatever else the process does.
        init_heads(&losses.ensemble.heads, &mut rng);
        let opt_student = AdamW::new(&kv_student.vs, config.student_lr(), &config.adam);
        let opt_heads = if losses.ensemble.members.is_empty() {
            None
        } else {
            Some(AdamW::new(
                &losses.ensemble.heads,
                config.lr_discriminator,
                &config.adam,
            ))
        };
        let _ = rng.next_u64();
        Ok(Self {
            config,
            device,
            kind,
            tokenizer,
            text,
            teacher,
            student,
            student_text,
            vae,
            alphas_cumprod,
            student_scheduler,
            student_scheduler_config,
            student_source: student_dir,
            kv_student,
            rows,
            losses,
            opt_rows,
            opt_student,
            opt_heads,
            real_photos: photos.clone(),
            photos,
            echo_ready: false,
            subjects,
            rng,
            iteration: 0,
            lr_scale: 1.0,
            recoveries: 0,
            poison_at: None,
            profile: false,
        })
    }

    /// The shared encoder's embeddings for `prompts` (with grad to its token rows).
    fn embed(&self, prompts: &[String]) -> Tensor {
        self.text
            .model
            .forward(&token_ids(&self.tokenizer, prompts, self.device))
    }

    /// The student's embeddings: its own encoder in the unshared ablation, else the shared one.
    fn embed_student(&self, prompts: &[String]) -> Tensor {
        match &self.student_text {
            Some(own) => own
                .text
                .model
                .forward(&token_ids(&self.tokenizer, prompts, self.device)),
            None => self.embed(prompts),
        }
    }

    fn timestep(&mut self) -> usize {
        (self.rng.next_u64() % self.alphas_cumprod.len() as u64) as usize
    }

    fn normal(&mut self, shape: &[i64]) -> Tensor {
        normal(&mut self.rng, shape, self.device)
    }

    /// √ᾱ_t and √(1 − ᾱ_t) per sample, shaped to broadcast over latents.
    fn coefficients(&self, ts: &[usize]) -> (Tensor, Tensor) {
        diffusion::coefficients(&self.alphas_cumprod, ts, self.device)
    }

    /// Draws the next iteration's photos, prompts, noise and timesteps from the run's generator.
    pub fn draw_batch(&mut self) -> Batch {
        let subjects = &self.subjects;
        let (images, prompts) = draw_photos(
            &self.photos,
            self.config.batch_size,
            self.config.resolution as u32,
            MIN_CROP_SCALE,
            &mut self.rng,
            |concept, rng| prompt(&subjects[concept], rng),
        );
        let b = self.config.batch_size;
        let vae = self.vae.model.config();
        let side = self.config.resolution / vae.downscale_factor();
        let latent = [b, vae.latent_channels, side, side];
        let posterior_noise = self.normal(&latent);
        let ts: Vec<usize> = (0..b).map(|_| self.timestep()).collect();
        let eps = self.normal(&latent);
        let z = self.normal(&latent);
        let t_prime = self.timestep();
        Batch {
            images: upload(&Tensor::stack(&images, 0), self.device),
            prompts,
            posterior_noise,
            ts,
            eps,
            z,
            t_prime,
        }
    }

    /// The latents of `batch`'s photos: their VAE posterior sampled with the batch's noise, times
    /// the scaling factor (what the teacher step trains on; no gradient).
    pub fn photo_latents(&self, batch: &Batch) -> Tensor {
        encode_latents(
            &self.vae.model,
            &batch.images,
            &batch.posterior_noise,
            self.kind,
        )
    }

    /// The images the discriminators see as real on `batch` (`discriminator_real`): its photos,
    /// or their VAE reconstructions, `x0` (its [`Distiller::photo_latents`]) decoded without
    /// clamping as the student's images are.
    pub fn discriminator_reals(&self, batch: &Batch, x0: &Tensor) -> Tensor {
        match self.config.discriminator_real {
            DiscriminatorReal::Photos => batch.images.shallow_clone(),
            DiscriminatorReal::Reconstructions => {
                let vae = &self.vae.model;
                let scaling = vae.config().scaling_factor;
                tch::no_grad(|| vae.decode(&(x0 / scaling).to_kind(self.kind))).to_kind(Kind::Float)
            }
        }
    }

    /// One iteration of the current stage on the next batch.
    pub fn step(&mut self) -> Result<StepLog> {
        let batch = self.draw_batch();
        self.step_on(&batch)
    }

    /// One iteration of the current stage on `batch`: the teacher step, the student step and
    /// the discriminator step, each as the stage (and the ablation switches) ask.
    pub fn step_on(&mut self, batch: &Batch) -> Result<StepLog> {
        let start = Instant::now();
        let stage = self.config.stage_after(self.iteration);
        self.iteration += 1;
        let mut phases = Phases::new(self.device, self.profile);
        let x0 = self.photo_latents(batch);
        phases.mark("encode");
        let poison = self.poison_at == Some(self.iteration);
        if poison {
            self.poison_at = None;
        }

        let teacher = if stage.trains_teacher() && self.teacher.is_some() {
            let log = self.teacher_step(batch, &x0, poison)?;
            phases.mark("teacher_step");
            Some(log)
        } else {
            None
        };
        let student = if stage.trains_student() {
            Some(self.student_step(batch, &x0, &mut phases, poison && teacher.is_none())?)
        } else {
            None
        };
        let (teacher, student) = read_step(teacher, student)?;
        Ok(StepLog {
            iteration: self.iteration,
            stage,
            teacher,
            student,
            finetune: None,
            seconds: start.elapsed().as_secs_f64(),
            phases: phases.done,
        })
    }

    /// SPEC §4 step 1: the teacher's diffusion loss on the photos; trains the teacher K/V and
    /// the shared token rows.
    fn teacher_step(&mut self, batch: &Batch, x0: &Tensor, poison: bool) -> Result<TeacherScalars> {
        let (a, s) = self.coefficients(&batch.ts);
        let eps = &batch.eps;
        let x_t = &a * x0 + &s * eps;
        let t_tensor = timestep_tensor(&batch.ts, self.device);
        let context = self.embed(&batch.prompts);
        let teacher = self.teacher.as_mut().context("no teacher")?;
        let target = diffusion::target(teacher.prediction, x0, eps, &a, &s);
        let (pred, unet_record) = teacher.unet.model.forward_for_training(
            &x_t.to_kind(self.kind),
            &t_tensor,
            &context.to_kind(self.kind),
            self.config.checkpoint_unet,
        );
        let mut loss = diffusion::mse(&pred, &target);
        if poison {
            loss *= f64::NAN;
        }
        teacher.opt.zero_grad();
        self.opt_rows.zero_grad();
        loss.backward();
        if let Some(record) = unet_record {
            record.backward(&teacher.unet.model);
        }
        let grad_norm = clip_gradients(&teacher.kv.vs, self.config.max_grad_norm);
        clip_gradients(&self.rows.vs, self.config.max_grad_norm);
        teacher.opt.step();
        self.opt_rows.step();
        Ok(TeacherScalars { loss, grad_norm })
    }

    /// The teacher's x̂_0 for the student's re-noised output (no gradient), with CFG against
    /// the empty prompt as the authors' code does.
    fn teacher_target(&self, x_s: &Tensor, batch: &Batch) -> Result<Option<(Tensor, f64)>> {
        let Some(teacher) = &self.teacher else {
            return Ok(None);
        };
        let b = batch.prompts.len();
        let t_prime = batch.t_prime;
        let c_t = f64::from(self.alphas_cumprod[t_prime]);
        let (a2, s2) = self.coefficients(&vec![t_prime; b]);
        let x0 = tch::no_grad(|| -> Result<Tensor> {
            // Re-noised with the student's own z, as the authors' code does.
            let x_tp = &a2 * x_s.detach() + &s2 * &batch.z;
            let context = self.embed(&batch.prompts).to_kind(self.kind);
            let t = timestep_tensor(&vec![t_prime; b], self.device);
            let pred = if self.config.teacher_guidance > 1.0 {
                let uncond = self.embed(&vec![String::new(); b]).to_kind(self.kind);
                let ctx = Tensor::cat(&[uncond, context], 0);
                let x_in = Tensor::cat(&[&x_tp, &x_tp], 0).to_kind(self.kind);
                let out = teacher
                    .unet
                    .model
                    .forward(&x_in, &Tensor::cat(&[&t, &t], 0), &ctx)
                    .to_kind(Kind::Float);
                let parts = out.chunk(2, 0);
                &parts[0] + (&parts[1] - &parts[0]) * self.config.teacher_guidance
            } else {
                teacher
                    .unet
                    .model
                    .forward(&x_tp.to_kind(self.kind), &t, &context)
                    .to_kind(Kind::Float)
            };
            Ok(diffusion::predicted_x0(
                teacher.prediction,
                &x_tp,
                &pred,
                &a2,
                &s2,
            ))
        })?;
        Ok(Some((x0, c_t)))
    }

    /// The student's one-step x̂_0 from noise `z` (SPEC §4 step 2: Euler with trailing spacing,
    /// model input √(1−ᾱ_999)·σ_max·z, x̂_0 = σ_max·(z − ε̂)), with gradient unless under no_grad.
    /// With `checkpoint` the UNet's activations are not kept: the record's backward must
    /// follow the loss's.
    fn one_step(
        &self,
        z: &Tensor,
        context: &Tensor,
        checkpoint: bool,
    ) -> Result<(Tensor, Option<CheckpointedForward>)> {
        let sched = &self.student_scheduler;
        let latents = z * f64::from(sched.init_noise_sigma());
        let x_in = (&latents * f64::from(sched.model_input_scale(0)?)).to_kind(self.kind);
        let t = upload(&Tensor::from_slice(&[sched.timesteps()[0]]), self.device);
        let (out, record) = self
            .student
            .model
            .forward_for_training(&x_in, &t, context, checkpoint);
        let eps_hat = out.to_kind(Kind::Float);
        Ok((
            apply_step(&sched.step_coefficients(0)?, &latents, &eps_hat, None).0,
            record,
        ))
    }

    /// SPEC §4 steps 2 and 3: one-step generation scored against the teacher's target and the
    /// discriminators, then the discriminators' own step.
    fn student_step(
        &mut self,
        batch: &Batch,
        photo_latents: &Tensor,
        phases: &mut Phases,
        poison: bool,
    ) -> Result<StudentScalars> {
        let scaling = self.vae.model.config().scaling_factor;
        // The student's prompt embeddings carry gradient only where its loss trains token rows:
        // its own rows (unshared ablation) or the shared rows when there is no teacher.
        let trains_rows = self.student_text.is_some() || self.teacher.is_none();
        let context = if trains_rows {
            self.embed_student(&batch.prompts)
        } else {
            tch::no_grad(|| self.embed_student(&batch.prompts))
        }
        .to_kind(self.kind);
        let (x_s, unet_record) = self.one_step(&batch.z, &context, self.config.checkpoint_unet)?;
        phases.mark("student_forward");
        let target = self.teacher_target(&x_s, batch)?;
        phases.mark("teacher_target");
        let (vae, kind) = (&self.vae.model, self.kind);
        let decode = |x: &Tensor| {
            vae.decode(&(x / scaling).to_kind(kind))
                .to_kind(Kind::Float)
        };
        // With the decoder checkpointed, the losses see the student's latents and images as
        // leaves: their backward stops there, the decoder's activations are not kept while the
        // towers' are, and `backward_through_decoder` recomputes them afterwards.
        let checkpoint = self.config.checkpoint_decoder;
        let (x_loss, student_images) = if checkpoint {
            let images = tch::no_grad(|| decode(&x_s)).set_requires_grad(true);
            (x_s.detach().set_requires_grad(true), images)
        } else {
            (x_s.shallow_clone(), decode(&x_s))
        };
        let target_images = target.as_ref().map(|(x0, _)| tch::no_grad(|| decode(x0)));
        phases.mark("decode");
        let (loss, c_t) = match (&target, &target_images) {
            (Some((x0, c_t)), Some(images)) => (
                self.losses
                    .student_loss(&x_loss, x0, &student_images, images, *c_t)?,
                *c_t,
            ),
            // No teacher (ablation): the discriminators alone.
            _ => (self.losses.adversarial_only(&student_images)?, 0.0),
        };
        let StudentLoss {
            mut total,
            identity,
            mse,
            swd,
            adversarial,
            fake_features,
        } = loss;
        if poison {
            total *= f64::NAN;
        }
        phases.mark("student_losses");
        self.opt_student.zero_grad();
        if trains_rows {
            match self.student_text.as_mut() {
                Some(own) => own.opt.zero_grad(),
                None => self.opt_rows.zero_grad(),
            }
        }
        total.backward();
        if checkpoint {
            backward_through_decoder(&x_s, &x_loss, &student_images, decode);
        }
        if let Some(record) = unet_record {
            record.backward(&self.student.model);
        }
        phases.mark("student_backward");
        let grad_norm = clip_gradients(&self.kv_student.vs, self.config.max_grad_norm);
        self.opt_student.step();
        if trains_rows {
            match self.student_text.as_mut() {
                Some(own) => {
                    clip_gradients(&own.rows.vs, self.config.max_grad_norm);
                    own.opt.step();
                }
                None => {
                    clip_gradients(&self.rows.vs, self.config.max_grad_norm);
                    self.opt_rows.step();
                }
            }
        }
        phases.mark("student_optimizer");

        let mut discriminator_loss = None;
        let reals = self
            .opt_heads
            .is_some()
            .then(|| self.discriminator_reals(batch, photo_latents));
        if let (Some(opt), Some(reals)) = (self.opt_heads.as_mut(), reals) {
            // The student's pass already ran the frozen backbones on its images.
            let ensemble = &self.losses.ensemble;
            let real_features = ensemble.features(&reals, None)?;
            let d = ensemble.discriminator_loss_of(&real_features, &fake_features)?;
            opt.zero_grad();
            d.backward();
            clip_gradients(&self.losses.ensemble.heads, self.config.max_grad_norm);
            opt.step();
            discriminator_loss = Some(d);
            phases.mark("discriminator_step");
        }
        Ok(StudentScalars {
            loss: total,
            c_t,
            identity,
            mse,
            swd,
            adversarial,
            discriminator_loss,
            grad_norm,
        })
    }

    /// Every store that must not change during training, by name (for checks and audits).
    pub fn frozen_stores(&self) -> Vec<(String, &nn::VarStore)> {
        let mut stores = vec![
            ("text_encoder".to_string(), &self.text.vs),
            ("student_unet".to_string(), &self.student.vs),
            ("vae".to_string(), &self.vae.vs),
            ("ip_image_encoder".to_string(), &self.losses.ip.encoder.vs),
            ("ip_projection".to_string(), &self.losses.ip.projection.0),
        ];
        if let Some(t) = &self.teacher {
            stores.push(("teacher_unet".to_string(), &t.unet.vs));
        }
        if let Some(own) = &self.student_text {
            stores.push(("student_text_encoder".to_string(), &own.text.vs));
        }
        for m in &self.losses.ensemble.members {
            let vs = match &m.backbone {
                Backbone::DinoV1(l, _) => Some(&l.vs),
                Backbone::DinoV2(l, _) => Some(&l.vs),
                Backbone::Ip(_) => None,
            };
            if let Some(vs) = vs {
                stores.push((m.backbone.name().to_string(), vs));
            }
        }
        stores
    }

    /// Every store that trains, by name (the checkpoint's prefixes).
    pub fn trained_stores(&self) -> Vec<(&'static str, &nn::VarStore)> {
        let mut v = vec![
            ("token_rows", &self.rows.vs),
            ("student_kv", &self.kv_student.vs),
            ("heads", &self.losses.ensemble.heads),
        ];
        if let Some(t) = &self.teacher {
            v.push(("teacher_kv", &t.kv.vs));
        }
        if let Some(own) = &self.student_text {
            v.push(("student_token_rows", &own.rows.vs));
        }
        v
    }

    /// Iterations done so far.
    pub fn iteration(&self) -> usize {
        self.iteration
    }

    fn optimizers_mut(&mut self) -> Vec<(&'static str, &mut AdamW)> {
        let mut v = vec![
            ("token_rows", &mut self.opt_rows),
            ("student_kv", &mut self.opt_student),
        ];
        if let Some(h) = self.opt_heads.as_mut() {
            v.push(("heads", h));
        }
        if let Some(t) = self.teacher.as_mut() {
            v.push(("teacher_kv", &mut t.opt));
        }
        if let Some(own) = self.student_text.as_mut() {
            v.push(("student_token_rows", &mut own.opt));
        }
        v
    }

    /// The learning rates now: teacher (and token rows), student, discriminators.
    pub fn learning_rates(&self) -> (f64, f64, f64) {
        let c = &self.config;
        (
            c.lr_teacher * self.lr_scale,
            c.student_lr() * self.lr_scale,
            c.lr_discriminator * self.lr_scale,
        )
    }

    /// The learning rates now by name, as logged (`lr_teacher`, `lr_student`,
    /// `lr_discriminator`).
    pub fn named_learning_rates(&self) -> Vec<(&'static str, f64)> {
        let (t, s, d) = self.learning_rates();
        vec![("teacher", t), ("student", s), ("discriminator", d)]
    }

    /// The factor every learning rate is multiplied by (lowered by divergence recovery).
    pub fn lr_scale(&self) -> f64 {
        self.lr_scale
    }

    /// Divergence recoveries so far.
    pub fn recoveries(&self) -> usize {
        self.recoveries
    }

    /// Puts back a learning-rate factor and recovery count (after restoring a checkpoint that
    /// predates them).
    pub fn restore_recovery_state(&mut self, lr_scale: f64, recoveries: usize) {
        self.lr_scale = lr_scale;
        self.recoveries = recoveries;
        self.apply_lr_scale();
    }

    fn apply_lr_scale(&mut self) {
        let (teacher, student, heads) = self.learning_rates();
        for (name, opt) in self.optimizers_mut() {
            opt.lr = match name {
                "student_kv" => student,
                "heads" => heads,
                _ => teacher,
            };
        }
    }

    /// Times every phase of an iteration, synchronising the GPU at each boundary (`trainer bench
    /// --profile`); off, a CUDA run logs no phases and never waits inside an iteration for them.
    pub fn set_profile(&mut self, profile: bool) {
        self.profile = profile;
    }

    /// Makes iteration `iteration` produce a NaN loss once (a failpoint for testing recovery).
    pub fn poison_iteration(&mut self, iteration: usize) {
        self.poison_at = Some(iteration);
    }

    /// What a checkpoint holds: the trained stores and their optimisers (the prefixes of
    /// [`Self::trained_stores`]).
    fn checkpoint_contents(&mut self) -> Contents<'_> {
        let mut stores = vec![
            ("token_rows", &self.rows.vs),
            ("student_kv", &self.kv_student.vs),
            ("heads", &self.losses.ensemble.heads),
        ];
        let mut optimizers = vec![
            ("token_rows", &mut self.opt_rows),
            ("student_kv", &mut self.opt_student),
        ];
        if let Some(h) = self.opt_heads.as_mut() {
            optimizers.push(("heads", h));
        }
        if let Some(TeacherNet { kv, opt, .. }) = self.teacher.as_mut() {
            stores.push(("teacher_kv", &kv.vs));
            optimizers.push(("teacher_kv", opt));
        }
        if let Some(StudentText { rows, opt, .. }) = self.student_text.as_mut() {
            stores.push(("student_token_rows", &rows.vs));
            optimizers.push(("student_token_rows", opt));
        }
        Contents { stores, optimizers }
    }

    /// Writes `run/checkpoint/` (trained weights, optimiser moments, generator states and the
    /// iteration; see [`run_checkpoint`]). `pause` is called at named points of the write (a
    /// failpoint for crash tests; a no-op otherwise).
    pub fn save_checkpoint(&mut self, run: &Path, pause: &dyn Fn(&str)) -> Result<()> {
        let state = json!({
            "iteration": self.iteration,
            "rng": self.rng.state(),
            "ms_swd_rng": self.losses.ms_swd.rng_mut().state(),
            "echo_ready": self.echo_ready,
            "lr_scale": self.lr_scale,
            "recoveries": self.recoveries,
        });
        run_checkpoint::save(run, self.checkpoint_contents(), state, pause)
    }

    /// Restores `run/checkpoint/` (or the previous one, if a crash interrupted the swap).
    pub fn load_checkpoint(&mut self, run: &Path) -> Result<()> {
        let state = run_checkpoint::load(run, self.checkpoint_contents())?;
        self.rng = GaussianRng::from_state(run_checkpoint::rng_state(&state, "rng")?);
        *self.losses.ms_swd.rng_mut() =
            GaussianRng::from_state(run_checkpoint::rng_state(&state, "ms_swd_rng")?);
        self.iteration = run_checkpoint::iteration(&state)?;
        self.lr_scale = state["lr_scale"].as_f64().unwrap_or(1.0);
        self.recoveries = state["recoveries"].as_u64().unwrap_or(0) as usize;
        self.apply_lr_scale();
        if state["echo_ready"].as_bool().unwrap_or(false) {
            self.load_echo(run)?;
        } else {
            self.photos = self.real_photos.clone();
            self.echo_ready = false;
        }
        Ok(())
    }

    /// Whether the echo stage's samples are the training set now.
    pub fn in_echo_stage(&self) -> bool {
        self.echo_ready
    }

    /// Where each training image of the current stage came from.
    pub fn training_sources(&self) -> Vec<PathBuf> {
        self.photos.iter().map(|(_, p)| p.path.clone()).collect()
    }

    fn use_echo(&mut self, samples: Vec<(usize, Photo)>) {
        self.photos = samples;
        if self.config.echo.mix_real {
            self.photos.extend(self.real_photos.iter().cloned());
        }
        self.echo_ready = true;
    }

    /// The student's networks, as trained so far (its own encoder in the unshared ablation).
    pub fn student_networks(&self) -> Networks<'_> {
        Networks {
            tokenizer: &self.tokenizer,
            text_encoder: match &self.student_text {
                Some(own) => &own.text.model,
                None => &self.text.model,
            },
            unet: &self.student.model,
            vae: &self.vae.model,
            device: self.device,
            kind: self.kind,
        }
    }

    /// The teacher's networks, as trained so far.
    pub fn teacher_networks(&self) -> Option<Networks<'_>> {
        self.teacher.as_ref().map(|t| Networks {
            tokenizer: &self.tokenizer,
            text_encoder: &self.text.model,
            unet: &t.unet.model,
            vae: &self.vae.model,
            device: self.device,
            kind: self.kind,
        })
    }

    /// A scheduler of the student (`kind` overrides its class) set to `steps`.
    pub fn student_scheduler(
        &self,
        kind: Option<SchedulerKind>,
        steps: usize,
    ) -> Result<Scheduler> {
        scheduler_with(&self.student_scheduler_config, kind, steps)
    }

    /// The teacher's own scheduler set to `steps`.
    pub fn teacher_scheduler(&self, steps: usize) -> Result<Option<Scheduler>> {
        self.teacher
            .as_ref()
            .map(|t| scheduler_with(&t.scheduler, None, steps))
            .transpose()
    }

    /// The student's self-attention (attn1) layers by diffusers path, sorted.
    pub fn student_self_attention_layers(&self) -> Vec<String> {
        super::outputs::self_attention_layers(&self.student.vs)
    }

    /// "<token> <class>" of each concept.
    pub fn subjects(&self) -> &[String] {
        &self.subjects
    }

    /// The echo stage's data (SPEC §5): `echo.samples` one-step student samples of varied
    /// scene prompts with each concept's token, written to `run/echo/NNN.png`, then used in
    /// place of the photos (beside them with `echo.mix_real`).
    pub fn generate_echo(&mut self, run: &Path) -> Result<()> {
        let dir = run.join("echo");
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        let res = self.config.resolution;
        let factor = self.vae.model.config().downscale_factor();
        let shape = [
            1,
            self.student.model.config().in_channels,
            res / factor,
            res / factor,
        ];
        let scaling = self.vae.model.config().scaling_factor;
        let mut samples = Vec::new();
        for i in 0..self.config.echo.samples {
            let concept = i % self.subjects.len();
            let subject = self.subjects[concept].clone();
            let text = echo_prompt(&subject, &mut self.rng);
            let z = self.normal(&shape);
            let image = tch::no_grad(|| -> Result<Tensor> {
                let context = self
                    .embed_student(std::slice::from_ref(&text))
                    .to_kind(self.kind);
                let (x0, _) = self.one_step(&z, &context, false)?;
                let decoded = self.vae.model.decode(&(x0 / scaling).to_kind(self.kind));
                Ok(decoded.to_kind(Kind::Float).clamp(-1.0, 1.0))
            })?;
            let img = crate::sampling::to_rgb_image(&image.get(0))?;
            let path = dir.join(format!("{i:03}.png"));
            write_png(&img, &path)?;
            samples.push((concept, Photo { path, image: img }));
        }
        self.use_echo(samples);
        Ok(())
    }

    /// Reads the echo samples a checkpoint refers to.
    fn load_echo(&mut self, run: &Path) -> Result<()> {
        let mut samples = Vec::new();
        for i in 0..self.config.echo.samples {
            let path = run.join("echo").join(format!("{i:03}.png"));
            let image = image::open(&path)
                .with_context(|| {
                    format!("the checkpoint needs the echo sample {}", path.display())
                })?
                .to_rgb8();
            samples.push((i % self.subjects.len(), Photo { path, image }));
        }
        self.use_echo(samples);
        Ok(())
    }

    /// The config this run uses.
    pub fn config(&self) -> &FitConfig {
        &self.config
    }
}

/// A scheduler from `file` (`kind` overrides its class) set to `steps`.
pub(crate) fn scheduler_with(
    file: &SchedulerConfigFile,
    kind: Option<SchedulerKind>,
    steps: usize,
) -> Result<Scheduler> {
    let config = match kind {
        Some(kind) => SchedulerConfig::with_kind(file, kind)?,
        None => SchedulerConfig::from_file(file)?,
    };
    let mut scheduler = Scheduler::new(config);
    scheduler.set_timesteps(steps)?;
    Ok(scheduler)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A store with one trained variable whose gradient is `grad`.
    fn store_with_grad(grad: &[f32]) -> nn::VarStore {
        let vs = nn::VarStore::new(Device::Cpu);
        let w = vs
            .root()
            .var("w", &[grad.len() as i64], nn::Init::Const(1.0));
        (&w * Tensor::from_slice(grad)).sum(Kind::Float).backward();
        vs
    }

    fn grad_of(vs: &nn::VarStore) -> Vec<f32> {
        Vec::<f32>::try_from(vs.trainable_variables()[0].grad()).unwrap()
    }

    #[test]
    fn clipping_on_the_device_matches_the_host_formula_bit_for_bit() {
        let grad = [3.0f32, -4.0, 0.125, 7.5];
        // The former host-side version: the norm read as f64, the factor max / (norm + 1e-6)
        // applied as an f32 scalar only when below 1.
        let norm = Tensor::from_slice(&grad).norm().double_value(&[]);
        for max in [1.0, 2.5, 1e3] {
            let vs = store_with_grad(&grad);
            let got = clip_gradients(&vs, max).unwrap().double_value(&[]);
            assert_eq!(got, norm);
            let factor = max / (norm + 1e-6);
            let want: Vec<f32> = if factor < 1.0 {
                grad.iter().map(|&g| g * factor as f32).collect()
            } else {
                grad.to_vec()
            };
            assert_eq!(grad_of(&vs), want, "max {max}");
        }
        assert!(clip_gradients(&nn::VarStore::new(Device::Cpu), 1.0).is_none());
    }
}

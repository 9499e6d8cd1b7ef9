//! The distillation stage (SPEC §4): per iteration a teacher step on the real photos, a student
//! step against the teacher's denoised target and the discriminators, and a discriminator step;
//! then the echo stage (SPEC §5): the same loop with the student's own samples as the photos.
//! Teacher and student share the teacher's text encoder; only the cross-attention K/V copies,
//! the new token rows and the discriminator heads train.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, ensure, Context, Result};
use runtime::scheduler::config::SchedulerConfigFile;
use runtime::scheduler::{PredictionType, SchedulerConfig};
use runtime::{ClipTokenizer, GaussianRng, Scheduler};
use serde_json::json;
use tch::nn;
use tch::{Device, Kind, Tensor};

use super::config::FitConfig;
use super::data::{augment, echo_prompt, load_photos, prompt, Photo};
use super::optim::AdamW;
use super::trainable::{CrossAttentionKv, TokenRows};
use crate::checkpoint::{load_text_encoder, load_unet, load_vae, model_dir, LoadOptions, Loaded};
use crate::device::{parse_device, parse_kind};
use crate::discriminator::Backbone;
use crate::losses::adversarial::AdversarialLoss;
use crate::losses::alignment::AlignmentWeights;
use crate::losses::stack::{LossStack, StackConfig};
use crate::models::clip_text::ClipTextModel;
use crate::models::unet_2d_condition::UNet2DConditionModel;
use crate::models::vae::AutoencoderKL;
use crate::sampling::apply_step;

/// The smallest crop side relative to the photo's short side in the augmentation.
const MIN_CROP_SCALE: f64 = 0.6;

/// Everything a run holds.
pub struct Distiller {
    config: FitConfig,
    device: Device,
    kind: Kind,
    /// The teacher's tokenizer with the added tokens.
    pub tokenizer: ClipTokenizer,
    text: Loaded<ClipTextModel>,
    teacher: Loaded<UNet2DConditionModel>,
    student: Loaded<UNet2DConditionModel>,
    vae: Loaded<AutoencoderKL>,
    teacher_prediction: PredictionType,
    alphas_cumprod: Vec<f32>,
    student_scheduler: Scheduler,
    /// The teacher's trained K/V.
    pub kv_teacher: CrossAttentionKv,
    /// The student's trained K/V.
    pub kv_student: CrossAttentionKv,
    /// The new token rows.
    pub rows: TokenRows,
    /// Losses and discriminators.
    pub losses: LossStack,
    opt_teacher: AdamW,
    opt_rows: AdamW,
    opt_student: AdamW,
    opt_heads: Option<AdamW>,
    photos: Vec<(usize, Photo)>,
    real_photos: Vec<(usize, Photo)>,
    echo_ready: bool,
    subjects: Vec<String>,
    rng: GaussianRng,
    iteration: usize,
}

/// One iteration's numbers, as logged.
#[derive(Debug, Clone)]
pub struct StepLog {
    /// 1-based iteration.
    pub iteration: usize,
    /// The teacher's diffusion loss.
    pub teacher_loss: f64,
    /// c(t') = ᾱ_t'.
    pub c_t: f64,
    /// The student's total loss and its terms.
    pub student_loss: f64,
    /// L_id.
    pub identity: f64,
    /// L_mse.
    pub mse: f64,
    /// L_swd.
    pub swd: f64,
    /// Σ_k adversarial.
    pub adversarial: f64,
    /// The discriminators' loss.
    pub discriminator_loss: f64,
    /// Gradient norms before clipping.
    pub grad_norm_teacher: f64,
    /// Student K/V gradient norm.
    pub grad_norm_student: f64,
    /// Seconds the iteration took.
    pub seconds: f64,
}

fn optimizer(vs: &nn::VarStore, config: &FitConfig, lr: f64) -> Result<AdamW> {
    Ok(AdamW::new(vs, lr, &config.adam))
}

/// The L2 norm of all gradients of `vs`, then scales them to at most `max` (0 when none).
fn clip_gradients(vs: &nn::VarStore, max: f64) -> f64 {
    tch::no_grad(|| {
        let grads: Vec<Tensor> = vs
            .trainable_variables()
            .iter()
            .map(Tensor::grad)
            .filter(Tensor::defined)
            .collect();
        if grads.is_empty() {
            return 0.0;
        }
        let norms: Vec<Tensor> = grads
            .iter()
            .map(|g| g.norm().to_kind(Kind::Double))
            .collect();
        let total = Tensor::stack(&norms, 0).norm().double_value(&[]);
        let coef = max / (total + 1e-6);
        if coef < 1.0 {
            for mut g in grads {
                let _ = g.g_mul_scalar_(coef);
            }
        }
        total
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

fn scheduler_config(model: &Path) -> Result<SchedulerConfigFile> {
    let path = model.join("scheduler").join("scheduler_config.json");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{}: malformed JSON", path.display()))
}

impl Distiller {
    /// Loads the models, adds the tokens, attaches what trains, and reads the photos; refuses
    /// bad input before any training.
    pub fn new(config: FitConfig) -> Result<Self> {
        config.validate()?;
        let device = parse_device(&config.device)?;
        let kind = parse_kind(&config.dtype)?;
        let mut rng = GaussianRng::new(config.seed);

        let mut photos = Vec::new();
        for (i, c) in config.concepts.iter().enumerate() {
            let loaded = load_photos(&c.images)?;
            if loaded.len() == 1 {
                eprintln!(
                    "warning: {} has one photo; 3-5 photos teach a concept better",
                    c.images.display()
                );
            }
            photos.extend(loaded.into_iter().map(|p| (i, p)));
        }

        let teacher_dir = model_dir(&config.teacher)?;
        let student_dir = model_dir(&config.student)?;
        let towers = config
            .towers
            .clone()
            .context("towers: give the folder with dino-v1/, dino-v2/, image_encoder/ and ip-adapter.safetensors")?;
        let opts = LoadOptions {
            device,
            kind,
            variant: None,
        };
        let mut tokenizer = ClipTokenizer::from_dir(&teacher_dir.join("tokenizer"))?;
        let base_ids = tokenizer.len() as i64;
        let mut new_rows = Vec::new();
        let mut subjects = Vec::new();
        for c in &config.concepts {
            let init_word = c.init_word.clone().unwrap_or_else(|| c.class.clone());
            let init = tokenizer.tokenize(&init_word);
            if init.len() != 1 {
                bail!(
                    "initializer word {init_word:?} of {} is {} tokens; choose a word that is one token (e.g. \"dog\")",
                    c.token,
                    init.len()
                );
            }
            tokenizer.add_token(&c.token)?;
            new_rows.push((c.token.clone(), vec![i64::from(init[0])]));
            subjects.push(format!("{} {}", c.token, c.class));
        }
        let mut text = load_text_encoder(&teacher_dir.join("text_encoder"), opts)?;
        ensure!(
            text.model.num_ids() == base_ids,
            "the teacher's text encoder has {} token rows but its tokenizer {base_ids} ids",
            text.model.num_ids()
        );
        let rows = TokenRows::attach(&mut text.model, &new_rows, device)?;

        let mut teacher = load_unet(&teacher_dir.join("unet"), opts)?;
        let mut student = load_unet(&student_dir.join("unet"), opts)?;
        let vae = load_vae(&student_dir.join("vae"), opts)?;
        let factor = vae.model.config().downscale_factor();
        ensure!(
            config.resolution % factor == 0,
            "resolution {} is not a multiple of {factor}",
            config.resolution
        );
        let kv_teacher = CrossAttentionKv::attach(&mut teacher.model, device)?;
        let kv_student = CrossAttentionKv::attach(&mut student.model, device)?;

        let teacher_sched = SchedulerConfig::from_file(&scheduler_config(&teacher_dir)?)?;
        let mut student_scheduler = Scheduler::new(SchedulerConfig::from_file(&scheduler_config(
            &student_dir,
        )?)?);
        student_scheduler.set_timesteps(1)?;
        let alphas_cumprod = runtime::scheduler::NoiseSchedule::new(
            &teacher_sched.betas,
            teacher_sched.num_train_timesteps,
        )
        .alphas_cumprod;

        let stack_config = StackConfig {
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
            dino_v1_size: None,
            dino_v2_size: Some(config.dino_v2_size),
            seed: config.seed.wrapping_add(1),
        };
        let losses = LossStack::load(&towers, opts, &stack_config)?;

        let student_lr = config.lr_student
            * if config.scale_student_lr_by_batch {
                config.batch_size as f64
            } else {
                1.0
            };
        // Heads start from the run's generator, not torch's global one, so a seed fixes the run
        // whatever else the process does.
        init_heads(&losses.ensemble.heads, &mut rng);
        let opt_teacher = optimizer(&kv_teacher.vs, &config, config.lr_teacher)?;
        let opt_rows = optimizer(&rows.vs, &config, config.lr_teacher)?;
        let opt_student = optimizer(&kv_student.vs, &config, student_lr)?;
        let opt_heads = if losses.ensemble.members.is_empty() {
            None
        } else {
            Some(optimizer(
                &losses.ensemble.heads,
                &config,
                config.lr_discriminator,
            )?)
        };
        let _ = rng.next_u64();
        Ok(Self {
            teacher_prediction: teacher_sched.prediction_type,
            config,
            device,
            kind,
            tokenizer,
            text,
            teacher,
            student,
            vae,
            alphas_cumprod,
            student_scheduler,
            kv_teacher,
            kv_student,
            rows,
            losses,
            opt_teacher,
            opt_rows,
            opt_student,
            opt_heads,
            real_photos: photos.clone(),
            photos,
            echo_ready: false,
            subjects,
            rng,
            iteration: 0,
        })
    }

    /// Text embeddings for `prompts` through the shared encoder (with grad to the token rows).
    fn embed(&self, prompts: &[String]) -> Tensor {
        let ids: Vec<i64> = prompts
            .iter()
            .flat_map(|p| self.tokenizer.encode(p).ids.into_iter().map(i64::from))
            .collect();
        let ids = Tensor::from_slice(&ids)
            .view([prompts.len() as i64, self.tokenizer.max_length() as i64]);
        self.text.model.forward(&ids.to_device(self.device))
    }

    fn timestep(&mut self) -> usize {
        (self.rng.next_u64() % self.alphas_cumprod.len() as u64) as usize
    }

    fn normal(&mut self, shape: &[i64]) -> Tensor {
        let n: i64 = shape.iter().product();
        Tensor::from_slice(&self.rng.normal(n as usize))
            .view(shape)
            .to_device(self.device)
    }

    /// √ᾱ_t and √(1 − ᾱ_t) per sample, shaped to broadcast over latents.
    fn coefficients(&self, ts: &[usize]) -> (Tensor, Tensor) {
        let a: Vec<f32> = ts.iter().map(|&t| self.alphas_cumprod[t].sqrt()).collect();
        let b: Vec<f32> = ts
            .iter()
            .map(|&t| (1.0 - self.alphas_cumprod[t]).sqrt())
            .collect();
        let shape = [ts.len() as i64, 1, 1, 1];
        (
            Tensor::from_slice(&a).view(shape).to_device(self.device),
            Tensor::from_slice(&b).view(shape).to_device(self.device),
        )
    }

    /// A batch of augmented photos in [-1, 1] and their prompts.
    fn batch(&mut self) -> (Tensor, Vec<String>) {
        let mut images = Vec::new();
        let mut prompts = Vec::new();
        for _ in 0..self.config.batch_size {
            let k = (self.rng.next_u64() % self.photos.len() as u64) as usize;
            let (concept, photo) = (self.photos[k].0, self.photos[k].1.image.clone());
            images.push(augment(
                &photo,
                self.config.resolution as u32,
                MIN_CROP_SCALE,
                &mut self.rng,
            ));
            let subject = self.subjects[concept].clone();
            prompts.push(prompt(&subject, &mut self.rng));
        }
        (Tensor::stack(&images, 0).to_device(self.device), prompts)
    }

    fn x0_from_prediction(&self, pred: &Tensor, x_t: &Tensor, a: &Tensor, b: &Tensor) -> Tensor {
        match self.teacher_prediction {
            PredictionType::Epsilon => (x_t - b * pred) / a,
            PredictionType::VPrediction => a * x_t - b * pred,
            PredictionType::Sample => pred.shallow_clone(),
        }
    }

    /// One iteration of SPEC §4: teacher step, student step, discriminator step.
    pub fn step(&mut self) -> Result<StepLog> {
        let start = Instant::now();
        self.iteration += 1;
        let (images, prompts) = self.batch();
        let b = images.size()[0];
        let scaling = self.vae.model.config().scaling_factor;

        // 1. Teacher: the diffusion loss on the real photos (trains teacher K/V and token rows).
        let x0 = tch::no_grad(|| {
            let posterior = self.vae.model.encode(&images.to_kind(self.kind));
            // From the run's own generator, so a checkpoint captures every random draw.
            let size = posterior.mean.size();
            let n: i64 = size.iter().product();
            let noise = Tensor::from_slice(&self.rng.normal(n as usize))
                .view(size.as_slice())
                .to_device(self.device)
                .to_kind(posterior.mean.kind());
            posterior.sample_with(&noise).to_kind(Kind::Float) * scaling
        });
        let ts: Vec<usize> = (0..b).map(|_| self.timestep()).collect();
        let eps = self.normal(&x0.size());
        let (a, s) = self.coefficients(&ts);
        let x_t = &a * &x0 + &s * &eps;
        let target = match self.teacher_prediction {
            PredictionType::Epsilon => eps.shallow_clone(),
            PredictionType::VPrediction => &a * &eps - &s * &x0,
            PredictionType::Sample => x0.shallow_clone(),
        };
        let t_tensor = Tensor::from_slice(&ts.iter().map(|&t| t as f32).collect::<Vec<_>>())
            .to_device(self.device);
        let context = self.embed(&prompts);
        let pred = self.teacher.model.forward(
            &x_t.to_kind(self.kind),
            &t_tensor,
            &context.to_kind(self.kind),
        );
        let teacher_loss = (pred.to_kind(Kind::Float) - &target)
            .square()
            .mean(Kind::Float);
        self.opt_teacher.zero_grad();
        self.opt_rows.zero_grad();
        teacher_loss.backward();
        let grad_norm_teacher = clip_gradients(&self.kv_teacher.vs, self.config.max_grad_norm);
        clip_gradients(&self.rows.vs, self.config.max_grad_norm);
        self.opt_teacher.step();
        self.opt_rows.step();

        // 2. Student: one step from noise, scored against the teacher's denoised target.
        let context_s = tch::no_grad(|| self.embed(&prompts)).to_kind(self.kind);
        let z = self.normal(&x0.size());
        let sched = &self.student_scheduler;
        let latents = &z * f64::from(sched.init_noise_sigma());
        let x_in = (&latents * f64::from(sched.model_input_scale(0)?)).to_kind(self.kind);
        let t_student = Tensor::from_slice(&[sched.timesteps()[0]]).to_device(self.device);
        let eps_hat = self
            .student
            .model
            .forward(&x_in, &t_student, &context_s)
            .to_kind(Kind::Float);
        let x_s = apply_step(&sched.step_coefficients(0)?, &latents, &eps_hat, None).0;
        // Re-noise at one t' for the batch, reusing z as the authors' code does.
        let t_prime = self.timestep();
        let c_t = f64::from(self.alphas_cumprod[t_prime]);
        let (a2, s2) = self.coefficients(&vec![t_prime; b as usize]);
        let target_x0 = tch::no_grad(|| -> Result<Tensor> {
            let x_tp = &a2 * x_s.detach() + &s2 * &z;
            let guided = self.config.teacher_guidance > 1.0;
            let t = Tensor::from_slice(&vec![t_prime as f32; b as usize]).to_device(self.device);
            let pred = if guided {
                let uncond = self
                    .embed(&vec![String::new(); b as usize])
                    .to_kind(self.kind);
                let ctx = Tensor::cat(&[uncond, context_s.shallow_clone()], 0);
                let x_in = Tensor::cat(&[&x_tp, &x_tp], 0).to_kind(self.kind);
                let out = self
                    .teacher
                    .model
                    .forward(&x_in, &Tensor::cat(&[&t, &t], 0), &ctx)
                    .to_kind(Kind::Float);
                let parts = out.chunk(2, 0);
                &parts[0] + (&parts[1] - &parts[0]) * self.config.teacher_guidance
            } else {
                self.teacher
                    .model
                    .forward(&x_tp.to_kind(self.kind), &t, &context_s)
                    .to_kind(Kind::Float)
            };
            Ok(self.x0_from_prediction(&pred, &x_tp, &a2, &s2))
        })?;
        let student_images = self
            .vae
            .model
            .decode(&(&x_s / scaling).to_kind(self.kind))
            .to_kind(Kind::Float);
        let target_images = tch::no_grad(|| {
            self.vae
                .model
                .decode(&(&target_x0 / scaling).to_kind(self.kind))
                .to_kind(Kind::Float)
        });
        let loss =
            self.losses
                .student_loss(&x_s, &target_x0, &student_images, &target_images, c_t)?;
        self.opt_student.zero_grad();
        loss.total.backward();
        let grad_norm_student = clip_gradients(&self.kv_student.vs, self.config.max_grad_norm);
        self.opt_student.step();

        // 3. Discriminators: real photos against the student's images.
        let mut discriminator_loss = 0.0;
        if let Some(opt) = self.opt_heads.as_mut() {
            let d = self
                .losses
                .ensemble
                .discriminator_loss(&images, &student_images.detach())?;
            opt.zero_grad();
            d.backward();
            clip_gradients(&self.losses.ensemble.heads, self.config.max_grad_norm);
            opt.step();
            discriminator_loss = d.double_value(&[]);
        }
        Ok(StepLog {
            iteration: self.iteration,
            teacher_loss: teacher_loss.double_value(&[]),
            c_t,
            student_loss: loss.total.double_value(&[]),
            identity: loss.identity,
            mse: loss.mse,
            swd: loss.swd,
            adversarial: loss.adversarial,
            discriminator_loss,
            grad_norm_teacher,
            grad_norm_student,
            seconds: start.elapsed().as_secs_f64(),
        })
    }

    /// Every store that must not change during training, by name (for checks and audits).
    pub fn frozen_stores(&self) -> Vec<(String, &nn::VarStore)> {
        let mut stores = vec![
            ("text_encoder".to_string(), &self.text.vs),
            ("teacher_unet".to_string(), &self.teacher.vs),
            ("student_unet".to_string(), &self.student.vs),
            ("vae".to_string(), &self.vae.vs),
            ("ip_image_encoder".to_string(), &self.losses.ip.encoder.vs),
            ("ip_projection".to_string(), &self.losses.ip.projection.0),
        ];
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

    /// Iterations done so far.
    pub fn iteration(&self) -> usize {
        self.iteration
    }

    fn optimizers(&self) -> Vec<(&'static str, &AdamW)> {
        let mut v = vec![
            ("teacher_kv", &self.opt_teacher),
            ("token_rows", &self.opt_rows),
            ("student_kv", &self.opt_student),
        ];
        if let Some(h) = &self.opt_heads {
            v.push(("heads", h));
        }
        v
    }

    fn trained_stores(&self) -> [(&'static str, &nn::VarStore); 4] {
        [
            ("teacher_kv", &self.kv_teacher.vs),
            ("token_rows", &self.rows.vs),
            ("student_kv", &self.kv_student.vs),
            ("heads", &self.losses.ensemble.heads),
        ]
    }

    /// Writes `run/checkpoint/` (trained weights, optimiser moments, generator states and the
    /// iteration) into a fresh folder beside it, then swaps it in, so a crash at any moment
    /// leaves a complete checkpoint (the new one or the previous one).
    pub fn save_checkpoint(&mut self, run: &Path) -> Result<()> {
        let mut tensors: Vec<(String, Tensor)> = Vec::new();
        for (prefix, vs) in self.trained_stores() {
            for (name, t) in vs.variables() {
                tensors.push((
                    format!("{prefix}.{name}"),
                    t.detach().to_device(Device::Cpu),
                ));
            }
        }
        let mut steps = serde_json::Map::new();
        for (prefix, opt) in self.optimizers() {
            let (state, n) = opt.state(&format!("adam.{prefix}"));
            tensors.extend(
                state
                    .into_iter()
                    .map(|(k, t)| (k, t.to_device(Device::Cpu))),
            );
            steps.insert(prefix.to_string(), json!(n));
        }
        let state = json!({
            "iteration": self.iteration,
            "rng": self.rng.state(),
            "ms_swd_rng": self.losses.ms_swd.rng_mut().state(),
            "adam_steps": steps,
            "echo_ready": self.echo_ready,
        });
        let dir = run.join("checkpoint");
        let tmp = run.join(format!(".checkpoint.tmp-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp)
            .with_context(|| format!("cannot create {}", tmp.display()))?;
        Tensor::write_safetensors(&tensors, tmp.join("state.safetensors"))
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        std::fs::write(
            tmp.join("state.json"),
            serde_json::to_string_pretty(&state)?,
        )?;
        let old = run.join(".checkpoint.old");
        let _ = std::fs::remove_dir_all(&old);
        if dir.exists() {
            std::fs::rename(&dir, &old)?;
        }
        std::fs::rename(&tmp, &dir)
            .with_context(|| format!("cannot move the checkpoint into {}", dir.display()))?;
        let _ = std::fs::remove_dir_all(&old);
        Ok(())
    }

    /// Restores `run/checkpoint/` (or the previous one, if a crash interrupted the swap).
    pub fn load_checkpoint(&mut self, run: &Path) -> Result<()> {
        let dir = [run.join("checkpoint"), run.join(".checkpoint.old")]
            .into_iter()
            .find(|d| d.join("state.json").is_file())
            .with_context(|| format!("{} has no checkpoint to resume from", run.display()))?;
        let state: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("state.json"))?)
                .with_context(|| format!("{}/state.json is malformed", dir.display()))?;
        let tensors: std::collections::HashMap<String, Tensor> =
            Tensor::read_safetensors(dir.join("state.safetensors"))
                .with_context(|| format!("cannot read {}/state.safetensors", dir.display()))?
                .into_iter()
                .collect();
        tch::no_grad(|| -> Result<()> {
            for (prefix, vs) in self.trained_stores() {
                for (name, var) in vs.variables() {
                    let saved = tensors
                        .get(&format!("{prefix}.{name}"))
                        .with_context(|| format!("the checkpoint lacks {prefix}.{name}"))?;
                    var.shallow_clone().copy_(saved);
                }
            }
            Ok(())
        })?;
        let steps = |k: &str| state["adam_steps"][k].as_i64().unwrap_or(0);
        self.opt_teacher
            .load_state("adam.teacher_kv", &tensors, steps("teacher_kv"))?;
        self.opt_rows
            .load_state("adam.token_rows", &tensors, steps("token_rows"))?;
        self.opt_student
            .load_state("adam.student_kv", &tensors, steps("student_kv"))?;
        if let Some(h) = self.opt_heads.as_mut() {
            h.load_state("adam.heads", &tensors, steps("heads"))?;
        }
        let rng = |k: &str| -> Result<[u64; 4]> {
            serde_json::from_value(state[k].clone()).with_context(|| format!("state.json: bad {k}"))
        };
        self.rng = GaussianRng::from_state(rng("rng")?);
        *self.losses.ms_swd.rng_mut() = GaussianRng::from_state(rng("ms_swd_rng")?);
        self.iteration = state["iteration"]
            .as_u64()
            .context("state.json: no iteration")? as usize;
        if state["echo_ready"].as_bool().unwrap_or(false) {
            self.load_echo(run)?;
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
                let sched = &self.student_scheduler;
                let context = self.embed(std::slice::from_ref(&text)).to_kind(self.kind);
                let latents = &z * f64::from(sched.init_noise_sigma());
                let x_in = (&latents * f64::from(sched.model_input_scale(0)?)).to_kind(self.kind);
                let t = Tensor::from_slice(&[sched.timesteps()[0]]).to_device(self.device);
                let eps = self
                    .student
                    .model
                    .forward(&x_in, &t, &context)
                    .to_kind(Kind::Float);
                let x0 = apply_step(&sched.step_coefficients(0)?, &latents, &eps, None).0;
                let decoded = self.vae.model.decode(&(x0 / scaling).to_kind(self.kind));
                Ok(decoded.to_kind(Kind::Float).clamp(-1.0, 1.0))
            })?;
            let chw: Vec<f32> = Vec::try_from(image.get(0).flatten(0, -1).to_device(Device::Cpu))?;
            let rgb = runtime::image_tensor::chw_to_rgb8(&chw, res as usize, res as usize);
            let img = image::RgbImage::from_raw(res as u32, res as u32, rgb)
                .context("echo image size")?;
            let path = dir.join(format!("{i:03}.png"));
            crate::checkpoint::write_beside(&path, |tmp| {
                img.save_with_format(tmp, image::ImageFormat::Png)
                    .with_context(|| format!("cannot write {}", path.display()))
            })?;
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

    /// Writes the trained weights, tokens, tokenizer and resolved config into `out`.
    pub fn save(&self, out: &Path) -> Result<()> {
        std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
        self.kv_student.save(&out.join("student.safetensors"))?;
        self.kv_teacher.save(&out.join("teacher.safetensors"))?;
        self.rows.save(&out.join("tokens.safetensors"))?;
        self.tokenizer.save_dir(&out.join("tokenizer"))?;
        let yaml = self.config.to_yaml()?;
        crate::checkpoint::write_text_atomic(&out.join("config.yaml"), &yaml)
    }
}

impl StepLog {
    /// One `log.jsonl` line.
    pub fn to_json(&self, lr: (f64, f64, f64)) -> serde_json::Value {
        json!({
            "iteration": self.iteration,
            "teacher_loss": self.teacher_loss,
            "c_t": self.c_t,
            "student_loss": self.student_loss,
            "identity": self.identity,
            "mse": self.mse,
            "swd": self.swd,
            "adversarial": self.adversarial,
            "discriminator_loss": self.discriminator_loss,
            "grad_norm_teacher": self.grad_norm_teacher,
            "grad_norm_student": self.grad_norm_student,
            "lr_teacher": lr.0,
            "lr_student": lr.1,
            "lr_discriminator": lr.2,
            "seconds": self.seconds,
        })
    }
}

/// Runs every iteration with a progress bar, appending to `out/log.jsonl`, checkpointing every
/// `save_every` iterations and at the end, then writes the results. With `resume`, continues
/// from `out/checkpoint` to the same final weights an uninterrupted run reaches.
pub fn run(config: FitConfig, out: &Path, resume: bool) -> Result<PathBuf> {
    let mut d = Distiller::new(config)?;
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let log_path = out.join("log.jsonl");
    if resume {
        d.load_checkpoint(out)?;
        // Drop log lines past the checkpoint: those iterations run again.
        let kept: Vec<String> = std::fs::read_to_string(&log_path)
            .unwrap_or_default()
            .lines()
            .take(d.iteration())
            .map(str::to_string)
            .collect();
        crate::checkpoint::write_text_atomic(
            &log_path,
            &kept.iter().map(|l| format!("{l}\n")).collect::<String>(),
        )?;
    } else {
        crate::checkpoint::write_text_atomic(&out.join("config.yaml"), &d.config().to_yaml()?)?;
        std::fs::write(&log_path, "")
            .with_context(|| format!("cannot write {}", log_path.display()))?;
    }
    let mut log = std::fs::OpenOptions::new()
        .append(true)
        .open(&log_path)
        .with_context(|| format!("cannot write {}", log_path.display()))?;
    let c = d.config().clone();
    let lrs = (
        c.lr_teacher,
        c.lr_student
            * if c.scale_student_lr_by_batch {
                c.batch_size as f64
            } else {
                1.0
            },
        c.lr_discriminator,
    );
    let total = c.total_iterations();
    let bar = indicatif::ProgressBar::new(total as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:30} {pos}/{len} it  {per_sec}  ETA {eta}  {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_position(d.iteration() as u64);
    while d.iteration() < total {
        if c.echo.enabled && d.iteration() >= c.iterations && !d.in_echo_stage() {
            // The stage boundary: checkpoint, sample the student, checkpoint again, so a crash
            // in between regenerates the same samples from the first checkpoint.
            d.save_checkpoint(out)?;
            bar.set_message("echo: sampling the student");
            d.generate_echo(out)?;
            d.save_checkpoint(out)?;
        }
        let s = d.step()?;
        writeln!(log, "{}", s.to_json(lrs))?;
        bar.set_message(format!(
            "teacher {:.4}  student {:.4}",
            s.teacher_loss, s.student_loss
        ));
        bar.inc(1);
        if c.save_every > 0 && d.iteration() % c.save_every == 0 && d.iteration() < total {
            d.save_checkpoint(out)?;
        }
    }
    bar.finish();
    d.save_checkpoint(out)?;
    d.save(out)?;
    Ok(log_path)
}

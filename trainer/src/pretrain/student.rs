//! Stage 5: the one-step student (the toy SD-Turbo), made from the teacher the way SD-Turbo was
//! made from SD 2.1 (adversarial diffusion distillation, Sauer et al. 2023):
//! - the student starts as a copy of the teacher's UNet and shares its frozen text encoder;
//! - it denoises real latents noised at one of its few timesteps (999, 749, 499, 249) in one
//!   step to x̂_0;
//! - distillation: x̂_0 is noised again at a random t′, the frozen teacher (with guidance)
//!   denoises it, and the student is pulled towards the teacher's x_0 with ADD's weight
//!   c(t′) = ᾱ_t′;
//! - adversarial: x̂_0 is decoded and judged by the project's discriminator ensemble (a trained
//!   head on the frozen toy DINO's features, hinge loss as ADD), whose head trains on real
//!   scenes against the student's;
//! - reconstruction (not in ADD): x̂_0 is also pulled towards the real latent it was noised from.
//!
//! The toy student departs from SD-Turbo in three ways, all set in config files or settings:
//! - it predicts v, not ε (`trainer/configs/toy/student/scheduler`), so its UNet's output is
//!   read through that config's `prediction_type` like every other model here;
//! - the reconstruction term above (`reconstruction_weight`);
//! - adversarial weight 0.1 (`adversarial_weight`).
//!
//! Why: one ε step from t = 999 multiplies the ε error by √(1−ᾱ)/√ᾱ ≈ 14.6. The toy teacher's ε
//! MSE of 0.0043 there is an x̂_0 MSE of 0.92, against a latent variance of 1.04, so its
//! one-step image is 8×8 blocks of noise. Plain ADD from that start kept the blocks: x̂_0 MSE
//! 1.00 after 1200 steps. At small t′ the teacher's target is the student's own output, at large
//! t′ its weight ᾱ_t′ is ~0, and a head on the small toy DINO is a weak critic that the noise
//! satisfies. With the reconstruction term, the ε student stayed at 1.04 after 732 steps at
//! adversarial weight 1. It reached 0.62 after 240 steps at weight 0, but its images were still
//! blocks. v (x̂_0 = √ᾱ·x_t − √(1−ᾱ)·v̂) does not amplify the error.

use anyhow::Result;
use runtime::scheduler::PredictionType;
use runtime::ClipTokenizer;
use serde::{Deserialize, Serialize};
use tch::{nn, Device, Kind, Tensor};

use super::latents::PoolLatents;
use super::pool::Pool;
use super::stage::Stage;
use crate::discriminator::Ensemble;
use crate::fit::config::Adam;
use crate::fit::optim::AdamW;
use crate::losses::alignment::timestep_weight;
use crate::losses::diffusion::{coefficients, mse, predicted_x0};
use crate::models::clip_text::ClipTextModel;
use crate::models::unet_2d_condition::UNet2DConditionModel;
use crate::models::vae::AutoencoderKL;
use crate::sampling::token_ids;

/// The student stage's settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct StudentSettings {
    /// Steps.
    pub steps: usize,
    /// Scenes per step.
    pub batch: usize,
    /// Peak learning rate of the student.
    pub lr: f64,
    /// Peak learning rate of the discriminator head.
    pub discriminator_lr: f64,
    /// The student's timesteps (SD-Turbo's four).
    pub timesteps: Vec<usize>,
    /// The teacher's guidance scale for distillation targets.
    pub guidance: f64,
    /// Weight of the distillation loss (ADD's λ = 2.5) against the adversarial loss (1).
    pub distillation_weight: f64,
    /// Weight of the latent MSE between x̂_0 and the real latent it was noised from (0: ADD).
    pub reconstruction_weight: f64,
    /// Weight of the adversarial loss (ADD's 1).
    pub adversarial_weight: f64,
}

impl Default for StudentSettings {
    fn default() -> Self {
        Self {
            steps: 1200,
            batch: 32,
            lr: 1e-4,
            discriminator_lr: 2e-4,
            timesteps: vec![999, 749, 499, 249],
            guidance: 4.0,
            distillation_weight: 2.5,
            reconstruction_weight: 1.0,
            adversarial_weight: 0.1,
        }
    }
}

/// The stage's key for batch draws.
pub const STREAM: u64 = 5;

/// The frozen networks the student learns from.
pub struct Frozen<'a> {
    /// The teacher's UNet.
    pub teacher: &'a UNet2DConditionModel,
    /// Its weights (the student's starting point).
    pub teacher_weights: &'a nn::VarStore,
    /// The shared text encoder.
    pub text: &'a ClipTextModel,
    /// The autoencoder (its decoder passes gradients to the student).
    pub vae: &'a AutoencoderKL,
    /// The tokenizer.
    pub tokenizer: &'a ClipTokenizer,
    /// ᾱ_t of the shared training schedule.
    pub alphas_cumprod: Vec<f32>,
    /// What the teacher's UNet predicts (its scheduler config's `prediction_type`).
    pub teacher_prediction: PredictionType,
    /// What the student's UNet is trained to predict (its scheduler config's).
    pub student_prediction: PredictionType,
}

/// The student being trained.
pub struct StudentStage<'a> {
    pool: &'a Pool,
    latents: &'a PoolLatents,
    frozen: Frozen<'a>,
    settings: StudentSettings,
    device: Device,
    /// The student's weights.
    pub vs: nn::VarStore,
    /// The student.
    pub unet: UNet2DConditionModel,
    ensemble: Ensemble,
    opt: AdamW,
    head_opt: AdamW,
    unconditional: Tensor,
}

impl<'a> StudentStage<'a> {
    /// A student copied from the teacher (`build` makes the architecture) and a fresh
    /// discriminator head.
    pub fn new(
        pool: &'a Pool,
        latents: &'a PoolLatents,
        frozen: Frozen<'a>,
        build: impl FnOnce(nn::Path) -> Result<UNet2DConditionModel>,
        ensemble: Ensemble,
        settings: StudentSettings,
        device: Device,
    ) -> Result<Self> {
        let mut vs = nn::VarStore::new(device);
        let unet = build(vs.root())?;
        vs.copy(frozen.teacher_weights)?;
        let opt = AdamW::new(&vs, settings.lr, &Adam::default());
        let head_opt = AdamW::new(
            &ensemble.heads,
            settings.discriminator_lr,
            &Adam {
                beta1: 0.0,
                beta2: 0.99,
                ..Adam::default()
            },
        );
        let unconditional = tch::no_grad(|| {
            frozen
                .text
                .forward(&token_ids(frozen.tokenizer, &[""], device))
        });
        Ok(Self {
            pool,
            latents,
            frozen,
            settings,
            device,
            vs,
            unet,
            ensemble,
            opt,
            head_opt,
            unconditional,
        })
    }
}

impl Stage for StudentStage<'_> {
    fn name(&self) -> &'static str {
        "student"
    }

    fn stores(&self) -> Vec<(&'static str, &nn::VarStore)> {
        vec![("unet", &self.vs), ("heads", &self.ensemble.heads)]
    }

    fn optimizers(&mut self) -> Vec<(&'static str, &mut AdamW)> {
        vec![("unet", &mut self.opt), ("heads", &mut self.head_opt)]
    }

    fn step(&mut self, step: usize, lr_scale: f64) -> Result<Vec<(&'static str, f64)>> {
        let s = &self.settings;
        let f = &self.frozen;
        let n = s.batch as i64;
        let idx = self.pool.draw(STREAM, step, s.batch);
        let x0 = self.latents.sample(&idx, self.device);
        let real = self.pool.images(&idx).to_device(self.device);
        let captions = self.pool.captions(&idx, 0.0, step);
        let context = tch::no_grad(|| {
            f.text
                .forward(&token_ids(f.tokenizer, &captions, self.device))
        });

        // The student's one step from a noised real latent.
        let pick = Tensor::randint(s.timesteps.len() as i64, [n], (Kind::Int64, Device::Cpu));
        let ts: Vec<usize> = Vec::<i64>::try_from(&pick)?
            .into_iter()
            .map(|k| s.timesteps[k as usize])
            .collect();
        let (a, sd) = coefficients(&f.alphas_cumprod, &ts, self.device);
        let xs = &x0 * &a + x0.randn_like() * &sd;
        let t_student = Tensor::from_slice(&ts.iter().map(|&t| t as f32).collect::<Vec<_>>())
            .to_device(self.device);
        let out = self.unet.forward(&xs, &t_student, &context);
        let x0_hat = predicted_x0(f.student_prediction, &xs, &out, &a, &sd);

        // The teacher's guided denoising of the student's output, noised again.
        let t2 = Tensor::randint(
            f.alphas_cumprod.len() as i64,
            [n],
            (Kind::Int64, Device::Cpu),
        );
        let ts2: Vec<usize> = Vec::<i64>::try_from(&t2)?
            .into_iter()
            .map(|v| v as usize)
            .collect();
        let (a2, s2) = coefficients(&f.alphas_cumprod, &ts2, self.device);
        let target = tch::no_grad(|| {
            let xt2 = x0_hat.detach() * &a2 + x0_hat.randn_like() * &s2;
            let t2f = t2.to_kind(Kind::Float).to_device(self.device);
            let both = f.teacher.forward(
                &Tensor::cat(&[&xt2, &xt2], 0),
                &Tensor::cat(&[&t2f, &t2f], 0),
                &Tensor::cat(
                    &[
                        context.shallow_clone(),
                        self.unconditional.expand([n, -1, -1], false),
                    ],
                    0,
                ),
            );
            let parts = both.chunk(2, 0);
            let guided = &parts[1] + (&parts[0] - &parts[1]) * s.guidance;
            predicted_x0(f.teacher_prediction, &xt2, &guided, &a2, &s2)
        });
        let weight = Tensor::from_slice(&timestep_weight(&f.alphas_cumprod, &ts2))
            .view([n, 1, 1, 1])
            .to_device(self.device);
        let distill = ((&x0_hat - &target).square() * weight).mean(Kind::Float);

        // The discriminators on the decoded one-step images, clamped to the range real images
        // have, so a head cannot tell them apart by values no real image takes.
        let fake = f
            .vae
            .decode(&(&x0_hat / self.latents.scaling()))
            .clamp(-1.0, 1.0);
        let fake_features = self.ensemble.features(&fake, None)?;
        let adversarial = self.ensemble.generator_loss_of(&fake_features, &fake);
        let reconstruction = mse(&x0_hat, &x0);
        let loss = &adversarial * s.adversarial_weight
            + &distill * s.distillation_weight
            + &reconstruction * s.reconstruction_weight;
        self.opt.lr = s.lr * lr_scale;
        self.opt.zero_grad();
        loss.backward();
        self.opt.step();

        // The frozen backbone's features of the fakes from above, detached (as fit does).
        let real_features = self.ensemble.features(&real, None)?;
        let d_loss = self
            .ensemble
            .discriminator_loss_of(&real_features, &fake_features)?;
        self.head_opt.lr = s.discriminator_lr * lr_scale;
        self.head_opt.zero_grad();
        d_loss.backward();
        self.head_opt.step();
        Ok(vec![
            ("distill", distill.double_value(&[])),
            ("recon", reconstruction.double_value(&[])),
            ("adv", adversarial.double_value(&[])),
            ("disc", d_loss.double_value(&[])),
        ])
    }
}

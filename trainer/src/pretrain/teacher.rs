//! Stage 4: the multi-step teacher (the toy SD 2.1): a UNet trained from scratch with the DDPM
//! loss on the autoencoder's latents (predicting what its scheduler config's `prediction_type`
//! names: ε for the toy teacher), conditioned on a text encoder trained with it
//! (the latent-diffusion paper's own text-to-image setup, where the transformer text encoder is
//! learned jointly; SD's is a frozen pre-trained CLIP, which this world does not have apart from
//! the evaluation one, kept separate on purpose). Captions are dropped 10% of the time so the
//! teacher also learns the unconditional prediction that classifier-free guidance needs. The
//! text encoder is frozen afterwards and shared with the student, as SD-Turbo shares SD 2.1's.

use anyhow::Result;
use runtime::scheduler::PredictionType;
use runtime::ClipTokenizer;
use serde::{Deserialize, Serialize};
use tch::{nn, Device, Kind, Tensor};

use super::latents::PoolLatents;
use super::pool::Pool;
use super::stage::Stage;
use crate::fit::config::Adam;
use crate::fit::optim::AdamW;
use crate::losses::diffusion::{coefficients, mse, target};
use crate::models::clip_text::{ClipTextConfig, ClipTextModel};
use crate::models::unet_2d_condition::{UNet2DConditionModel, UNetConfig};
use crate::sampling::token_ids;

/// The teacher stage's settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TeacherSettings {
    /// Steps.
    pub steps: usize,
    /// Scenes per step.
    pub batch: usize,
    /// Peak learning rate of the UNet and the text encoder.
    pub lr: f64,
    /// Share of captions replaced by "" (classifier-free guidance's unconditional branch).
    pub caption_dropout: f64,
}

impl Default for TeacherSettings {
    fn default() -> Self {
        Self {
            steps: 6000,
            batch: 64,
            lr: 5e-4,
            caption_dropout: 0.1,
        }
    }
}

/// The stage's key for batch draws.
pub const STREAM: u64 = 4;

/// The teacher being trained.
pub struct TeacherStage<'a> {
    pool: &'a Pool,
    latents: &'a PoolLatents,
    tokenizer: &'a ClipTokenizer,
    alphas_cumprod: Vec<f32>,
    prediction: PredictionType,
    settings: TeacherSettings,
    device: Device,
    /// The UNet's weights.
    pub unet_vs: nn::VarStore,
    /// The UNet.
    pub unet: UNet2DConditionModel,
    /// The text encoder's weights.
    pub text_vs: nn::VarStore,
    /// The text encoder.
    pub text: ClipTextModel,
    unet_opt: AdamW,
    text_opt: AdamW,
}

/// What a teacher-stage constructor needs besides the data.
pub struct TeacherParts<'a> {
    /// The UNet's config.
    pub unet: UNetConfig,
    /// The text encoder's config.
    pub text: ClipTextConfig,
    /// ᾱ_t of the teacher's scheduler.
    pub alphas_cumprod: Vec<f32>,
    /// What the UNet learns to predict (the scheduler's `prediction_type`).
    pub prediction: PredictionType,
    /// The tokenizer.
    pub tokenizer: &'a ClipTokenizer,
}

impl<'a> TeacherStage<'a> {
    /// A fresh UNet and text encoder.
    pub fn new(
        pool: &'a Pool,
        latents: &'a PoolLatents,
        parts: TeacherParts<'a>,
        settings: TeacherSettings,
        device: Device,
    ) -> Result<Self> {
        let unet_vs = nn::VarStore::new(device);
        let unet = UNet2DConditionModel::new(unet_vs.root(), parts.unet)?;
        let text_vs = nn::VarStore::new(device);
        let text = ClipTextModel::new(&text_vs.root(), parts.text)?;
        super::init_embeddings(&text_vs);
        let adam = Adam::default();
        Ok(Self {
            pool,
            latents,
            tokenizer: parts.tokenizer,
            alphas_cumprod: parts.alphas_cumprod,
            prediction: parts.prediction,
            unet_opt: AdamW::new(&unet_vs, settings.lr, &adam),
            text_opt: AdamW::new(&text_vs, settings.lr, &adam),
            settings,
            device,
            unet_vs,
            unet,
            text_vs,
            text,
        })
    }
}

impl Stage for TeacherStage<'_> {
    fn name(&self) -> &'static str {
        "teacher"
    }

    fn stores(&self) -> Vec<(&'static str, &nn::VarStore)> {
        vec![("unet", &self.unet_vs), ("text_encoder", &self.text_vs)]
    }

    fn optimizers(&mut self) -> Vec<(&'static str, &mut AdamW)> {
        vec![
            ("unet", &mut self.unet_opt),
            ("text_encoder", &mut self.text_opt),
        ]
    }

    fn step(&mut self, step: usize, lr_scale: f64) -> Result<Vec<(&'static str, f64)>> {
        let s = &self.settings;
        let idx = self.pool.draw(STREAM, step, s.batch);
        let x0 = self.latents.sample(&idx, self.device);
        let captions = self.pool.captions(&idx, s.caption_dropout, step);
        let context = self
            .text
            .forward(&token_ids(self.tokenizer, &captions, self.device));
        let n = self.alphas_cumprod.len() as i64;
        let t = Tensor::randint(n, [s.batch as i64], (Kind::Int64, Device::Cpu));
        let ts: Vec<usize> = Vec::<i64>::try_from(&t)?
            .into_iter()
            .map(|v| v as usize)
            .collect();
        let (a, sd) = coefficients(&self.alphas_cumprod, &ts, self.device);
        let eps = x0.randn_like();
        let xt = &x0 * &a + &eps * &sd;
        let pred = self.unet.forward(
            &xt,
            &t.to_kind(Kind::Float).to_device(self.device),
            &context,
        );
        let loss = mse(&pred, &target(self.prediction, &x0, &eps, &a, &sd));
        for opt in [&mut self.unet_opt, &mut self.text_opt] {
            opt.lr = s.lr * lr_scale;
            opt.zero_grad();
        }
        loss.backward();
        self.unet_opt.step();
        self.text_opt.step();
        Ok(vec![("eps_mse", loss.double_value(&[]))])
    }
}

//! Stage 1: the toy AutoencoderKL (8× down, 64×64×3 → 8×8×4), trained as the latent-diffusion
//! paper's first stage minus its perceptual and adversarial terms (flat toy scenes need
//! neither): L1 reconstruction of a posterior sample plus a small KL to N(0, I). The scaling
//! factor is then measured as the latent-diffusion paper did it, 1 / std of the latents.

use std::path::Path;

use anyhow::Result;
use serde::{Deserialize, Serialize};
use tch::{nn, Device, Kind, Tensor};

use super::pool::Pool;
use super::stage::Stage;
use crate::fit::config::Adam;
use crate::fit::optim::AdamW;
use crate::models::vae::{AutoencoderKL, VaeConfig};

/// The autoencoder stage's settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AutoencoderSettings {
    /// Steps.
    pub steps: usize,
    /// Scenes per step.
    pub batch: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Weight of the KL term (per latent element, against the per-pixel L1).
    pub kl_weight: f64,
}

impl Default for AutoencoderSettings {
    fn default() -> Self {
        Self {
            steps: 1500,
            batch: 32,
            lr: 1e-3,
            kl_weight: 1e-6,
        }
    }
}

/// The stage's key for batch draws.
pub const STREAM: u64 = 1;

/// The autoencoder being trained.
pub struct AutoencoderStage<'a> {
    pool: &'a Pool,
    settings: AutoencoderSettings,
    device: Device,
    /// The weights.
    pub vs: nn::VarStore,
    /// The network.
    pub vae: AutoencoderKL,
    opt: AdamW,
}

impl<'a> AutoencoderStage<'a> {
    /// A fresh autoencoder of `config`.
    pub fn new(
        pool: &'a Pool,
        config: VaeConfig,
        settings: AutoencoderSettings,
        device: Device,
    ) -> Self {
        let vs = nn::VarStore::new(device);
        let vae = AutoencoderKL::new(vs.root(), config);
        let opt = AdamW::new(&vs, settings.lr, &Adam::default());
        Self {
            pool,
            settings,
            device,
            vs,
            vae,
            opt,
        }
    }
}

impl Stage for AutoencoderStage<'_> {
    fn name(&self) -> &'static str {
        "vae"
    }

    fn stores(&self) -> Vec<(&'static str, &nn::VarStore)> {
        vec![("vae", &self.vs)]
    }

    fn optimizers(&mut self) -> Vec<(&'static str, &mut AdamW)> {
        vec![("vae", &mut self.opt)]
    }

    fn step(&mut self, step: usize, lr_scale: f64) -> Result<Vec<(&'static str, f64)>> {
        let idx = self.pool.draw(STREAM, step, self.settings.batch);
        let x = self.pool.images(&idx).to_device(self.device);
        let posterior = self.vae.encode(&x);
        let z = posterior.sample_with(&posterior.mean.randn_like());
        let rec = self.vae.decode(&z);
        let l1 = (&rec - &x).abs().mean(Kind::Float);
        let kl = (posterior.mean.square() + posterior.logvar.exp() - 1.0 - &posterior.logvar)
            .mean(Kind::Float)
            * 0.5;
        let loss = &l1 + &kl * self.settings.kl_weight;
        self.opt.lr = self.settings.lr * lr_scale;
        self.opt.zero_grad();
        loss.backward();
        self.opt.step();
        Ok(vec![
            ("l1", l1.double_value(&[])),
            ("kl", kl.double_value(&[])),
        ])
    }
}

/// The latent-diffusion scaling factor: 1 / std of posterior samples of `images`.
pub fn scaling_factor(vae: &AutoencoderKL, images: &Tensor) -> f64 {
    tch::no_grad(|| {
        let posterior = vae.encode(images);
        let z = posterior.sample_with(&posterior.mean.randn_like());
        1.0 / z.std(true).double_value(&[])
    })
}

/// Writes the trained autoencoder as a diffusers `vae/` folder with its measured scaling factor.
pub fn write_folder(vs: &nn::VarStore, config_text: &str, scaling: f64, dir: &Path) -> Result<()> {
    let mut config: serde_json::Value = serde_json::from_str(config_text)?;
    config["scaling_factor"] = scaling.into();
    super::write_component(dir, &config, vs, "diffusion_pytorch_model", |_| true)
}

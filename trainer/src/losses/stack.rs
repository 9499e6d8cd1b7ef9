//! The whole student loss of one iteration (SPEC §4 step 2), wired from a towers folder:
//! c(t')·(λ_id·L_id + λ_mse·L_mse + λ_swd·L_swd) + λ_adv·Σ_k L_adv,k (λ_adv = 1 in the paper),
//! and the discriminators' loss.

use std::path::Path;
use std::rc::Rc;

use anyhow::{ensure, Result};
use tch::Tensor;

use super::adversarial::AdversarialLoss;
use super::alignment::{identity_loss, latent_mse, AlignmentWeights};
use super::ms_swd::MsSwd;
use crate::checkpoint::LoadOptions;
use crate::discriminator::{Backbone, Ensemble};
use crate::towers::{dino_input, load_dino_v1, load_dino_v2, IpEncoder};

/// Which discriminators to use and how their inputs are prepared.
#[derive(Debug, Clone)]
pub struct StackConfig {
    /// Any subset of "dinov1", "dinov2", "ip".
    pub discriminators: Vec<String>,
    /// CE (default) or hinge.
    pub adversarial: AdversarialLoss,
    /// Apply the towers' normalisation (default) or feed [-1, 1] as the authors' code does.
    pub normalize: bool,
    /// λ weights.
    pub weights: AlignmentWeights,
    /// λ_adv, the adversarial terms' weight in the student's loss (1: the paper).
    pub adversarial_weight: f64,
    /// DINOv1 and IP encoder input side (224 for the real towers).
    pub dino_v1_size: Option<i64>,
    /// DINOv2 input side (518 for the real tower).
    pub dino_v2_size: Option<i64>,
    /// Seed of MS-SWD's directions.
    pub seed: u64,
    /// MS-SWD's pyramid levels (5 in the spec).
    pub swd_scales: usize,
}

impl Default for StackConfig {
    fn default() -> Self {
        Self {
            discriminators: vec!["dinov1".into(), "dinov2".into(), "ip".into()],
            adversarial: AdversarialLoss::CrossEntropy,
            normalize: true,
            weights: AlignmentWeights::default(),
            adversarial_weight: 1.0,
            dino_v1_size: None,
            dino_v2_size: Some(518),
            seed: 0,
            swd_scales: 5,
        }
    }
}

/// The loaded towers and loss settings.
pub struct LossStack {
    /// IP-Adapter encoder (identity loss and the IP discriminator).
    pub ip: Rc<IpEncoder>,
    /// The discriminators.
    pub ensemble: Ensemble,
    /// MS-SWD with its direction generator.
    pub ms_swd: MsSwd,
    /// λ weights.
    pub weights: AlignmentWeights,
    /// λ_adv.
    pub adversarial_weight: f64,
}

/// The terms of one student loss, for logging.
pub struct StudentLoss {
    /// The total to backpropagate.
    pub total: Tensor,
    /// L_id (detached, 0-dim; left on the device so that reading it waits for nothing).
    pub identity: Tensor,
    /// L_mse (detached).
    pub mse: Tensor,
    /// L_swd (detached).
    pub swd: Tensor,
    /// Σ_k L_adv,k (detached, before λ_adv).
    pub adversarial: Tensor,
    /// The discriminators' backbone features of the student's images, for the discriminator
    /// step (which detaches them) instead of a second pass through the frozen backbones.
    pub fake_features: Vec<Tensor>,
}

impl LossStack {
    /// Loads `dino-v1/`, `dino-v2/`, `image_encoder/` and `ip-adapter.safetensors` from `dir`
    /// (what `trainer init-tiny` writes in `towers/`; real towers in the same layout).
    pub fn load(dir: &Path, opts: LoadOptions, config: &StackConfig) -> Result<Self> {
        let ip = Rc::new(IpEncoder::load(
            &dir.join("image_encoder"),
            &dir.join("ip-adapter.safetensors"),
            opts,
            config.normalize,
        )?);
        let mut backbones = Vec::new();
        for name in &config.discriminators {
            backbones.push(match name.as_str() {
                "dinov1" => {
                    let m = load_dino_v1(&dir.join("dino-v1"), opts)?;
                    let size = config.dino_v1_size.unwrap_or_else(|| m.model.image_size());
                    Backbone::DinoV1(m, dino_input(size, config.normalize))
                }
                "dinov2" => {
                    let m = load_dino_v2(&dir.join("dino-v2"), opts)?;
                    let patch = m.model.patch_size();
                    let size = config.dino_v2_size.unwrap_or(518);
                    // The tiny tower's patch may not divide 518: round to a multiple.
                    let size = (size / patch).max(1) * patch;
                    Backbone::DinoV2(m, dino_input(size, config.normalize))
                }
                "ip" => Backbone::Ip(ip.clone()),
                other => {
                    anyhow::bail!("unknown discriminator {other:?}: choose from dinov1, dinov2, ip")
                }
            });
        }
        Ok(Self {
            ensemble: Ensemble::new(backbones, config.adversarial, opts.device)?,
            ip,
            ms_swd: MsSwd::new(config.swd_scales, config.seed),
            weights: config.weights,
            adversarial_weight: config.adversarial_weight,
        })
    }

    /// The student's loss for decoded images `student`/`target` (the teacher's x̂_0 decoded, no
    /// gradient) and latents, weighted by c(t') = ᾱ_t'.
    pub fn student_loss(
        &mut self,
        student_latents: &Tensor,
        target_latents: &Tensor,
        student_images: &Tensor,
        target_images: &Tensor,
        weight: f64,
    ) -> Result<StudentLoss> {
        ensure!(
            student_images.size() == target_images.size(),
            "student and target images differ in shape"
        );
        let target_tokens = tch::no_grad(|| self.ip.tokens(target_images))?;
        // One encoder pass serves the identity loss and the IP discriminator.
        let student_tokens = self.ip.tokens(student_images)?;
        let identity = identity_loss(&student_tokens, &target_tokens);
        let mse = latent_mse(student_latents, &target_latents.detach());
        let swd = self
            .ms_swd
            .forward(student_images, &target_images.detach())?
            .mean(identity.kind());
        let align = self.weights.combine(weight, &identity, &mse, &swd);
        let fake_features = self
            .ensemble
            .features(student_images, Some(&student_tokens))?;
        let adversarial = self
            .ensemble
            .generator_loss_of(&fake_features, student_images);
        Ok(StudentLoss {
            identity: identity.detach(),
            mse: mse.detach(),
            swd: swd.detach(),
            total: align + &adversarial * self.adversarial_weight,
            adversarial: adversarial.detach(),
            fake_features,
        })
    }

    /// The student's loss with no teacher target (the no-teacher ablation): the adversarial
    /// term alone, the alignment terms 0.
    pub fn adversarial_only(&self, student_images: &Tensor) -> Result<StudentLoss> {
        let fake_features = self.ensemble.features(student_images, None)?;
        let adversarial = self
            .ensemble
            .generator_loss_of(&fake_features, student_images);
        let zero = || Tensor::zeros([], (adversarial.kind(), adversarial.device()));
        Ok(StudentLoss {
            identity: zero(),
            mse: zero(),
            swd: zero(),
            total: &adversarial * self.adversarial_weight,
            adversarial: adversarial.detach(),
            fake_features,
        })
    }
}

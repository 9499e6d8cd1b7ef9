//! The discriminator ensemble (SPEC §4): each member is a frozen backbone (DINOv1, DINOv2 or the
//! IP-Adapter encoder) and a trainable head Linear(F, 512) → ReLU → Linear(512, 2). DINO heads
//! read the CLS feature; the IP head reads the 4 projected tokens flattened. Only the heads'
//! store is given to the optimiser.

use anyhow::{ensure, Result};
use tch::nn::{self, Module};
use tch::Tensor;

use crate::checkpoint::Loaded;
use crate::losses::adversarial::AdversarialLoss;
use crate::models::dinov2::Dinov2Model;
use crate::models::vit::VitModel;
use crate::towers::IpEncoder;
use crate::vision::{prepare, TowerInput};

/// A frozen feature extractor.
pub enum Backbone {
    /// DINOv1 ViT: the CLS token.
    DinoV1(Loaded<VitModel>, TowerInput),
    /// DINOv2: the CLS token.
    DinoV2(Loaded<Dinov2Model>, TowerInput),
    /// IP-Adapter encoder: the projected tokens, flattened.
    Ip(std::rc::Rc<IpEncoder>),
}

impl Backbone {
    /// Features (batch, F) of images in [-1, 1]; differentiable with respect to the images.
    pub fn features(&self, images: &Tensor) -> Result<Tensor> {
        Ok(match self {
            Self::DinoV1(m, input) => m.model.forward(&prepare(images, *input))?.select(1, 0),
            Self::DinoV2(m, input) => m.model.forward(&prepare(images, *input))?.select(1, 0),
            Self::Ip(ip) => ip.tokens(images)?.flatten(1, -1),
        })
    }

    /// A short name for logs and head variable paths.
    pub fn name(&self) -> &'static str {
        match self {
            Self::DinoV1(..) => "dinov1",
            Self::DinoV2(..) => "dinov2",
            Self::Ip(_) => "ip",
        }
    }

    /// The feature width F.
    pub fn feature_dim(&self) -> i64 {
        match self {
            Self::DinoV1(m, _) => m.model.hidden_size(),
            Self::DinoV2(m, _) => m.model.hidden_size(),
            Self::Ip(ip) => ip.projection.1.output_len(),
        }
    }
}

/// Linear(F, 512) → ReLU → Linear(512, 2), with variables `fc1` and `fc2`.
#[derive(Debug)]
pub struct Head {
    fc1: nn::Linear,
    fc2: nn::Linear,
}

/// The hidden width of every head.
pub const HEAD_HIDDEN: i64 = 512;

impl Head {
    /// Builds a head under `p` (in the trainable store).
    pub fn new(p: nn::Path, features: i64) -> Self {
        Self {
            fc1: nn::linear(&p / "fc1", features, HEAD_HIDDEN, Default::default()),
            fc2: nn::linear(&p / "fc2", HEAD_HIDDEN, 2, Default::default()),
        }
    }
}

impl Module for Head {
    fn forward(&self, x: &Tensor) -> Tensor {
        self.fc2.forward(&self.fc1.forward(x).relu())
    }
}

/// One member of the ensemble.
pub struct Discriminator {
    /// The frozen backbone.
    pub backbone: Backbone,
    /// The trainable head.
    pub head: Head,
}

/// Any subset of {dinov1, dinov2, ip} with their heads in one trainable store.
pub struct Ensemble {
    /// The members.
    pub members: Vec<Discriminator>,
    /// The heads' variables: the only thing the discriminator step updates.
    pub heads: nn::VarStore,
    /// The loss used for both steps.
    pub loss: AdversarialLoss,
}

impl Ensemble {
    /// Builds heads (fresh, in one store on `device`) for the given backbones (none: the
    /// no-discriminator ablation, whose adversarial loss is 0).
    pub fn new(
        backbones: Vec<Backbone>,
        loss: AdversarialLoss,
        device: tch::Device,
    ) -> Result<Self> {
        let heads = nn::VarStore::new(device);
        let mut members = Vec::new();
        for backbone in backbones {
            let dim = backbone.feature_dim();
            let head = Head::new(heads.root() / backbone.name(), dim);
            members.push(Discriminator { backbone, head });
        }
        Ok(Self {
            members,
            heads,
            loss,
        })
    }

    /// Each member's backbone features of images in [-1, 1], differentiable with respect to
    /// the images. The IP member takes `ip_tokens` when given: the identity loss has already run
    /// the encoder on these images, and one pass serves both.
    pub fn features(&self, images: &Tensor, ip_tokens: Option<&Tensor>) -> Result<Vec<Tensor>> {
        self.members
            .iter()
            .map(|m| match (&m.backbone, ip_tokens) {
                (Backbone::Ip(_), Some(tokens)) => Ok(tokens.flatten(1, -1)),
                (backbone, _) => backbone.features(images),
            })
            .collect()
    }

    /// Each member's logits (batch, 2) from its features (as [`Ensemble::features`] returns).
    pub fn logits_of(&self, features: &[Tensor]) -> Vec<Tensor> {
        self.members
            .iter()
            .zip(features)
            .map(|(m, f)| {
                // Heads run in f32 (f64 for gradient checks) whatever the backbone's precision.
                let kind = crate::losses::alignment::loss_kind(f);
                m.head.forward(&f.to_kind(kind))
            })
            .collect()
    }

    /// Each member's logits (batch, 2) for images in [-1, 1].
    pub fn logits(&self, images: &Tensor) -> Result<Vec<Tensor>> {
        Ok(self.logits_of(&self.features(images, None)?))
    }

    /// The student's adversarial loss Σ_k over generated images (gradients reach the images).
    pub fn generator_loss(&self, fake: &Tensor) -> Result<Tensor> {
        Ok(self.generator_loss_of(&self.features(fake, None)?, fake))
    }

    /// [`Ensemble::generator_loss`] from the members' features of the generated images
    /// (`fake` gives the zero's kind and device when there are no members).
    pub fn generator_loss_of(&self, fake_features: &[Tensor], fake: &Tensor) -> Tensor {
        if self.members.is_empty() {
            return Tensor::zeros(
                [],
                (crate::losses::alignment::loss_kind(fake), fake.device()),
            );
        }
        let terms: Vec<Tensor> = self
            .logits_of(fake_features)
            .iter()
            .map(|l| self.loss.generator(l))
            .collect();
        Tensor::stack(&terms, 0).sum(terms[0].kind())
    }

    /// The discriminators' loss Σ_k over real and (detached) generated images.
    pub fn discriminator_loss(&self, real: &Tensor, fake: &Tensor) -> Result<Tensor> {
        let fake_features = self.features(&fake.detach(), None)?;
        self.discriminator_loss_of(&self.features(real, None)?, &fake_features)
    }

    /// [`Ensemble::discriminator_loss`] from the members' features; the generated images'
    /// features are detached here, so the student's pass can hand over its own (the backbones
    /// are frozen: the values are the ones a fresh pass would compute).
    pub fn discriminator_loss_of(
        &self,
        real_features: &[Tensor],
        fake_features: &[Tensor],
    ) -> Result<Tensor> {
        ensure!(
            !self.members.is_empty(),
            "no discriminators to train (discriminators is empty)"
        );
        let fake: Vec<Tensor> = fake_features.iter().map(Tensor::detach).collect();
        let real_logits = self.logits_of(real_features);
        let fake_logits = self.logits_of(&fake);
        let terms: Vec<Tensor> = real_logits
            .iter()
            .zip(&fake_logits)
            .map(|(r, f)| self.loss.discriminator(r, f))
            .collect();
        Ok(Tensor::stack(&terms, 0).sum(terms[0].kind()))
    }
}

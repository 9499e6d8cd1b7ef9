//! The adversarial terms (SPEC §4). Each discriminator head outputs two logits, class 1 "real"
//! and class 0 "fake". Cross-entropy is the authors' code's choice and the default; hinge is
//! ADD's, on the score s = logit_real − logit_fake.

use tch::{Kind, Reduction, Tensor};

use super::alignment::loss_kind;

/// Which adversarial loss to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AdversarialLoss {
    /// Two-class cross-entropy (default, as the authors' code).
    #[default]
    CrossEntropy,
    /// Hinge (as ADD and the paper's text).
    Hinge,
}

/// Class index of real images.
pub const REAL: i64 = 1;
/// Class index of generated images.
pub const FAKE: i64 = 0;

fn labels(logits: &Tensor, class: i64) -> Tensor {
    Tensor::full([logits.size()[0]], class, (Kind::Int64, logits.device()))
}

fn cross_entropy(logits: &Tensor, class: i64) -> Tensor {
    logits
        .to_kind(loss_kind(logits))
        .cross_entropy_loss::<Tensor>(&labels(logits, class), None, Reduction::Mean, -100, 0.0)
}

fn score(logits: &Tensor) -> Tensor {
    let l = logits.to_kind(loss_kind(logits));
    l.select(1, REAL) - l.select(1, FAKE)
}

impl AdversarialLoss {
    /// The student's term for one discriminator: make generated images look real.
    pub fn generator(&self, fake_logits: &Tensor) -> Tensor {
        match self {
            Self::CrossEntropy => cross_entropy(fake_logits, REAL),
            Self::Hinge => -score(fake_logits).mean(loss_kind(fake_logits)),
        }
    }

    /// One discriminator's term: ½(CE(real → real) + CE(fake → fake)), or the hinge
    /// mean(relu(1 − s_real)) + mean(relu(1 + s_fake)).
    pub fn discriminator(&self, real_logits: &Tensor, fake_logits: &Tensor) -> Tensor {
        match self {
            Self::CrossEntropy => {
                (cross_entropy(real_logits, REAL) + cross_entropy(fake_logits, FAKE)) * 0.5
            }
            Self::Hinge => {
                let kind = loss_kind(real_logits);
                let real = (score(real_logits).neg() + 1.0).relu().mean(kind);
                real + (score(fake_logits) + 1.0).relu().mean(kind)
            }
        }
    }
}

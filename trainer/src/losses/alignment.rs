//! Alignment of the student's output x_s with the teacher's denoised target x̂_0 (SPEC §4):
//! L_align = c(t')·(λ_id·L_id + λ_mse·L_mse + λ_swd·L_swd), c(t') = ᾱ_t' (ADD's "exponential"
//! weighting).

use tch::{Kind, Tensor};

/// The kind losses are reduced in: f64 stays f64 (gradient checks), everything else is f32
/// (half-precision activations would lose the small terms).
pub fn loss_kind(t: &Tensor) -> Kind {
    if t.kind() == Kind::Double {
        Kind::Double
    } else {
        Kind::Float
    }
}

/// L_mse = ½·MSE over latents, averaged over every element.
pub fn latent_mse(student: &Tensor, target: &Tensor) -> Tensor {
    (student - target).square().mean(loss_kind(student)) * 0.5
}

/// L_id = 1 − cos over IP-Adapter's projected tokens (batch, tokens, dim), averaged over the
/// tokens and the batch.
pub fn identity_loss(student_tokens: &Tensor, target_tokens: &Tensor) -> Tensor {
    let cos = Tensor::cosine_similarity(student_tokens, target_tokens, -1, 1e-8);
    (cos.neg() + 1.0).mean(loss_kind(student_tokens))
}

/// c(t) = ᾱ_t for each timestep of the batch.
pub fn timestep_weight(alphas_cumprod: &[f32], timesteps: &[usize]) -> Vec<f32> {
    timesteps.iter().map(|&t| alphas_cumprod[t]).collect()
}

/// The λ weights of the alignment terms (defaults from SPEC §4).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AlignmentWeights {
    /// λ_id.
    pub identity: f64,
    /// λ_mse.
    pub mse: f64,
    /// λ_swd.
    pub swd: f64,
}

impl Default for AlignmentWeights {
    fn default() -> Self {
        Self {
            identity: 1.0,
            mse: 1.0,
            swd: 0.1,
        }
    }
}

impl AlignmentWeights {
    /// c·(λ_id·id + λ_mse·mse + λ_swd·swd), each term a scalar tensor.
    pub fn combine(&self, weight: f64, identity: &Tensor, mse: &Tensor, swd: &Tensor) -> Tensor {
        (identity * self.identity + mse * self.mse + swd * self.swd) * weight
    }
}

//! diffusers' sinusoidal `Timesteps` and the `TimestepEmbedding` MLP (models/embeddings.py).

use tch::nn::{self, Module};
use tch::{Kind, Tensor};

use super::linear;

/// `get_timestep_embedding`: sin/cos of t·10000^(−i/(half − shift)), halves swapped when
/// `flip_sin_to_cos`. Computed in f32 whatever the model's dtype.
pub fn timestep_embedding(
    timesteps: &Tensor,
    dim: i64,
    flip_sin_to_cos: bool,
    freq_shift: f64,
) -> Tensor {
    let half = dim / 2;
    let exponent = Tensor::arange(half, (Kind::Float, timesteps.device())) * (-(10000f64.ln()))
        / (half as f64 - freq_shift);
    let emb = timesteps.to_kind(Kind::Float).unsqueeze(1) * exponent.exp().unsqueeze(0);
    let emb = Tensor::cat(&[emb.sin(), emb.cos()], -1);
    let emb = if flip_sin_to_cos {
        Tensor::cat(&[emb.narrow(1, half, half), emb.narrow(1, 0, half)], -1)
    } else {
        emb
    };
    if dim % 2 == 1 {
        emb.constant_pad_nd([0, 1, 0, 0])
    } else {
        emb
    }
}

/// `linear_1` → SiLU → `linear_2`.
#[derive(Debug)]
pub struct TimestepEmbedding {
    linear_1: nn::Linear,
    linear_2: nn::Linear,
}

impl TimestepEmbedding {
    /// Builds the MLP under `p` (`time_embedding`).
    pub fn new(p: nn::Path, c_in: i64, dim: i64) -> Self {
        Self {
            linear_1: linear(&p / "linear_1", c_in, dim, true),
            linear_2: linear(&p / "linear_2", dim, dim, true),
        }
    }
}

impl Module for TimestepEmbedding {
    fn forward(&self, x: &Tensor) -> Tensor {
        self.linear_2.forward(&self.linear_1.forward(x).silu())
    }
}

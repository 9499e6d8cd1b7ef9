//! The transformer encoder shared by CLIP's text and vision towers (transformers
//! `CLIPEncoderLayer`): pre-LayerNorm self-attention and MLP with residuals, causal for text.

use anyhow::{bail, Result};
use tch::nn::{self, Module};
use tch::Tensor;

use super::{layer_norm, linear};

/// The MLP activation of a CLIP tower.
#[derive(Debug, Clone, Copy)]
pub enum Activation {
    /// Exact GELU (OpenCLIP towers: SD 2.x text encoder, IP-Adapter's ViT-H).
    Gelu,
    /// x·σ(1.702x) (OpenAI CLIP: SD 1.x text encoder, ViT-B/32, ViT-L/14).
    QuickGelu,
}

impl Activation {
    /// Parses a config's `hidden_act`.
    pub fn from_config(name: &str) -> Result<Self> {
        match name {
            "gelu" => Ok(Self::Gelu),
            "quick_gelu" => Ok(Self::QuickGelu),
            other => bail!("unsupported CLIP activation {other:?} (gelu, quick_gelu)"),
        }
    }

    fn apply(self, x: &Tensor) -> Tensor {
        match self {
            Self::Gelu => x.gelu("none"),
            Self::QuickGelu => x * (x * 1.702).sigmoid(),
        }
    }
}

/// The sizes of a CLIP encoder.
#[derive(Debug, Clone, Copy)]
pub struct ClipEncoderConfig {
    /// Width.
    pub hidden: i64,
    /// MLP width.
    pub intermediate: i64,
    /// Heads.
    pub heads: i64,
    /// Layers.
    pub layers: i64,
    /// LayerNorm epsilon.
    pub eps: f64,
    /// MLP activation.
    pub activation: Activation,
}

#[derive(Debug)]
struct EncoderLayer {
    layer_norm1: nn::LayerNorm,
    q_proj: nn::Linear,
    k_proj: nn::Linear,
    v_proj: nn::Linear,
    out_proj: nn::Linear,
    layer_norm2: nn::LayerNorm,
    fc1: nn::Linear,
    fc2: nn::Linear,
}

impl EncoderLayer {
    fn new(p: nn::Path, c: &ClipEncoderConfig) -> Self {
        let attn = &p / "self_attn";
        let mlp = &p / "mlp";
        let h = c.hidden;
        Self {
            layer_norm1: layer_norm(&p / "layer_norm1", h, c.eps),
            q_proj: linear(&attn / "q_proj", h, h, true),
            k_proj: linear(&attn / "k_proj", h, h, true),
            v_proj: linear(&attn / "v_proj", h, h, true),
            out_proj: linear(&attn / "out_proj", h, h, true),
            layer_norm2: layer_norm(&p / "layer_norm2", h, c.eps),
            fc1: linear(&mlp / "fc1", h, c.intermediate, true),
            fc2: linear(&mlp / "fc2", c.intermediate, h, true),
        }
    }

    fn forward(&self, x: &Tensor, c: &ClipEncoderConfig, causal: bool) -> Tensor {
        let (b, n, h) = x.size3().expect("(batch, tokens, hidden)");
        let normed = self.layer_norm1.forward(x);
        let split = |t: Tensor| t.view([b, n, c.heads, h / c.heads]).transpose(1, 2);
        let (q, k, v) = (
            split(self.q_proj.forward(&normed)),
            split(self.k_proj.forward(&normed)),
            split(self.v_proj.forward(&normed)),
        );
        let attn = Tensor::scaled_dot_product_attention::<Tensor>(
            &q, &k, &v, None, 0.0, causal, None, false,
        );
        let x = x + self
            .out_proj
            .forward(&attn.transpose(1, 2).reshape([b, n, h]));
        let hidden = self.fc1.forward(&self.layer_norm2.forward(&x));
        &x + self.fc2.forward(&c.activation.apply(&hidden))
    }
}

/// `encoder.layers.{i}`.
#[derive(Debug)]
pub struct ClipEncoder {
    config: ClipEncoderConfig,
    layers: Vec<EncoderLayer>,
}

impl ClipEncoder {
    /// Builds the layers under `p` (`…/encoder`).
    pub fn new(p: nn::Path, config: ClipEncoderConfig) -> Result<Self> {
        if config.heads <= 0 || config.hidden % config.heads != 0 {
            bail!(
                "hidden size {} does not split into {} heads",
                config.hidden,
                config.heads
            );
        }
        Ok(Self {
            layers: (0..config.layers)
                .map(|i| EncoderLayer::new(&p / "layers" / i, &config))
                .collect(),
            config,
        })
    }

    /// Runs every layer; `causal` masks future tokens (the text tower).
    pub fn forward(&self, x: &Tensor, causal: bool) -> Tensor {
        let mut x = x.shallow_clone();
        for layer in &self.layers {
            x = layer.forward(&x, &self.config, causal);
        }
        x
    }
}

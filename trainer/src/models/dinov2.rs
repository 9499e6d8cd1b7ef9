//! transformers' `Dinov2Model` (models/dinov2/modeling_dinov2.py), e.g. `facebook/dinov2-large`:
//! patch 14, layer scale, a mask token (kept for the checkpoint, unused), and position
//! embeddings interpolated to the input size, so any multiple of the patch size works (518 px
//! is the default input).

use anyhow::{bail, Result};
use serde::Deserialize;
use tch::nn::{self, Module};
use tch::{Kind, Tensor};

use super::vit::{PatchEmbeddings, VitAttention};
use super::{layer_norm, linear};

fn default_act() -> String {
    "gelu".into()
}
fn default_eps() -> f64 {
    1e-6
}
fn default_true() -> bool {
    true
}
fn default_channels() -> i64 {
    3
}
fn default_mlp_ratio() -> f64 {
    4.0
}

/// `config.json` of a `Dinov2Model`.
#[derive(Debug, Clone, Deserialize)]
pub struct Dinov2Config {
    /// Width.
    pub hidden_size: i64,
    /// Blocks.
    pub num_hidden_layers: i64,
    /// Heads.
    pub num_attention_heads: i64,
    /// MLP width over `hidden_size`.
    #[serde(default = "default_mlp_ratio")]
    pub mlp_ratio: f64,
    /// Only `gelu`.
    #[serde(default = "default_act")]
    pub hidden_act: String,
    /// LayerNorm epsilon.
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    /// The side the position embeddings were learned at.
    pub image_size: i64,
    /// Patch side (14).
    pub patch_size: i64,
    /// Input channels.
    #[serde(default = "default_channels")]
    pub num_channels: i64,
    /// Biases on query, key and value.
    #[serde(default = "default_true")]
    pub qkv_bias: bool,
    /// SwiGLU MLPs (DINOv2-giant); not supported.
    #[serde(default)]
    pub use_swiglu_ffn: bool,
}

#[derive(Debug)]
struct Dinov2Layer {
    norm1: nn::LayerNorm,
    attention: VitAttention,
    lambda1: Tensor,
    norm2: nn::LayerNorm,
    fc1: nn::Linear,
    fc2: nn::Linear,
    lambda2: Tensor,
}

/// The DINOv2 vision transformer.
#[derive(Debug)]
pub struct Dinov2Model {
    config: Dinov2Config,
    embeddings: PatchEmbeddings,
    _mask_token: Tensor,
    layers: Vec<Dinov2Layer>,
    layernorm: nn::LayerNorm,
}

impl Dinov2Model {
    /// Builds the variables under `p` (the store's root).
    pub fn new(p: nn::Path, config: Dinov2Config) -> Result<Self> {
        if config.use_swiglu_ffn {
            bail!("DINOv2 with SwiGLU MLPs (giant) is not supported");
        }
        if config.hidden_act != "gelu" || config.hidden_size % config.num_attention_heads != 0 {
            bail!("DINOv2 config: only gelu, and hidden_size must split into heads");
        }
        let (h, eps) = (config.hidden_size, config.layer_norm_eps);
        let mlp = (h as f64 * config.mlp_ratio) as i64;
        let e = &p / "embeddings";
        let layers = (0..config.num_hidden_layers)
            .map(|i| {
                let l = &p / "encoder" / "layer" / i;
                Dinov2Layer {
                    norm1: layer_norm(&l / "norm1", h, eps),
                    attention: VitAttention::new(
                        &l / "attention",
                        h,
                        config.num_attention_heads,
                        config.qkv_bias,
                    ),
                    lambda1: (&l / "layer_scale1").var("lambda1", &[h], nn::Init::Const(1.0)),
                    norm2: layer_norm(&l / "norm2", h, eps),
                    fc1: linear(&l / "mlp" / "fc1", h, mlp, true),
                    fc2: linear(&l / "mlp" / "fc2", mlp, h, true),
                    lambda2: (&l / "layer_scale2").var("lambda1", &[h], nn::Init::Const(1.0)),
                }
            })
            .collect();
        Ok(Self {
            embeddings: PatchEmbeddings::new(
                &e,
                config.num_channels,
                h,
                config.patch_size,
                config.image_size,
            ),
            _mask_token: e.var("mask_token", &[1, h], nn::Init::Const(0.0)),
            layers,
            layernorm: layer_norm(&p / "layernorm", h, eps),
            config,
        })
    }

    /// The token width.
    pub fn hidden_size(&self) -> i64 {
        self.config.hidden_size
    }

    /// The patch side: inputs must be a multiple of it.
    pub fn patch_size(&self) -> i64 {
        self.config.patch_size
    }

    /// Position embeddings for a `rows` × `cols` patch grid: the learned grid resized to that
    /// size with bicubic interpolation in f32 (no antialias, align_corners false), as
    /// transformers 5 does. (Meta's original code resizes by a scale factor with a +0.1 offset,
    /// which differs slightly.)
    fn positions(&self, rows: i64, cols: i64) -> Tensor {
        let n = self.embeddings.position_embeddings.size()[1] - 1;
        if rows * cols == n && rows == cols {
            return self.embeddings.position_embeddings.shallow_clone();
        }
        let side = (n as f64).sqrt() as i64;
        let h = self.config.hidden_size;
        let cls = self.embeddings.position_embeddings.narrow(1, 0, 1);
        let grid = self
            .embeddings
            .position_embeddings
            .narrow(1, 1, n)
            .reshape([1, side, side, h])
            .permute([0, 3, 1, 2])
            .to_kind(Kind::Float)
            .upsample_bicubic2d([rows, cols], false, None, None)
            .to_kind(self.embeddings.position_embeddings.kind())
            .permute([0, 2, 3, 1])
            .reshape([1, rows * cols, h]);
        Tensor::cat(&[cls, grid], 1)
    }

    /// `last_hidden_state` (CLS then patches, after the final LayerNorm) for normalized pixels
    /// (batch, 3, H, W) with H and W multiples of the patch size.
    pub fn forward(&self, pixels: &Tensor) -> Result<Tensor> {
        let size = pixels.size();
        let ps = self.config.patch_size;
        if size.len() != 4
            || size[1] != self.config.num_channels
            || size[2] % ps != 0
            || size[3] % ps != 0
            || size[2] == 0
        {
            bail!(
                "DINOv2 expects images (batch, {}, H, W) with H and W positive multiples of {ps}, got {size:?}",
                self.config.num_channels
            );
        }
        let tokens = self.embeddings.tokens(pixels);
        let mut x = tokens + self.positions(size[2] / ps, size[3] / ps);
        for l in &self.layers {
            x = &x + l.attention.forward(&l.norm1.forward(&x)) * &l.lambda1;
            let m = l
                .fc2
                .forward(&l.fc1.forward(&l.norm2.forward(&x)).gelu("none"));
            x = &x + m * &l.lambda2;
        }
        Ok(self.layernorm.forward(&x))
    }
}

//! transformers' `CLIPVisionModelWithProjection` (models/clip/modeling_clip.py): the IP-Adapter
//! image encoder (OpenCLIP ViT-H/14) and the evaluation CLIPs (ViT-B/32, ViT-L/14, ViT-L/14@336).
//! `image_embeds` = `visual_projection(post_layernorm(CLS))`.

use anyhow::{bail, Result};
use serde::Deserialize;
use tch::nn::{self, Module};
use tch::Tensor;

use super::clip_encoder::{Activation, ClipEncoder, ClipEncoderConfig};
use super::vit::patch_tokens;
use super::{layer_norm, linear};

fn default_act() -> String {
    "quick_gelu".into()
}
fn default_eps() -> f64 {
    1e-5
}
fn default_channels() -> i64 {
    3
}
fn default_projection() -> i64 {
    512
}

/// `config.json` of a `CLIPVisionModelWithProjection` (a `CLIPVisionConfig`).
#[derive(Debug, Clone, Deserialize)]
pub struct ClipVisionConfig {
    /// Width.
    pub hidden_size: i64,
    /// MLP width.
    pub intermediate_size: i64,
    /// Layers.
    pub num_hidden_layers: i64,
    /// Heads.
    pub num_attention_heads: i64,
    /// Input side (224, 336).
    pub image_size: i64,
    /// Patch side (14, 32).
    pub patch_size: i64,
    /// Input channels.
    #[serde(default = "default_channels")]
    pub num_channels: i64,
    /// `gelu` (OpenCLIP) or `quick_gelu` (OpenAI).
    #[serde(default = "default_act")]
    pub hidden_act: String,
    /// LayerNorm epsilon.
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    /// Width of `image_embeds`.
    #[serde(default = "default_projection")]
    pub projection_dim: i64,
}

/// The CLIP image tower with its projection.
#[derive(Debug)]
pub struct ClipVisionModelWithProjection {
    config: ClipVisionConfig,
    class_embedding: Tensor,
    patch_embedding: nn::Conv2D,
    position_embedding: Tensor,
    pre_layrnorm: nn::LayerNorm,
    encoder: ClipEncoder,
    post_layernorm: nn::LayerNorm,
    visual_projection: nn::Linear,
}

/// What the tower returns.
#[derive(Debug)]
pub struct ClipVisionOutput {
    /// The encoder's output (before `post_layernorm`), CLS then patches.
    pub last_hidden_state: Tensor,
    /// The projected CLS embedding (not normalized).
    pub image_embeds: Tensor,
}

impl ClipVisionModelWithProjection {
    /// Builds the variables under `p` (the store's root).
    pub fn new(p: nn::Path, config: ClipVisionConfig) -> Result<Self> {
        let v = &p / "vision_model";
        let e = &v / "embeddings";
        let h = config.hidden_size;
        let positions = (config.image_size / config.patch_size).pow(2) + 1;
        let conv = nn::ConvConfig {
            stride: config.patch_size,
            bias: false,
            ..Default::default()
        };
        Ok(Self {
            class_embedding: e.var("class_embedding", &[h], nn::Init::Const(0.0)),
            patch_embedding: nn::conv2d(
                &e / "patch_embedding",
                config.num_channels,
                h,
                config.patch_size,
                conv,
            ),
            position_embedding: (&e / "position_embedding").var(
                "weight",
                &[positions, h],
                nn::Init::Const(0.0),
            ),
            pre_layrnorm: layer_norm(&v / "pre_layrnorm", h, config.layer_norm_eps),
            encoder: ClipEncoder::new(
                &v / "encoder",
                ClipEncoderConfig {
                    hidden: h,
                    intermediate: config.intermediate_size,
                    heads: config.num_attention_heads,
                    layers: config.num_hidden_layers,
                    eps: config.layer_norm_eps,
                    activation: Activation::from_config(&config.hidden_act)?,
                },
            )?,
            post_layernorm: layer_norm(&v / "post_layernorm", h, config.layer_norm_eps),
            visual_projection: linear(&p / "visual_projection", h, config.projection_dim, false),
            config,
        })
    }

    /// The input side in pixels.
    pub fn image_size(&self) -> i64 {
        self.config.image_size
    }

    /// The width of `image_embeds`.
    pub fn projection_dim(&self) -> i64 {
        self.config.projection_dim
    }

    /// Runs the tower on CLIP-normalized pixels (batch, 3, image_size, image_size).
    pub fn forward(&self, pixels: &Tensor) -> Result<ClipVisionOutput> {
        let size = pixels.size();
        let want = [
            self.config.num_channels,
            self.config.image_size,
            self.config.image_size,
        ];
        if size.len() != 4 || size[1..] != want {
            bail!(
                "CLIP vision expects images (batch, {}, {}, {}), got {size:?}",
                want[0],
                want[1],
                want[2]
            );
        }
        let cls = self.class_embedding.view([1, 1, -1]);
        let x = patch_tokens(&self.patch_embedding, &cls, pixels)
            + self.position_embedding.unsqueeze(0);
        let last_hidden_state = self.encoder.forward(&self.pre_layrnorm.forward(&x), false);
        let pooled = self.post_layernorm.forward(&last_hidden_state.select(1, 0));
        let image_embeds = self.visual_projection.forward(&pooled);
        Ok(ClipVisionOutput {
            last_hidden_state,
            image_embeds,
        })
    }
}

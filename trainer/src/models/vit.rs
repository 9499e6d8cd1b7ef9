//! transformers' `ViTModel` (models/vit/modeling_vit.py) as DINOv1 ships it
//! (`facebook/dino-vits16`, `facebook/dino-vitb16`): patch embedding, CLS token, learned
//! positions, pre-LayerNorm blocks and a final LayerNorm. The output is `last_hidden_state`:
//! the CLS token then one token per patch. The pooler (unused by DINO) is not built, and its
//! tensors are skipped when a checkpoint has them.

use anyhow::{bail, Result};
use serde::Deserialize;
use tch::nn::{self, Module};
use tch::Tensor;

use super::{conv2d, layer_norm, linear};

fn default_act() -> String {
    "gelu".into()
}
fn default_eps() -> f64 {
    1e-12
}
fn default_true() -> bool {
    true
}
fn default_channels() -> i64 {
    3
}

/// `config.json` of a `ViTModel`.
#[derive(Debug, Clone, Deserialize)]
pub struct VitConfig {
    /// Width.
    pub hidden_size: i64,
    /// Blocks.
    pub num_hidden_layers: i64,
    /// Heads.
    pub num_attention_heads: i64,
    /// MLP width.
    pub intermediate_size: i64,
    /// Only `gelu`.
    #[serde(default = "default_act")]
    pub hidden_act: String,
    /// LayerNorm epsilon.
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    /// Input side in pixels (224).
    pub image_size: i64,
    /// Patch side (16).
    pub patch_size: i64,
    /// Input channels.
    #[serde(default = "default_channels")]
    pub num_channels: i64,
    /// Biases on query, key and value.
    #[serde(default = "default_true")]
    pub qkv_bias: bool,
}

/// Self-attention with `attention.query/key/value` and `output.dense`, as ViT and DINOv2 name it.
#[derive(Debug)]
pub struct VitAttention {
    query: nn::Linear,
    key: nn::Linear,
    value: nn::Linear,
    out: nn::Linear,
    heads: i64,
}

impl VitAttention {
    /// Builds `…/attention` under `p`.
    pub fn new(p: nn::Path, hidden: i64, heads: i64, qkv_bias: bool) -> Self {
        let a = &p / "attention";
        Self {
            query: linear(&a / "query", hidden, hidden, qkv_bias),
            key: linear(&a / "key", hidden, hidden, qkv_bias),
            value: linear(&a / "value", hidden, hidden, qkv_bias),
            out: linear(&p / "output" / "dense", hidden, hidden, true),
            heads,
        }
    }
}

impl Module for VitAttention {
    fn forward(&self, x: &Tensor) -> Tensor {
        let (b, n, h) = x.size3().expect("(batch, tokens, hidden)");
        let split = |t: Tensor| t.view([b, n, self.heads, h / self.heads]).transpose(1, 2);
        let (q, k, v) = (
            split(self.query.forward(x)),
            split(self.key.forward(x)),
            split(self.value.forward(x)),
        );
        let attn = Tensor::scaled_dot_product_attention::<Tensor>(
            &q, &k, &v, None, 0.0, false, None, false,
        );
        self.out.forward(&attn.transpose(1, 2).reshape([b, n, h]))
    }
}

/// Patch embedding with a CLS token in front: (batch, 1 + patches, hidden) before positions.
pub fn patch_tokens(projection: &nn::Conv2D, cls: &Tensor, pixels: &Tensor) -> Tensor {
    let patches = projection.forward(pixels).flatten(2, -1).transpose(1, 2);
    let b = patches.size()[0];
    Tensor::cat(
        &[
            cls.expand([b, 1, -1], false).to_kind(patches.kind()),
            patches,
        ],
        1,
    )
}

/// ViT-style `embeddings`: `cls_token`, `position_embeddings` and
/// `patch_embeddings.projection` (shared by ViT and DINOv2).
#[derive(Debug)]
pub struct PatchEmbeddings {
    /// The CLS token (1, 1, hidden).
    pub cls_token: Tensor,
    /// Learned positions (1, 1 + patches, hidden) at the training size.
    pub position_embeddings: Tensor,
    projection: nn::Conv2D,
}

impl PatchEmbeddings {
    /// Builds the variables under `e` (`embeddings`) for `image_size` inputs.
    pub fn new(e: &nn::Path, channels: i64, hidden: i64, patch: i64, image_size: i64) -> Self {
        let patches = (image_size / patch).pow(2);
        Self {
            cls_token: e.var("cls_token", &[1, 1, hidden], nn::Init::Const(0.0)),
            position_embeddings: e.var(
                "position_embeddings",
                &[1, patches + 1, hidden],
                nn::Init::Const(0.0),
            ),
            projection: conv2d(
                e / "patch_embeddings" / "projection",
                channels,
                hidden,
                patch,
                patch,
                0,
            ),
        }
    }

    /// CLS then patch tokens, before positions are added.
    pub fn tokens(&self, pixels: &Tensor) -> Tensor {
        patch_tokens(&self.projection, &self.cls_token, pixels)
    }
}

#[derive(Debug)]
struct VitLayer {
    layernorm_before: nn::LayerNorm,
    attention: VitAttention,
    layernorm_after: nn::LayerNorm,
    intermediate: nn::Linear,
    output: nn::Linear,
}

/// The DINOv1 vision transformer.
#[derive(Debug)]
pub struct VitModel {
    config: VitConfig,
    embeddings: PatchEmbeddings,
    layers: Vec<VitLayer>,
    layernorm: nn::LayerNorm,
}

impl VitModel {
    /// Builds the variables under `p` (the store's root).
    pub fn new(p: nn::Path, config: VitConfig) -> Result<Self> {
        if config.hidden_act != "gelu" {
            bail!("unsupported ViT activation {:?} (gelu)", config.hidden_act);
        }
        if config.image_size % config.patch_size != 0
            || config.hidden_size % config.num_attention_heads != 0
        {
            bail!("ViT config: image_size must split into patches and hidden_size into heads");
        }
        let (h, eps) = (config.hidden_size, config.layer_norm_eps);
        let e = &p / "embeddings";
        let layers = (0..config.num_hidden_layers)
            .map(|i| {
                let l = &p / "encoder" / "layer" / i;
                VitLayer {
                    layernorm_before: layer_norm(&l / "layernorm_before", h, eps),
                    attention: VitAttention::new(
                        &l / "attention",
                        h,
                        config.num_attention_heads,
                        config.qkv_bias,
                    ),
                    layernorm_after: layer_norm(&l / "layernorm_after", h, eps),
                    intermediate: linear(
                        &l / "intermediate" / "dense",
                        h,
                        config.intermediate_size,
                        true,
                    ),
                    output: linear(&l / "output" / "dense", config.intermediate_size, h, true),
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
            layers,
            layernorm: layer_norm(&p / "layernorm", h, eps),
            config,
        })
    }

    /// The token width.
    pub fn hidden_size(&self) -> i64 {
        self.config.hidden_size
    }

    /// The side in pixels the model was trained at.
    pub fn image_size(&self) -> i64 {
        self.config.image_size
    }

    /// `last_hidden_state` for normalized pixels (batch, 3, image_size, image_size).
    pub fn forward(&self, pixels: &Tensor) -> Result<Tensor> {
        let size = pixels.size();
        let want = [
            self.config.num_channels,
            self.config.image_size,
            self.config.image_size,
        ];
        if size.len() != 4 || size[1..] != want {
            bail!(
                "DINO ViT expects images (batch, {}, {}, {}), got {size:?}",
                want[0],
                want[1],
                want[2]
            );
        }
        let mut x = self.embeddings.tokens(pixels) + &self.embeddings.position_embeddings;
        for l in &self.layers {
            x = &x + l.attention.forward(&l.layernorm_before.forward(&x));
            let h = l
                .intermediate
                .forward(&l.layernorm_after.forward(&x))
                .gelu("none");
            x = &x + l.output.forward(&h);
        }
        Ok(self.layernorm.forward(&x))
    }
}

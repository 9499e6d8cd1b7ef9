//! The model configs of the diffusers/transformers folders this project reads (`unet/`,
//! `text_encoder/`, `vae/` config.json), with the Python classes' defaults for missing keys. They
//! live in the framework-free core because the trainer (tch) and the exporter (ONNX) build the
//! same networks from them.

use anyhow::{bail, ensure, Result};
use serde::Deserialize;

/// A config value that is one number for every block or one per block.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum PerBlock {
    /// The same for every block.
    One(i64),
    /// One per down block.
    Each(Vec<i64>),
}

impl PerBlock {
    /// One value per block for `n` blocks; `name` is for the error.
    pub fn expand(&self, n: usize, name: &str) -> Result<Vec<i64>> {
        match self {
            PerBlock::One(v) => Ok(vec![*v; n]),
            PerBlock::Each(v) if v.len() == n => Ok(v.clone()),
            PerBlock::Each(v) => bail!("{name} has {} entries for {n} down blocks", v.len()),
        }
    }
}

fn unet_default_true() -> bool {
    true
}
fn unet_default_in() -> i64 {
    4
}
fn unet_default_groups() -> i64 {
    32
}
fn unet_default_eps() -> f64 {
    1e-5
}
fn unet_default_one_int() -> i64 {
    1
}
fn unet_default_one_f64() -> f64 {
    1.0
}
fn unet_default_heads() -> PerBlock {
    PerBlock::One(8)
}
fn unet_default_cross() -> PerBlock {
    PerBlock::One(1280)
}
fn unet_default_layers() -> PerBlock {
    PerBlock::One(2)
}
fn unet_default_transformer_layers() -> PerBlock {
    PerBlock::One(1)
}
fn unet_default_three() -> i64 {
    3
}

/// `unet/config.json`, with the Python class's defaults for missing keys.
#[derive(Debug, Clone, Deserialize)]
pub struct UNetConfig {
    /// Latent channels in.
    #[serde(default = "unet_default_in")]
    pub in_channels: i64,
    /// Latent channels out.
    #[serde(default = "unet_default_in")]
    pub out_channels: i64,
    /// Map the input from [0, 1] to [-1, 1] first.
    #[serde(default)]
    pub center_input_sample: bool,
    /// Swap the sin and cos halves of the time embedding.
    #[serde(default = "unet_default_true")]
    pub flip_sin_to_cos: bool,
    /// Frequency shift of the time embedding.
    #[serde(default)]
    pub freq_shift: f64,
    /// Down block classes.
    pub down_block_types: Vec<String>,
    /// Up block classes.
    pub up_block_types: Vec<String>,
    /// The mid block class.
    #[serde(default)]
    pub mid_block_type: Option<String>,
    /// Channels per down block.
    pub block_out_channels: Vec<i64>,
    /// Resnets per down block (up blocks have one more).
    #[serde(default = "unet_default_layers")]
    pub layers_per_block: PerBlock,
    /// Padding of the down-block downsamplers.
    #[serde(default = "unet_default_one_int")]
    pub downsample_padding: i64,
    /// Scale of the mid block's resnet outputs.
    #[serde(default = "unet_default_one_f64")]
    pub mid_block_scale_factor: f64,
    /// Activation; only SiLU exists in these checkpoints.
    #[serde(default)]
    pub act_fn: Option<String>,
    /// GroupNorm groups.
    #[serde(default = "unet_default_groups")]
    pub norm_num_groups: i64,
    /// GroupNorm epsilon of the resnets and the output norm.
    #[serde(default = "unet_default_eps")]
    pub norm_eps: f64,
    /// Text-embedding width (1024 for SD 2.x, 768 for SD 1.x).
    #[serde(default = "unet_default_cross")]
    pub cross_attention_dim: PerBlock,
    /// Transformer blocks per attention.
    #[serde(default = "unet_default_transformer_layers")]
    pub transformer_layers_per_block: PerBlock,
    /// Historic name: the number of heads per block when `num_attention_heads` is absent.
    #[serde(default = "unet_default_heads")]
    pub attention_head_dim: PerBlock,
    /// Heads per block, when given.
    #[serde(default)]
    pub num_attention_heads: Option<PerBlock>,
    /// Linear (SD 2.x) or 1×1 conv (SD 1.x) projections in the transformers.
    #[serde(default)]
    pub use_linear_projection: bool,
    /// f32 attention (SD 2.1 768).
    #[serde(default)]
    pub upcast_attention: bool,
    /// Kernel of conv_in.
    #[serde(default = "unet_default_three")]
    pub conv_in_kernel: i64,
    /// Kernel of conv_out.
    #[serde(default = "unet_default_three")]
    pub conv_out_kernel: i64,
    /// Options of other UNets, read only to refuse them.
    #[serde(default)]
    pub class_embed_type: Option<String>,
    /// Unsupported (SDXL).
    #[serde(default)]
    pub addition_embed_type: Option<String>,
    /// Unsupported (LCM-style guidance embedding).
    #[serde(default)]
    pub time_cond_proj_dim: Option<i64>,
    /// Unsupported.
    #[serde(default)]
    pub encoder_hid_dim: Option<i64>,
    /// Unsupported.
    #[serde(default)]
    pub dual_cross_attention: bool,
    /// Unsupported when true.
    #[serde(default)]
    pub only_cross_attention: serde_json::Value,
    /// Only "default".
    #[serde(default)]
    pub resnet_time_scale_shift: Option<String>,
    /// Only "positional".
    #[serde(default)]
    pub time_embedding_type: Option<String>,
    /// Only "default".
    #[serde(default)]
    pub attention_type: Option<String>,
    /// Sample size in latent pixels (informational).
    #[serde(default)]
    pub sample_size: Option<serde_json::Value>,
}

/// A config validated and expanded to one value per block.
#[derive(Debug, Clone)]
pub struct UNetPlan {
    /// Attention heads per block.
    pub heads: Vec<i64>,
    /// Resnets per down block.
    pub layers: Vec<i64>,
    /// Transformer blocks per attention, per block.
    pub transformer_layers: Vec<i64>,
    /// The text-embedding width.
    pub cross_attention_dim: i64,
}

impl UNetConfig {
    /// Parses `unet/config.json` text.
    pub fn from_json(text: &str) -> Result<Self> {
        Ok(serde_json::from_str(text)?)
    }

    /// Validates the config (refusing options of other UNets) and expands per-block values.
    pub fn plan(&self) -> Result<UNetPlan> {
        let n = self.block_out_channels.len();
        ensure!(n > 0, "block_out_channels is empty");
        ensure!(
            self.down_block_types.len() == n && self.up_block_types.len() == n,
            "down_block_types ({}) and up_block_types ({}) must have one entry per block_out_channels ({n})",
            self.down_block_types.len(),
            self.up_block_types.len()
        );
        let unsupported = |what: &str| -> Result<()> { bail!("unsupported UNet option: {what}") };
        if let Some(t) = &self.class_embed_type {
            unsupported(&format!("class_embed_type {t:?}"))?;
        }
        if let Some(t) = &self.addition_embed_type {
            unsupported(&format!("addition_embed_type {t:?}"))?;
        }
        if self.time_cond_proj_dim.is_some()
            || self.encoder_hid_dim.is_some()
            || self.dual_cross_attention
        {
            unsupported("time_cond_proj_dim / encoder_hid_dim / dual_cross_attention")?;
        }
        if !matches!(
            &self.only_cross_attention,
            serde_json::Value::Null | serde_json::Value::Bool(false)
        ) {
            unsupported("only_cross_attention")?;
        }
        for (value, default, name) in [
            (
                &self.resnet_time_scale_shift,
                "default",
                "resnet_time_scale_shift",
            ),
            (
                &self.time_embedding_type,
                "positional",
                "time_embedding_type",
            ),
            (&self.attention_type, "default", "attention_type"),
            (&self.act_fn, "silu", "act_fn"),
            (
                &self.mid_block_type,
                "UNetMidBlock2DCrossAttn",
                "mid_block_type",
            ),
        ] {
            if let Some(v) = value.as_deref().filter(|v| *v != default) {
                unsupported(&format!("{name} {v:?}"))?;
            }
        }
        if self.conv_in_kernel != 3
            || self.conv_out_kernel != 3
            || self.mid_block_scale_factor != 1.0
        {
            unsupported("conv_in_kernel / conv_out_kernel other than 3, or mid_block_scale_factor other than 1")?;
        }
        for t in &self.down_block_types {
            ensure!(
                t == "CrossAttnDownBlock2D" || t == "DownBlock2D",
                "unsupported down block type {t:?} (CrossAttnDownBlock2D, DownBlock2D)"
            );
        }
        for t in &self.up_block_types {
            ensure!(
                t == "CrossAttnUpBlock2D" || t == "UpBlock2D",
                "unsupported up block type {t:?} (CrossAttnUpBlock2D, UpBlock2D)"
            );
        }
        let heads = self
            .num_attention_heads
            .as_ref()
            .unwrap_or(&self.attention_head_dim)
            .expand(n, "attention heads")?;
        let cross = self.cross_attention_dim.expand(n, "cross_attention_dim")?;
        ensure!(
            cross.iter().all(|&c| c == cross[0]),
            "per-block cross_attention_dim values differ: {cross:?}"
        );
        for (i, (&c, &h)) in self.block_out_channels.iter().zip(&heads).enumerate() {
            ensure!(
                h > 0 && c % h == 0,
                "block {i}: {c} channels do not split into {h} heads"
            );
            ensure!(
                c % self.norm_num_groups == 0,
                "block {i}: {c} channels do not split into {} groups",
                self.norm_num_groups
            );
        }
        Ok(UNetPlan {
            heads,
            layers: self.layers_per_block.expand(n, "layers_per_block")?,
            transformer_layers: self
                .transformer_layers_per_block
                .expand(n, "transformer_layers_per_block")?,
            cross_attention_dim: cross[0],
        })
    }

    /// The text-embedding width the UNet attends to.
    pub fn cross_attention_dim(&self) -> Result<i64> {
        Ok(self.plan()?.cross_attention_dim)
    }
}

fn clip_default_eps() -> f64 {
    1e-5
}
fn clip_default_eos() -> i64 {
    49407
}
fn clip_default_projection() -> i64 {
    512
}
fn clip_default_act() -> String {
    "quick_gelu".into()
}

/// `text_encoder/config.json` (a `CLIPTextConfig`).
#[derive(Debug, Clone, Deserialize)]
pub struct ClipTextConfig {
    /// Token embedding rows (49408, plus added tokens after training).
    pub vocab_size: i64,
    /// Width (1024 for SD 2.x, 768 for SD 1.x).
    pub hidden_size: i64,
    /// MLP width.
    pub intermediate_size: i64,
    /// Layers.
    pub num_hidden_layers: i64,
    /// Attention heads.
    pub num_attention_heads: i64,
    /// Positions (77).
    pub max_position_embeddings: i64,
    /// `gelu` (OpenCLIP, SD 2.x) or `quick_gelu` (OpenAI CLIP, SD 1.x).
    #[serde(default = "clip_default_act")]
    pub hidden_act: String,
    /// LayerNorm epsilon.
    #[serde(default = "clip_default_eps")]
    pub layer_norm_eps: f64,
    /// The end-of-text id, which marks the pooled position.
    #[serde(default = "clip_default_eos")]
    pub eos_token_id: i64,
    /// Width of `text_projection` (CLIP-T's embedding).
    #[serde(default = "clip_default_projection")]
    pub projection_dim: i64,
}

impl ClipTextConfig {
    /// Parses `text_encoder/config.json` text.
    pub fn from_json(text: &str) -> Result<Self> {
        Ok(serde_json::from_str(text)?)
    }
}

fn vae_default_three() -> i64 {
    3
}
fn vae_default_four() -> i64 {
    4
}
fn vae_default_one() -> i64 {
    1
}
fn vae_default_groups() -> i64 {
    32
}
fn vae_default_scaling() -> f64 {
    0.18215
}
fn vae_default_true() -> bool {
    true
}

/// `vae/config.json`.
#[derive(Debug, Clone, Deserialize)]
pub struct VaeConfig {
    /// Image channels in.
    #[serde(default = "vae_default_three")]
    pub in_channels: i64,
    /// Image channels out.
    #[serde(default = "vae_default_three")]
    pub out_channels: i64,
    /// Channels per level.
    pub block_out_channels: Vec<i64>,
    /// Resnets per encoder level (decoder levels have one more).
    #[serde(default = "vae_default_one")]
    pub layers_per_block: i64,
    /// Latent channels.
    #[serde(default = "vae_default_four")]
    pub latent_channels: i64,
    /// GroupNorm groups.
    #[serde(default = "vae_default_groups")]
    pub norm_num_groups: i64,
    /// Latents are multiplied by this before diffusion (0.18215 for SD).
    #[serde(default = "vae_default_scaling")]
    pub scaling_factor: f64,
    /// Whether the mid blocks have attention.
    #[serde(default = "vae_default_true")]
    pub mid_block_add_attention: bool,
    /// Whether `quant_conv` / `post_quant_conv` exist.
    #[serde(default = "vae_default_true")]
    pub use_quant_conv: bool,
    /// Whether `post_quant_conv` exists.
    #[serde(default = "vae_default_true")]
    pub use_post_quant_conv: bool,
    /// SD3's latent shift; only absent or null is supported.
    #[serde(default)]
    pub shift_factor: Option<f64>,
}

impl VaeConfig {
    /// Parses `vae/config.json` text.
    pub fn from_json(text: &str) -> Result<Self> {
        let config: Self = serde_json::from_str(text)?;
        ensure!(
            !config.block_out_channels.is_empty(),
            "vae block_out_channels is empty"
        );
        ensure!(
            config.shift_factor.is_none_or(|s| s == 0.0),
            "vae shift_factor is not supported"
        );
        Ok(config)
    }

    /// How much smaller the latents are than the image (8 for SD).
    pub fn downscale_factor(&self) -> i64 {
        1 << (self.block_out_channels.len() - 1)
    }
}

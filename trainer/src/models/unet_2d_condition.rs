//! diffusers' `UNet2DConditionModel` (models/unets/unet_2d_condition.py) for SD 1.x, SD 2.x,
//! SD-Turbo and Hyper-SD 1.5: every size comes from the checkpoint's `unet/config.json`.

use anyhow::{bail, ensure, Result};
use serde::Deserialize;
use tch::nn::{self, Module};
use tch::Tensor;

use super::attention::Attention;
use super::embeddings::{timestep_embedding, TimestepEmbedding};
use super::transformer_2d::Transformer2D;
use super::unet_2d_blocks::{
    BlockConfig, CrossAttention, DownBlock, DownSpec, MidBlock, UpBlock, UpChannels,
};
use super::{conv2d, group_norm};

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
    fn expand(&self, n: usize, name: &str) -> Result<Vec<i64>> {
        match self {
            PerBlock::One(v) => Ok(vec![*v; n]),
            PerBlock::Each(v) if v.len() == n => Ok(v.clone()),
            PerBlock::Each(v) => bail!("{name} has {} entries for {n} down blocks", v.len()),
        }
    }
}

fn default_true() -> bool {
    true
}
fn default_in() -> i64 {
    4
}
fn default_groups() -> i64 {
    32
}
fn default_eps() -> f64 {
    1e-5
}
fn default_one_int() -> i64 {
    1
}
fn default_one_f64() -> f64 {
    1.0
}
fn default_heads() -> PerBlock {
    PerBlock::One(8)
}
fn default_cross() -> PerBlock {
    PerBlock::One(1280)
}
fn default_layers() -> PerBlock {
    PerBlock::One(2)
}
fn default_transformer_layers() -> PerBlock {
    PerBlock::One(1)
}
fn default_three() -> i64 {
    3
}

/// `unet/config.json`, with the Python class's defaults for missing keys.
#[derive(Debug, Clone, Deserialize)]
pub struct UNetConfig {
    /// Latent channels in.
    #[serde(default = "default_in")]
    pub in_channels: i64,
    /// Latent channels out.
    #[serde(default = "default_in")]
    pub out_channels: i64,
    /// Map the input from [0, 1] to [-1, 1] first.
    #[serde(default)]
    pub center_input_sample: bool,
    /// Swap the sin and cos halves of the time embedding.
    #[serde(default = "default_true")]
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
    #[serde(default = "default_layers")]
    pub layers_per_block: PerBlock,
    /// Padding of the down-block downsamplers.
    #[serde(default = "default_one_int")]
    pub downsample_padding: i64,
    /// Scale of the mid block's resnet outputs.
    #[serde(default = "default_one_f64")]
    pub mid_block_scale_factor: f64,
    /// Activation; only SiLU exists in these checkpoints.
    #[serde(default)]
    pub act_fn: Option<String>,
    /// GroupNorm groups.
    #[serde(default = "default_groups")]
    pub norm_num_groups: i64,
    /// GroupNorm epsilon of the resnets and the output norm.
    #[serde(default = "default_eps")]
    pub norm_eps: f64,
    /// Text-embedding width (1024 for SD 2.x, 768 for SD 1.x).
    #[serde(default = "default_cross")]
    pub cross_attention_dim: PerBlock,
    /// Transformer blocks per attention.
    #[serde(default = "default_transformer_layers")]
    pub transformer_layers_per_block: PerBlock,
    /// Historic name: the number of heads per block when `num_attention_heads` is absent.
    #[serde(default = "default_heads")]
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
    #[serde(default = "default_three")]
    pub conv_in_kernel: i64,
    /// Kernel of conv_out.
    #[serde(default = "default_three")]
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
struct Plan {
    heads: Vec<i64>,
    layers: Vec<i64>,
    transformer_layers: Vec<i64>,
    cross_attention_dim: i64,
}

impl UNetConfig {
    /// Parses `unet/config.json` text.
    pub fn from_json(text: &str) -> Result<Self> {
        Ok(serde_json::from_str(text)?)
    }

    fn plan(&self) -> Result<Plan> {
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
        Ok(Plan {
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

/// The denoising UNet.
#[derive(Debug)]
pub struct UNet2DConditionModel {
    config: UNetConfig,
    conv_in: nn::Conv2D,
    time_embedding: TimestepEmbedding,
    /// Down blocks, shallow to deep.
    pub down_blocks: Vec<DownBlock>,
    /// The mid block.
    pub mid_block: MidBlock,
    /// Up blocks, deep to shallow.
    pub up_blocks: Vec<UpBlock>,
    conv_norm_out: nn::GroupNorm,
    conv_out: nn::Conv2D,
}

impl UNet2DConditionModel {
    /// Builds the UNet's variables under `p` (the store's root for a diffusers `unet/` folder).
    pub fn new(p: nn::Path, config: UNetConfig) -> Result<Self> {
        let plan = config.plan()?;
        let ch = &config.block_out_channels;
        let n = ch.len();
        let temb = ch[0] * 4;
        let bc = BlockConfig {
            temb,
            groups: config.norm_num_groups,
            eps: config.norm_eps,
            context_dim: plan.cross_attention_dim,
            linear_projection: config.use_linear_projection,
            upcast_attention: config.upcast_attention,
        };
        let attention = |i: usize, kind: &str| {
            kind.starts_with("CrossAttn").then_some(CrossAttention {
                heads: plan.heads[i],
                layers: plan.transformer_layers[i],
            })
        };
        let down_blocks = (0..n)
            .map(|i| {
                DownBlock::new(
                    &p / "down_blocks" / i,
                    &bc,
                    DownSpec {
                        c_in: if i == 0 { ch[0] } else { ch[i - 1] },
                        c_out: ch[i],
                        layers: plan.layers[i],
                        attention: attention(i, &config.down_block_types[i]),
                        downsample: i + 1 < n,
                        downsample_padding: config.downsample_padding,
                    },
                )
            })
            .collect();
        let mid_block = MidBlock::new(
            &p / "mid_block",
            &bc,
            ch[n - 1],
            CrossAttention {
                heads: plan.heads[n - 1],
                layers: plan.transformer_layers[n - 1],
            },
        );
        // The up path mirrors the down path: block i uses the settings of down block n-1-i.
        let up_blocks = (0..n)
            .map(|i| {
                let r = n - 1 - i;
                let channels = UpChannels {
                    prev_out: if i == 0 { ch[n - 1] } else { ch[r + 1] },
                    out: ch[r],
                    skip_in: ch[r.saturating_sub(1)],
                };
                let attn = attention(r, &config.up_block_types[i]);
                UpBlock::new(
                    &p / "up_blocks" / i,
                    &bc,
                    channels,
                    plan.layers[r] + 1,
                    attn,
                    i + 1 < n,
                )
            })
            .collect();
        Ok(Self {
            conv_in: conv2d(&p / "conv_in", config.in_channels, ch[0], 3, 1, 1),
            time_embedding: TimestepEmbedding::new(&p / "time_embedding", ch[0], temb),
            down_blocks,
            mid_block,
            up_blocks,
            conv_norm_out: group_norm(
                &p / "conv_norm_out",
                config.norm_num_groups,
                ch[0],
                config.norm_eps,
            ),
            conv_out: conv2d(&p / "conv_out", ch[0], config.out_channels, 3, 1, 1),
            config,
        })
    }

    /// The config the model was built from.
    pub fn config(&self) -> &UNetConfig {
        &self.config
    }

    /// Every cross-attention layer (`attn2`) with its diffusers path, e.g.
    /// `["down_blocks", "0", "attentions", "0", "transformer_blocks", "0", "attn2"]`: the layers
    /// whose `to_k` / `to_v` EchoDistill trains.
    pub fn cross_attentions_mut(&mut self) -> Vec<(Vec<String>, &mut Attention)> {
        self.attentions_mut()
            .into_iter()
            .filter(|(path, _)| path.last().is_some_and(|l| l == "attn2"))
            .collect()
    }

    /// Every attention layer of the transformer blocks, self (`attn1`) and cross (`attn2`),
    /// with its diffusers path: the layers LoRA adapts.
    pub fn attentions_mut(&mut self) -> Vec<(Vec<String>, &mut Attention)> {
        fn collect<'a>(
            out: &mut Vec<(Vec<String>, &'a mut Attention)>,
            prefix: &[&str],
            ts: &'a mut [Transformer2D],
        ) {
            for (j, t) in ts.iter_mut().enumerate() {
                for (k, block) in t.blocks.iter_mut().enumerate() {
                    let mut path: Vec<String> = prefix.iter().map(|s| s.to_string()).collect();
                    path.extend([
                        "attentions".into(),
                        j.to_string(),
                        "transformer_blocks".into(),
                        k.to_string(),
                    ]);
                    let with = |name: &str| {
                        let mut p = path.clone();
                        p.push(name.into());
                        p
                    };
                    let (p1, p2) = (with("attn1"), with("attn2"));
                    out.push((p1, &mut block.attn1));
                    out.push((p2, &mut block.attn2));
                }
            }
        }
        let mut out = Vec::new();
        for (i, b) in self.down_blocks.iter_mut().enumerate() {
            collect(
                &mut out,
                &["down_blocks", &i.to_string()],
                &mut b.attentions,
            );
        }
        collect(&mut out, &["mid_block"], &mut self.mid_block.attentions);
        for (i, b) in self.up_blocks.iter_mut().enumerate() {
            collect(&mut out, &["up_blocks", &i.to_string()], &mut b.attentions);
        }
        out
    }

    /// Predicts noise (or v) for `sample` (batch, 4, h, w) at `timesteps` (batch or one value)
    /// given text embeddings `context` (batch, 77, cross_attention_dim).
    pub fn forward(&self, sample: &Tensor, timesteps: &Tensor, context: &Tensor) -> Tensor {
        let batch = sample.size()[0];
        let sample = if self.config.center_input_sample {
            sample * 2.0 - 1.0
        } else {
            sample.shallow_clone()
        };
        let timesteps = timesteps
            .to_device(sample.device())
            .reshape([-1])
            .expand([batch], false);
        let t_emb = timestep_embedding(
            &timesteps,
            self.config.block_out_channels[0],
            self.config.flip_sin_to_cos,
            self.config.freq_shift,
        )
        .to_kind(sample.kind());
        let temb = self.time_embedding.forward(&t_emb);

        let mut x = self.conv_in.forward(&sample);
        let mut skips = vec![x.shallow_clone()];
        for block in &self.down_blocks {
            let (out, block_skips) = block.forward(&x, &temb, context);
            x = out;
            skips.extend(block_skips);
        }
        x = self.mid_block.forward(&x, &temb, context);
        // diffusers passes explicit upsample sizes only when the input is not a multiple of
        // 2^(number of upsamplers); then each upsampler targets the next skip's size.
        let factor = 1i64 << (self.up_blocks.len() - 1);
        let (h, w) = (sample.size()[2], sample.size()[3]);
        let forward_size = h % factor != 0 || w % factor != 0;
        for block in &self.up_blocks {
            let take = block.skips_needed();
            let rest = skips.len() - take;
            let upsample_size = (forward_size && rest > 0).then(|| {
                let s = skips[rest - 1].size();
                (s[2], s[3])
            });
            x = block.forward(&x, &skips[rest..], &temb, context, upsample_size);
            skips.truncate(rest);
        }
        self.conv_out
            .forward(&self.conv_norm_out.forward(&x).silu())
    }
}

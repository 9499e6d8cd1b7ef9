//! The UNet's down, mid and up blocks (diffusers models/unets/unet_2d_blocks.py):
//! `CrossAttnDownBlock2D`/`DownBlock2D`, `UNetMidBlock2DCrossAttn`, `UpBlock2D`/`CrossAttnUpBlock2D`.
//! A block with `attentions` is the cross-attention variant; without, the plain one.

use tch::nn::{self, Module};
use tch::Tensor;

use super::resnet::{Downsample2D, ResnetBlock2D, ResnetConfig, Upsample2D};
use super::transformer_2d::{Transformer2D, Transformer2DConfig};

/// What every block shares: time-embedding width, norm groups and eps, attention settings.
#[derive(Debug, Clone, Copy)]
pub struct BlockConfig {
    /// Time-embedding width.
    pub temb: i64,
    /// GroupNorm groups.
    pub groups: i64,
    /// GroupNorm epsilon of the resnets.
    pub eps: f64,
    /// Text-embedding width.
    pub context_dim: i64,
    /// Linear projections in the transformers.
    pub linear_projection: bool,
    /// f32 attention for half-precision weights.
    pub upcast_attention: bool,
}

impl BlockConfig {
    fn resnet(&self, c_in: i64, c_out: i64) -> ResnetConfig {
        ResnetConfig {
            c_in,
            c_out,
            temb: Some(self.temb),
            groups: self.groups,
            eps: self.eps,
        }
    }

    fn transformer(&self, channels: i64, heads: i64, layers: i64) -> Transformer2DConfig {
        Transformer2DConfig {
            channels,
            heads,
            context_dim: self.context_dim,
            groups: self.groups,
            linear_projection: self.linear_projection,
            upcast_attention: self.upcast_attention,
            layers,
        }
    }
}

/// Attention settings of a cross-attention block: heads and transformer layers per attention.
#[derive(Debug, Clone, Copy)]
pub struct CrossAttention {
    /// Attention heads.
    pub heads: i64,
    /// Transformer blocks in each `Transformer2DModel`.
    pub layers: i64,
}

/// A down block: `layers` resnets (each followed by a transformer when cross-attention), then a
/// stride-2 downsampler unless it is the last block.
#[derive(Debug)]
pub struct DownBlock {
    resnets: Vec<ResnetBlock2D>,
    /// Transformers after each resnet; empty for `DownBlock2D`.
    pub attentions: Vec<Transformer2D>,
    downsampler: Option<Downsample2D>,
}

/// The shape of one down block.
#[derive(Debug, Clone, Copy)]
pub struct DownSpec {
    /// Input channels.
    pub c_in: i64,
    /// Output channels.
    pub c_out: i64,
    /// Resnets (and transformers) in the block.
    pub layers: i64,
    /// Cross-attention settings; `None` for `DownBlock2D`.
    pub attention: Option<CrossAttention>,
    /// Whether a stride-2 downsampler ends the block.
    pub downsample: bool,
    /// The downsampler's padding.
    pub downsample_padding: i64,
}

impl DownBlock {
    /// Builds `down_blocks.{i}` under `p`.
    pub fn new(p: nn::Path, c: &BlockConfig, s: DownSpec) -> Self {
        let resnets = (0..s.layers)
            .map(|j| {
                ResnetBlock2D::new(
                    &p / "resnets" / j,
                    c.resnet(if j == 0 { s.c_in } else { s.c_out }, s.c_out),
                )
            })
            .collect();
        let attentions = match s.attention {
            Some(a) => (0..s.layers)
                .map(|j| {
                    Transformer2D::new(
                        &p / "attentions" / j,
                        c.transformer(s.c_out, a.heads, a.layers),
                    )
                })
                .collect(),
            None => Vec::new(),
        };
        let downsampler = s
            .downsample
            .then(|| Downsample2D::new(&p / "downsamplers" / 0, s.c_out, s.downsample_padding));
        Self {
            resnets,
            attentions,
            downsampler,
        }
    }

    /// Number of skip tensors the block hands to the up path (its last is also its output).
    pub fn skips_produced(&self) -> usize {
        self.resnets.len() + usize::from(self.downsampler.is_some())
    }

    /// Returns the output and the skip tensors for the up path (one per resnet, one after the
    /// downsampler).
    pub fn forward(&self, x: &Tensor, temb: &Tensor, context: &Tensor) -> (Tensor, Vec<Tensor>) {
        let mut x = x.shallow_clone();
        let mut skips = Vec::with_capacity(self.resnets.len() + 1);
        for (j, resnet) in self.resnets.iter().enumerate() {
            x = resnet.forward(&x, Some(temb));
            if let Some(attn) = self.attentions.get(j) {
                x = attn.forward(&x, context);
            }
            skips.push(x.shallow_clone());
        }
        if let Some(down) = &self.downsampler {
            x = down.forward(&x);
            skips.push(x.shallow_clone());
        }
        (x, skips)
    }
}

/// `UNetMidBlock2DCrossAttn`: resnet, then (transformer, resnet) per layer.
#[derive(Debug)]
pub struct MidBlock {
    resnets: Vec<ResnetBlock2D>,
    /// The mid block's transformers.
    pub attentions: Vec<Transformer2D>,
}

impl MidBlock {
    /// Builds `mid_block` under `p` with one attention layer.
    pub fn new(p: nn::Path, c: &BlockConfig, channels: i64, attention: CrossAttention) -> Self {
        Self {
            resnets: (0..2)
                .map(|j| ResnetBlock2D::new(&p / "resnets" / j, c.resnet(channels, channels)))
                .collect(),
            attentions: vec![Transformer2D::new(
                &p / "attentions" / 0,
                c.transformer(channels, attention.heads, attention.layers),
            )],
        }
    }

    /// Runs the block.
    pub fn forward(&self, x: &Tensor, temb: &Tensor, context: &Tensor) -> Tensor {
        let mut x = self.resnets[0].forward(x, Some(temb));
        for (attn, resnet) in self.attentions.iter().zip(&self.resnets[1..]) {
            x = resnet.forward(&attn.forward(&x, context), Some(temb));
        }
        x
    }
}

/// The channel plan of one up block.
#[derive(Debug, Clone, Copy)]
pub struct UpChannels {
    /// Channels coming from the previous (deeper) up block.
    pub prev_out: i64,
    /// This block's output channels.
    pub out: i64,
    /// Channels of the last skip tensor this block consumes (from the shallower down block).
    pub skip_in: i64,
}

/// An up block: `layers` resnets over (x ‖ skip), each followed by a transformer when
/// cross-attention, then a ×2 upsampler unless it is the last block.
#[derive(Debug)]
pub struct UpBlock {
    resnets: Vec<ResnetBlock2D>,
    /// Transformers after each resnet; empty for `UpBlock2D`.
    pub attentions: Vec<Transformer2D>,
    upsampler: Option<Upsample2D>,
}

impl UpBlock {
    /// Builds `up_blocks.{i}` under `p`.
    pub fn new(
        p: nn::Path,
        c: &BlockConfig,
        ch: UpChannels,
        layers: i64,
        attention: Option<CrossAttention>,
        upsample: bool,
    ) -> Self {
        let resnets = (0..layers)
            .map(|j| {
                let skip = if j == layers - 1 { ch.skip_in } else { ch.out };
                let c_in = if j == 0 { ch.prev_out } else { ch.out };
                ResnetBlock2D::new(&p / "resnets" / j, c.resnet(c_in + skip, ch.out))
            })
            .collect();
        let attentions = match attention {
            Some(a) => (0..layers)
                .map(|j| {
                    Transformer2D::new(
                        &p / "attentions" / j,
                        c.transformer(ch.out, a.heads, a.layers),
                    )
                })
                .collect(),
            None => Vec::new(),
        };
        Self {
            resnets,
            attentions,
            upsampler: upsample.then(|| Upsample2D::new(&p / "upsamplers" / 0, ch.out)),
        }
    }

    /// Number of skip tensors this block consumes.
    pub fn skips_needed(&self) -> usize {
        self.resnets.len()
    }

    /// `skips` are consumed from the end (the deepest first), as diffusers pops them.
    pub fn forward(
        &self,
        x: &Tensor,
        skips: &[Tensor],
        temb: &Tensor,
        context: &Tensor,
        upsample_size: Option<(i64, i64)>,
    ) -> Tensor {
        let mut x = x.shallow_clone();
        for (j, resnet) in self.resnets.iter().enumerate() {
            let skip = &skips[skips.len() - 1 - j];
            x = resnet.forward(&Tensor::cat(&[&x, skip], 1), Some(temb));
            if let Some(attn) = self.attentions.get(j) {
                x = attn.forward(&x, context);
            }
        }
        match &self.upsampler {
            Some(up) => up.forward(&x, upsample_size),
            None => x,
        }
    }
}

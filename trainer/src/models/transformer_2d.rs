//! diffusers' `Transformer2DModel` for continuous (latent image) input
//! (models/transformers/transformer_2d.py): GroupNorm, a linear (SD 2.x) or 1×1 conv (SD 1.x)
//! projection in, `BasicTransformerBlock`s, the projection out, and a residual.

use tch::nn::{self, Module};
use tch::Tensor;

use super::attention::BasicTransformerBlock;
use super::{conv2d, group_norm, linear};

/// Projection in and out: 1×1 convolutions or linear layers (`use_linear_projection`).
#[derive(Debug)]
enum Projection {
    Conv(nn::Conv2D),
    Linear(nn::Linear),
}

/// The sizes of a [`Transformer2D`].
#[derive(Debug, Clone, Copy)]
pub struct Transformer2DConfig {
    /// Channels of the feature map (= heads × head width).
    pub channels: i64,
    /// Attention heads.
    pub heads: i64,
    /// Text-embedding width.
    pub context_dim: i64,
    /// GroupNorm groups.
    pub groups: i64,
    /// Linear (true) or 1×1 conv (false) projections.
    pub linear_projection: bool,
    /// Attention in f32 for half-precision weights.
    pub upcast_attention: bool,
    /// Number of transformer blocks.
    pub layers: i64,
}

/// A spatial transformer over a (batch, channels, height, width) feature map.
#[derive(Debug)]
pub struct Transformer2D {
    norm: nn::GroupNorm,
    proj_in: Projection,
    /// The transformer blocks, whose `attn2` layers EchoDistill trains.
    pub blocks: Vec<BasicTransformerBlock>,
    proj_out: Projection,
}

impl Transformer2D {
    /// Builds the model under `p`.
    pub fn new(p: nn::Path, c: Transformer2DConfig) -> Self {
        let projection = |name: &str| {
            if c.linear_projection {
                Projection::Linear(linear(&p / name, c.channels, c.channels, true))
            } else {
                Projection::Conv(conv2d(&p / name, c.channels, c.channels, 1, 1, 0))
            }
        };
        let dim_head = c.channels / c.heads;
        Self {
            norm: group_norm(&p / "norm", c.groups, c.channels, 1e-6),
            proj_in: projection("proj_in"),
            blocks: (0..c.layers)
                .map(|i| {
                    BasicTransformerBlock::new(
                        &p / "transformer_blocks" / i,
                        c.channels,
                        c.heads,
                        dim_head,
                        c.context_dim,
                        c.upcast_attention,
                    )
                })
                .collect(),
            proj_out: projection("proj_out"),
        }
    }

    /// `x`: (batch, channels, h, w); `context`: (batch, tokens, context_dim).
    pub fn forward(&self, x: &Tensor, context: &Tensor) -> Tensor {
        let (b, c, h, w) = x
            .size4()
            .expect("transformer input is (batch, channels, h, w)");
        let to_tokens = |t: &Tensor| t.permute([0, 2, 3, 1]).reshape([b, h * w, c]);
        let normed = self.norm.forward(x);
        let mut tokens = match &self.proj_in {
            Projection::Conv(conv) => to_tokens(&conv.forward(&normed)),
            Projection::Linear(lin) => lin.forward(&to_tokens(&normed)),
        };
        for block in &self.blocks {
            tokens = block.forward(&tokens, context);
        }
        let to_map = |t: &Tensor| t.reshape([b, h, w, c]).permute([0, 3, 1, 2]);
        let out = match &self.proj_out {
            Projection::Conv(conv) => conv.forward(&to_map(&tokens).contiguous()),
            Projection::Linear(lin) => to_map(&lin.forward(&tokens)),
        };
        out + x
    }
}

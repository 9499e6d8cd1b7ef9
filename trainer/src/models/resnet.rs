//! diffusers' `ResnetBlock2D`, `Downsample2D` and `Upsample2D` (models/resnet.py,
//! models/downsampling.py, models/upsampling.py), with the default time-embedding shift.

use tch::nn::{self, Module};
use tch::Tensor;

use super::{conv2d, group_norm, linear};

/// The sizes of a [`ResnetBlock2D`].
#[derive(Debug, Clone, Copy)]
pub struct ResnetConfig {
    /// Input channels.
    pub c_in: i64,
    /// Output channels.
    pub c_out: i64,
    /// Width of the time embedding, `None` in the VAE.
    pub temb: Option<i64>,
    /// GroupNorm groups.
    pub groups: i64,
    /// GroupNorm epsilon (1e-5 in the UNet, 1e-6 in the VAE).
    pub eps: f64,
}

/// Two 3×3 convolutions with GroupNorm and SiLU, the time embedding added in between.
#[derive(Debug)]
pub struct ResnetBlock2D {
    norm1: nn::GroupNorm,
    conv1: nn::Conv2D,
    time_emb_proj: Option<nn::Linear>,
    norm2: nn::GroupNorm,
    conv2: nn::Conv2D,
    conv_shortcut: Option<nn::Conv2D>,
}

impl ResnetBlock2D {
    /// Builds the block under `p`.
    pub fn new(p: nn::Path, c: ResnetConfig) -> Self {
        Self {
            norm1: group_norm(&p / "norm1", c.groups, c.c_in, c.eps),
            conv1: conv2d(&p / "conv1", c.c_in, c.c_out, 3, 1, 1),
            time_emb_proj: c
                .temb
                .map(|t| linear(&p / "time_emb_proj", t, c.c_out, true)),
            norm2: group_norm(&p / "norm2", c.groups, c.c_out, c.eps),
            conv2: conv2d(&p / "conv2", c.c_out, c.c_out, 3, 1, 1),
            conv_shortcut: (c.c_in != c.c_out)
                .then(|| conv2d(&p / "conv_shortcut", c.c_in, c.c_out, 1, 1, 0)),
        }
    }

    /// `temb` is the UNet's time embedding (batch, temb); ignored when the block has none.
    pub fn forward(&self, x: &Tensor, temb: Option<&Tensor>) -> Tensor {
        let mut h = self.conv1.forward(&self.norm1.forward(x).silu());
        if let (Some(proj), Some(temb)) = (&self.time_emb_proj, temb) {
            h += proj.forward(&temb.silu()).unsqueeze(-1).unsqueeze(-1);
        }
        let h = self.conv2.forward(&self.norm2.forward(&h).silu());
        match &self.conv_shortcut {
            Some(conv) => conv.forward(x) + h,
            None => x + h,
        }
    }
}

/// A stride-2 3×3 convolution (`downsamplers.0.conv`). With padding 0 (the VAE) the input is
/// first padded by one on the right and bottom, as diffusers does.
#[derive(Debug)]
pub struct Downsample2D {
    conv: nn::Conv2D,
    pad_right_bottom: bool,
}

impl Downsample2D {
    /// Builds the convolution under `p` (`…/downsamplers/0`).
    pub fn new(p: nn::Path, channels: i64, padding: i64) -> Self {
        Self {
            conv: conv2d(&p / "conv", channels, channels, 3, 2, padding),
            pad_right_bottom: padding == 0,
        }
    }
}

impl Module for Downsample2D {
    fn forward(&self, x: &Tensor) -> Tensor {
        if self.pad_right_bottom {
            self.conv.forward(&x.constant_pad_nd([0, 1, 0, 1]))
        } else {
            self.conv.forward(x)
        }
    }
}

/// Nearest-neighbour ×2 (or to a given size) then a 3×3 convolution (`upsamplers.0.conv`).
#[derive(Debug)]
pub struct Upsample2D {
    conv: nn::Conv2D,
}

impl Upsample2D {
    /// Builds the convolution under `p` (`…/upsamplers/0`).
    pub fn new(p: nn::Path, channels: i64) -> Self {
        Self {
            conv: conv2d(&p / "conv", channels, channels, 3, 1, 1),
        }
    }

    /// Upsamples to `size` when given (odd skip sizes), else by 2.
    pub fn forward(&self, x: &Tensor, size: Option<(i64, i64)>) -> Tensor {
        let (_, _, h, w) = x
            .size4()
            .expect("upsample input is (batch, channels, h, w)");
        let (th, tw) = size.unwrap_or((h * 2, w * 2));
        self.conv
            .forward(&x.upsample_nearest2d([th, tw], None, None))
    }
}

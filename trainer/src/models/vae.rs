//! diffusers' `AutoencoderKL` (models/autoencoders/autoencoder_kl.py, vae.py): the encoder to a
//! diagonal Gaussian posterior over latents, and the decoder back to RGB in [-1, 1].

use tch::nn::{self, Module};
use tch::Tensor;

use super::attention::{Attention, AttentionConfig};
use super::resnet::{Downsample2D, ResnetBlock2D, ResnetConfig, Upsample2D};
use super::{conv2d, group_norm};

pub use runtime::model_config::VaeConfig;

/// The VAE's single-head self-attention with its own GroupNorm and a residual.
#[derive(Debug)]
struct VaeAttention {
    group_norm: nn::GroupNorm,
    attention: Attention,
}

impl VaeAttention {
    fn new(p: nn::Path, channels: i64, groups: i64) -> Self {
        Self {
            group_norm: group_norm(&p / "group_norm", groups, channels, 1e-6),
            attention: Attention::new(
                p,
                AttentionConfig {
                    query_dim: channels,
                    context_dim: None,
                    heads: 1,
                    dim_head: channels,
                    qkv_bias: true,
                    upcast: true,
                },
            ),
        }
    }
}

impl Module for VaeAttention {
    fn forward(&self, x: &Tensor) -> Tensor {
        let (b, c, h, w) = x.size4().expect("(batch, channels, h, w)");
        let tokens = self
            .group_norm
            .forward(x)
            .view([b, c, h * w])
            .transpose(1, 2);
        let out = self.attention.forward(&tokens, None);
        out.transpose(1, 2).reshape([b, c, h, w]) + x
    }
}

/// `UNetMidBlock2D` without time embedding: resnet, attention, resnet.
#[derive(Debug)]
struct VaeMidBlock {
    resnets: Vec<ResnetBlock2D>,
    attention: Option<VaeAttention>,
}

impl VaeMidBlock {
    fn new(p: nn::Path, c: &VaeConfig, channels: i64) -> Self {
        let resnet = vae_resnet(c, channels, channels);
        Self {
            resnets: (0..2)
                .map(|j| ResnetBlock2D::new(&p / "resnets" / j, resnet))
                .collect(),
            attention: c
                .mid_block_add_attention
                .then(|| VaeAttention::new(&p / "attentions" / 0, channels, c.norm_num_groups)),
        }
    }
}

impl Module for VaeMidBlock {
    fn forward(&self, x: &Tensor) -> Tensor {
        let mut x = self.resnets[0].forward(x, None);
        if let Some(attn) = &self.attention {
            x = attn.forward(&x);
        }
        self.resnets[1].forward(&x, None)
    }
}

fn vae_resnet(c: &VaeConfig, c_in: i64, c_out: i64) -> ResnetConfig {
    ResnetConfig {
        c_in,
        c_out,
        temb: None,
        groups: c.norm_num_groups,
        eps: 1e-6,
    }
}

#[derive(Debug)]
struct EncoderLevel {
    resnets: Vec<ResnetBlock2D>,
    downsampler: Option<Downsample2D>,
}

/// Image → posterior moments (before `quant_conv`).
#[derive(Debug)]
struct Encoder {
    conv_in: nn::Conv2D,
    levels: Vec<EncoderLevel>,
    mid_block: VaeMidBlock,
    conv_norm_out: nn::GroupNorm,
    conv_out: nn::Conv2D,
}

impl Encoder {
    fn new(p: nn::Path, c: &VaeConfig) -> Self {
        let ch = &c.block_out_channels;
        let n = ch.len();
        let levels = (0..n)
            .map(|i| {
                let lp = &p / "down_blocks" / i;
                let c_in = if i == 0 { ch[0] } else { ch[i - 1] };
                EncoderLevel {
                    resnets: (0..c.layers_per_block)
                        .map(|j| {
                            let from = if j == 0 { c_in } else { ch[i] };
                            ResnetBlock2D::new(&lp / "resnets" / j, vae_resnet(c, from, ch[i]))
                        })
                        .collect(),
                    downsampler: (i + 1 < n)
                        .then(|| Downsample2D::new(&lp / "downsamplers" / 0, ch[i], 0)),
                }
            })
            .collect();
        Self {
            conv_in: conv2d(&p / "conv_in", c.in_channels, ch[0], 3, 1, 1),
            levels,
            mid_block: VaeMidBlock::new(&p / "mid_block", c, ch[n - 1]),
            conv_norm_out: group_norm(&p / "conv_norm_out", c.norm_num_groups, ch[n - 1], 1e-6),
            conv_out: conv2d(&p / "conv_out", ch[n - 1], 2 * c.latent_channels, 3, 1, 1),
        }
    }
}

impl Module for Encoder {
    fn forward(&self, x: &Tensor) -> Tensor {
        let mut x = self.conv_in.forward(x);
        for level in &self.levels {
            for resnet in &level.resnets {
                x = resnet.forward(&x, None);
            }
            if let Some(down) = &level.downsampler {
                x = down.forward(&x);
            }
        }
        let x = self.mid_block.forward(&x);
        self.conv_out
            .forward(&self.conv_norm_out.forward(&x).silu())
    }
}

#[derive(Debug)]
struct DecoderLevel {
    resnets: Vec<ResnetBlock2D>,
    upsampler: Option<Upsample2D>,
}

/// Latents → image.
#[derive(Debug)]
struct Decoder {
    conv_in: nn::Conv2D,
    mid_block: VaeMidBlock,
    levels: Vec<DecoderLevel>,
    conv_norm_out: nn::GroupNorm,
    conv_out: nn::Conv2D,
}

impl Decoder {
    fn new(p: nn::Path, c: &VaeConfig) -> Self {
        let ch = &c.block_out_channels;
        let n = ch.len();
        let levels = (0..n)
            .map(|i| {
                let lp = &p / "up_blocks" / i;
                let out = ch[n - 1 - i];
                let prev = if i == 0 { ch[n - 1] } else { ch[n - i] };
                DecoderLevel {
                    resnets: (0..c.layers_per_block + 1)
                        .map(|j| {
                            let from = if j == 0 { prev } else { out };
                            ResnetBlock2D::new(&lp / "resnets" / j, vae_resnet(c, from, out))
                        })
                        .collect(),
                    upsampler: (i + 1 < n).then(|| Upsample2D::new(&lp / "upsamplers" / 0, out)),
                }
            })
            .collect();
        Self {
            conv_in: conv2d(&p / "conv_in", c.latent_channels, ch[n - 1], 3, 1, 1),
            mid_block: VaeMidBlock::new(&p / "mid_block", c, ch[n - 1]),
            levels,
            conv_norm_out: group_norm(&p / "conv_norm_out", c.norm_num_groups, ch[0], 1e-6),
            conv_out: conv2d(&p / "conv_out", ch[0], c.out_channels, 3, 1, 1),
        }
    }
}

impl Module for Decoder {
    fn forward(&self, z: &Tensor) -> Tensor {
        let mut x = self.mid_block.forward(&self.conv_in.forward(z));
        for level in &self.levels {
            for resnet in &level.resnets {
                x = resnet.forward(&x, None);
            }
            if let Some(up) = &level.upsampler {
                x = up.forward(&x, None);
            }
        }
        self.conv_out
            .forward(&self.conv_norm_out.forward(&x).silu())
    }
}

/// The posterior N(mean, exp(logvar)) over latents of one image batch.
#[derive(Debug)]
pub struct DiagonalGaussian {
    /// Mean (batch, latent_channels, h/8, w/8).
    pub mean: Tensor,
    /// Log-variance, clamped to [-30, 20] as diffusers does.
    pub logvar: Tensor,
}

impl DiagonalGaussian {
    /// mean + std · `noise`, the reparameterized sample.
    pub fn sample_with(&self, noise: &Tensor) -> Tensor {
        &self.mean + (&self.logvar * 0.5).exp() * noise
    }
}

/// The VAE.
#[derive(Debug)]
pub struct AutoencoderKL {
    config: VaeConfig,
    encoder: Encoder,
    quant_conv: Option<nn::Conv2D>,
    post_quant_conv: Option<nn::Conv2D>,
    decoder: Decoder,
}

impl AutoencoderKL {
    /// Builds the variables under `p` (the store's root for a `vae/` folder).
    pub fn new(p: nn::Path, config: VaeConfig) -> Self {
        let l2 = 2 * config.latent_channels;
        let l = config.latent_channels;
        Self {
            encoder: Encoder::new(&p / "encoder", &config),
            quant_conv: config
                .use_quant_conv
                .then(|| conv2d(&p / "quant_conv", l2, l2, 1, 1, 0)),
            post_quant_conv: config
                .use_post_quant_conv
                .then(|| conv2d(&p / "post_quant_conv", l, l, 1, 1, 0)),
            decoder: Decoder::new(&p / "decoder", &config),
            config,
        }
    }

    /// The config the model was built from.
    pub fn config(&self) -> &VaeConfig {
        &self.config
    }

    /// The posterior for images in [-1, 1] (batch, 3, h, w).
    pub fn encode(&self, image: &Tensor) -> DiagonalGaussian {
        let mut moments = self.encoder.forward(image);
        if let Some(q) = &self.quant_conv {
            moments = q.forward(&moments);
        }
        let parts = moments.chunk(2, 1);
        DiagonalGaussian {
            mean: parts[0].shallow_clone(),
            logvar: parts[1].clamp(-30.0, 20.0),
        }
    }

    /// Images (unclamped, about [-1, 1]) for raw latents (already divided by the scaling
    /// factor).
    pub fn decode(&self, latents: &Tensor) -> Tensor {
        let z = match &self.post_quant_conv {
            Some(q) => q.forward(latents),
            None => latents.shallow_clone(),
        };
        self.decoder.forward(&z)
    }
}

//! The networks, written for tch, one file per diffusers/transformers module they mirror.
//! Variable names spell the checkpoints' tensor names, so weights load strictly by name.
//!
//! - [`clip_text`]: transformers' `CLIPTextModel` (the shared text encoder);
//! - [`unet_2d_condition`]: diffusers' `UNet2DConditionModel` (teacher and student), built from
//!   [`unet_2d_blocks`], [`transformer_2d`], [`attention`] (with [`lora`] adapters), [`resnet`]
//!   and [`embeddings`]; [`unet_checkpoint`] runs it with activation checkpointing;
//! - [`vae`]: diffusers' `AutoencoderKL`;
//! - image towers for the losses and evaluation: [`vit`] (DINOv1), [`dinov2`], [`clip_vision`]
//!   (IP-Adapter's image encoder, evaluation CLIPs) and [`ip_adapter`]'s image projection.

pub mod attention;
pub mod clip_encoder;
pub mod clip_text;
pub mod clip_vision;
pub mod dinov2;
pub mod embeddings;
pub mod ip_adapter;
pub mod lora;
pub mod resnet;
pub mod transformer_2d;
pub mod unet_2d_blocks;
pub mod unet_2d_condition;
pub mod unet_checkpoint;
pub mod vae;
pub mod vit;

use tch::nn;

/// A 2-D convolution with diffusers' usual bias and the given kernel, stride and padding.
pub(crate) fn conv2d(
    p: nn::Path,
    c_in: i64,
    c_out: i64,
    kernel: i64,
    stride: i64,
    padding: i64,
) -> nn::Conv2D {
    let config = nn::ConvConfig {
        stride,
        padding,
        ..Default::default()
    };
    nn::conv2d(p, c_in, c_out, kernel, config)
}

/// A linear layer, with or without bias.
pub(crate) fn linear(p: nn::Path, c_in: i64, c_out: i64, bias: bool) -> nn::Linear {
    nn::linear(
        p,
        c_in,
        c_out,
        nn::LinearConfig {
            bias,
            ..Default::default()
        },
    )
}

/// Group normalization with affine parameters.
pub(crate) fn group_norm(p: nn::Path, groups: i64, channels: i64, eps: f64) -> nn::GroupNorm {
    nn::group_norm(
        p,
        groups,
        channels,
        nn::GroupNormConfig {
            eps,
            ..Default::default()
        },
    )
}

/// Layer normalization over the last dimension with affine parameters.
pub(crate) fn layer_norm(p: nn::Path, dim: i64, eps: f64) -> nn::LayerNorm {
    nn::layer_norm(
        p,
        vec![dim],
        nn::LayerNormConfig {
            eps,
            ..Default::default()
        },
    )
}

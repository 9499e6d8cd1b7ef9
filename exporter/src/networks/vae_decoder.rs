//! The decoder half of diffusers' `AutoencoderKL` as an ONNX graph: `post_quant_conv`, then
//! `decoder.*` (mid block with its single-head attention, up levels, output conv).
//!
//! Input: `latent_sample` (batch, latent_channels, h, w), latents already divided by the VAE's
//! scaling factor. Output: `sample` (batch, 3, 8h, 8w), about [-1, 1], not clamped. Both f32.

use anyhow::Result;
use onnx_protobuf::tensor_proto::DataType;
use runtime::model_config::VaeConfig;

use super::blocks::{self, AttentionSpec};
use crate::onnx::{Dim, Graph, WeightType};
use crate::weights::Weights;

/// The VAE's GroupNorm epsilon (fixed in diffusers' encoder and decoder).
const EPS: f64 = 1e-6;

/// Builds the decoder graph; every `decoder.*` and `post_quant_conv.*` tensor must be used.
pub fn build(config: &VaeConfig, w: &mut Weights, weight_type: WeightType) -> Result<Graph> {
    let ch: Vec<usize> = config
        .block_out_channels
        .iter()
        .map(|&c| c as usize)
        .collect();
    let n = ch.len();
    let groups = config.norm_num_groups as usize;
    let mut g = Graph::new("vae_decoder", weight_type);
    let z = g.input(
        "latent_sample",
        DataType::FLOAT,
        &[
            Dim::Named("batch"),
            Dim::Fixed(config.latent_channels),
            Dim::Named("latent_height"),
            Dim::Named("latent_width"),
        ],
    );
    let mut x = g.cast_compute(&z);
    if config.use_post_quant_conv {
        x = blocks::conv(&mut g, w, &x, "post_quant_conv", 1, [0; 4])?;
    }
    x = blocks::conv3(&mut g, w, &x, "decoder.conv_in")?;

    let top = ch[n - 1];
    x = blocks::resnet(
        &mut g,
        w,
        &x,
        "decoder.mid_block.resnets.0",
        None,
        groups,
        EPS,
    )?;
    if config.mid_block_add_attention {
        x = mid_attention(&mut g, w, &x, top, groups)?;
    }
    x = blocks::resnet(
        &mut g,
        w,
        &x,
        "decoder.mid_block.resnets.1",
        None,
        groups,
        EPS,
    )?;

    for i in 0..n {
        let p = format!("decoder.up_blocks.{i}");
        for j in 0..config.layers_per_block as usize + 1 {
            x = blocks::resnet(
                &mut g,
                w,
                &x,
                &format!("{p}.resnets.{j}"),
                None,
                groups,
                EPS,
            )?;
        }
        if i + 1 < n {
            x = blocks::upsample(&mut g, w, &x, &format!("{p}.upsamplers.0"), None)?;
        }
    }
    let out = blocks::norm_silu_conv(
        &mut g,
        w,
        &x,
        "decoder.conv_norm_out",
        "decoder.conv_out",
        groups,
        EPS,
    )?;
    g.output_f32(
        &out,
        "sample",
        &[
            Dim::Named("batch"),
            Dim::Fixed(config.out_channels),
            Dim::Named("height"),
            Dim::Named("width"),
        ],
    );
    w.check_all_taken(&["decoder.", "post_quant_conv."])?;
    Ok(g)
}

/// The mid block's attention: GroupNorm, one head over all pixels, residual.
fn mid_attention(
    g: &mut Graph,
    w: &mut Weights,
    x: &str,
    channels: usize,
    groups: usize,
) -> Result<String> {
    let name = "decoder.mid_block.attentions.0";
    g.push(name);
    let shape = g.shape(x);
    let h = blocks::group_norm(g, w, x, &format!("{name}.group_norm"), groups, EPS)?;
    let tokens = blocks::to_tokens(g, &h, channels as i64);
    let spec = AttentionSpec {
        heads: 1,
        head_dim: channels,
        qkv_bias: true,
        upcast: true,
    };
    let a = blocks::attention(g, w, &tokens, None, name, spec)?;
    let a = blocks::to_map(g, &a, &shape);
    let out = g.add(&a, x);
    g.pop();
    Ok(out)
}

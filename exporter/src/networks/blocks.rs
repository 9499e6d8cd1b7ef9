//! Pieces the UNet and the VAE decoder share, as ONNX subgraphs named and weighted like their
//! diffusers modules: `ResnetBlock2D`, up/downsamplers, GroupNorm, Linear, and diffusers'
//! `Attention` over feature maps.

use anyhow::Result;

use crate::onnx::Graph;
use crate::weights::Weights;

/// Adds `{name}.weight` and `{name}.bias` as a GroupNorm over `x`.
pub fn group_norm(
    g: &mut Graph,
    w: &mut Weights,
    x: &str,
    name: &str,
    groups: usize,
    eps: f64,
) -> Result<String> {
    let gamma = w.take(&format!("{name}.weight"))?;
    let beta = w.take(&format!("{name}.bias"))?;
    Ok(g.group_norm(x, name, groups, &gamma, &beta, eps))
}

/// Adds `{name}.weight` and `{name}.bias` as a LayerNorm over the last axis.
pub fn layer_norm(g: &mut Graph, w: &mut Weights, x: &str, name: &str, eps: f64) -> Result<String> {
    let gamma = w.take(&format!("{name}.weight"))?;
    let beta = w.take(&format!("{name}.bias"))?;
    Ok(g.layer_norm(x, name, &gamma, &beta, eps))
}

/// A linear layer `{name}` (bias when `bias`).
pub fn linear(g: &mut Graph, w: &mut Weights, x: &str, name: &str, bias: bool) -> Result<String> {
    let weight = w.take(&format!("{name}.weight"))?;
    let b = if bias {
        Some(w.take(&format!("{name}.bias"))?)
    } else {
        None
    };
    Ok(g.linear(x, name, &weight, b.as_ref()))
}

/// A convolution `{name}` with stride and ONNX pads [top, left, bottom, right].
pub fn conv(
    g: &mut Graph,
    w: &mut Weights,
    x: &str,
    name: &str,
    stride: i64,
    pads: [i64; 4],
) -> Result<String> {
    let weight = w.take(&format!("{name}.weight"))?;
    let bias = w.take(&format!("{name}.bias"))?;
    Ok(g.conv(x, name, &weight, &bias, stride, pads))
}

/// A 3×3 "same" convolution.
pub fn conv3(g: &mut Graph, w: &mut Weights, x: &str, name: &str) -> Result<String> {
    conv(g, w, x, name, 1, [1, 1, 1, 1])
}

/// GroupNorm `norm`, SiLU, 3×3 conv `conv`: the two halves of a resnet and the networks' output
/// heads.
pub fn norm_silu_conv(
    g: &mut Graph,
    w: &mut Weights,
    x: &str,
    norm: &str,
    conv: &str,
    groups: usize,
    eps: f64,
) -> Result<String> {
    let h = group_norm(g, w, x, norm, groups, eps)?;
    let h = g.silu(&h);
    conv3(g, w, &h, conv)
}

/// `ResnetBlock2D` at `name`: GroupNorm, SiLU, conv, (+ projected time embedding), GroupNorm,
/// SiLU, conv, plus the (1×1-projected when the width changes) input.
pub fn resnet(
    g: &mut Graph,
    w: &mut Weights,
    x: &str,
    name: &str,
    temb: Option<&str>,
    groups: usize,
    eps: f64,
) -> Result<String> {
    g.push(name);
    let mut h = norm_silu_conv(
        g,
        w,
        x,
        &format!("{name}.norm1"),
        &format!("{name}.conv1"),
        groups,
        eps,
    )?;
    if let Some(temb) = temb {
        let t = g.silu(temb);
        let t = linear(g, w, &t, &format!("{name}.time_emb_proj"), true)?;
        let t = g.unsqueeze(&t, &[2, 3]);
        h = g.add(&h, &t);
    }
    let h = norm_silu_conv(
        g,
        w,
        &h,
        &format!("{name}.norm2"),
        &format!("{name}.conv2"),
        groups,
        eps,
    )?;
    let shortcut_name = format!("{name}.conv_shortcut");
    let shortcut = if w.shape(&format!("{shortcut_name}.weight")).is_some() {
        conv(g, w, x, &shortcut_name, 1, [0, 0, 0, 0])?
    } else {
        x.to_string()
    };
    let out = g.add(&shortcut, &h);
    g.pop();
    Ok(out)
}

/// `Downsample2D` at `name` (`…downsamplers.0`): a stride-2 3×3 conv; with padding 0 (the VAE)
/// the input is padded by one on the right and bottom only, as diffusers pads it.
pub fn downsample(
    g: &mut Graph,
    w: &mut Weights,
    x: &str,
    name: &str,
    padding: i64,
) -> Result<String> {
    let pads = if padding == 0 {
        [0, 0, 1, 1]
    } else {
        [padding; 4]
    };
    conv(g, w, x, &format!("{name}.conv"), 2, pads)
}

/// `Upsample2D` at `name`: nearest-neighbour to the spatial size of `like` (the next skip, as
/// diffusers sizes it), or ×2 without one, then a 3×3 conv.
pub fn upsample(
    g: &mut Graph,
    w: &mut Weights,
    x: &str,
    name: &str,
    like: Option<&str>,
) -> Result<String> {
    let up = match like {
        Some(like) => g.upsample_nearest_like(x, like),
        None => g.upsample_nearest_2x(x),
    };
    conv3(g, w, &up, &format!("{name}.conv"))
}

/// (batch, channels, h, w) → (batch, h·w, channels).
pub fn to_tokens(g: &mut Graph, x: &str, channels: i64) -> String {
    let flat = g.reshape(x, &[0, channels, -1]);
    g.transpose(&flat, &[0, 2, 1])
}

/// (batch, h·w, channels) → the shape held by `shape` (batch, channels, h, w).
pub fn to_map(g: &mut Graph, tokens: &str, shape: &str) -> String {
    let t = g.transpose(tokens, &[0, 2, 1]);
    g.reshape_like(&t, shape)
}

/// The settings of one diffusers `Attention`.
#[derive(Debug, Clone, Copy)]
pub struct AttentionSpec {
    /// Heads.
    pub heads: usize,
    /// Width of one head.
    pub head_dim: usize,
    /// Whether q/k/v have biases.
    pub qkv_bias: bool,
    /// Scores in f32 for half-precision graphs.
    pub upcast: bool,
}

/// diffusers' `Attention` at `name` over tokens `x`, attending to `context` (self-attention
/// when `None`): `to_q`, `to_k`, `to_v`, softmax(q·kᵀ/√d)·v, `to_out.0`.
pub fn attention(
    g: &mut Graph,
    w: &mut Weights,
    x: &str,
    context: Option<&str>,
    name: &str,
    spec: AttentionSpec,
) -> Result<String> {
    g.push(name);
    let source = context.unwrap_or(x);
    let q = linear(g, w, x, &format!("{name}.to_q"), spec.qkv_bias)?;
    let k = linear(g, w, source, &format!("{name}.to_k"), spec.qkv_bias)?;
    let v = linear(g, w, source, &format!("{name}.to_v"), spec.qkv_bias)?;
    let out = g.attention(&q, &k, &v, spec.heads, spec.head_dim, None, spec.upcast);
    let out = linear(g, w, &out, &format!("{name}.to_out.0"), true)?;
    g.pop();
    Ok(out)
}

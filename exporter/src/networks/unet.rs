//! diffusers' `UNet2DConditionModel` as an ONNX graph, built from `unet/config.json` (the same
//! [`UNetConfig`] the trainer builds its tch UNet from) and the weights.
//!
//! Inputs: `sample` (batch, in_channels, height, width), `timestep` (batch), f32 timesteps as
//! the scheduler gives them, `encoder_hidden_states` (batch, sequence, cross_attention_dim).
//! Output: `out_sample`, the ε or v prediction, shaped like `sample`. All f32.

use anyhow::{ensure, Result};
use onnx_protobuf::tensor_proto::DataType;
use runtime::model_config::{UNetConfig, UNetPlan};

use super::blocks::{self, AttentionSpec};
use crate::onnx::{Array, Dim, Graph, WeightType};
use crate::weights::Weights;

/// What every block needs to know.
struct Ctx<'a> {
    config: &'a UNetConfig,
    plan: UNetPlan,
    temb: String,
    context: String,
}

/// Builds the UNet graph; every tensor of `w` must find its place.
pub fn build(config: &UNetConfig, w: &mut Weights, weight_type: WeightType) -> Result<Graph> {
    let plan = config.plan()?;
    let ch: Vec<usize> = config
        .block_out_channels
        .iter()
        .map(|&c| c as usize)
        .collect();
    let n = ch.len();
    ensure!(
        ch[0].is_multiple_of(2),
        "block_out_channels[0] = {} is odd: its time embedding is not supported",
        ch[0]
    );
    let mut g = Graph::new("unet", weight_type);
    let sample = g.input(
        "sample",
        DataType::FLOAT,
        &[
            Dim::Named("batch"),
            Dim::Fixed(config.in_channels),
            Dim::Named("height"),
            Dim::Named("width"),
        ],
    );
    let timestep = g.input("timestep", DataType::FLOAT, &[Dim::Named("batch")]);
    let ehs = g.input(
        "encoder_hidden_states",
        DataType::FLOAT,
        &[
            Dim::Named("batch"),
            Dim::Named("sequence"),
            Dim::Fixed(plan.cross_attention_dim),
        ],
    );

    let mut x = g.cast_compute(&sample);
    if config.center_input_sample {
        let two = g.scalar(2.0);
        let one = g.scalar(1.0);
        let doubled = g.mul(&x, &two);
        x = g.sub(&doubled, &one);
    }
    let context = g.cast_compute(&ehs);
    let temb = time_embedding(&mut g, w, config, &timestep, ch[0])?;
    let ctx = Ctx {
        config,
        plan,
        temb,
        context,
    };

    let mut x = blocks::conv3(&mut g, w, &x, "conv_in")?;
    let mut skips = vec![x.clone()];
    for (i, kind) in config.down_block_types.iter().enumerate() {
        let p = format!("down_blocks.{i}");
        let cross = kind.starts_with("CrossAttn");
        for j in 0..ctx.plan.layers[i] as usize {
            x = resnet(&mut g, w, &ctx, &x, &format!("{p}.resnets.{j}"))?;
            if cross {
                x = transformer(&mut g, w, &ctx, &x, &format!("{p}.attentions.{j}"), i)?;
            }
            skips.push(x.clone());
        }
        if i + 1 < n {
            x = blocks::downsample(
                &mut g,
                w,
                &x,
                &format!("{p}.downsamplers.0"),
                config.downsample_padding,
            )?;
            skips.push(x.clone());
        }
    }

    x = resnet(&mut g, w, &ctx, &x, "mid_block.resnets.0")?;
    x = transformer(&mut g, w, &ctx, &x, "mid_block.attentions.0", n - 1)?;
    x = resnet(&mut g, w, &ctx, &x, "mid_block.resnets.1")?;

    for (i, kind) in config.up_block_types.iter().enumerate() {
        let r = n - 1 - i;
        let p = format!("up_blocks.{i}");
        let cross = kind.starts_with("CrossAttn");
        let layers = ctx.plan.layers[r] as usize + 1;
        for j in 0..layers {
            let skip = skips
                .pop()
                .expect("the down path leaves a skip per up resnet");
            x = g.concat(&[&x, &skip], 1);
            x = resnet(&mut g, w, &ctx, &x, &format!("{p}.resnets.{j}"))?;
            if cross {
                x = transformer(&mut g, w, &ctx, &x, &format!("{p}.attentions.{j}"), r)?;
            }
        }
        if i + 1 < n {
            // diffusers upsamples to the next skip's size when the input is not a multiple of
            // 2^(blocks−1), and by 2 otherwise: both are that skip's size.
            let like = skips.last().cloned();
            x = blocks::upsample(&mut g, w, &x, &format!("{p}.upsamplers.0"), like.as_deref())?;
        }
    }

    let out = blocks::norm_silu_conv(
        &mut g,
        w,
        &x,
        "conv_norm_out",
        "conv_out",
        config.norm_num_groups as usize,
        config.norm_eps,
    )?;
    g.output_f32(
        &out,
        "out_sample",
        &[
            Dim::Named("batch"),
            Dim::Fixed(config.out_channels),
            Dim::Named("height"),
            Dim::Named("width"),
        ],
    );
    w.check_all_taken(&[])?;
    Ok(g)
}

/// `get_timestep_embedding` (f32, as diffusers computes it) and the `time_embedding` MLP.
fn time_embedding(
    g: &mut Graph,
    w: &mut Weights,
    config: &UNetConfig,
    timestep: &str,
    dim: usize,
) -> Result<String> {
    g.push("time_proj");
    let half = dim / 2;
    let ln = -(10000f64.ln()) as f32;
    let denominator = half as f32 - config.freq_shift as f32;
    let freqs: Vec<f32> = (0..half)
        .map(|i| (i as f32 * ln / denominator).exp())
        .collect();
    let freqs = g.constant_f32(&Array::new(vec![1, half], freqs));
    let t = g.unsqueeze(timestep, &[1]);
    let arg = g.mul(&t, &freqs);
    let sin = g.op("Sin", &[&arg], vec![]);
    let cos = g.op("Cos", &[&arg], vec![]);
    let emb = if config.flip_sin_to_cos {
        g.concat(&[&cos, &sin], 1)
    } else {
        g.concat(&[&sin, &cos], 1)
    };
    let emb = g.cast_compute(&emb);
    g.pop();
    g.push("time_embedding");
    let h = blocks::linear(g, w, &emb, "time_embedding.linear_1", true)?;
    let h = g.silu(&h);
    let out = blocks::linear(g, w, &h, "time_embedding.linear_2", true)?;
    g.pop();
    Ok(out)
}

fn resnet(g: &mut Graph, w: &mut Weights, ctx: &Ctx, x: &str, name: &str) -> Result<String> {
    blocks::resnet(
        g,
        w,
        x,
        name,
        Some(&ctx.temb),
        ctx.config.norm_num_groups as usize,
        ctx.config.norm_eps,
    )
}

/// `Transformer2DModel` at `name` in the level of down block `block` (whose width, heads and
/// depth it takes): GroupNorm, projection in (linear or 1×1 conv), the
/// `BasicTransformerBlock`s, projection out, residual.
fn transformer(
    g: &mut Graph,
    w: &mut Weights,
    ctx: &Ctx,
    x: &str,
    name: &str,
    block: usize,
) -> Result<String> {
    let channels = ctx.config.block_out_channels[block] as usize;
    let heads = ctx.plan.heads[block] as usize;
    let layers = ctx.plan.transformer_layers[block] as usize;
    g.push(name);
    let c = channels as i64;
    let shape = g.shape(x);
    let h = blocks::group_norm(
        g,
        w,
        x,
        &format!("{name}.norm"),
        ctx.config.norm_num_groups as usize,
        1e-6,
    )?;
    let linear = ctx.config.use_linear_projection;
    let mut tokens = if linear {
        let t = blocks::to_tokens(g, &h, c);
        blocks::linear(g, w, &t, &format!("{name}.proj_in"), true)?
    } else {
        let m = blocks::conv(g, w, &h, &format!("{name}.proj_in"), 1, [0; 4])?;
        blocks::to_tokens(g, &m, c)
    };
    let spec = AttentionSpec {
        heads,
        head_dim: channels / heads,
        qkv_bias: false,
        upcast: ctx.config.upcast_attention,
    };
    for k in 0..layers {
        let b = format!("{name}.transformer_blocks.{k}");
        let n1 = blocks::layer_norm(g, w, &tokens, &format!("{b}.norm1"), 1e-5)?;
        let a1 = blocks::attention(g, w, &n1, None, &format!("{b}.attn1"), spec)?;
        tokens = g.add(&a1, &tokens);
        let n2 = blocks::layer_norm(g, w, &tokens, &format!("{b}.norm2"), 1e-5)?;
        let a2 = blocks::attention(g, w, &n2, Some(&ctx.context), &format!("{b}.attn2"), spec)?;
        tokens = g.add(&a2, &tokens);
        let n3 = blocks::layer_norm(g, w, &tokens, &format!("{b}.norm3"), 1e-5)?;
        let f = feed_forward(g, w, &n3, &format!("{b}.ff"))?;
        tokens = g.add(&f, &tokens);
    }
    let out = if linear {
        let t = blocks::linear(g, w, &tokens, &format!("{name}.proj_out"), true)?;
        blocks::to_map(g, &t, &shape)
    } else {
        let m = blocks::to_map(g, &tokens, &shape);
        blocks::conv(g, w, &m, &format!("{name}.proj_out"), 1, [0; 4])?
    };
    let out = g.add(&out, x);
    g.pop();
    Ok(out)
}

/// `FeedForward` with GEGLU: `net.0.proj` → a · gelu(gate) → `net.2`.
fn feed_forward(g: &mut Graph, w: &mut Weights, x: &str, name: &str) -> Result<String> {
    let h = blocks::linear(g, w, x, &format!("{name}.net.0.proj"), true)?;
    let (a, gate) = g.split_half(&h);
    let gate = g.gelu(&gate);
    let h = g.mul(&a, &gate);
    blocks::linear(g, w, &h, &format!("{name}.net.2"), true)
}

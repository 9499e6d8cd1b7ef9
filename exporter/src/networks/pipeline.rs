//! The fused text-to-image pipeline: the text encoder, the UNet once per denoising step with the
//! scheduler's step math between them, the VAE scaling, the decoder and the conversion to 8-bit
//! RGB, all in one graph, so a consumer runs a single session per image.
//!
//! Inputs: `input_ids` (batch, sequence) int64, `noise` (batch, latent_channels, h, w) f32
//! standard normal (the scheduler's initial sigma is applied inside), `steps` int64 scalar, one of
//! the step counts the pipeline was built for (an `If` chain picks the unrolled denoiser for it;
//! with a single step count it is not read). Output: `image` (batch, 8h, 8w, 3) uint8 RGB.
//!
//! Every step of the schedulers this project drives is affine in the sample and the model
//! output ([`StepCoefficients`]), so a step is a few multiply-adds with constants computed here
//! by the runtime core, the same numbers the trainer's and the runtime's samplers use. Steps
//! that add fresh noise (ancestral schedulers) and classifier-free guidance are not built in:
//! [`build`] refuses them, and the split networks serve those.

use anyhow::{bail, Result};
use onnx_protobuf::tensor_proto::DataType;
use runtime::scheduler::StepCoefficients;
use runtime::{Scheduler, SchedulerConfig};

use crate::onnx::graph::{attr_graph, attr_int};
use crate::onnx::{Array, Dim, Graph, WeightType};

/// The three networks, each built on its own by its module.
pub struct Networks {
    /// [`super::clip_text::build`]'s graph.
    pub text_encoder: Graph,
    /// [`super::unet::build`]'s graph.
    pub unet: Graph,
    /// [`super::vae_decoder::build`]'s graph.
    pub vae_decoder: Graph,
}

/// What the pipeline needs besides the networks.
pub struct PipelineSpec<'a> {
    /// The base model's scheduler.
    pub scheduler: &'a SchedulerConfig,
    /// The step counts to unroll (at least one).
    pub steps: &'a [u32],
    /// Latent channels of the VAE.
    pub latent_channels: i64,
    /// The VAE's `scaling_factor`; latents are divided by it before decoding.
    pub scaling_factor: f64,
}

/// The scheduler's constants for `steps` steps.
struct Schedule {
    init_sigma: f32,
    timesteps: Vec<f32>,
    input_scales: Vec<f32>,
    coefficients: Vec<StepCoefficients>,
}

fn schedule(config: &SchedulerConfig, steps: u32) -> Result<Schedule> {
    let mut s = Scheduler::new(config.clone());
    s.set_timesteps(steps as usize)?;
    let n = steps as usize;
    let coefficients = (0..n)
        .map(|i| s.step_coefficients(i))
        .collect::<Result<Vec<_>, _>>()?;
    if let Some(i) = coefficients.iter().position(|c| c.noise != 0.0) {
        bail!(
            "with {steps} steps, step {i} of the base's {:?} scheduler adds fresh noise (ancestral sampling), which the fused pipeline does not take as input: bake without --fused, or with a deterministic scheduler",
            config.kind
        );
    }
    Ok(Schedule {
        init_sigma: s.init_noise_sigma(),
        timesteps: s.timesteps().to_vec(),
        input_scales: (0..n)
            .map(|i| s.model_input_scale(i))
            .collect::<Result<_, _>>()?,
        coefficients,
    })
}

/// Checks up front that every step count can be fused (no step adds fresh noise).
pub fn check_schedule(config: &SchedulerConfig, steps: &[u32]) -> Result<()> {
    for &k in steps {
        schedule(config, k)?;
    }
    Ok(())
}

/// Builds the pipeline graph, consuming the networks' graphs (their weights move into it).
pub fn build(nets: Networks, spec: &PipelineSpec, weight_type: WeightType) -> Result<Graph> {
    if spec.steps.is_empty() {
        bail!("the fused pipeline needs at least one step count");
    }
    let schedules = spec
        .steps
        .iter()
        .map(|&k| schedule(spec.scheduler, k))
        .collect::<Result<Vec<_>>>()?;

    let mut g = Graph::new("pipeline", weight_type);
    let ids = g.input(
        "input_ids",
        DataType::INT64,
        &[Dim::Named("batch"), Dim::Named("sequence")],
    );
    let latent_dims = [
        Dim::Named("batch"),
        Dim::Fixed(spec.latent_channels),
        Dim::Named("latent_height"),
        Dim::Named("latent_width"),
    ];
    let noise = g.input("noise", DataType::FLOAT, &latent_dims);
    let steps = g.input("steps", DataType::INT64, &[]);

    g.push("text_encoder");
    let hidden = g.inline(&nets.text_encoder, "text_encoder", "text_encoder.", &[&ids])[0].clone();
    g.pop();
    let shape = g.shape(&noise);
    let (zero, one) = (g.ints(&[0]), g.ints(&[1]));
    let batch = g.slice(&shape, &zero, &one, &[0]);
    let outer = Outer {
        unet: &nets.unet,
        noise: &noise,
        hidden: &hidden,
        batch: &batch,
        steps: &steps,
        latent_dims: &latent_dims,
    };
    let latents = denoise_chain(&mut g, &outer, spec.steps, &schedules);

    // Divided, not multiplied by the inverse, to round as the samplers do.
    let factor = g.scalar_f32(spec.scaling_factor as f32);
    let z = g.op("Div", &[&latents, &factor], vec![]);
    g.push("vae_decoder");
    let decoded = g.inline(&nets.vae_decoder, "vae_decoder", "vae.", &[&z])[0].clone();
    g.pop();
    let image = to_rgb8(&mut g, &decoded);
    g.output(
        &image,
        "image",
        DataType::UINT8,
        &[
            Dim::Named("batch"),
            Dim::Named("height"),
            Dim::Named("width"),
            Dim::Fixed(3),
        ],
    );

    let Networks {
        text_encoder,
        unet,
        vae_decoder,
    } = nets;
    g.adopt_weights(text_encoder, "text_encoder.");
    g.adopt_weights(unet, "unet.");
    g.adopt_weights(vae_decoder, "vae.");
    Ok(g)
}

/// Outer-scope values the denoising branches read.
struct Outer<'a> {
    unet: &'a Graph,
    noise: &'a str,
    hidden: &'a str,
    batch: &'a str,
    steps: &'a str,
    latent_dims: &'a [Dim],
}

/// The final latents: the one unrolled denoiser, or `If (steps == k0) … else If (steps == k1)
/// … else <last>` over the step counts.
fn denoise_chain(g: &mut Graph, o: &Outer, counts: &[u32], schedules: &[Schedule]) -> String {
    if counts.len() == 1 {
        return denoise(g, o, counts[0], &schedules[0]);
    }
    let k = g.int_scalar(i64::from(counts[0]));
    let cond = g.op("Equal", &[o.steps, &k], vec![]);
    let mut then = g.branch(&format!("denoise_{}_steps", counts[0]));
    let latents = denoise(&mut then, o, counts[0], &schedules[0]);
    let name = format!("latents_{}_steps", counts[0]);
    then.output(&latents, &name, DataType::FLOAT, o.latent_dims);
    let then = g.close_branch(then);
    let mut other = g.branch(&format!("denoise_other_than_{}_steps", counts[0]));
    let latents = denoise_chain(&mut other, o, &counts[1..], &schedules[1..]);
    let name = format!("latents_other_than_{}_steps", counts[0]);
    other.output(&latents, &name, DataType::FLOAT, o.latent_dims);
    let other = g.close_branch(other);
    g.op(
        "If",
        &[&cond],
        vec![
            attr_graph("then_branch", then),
            attr_graph("else_branch", other),
        ],
    )
}

/// `steps` denoising steps from the noise, the UNet inlined once per step.
fn denoise(g: &mut Graph, o: &Outer, steps: u32, s: &Schedule) -> String {
    let sigma = g.scalar_f32(s.init_sigma);
    let mut latents = g.mul(o.noise, &sigma);
    for (i, c) in s.coefficients.iter().enumerate() {
        let scope = format!("unet_{steps}_steps_{i}");
        g.push(scope.clone());
        let scale = g.scalar_f32(s.input_scales[i]);
        let x = g.mul(&latents, &scale);
        let t = g.constant_f32(&Array::new(vec![1], vec![s.timesteps[i]]));
        let t = g.op("Expand", &[&t, o.batch], vec![]);
        let out = g.inline(o.unet, &scope, "unet.", &[&x, &t, o.hidden])[0].clone();
        latents = step(g, c, &latents, &out);
        g.pop();
    }
    latents
}

/// One scheduler step (`StepCoefficients` without noise) on f32 values.
fn step(g: &mut Graph, c: &StepCoefficients, sample: &str, out: &str) -> String {
    let terms = |g: &mut Graph, pairs: &[(&str, f32)]| -> String {
        let mut sum: Option<String> = None;
        for &(v, w) in pairs {
            if w == 0.0 {
                continue;
            }
            let wc = g.scalar_f32(w);
            let t = g.mul(v, &wc);
            sum = Some(match sum {
                None => t,
                Some(s) => g.add(&s, &t),
            });
        }
        sum.unwrap_or_else(|| {
            let zero = g.scalar_f32(0.0);
            g.mul(sample, &zero)
        })
    };
    let mut x0 = terms(
        g,
        &[(sample, c.pred_x0.sample), (out, c.pred_x0.model_output)],
    );
    if let Some(r) = c.clip_x0 {
        let (lo, hi) = (g.scalar_f32(-r), g.scalar_f32(r));
        x0 = g.op("Clip", &[&x0, &lo, &hi], vec![]);
    }
    terms(g, &[(&x0, c.x0), (sample, c.sample), (out, c.model_output)])
}

/// Decoder output (about [-1, 1], channels first) → uint8 RGB, channels last, as
/// `runtime::image_tensor::chw_to_rgb8`: (x/2 + 0.5) clamped to [0, 1], times 255, rounded
/// half up.
fn to_rgb8(g: &mut Graph, x: &str) -> String {
    let (half, zero, one, full) = (
        g.scalar_f32(0.5),
        g.scalar_f32(0.0),
        g.scalar_f32(1.0),
        g.scalar_f32(255.0),
    );
    let y = g.mul(x, &half);
    let y = g.add(&y, &half);
    let y = g.op("Clip", &[&y, &zero, &one], vec![]);
    let y = g.mul(&y, &full);
    let y = g.add(&y, &half);
    let y = g.op("Floor", &[&y], vec![]);
    let y = g.op("Cast", &[&y], vec![attr_int("to", DataType::UINT8 as i64)]);
    g.transpose(&y, &[0, 2, 3, 1])
}

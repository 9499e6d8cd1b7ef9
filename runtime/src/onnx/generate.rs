//! Text to image with a loaded [`Model`]: token ids from the bundled tokenizer, noise from the
//! project's one generator (or a noise file), then either the fused pipeline in one run, or the
//! text encoder, the UNet once per step with the scheduler's step math from the core, and the
//! VAE decoder. The numbers are the trainer's: `trainer sample --seed S` and image 0 of a
//! request with seed S start from the same noise and take the same steps.

use std::time::Instant;

use anyhow::{anyhow, bail, ensure, Context, Result};
use ort::session::{Session, SessionInputValue};
use ort::value::{PrimitiveTensorElementType, Tensor};

use super::model::{lock, Graphs, Model};
use crate::image_tensor::chw_to_rgb8;
use crate::noise_file::{step_noise_entry, NoiseFile};
use crate::{GaussianRng, Scheduler};

/// Where a generation's noise comes from.
#[derive(Debug, Clone)]
pub enum Noise {
    /// Image `i` of the request draws from the generator seeded `seed + i`: its initial latent
    /// noise, then one draw per step that adds noise. So every image of a batch can be
    /// reproduced alone, and `trainer sample --seed` gives the same image.
    Seed(u64),
    /// Explicit noise: `noise` holds one entry per image of the request.
    File(NoiseFile),
}

/// One generation request.
#[derive(Debug, Clone)]
pub struct GenerateRequest {
    /// The prompts, e.g. "a <new1> dog on the beach".
    pub prompts: Vec<String>,
    /// Images per prompt (the batch size); images are ordered prompt by prompt.
    pub images_per_prompt: usize,
    /// The noise.
    pub noise: Noise,
    /// Denoising steps: one of the manifest's `steps`.
    pub steps: u32,
}

impl GenerateRequest {
    /// One image of `prompt` from `seed` in `steps` steps.
    pub fn new(prompt: impl Into<String>, seed: u64, steps: u32) -> Self {
        Self {
            prompts: vec![prompt.into()],
            images_per_prompt: 1,
            noise: Noise::Seed(seed),
            steps,
        }
    }
}

/// One generated image.
#[derive(Debug, Clone, PartialEq)]
pub struct GeneratedImage {
    /// The prompt it shows.
    pub prompt: String,
    /// Its seed (`None` for file noise).
    pub seed: Option<u64>,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Interleaved 8-bit RGB, row-major.
    pub rgb: Vec<u8>,
}

/// What a request produced.
#[derive(Debug, Clone)]
pub struct Generation {
    /// The images, prompt by prompt.
    pub images: Vec<GeneratedImage>,
    /// Things the caller should tell the user (prompts cut to the tokenizer's length).
    pub warnings: Vec<String>,
    /// Wall-clock seconds of the whole request.
    pub seconds: f64,
}

fn ort_err<R>(e: ort::Error<R>) -> anyhow::Error {
    anyhow!("ONNX Runtime: {e}")
}

/// Named inputs of one session run.
type Inputs = Vec<(&'static str, SessionInputValue<'static>)>;

/// Runs `session` and returns output `name` as (shape, values).
fn run<T: PrimitiveTensorElementType + Clone>(
    session: &mut Session,
    inputs: Inputs,
    name: &str,
) -> Result<(Vec<usize>, Vec<T>)> {
    let inputs: Vec<(std::borrow::Cow<'static, str>, _)> =
        inputs.into_iter().map(|(n, v)| (n.into(), v)).collect();
    let outputs = session.run(inputs).map_err(ort_err)?;
    let value = outputs
        .get(name)
        .with_context(|| format!("the graph has no output {name}"))?;
    let (shape, data) = value.try_extract_tensor::<T>().map_err(ort_err)?;
    Ok((shape.iter().map(|&d| d as usize).collect(), data.to_vec()))
}

/// An input tensor of `shape` holding `data`.
fn tensor<T: PrimitiveTensorElementType + std::fmt::Debug + Clone + 'static>(
    shape: &[usize],
    data: Vec<T>,
) -> Result<SessionInputValue<'static>> {
    let shape: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
    Ok(Tensor::from_array((shape, data)).map_err(ort_err)?.into())
}

/// Per-image noise streams for the split sampler.
enum Streams {
    Seeds(Vec<GaussianRng>),
    File(NoiseFile),
}

impl Model {
    /// Generates the images of `req`.
    /// Checks what a request asks for against this model (prompts present and non-empty, a
    /// batch, a baked step count) without running anything: what [`Model::generate`] refuses
    /// first, for callers (a server) that want to tell bad requests from failures early.
    pub fn check_request(&self, req: &GenerateRequest) -> Result<()> {
        ensure!(!req.prompts.is_empty(), "no prompt given");
        ensure!(
            req.images_per_prompt >= 1,
            "images per prompt must be at least 1"
        );
        let steps = &self.manifest.steps;
        if !steps.contains(&req.steps) {
            bail!(
                "steps {}: {} was baked for {steps:?} steps (manifest.yaml); bake it with --steps to add more",
                req.steps,
                self.dir.display()
            );
        }
        if let Some(p) = req.prompts.iter().position(|p| p.trim().is_empty()) {
            bail!("prompt {p} is empty: say what to draw, e.g. \"a <new1> dog on the beach\"");
        }
        Ok(())
    }

    /// Generates the images of `req`.
    pub fn generate(&self, req: &GenerateRequest) -> Result<Generation> {
        let started = Instant::now();
        self.check_request(req)?;
        let m = &self.manifest;
        let mut warnings = Vec::new();
        let mut ids = Vec::new();
        let mut prompts = Vec::new();
        for (p, prompt) in req.prompts.iter().enumerate() {
            let enc = self.tokenizer.encode(prompt);
            if enc.truncated > 0 {
                warnings.push(format!(
                    "prompt {p} is longer than the text encoder's {} tokens: its last {} token(s) were dropped",
                    self.tokenizer.max_length(),
                    enc.truncated
                ));
            }
            for _ in 0..req.images_per_prompt {
                ids.extend(enc.ids.iter().map(|&i| i64::from(i)));
                prompts.push(prompt.clone());
            }
        }
        let n = prompts.len();
        let sequence = self.tokenizer.max_length();
        let (width, height) = self.image_size();
        let factor = m.latent.downscale_factor;
        let latent = [
            m.latent.channels as usize,
            (height / factor) as usize,
            (width / factor) as usize,
        ];
        let numel: usize = latent.iter().product();
        let (initial, mut streams, seeds) = match &req.noise {
            Noise::Seed(seed) => {
                let mut rngs: Vec<GaussianRng> = (0..n)
                    .map(|i| GaussianRng::new(seed.wrapping_add(i as u64)))
                    .collect();
                let initial: Vec<f32> = rngs.iter_mut().flat_map(|r| r.normal(numel)).collect();
                let seeds = (0..n).map(|i| Some(seed.wrapping_add(i as u64))).collect();
                (initial, Streams::Seeds(rngs), seeds)
            }
            Noise::File(file) => {
                let want = [n, latent[0], latent[1], latent[2]];
                if file.noise.shape != want {
                    bail!(
                        "the noise file's `noise` is {:?}; {n} image(s) at {width}x{height} need {want:?}",
                        file.noise.shape
                    );
                }
                (
                    file.noise.data.clone(),
                    Streams::File(file.clone()),
                    vec![None; n],
                )
            }
        };
        let rgb = match &self.graphs {
            Graphs::Fused(pipeline) => {
                let inputs = vec![
                    ("input_ids", tensor(&[n, sequence], ids)?),
                    (
                        "noise",
                        tensor(&[n, latent[0], latent[1], latent[2]], initial)?,
                    ),
                    ("steps", tensor(&[], vec![i64::from(req.steps)])?),
                ];
                let (shape, data) = run::<u8>(&mut lock(pipeline), inputs, "image")?;
                let want = [n, height as usize, width as usize, 3];
                ensure!(
                    shape == want,
                    "the pipeline returned {shape:?}, expected {want:?}"
                );
                data
            }
            Graphs::Split {
                text_encoder,
                unet,
                vae_decoder,
            } => {
                let (hidden_shape, hidden) = run::<f32>(
                    &mut lock(text_encoder),
                    vec![("input_ids", tensor(&[n, sequence], ids)?)],
                    "last_hidden_state",
                )?;
                let latents = self.denoise(
                    unet,
                    initial,
                    [n, latent[0], latent[1], latent[2]],
                    (&hidden_shape, &hidden),
                    req.steps,
                    &mut streams,
                )?;
                let scaling = m.latent.scaling_factor as f32;
                let z: Vec<f32> = latents.iter().map(|v| v / scaling).collect();
                let (shape, sample) = run::<f32>(
                    &mut lock(vae_decoder),
                    vec![(
                        "latent_sample",
                        tensor(&[n, latent[0], latent[1], latent[2]], z)?,
                    )],
                    "sample",
                )?;
                let want = [n, 3, height as usize, width as usize];
                ensure!(
                    shape == want,
                    "the VAE decoder returned {shape:?}, expected {want:?}"
                );
                let plane = 3 * height as usize * width as usize;
                sample
                    .chunks_exact(plane)
                    .flat_map(|chw| chw_to_rgb8(chw, height as usize, width as usize))
                    .collect()
            }
        };
        let per_image = 3 * height as usize * width as usize;
        let images = rgb
            .chunks_exact(per_image)
            .zip(prompts)
            .zip(seeds)
            .map(|((rgb, prompt), seed)| GeneratedImage {
                prompt,
                seed,
                width,
                height,
                rgb: rgb.to_vec(),
            })
            .collect();
        Ok(Generation {
            images,
            warnings,
            seconds: started.elapsed().as_secs_f64(),
        })
    }

    /// The split sampler's loop: `steps` UNet runs with the scheduler's coefficients.
    fn denoise(
        &self,
        unet: &std::sync::Mutex<Session>,
        initial: Vec<f32>,
        shape: [usize; 4],
        hidden: (&[usize], &[f32]),
        steps: u32,
        streams: &mut Streams,
    ) -> Result<Vec<f32>> {
        let mut scheduler = Scheduler::new(self.scheduler.clone());
        scheduler.set_timesteps(steps as usize)?;
        let sigma = scheduler.init_noise_sigma();
        let mut latents: Vec<f32> = initial.iter().map(|v| v * sigma).collect();
        let n = shape[0];
        let per_image = latents.len() / n;
        let noisy = scheduler.noisy_steps();
        for (i, &t) in scheduler.timesteps().to_vec().iter().enumerate() {
            let scale = scheduler.model_input_scale(i)?;
            let x: Vec<f32> = latents.iter().map(|v| v * scale).collect();
            let (out_shape, out) = run::<f32>(
                &mut lock(unet),
                vec![
                    ("sample", tensor(&shape, x)?),
                    ("timestep", tensor(&[n], vec![t; n])?),
                    (
                        "encoder_hidden_states",
                        tensor(hidden.0, hidden.1.to_vec())?,
                    ),
                ],
                "out_sample",
            )?;
            ensure!(
                out_shape == shape,
                "the UNet returned {out_shape:?}, expected {shape:?}"
            );
            let c = scheduler.step_coefficients(i)?;
            let noise = if c.noise != 0.0 {
                Some(match streams {
                    Streams::Seeds(rngs) => rngs
                        .iter_mut()
                        .flat_map(|r| r.normal(per_image))
                        .collect::<Vec<f32>>(),
                    Streams::File(file) => {
                        let Some(step_noise) = &file.step_noise else {
                            bail!("step {i} adds fresh noise (ancestral sampling) but the noise file has no `step_noise` tensor");
                        };
                        let index =
                            step_noise_entry(step_noise.shape[0], i, steps as usize, &noisy)?;
                        let len = latents.len();
                        step_noise.data[index * len..(index + 1) * len].to_vec()
                    }
                })
            } else {
                None
            };
            latents = scheduler
                .step(i, &latents, &out, noise.as_deref())?
                .prev_sample;
        }
        Ok(latents)
    }
}

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
use crate::noise_file::NoiseFile;
use crate::sampler::{NoiseStreams, Sampler};

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
        self.manifest
            .check_steps(req.steps)
            .with_context(|| self.dir.display().to_string())?;
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
        let [_, channels, latent_h, latent_w] = m.latent_shape(n);
        let latent = [channels, latent_h, latent_w];
        let numel: usize = latent.iter().product();
        let (initial, streams, seeds) = match &req.noise {
            Noise::Seed(seed) => {
                let (streams, initial) = NoiseStreams::seeded(*seed, n, numel);
                let seeds = (0..n).map(|i| Some(seed.wrapping_add(i as u64))).collect();
                (initial, streams, seeds)
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
                    NoiseStreams::File(file.clone()),
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
                let shape = [n, latent[0], latent[1], latent[2]];
                let mut sampler =
                    Sampler::new(self.scheduler.clone(), req.steps, shape, initial, streams)?;
                for i in 0..sampler.steps() {
                    let (x, t) = sampler.model_input(i)?;
                    let (out_shape, out) = run::<f32>(
                        &mut lock(unet),
                        vec![
                            ("sample", tensor(&shape, x)?),
                            ("timestep", tensor(&[n], vec![t; n])?),
                            (
                                "encoder_hidden_states",
                                tensor(&hidden_shape, hidden.clone())?,
                            ),
                        ],
                        "out_sample",
                    )?;
                    ensure!(
                        out_shape == shape,
                        "the UNet returned {out_shape:?}, expected {shape:?}"
                    );
                    sampler.step(i, &out)?;
                }
                let z = sampler.decoder_input(m.latent.scaling_factor as f32)?;
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
}

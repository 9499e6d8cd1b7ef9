//! Text-to-image sampling with a loaded diffusers model: the student's one-step (and 2/4-step)
//! generation and the teacher's multi-step DDIM with classifier-free guidance, as diffusers'
//! `StableDiffusionPipeline` runs them, with noise from the runtime core's generator or a file.

use std::path::Path;

use anyhow::{bail, ensure, Context, Result};
use runtime::noise_file::step_noise_entry;
use runtime::scheduler::config::SchedulerConfigFile;
use runtime::scheduler::{SchedulerConfig, SchedulerKind, StepCoefficients};
use runtime::{ClipTokenizer, GaussianRng, Scheduler};
use tch::{Device, Kind, Tensor};

use crate::checkpoint::{load_text_encoder, load_unet, load_vae, LoadOptions, Loaded};
use crate::device::upload;
use crate::models::clip_text::ClipTextModel;
use crate::models::unet_2d_condition::UNet2DConditionModel;
use crate::models::vae::AutoencoderKL;

/// A diffusers text-to-image model folder, loaded.
pub struct Pipeline {
    /// The tokenizer (`tokenizer/`).
    pub tokenizer: ClipTokenizer,
    /// The text encoder (`text_encoder/`).
    pub text_encoder: Loaded<ClipTextModel>,
    /// The denoiser (`unet/`).
    pub unet: Loaded<UNet2DConditionModel>,
    /// The autoencoder (`vae/`).
    pub vae: Loaded<AutoencoderKL>,
    /// `scheduler/scheduler_config.json`.
    pub scheduler_config: SchedulerConfigFile,
    device: Device,
    kind: Kind,
}

/// Where the Gaussian noise comes from.
pub enum NoiseSource {
    /// The runtime core's generator: the initial latent noise, then one draw per re-noising step.
    Seed(u64),
    /// Given tensors (a noise file): the initial noise, and per-step noise for ancestral steps,
    /// either one per step (diffusers draws one at every step) or one per re-noising step.
    Given {
        /// (batch, 4, h, w).
        initial: Tensor,
        /// (k, batch, 4, h, w) or `None`.
        steps: Option<Tensor>,
    },
}

impl NoiseSource {
    /// Reads a noise file: safetensors with `noise` and optionally `step_noise`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let tensors = Tensor::read_safetensors(path).with_context(|| {
            format!(
                "cannot read noise file {}: expected a safetensors file with a `noise` tensor",
                path.display()
            )
        })?;
        let mut initial = None;
        let mut steps = None;
        for (name, t) in tensors {
            match name.as_str() {
                "noise" => initial = Some(t.to_kind(Kind::Float)),
                "step_noise" => steps = Some(t.to_kind(Kind::Float)),
                other => bail!("noise file {}: unexpected tensor {other:?} (expected `noise` and optional `step_noise`)", path.display()),
            }
        }
        let initial = initial
            .with_context(|| format!("noise file {} has no `noise` tensor", path.display()))?;
        ensure!(
            initial.dim() == 4,
            "noise file {}: `noise` must be (batch, channels, h, w), got {:?}",
            path.display(),
            initial.size()
        );
        Ok(Self::Given { initial, steps })
    }
}

/// One generation request.
#[derive(Debug, Clone)]
pub struct SampleRequest {
    /// The prompt.
    pub prompt: String,
    /// The negative prompt for guidance ("" as diffusers' default).
    pub negative_prompt: String,
    /// Denoising steps.
    pub steps: usize,
    /// Guidance scale; guidance is off at 1 or below (the student uses 0).
    pub guidance: f64,
    /// Override the checkpoint's scheduler class (e.g. Euler ancestral for the paper's student).
    pub scheduler: Option<SchedulerKind>,
    /// Image height in pixels.
    pub height: i64,
    /// Image width in pixels.
    pub width: i64,
}

/// What sampling produced.
pub struct SampleOutput {
    /// Final latents (batch, 4, h/8, w/8), before the VAE's scaling is undone.
    pub latents: Tensor,
    /// Decoded images in [-1, 1] (batch, 3, h, w).
    pub images: Tensor,
    /// The timesteps the model saw.
    pub timesteps: Vec<f32>,
}

/// Token ids of `prompts` (batch, 77 positions) on `device`.
pub fn token_ids<S: AsRef<str>>(
    tokenizer: &ClipTokenizer,
    prompts: &[S],
    device: Device,
) -> Tensor {
    let ids: Vec<i64> = prompts
        .iter()
        .flat_map(|p| tokenizer.encode(p.as_ref()).ids.into_iter().map(i64::from))
        .collect();
    upload(
        &Tensor::from_slice(&ids).view([prompts.len() as i64, tokenizer.max_length() as i64]),
        device,
    )
}

/// Writes an image as PNG through a temporary file beside `path`.
pub fn write_png(image: &image::RgbImage, path: &Path) -> Result<()> {
    crate::checkpoint::write_beside(path, |tmp| {
        image
            .save_with_format(tmp, image::ImageFormat::Png)
            .with_context(|| format!("cannot write {}", path.display()))
    })
}

/// One (3, h, w) image in [-1, 1] as 8-bit RGB.
pub fn to_rgb_image(image: &Tensor) -> Result<image::RgbImage> {
    let (_, h, w) = image.size3()?;
    let chw: Vec<f32> = Vec::try_from(
        image
            .flatten(0, -1)
            .to_kind(Kind::Float)
            .to_device(Device::Cpu),
    )?;
    let rgb = runtime::image_tensor::chw_to_rgb8(&chw, h as usize, w as usize);
    image::RgbImage::from_raw(w as u32, h as u32, rgb).context("image buffer size")
}

/// Applies a scheduler step's coefficients to tensors.
pub fn apply_step(
    c: &StepCoefficients,
    sample: &Tensor,
    model_output: &Tensor,
    noise: Option<&Tensor>,
) -> (Tensor, Tensor) {
    let mut x0 =
        sample * f64::from(c.pred_x0.sample) + model_output * f64::from(c.pred_x0.model_output);
    if let Some(r) = c.clip_x0 {
        x0 = x0.clamp(-f64::from(r), f64::from(r));
    }
    let mut prev = &x0 * f64::from(c.x0)
        + sample * f64::from(c.sample)
        + model_output * f64::from(c.model_output);
    if let Some(n) = noise {
        prev += n * f64::from(c.noise);
    }
    (prev, x0)
}

impl Pipeline {
    /// Loads every component of `model_dir`.
    pub fn load(model_dir: &Path, opts: LoadOptions) -> Result<Self> {
        if !model_dir.join("model_index.json").is_file() {
            bail!(
                "{} is not a diffusers model folder (no model_index.json): pass the folder that holds unet/, vae/, text_encoder/, tokenizer/ and scheduler/",
                model_dir.display()
            );
        }
        let tokenizer = ClipTokenizer::from_dir(&model_dir.join("tokenizer"))?;
        let scheduler_path = model_dir.join("scheduler").join("scheduler_config.json");
        let text = std::fs::read_to_string(&scheduler_path)
            .with_context(|| format!("cannot read {}", scheduler_path.display()))?;
        let scheduler_config: SchedulerConfigFile = serde_json::from_str(&text)
            .with_context(|| format!("{}: malformed JSON", scheduler_path.display()))?;
        // Validate now so that a bad scheduler fails before the networks load.
        SchedulerConfig::from_file(&scheduler_config)
            .with_context(|| scheduler_path.display().to_string())?;
        Ok(Self {
            tokenizer,
            text_encoder: load_text_encoder(&model_dir.join("text_encoder"), opts)?,
            unet: load_unet(&model_dir.join("unet"), opts)?,
            vae: load_vae(&model_dir.join("vae"), opts)?,
            scheduler_config,
            device: opts.device,
            kind: opts.kind,
        })
    }

    /// Text embeddings (batch, 77, dim) for `prompts`.
    pub fn encode_prompts(&self, prompts: &[&str]) -> Tensor {
        self.networks().encode_prompts(prompts)
    }

    /// A scheduler for `kind` (or the checkpoint's own) with `steps` timesteps.
    pub fn scheduler(&self, kind: Option<SchedulerKind>, steps: usize) -> Result<Scheduler> {
        let config = match kind {
            Some(kind) => SchedulerConfig::with_kind(&self.scheduler_config, kind)?,
            None => SchedulerConfig::from_file(&self.scheduler_config)?,
        };
        let mut scheduler = Scheduler::new(config);
        scheduler.set_timesteps(steps)?;
        Ok(scheduler)
    }

    /// The loaded networks, as a [`Networks`] view.
    pub fn networks(&self) -> Networks<'_> {
        Networks {
            tokenizer: &self.tokenizer,
            text_encoder: &self.text_encoder.model,
            unet: &self.unet.model,
            vae: &self.vae.model,
            device: self.device,
            kind: self.kind,
        }
    }

    /// Generates one image batch for `req`.
    pub fn sample(&self, req: &SampleRequest, noise: &NoiseSource) -> Result<SampleOutput> {
        let scheduler = self.scheduler(req.scheduler, req.steps)?;
        self.networks().sample(&scheduler, req, noise)
    }
}

/// Borrowed networks that can sample: a [`Pipeline`]'s, or a training run's own.
pub struct Networks<'a> {
    /// The tokenizer (with any added tokens).
    pub tokenizer: &'a ClipTokenizer,
    /// The text encoder (with any added rows).
    pub text_encoder: &'a ClipTextModel,
    /// The denoiser.
    pub unet: &'a UNet2DConditionModel,
    /// The autoencoder.
    pub vae: &'a AutoencoderKL,
    /// Where they run.
    pub device: Device,
    /// Their precision.
    pub kind: Kind,
}

impl Networks<'_> {
    /// Text embeddings (batch, 77, dim) for `prompts`.
    pub fn encode_prompts(&self, prompts: &[&str]) -> Tensor {
        let ids = token_ids(self.tokenizer, prompts, self.device);
        tch::no_grad(|| self.text_encoder.forward(&ids))
    }

    /// Generates one image batch for `req` with `scheduler` (already set to `req.steps`).
    pub fn sample(
        &self,
        scheduler: &Scheduler,
        req: &SampleRequest,
        noise: &NoiseSource,
    ) -> Result<SampleOutput> {
        let vae_config = self.vae.config();
        let factor = vae_config.downscale_factor();
        ensure!(
            req.height > 0 && req.width > 0 && req.height % factor == 0 && req.width % factor == 0,
            "image size {}x{} must be a positive multiple of {factor}",
            req.width,
            req.height
        );
        ensure!(
            !req.prompt.trim().is_empty(),
            "the prompt is empty: say what to draw, e.g. \"a <new1> dog on the beach\""
        );
        ensure!(
            scheduler.timesteps().len() == req.steps,
            "the scheduler is set to {} steps, the request asks for {}",
            scheduler.timesteps().len(),
            req.steps
        );
        let shape = [
            1,
            self.unet.config().in_channels,
            req.height / factor,
            req.width / factor,
        ];
        let numel: i64 = shape.iter().product();
        let mut rng = match noise {
            NoiseSource::Seed(seed) => Some(GaussianRng::new(*seed)),
            NoiseSource::Given { .. } => None,
        };
        let initial = match (noise, rng.as_mut()) {
            (_, Some(rng)) => Tensor::from_slice(&rng.normal(numel as usize)).view(shape),
            (NoiseSource::Given { initial, .. }, None) => {
                ensure!(
                    initial.size() == shape,
                    "the noise file's `noise` is {:?}; this model and size need {shape:?}",
                    initial.size()
                );
                initial.shallow_clone()
            }
            _ => unreachable!("a seed always makes a generator"),
        };
        let noisy_steps = scheduler.noisy_steps();
        let step_noise = |i: usize, rng: &mut Option<GaussianRng>| -> Result<Tensor> {
            if let Some(rng) = rng {
                return Ok(Tensor::from_slice(&rng.normal(numel as usize)).view(shape));
            }
            let Some(NoiseSource::Given {
                steps: Some(steps), ..
            }) = Some(noise)
            else {
                bail!("step {i} adds fresh noise (ancestral sampling) but the noise file has no `step_noise` tensor");
            };
            let index = step_noise_entry(steps.size()[0] as usize, i, req.steps, &noisy_steps)?;
            Ok(steps.get(index as i64))
        };

        let guided = req.guidance > 1.0;
        let cond = self.encode_prompts(&[&req.prompt]);
        let context = if guided {
            Tensor::cat(&[self.encode_prompts(&[&req.negative_prompt]), cond], 0)
        } else {
            cond
        };
        let mut latents = upload(
            &(initial * f64::from(scheduler.init_noise_sigma())),
            self.device,
        );
        for (i, &t) in scheduler.timesteps().iter().enumerate() {
            let x_in = (&latents * f64::from(scheduler.model_input_scale(i)?)).to_kind(self.kind);
            let x_in = if guided {
                Tensor::cat(&[&x_in, &x_in], 0)
            } else {
                x_in
            };
            let timestep = upload(&Tensor::from_slice(&[t]), self.device);
            let out =
                tch::no_grad(|| self.unet.forward(&x_in, &timestep, &context)).to_kind(Kind::Float);
            let out = if guided {
                let parts = out.chunk(2, 0);
                &parts[0] + (&parts[1] - &parts[0]) * req.guidance
            } else {
                out
            };
            let c = scheduler.step_coefficients(i)?;
            let noise = if c.noise != 0.0 {
                Some(upload(&step_noise(i, &mut rng)?, self.device))
            } else {
                None
            };
            latents = apply_step(&c, &latents, &out, noise.as_ref()).0;
        }
        let images = tch::no_grad(|| {
            self.vae
                .decode(&(&latents / vae_config.scaling_factor).to_kind(self.kind))
                .to_kind(Kind::Float)
                .clamp(-1.0, 1.0)
        });
        Ok(SampleOutput {
            latents,
            images,
            timesteps: scheduler.timesteps().to_vec(),
        })
    }
}

//! The split sampler's loop on plain numbers: initial noise, the scheduler's model-input scale
//! and step for each UNet call, and the latents handed to the VAE decoder. Backends only run
//! the networks; the native runtime (ort) and the browser page (wasm + onnxruntime-web) drive
//! the same [`Sampler`], so a seed gives the same numbers in both.

use anyhow::{bail, ensure, Context, Result};

use crate::noise_file::{step_noise_entry, NoiseFile};
use crate::{GaussianRng, Scheduler, SchedulerConfig};

/// Where the noise of a generation comes from.
#[derive(Debug, Clone)]
pub enum NoiseStreams {
    /// One generator per image: image `i` draws from the generator seeded `seed + i`, first its
    /// initial latent, then one draw per step that adds noise.
    Seeds(Vec<GaussianRng>),
    /// Explicit noise (one entry per image).
    File(NoiseFile),
}

impl NoiseStreams {
    /// `images` generators for `seed`, `seed + 1`, ... and the initial latent noise they draw
    /// (image after image, `per_image` values each).
    pub fn seeded(seed: u64, images: usize, per_image: usize) -> (Self, Vec<f32>) {
        let mut rngs: Vec<GaussianRng> = (0..images)
            .map(|i| GaussianRng::new(seed.wrapping_add(i as u64)))
            .collect();
        let initial = rngs.iter_mut().flat_map(|r| r.normal(per_image)).collect();
        (Self::Seeds(rngs), initial)
    }

    /// Fresh noise for step `step` of `steps` over the whole batch of `len` values.
    fn step_noise(
        &mut self,
        step: usize,
        steps: usize,
        noisy: &[usize],
        len: usize,
    ) -> Result<Vec<f32>> {
        match self {
            Self::Seeds(rngs) => {
                let per_image = len / rngs.len().max(1);
                Ok(rngs.iter_mut().flat_map(|r| r.normal(per_image)).collect())
            }
            Self::File(file) => {
                let Some(step_noise) = &file.step_noise else {
                    bail!("step {step} adds fresh noise (ancestral sampling) but the noise file has no `step_noise` tensor");
                };
                let index = step_noise_entry(step_noise.shape[0], step, steps, noisy)?;
                Ok(step_noise.data[index * len..(index + 1) * len].to_vec())
            }
        }
    }
}

/// One generation's denoising loop over a batch of latents `[batch, channels, h, w]`.
///
/// ```
/// # use runtime::sampler::{NoiseStreams, Sampler};
/// # use runtime::SchedulerConfig;
/// let shape = [1, 4, 2, 2];
/// let (streams, initial) = NoiseStreams::seeded(7, 1, 16);
/// let config = SchedulerConfig::from_json(r#"{"_class_name": "EulerDiscreteScheduler"}"#).unwrap();
/// let mut s = Sampler::new(config, 2, shape, initial, streams).unwrap();
/// for i in 0..s.steps() {
///     let (input, _timestep) = s.model_input(i).unwrap();
///     let model_output = vec![0.0; input.len()]; // the UNet's prediction goes here
///     s.step(i, &model_output).unwrap();
/// }
/// let latents_for_the_decoder = s.decoder_input(0.18215).unwrap();
/// assert_eq!(latents_for_the_decoder.len(), 16);
/// ```
#[derive(Debug, Clone)]
pub struct Sampler {
    scheduler: Scheduler,
    shape: [usize; 4],
    latents: Vec<f32>,
    streams: NoiseStreams,
    noisy: Vec<usize>,
    next: usize,
}

impl Sampler {
    /// A sampler taking `steps` steps from `initial` (unit-variance noise, scaled here by the
    /// scheduler's initial sigma).
    pub fn new(
        config: SchedulerConfig,
        steps: u32,
        shape: [usize; 4],
        initial: Vec<f32>,
        streams: NoiseStreams,
    ) -> Result<Self> {
        let numel: usize = shape.iter().product();
        ensure!(
            initial.len() == numel,
            "the initial noise has {} values, a {shape:?} batch needs {numel}",
            initial.len()
        );
        let mut scheduler = Scheduler::new(config);
        scheduler.set_timesteps(steps as usize)?;
        let sigma = scheduler.init_noise_sigma();
        let latents = initial.iter().map(|v| v * sigma).collect();
        let noisy = scheduler.noisy_steps();
        Ok(Self {
            scheduler,
            shape,
            latents,
            streams,
            noisy,
            next: 0,
        })
    }

    /// How many UNet calls the loop takes.
    pub fn steps(&self) -> usize {
        self.scheduler.timesteps().len()
    }

    /// The latent shape `[batch, channels, h, w]`.
    pub fn shape(&self) -> [usize; 4] {
        self.shape
    }

    /// The UNet's `sample` input for step `index` and its timestep.
    pub fn model_input(&self, index: usize) -> Result<(Vec<f32>, f32)> {
        let scale = self.scheduler.model_input_scale(index)?;
        Ok((
            self.latents.iter().map(|v| v * scale).collect(),
            self.timestep(index)?,
        ))
    }

    /// The UNet's timestep at step `index`.
    pub fn timestep(&self, index: usize) -> Result<f32> {
        self.scheduler
            .timesteps()
            .get(index)
            .copied()
            .with_context(|| format!("step {index} is past the last of {} steps", self.steps()))
    }

    /// Applies step `index` with the UNet's output; steps must come in order.
    pub fn step(&mut self, index: usize, model_output: &[f32]) -> Result<()> {
        ensure!(
            index == self.next,
            "step {index} out of order: the next step is {}",
            self.next
        );
        ensure!(
            model_output.len() == self.latents.len(),
            "the UNet returned {} values, the {:?} latents have {}",
            model_output.len(),
            self.shape,
            self.latents.len()
        );
        let c = self.scheduler.step_coefficients(index)?;
        let noise = if c.noise != 0.0 {
            Some(
                self.streams
                    .step_noise(index, self.steps(), &self.noisy, self.latents.len())?,
            )
        } else {
            None
        };
        self.latents = self
            .scheduler
            .step(index, &self.latents, model_output, noise.as_deref())?
            .prev_sample;
        self.next += 1;
        Ok(())
    }

    /// The final latents divided by the VAE's `scaling_factor`: the decoder's input, once
    /// every step has run.
    pub fn decoder_input(&self, scaling_factor: f32) -> Result<Vec<f32>> {
        ensure!(
            self.next == self.steps(),
            "{} of {} steps have run: finish the loop before decoding",
            self.next,
            self.steps()
        );
        Ok(self.latents.iter().map(|v| v / scaling_factor).collect())
    }
}

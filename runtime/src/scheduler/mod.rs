//! Diffusion schedulers on plain numbers, shared by the trainer (tch), the runtime (ort) and the
//! browser (wasm32).
//!
//! Mirrors diffusers 0.42's `EulerDiscreteScheduler`, `EulerAncestralDiscreteScheduler` and
//! `DDIMScheduler` (eta = 0), configured from a checkpoint's `scheduler_config.json`. Every step
//! of these is affine in the sample, the model output and the fresh noise, with an optional clamp
//! of the predicted x0 in between, so a step is described by [`StepCoefficients`]: each backend
//! applies them with its own tensor ops, and [`Scheduler::step`] applies them to slices.
//!
//! Steps are addressed by index into [`Scheduler::timesteps`], never by looking a float timestep
//! up, so there is no hidden step counter to get out of sync.

pub mod config;
mod ddim;
mod euler;
pub mod noise_schedule;

pub use config::{PredictionType, SchedulerConfig, SchedulerKind, TimestepSpacing};
pub use noise_schedule::NoiseSchedule;

/// A scheduler could not be configured or stepped.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ScheduleError {
    /// The config names an unknown class or an unsupported option.
    #[error("{0}")]
    Config(String),
    /// The call does not fit the scheduler's state.
    #[error("{0}")]
    Usage(String),
}

/// x0 = `sample`·s + `model_output`·m, the model's estimate of the clean latent.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct X0Coefficients {
    /// Weight of the current sample.
    pub sample: f32,
    /// Weight of the model output.
    pub model_output: f32,
}

/// One step: x0 = [`X0Coefficients`], clamped to ±`clip_x0` when set; then
/// prev = x0·`x0` + sample·`sample` + model_output·`model_output` + noise·`noise`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepCoefficients {
    /// The predicted clean latent.
    pub pred_x0: X0Coefficients,
    /// Clamp x0 to this range before it is used (DDIM's `clip_sample`).
    pub clip_x0: Option<f32>,
    /// Weight of (clamped) x0 in the previous sample.
    pub x0: f32,
    /// Weight of the current sample.
    pub sample: f32,
    /// Weight of the model output.
    pub model_output: f32,
    /// Weight of fresh standard normal noise; 0 for deterministic steps.
    pub noise: f32,
}

/// The result of [`Scheduler::step`] on slices.
#[derive(Debug, Clone, PartialEq)]
pub struct StepOutput {
    /// The sample for the next step (the final latent after the last step).
    pub prev_sample: Vec<f32>,
    /// The predicted clean latent.
    pub pred_original_sample: Vec<f32>,
}

/// A configured scheduler with its inference timesteps.
#[derive(Debug, Clone)]
pub struct Scheduler {
    config: SchedulerConfig,
    schedule: NoiseSchedule,
    timesteps: Vec<f32>,
    /// Euler: one sigma per step plus the final one.
    sigmas: Vec<f32>,
}

impl Scheduler {
    /// A scheduler for `config`; call [`set_timesteps`](Self::set_timesteps) before stepping.
    pub fn new(config: SchedulerConfig) -> Self {
        let schedule = NoiseSchedule::new(&config.betas, config.num_train_timesteps);
        Self {
            config,
            schedule,
            timesteps: Vec::new(),
            sigmas: Vec::new(),
        }
    }

    /// The config.
    pub fn config(&self) -> &SchedulerConfig {
        &self.config
    }

    /// The forward-process tables (for training targets and re-noising).
    pub fn noise_schedule(&self) -> &NoiseSchedule {
        &self.schedule
    }

    /// Chooses `n` inference steps.
    pub fn set_timesteps(&mut self, n: usize) -> Result<(), ScheduleError> {
        let train = self.config.num_train_timesteps;
        if n == 0 || n > train {
            return Err(ScheduleError::Usage(format!(
                "{n} inference steps: choose between 1 and {train}"
            )));
        }
        match self.config.kind {
            SchedulerKind::Euler | SchedulerKind::EulerAncestral => {
                let (timesteps, sigmas) =
                    euler::timesteps_and_sigmas(&self.config, &self.schedule, n);
                self.timesteps = timesteps;
                self.sigmas = sigmas;
            }
            SchedulerKind::Ddim => {
                self.timesteps = ddim::timesteps(&self.config, n)?;
                self.sigmas.clear();
            }
        }
        Ok(())
    }

    /// The timestep the model is given at each step.
    pub fn timesteps(&self) -> &[f32] {
        &self.timesteps
    }

    /// Euler's sigmas (one per step plus the final one); empty for DDIM.
    pub fn sigmas(&self) -> &[f32] {
        &self.sigmas
    }

    /// The standard deviation of the initial noise: latents start as N(0, I) times this.
    pub fn init_noise_sigma(&self) -> f32 {
        match self.config.kind {
            SchedulerKind::Ddim => 1.0,
            _ => {
                let max = self.sigmas.iter().copied().fold(0.0f32, f32::max);
                match self.config.timestep_spacing {
                    TimestepSpacing::Linspace | TimestepSpacing::Trailing => max,
                    TimestepSpacing::Leading => (max * max + 1.0).sqrt(),
                }
            }
        }
    }

    fn check_step(&self, index: usize) -> Result<(), ScheduleError> {
        if index < self.timesteps.len() {
            Ok(())
        } else if self.timesteps.is_empty() {
            Err(ScheduleError::Usage(
                "call set_timesteps before stepping".into(),
            ))
        } else {
            Err(ScheduleError::Usage(format!(
                "step {index} is past the last of {} steps",
                self.timesteps.len()
            )))
        }
    }

    /// The factor the sample is multiplied by to form the model input at step `index`
    /// (diffusers' `scale_model_input`).
    pub fn model_input_scale(&self, index: usize) -> Result<f32, ScheduleError> {
        self.check_step(index)?;
        Ok(match self.config.kind {
            SchedulerKind::Ddim => 1.0,
            _ => {
                let sigma = f64::from(self.sigmas[index]);
                (1.0 / (sigma * sigma + 1.0).sqrt()) as f32
            }
        })
    }

    /// The coefficients of step `index`.
    pub fn step_coefficients(&self, index: usize) -> Result<StepCoefficients, ScheduleError> {
        self.check_step(index)?;
        Ok(match self.config.kind {
            SchedulerKind::Euler => euler::coefficients(&self.config, &self.sigmas, index, false),
            SchedulerKind::EulerAncestral => {
                euler::coefficients(&self.config, &self.sigmas, index, true)
            }
            SchedulerKind::Ddim => {
                ddim::coefficients(&self.config, &self.schedule, &self.timesteps, index)
            }
        })
    }

    /// The indices of the steps that add fresh noise (ancestral steps).
    pub fn noisy_steps(&self) -> Vec<usize> {
        (0..self.timesteps.len())
            .filter(|&i| self.step_coefficients(i).is_ok_and(|c| c.noise != 0.0))
            .collect()
    }

    /// Applies step `index` to slices. `noise` is required when the step adds noise.
    pub fn step(
        &self,
        index: usize,
        sample: &[f32],
        model_output: &[f32],
        noise: Option<&[f32]>,
    ) -> Result<StepOutput, ScheduleError> {
        let c = self.step_coefficients(index)?;
        if model_output.len() != sample.len() {
            return Err(ScheduleError::Usage(format!(
                "model output has {} values, sample {}",
                model_output.len(),
                sample.len()
            )));
        }
        let noise = match noise {
            Some(n) if n.len() != sample.len() => {
                return Err(ScheduleError::Usage(format!(
                    "noise has {} values, sample {}",
                    n.len(),
                    sample.len()
                )))
            }
            Some(n) => Some(n),
            None if c.noise != 0.0 => {
                return Err(ScheduleError::Usage(format!(
                    "step {index} adds noise (scale {}): pass it",
                    c.noise
                )))
            }
            None => None,
        };
        let mut pred_original_sample = Vec::with_capacity(sample.len());
        let mut prev_sample = Vec::with_capacity(sample.len());
        for i in 0..sample.len() {
            let (s, m) = (sample[i], model_output[i]);
            let mut x0 = c.pred_x0.sample * s + c.pred_x0.model_output * m;
            if let Some(r) = c.clip_x0 {
                x0 = x0.clamp(-r, r);
            }
            let mut prev = c.x0 * x0 + c.sample * s + c.model_output * m;
            if let Some(n) = noise {
                prev += c.noise * n[i];
            }
            pred_original_sample.push(x0);
            prev_sample.push(prev);
        }
        Ok(StepOutput {
            prev_sample,
            pred_original_sample,
        })
    }
}

#[cfg(test)]
mod tests;

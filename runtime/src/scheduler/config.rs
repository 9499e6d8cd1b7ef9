//! `scheduler/scheduler_config.json` of a diffusers checkpoint.
//!
//! Field names are the JSON keys. A missing key takes the default of the class the config names
//! (EulerDiscrete and DDIM differ: `timestep_spacing` "linspace" vs "leading", DDIM's
//! `set_alpha_to_one` and `clip_sample` default to true), as in diffusers 0.42.

use serde::Deserialize;

use super::ScheduleError;

/// The raw config, every field optional so that class defaults can be applied afterwards.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct SchedulerConfigFile {
    /// The diffusers class, e.g. `EulerDiscreteScheduler`.
    #[serde(rename = "_class_name")]
    pub class_name: Option<String>,
    /// Training timesteps (1000).
    pub num_train_timesteps: Option<usize>,
    /// First beta.
    pub beta_start: Option<f64>,
    /// Last beta.
    pub beta_end: Option<f64>,
    /// `linear` or `scaled_linear`.
    pub beta_schedule: Option<String>,
    /// Explicit betas, replacing the schedule.
    pub trained_betas: Option<Vec<f64>>,
    /// `epsilon`, `v_prediction` or `sample`.
    pub prediction_type: Option<String>,
    /// `linspace`, `leading` or `trailing`.
    pub timestep_spacing: Option<String>,
    /// Added to `leading` timesteps.
    pub steps_offset: Option<usize>,
    /// DDIM: the final step's ᾱ is 1 instead of ᾱ_0.
    pub set_alpha_to_one: Option<bool>,
    /// DDIM: clamp the predicted x0.
    pub clip_sample: Option<bool>,
    /// DDIM: the clamp's range.
    pub clip_sample_range: Option<f64>,
    /// Euler: how sigmas between training steps are found (`linear`).
    pub interpolation_type: Option<String>,
    /// Euler: the last sigma, `zero` or `sigma_min`.
    pub final_sigmas_type: Option<String>,
    /// Unsupported options, read only to refuse them.
    pub use_karras_sigmas: Option<bool>,
    /// Unsupported.
    pub use_exponential_sigmas: Option<bool>,
    /// Unsupported.
    pub use_beta_sigmas: Option<bool>,
    /// Unsupported.
    pub rescale_betas_zero_snr: Option<bool>,
    /// Unsupported.
    pub thresholding: Option<bool>,
    /// Euler: only `discrete` is supported.
    pub timestep_type: Option<String>,
}

/// The kinds of scheduler this project implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SchedulerKind {
    /// `EulerDiscreteScheduler`: deterministic Euler on sigmas.
    Euler,
    /// `EulerAncestralDiscreteScheduler`: Euler with fresh noise after every step.
    EulerAncestral,
    /// `DDIMScheduler` with eta = 0.
    Ddim,
}

impl SchedulerKind {
    /// The kind for a diffusers class name.
    pub fn from_class_name(name: &str) -> Result<Self, ScheduleError> {
        match name {
            "EulerDiscreteScheduler" => Ok(Self::Euler),
            "EulerAncestralDiscreteScheduler" => Ok(Self::EulerAncestral),
            "DDIMScheduler" => Ok(Self::Ddim),
            other => Err(ScheduleError::Config(format!(
                "unknown scheduler class {other:?}: supported are EulerDiscreteScheduler, \
                 EulerAncestralDiscreteScheduler and DDIMScheduler"
            ))),
        }
    }
}

/// What the network predicts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PredictionType {
    /// The added noise ε.
    Epsilon,
    /// v = √ᾱ·ε − √(1−ᾱ)·x0.
    VPrediction,
    /// x0 itself.
    Sample,
}

/// How inference timesteps are spread over the training range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimestepSpacing {
    /// Evenly from `num_train_timesteps - 1` down to 0 (fractional values possible).
    Linspace,
    /// Multiples of `num_train_timesteps / n` from 0, plus `steps_offset`.
    Leading,
    /// Counting down from `num_train_timesteps`, minus one (999, 499 for two steps).
    Trailing,
}

/// A validated config with the class defaults applied.
#[derive(Debug, Clone, PartialEq)]
pub struct SchedulerConfig {
    /// The scheduler kind.
    pub kind: SchedulerKind,
    /// Training timesteps.
    pub num_train_timesteps: usize,
    /// β schedule: `None` for the explicit `trained_betas`.
    pub betas: BetaSchedule,
    /// What the network predicts.
    pub prediction_type: PredictionType,
    /// Timestep spacing.
    pub timestep_spacing: TimestepSpacing,
    /// Added to leading timesteps.
    pub steps_offset: usize,
    /// DDIM: ᾱ after the last step is 1 (else ᾱ_0).
    pub set_alpha_to_one: bool,
    /// DDIM: clamp x0 to ±this, when set.
    pub clip_sample: Option<f64>,
    /// Euler: the sigma after the last step is ᾱ_0's sigma instead of 0.
    pub final_sigma_min: bool,
}

/// The β schedule.
#[derive(Debug, Clone, PartialEq)]
pub enum BetaSchedule {
    /// β evenly spaced from `start` to `end`.
    Linear {
        /// First β.
        start: f64,
        /// Last β.
        end: f64,
    },
    /// √β evenly spaced (Stable Diffusion's schedule).
    ScaledLinear {
        /// First β.
        start: f64,
        /// Last β.
        end: f64,
    },
    /// Given explicitly.
    Trained(Vec<f64>),
}

impl SchedulerConfig {
    /// Parses `scheduler_config.json` text.
    pub fn from_json(text: &str) -> Result<Self, ScheduleError> {
        let file: SchedulerConfigFile = serde_json::from_str(text)
            .map_err(|e| ScheduleError::Config(format!("malformed scheduler config: {e}")))?;
        Self::from_file(&file)
    }

    /// Applies the defaults of `file`'s class and checks every option.
    pub fn from_file(file: &SchedulerConfigFile) -> Result<Self, ScheduleError> {
        let class = file
            .class_name
            .as_deref()
            .ok_or_else(|| ScheduleError::Config("scheduler config has no _class_name".into()))?;
        Self::with_kind(file, SchedulerKind::from_class_name(class)?)
    }

    /// Like [`from_file`](Self::from_file) but for another kind than the config's own (the
    /// paper samples SD-Turbo with Euler ancestral from its plain Euler config). Defaults still
    /// follow the config's own class.
    pub fn with_kind(
        file: &SchedulerConfigFile,
        kind: SchedulerKind,
    ) -> Result<Self, ScheduleError> {
        let own = match file.class_name.as_deref() {
            Some(name) => SchedulerKind::from_class_name(name)?,
            None => kind,
        };
        let bad = |what: String| Err(ScheduleError::Config(what));
        for (flag, name) in [
            (file.use_karras_sigmas, "use_karras_sigmas"),
            (file.use_exponential_sigmas, "use_exponential_sigmas"),
            (file.use_beta_sigmas, "use_beta_sigmas"),
            (file.rescale_betas_zero_snr, "rescale_betas_zero_snr"),
            (file.thresholding, "thresholding"),
        ] {
            if flag == Some(true) {
                return bad(format!("{name}: true is not supported"));
            }
        }
        if let Some(t) = file.timestep_type.as_deref().filter(|t| *t != "discrete") {
            return bad(format!(
                "timestep_type {t:?} is not supported (only \"discrete\")"
            ));
        }
        if let Some(t) = file
            .interpolation_type
            .as_deref()
            .filter(|t| *t != "linear")
        {
            return bad(format!(
                "interpolation_type {t:?} is not supported (only \"linear\")"
            ));
        }
        let num_train_timesteps = file.num_train_timesteps.unwrap_or(1000);
        if num_train_timesteps < 2 {
            return bad(format!(
                "num_train_timesteps {num_train_timesteps} is too small"
            ));
        }
        let start = file.beta_start.unwrap_or(0.0001);
        let end = file.beta_end.unwrap_or(0.02);
        let betas = match (
            &file.trained_betas,
            file.beta_schedule.as_deref().unwrap_or("linear"),
        ) {
            (Some(b), _) if b.len() != num_train_timesteps => {
                return bad(format!(
                    "trained_betas has {} values for {num_train_timesteps} timesteps",
                    b.len()
                ))
            }
            (Some(b), _) => BetaSchedule::Trained(b.clone()),
            (None, "linear") => BetaSchedule::Linear { start, end },
            (None, "scaled_linear") => BetaSchedule::ScaledLinear { start, end },
            (None, other) => {
                return bad(format!(
                    "beta_schedule {other:?} is not supported (linear, scaled_linear)"
                ))
            }
        };
        let prediction_type = match file.prediction_type.as_deref().unwrap_or("epsilon") {
            "epsilon" => PredictionType::Epsilon,
            "v_prediction" => PredictionType::VPrediction,
            "sample" => PredictionType::Sample,
            other => return bad(format!("prediction_type {other:?} is not supported")),
        };
        let default_spacing = if own == SchedulerKind::Ddim {
            "leading"
        } else {
            "linspace"
        };
        let timestep_spacing = match file.timestep_spacing.as_deref().unwrap_or(default_spacing) {
            "linspace" => TimestepSpacing::Linspace,
            "leading" => TimestepSpacing::Leading,
            "trailing" => TimestepSpacing::Trailing,
            other => return bad(format!("timestep_spacing {other:?} is not supported")),
        };
        let ddim = own == SchedulerKind::Ddim;
        let final_sigma_min = match file.final_sigmas_type.as_deref().unwrap_or("zero") {
            "zero" => false,
            "sigma_min" => true,
            other => return bad(format!("final_sigmas_type {other:?} is not supported")),
        };
        Ok(Self {
            kind,
            num_train_timesteps,
            betas,
            prediction_type,
            timestep_spacing,
            steps_offset: file.steps_offset.unwrap_or(0),
            set_alpha_to_one: file.set_alpha_to_one.unwrap_or(ddim),
            clip_sample: file
                .clip_sample
                .unwrap_or(ddim)
                .then_some(file.clip_sample_range.unwrap_or(1.0)),
            final_sigma_min,
        })
    }
}

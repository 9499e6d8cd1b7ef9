//! diffusers' `DDIMScheduler` with eta = 0 (deterministic), the teacher's sampler.

use super::config::{PredictionType, SchedulerConfig, TimestepSpacing};
use super::{NoiseSchedule, ScheduleError, StepCoefficients, X0Coefficients};

/// Inference timesteps, integers stored as f32 for the model.
pub fn timesteps(config: &SchedulerConfig, n: usize) -> Result<Vec<f32>, ScheduleError> {
    let train = config.num_train_timesteps;
    let steps: Vec<i64> = match config.timestep_spacing {
        TimestepSpacing::Linspace => super::euler::linspace_desc((train - 1) as f64, n)
            .map(|t| t.round_ties_even() as i64)
            .collect(),
        TimestepSpacing::Leading => {
            let ratio = train / n;
            (0..n)
                .rev()
                .map(|i| (i * ratio + config.steps_offset) as i64)
                .collect()
        }
        TimestepSpacing::Trailing => {
            let ratio = train as f64 / n as f64;
            super::euler::trailing(train, ratio)
                .map(|t| t.round_ties_even() as i64 - 1)
                .collect()
        }
    };
    if let Some(bad) = steps.iter().find(|&&t| t < 0 || t as usize >= train) {
        return Err(ScheduleError::Config(format!(
            "timestep {bad} is outside 0..{train} (check steps_offset {})",
            config.steps_offset
        )));
    }
    Ok(steps.into_iter().map(|t| t as f32).collect())
}

/// Step `index`: x0 and ε̂ from the prediction type, x0 clamped when `clip_sample`, then
/// x_prev = √ᾱ_prev·x0 + √(1 − ᾱ_prev)·ε̂ with prev = t − train/n.
pub fn coefficients(
    config: &SchedulerConfig,
    schedule: &NoiseSchedule,
    timesteps: &[f32],
    index: usize,
) -> StepCoefficients {
    let train = config.num_train_timesteps;
    let t = timesteps[index] as usize;
    let prev = t as i64 - (train / timesteps.len()) as i64;
    let alpha = f64::from(schedule.alphas_cumprod[t]);
    let alpha_prev = if prev >= 0 {
        f64::from(schedule.alphas_cumprod[prev as usize])
    } else if config.set_alpha_to_one {
        1.0
    } else {
        f64::from(schedule.alphas_cumprod[0])
    };
    let (sa, sb) = (alpha.sqrt(), (1.0 - alpha).sqrt());
    // (x0 from sample, x0 from output), (ε̂ from sample, ε̂ from output)
    let ((xs, xm), (es, em)) = match config.prediction_type {
        PredictionType::Epsilon => ((1.0 / sa, -sb / sa), (0.0, 1.0)),
        PredictionType::VPrediction => ((sa, -sb), (sb, sa)),
        PredictionType::Sample => ((0.0, 1.0), (1.0 / sb, -sa / sb)),
    };
    let dir = (1.0 - alpha_prev).sqrt();
    StepCoefficients {
        pred_x0: X0Coefficients {
            sample: xs as f32,
            model_output: xm as f32,
        },
        clip_x0: config.clip_sample.map(|r| r as f32),
        x0: alpha_prev.sqrt() as f32,
        sample: (dir * es) as f32,
        model_output: (dir * em) as f32,
        noise: 0.0,
    }
}

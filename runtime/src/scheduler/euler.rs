//! Euler on the sigma parameterization: diffusers' `EulerDiscreteScheduler` and
//! `EulerAncestralDiscreteScheduler` (s_churn = 0, linear sigma interpolation).

use super::config::{PredictionType, SchedulerConfig, TimestepSpacing};
use super::{NoiseSchedule, StepCoefficients, X0Coefficients};

/// Inference timesteps and sigmas (one per step, then the final 0 or σ_min).
pub fn timesteps_and_sigmas(
    config: &SchedulerConfig,
    schedule: &NoiseSchedule,
    n: usize,
) -> (Vec<f32>, Vec<f32>) {
    let train = config.num_train_timesteps;
    let timesteps: Vec<f32> = match config.timestep_spacing {
        TimestepSpacing::Linspace => {
            // np.linspace(0, train - 1, n, dtype=float32)[::-1]
            linspace_desc((train - 1) as f64, n)
                .map(|t| t as f32)
                .collect()
        }
        TimestepSpacing::Leading => {
            let ratio = train / n;
            (0..n)
                .rev()
                .map(|i| (i * ratio + config.steps_offset) as f32)
                .collect()
        }
        TimestepSpacing::Trailing => {
            // np.arange(train, 0, -train / n).round() - 1
            let ratio = train as f64 / n as f64;
            trailing(train, ratio)
                .map(|t| (t.round_ties_even() - 1.0) as f32)
                .collect()
        }
    };
    // σ of every training timestep in f32, as diffusers computes the table.
    let table: Vec<f32> = (0..train).map(|t| schedule.sigma(t)).collect();
    let mut sigmas: Vec<f32> = timesteps
        .iter()
        .map(|&t| interp(&table, f64::from(t)))
        .collect();
    sigmas.push(if config.final_sigma_min {
        schedule.sigma(0)
    } else {
        0.0
    });
    (timesteps, sigmas)
}

/// np.arange(train, 0, -ratio): numpy's length rule, then start + i·step.
pub(super) fn trailing(train: usize, ratio: f64) -> impl Iterator<Item = f64> {
    let len = (-(train as f64) / -ratio).ceil() as usize;
    (0..len).map(move |i| train as f64 + i as f64 * -ratio)
}

/// np.linspace(0, last, n) in f64, in descending order (numpy sets the end point exactly).
pub(super) fn linspace_desc(last: f64, n: usize) -> impl Iterator<Item = f64> {
    let step = if n > 1 { last / (n - 1) as f64 } else { 0.0 };
    (0..n).rev().map(move |i| {
        if i + 1 == n && n > 1 {
            last
        } else {
            i as f64 * step
        }
    })
}

/// np.interp over integer positions 0..len.
fn interp(table: &[f32], t: f64) -> f32 {
    if t <= 0.0 {
        return table[0];
    }
    let last = table.len() - 1;
    if t >= last as f64 {
        return table[last];
    }
    let i = t.floor() as usize;
    let frac = t - i as f64;
    let (a, b) = (f64::from(table[i]), f64::from(table[i + 1]));
    (a + (b - a) * frac) as f32
}

/// Step `index`: x0 from the prediction type, then x_next = x + (x − x0)/σ · (σ_down − σ), plus
/// σ_up·noise when ancestral (σ_down = σ_next and σ_up = 0 otherwise).
pub fn coefficients(
    config: &SchedulerConfig,
    sigmas: &[f32],
    index: usize,
    ancestral: bool,
) -> StepCoefficients {
    let sigma = f64::from(sigmas[index]);
    let next = f64::from(sigmas[index + 1]);
    let (s, m) = match config.prediction_type {
        PredictionType::Epsilon => (1.0, -sigma),
        PredictionType::VPrediction => {
            let denom = sigma * sigma + 1.0;
            (1.0 / denom, -sigma / denom.sqrt())
        }
        PredictionType::Sample => (0.0, 1.0),
    };
    let (down, up) = if ancestral {
        let up = (next * next * (sigma * sigma - next * next) / (sigma * sigma)).sqrt();
        ((next * next - up * up).sqrt(), up)
    } else {
        (next, 0.0)
    };
    let r = (down - sigma) / sigma;
    StepCoefficients {
        pred_x0: X0Coefficients {
            sample: s as f32,
            model_output: m as f32,
        },
        clip_x0: None,
        x0: -r as f32,
        sample: (1.0 + r) as f32,
        model_output: 0.0,
        noise: up as f32,
    }
}

//! The forward process: β_t, ᾱ_t = Π(1 − β), and DDPM noising (`DDPMScheduler.add_noise`).
//!
//! Computed as diffusers does it, in f32 (torch.linspace's two-sided formula, the square, then a
//! cumulative product accumulated in f64 as torch's CPU kernel does), so that the tables agree
//! with diffusers' bit for bit or within an ulp.

use super::config::BetaSchedule;

/// β and ᾱ for every training timestep.
#[derive(Debug, Clone, PartialEq)]
pub struct NoiseSchedule {
    /// β_t.
    pub betas: Vec<f32>,
    /// ᾱ_t = Π_{s ≤ t} (1 − β_s).
    pub alphas_cumprod: Vec<f32>,
}

/// torch.linspace in f32: the first half counts up from `start`, the second down from `end`.
fn linspace_f32(start: f32, end: f32, n: usize) -> Vec<f32> {
    if n == 1 {
        return vec![start];
    }
    let step = (end - start) / (n - 1) as f32;
    let half = n / 2;
    (0..n)
        .map(|i| {
            if i < half {
                start + step * i as f32
            } else {
                end - step * (n - 1 - i) as f32
            }
        })
        .collect()
}

impl NoiseSchedule {
    /// Builds the tables for `n` training timesteps.
    pub fn new(schedule: &BetaSchedule, n: usize) -> Self {
        let betas: Vec<f32> = match schedule {
            BetaSchedule::Linear { start, end } => linspace_f32(*start as f32, *end as f32, n),
            BetaSchedule::ScaledLinear { start, end } => {
                linspace_f32(start.sqrt() as f32, end.sqrt() as f32, n)
                    .into_iter()
                    .map(|b| b * b)
                    .collect()
            }
            BetaSchedule::Trained(b) => b.iter().map(|&b| b as f32).collect(),
        };
        let mut acc = 1.0f64;
        let alphas_cumprod = betas
            .iter()
            .map(|&b| {
                acc *= f64::from(1.0f32 - b);
                acc as f32
            })
            .collect();
        Self {
            betas,
            alphas_cumprod,
        }
    }

    /// Number of training timesteps.
    pub fn len(&self) -> usize {
        self.betas.len()
    }

    /// Whether the schedule is empty.
    pub fn is_empty(&self) -> bool {
        self.betas.is_empty()
    }

    /// σ_t = √((1 − ᾱ_t)/ᾱ_t), the noise level of timestep t in Euler's (Karras) form.
    pub fn sigma(&self, t: usize) -> f32 {
        let a = self.alphas_cumprod[t];
        ((1.0 - a) / a).sqrt()
    }

    /// `(√ᾱ_t, √(1 − ᾱ_t))`: x_t = √ᾱ_t·x0 + √(1 − ᾱ_t)·ε (DDPM `add_noise`).
    pub fn add_noise_coefficients(&self, t: usize) -> (f32, f32) {
        let a = self.alphas_cumprod[t];
        (a.sqrt(), (1.0 - a).sqrt())
    }

    /// x_t for clean `x0` and `noise` at timestep `t`.
    pub fn add_noise(&self, x0: &[f32], noise: &[f32], t: usize) -> Vec<f32> {
        let (a, b) = self.add_noise_coefficients(t);
        x0.iter().zip(noise).map(|(&x, &n)| a * x + b * n).collect()
    }

    /// The v-prediction target v = √ᾱ_t·ε − √(1 − ᾱ_t)·x0 (DDPM `get_velocity`).
    pub fn velocity(&self, x0: &[f32], noise: &[f32], t: usize) -> Vec<f32> {
        let (a, b) = self.add_noise_coefficients(t);
        x0.iter().zip(noise).map(|(&x, &n)| a * n - b * x).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stable_diffusion_schedule_matches_the_spec() {
        let s = NoiseSchedule::new(
            &BetaSchedule::ScaledLinear {
                start: 0.00085,
                end: 0.012,
            },
            1000,
        );
        assert!((s.betas[0] - 0.00085).abs() < 1e-9);
        assert!((s.betas[999] - 0.012).abs() < 1e-8);
        // σ_max of SD and SD-Turbo (SPEC §4: 14.6146) and √(1 − ᾱ_999) = 0.99767.
        assert!((s.sigma(999) - 14.6146).abs() < 1e-3, "{}", s.sigma(999));
        assert!((s.add_noise_coefficients(999).1 - 0.99767).abs() < 1e-5);
    }

    #[test]
    fn velocity_and_noising_are_consistent() {
        let s = NoiseSchedule::new(
            &BetaSchedule::Linear {
                start: 1e-4,
                end: 0.02,
            },
            1000,
        );
        let (x0, eps) = ([0.5f32, -1.0], [0.3f32, 2.0]);
        let xt = s.add_noise(&x0, &eps, 500);
        let v = s.velocity(&x0, &eps, 500);
        let (a, b) = s.add_noise_coefficients(500);
        // x0 = √ᾱ·x_t − √(1−ᾱ)·v.
        for i in 0..2 {
            assert!((a * xt[i] - b * v[i] - x0[i]).abs() < 1e-5);
        }
    }
}

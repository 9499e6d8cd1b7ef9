//! The runtime core's schedulers reproduce diffusers step for step.
//!
//! Goldens: `tests/fixtures/scheduler_goldens.json`, made by
//! `tests/scripts/make_scheduler_goldens.py` (diffusers 0.42).

use runtime::scheduler::config::SchedulerConfigFile;
use runtime::scheduler::{NoiseSchedule, SchedulerConfig, SchedulerKind};
use runtime::Scheduler;
use serde::Deserialize;
use tests::fixture;

#[derive(Deserialize)]
struct Goldens {
    cases: Vec<Case>,
    ddpm: Ddpm,
}

#[derive(Deserialize)]
struct Case {
    name: String,
    config: serde_json::Value,
    class: String,
    steps: usize,
    timesteps: Vec<f32>,
    sigmas: Vec<f32>,
    init_noise_sigma: f32,
    model_input_scale: Vec<f32>,
    step: Vec<Step>,
    #[serde(rename = "loop")]
    sampling: Loop,
}

#[derive(Deserialize)]
struct Step {
    sample: Vec<f32>,
    model_output: Vec<f32>,
    noise: Vec<f32>,
    prev_sample: Vec<f32>,
    pred_original_sample: Vec<f32>,
}

#[derive(Deserialize)]
struct Loop {
    init_noise: Vec<f32>,
    step_noises: Vec<Vec<f32>>,
    #[serde(rename = "final")]
    final_latents: Vec<f32>,
}

#[derive(Deserialize)]
struct Ddpm {
    x0: Vec<f32>,
    noise: Vec<f32>,
    checks: Vec<DdpmCheck>,
    alphas_cumprod_scaled_linear: Vec<f32>,
    alphas_cumprod_linear: Vec<f32>,
}

#[derive(Deserialize)]
struct DdpmCheck {
    t: usize,
    noisy: Vec<f32>,
    velocity: Vec<f32>,
}

fn goldens() -> Goldens {
    let path = fixture("scheduler_goldens.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Largest |a − b| / max(1, |b|): absolute for values near unit scale, relative for the large
/// latents of the first Euler steps (σ_max ≈ 14.6).
fn max_err(got: &[f32], want: &[f32]) -> f32 {
    assert_eq!(got.len(), want.len());
    got.iter()
        .zip(want)
        .map(|(a, b)| (a - b).abs() / b.abs().max(1.0))
        .fold(0.0, f32::max)
}

const TOLERANCE: f32 = 2e-6;

fn scheduler(case: &Case) -> Scheduler {
    let file: SchedulerConfigFile = serde_json::from_value(case.config.clone()).unwrap();
    let kind = SchedulerKind::from_class_name(&case.class).unwrap();
    let mut s = Scheduler::new(SchedulerConfig::with_kind(&file, kind).unwrap());
    s.set_timesteps(case.steps).unwrap();
    s
}

#[test]
fn every_step_matches_diffusers() {
    let goldens = goldens();
    assert!(goldens.cases.len() >= 10);
    for case in &goldens.cases {
        let label = format!("{} ({} steps)", case.name, case.steps);
        let s = scheduler(case);
        assert_eq!(
            s.timesteps(),
            case.timesteps.as_slice(),
            "{label}: timesteps"
        );
        if !case.sigmas.is_empty() {
            assert!(
                max_err(s.sigmas(), &case.sigmas) <= TOLERANCE,
                "{label}: sigmas {:?} vs {:?}",
                s.sigmas(),
                case.sigmas
            );
        }
        assert!(
            max_err(&[s.init_noise_sigma()], &[case.init_noise_sigma]) <= TOLERANCE,
            "{label}: init_noise_sigma"
        );
        for (i, step) in case.step.iter().enumerate() {
            let scale = s.model_input_scale(i).unwrap();
            assert!(
                max_err(&[scale], &[case.model_input_scale[i]]) <= TOLERANCE,
                "{label}: scale at {i}"
            );
            let noise = (!step.noise.is_empty()).then_some(step.noise.as_slice());
            let out = s.step(i, &step.sample, &step.model_output, noise).unwrap();
            let e_prev = max_err(&out.prev_sample, &step.prev_sample);
            let e_x0 = max_err(&out.pred_original_sample, &step.pred_original_sample);
            assert!(
                e_prev <= TOLERANCE && e_x0 <= TOLERANCE,
                "{label}: step {i}: prev err {e_prev}, x0 err {e_x0}"
            );
        }
    }
}

#[test]
fn whole_sampling_loops_match_diffusers() {
    for case in &goldens().cases {
        let s = scheduler(case);
        let sigma0 = s.init_noise_sigma();
        let mut latents: Vec<f32> = case
            .sampling
            .init_noise
            .iter()
            .map(|v| v * sigma0)
            .collect();
        for (i, &t) in s.timesteps().iter().enumerate() {
            let scale = s.model_input_scale(i).unwrap();
            // The goldens' stand-in model: tanh(x_in) · t / 1000.
            let output: Vec<f32> = latents
                .iter()
                .map(|v| (v * scale).tanh() * (t / 1000.0))
                .collect();
            let noise = case.sampling.step_noises.get(i).map(Vec::as_slice);
            let noise = noise.filter(|_| s.step_coefficients(i).unwrap().noise != 0.0);
            latents = s.step(i, &latents, &output, noise).unwrap().prev_sample;
        }
        let err = max_err(&latents, &case.sampling.final_latents);
        assert!(
            err <= 1e-5,
            "{} ({} steps): final latents differ by {err}",
            case.name,
            case.steps
        );
    }
}

#[test]
fn ddpm_noising_matches_diffusers() {
    let d = goldens().ddpm;
    let sd = SchedulerConfig::from_json(
        r#"{"_class_name": "DDIMScheduler", "beta_start": 0.00085, "beta_end": 0.012,
            "beta_schedule": "scaled_linear"}"#,
    )
    .unwrap();
    let schedule = NoiseSchedule::new(&sd.betas, 1000);
    assert!(max_err(&schedule.alphas_cumprod, &d.alphas_cumprod_scaled_linear) <= 1e-7);
    let linear = SchedulerConfig::from_json(r#"{"_class_name": "DDIMScheduler"}"#).unwrap();
    let linear = NoiseSchedule::new(&linear.betas, 1000);
    assert!(max_err(&linear.alphas_cumprod, &d.alphas_cumprod_linear) <= 1e-7);
    for c in &d.checks {
        let noisy = schedule.add_noise(&d.x0, &d.noise, c.t);
        let velocity = schedule.velocity(&d.x0, &d.noise, c.t);
        assert!(
            max_err(&noisy, &c.noisy) <= TOLERANCE,
            "add_noise at t={}",
            c.t
        );
        assert!(
            max_err(&velocity, &c.velocity) <= TOLERANCE,
            "velocity at t={}",
            c.t
        );
    }
}

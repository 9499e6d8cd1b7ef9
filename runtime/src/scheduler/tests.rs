//! Unit tests against the values SPEC.md gives; parity with diffusers on every code path is in
//! the workspace's `tests/` crate.

use super::config::SchedulerConfigFile;
use super::*;

const SD_TURBO: &str = r#"{"_class_name": "EulerDiscreteScheduler", "beta_end": 0.012,
    "beta_schedule": "scaled_linear", "beta_start": 0.00085, "num_train_timesteps": 1000,
    "prediction_type": "epsilon", "steps_offset": 1, "timestep_spacing": "trailing"}"#;

fn turbo(n: usize) -> Scheduler {
    let mut s = Scheduler::new(SchedulerConfig::from_json(SD_TURBO).unwrap());
    s.set_timesteps(n).unwrap();
    s
}

#[test]
fn student_timesteps_and_sigmas_match_the_spec() {
    assert_eq!(turbo(1).timesteps(), [999.0]);
    assert_eq!(turbo(2).timesteps(), [999.0, 499.0]);
    assert_eq!(turbo(4).timesteps(), [999.0, 749.0, 499.0, 249.0]);
    let expected = [14.6146, 4.0817, 1.6129, 0.6932, 0.0];
    for (got, want) in turbo(4).sigmas().iter().zip(expected) {
        assert!((got - want).abs() < 1e-3, "{got} vs {want}");
    }
    // Trailing spacing: the initial noise is σ_max itself, and the model input is z·√(1−ᾱ).
    let s = turbo(1);
    assert!((s.init_noise_sigma() - 14.6146).abs() < 1e-3);
    let input = s.init_noise_sigma() * s.model_input_scale(0).unwrap();
    assert!((input - 0.99767).abs() < 1e-5, "{input}");
}

#[test]
fn one_step_student_output_is_sigma_times_z_minus_eps() {
    let s = turbo(1);
    let c = s.step_coefficients(0).unwrap();
    let sigma = s.sigmas()[0];
    let z = [0.5f32, -1.0];
    let eps = [0.25f32, 0.5];
    let latents: Vec<f32> = z.iter().map(|v| v * sigma).collect();
    let out = s.step(0, &latents, &eps, None).unwrap();
    for i in 0..2 {
        let want = sigma * (z[i] - eps[i]);
        assert!((out.prev_sample[i] - want).abs() < 1e-4);
        assert!((out.pred_original_sample[i] - want).abs() < 1e-4);
    }
    assert_eq!(c.noise, 0.0);
}

#[test]
fn bad_configs_and_calls_are_refused() {
    let err = SchedulerConfig::from_json(r#"{"_class_name": "LCMScheduler"}"#).unwrap_err();
    assert!(err
        .to_string()
        .contains("unknown scheduler class \"LCMScheduler\""));
    let err = SchedulerConfig::from_json(
        r#"{"_class_name": "DDIMScheduler", "use_karras_sigmas": true}"#,
    )
    .unwrap_err();
    assert!(err.to_string().contains("use_karras_sigmas"));
    assert!(SchedulerConfig::from_json("{not json").is_err());
    let mut s = Scheduler::new(SchedulerConfig::from_json(SD_TURBO).unwrap());
    assert!(
        s.step_coefficients(0).is_err(),
        "stepping before set_timesteps"
    );
    assert!(s.set_timesteps(0).is_err());
    assert!(s.set_timesteps(1001).is_err());
    s.set_timesteps(2).unwrap();
    assert!(s.step(2, &[0.0], &[0.0], None).is_err());
    assert!(s.step(0, &[0.0], &[0.0, 1.0], None).is_err());
}

#[test]
fn ancestral_steps_demand_noise_except_the_last() {
    let file: SchedulerConfigFile = serde_json::from_str(SD_TURBO).unwrap();
    let config = SchedulerConfig::with_kind(&file, SchedulerKind::EulerAncestral).unwrap();
    let mut s = Scheduler::new(config);
    s.set_timesteps(2).unwrap();
    assert!(s.step(0, &[1.0], &[0.5], None).is_err());
    assert!(s.step(0, &[1.0], &[0.5], Some(&[0.1])).is_ok());
    // The last step goes to σ = 0: no noise is added, so none is needed.
    assert!(s.step(1, &[1.0], &[0.5], None).is_ok());
}

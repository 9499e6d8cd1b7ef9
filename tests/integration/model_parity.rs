//! The tch networks, schedulers and whole sampling loops match diffusers/transformers in f32.
//!
//! Fixtures: `tests/fixtures/models/`, made by `tests/scripts/make_model_goldens.py` — two tiny
//! diffusers pipelines with seeded random weights (the student: linear projections, several
//! head counts, Euler trailing, epsilon; the teacher: 1×1 conv projections, upcast attention,
//! DDIM, v-prediction), a quick-gelu text encoder, and `goldens.safetensors` with the
//! reference outputs for fixed inputs.

use std::collections::HashMap;
use std::path::PathBuf;

use runtime::scheduler::SchedulerKind;
use tch::{Device, Kind, Tensor};
use tests::{fixture, run_binary};
use trainer::checkpoint::{load_text_encoder, load_unet, load_vae, LoadOptions};
use trainer::sampling::{NoiseSource, Pipeline, SampleRequest};

/// The bound for every comparison in f32.
const MAX_ABS_ERR: f64 = 1e-4;

const F32_CPU: LoadOptions = LoadOptions {
    device: Device::Cpu,
    kind: Kind::Float,
    variant: None,
};

fn models() -> PathBuf {
    fixture("models")
}

fn goldens() -> HashMap<String, Tensor> {
    let path = models().join("goldens.safetensors");
    Tensor::read_safetensors(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .into_iter()
        .collect()
}

fn max_abs_err(got: &Tensor, want: &Tensor) -> f64 {
    assert_eq!(got.size(), want.size(), "shapes differ");
    (got - want).abs().max().double_value(&[])
}

fn assert_close(what: &str, got: &Tensor, want: &Tensor) {
    let err = max_abs_err(got, want);
    let scale = want.abs().max().double_value(&[]);
    // Printed for the record (`cargo test -- --nocapture`); the bound is the assertion.
    eprintln!("{what}: max abs error {err:.2e} (values up to {scale:.3})");
    assert!(
        err <= MAX_ABS_ERR,
        "{what}: max abs error {err:e} (values up to {scale:.3})"
    );
    // A reference of all zeros would make the comparison empty.
    assert!(scale > 1e-3, "{what}: degenerate reference");
}

#[test]
fn text_encoders_match_transformers() {
    let g = goldens();
    let ids = &g["text.input_ids"];
    let gelu = load_text_encoder(&models().join("tiny-student/text_encoder"), F32_CPU).unwrap();
    let out = tch::no_grad(|| gelu.model.forward(ids));
    assert_close("text encoder (gelu)", &out, &g["text.last_hidden_state"]);
    let quick = load_text_encoder(&models().join("text-encoder-quick-gelu"), F32_CPU).unwrap();
    let out = tch::no_grad(|| quick.model.forward(ids));
    assert_close(
        "text encoder (quick_gelu)",
        &out,
        &g["text_quick_gelu.last_hidden_state"],
    );
}

#[test]
fn unets_match_diffusers() {
    let g = goldens();
    for name in ["student", "teacher"] {
        let unet = load_unet(&models().join(format!("tiny-{name}/unet")), F32_CPU).unwrap();
        let key = |k: &str| &g[&format!("unet_{name}.{k}")];
        let out = tch::no_grad(|| {
            unet.model
                .forward(key("sample"), key("timestep"), key("encoder_hidden_states"))
        });
        assert_close(&format!("unet {name}"), &out, key("out"));
    }
}

#[test]
fn vae_matches_diffusers() {
    let g = goldens();
    let vae = load_vae(&models().join("tiny-student/vae"), F32_CPU).unwrap();
    let posterior = tch::no_grad(|| vae.model.encode(&g["vae.image"]));
    assert_close(
        "vae posterior mean",
        &posterior.mean,
        &g["vae.posterior_mean"],
    );
    assert_close(
        "vae posterior logvar",
        &posterior.logvar,
        &g["vae.posterior_logvar"],
    );
    let decoded = tch::no_grad(|| vae.model.decode(&g["vae.latents"]));
    assert_close("vae decoder", &decoded, &g["vae.decoded"]);
}

fn request(
    prompt: &str,
    steps: usize,
    guidance: f64,
    scheduler: Option<SchedulerKind>,
) -> SampleRequest {
    SampleRequest {
        prompt: prompt.into(),
        negative_prompt: String::new(),
        steps,
        guidance,
        scheduler,
        height: 16,
        width: 16,
    }
}

#[test]
fn student_sampling_matches_diffusers() {
    let g = goldens();
    let student = Pipeline::load(&models().join("tiny-student"), F32_CPU).unwrap();
    for steps in [1, 2, 4] {
        let key = |k: &str| g[&format!("student_euler_{steps}.{k}")].shallow_clone();
        let noise = NoiseSource::Given {
            initial: key("noise"),
            steps: None,
        };
        let out = student
            .sample(&request("a photo of a dog", steps, 0.0, None), &noise)
            .unwrap();
        assert_close(
            &format!("student euler {steps} steps"),
            &out.latents,
            &key("latents"),
        );
        if steps == 1 {
            assert_close("student 1-step image", &out.images, &key("image"));
        }
    }
    for steps in [2, 4] {
        let key = |k: &str| g[&format!("student_ancestral_{steps}.{k}")].shallow_clone();
        let noise = NoiseSource::Given {
            initial: key("noise"),
            steps: Some(key("step_noise")),
        };
        let req = request(
            "a photo of a dog",
            steps,
            0.0,
            Some(SchedulerKind::EulerAncestral),
        );
        let out = student.sample(&req, &noise).unwrap();
        assert_close(
            &format!("student euler ancestral {steps} steps"),
            &out.latents,
            &key("latents"),
        );
    }
}

#[test]
fn teacher_ddim_with_guidance_matches_diffusers() {
    let g = goldens();
    let teacher = Pipeline::load(&models().join("tiny-teacher"), F32_CPU).unwrap();
    let noise = NoiseSource::Given {
        initial: g["teacher_ddim_25.noise"].shallow_clone(),
        steps: None,
    };
    let out = teacher
        .sample(&request("a photo of a dog", 25, 7.5, None), &noise)
        .unwrap();
    assert_eq!(out.timesteps.len(), 25);
    assert_close(
        "teacher ddim 25 steps, cfg 7.5",
        &out.latents,
        &g["teacher_ddim_25.latents"],
    );
}

#[test]
fn sample_command_reproduces_diffusers_from_a_noise_file() {
    let g = goldens();
    let dir = tempfile::tempdir().unwrap();
    let noise_path = dir.path().join("noise.safetensors");
    let noise = &g["student_ancestral_4.noise"];
    let steps = &g["student_ancestral_4.step_noise"];
    Tensor::write_safetensors(&[("noise", noise), ("step_noise", steps)], &noise_path).unwrap();
    let png = dir.path().join("out.png");
    let latents = dir.path().join("latents.safetensors");
    let model = models().join("tiny-student");
    let out = run_binary(
        "trainer",
        &[
            "sample",
            "--model",
            model.to_str().unwrap(),
            "--prompt",
            "a photo of a dog",
            "--steps",
            "4",
            "--scheduler",
            "euler-ancestral",
            "--height",
            "16",
            "--noise",
            noise_path.to_str().unwrap(),
            "--out",
            png.to_str().unwrap(),
            "--save-latents",
            latents.to_str().unwrap(),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let saved: HashMap<String, Tensor> = Tensor::read_safetensors(&latents)
        .unwrap()
        .into_iter()
        .collect();
    assert_close(
        "trainer sample --noise",
        &saved["latents"],
        &g["student_ancestral_4.latents"],
    );
    let img = image::open(&png).unwrap();
    assert_eq!((img.width(), img.height()), (16, 16));
}

#[test]
fn half_precision_weights_run_close_to_f32() {
    // Not parity (diffusers was run in f32): a check that f16/bf16 loading and the upcast
    // attention path work, within the precision those formats carry.
    let g = goldens();
    for (kind, bound) in [(Kind::BFloat16, 0.1), (Kind::Half, 0.02)] {
        let opts = LoadOptions { kind, ..F32_CPU };
        for name in ["student", "teacher"] {
            let unet = load_unet(&models().join(format!("tiny-{name}/unet")), opts).unwrap();
            let key = |k: &str| g[&format!("unet_{name}.{k}")].to_kind(kind);
            let out = tch::no_grad(|| {
                unet.model.forward(
                    &key("sample"),
                    &key("timestep"),
                    &key("encoder_hidden_states"),
                )
            });
            assert_eq!(out.kind(), kind);
            let err = max_abs_err(&out.to_kind(Kind::Float), &g[&format!("unet_{name}.out")]);
            assert!(err <= bound, "{name} in {kind:?}: max abs error {err}");
        }
    }
}

#[test]
fn cross_attention_key_value_weights_have_their_diffusers_names() {
    // EchoDistill trains exactly these tensors, and the exporter folds them by name.
    let unet = load_unet(&models().join("tiny-student/unet"), F32_CPU).unwrap();
    let names = trainer::checkpoint::expected_names(&unet.vs);
    let kv: Vec<&String> = names
        .iter()
        .filter(|n| n.contains(".attn2.to_k.") || n.contains(".attn2.to_v."))
        .collect();
    // One transformer block in down block 0, the mid block and each of up block 1's two layers:
    // four attn2 layers, each with to_k and to_v weights and no biases.
    assert_eq!(kv.len(), 8, "{kv:?}");
    assert!(names.contains(
        &"down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight".to_string()
    ));
    assert!(names
        .contains(&"mid_block.attentions.0.transformer_blocks.0.attn2.to_v.weight".to_string()));
    assert!(names
        .contains(&"up_blocks.1.attentions.1.transformer_blocks.0.attn2.to_k.weight".to_string()));
    assert!(kv.iter().all(|n| n.ends_with(".weight")));
}

//! `trainer sample` refuses bad models, configs, prompts and noise files with a clear error and
//! a non-zero exit, never a panic.

use std::fs;
use std::path::Path;
use std::process::{Command, Output};

use tests::{binary, fixture};

/// A writable copy of the tiny student pipeline.
fn model_copy() -> tempfile::TempDir {
    fn copy(from: &Path, to: &Path) {
        fs::create_dir_all(to).unwrap();
        for entry in fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            let target = to.join(entry.file_name());
            if entry.file_type().unwrap().is_dir() {
                copy(&entry.path(), &target);
            } else {
                fs::copy(entry.path(), target).unwrap();
            }
        }
    }
    let dir = tempfile::tempdir().unwrap();
    copy(&fixture("models/tiny-student"), dir.path());
    dir
}

fn sample(model: &str, extra: &[&str], env: &[(&str, &str)]) -> Output {
    let out_dir = tempfile::tempdir().unwrap();
    let png = out_dir.path().join("x.png");
    let mut args = vec![
        "sample",
        "--model",
        model,
        "--height",
        "16",
        "--out",
        png.to_str().unwrap(),
    ];
    if !extra.contains(&"--prompt") {
        args.extend(["--prompt", "a photo of a dog"]);
    }
    args.extend_from_slice(extra);
    let mut cmd = Command::new(binary("trainer"));
    cmd.args(&args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

fn assert_fails_with(out: &Output, expected: &[&str]) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "expected failure; stderr: {err}");
    assert_ne!(out.status.code(), Some(101), "a panic: {err}");
    assert!(!err.contains("panicked"), "a panic: {err}");
    for text in expected {
        assert!(err.contains(text), "stderr lacks {text:?}: {err}");
    }
}

#[test]
fn the_tiny_model_samples() {
    let model = fixture("models/tiny-student");
    let out = sample(model.to_str().unwrap(), &[], &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn missing_model_folder() {
    assert_fails_with(
        &sample("/nonexistent/sd-turbo", &[], &[]),
        &["/nonexistent/sd-turbo not found"],
    );
    let empty = tempfile::tempdir().unwrap();
    assert_fails_with(
        &sample(empty.path().to_str().unwrap(), &[], &[]),
        &["no model_index.json"],
    );
}

#[test]
fn uncached_repo_id_offline() {
    let home = tempfile::tempdir().unwrap();
    let out = sample(
        "someone/not-a-model",
        &[],
        &[
            ("HF_HOME", home.path().to_str().unwrap()),
            ("HF_HUB_OFFLINE", "1"),
        ],
    );
    assert_fails_with(
        &out,
        &[
            "someone/not-a-model is not in the Hugging Face cache",
            "a local diffusers folder",
        ],
    );
}

#[test]
fn truncated_safetensors() {
    let dir = model_copy();
    let weights = dir.path().join("unet/diffusion_pytorch_model.safetensors");
    let bytes = fs::read(&weights).unwrap();
    fs::write(&weights, &bytes[..bytes.len() / 2]).unwrap();
    let out = sample(dir.path().to_str().unwrap(), &[], &[]);
    assert_fails_with(
        &out,
        &[
            "diffusion_pytorch_model.safetensors",
            "not a complete safetensors file",
        ],
    );
}

#[test]
fn weights_that_do_not_fit_the_config() {
    let dir = model_copy();
    let config_path = dir.path().join("unet/config.json");
    let config = fs::read_to_string(&config_path).unwrap();
    fs::write(
        &config_path,
        config.replace("\"cross_attention_dim\": 16", "\"cross_attention_dim\": 24"),
    )
    .unwrap();
    let out = sample(dir.path().to_str().unwrap(), &[], &[]);
    assert_fails_with(
        &out,
        &[
            "shape mismatch",
            "attn2.to_k.weight: model [16, 24], file [16, 16]",
        ],
    );

    let dir = model_copy();
    let config_path = dir.path().join("unet/config.json");
    let config = fs::read_to_string(&config_path).unwrap();
    fs::write(
        &config_path,
        config.replace("\"layers_per_block\": 1", "\"layers_per_block\": 2"),
    )
    .unwrap();
    let out = sample(dir.path().to_str().unwrap(), &[], &[]);
    assert_fails_with(
        &out,
        &[
            "missing (96)",
            "down_blocks.0.attentions.1.norm.bias",
            "shape mismatch (4)",
        ],
    );
}

#[test]
fn pickle_weights_are_refused_with_a_conversion_hint() {
    let dir = model_copy();
    let unet = dir.path().join("unet");
    fs::rename(
        unet.join("diffusion_pytorch_model.safetensors"),
        unet.join("diffusion_pytorch_model.bin"),
    )
    .unwrap();
    let out = sample(dir.path().to_str().unwrap(), &[], &[]);
    assert_fails_with(
        &out,
        &[
            "pickle checkpoint",
            "save_pretrained",
            "safe_serialization=True",
        ],
    );
}

#[test]
fn unknown_scheduler() {
    let dir = model_copy();
    let path = dir.path().join("scheduler/scheduler_config.json");
    let config = fs::read_to_string(&path).unwrap();
    fs::write(
        &path,
        config.replace("EulerDiscreteScheduler", "LCMScheduler"),
    )
    .unwrap();
    let out = sample(dir.path().to_str().unwrap(), &[], &[]);
    assert_fails_with(
        &out,
        &[
            "scheduler_config.json",
            "unknown scheduler class \"LCMScheduler\"",
        ],
    );
}

#[test]
fn empty_prompt() {
    let model = fixture("models/tiny-student");
    let out = sample(model.to_str().unwrap(), &["--prompt", "  "], &[]);
    assert_fails_with(&out, &["the prompt is empty"]);
}

#[test]
fn unreadable_or_mismatched_noise_file() {
    let model = fixture("models/tiny-student");
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("noise.safetensors");
    fs::write(&garbage, b"not a safetensors file").unwrap();
    let out = sample(
        model.to_str().unwrap(),
        &["--noise", garbage.to_str().unwrap()],
        &[],
    );
    assert_fails_with(&out, &["cannot read noise file", "noise.safetensors"]);

    let wrong = dir.path().join("wrong.safetensors");
    tch::Tensor::write_safetensors(
        &[(
            "noise",
            &tch::Tensor::zeros([1, 4, 5, 5], tch::kind::FLOAT_CPU),
        )],
        &wrong,
    )
    .unwrap();
    let out = sample(
        model.to_str().unwrap(),
        &["--noise", wrong.to_str().unwrap()],
        &[],
    );
    assert_fails_with(&out, &["[1, 4, 5, 5]", "[1, 4, 8, 8]"]);

    let missing_steps = dir.path().join("initial-only.safetensors");
    tch::Tensor::write_safetensors(
        &[(
            "noise",
            &tch::Tensor::zeros([1, 4, 8, 8], tch::kind::FLOAT_CPU),
        )],
        &missing_steps,
    )
    .unwrap();
    let args = [
        "--noise",
        missing_steps.to_str().unwrap(),
        "--steps",
        "2",
        "--scheduler",
        "euler-ancestral",
    ];
    let out = sample(model.to_str().unwrap(), &args, &[]);
    assert_fails_with(&out, &["no `step_noise` tensor"]);
}

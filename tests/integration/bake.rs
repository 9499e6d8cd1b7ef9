//! `exporter bake` on tiny models and tiny fit runs of every method: each baked network, run by
//! onnxruntime after onnx's full checker (`tests/scripts/check_onnx_bake.py`), matches the
//! trainer's tch network with the run's weights on the same inputs (f32 within 1e-4, f16 within
//! 1e-2 of the output's range); external data loads; `inspect` checks the manifest; bad input is
//! refused and leaves no folder behind.

use std::fs;
use std::path::Path;
use std::process::{Command, Output};

use runtime::manifest::Manifest;
use runtime::GaussianRng;
use tch::{Device, Kind, Tensor};
use tests::{reference_python, run_binary, workspace_root};
use trainer::checkpoint::LoadOptions;
use trainer::fit::config::FitConfig;
use trainer::fit::run_dir::{load_trained, Trained};
use trainer::sampling::{token_ids, Pipeline};

use crate::fit::{assert_refused, dreambench, overrides, run_quiet, tiny_models};

const F32_CPU: LoadOptions = LoadOptions {
    device: Device::Cpu,
    kind: Kind::Float,
    variant: None,
};

fn normal(shape: &[i64], seed: u64) -> Tensor {
    let n: i64 = shape.iter().product();
    let values = GaussianRng::new(seed).normal(n as usize);
    Tensor::from_slice(&values).view(shape)
}

/// A finished tiny run of `method` (2 iterations, rates raised so the weights move).
fn tiny_run(dir: &Path, student: &Path, teacher: &Path, method: &str) -> std::path::PathBuf {
    let out = dir.join(format!("run-{method}"));
    let concept = format!(
        "concepts=[{{images: '{}', token: '<new1>', class: dog}}]",
        dreambench("dog").display()
    );
    let method_set = format!("method={method}");
    let extra = [
        concept.as_str(),
        method_set.as_str(),
        "iterations=2",
        "lr_teacher=1e-2",
        "lr_student=1e-2",
        "baseline.lr=1e-2",
        "baseline.token_lr=1e-1",
    ];
    let config = FitConfig::load(None, &overrides(student, teacher, &extra)).unwrap();
    run_quiet(config, &out);
    out
}

fn bake(args: &[&str]) -> Output {
    let mut all = vec!["bake"];
    all.extend_from_slice(args);
    run_binary("exporter", &all)
}

fn assert_ok(out: &Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Inputs and the tch outputs of `p` on them, written as the cases file the check script reads.
/// Returns the UNet's inputs and output.
fn write_cases(p: &Pipeline, path: &Path) -> [Tensor; 4] {
    let nets = p.networks();
    let ids = token_ids(
        nets.tokenizer,
        &["a <new1> dog on the beach", "a photo of a cat"],
        Device::Cpu,
    );
    let hidden = tch::no_grad(|| nets.text_encoder.forward(&ids));
    // A 12×10 latent exercises diffusers' odd-size upsampling path.
    let sample = normal(&[2, 4, 12, 10], 1);
    let timestep = Tensor::from_slice(&[999f32, 451.0]);
    let out_sample = tch::no_grad(|| nets.unet.forward(&sample, &timestep, &hidden));
    let latent = normal(&[1, 4, 8, 8], 2);
    let vae_sample = tch::no_grad(|| nets.vae.decode(&latent));
    let kept = [
        sample.shallow_clone(),
        timestep.shallow_clone(),
        hidden.shallow_clone(),
        out_sample.shallow_clone(),
    ];
    let named = [
        ("input_ids", ids),
        ("last_hidden_state", hidden.shallow_clone()),
        ("sample", sample),
        ("timestep", timestep),
        ("encoder_hidden_states", hidden),
        ("out_sample", out_sample),
        ("latent_sample", latent),
        ("vae_sample", vae_sample),
    ]
    .map(|(n, t)| (n, t.contiguous()));
    Tensor::write_safetensors(&named, path).unwrap();
    kept
}

/// Runs the check script; returns (network, max abs error, max abs reference) per network.
fn onnxruntime_errors(model: &Path, cases: &Path) -> Vec<(String, f64, f64)> {
    let out = Command::new(reference_python())
        .arg(workspace_root().join("tests/scripts/check_onnx_bake.py"))
        .arg(model)
        .arg(cases)
        .output()
        .expect("run the reference python");
    assert!(
        out.status.success(),
        "check_onnx_bake.py failed on {}:\n{}",
        model.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    ["text_encoder", "unet", "vae_decoder"]
        .iter()
        .map(|n| {
            (
                n.to_string(),
                report[n]["max_abs"].as_f64().unwrap(),
                report[n]["max_ref"].as_f64().unwrap(),
            )
        })
        .collect()
}

#[test]
fn baked_networks_match_the_trained_tch_networks_for_every_method() {
    let dir = tempfile::tempdir().unwrap();
    let (student, teacher) = tiny_models(dir.path());
    let s = student.to_str().unwrap();
    let base = Pipeline::load(&student, F32_CPU).unwrap();
    for method in [
        "echodistill",
        "custom-diffusion",
        "textual-inversion",
        "dreambooth",
        "lora",
    ] {
        let run = tiny_run(dir.path(), &student, &teacher, method);
        let model = dir.path().join(format!("model-{method}"));
        // One method's weights all go to external data, so that path is checked too.
        let external = if method == "lora" { "always" } else { "auto" };
        let stdout = assert_ok(&bake(&[
            "--base",
            s,
            "--run",
            run.to_str().unwrap(),
            "--out",
            model.to_str().unwrap(),
            "--external-data",
            external,
        ]));
        assert!(stdout.contains("unet.onnx"), "{stdout}");
        let manifest = Manifest::read(&model).unwrap();
        assert_eq!(manifest.method.as_deref(), Some(method));
        assert_eq!(manifest.tokens.len(), 1);
        assert_eq!(manifest.tokens[0].token, "<new1>");
        assert_eq!(manifest.tokens[0].id, 49408);
        assert_eq!(manifest.steps, vec![1, 2, 4]);
        assert_eq!(
            manifest.networks["unet"].external_data.is_some(),
            method == "lora"
        );
        assert!(manifest.verify(&model).is_empty());

        let trained = load_trained(&run, Trained::Student, F32_CPU).unwrap();
        let cases = dir.path().join(format!("cases-{method}.safetensors"));
        let [sample, timestep, hidden, out_sample] = write_cases(&trained, &cases);
        if method != "textual-inversion" {
            // The run moved the UNet well past the tolerance, so a bake that dropped the
            // learned weights would fail. (Textual Inversion's row is checked by the text
            // encoder: without it, id 49408 has no embedding.)
            let base_out = tch::no_grad(|| base.unet.model.forward(&sample, &timestep, &hidden));
            let moved = (&out_sample - base_out).abs().max().double_value(&[]);
            assert!(
                moved > 1e-3,
                "{method}: the run changed the UNet by only {moved}"
            );
        }
        for (network, error, reference) in onnxruntime_errors(&model, &cases) {
            eprintln!(
                "{method} {network}: max abs error {error:.2e} (outputs up to {reference:.2})"
            );
            assert!(error < 1e-4, "{method} {network}: {error}");
        }
    }
}

#[test]
fn half_precision_bakes_match_within_a_percent_and_inspect_checks_hashes() {
    let dir = tempfile::tempdir().unwrap();
    let (student, teacher) = tiny_models(dir.path());
    let run = tiny_run(dir.path(), &student, &teacher, "echodistill");
    let model = dir.path().join("model-f16");
    assert_ok(&bake(&[
        "--base",
        student.to_str().unwrap(),
        "--run",
        run.to_str().unwrap(),
        "--out",
        model.to_str().unwrap(),
        "--dtype",
        "f16",
    ]));
    let trained = load_trained(&run, Trained::Student, F32_CPU).unwrap();
    let cases = dir.path().join("cases.safetensors");
    let _ = write_cases(&trained, &cases);
    for (network, error, reference) in onnxruntime_errors(&model, &cases) {
        let relative = error / reference;
        eprintln!("f16 {network}: max abs error {error:.2e}, {relative:.2e} of the range");
        assert!(relative < 1e-2, "f16 {network}: {relative}");
        // Half precision really is in the file: f32 would be a thousand times closer.
        assert!(error > 1e-5, "f16 {network}: error {error} is that of f32");
    }

    let out = run_binary("exporter", &["inspect", model.to_str().unwrap()]);
    let text = assert_ok(&out);
    assert!(
        text.contains("input  sample float[batch, 4, height, width]"),
        "{text}"
    );
    assert!(text.contains("opset ai.onnx 17"), "{text}");
    assert!(text.contains("files match their sha256"), "{text}");
    // A changed file fails the manifest check, naming it.
    let vocab = model.join("tokenizer").join("vocab.json");
    let mut bytes = fs::read(&vocab).unwrap();
    bytes.push(b'\n');
    fs::write(&vocab, bytes).unwrap();
    let out = run_binary("exporter", &["inspect", model.to_str().unwrap()]);
    assert_refused(&out, "tokenizer/vocab.json");
}

#[test]
fn bad_bake_input_is_refused_and_leaves_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let (student, teacher) = tiny_models(dir.path());
    let run = tiny_run(dir.path(), &student, &teacher, "echodistill");
    let (s, r) = (student.to_str().unwrap(), run.to_str().unwrap());
    let other = dir.path().join("other");
    tests::init_tiny(&other, "tiny-student", "1");
    let out_dir = dir.path().join("out").join("model");
    let o = out_dir.to_str().unwrap();
    let leftovers = || {
        fs::read_dir(dir.path().join("out"))
            .map(|d| d.count())
            .unwrap_or(0)
    };

    // A base whose K/V differ from the ones the run was trained against.
    let out = bake(&["--base", other.to_str().unwrap(), "--run", r, "--out", o]);
    assert_refused(&out, "trained on other base weights");
    assert_eq!(leftovers(), 0, "a refused bake left files");
    // Missing files.
    let broken = dir.path().join("broken");
    fs::create_dir_all(&broken).unwrap();
    for f in ["config.yaml", "tokens.safetensors"] {
        fs::copy(run.join(f), broken.join(f)).unwrap();
    }
    let out = bake(&["--base", s, "--run", broken.to_str().unwrap(), "--out", o]);
    assert_refused(&out, "tokenizer");
    copy_dir(&run.join("tokenizer"), &broken.join("tokenizer"));
    let out = bake(&["--base", s, "--run", broken.to_str().unwrap(), "--out", o]);
    assert_refused(&out, "student.safetensors is missing");
    let out = bake(&[
        "--base",
        dir.path().join("nope").to_str().unwrap(),
        "--out",
        o,
    ]);
    assert_refused(&out, "nope");
    // Unsupported dtype and resolution.
    let out = bake(&["--base", s, "--out", o, "--dtype", "bf16"]);
    assert_refused(&out, "bf16");
    let out = bake(&["--base", s, "--out", o, "--height", "500"]);
    assert_refused(&out, "--height 500");
    assert_eq!(leftovers(), 0, "a refused bake left files");

    // An existing folder is kept unless --force, then replaced whole.
    assert_ok(&bake(&["--base", s, "--run", r, "--out", o]));
    fs::write(out_dir.join("stale.txt"), "old").unwrap();
    let out = bake(&["--base", s, "--out", o]);
    assert_refused(&out, "--force");
    assert!(out_dir.join("stale.txt").is_file());
    assert_ok(&bake(&["--base", s, "--out", o, "--force"]));
    assert!(!out_dir.join("stale.txt").exists());
    assert!(Manifest::read(&out_dir).unwrap().tokens.is_empty());
    assert_eq!(leftovers(), 1, "only the model folder remains");
    drop(teacher);
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

fn rename_initializers(from: &Path, to: &Path) {
    let out = Command::new(reference_python())
        .arg(workspace_root().join("tests/scripts/rename_onnx_initializers.py"))
        .arg(from)
        .arg(to)
        .output()
        .expect("run the reference python");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn patch_finds_learned_matrices_by_content_and_refuses_partial_patches() {
    let dir = tempfile::tempdir().unwrap();
    let (student, teacher) = tiny_models(dir.path());
    let s = student.to_str().unwrap();
    let d = |name: &str| dir.path().join(name);
    // A foreign export of the base: opaque names, reordered, K/V stored transposed ([in, out]).
    assert_ok(&bake(&["--base", s, "--out", d("base").to_str().unwrap()]));
    rename_initializers(&d("base").join("unet.onnx"), &d("foreign.onnx"));
    let other = d("other");
    tests::init_tiny(&other, "tiny-student", "1");
    assert_ok(&bake(&[
        "--base",
        other.to_str().unwrap(),
        "--out",
        d("other-model").to_str().unwrap(),
    ]));

    for method in ["echodistill", "lora"] {
        let run = tiny_run(dir.path(), &student, &teacher, method);
        let r = run.to_str().unwrap();
        let model = d(&format!("model-{method}"));
        assert_ok(&bake(&[
            "--base",
            s,
            "--run",
            r,
            "--out",
            model.to_str().unwrap(),
        ]));
        let patched = d(&format!("patched-{method}.onnx"));
        let text = assert_ok(&bake(&[
            "--base",
            s,
            "--run",
            r,
            "--patch",
            d("foreign.onnx").to_str().unwrap(),
            "--out",
            patched.to_str().unwrap(),
        ]));
        // The tiny UNet has 10 transformer blocks: 20 cross-attention K/V matrices; LoRA adapts
        // q, k, v and out of both attentions of each, 80 matrices.
        let expected = if method == "lora" { 80 } else { 20 };
        assert!(
            text.contains(&format!(
                "patched {expected} of {expected} matrices ({expected} stored transposed)"
            )),
            "{text}"
        );
        // The patched foreign UNet computes what the trained tch UNet computes.
        fs::copy(&patched, model.join("unet.onnx")).unwrap();
        let trained = load_trained(&run, Trained::Student, F32_CPU).unwrap();
        let cases = d(&format!("cases-{method}.safetensors"));
        let _ = write_cases(&trained, &cases);
        for (network, error, _) in onnxruntime_errors(&model, &cases) {
            eprintln!("patched {method} {network}: max abs error {error:.2e}");
            assert!(error < 1e-4, "patched {method} {network}: {error}");
        }
        // A graph of another base model matches nothing and writes nothing.
        let refused = d("refused.onnx");
        let out = bake(&[
            "--base",
            s,
            "--run",
            r,
            "--patch",
            d("other-model").join("unet.onnx").to_str().unwrap(),
            "--out",
            refused.to_str().unwrap(),
        ]);
        assert_refused(&out, &format!("matched 0 of {expected}"));
        assert!(!refused.exists());
    }
    let run = tiny_run(dir.path(), &student, &teacher, "textual-inversion");
    let out = bake(&[
        "--base",
        s,
        "--run",
        run.to_str().unwrap(),
        "--patch",
        d("foreign.onnx").to_str().unwrap(),
        "--out",
        d("ti.onnx").to_str().unwrap(),
    ]);
    assert_refused(&out, "nothing to patch");
}

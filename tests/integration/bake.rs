//! `exporter bake` on tiny models and tiny fit runs of every method: each baked network, run by
//! onnxruntime after onnx's full checker (`tests/scripts/check_onnx_bake.py`), matches the
//! trainer's tch network with the run's weights on the same inputs (f32 within 1e-4, f16 within
//! 1e-2 of the output's range); external data loads; `inspect` checks the manifest; bad input is
//! refused and leaves no folder behind.

use std::fs;
use std::path::Path;
use std::process::Output;

use runtime::manifest::Manifest;
use runtime::GaussianRng;
use tch::{Device, Kind, Tensor};
use tests::{run_binary, run_reference_script};
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
pub fn tiny_run(dir: &Path, student: &Path, teacher: &Path, method: &str) -> std::path::PathBuf {
    tiny_run_with(dir, student, teacher, method, &[])
}

/// [`tiny_run`] with more config overrides.
fn tiny_run_with(
    dir: &Path,
    student: &Path,
    teacher: &Path,
    method: &str,
    more: &[&str],
) -> std::path::PathBuf {
    let out = dir.join(format!("run-{method}{}", more.join("-")));
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
    let extra: Vec<&str> = extra.iter().chain(more).copied().collect();
    let config = FitConfig::load(None, &overrides(student, teacher, &extra)).unwrap();
    run_quiet(config, &out);
    out
}

pub fn bake(args: &[&str]) -> Output {
    let mut all = vec!["bake"];
    all.extend_from_slice(args);
    run_binary("exporter", &all)
}

pub fn assert_ok(out: &Output) -> String {
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
    let stdout = run_reference_script("check_onnx_bake.py", &[model, cases]);
    let report: serde_json::Value = serde_json::from_slice(&stdout).unwrap();
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

/// Runs `pipeline.onnx` through the script for `steps`; returns `image_<k>` (batch, h, w, 3).
fn run_pipeline(model: &Path, cases: &Path, out: &Path, steps: &[u32]) -> Vec<Tensor> {
    let mut args = vec![model.into(), cases.into(), out.into()];
    args.extend(
        steps
            .iter()
            .map(|k| std::ffi::OsString::from(k.to_string())),
    );
    let stdout = run_reference_script("run_onnx_pipeline.py", &args);
    let report: serde_json::Value = serde_json::from_slice(&stdout).unwrap();
    assert_eq!(
        report["inputs"],
        serde_json::json!(["input_ids", "noise", "steps"])
    );
    assert_eq!(report["outputs"], serde_json::json!(["image"]));
    let images: std::collections::HashMap<String, Tensor> =
        Tensor::read_safetensors(out).unwrap().into_iter().collect();
    steps
        .iter()
        .map(|k| images[&format!("image_{k}")].shallow_clone())
        .collect()
}

/// `trainer sample` of the run's student with a noise file, as (h, w, 3) bytes.
fn trainer_sample(run: &Path, prompt: &str, noise: &Path, steps: u32, png: &Path) -> Tensor {
    let out = run_binary(
        "trainer",
        &[
            "sample",
            "--run",
            run.to_str().unwrap(),
            "--prompt",
            prompt,
            "--noise",
            noise.to_str().unwrap(),
            "--steps",
            &steps.to_string(),
            "--out",
            png.to_str().unwrap(),
        ],
    );
    assert_ok(&out);
    let image = image::open(png).unwrap().to_rgb8();
    let (w, h) = image.dimensions();
    Tensor::from_slice(image.as_raw()).view([h as i64, w as i64, 3])
}

/// The fused pipeline is the student's sampler: for 1, 2 and 4 steps and a batch of two
/// prompts, its bytes equal `trainer sample --noise` (the same noise, one prompt at a time).
/// Bound, f32: no byte differs by more than 1 and at most 0.5% differ at all (the networks agree
/// to ~1e-5, so only values within that of a rounding boundary flip; measured 99.99%). f16: no
/// byte differs by more than 2 and 99% are within 1 (measured: max 1, ~97% exact).
#[test]
fn fused_pipeline_reproduces_trainer_sample() {
    let dir = tempfile::tempdir().unwrap();
    let (student, teacher) = tiny_models(dir.path());
    let run = tiny_run(dir.path(), &student, &teacher, "echodistill");
    let prompts = ["a <new1> dog on the beach", "a photo of a <new1> dog"];
    let noise = normal(&[2, 4, 8, 8], 11);
    let noise_files: Vec<_> = (0..2)
        .map(|i| {
            let path = dir.path().join(format!("noise-{i}.safetensors"));
            Tensor::write_safetensors(&[("noise", noise.narrow(0, i, 1).contiguous())], &path)
                .unwrap();
            path
        })
        .collect();
    let steps = [1u32, 2, 4];
    let expected: Vec<Vec<Tensor>> = steps
        .iter()
        .map(|&k| {
            (0..2)
                .map(|i| {
                    let png = dir.path().join(format!("sample-{k}-{i}.png"));
                    trainer_sample(&run, prompts[i], &noise_files[i], k, &png)
                })
                .collect()
        })
        .collect();

    // f32 inline, f16 with its weights in external data.
    for (dtype, external, max_diff, close_share) in
        [("f32", "auto", 1, 0.995), ("f16", "always", 2, 0.99)]
    {
        let model = dir.path().join(format!("fused-{dtype}"));
        let stdout = assert_ok(&bake(&[
            "--base",
            student.to_str().unwrap(),
            "--run",
            run.to_str().unwrap(),
            "--out",
            model.to_str().unwrap(),
            "--fused",
            "--dtype",
            dtype,
            "--external-data",
            external,
        ]));
        assert!(stdout.contains("pipeline.onnx"), "{stdout}");
        let manifest = Manifest::read(&model).unwrap();
        assert_eq!(
            manifest.networks.keys().collect::<Vec<_>>(),
            ["pipeline"],
            "--fused writes the pipeline instead of the three networks"
        );
        assert_eq!(
            manifest.networks["pipeline"].external_data.is_some(),
            external == "always"
        );
        assert!(manifest.verify(&model).is_empty());
        let text = assert_ok(&run_binary(
            "exporter",
            &["inspect", model.to_str().unwrap()],
        ));
        assert!(text.contains("input  steps int64[]"), "{text}");
        assert!(
            text.contains("output image uint8[batch, height, width, 3]"),
            "{text}"
        );
        // Token ids from the baked tokenizer, as a consumer computes them.
        let tokenizer = runtime::ClipTokenizer::from_dir(&model.join("tokenizer")).unwrap();
        let ids = token_ids(&tokenizer, &prompts, Device::Cpu);
        let cases = dir
            .path()
            .join(format!("pipeline-cases-{dtype}.safetensors"));
        Tensor::write_safetensors(
            &[("input_ids", ids), ("noise", noise.shallow_clone())],
            &cases,
        )
        .unwrap();
        let out = dir.path().join(format!("pipeline-out-{dtype}.safetensors"));
        let images = run_pipeline(&model, &cases, &out, &steps);
        for (s, (image, want)) in images.iter().zip(&expected).enumerate() {
            assert_eq!(image.size(), [2, 64, 64, 3]);
            assert_eq!(image.kind(), Kind::Uint8);
            for (i, want) in want.iter().enumerate() {
                let diff = (image.get(i as i64).to_kind(Kind::Int) - want.to_kind(Kind::Int)).abs();
                let worst = diff.max().int64_value(&[]);
                let within = diff
                    .le(1)
                    .to_kind(Kind::Float)
                    .mean(Kind::Float)
                    .double_value(&[]);
                let exact = diff
                    .eq(0)
                    .to_kind(Kind::Float)
                    .mean(Kind::Float)
                    .double_value(&[]);
                eprintln!(
                    "{dtype} {} step(s), prompt {i}: max byte difference {worst}, {:.2}% exact, {:.2}% within 1",
                    steps[s],
                    exact * 100.0,
                    within * 100.0
                );
                assert!(worst <= max_diff, "{dtype} {} steps: {worst}", steps[s]);
                if dtype == "f32" {
                    assert!(exact >= close_share, "{dtype}: {exact} exact");
                } else {
                    assert!(within >= close_share, "{dtype}: {within} within 1");
                    // Half precision really is in the file.
                    assert!(exact < 1.0, "f16 bytes all equal those of f32");
                }
            }
        }
    }

    // A teacher run samples with guidance over many steps: not what the pipeline fuses.
    let teacher_run = tiny_run_with(
        dir.path(),
        &student,
        &teacher,
        "custom-diffusion",
        &["baseline.model=teacher"],
    );
    let model = dir.path().join("fused-teacher");
    let out = bake(&[
        "--base",
        teacher.to_str().unwrap(),
        "--run",
        teacher_run.to_str().unwrap(),
        "--out",
        model.to_str().unwrap(),
        "--fused",
    ]);
    assert_refused(&out, "bake it without --fused");
    assert!(!model.exists());
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

/// Copies a folder with its subfolders.
pub fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            fs::copy(entry.path(), target).unwrap();
        }
    }
}

fn rename_initializers(from: &Path, to: &Path) {
    run_reference_script("rename_onnx_initializers.py", &[from, to]);
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

//! The native runtime end to end: tiny models → `trainer fit` → `exporter bake` (split and
//! fused) → `runtime` (library and CLI) gives `trainer sample`'s images for 1, 2 and 4 steps,
//! from the same `--seed` (one generator in the core) and from the same `--noise` file, within
//! the exporter's bound: no byte differs by more than 1 and at least 99.5% are identical. Bad
//! input gets clear errors.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Output;

use runtime::noise_file::NoiseFile;
use runtime::onnx::{GenerateRequest, LoadOptions, Model, Noise};
use runtime::GaussianRng;
use tch::Tensor;
use tests::run_binary;

use crate::bake::{assert_ok, bake, copy_dir, tiny_run};
use crate::fit::{assert_refused, tiny_models};

const PROMPT: &str = "a <new1> dog on the beach";

/// A tiny EchoDistill run under `dir`, baked split into `dir/split` and fused into `dir/fused`;
/// returns the run folder.
pub fn baked_tiny_run(dir: &Path) -> PathBuf {
    let (student, teacher) = tiny_models(dir);
    let run = tiny_run(dir, &student, &teacher, "echodistill");
    bake_tiny(&student, Some(&run), &dir.join("split"), false);
    bake_tiny(&student, Some(&run), &dir.join("fused"), true);
    run
}

/// Bakes the tiny student (with `run` folded in, if any) at 64 px, its own size; split or fused.
pub fn bake_tiny(student: &Path, run: Option<&Path>, out: &Path, fused: bool) {
    let mut args = vec!["--base", student.to_str().unwrap()];
    if let Some(run) = run {
        args.extend(["--run", run.to_str().unwrap()]);
    }
    args.extend([
        "--out",
        out.to_str().unwrap(),
        "--height",
        "64",
        "--width",
        "64",
    ]);
    if fused {
        args.push("--fused");
    }
    assert_ok(&bake(&args));
}

/// `trainer sample --run` with `--seed S` or `--noise FILE`, as RGB bytes.
fn trainer_sample(run: &Path, noise: &[&str], steps: u32, png: &Path) -> Vec<u8> {
    let steps = steps.to_string();
    let mut args = vec![
        "sample",
        "--run",
        run.to_str().unwrap(),
        "--prompt",
        PROMPT,
        "--steps",
        &steps,
        "--out",
        png.to_str().unwrap(),
    ];
    args.extend_from_slice(noise);
    assert_ok(&run_binary("trainer", &args));
    image::open(png).unwrap().to_rgb8().into_raw()
}

/// Asserts the exporter's bound between two RGB images: no byte off by more than 1, at least
/// 99.5% identical.
pub fn assert_close(what: &str, got: &[u8], want: &[u8]) {
    assert_eq!(got.len(), want.len(), "{what}: sizes differ");
    let worst = got
        .iter()
        .zip(want)
        .map(|(a, b)| a.abs_diff(*b))
        .max()
        .unwrap_or(0);
    let exact = got.iter().zip(want).filter(|(a, b)| a == b).count() as f64 / got.len() as f64;
    eprintln!(
        "{what}: max byte difference {worst}, {:.2}% identical",
        exact * 100.0
    );
    assert!(worst <= 1, "{what}: a byte differs by {worst}");
    assert!(exact >= 0.995, "{what}: only {exact} identical");
}

fn load(dir: &Path) -> Model {
    let options = LoadOptions {
        verify: true,
        ..LoadOptions::default()
    };
    Model::load(dir, &options).unwrap()
}

#[test]
fn runtime_generates_what_trainer_sample_draws() {
    let dir = tempfile::tempdir().unwrap();
    let d = |name: &str| dir.path().join(name);
    let run = baked_tiny_run(dir.path());

    // A noise file as `trainer sample --noise` and `runtime generate --noise` read it.
    let noise_path = d("noise.safetensors");
    let noise = GaussianRng::new(99).normal(4 * 8 * 8);
    Tensor::write_safetensors(
        &[("noise", Tensor::from_slice(&noise).view([1, 4, 8, 8]))],
        &noise_path,
    )
    .unwrap();
    let noise_file = NoiseFile::read(&noise_path).unwrap();

    let models = [("split", load(&d("split"))), ("fused", load(&d("fused")))];
    assert!(!models[0].1.is_fused() && models[1].1.is_fused());
    for steps in [1u32, 2, 4] {
        let by_seed = trainer_sample(&run, &["--seed", "7"], steps, &d("t-seed.png"));
        let by_file = trainer_sample(
            &run,
            &["--noise", noise_path.to_str().unwrap()],
            steps,
            &d("t-file.png"),
        );
        for (name, model) in &models {
            let seeded = model
                .generate(&GenerateRequest::new(PROMPT, 7, steps))
                .unwrap();
            assert_eq!(seeded.images[0].seed, Some(7));
            assert_eq!((seeded.images[0].width, seeded.images[0].height), (64, 64));
            assert_close(
                &format!("{name} {steps} step(s), seed"),
                &seeded.images[0].rgb,
                &by_seed,
            );
            let request = GenerateRequest {
                noise: Noise::File(noise_file.clone()),
                ..GenerateRequest::new(PROMPT, 0, steps)
            };
            let filed = model.generate(&request).unwrap();
            assert_eq!(filed.images[0].seed, None);
            assert_close(
                &format!("{name} {steps} step(s), noise file"),
                &filed.images[0].rgb,
                &by_file,
            );
        }
    }

    // The CLI: a batch of two from seed 7 is seeds 7 and 8, each what the trainer draws alone.
    let by_seed8 = trainer_sample(&run, &["--seed", "8"], 1, &d("t-seed8.png"));
    let by_seed7 = trainer_sample(&run, &["--seed", "7"], 1, &d("t-seed7.png"));
    for name in ["split", "fused"] {
        let out = d(&format!("cli-{name}/image.png"));
        let stdout = assert_ok(&run_binary(
            "runtime",
            &[
                "generate",
                "--model",
                d(name).to_str().unwrap(),
                "--prompt",
                PROMPT,
                "--seed",
                "7",
                "--batch",
                "2",
                "--out",
                out.to_str().unwrap(),
            ],
        ));
        assert!(
            stdout.contains(&format!("{name} graph(s) on cpu")),
            "{stdout}"
        );
        for (i, want) in [&by_seed7, &by_seed8].into_iter().enumerate() {
            let png = out.with_file_name(format!("image-{i}.png"));
            let got = image::open(&png).unwrap().to_rgb8().into_raw();
            assert_close(&format!("runtime generate {name}, image {i}"), &got, want);
        }
    }
}

fn runtime_cmd(args: &[&str]) -> Output {
    run_binary("runtime", args)
}

#[test]
fn runtime_refuses_bad_input_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let d = |name: &str| -> PathBuf { dir.path().join(name) };
    let student = d("student");
    tests::init_tiny(&student, "tiny-student", "0");
    let model = d("model");
    bake_tiny(&student, None, &model, false);
    let m = model.to_str().unwrap();
    let out = d("x.png");
    let o = out.to_str().unwrap();
    let gen = |model: &str, extra: &[&str]| {
        let mut args = vec!["generate", "--model", model, "--out", o];
        args.extend_from_slice(extra);
        runtime_cmd(&args)
    };

    // A good call first, so the failures below are the inputs' fault.
    assert_ok(&gen(m, &["--prompt", "a dog"]));
    // Empty prompt, steps the model was not baked for, a non-PNG output, batch 0.
    assert_refused(&gen(m, &["--prompt", "  "]), "prompt 0 is empty");
    assert_refused(
        &gen(m, &["--prompt", "a dog", "--steps", "3"]),
        "baked for [1, 2, 4] steps",
    );
    let jpg = d("x.jpg");
    assert_refused(
        &runtime_cmd(&[
            "generate",
            "--model",
            m,
            "--prompt",
            "a dog",
            "--out",
            jpg.to_str().unwrap(),
        ]),
        "name it *.png",
    );
    assert_refused(&gen(m, &["--prompt", "a dog", "--batch", "0"]), "--batch 0");
    // A prompt past 77 tokens is cut, with a warning, as diffusers does.
    let long = vec!["dog"; 100].join(" ");
    let result = gen(m, &["--prompt", &long]);
    assert_ok(&result);
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert!(
        stderr.contains("longer than the text encoder's 77 tokens"),
        "{stderr}"
    );
    // A noise file of the wrong size.
    let wrong = d("wrong.safetensors");
    Tensor::write_safetensors(
        &[("noise", Tensor::zeros([1, 4, 5, 5], tch::kind::FLOAT_CPU))],
        &wrong,
    )
    .unwrap();
    assert_refused(
        &gen(
            m,
            &["--prompt", "a dog", "--noise", wrong.to_str().unwrap()],
        ),
        "need [1, 4, 8, 8]",
    );
    // An unknown execution provider lists the choices; a known one this build lacks falls back.
    assert_refused(
        &gen(m, &["--prompt", "a dog", "--provider", "tpu"]),
        "cpu, cuda, tensorrt, coreml, directml",
    );
    let result = gen(m, &["--prompt", "a dog", "--provider", "cuda"]);
    assert_ok(&result);
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert!(stderr.contains("running on CPU"), "{stderr}");

    // A tampered file: the hash check names it; without the check, a missing file is named.
    let tampered = d("tampered");
    copy_dir(&model, &tampered);
    let mut bytes = fs::read(tampered.join("vae_decoder.onnx")).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    fs::write(tampered.join("vae_decoder.onnx"), bytes).unwrap();
    assert_refused(
        &gen(tampered.to_str().unwrap(), &["--prompt", "a dog"]),
        "vae_decoder.onnx: sha256",
    );
    fs::remove_file(tampered.join("unet.onnx")).unwrap();
    assert_refused(
        &gen(
            tampered.to_str().unwrap(),
            &["--prompt", "a dog", "--no-verify"],
        ),
        "unet.onnx is missing",
    );
    // A manifest from a newer format.
    let newer = d("newer");
    copy_dir(&model, &newer);
    let manifest = fs::read_to_string(newer.join("manifest.yaml")).unwrap();
    fs::write(
        newer.join("manifest.yaml"),
        manifest.replace("format_version: 1", "format_version: 99"),
    )
    .unwrap();
    assert_refused(
        &gen(newer.to_str().unwrap(), &["--prompt", "a dog"]),
        "format version 99 is newer",
    );
    // Not a model folder at all.
    assert_refused(
        &gen(student.to_str().unwrap(), &["--prompt", "a dog"]),
        "written by `exporter bake`",
    );
    // No ONNX Runtime library: the message says how to point at one.
    let result = std::process::Command::new(tests::binary("runtime"))
        .args(["generate", "--model", m, "--prompt", "a dog", "--out", o])
        .env("ORT_DYLIB_PATH", d("nowhere/libonnxruntime.so"))
        .output()
        .unwrap();
    assert_refused(&result, "set ORT_DYLIB_PATH");
}

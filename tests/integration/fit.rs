//! `trainer fit`, distillation stage, on tiny models and DreamBench photos: only the K/V copies,
//! token rows and discriminator heads move; the run folder has its files; bad input is refused
//! before training.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Output;

use tch::{nn, Tensor};
use tests::run_binary;
use trainer::fit::config::FitConfig;
use trainer::fit::distill::Distiller;
use trainer::fit::outputs;
use trainer::fit::run_dir::{load_trained, Trained};
use trainer::fit::runner::{run, RunOptions, RunOutcome};

/// DreamBench's photos, read in place (CC-BY-4.0; never copied into the repository).
pub fn dreambench(subject: &str) -> PathBuf {
    tests::dreambench_dir().join("dataset").join(subject)
}

/// Tiny student and teacher (with towers) in `dir`.
pub fn tiny_models(dir: &Path) -> (PathBuf, PathBuf) {
    tests::init_tiny(&dir.join("student"), "tiny-student", "0");
    tests::init_tiny(&dir.join("teacher"), "tiny-teacher", "0");
    (dir.join("student"), dir.join("teacher"))
}

pub fn overrides(student: &Path, teacher: &Path, extra: &[&str]) -> Vec<String> {
    let mut o = vec![
        format!("student={}", student.display()),
        format!("teacher={}", teacher.display()),
        format!("towers={}", student.join("towers").display()),
        "resolution=96".into(),
        "dino_v2_size=56".into(),
        "echo.enabled=false".into(),
        // Small grids keep the tests fast; the grid code runs the same.
        "samples.prompts=['a photo of a {}']".into(),
        "samples.seeds=[0]".into(),
        "samples.teacher_steps=2".into(),
    ];
    o.extend(extra.iter().map(|s| s.to_string()));
    o
}

/// `trainer fit` in this process without a progress bar.
pub fn run_quiet(config: FitConfig, out: &Path) {
    let options = RunOptions {
        quiet: true,
        ..RunOptions::default()
    };
    assert_eq!(run(config, out, &options).unwrap(), RunOutcome::Finished);
}

pub fn snapshot(vs: &nn::VarStore) -> HashMap<String, Tensor> {
    vs.variables()
        .into_iter()
        .map(|(k, v)| (k, v.copy()))
        .collect()
}

#[test]
fn distillation_trains_only_kv_token_rows_and_heads() {
    let dir = tempfile::tempdir().unwrap();
    let (student, teacher) = tiny_models(dir.path());
    let concepts = format!(
        "concepts=[{{images: '{}', token: '<new1>', class: dog}}, {{images: '{}', token: '<new2>', class: backpack}}]",
        dreambench("dog").display(),
        dreambench("backpack").display()
    );
    let config = FitConfig::load(
        None,
        &overrides(&student, &teacher, &[&concepts, "iterations=2"]),
    )
    .unwrap();
    let mut d = Distiller::new(config).unwrap();
    let frozen: Vec<(String, HashMap<String, Tensor>)> = d
        .frozen_stores()
        .into_iter()
        .map(|(n, vs)| (n, snapshot(vs)))
        .collect();
    assert!(
        frozen.len() >= 8,
        "text encoder, both UNets, VAE, IP encoder/projection, two DINOs"
    );
    let trained_before = |d: &Distiller| -> Vec<Tensor> {
        let mut v: Vec<Tensor> = Vec::new();
        for vs in [
            &d.teacher.as_ref().unwrap().kv.vs,
            &d.kv_student.vs,
            &d.rows.vs,
            &d.losses.ensemble.heads,
        ] {
            let mut vars: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
            vars.sort_by(|a, b| a.0.cmp(&b.0));
            v.extend(vars.into_iter().map(|(_, t)| t.copy()));
        }
        v
    };
    let before = trained_before(&d);
    let rows_before = d.rows.rows.copy();
    for _ in 0..2 {
        let log = d.step().unwrap();
        let (t, s) = (log.teacher.clone().unwrap(), log.student.clone().unwrap());
        for v in [
            t.loss,
            s.loss,
            s.discriminator_loss,
            s.identity,
            s.mse,
            s.swd,
        ] {
            assert!(v.is_finite(), "a loss is not finite: {log:?}");
        }
    }
    for ((name, snap), (_, vs)) in frozen.iter().zip(d.frozen_stores()) {
        for (k, v) in vs.variables() {
            assert!(snap[&k].equal(&v), "{name}: frozen weight {k} changed");
        }
    }
    let after = trained_before(&d);
    let moved = before
        .iter()
        .zip(&after)
        .filter(|(a, b)| !a.equal(b))
        .count();
    assert_eq!(
        moved,
        before.len(),
        "every trainable tensor moves ({moved} of {})",
        before.len()
    );
    // Multi-concept: both new rows train, not only the last.
    for row in 0..2 {
        assert!(
            !rows_before.get(row).equal(&d.rows.rows.get(row)),
            "token row {row} did not train"
        );
    }
}

pub fn fit_cli(args: &[&str]) -> Output {
    run_binary("trainer", &[&["fit"], args].concat())
}

#[test]
fn fit_command_writes_the_run_folder() {
    let dir = tempfile::tempdir().unwrap();
    let (student, teacher) = tiny_models(dir.path());
    let run = dir.path().join("run");
    let images = dreambench("dog");
    let mut args: Vec<String> = vec![
        "--images".into(),
        images.display().to_string(),
        "--token".into(),
        "<new1>".into(),
        "--class".into(),
        "dog".into(),
        "--out".into(),
        run.display().to_string(),
    ];
    for o in overrides(&student, &teacher, &["iterations=2"]) {
        args.push("--set".into());
        args.push(o);
    }
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = fit_cli(&refs);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let log = fs::read_to_string(run.join("log.jsonl")).unwrap();
    assert_eq!(log.lines().count(), 2);
    let first: serde_json::Value = serde_json::from_str(log.lines().next().unwrap()).unwrap();
    for key in [
        "teacher_loss",
        "student_loss",
        "identity",
        "mse",
        "swd",
        "adversarial",
        "c_t",
        "lr_student",
        "seconds",
    ] {
        assert!(first.get(key).is_some(), "log.jsonl lacks {key}");
    }
    let student_kv: HashMap<String, Tensor> =
        Tensor::read_safetensors(run.join("student.safetensors"))
            .unwrap()
            .into_iter()
            .collect();
    assert!(
        !student_kv.is_empty()
            && student_kv
                .keys()
                .all(|k| k.contains(".attn2.to_k.") || k.contains(".attn2.to_v."))
    );
    let tokens: HashMap<String, Tensor> = Tensor::read_safetensors(run.join("tokens.safetensors"))
        .unwrap()
        .into_iter()
        .collect();
    assert_eq!(tokens.keys().collect::<Vec<_>>(), ["<new1>"]);
    let tokenizer = runtime::ClipTokenizer::from_dir(&run.join("tokenizer")).unwrap();
    assert_eq!(tokenizer.token_to_id("<new1>"), Some(49408));
    let resolved = FitConfig::load(Some(&run.join("config.yaml")), &[]).unwrap();
    assert_eq!(resolved.iterations, 2);

    // Provenance: the base model and a hash of the base K/V the file replaces.
    let meta = outputs::read_metadata(&run.join("student.safetensors")).unwrap();
    assert_eq!(
        meta[outputs::META_BASE_MODEL],
        student.display().to_string()
    );
    let names: Vec<String> = student_kv.keys().cloned().collect();
    assert_eq!(
        meta[outputs::META_BASE_SHA256],
        outputs::fingerprint(&student.join("unet"), &names).unwrap()
    );
    let teacher_meta = outputs::read_metadata(&run.join("teacher.safetensors")).unwrap();
    assert_eq!(
        teacher_meta[outputs::META_BASE_MODEL],
        teacher.display().to_string()
    );

    // The diffusers Custom Diffusion export: every attn2 K/V under its processor name, an empty
    // marker per self-attention layer (diffusers counts processors), one file per token.
    let exported = read_all(&run.join("diffusers").join(outputs::DIFFUSERS_WEIGHTS));
    for (name, value) in &student_kv {
        let key = outputs::custom_diffusion_name(name).unwrap();
        assert!(exported[&key].equal(value), "{key}");
    }
    let markers: Vec<&String> = exported
        .keys()
        .filter(|k| k.ends_with(".attn1.processor"))
        .collect();
    assert_eq!(
        markers.len() * 2,
        student_kv.len(),
        "one attn1 marker per attn2 K/V pair"
    );
    assert!(markers.iter().all(|k| exported[*k].numel() == 0));
    assert_eq!(exported.len(), student_kv.len() + markers.len());
    let token_file = read_all(&run.join("diffusers").join("<new1>.safetensors"));
    assert!(token_file["<new1>"].equal(&tokens["<new1>"]));

    // Observability: grids before, during and after training, and the report with curves.
    for grid in [
        "student-000000.png",
        "student-000002.png",
        "teacher-final.png",
    ] {
        let img = image::open(run.join("samples").join(grid)).unwrap();
        assert!(img.width() > 96 && img.height() >= 96, "{grid}");
    }
    let student_grid = image::open(run.join("samples/student-000002.png")).unwrap();
    assert_eq!(
        student_grid.width(),
        3 * 96 + 4 * 4,
        "columns: 1, 2 and 4 steps"
    );
    let report = fs::read_to_string(run.join("report.html")).unwrap();
    assert!(report.contains("<svg") && report.contains("teacher_loss"));
    assert_eq!(report.matches("data:image/png;base64,").count(), 3);

    // The run samples with its learned weights and token.
    let opts = trainer::checkpoint::LoadOptions {
        device: tch::Device::Cpu,
        kind: tch::Kind::Float,
        variant: None,
    };
    for (which, file) in [
        (Trained::Student, "student.safetensors"),
        (Trained::Teacher, "teacher.safetensors"),
    ] {
        let p = load_trained(&run, which, opts).unwrap();
        let learned: HashMap<String, Tensor> = Tensor::read_safetensors(run.join(file))
            .unwrap()
            .into_iter()
            .collect();
        let vars = p.unet.vs.variables();
        assert!(
            learned.iter().all(|(k, v)| vars[k].equal(v)),
            "{which:?}: learned K/V not applied"
        );
        assert_eq!(p.text_encoder.model.num_ids(), 49409);
        assert_eq!(p.tokenizer.encode("a <new1> dog").ids[2], 49408);
    }
    let png = dir.path().join("s.png");
    for args in [
        vec!["--steps", "1"],
        vec!["--steps", "4", "--scheduler", "euler-ancestral"],
        vec!["--teacher", "--steps", "25", "--guidance", "7.5"],
    ] {
        let mut full = vec![
            "sample",
            "--run",
            run.to_str().unwrap(),
            "--prompt",
            "a <new1> dog on the beach",
            "--out",
            png.to_str().unwrap(),
        ];
        full.extend(args.iter().copied());
        let out = run_binary("trainer", &full);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

pub fn assert_refused(out: &Output, expected: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "expected failure: {err}");
    assert!(!err.contains("panicked"), "a panic: {err}");
    assert!(err.contains(expected), "stderr lacks {expected:?}: {err}");
}

#[test]
fn bad_fit_input_is_refused_up_front() {
    let dir = tempfile::tempdir().unwrap();
    let (student, teacher) = tiny_models(dir.path());
    let run_with = |images: &Path, token: &str, extra: &[&str]| {
        let mut args: Vec<String> = vec![
            "--images".into(),
            images.display().to_string(),
            "--token".into(),
            token.into(),
            "--class".into(),
            "dog".into(),
            "--out".into(),
            dir.path().join("run").display().to_string(),
        ];
        for o in overrides(&student, &teacher, &[&["iterations=1"], extra].concat()) {
            args.push("--set".into());
            args.push(o);
        }
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        fit_cli(&refs)
    };
    let empty = dir.path().join("empty");
    fs::create_dir_all(&empty).unwrap();
    assert_refused(&run_with(&empty, "<new1>", &[]), "has no images");

    let broken = dir.path().join("broken");
    fs::create_dir_all(&broken).unwrap();
    let jpeg = fs::read(dreambench("dog").join("00.jpg")).unwrap();
    fs::write(broken.join("half.jpg"), &jpeg[..jpeg.len() / 3]).unwrap();
    assert_refused(&run_with(&broken, "<new1>", &[]), "half.jpg is truncated");

    let photos = dreambench("dog");
    assert_refused(&run_with(&photos, "dog", &[]), "already in the vocabulary");
    assert_refused(
        &run_with(
            &photos,
            "<new1>",
            &["concepts=[{images: x, token: '<new1>', class: dog, init_word: 'big dog'}]"],
        ),
        "",
    );
    let out = run_with(&photos, "<new1>", &["resolution=100"]);
    assert_refused(&out, "resolution 100");
}

pub fn read_all(path: &Path) -> HashMap<String, Tensor> {
    Tensor::read_safetensors(path)
        .unwrap()
        .into_iter()
        .collect()
}

/// A run driven step by step in `dir` as the runner would (config, log lines), to be "crashed"
/// by dropping it: the Distiller and a step function that logs each iteration.
fn crashing_run(config: FitConfig, dir: &Path) -> (Distiller, impl FnMut(&mut Distiller)) {
    fs::create_dir_all(dir).unwrap();
    fs::write(dir.join("config.yaml"), config.to_yaml().unwrap()).unwrap();
    let log_path = dir.join("log.jsonl");
    let mut log = String::new();
    let step = move |d: &mut Distiller| {
        let s = d.step().unwrap();
        log.push_str(&format!("{}\n", s.to_json(&[])));
        fs::write(&log_path, &log).unwrap();
    };
    (Distiller::new(config).unwrap(), step)
}

/// Runs `trainer fit --resume` on `resumed` and checks its results equal `straight`'s bit for bit.
pub fn resume_and_compare(straight: &Path, resumed: &Path, when: &str) {
    let out = run_binary(
        "trainer",
        &["fit", "--resume", "--out", resumed.to_str().unwrap()],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for file in [
        "student.safetensors",
        "teacher.safetensors",
        "tokens.safetensors",
    ] {
        let (a, b) = (
            read_all(&straight.join(file)),
            read_all(&resumed.join(file)),
        );
        assert_eq!(a.len(), b.len());
        for (k, v) in &a {
            assert!(v.equal(&b[k]), "{file}: {k} differs after resuming {when}");
        }
    }
}

#[test]
fn resumed_runs_end_bit_identical_to_uninterrupted_ones() {
    let dir = tempfile::tempdir().unwrap();
    let (student, teacher) = tiny_models(dir.path());
    let concept = format!(
        "concepts=[{{images: '{}', token: '<new1>', class: dog}}]",
        dreambench("dog").display()
    );
    let config = || {
        FitConfig::load(
            None,
            &overrides(
                &student,
                &teacher,
                &[&concept, "iterations=4", "save_every=0"],
            ),
        )
        .unwrap()
    };

    let straight = dir.path().join("straight");
    run_quiet(config(), &straight);

    // Two iterations, a checkpoint, then the process "dies".
    let resumed = dir.path().join("resumed");
    {
        let (mut d, mut step) = crashing_run(config(), &resumed);
        step(&mut d);
        step(&mut d);
        d.save_checkpoint(&resumed, &|_| {}).unwrap();
        step(&mut d); // work lost in the crash: its log line is dropped on resume
    }
    // A crash between the checkpoint swap's two renames leaves only the previous folder.
    fs::rename(resumed.join("checkpoint"), resumed.join(".checkpoint.old")).unwrap();
    resume_and_compare(&straight, &resumed, "");
    let lines = |p: &Path| {
        fs::read_to_string(p.join("log.jsonl"))
            .unwrap()
            .lines()
            .count()
    };
    assert_eq!((lines(&straight), lines(&resumed)), (4, 4));
}

#[test]
fn echo_stage_trains_on_student_samples_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let (student, teacher) = tiny_models(dir.path());
    let photos = dreambench("dog");
    let concept = format!(
        "concepts=[{{images: '{}', token: '<new1>', class: dog}}]",
        photos.display()
    );
    let echo = [
        "iterations=1",
        "save_every=0",
        "echo.enabled=true",
        "echo.samples=3",
        "echo.iterations=2",
    ];
    let config = || {
        FitConfig::load(
            None,
            &overrides(
                &student,
                &teacher,
                &[&[concept.as_str()], &echo[..]].concat(),
            ),
        )
        .unwrap()
    };

    // The data swap: after the boundary every training image is a student sample.
    let swap = dir.path().join("swap");
    let mut d = Distiller::new(config()).unwrap();
    assert!(d.training_sources().iter().all(|p| p.starts_with(&photos)));
    d.step().unwrap();
    d.generate_echo(&swap).unwrap();
    let sources = d.training_sources();
    assert_eq!(sources.len(), 3);
    assert!(
        sources.iter().all(|p| p.starts_with(swap.join("echo"))),
        "{sources:?}"
    );
    drop(d);
    let mixed = FitConfig::load(
        None,
        &overrides(
            &student,
            &teacher,
            &[&[concept.as_str(), "echo.mix_real=true"], &echo[..]].concat(),
        ),
    )
    .unwrap();
    let mut d = Distiller::new(mixed).unwrap();
    d.generate_echo(&dir.path().join("mixed")).unwrap();
    assert_eq!(
        d.training_sources().len(),
        3 + fs::read_dir(&photos).unwrap().count()
    );
    drop(d);

    // A whole run: 1 distillation + 2 echo iterations, against one resumed inside the echo stage.
    let straight = dir.path().join("straight");
    run_quiet(config(), &straight);
    assert_eq!(
        fs::read_to_string(straight.join("log.jsonl"))
            .unwrap()
            .lines()
            .count(),
        3
    );
    assert_eq!(fs::read_dir(straight.join("echo")).unwrap().count(), 3);

    let resumed = dir.path().join("resumed");
    {
        let (mut d, mut step) = crashing_run(config(), &resumed);
        step(&mut d);
        d.save_checkpoint(&resumed, &|_| {}).unwrap();
        d.generate_echo(&resumed).unwrap();
        d.save_checkpoint(&resumed, &|_| {}).unwrap();
        step(&mut d);
        d.save_checkpoint(&resumed, &|_| {}).unwrap();
    }
    resume_and_compare(&straight, &resumed, "in the echo stage");
}

//! `trainer pretrain-toy` end to end at a few steps per stage: every output loads with the
//! loaders the real models use, the report and manifest hold the gates, a run interrupted
//! (Ctrl-C) and resumed ends byte for byte where an uninterrupted one does, and misuse is refused
//! with a message.
//!
//! A test binary of its own: the stages draw from torch's global generator, so a test building
//! networks on another thread of the same process would change the draws (tests/Cargo.toml).

use std::path::Path;
use std::sync::atomic::AtomicBool;

use tch::{Device, Kind, Tensor};
use trainer::checkpoint::component::LoadOptions;
use trainer::pretrain::pack::pack;
use trainer::pretrain::{run, PretrainConfig, PretrainOptions, PretrainOutcome};
use trainer::sampling::{NoiseSource, Pipeline, SampleRequest};
use trainer::towers::{load_clip_model, load_dino_v1, IpEncoder};

const OPTS: LoadOptions = LoadOptions {
    device: Device::Cpu,
    kind: Kind::Float,
    variant: None,
};

/// Two or three steps per stage on a 48-scene pool, small batches, a small report.
fn tiny_config() -> PretrainConfig {
    let yaml = "
pool: 48
save_every: 2
vae: {steps: 3, batch: 4}
clip: {steps: 2, batch: 6}
dino: {steps: 2, batch: 4}
teacher: {steps: 3, batch: 4}
student: {steps: 2, batch: 2}
report: {grid_captions: 2, gate_prompts: 3, gate_scenes: 8, teacher_steps: 3}
";
    serde_yaml::from_str(yaml).unwrap()
}

fn options<'a>(out: &'a Path, config: PretrainConfig, resume: bool) -> PretrainOptions<'a> {
    PretrainOptions {
        out,
        config,
        tokenizer: Box::leak(tests::clip_tokenizer_dir().into_boxed_path()),
        resume,
        stop: None,
        quiet: true,
        device: Device::Cpu,
    }
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn pretrain_toy_writes_loadable_models_a_report_and_resumes_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let whole = dir.path().join("whole");
    assert_eq!(
        run(&options(&whole, tiny_config(), false)).unwrap(),
        PretrainOutcome::Finished
    );

    // The pipelines and towers load with the real models' loaders.
    for pipeline in ["teacher", "student"] {
        let p = Pipeline::load(&whole.join(pipeline), OPTS).unwrap();
        assert_eq!(
            p.networks().unet.config().block_out_channels,
            [64, 128, 128]
        );
    }
    let (vision, _, tokenizer) = load_clip_model(&whole.join("towers/clip"), OPTS).unwrap();
    assert_eq!(vision.model.image_size(), 64);
    assert!(tokenizer.len() >= 49408);
    load_dino_v1(&whole.join("towers/dino-v1"), OPTS).unwrap();
    // `trainer fit`'s identity encoder: the toy CLIP's vision tower, unchanged, and a projection
    // to four UNet-wide tokens.
    let ip = IpEncoder::load(
        &whole.join("towers/image_encoder"),
        &whole.join("towers/ip-adapter.safetensors"),
        OPTS,
        true,
    )
    .unwrap();
    let pixels = Tensor::rand([2, 3, 64, 64], (Kind::Float, Device::Cpu)) * 2.0 - 1.0;
    let a = vision.model.forward(&pixels).unwrap().image_embeds;
    let b = ip.encoder.model.forward(&pixels).unwrap().image_embeds;
    assert!(
        a.equal(&b),
        "the image encoder is not the toy CLIP's vision tower"
    );
    assert_eq!(ip.tokens(&pixels).unwrap().size(), [2, 4, 64]);
    // Teacher and student share the autoencoder and the text encoder.
    for shared in [
        "vae/diffusion_pytorch_model.safetensors",
        "text_encoder/model.safetensors",
    ] {
        assert_eq!(
            read(&whole.join("teacher").join(shared)),
            read(&whole.join("student").join(shared)),
            "{shared}"
        );
    }
    // The student starts from the teacher and moves away from it.
    assert_ne!(
        read(&whole.join("teacher/unet/diffusion_pytorch_model.safetensors")),
        read(&whole.join("student/unet/diffusion_pytorch_model.safetensors"))
    );
    // The autoencoder's scaling factor is measured, not the config's placeholder.
    let vae: serde_json::Value =
        serde_json::from_slice(&read(&whole.join("teacher/vae/config.json"))).unwrap();
    let scaling = vae["scaling_factor"].as_f64().unwrap();
    assert!(
        scaling.is_finite() && scaling > 0.0 && scaling != 1.0,
        "{scaling}"
    );

    // The manifest holds every stage and gate; the report its pictures.
    let manifest: serde_yaml::Value =
        serde_yaml::from_slice(&read(&whole.join("manifest.yaml"))).unwrap();
    let stages = manifest["stages"].as_sequence().unwrap();
    let names: Vec<&str> = stages
        .iter()
        .map(|s| s["stage"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["vae", "clip", "dino", "teacher", "student"]);
    assert_eq!(stages[3]["steps"].as_u64(), Some(3));
    let gates = &manifest["gates"];
    for key in ["vae_mae", "vae_psnr", "clip_retrieval_top1"] {
        assert!(gates[key].as_f64().is_some_and(f64::is_finite), "{key}");
    }
    for tower in ["clip_subjects", "dino_subjects"] {
        let top1 = gates[tower]["top1"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&top1), "{tower}: {top1}");
    }
    assert_eq!(gates["subject_references"].as_u64(), Some(159));
    for source in ["renders", "reconstructions", "teacher", "student"] {
        let colour = gates[source]["colour"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&colour), "{source}: {colour}");
    }
    let html = String::from_utf8(read(&whole.join("report/report.html"))).unwrap();
    for part in [
        "Teacher, 25 DDIM steps",
        "Student, one step",
        "caption accuracy",
    ] {
        assert!(html.contains(part), "the report lacks {part:?}");
    }
    // The packed copy: f16 weight files that the same loaders read, drawing what the f32 run
    // draws up to half-precision rounding.
    let packed = dir.path().join("packed");
    let written = pack(&whole, &packed).unwrap();
    assert!(written.len() >= 9, "{written:?}");
    let f32_unet = whole.join("student/unet/diffusion_pytorch_model.safetensors");
    let f16_unet = packed.join("student/unet/diffusion_pytorch_model.fp16.safetensors");
    assert!(!packed
        .join("student/unet/diffusion_pytorch_model.safetensors")
        .exists());
    let (full, half) = (read(&f32_unet).len(), read(&f16_unet).len());
    // Half the bytes, but for the two headers.
    assert!(half < full / 2 + 65536, "{half} bytes packed from {full}");
    assert!(!packed.join("work").exists());
    let manifest_text = String::from_utf8(read(&packed.join("manifest.yaml"))).unwrap();
    assert!(manifest_text.contains("packed:"), "{manifest_text}");
    let request = SampleRequest {
        prompt: "a red star on a white background".into(),
        negative_prompt: String::new(),
        steps: 1,
        guidance: 0.0,
        scheduler: None,
        height: 64,
        width: 64,
    };
    let draw = |dir: &Path| {
        Pipeline::load(dir, OPTS)
            .unwrap()
            .sample(&request, &NoiseSource::Seed(3))
            .unwrap()
            .images
    };
    let diff = (draw(&whole.join("student")) - draw(&packed.join("student")))
        .abs()
        .max()
        .double_value(&[]);
    assert!(
        diff < 0.02,
        "the f16 student draws {diff} away from the f32 one"
    );
    load_dino_v1(&packed.join("towers/dino-v1"), OPTS).unwrap();
    load_clip_model(&packed.join("towers/clip"), OPTS).unwrap();
    IpEncoder::load(
        &packed.join("towers/image_encoder"),
        &packed.join("towers/ip-adapter.safetensors"),
        OPTS,
        true,
    )
    .unwrap();
    let err = pack(&dir.path().join("none"), &dir.path().join("p2")).unwrap_err();
    assert!(format!("{err:#}").contains("not a finished"), "{err:#}");

    // Finished stages leave their logs, not their checkpoints.
    assert!(whole.join("work/teacher.jsonl").is_file());
    assert!(!whole.join("work/teacher.safetensors").exists());

    // Ctrl-C during the first stage, then --resume: the same bytes as the uninterrupted run.
    let parted = dir.path().join("parted");
    let stop = AtomicBool::new(true);
    let mut o = options(&parted, tiny_config(), false);
    o.stop = Some(&stop);
    assert_eq!(run(&o).unwrap(), PretrainOutcome::Interrupted);
    assert!(parted.join("work/vae.safetensors").is_file());
    assert!(!parted.join("teacher/vae").exists());
    assert_eq!(
        run(&options(&parted, tiny_config(), true)).unwrap(),
        PretrainOutcome::Finished
    );
    for file in [
        "teacher/vae/diffusion_pytorch_model.safetensors",
        "towers/clip/model.safetensors",
        "towers/dino-v1/model.safetensors",
        "teacher/unet/diffusion_pytorch_model.safetensors",
        "student/unet/diffusion_pytorch_model.safetensors",
    ] {
        assert!(
            read(&whole.join(file)) == read(&parted.join(file)),
            "{file} differs after an interrupted and resumed run"
        );
    }
    let log = String::from_utf8(read(&parted.join("work/vae.jsonl"))).unwrap();
    assert_eq!(log.lines().count(), 3, "one log line per step:\n{log}");

    // Misuse: an existing folder without --resume, a resume with other settings, nothing to
    // resume.
    let err = run(&options(&whole, tiny_config(), false)).unwrap_err();
    assert!(format!("{err:#}").contains("--resume"), "{err:#}");
    let mut other = tiny_config();
    other.teacher.steps = 4;
    let err = run(&options(&whole, other, true)).unwrap_err();
    assert!(format!("{err:#}").contains("other settings"), "{err:#}");
    let err = run(&options(&dir.path().join("none"), tiny_config(), true)).unwrap_err();
    assert!(format!("{err:#}").contains("nothing to resume"), "{err:#}");
}

#[test]
fn pretrain_toy_checks_its_config_and_prints_it() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "teacher: {steps: 0}\n").unwrap();
    let o = tests::run_binary(
        "trainer",
        &[
            "pretrain-toy",
            "--out",
            dir.path().join("out").to_str().unwrap(),
            "--config",
            bad.to_str().unwrap(),
        ],
    );
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("teacher: steps and batch must be at least 1"),
        "{err}"
    );
    assert!(!dir.path().join("out").exists());

    std::fs::write(&bad, "teacher: {stepz: 3}\n").unwrap();
    let o = tests::run_binary(
        "trainer",
        &[
            "pretrain-toy",
            "--out",
            "x",
            "--config",
            bad.to_str().unwrap(),
        ],
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("bad.yaml") && err.contains("stepz"), "{err}");

    // --print-config needs no --out; without either, clap names --out.
    let o = tests::run_binary("trainer", &["pretrain-toy", "--print-config"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let printed: PretrainConfig = serde_yaml::from_slice(&o.stdout).unwrap();
    assert_eq!(printed, PretrainConfig::default());
    let o = tests::run_binary("trainer", &["pretrain-toy"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("--out"));
}

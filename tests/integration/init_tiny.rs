//! `trainer init-tiny` writes a deterministic, loadable diffusers model with the real CLIP
//! vocabulary, for the student and the teacher variants.

use std::fs;
use std::path::Path;

use tch::{Device, Kind};
use tests::{clip_tokenizer_dir, run_binary};
use trainer::checkpoint::LoadOptions;
use trainer::sampling::{NoiseSource, Pipeline, SampleRequest};

fn init(out: &Path, architecture: &str, seed: &str) {
    tests::init_tiny(out, architecture, seed);
}

fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for sub in ["", "unet", "vae", "text_encoder", "tokenizer", "scheduler"] {
        for entry in fs::read_dir(dir.join(sub)).unwrap() {
            let entry = entry.unwrap();
            if entry.file_type().unwrap().is_file() {
                out.push((
                    format!("{sub}/{}", entry.file_name().to_string_lossy()),
                    fs::read(entry.path()).unwrap(),
                ));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn same_seed_same_files_other_seed_other_weights() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b, c) = (
        dir.path().join("a"),
        dir.path().join("b"),
        dir.path().join("c"),
    );
    init(&a, "tiny-student", "7");
    init(&b, "tiny-student", "7");
    init(&c, "tiny-student", "8");
    assert_eq!(files(&a), files(&b));
    let unet = "unet/diffusion_pytorch_model.safetensors";
    let weights = |d: &Path| fs::read(d.join(unet)).unwrap();
    assert_ne!(weights(&a), weights(&c));
    // The real vocabulary: 49408 ids, the SD 2 pad token.
    let tokenizer = runtime::ClipTokenizer::from_dir(&a.join("tokenizer")).unwrap();
    assert_eq!((tokenizer.len(), tokenizer.pad_id()), (49408, 0));
    // Refuses to overwrite.
    let tok = clip_tokenizer_dir();
    let out = run_binary(
        "trainer",
        &[
            "init-tiny",
            "--out",
            a.to_str().unwrap(),
            "--tokenizer",
            tok.to_str().unwrap(),
        ],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("already exists"));
}

#[test]
fn student_and_teacher_load_and_sample() {
    let dir = tempfile::tempdir().unwrap();
    let opts = LoadOptions {
        device: Device::Cpu,
        kind: Kind::Float,
        variant: None,
    };
    for (arch, steps, guidance) in [("tiny-student", 1, 0.0), ("tiny-teacher", 2, 7.5)] {
        let path = dir.path().join(arch);
        init(&path, arch, "0");
        let p = Pipeline::load(&path, opts).unwrap();
        let req = SampleRequest {
            prompt: "a dog on the beach".into(),
            negative_prompt: String::new(),
            steps,
            guidance,
            scheduler: None,
            height: 64,
            width: 64,
        };
        let out = p.sample(&req, &NoiseSource::Seed(0)).unwrap();
        assert_eq!(out.images.size(), [1, 3, 64, 64]);
        let std = out.images.std(true).double_value(&[]);
        assert!(
            std.is_finite() && std > 1e-3,
            "{arch}: degenerate image (std {std})"
        );
    }
}

#[test]
fn tiny_towers_run_the_whole_loss_stack() {
    use trainer::losses::stack::{LossStack, StackConfig};
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("m");
    init(&model, "tiny-student", "0");
    let opts = LoadOptions {
        device: Device::Cpu,
        kind: Kind::Float,
        variant: None,
    };
    let mut stack = LossStack::load(&model.join("towers"), opts, &StackConfig::default()).unwrap();
    assert_eq!(stack.ensemble.members.len(), 3);
    tch::manual_seed(0);
    let latents = tch::Tensor::randn([2, 4, 12, 12], tch::kind::FLOAT_CPU).set_requires_grad(true);
    let images = (tch::Tensor::rand([2, 3, 96, 96], tch::kind::FLOAT_CPU) * 2.0 - 1.0)
        .set_requires_grad(true);
    let target = tch::Tensor::rand([2, 3, 96, 96], tch::kind::FLOAT_CPU) * 2.0 - 1.0;
    let loss = stack
        .student_loss(&latents, &(latents.detach() * 0.5), &images, &target, 0.3)
        .unwrap();
    for (name, v) in [
        ("id", &loss.identity),
        ("mse", &loss.mse),
        ("swd", &loss.swd),
        ("adv", &loss.adversarial),
    ] {
        let v = v.double_value(&[]);
        assert!(v.is_finite() && v > 0.0, "{name} = {v}");
    }
    // total = c(t')·(λ_id·L_id + λ_mse·L_mse + λ_swd·L_swd) + λ_adv·Σ L_adv, the terms logged
    // unweighted; λ_adv scales the adversarial part alone.
    let total_of = |l: &trainer::losses::stack::StudentLoss, adversarial_weight: f64| {
        let v = |t: &tch::Tensor| t.double_value(&[]);
        0.3 * (v(&l.identity) + v(&l.mse) + 0.1 * v(&l.swd))
            + adversarial_weight * v(&l.adversarial)
    };
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-5 * b.abs().max(1.0);
    assert!(close(loss.total.double_value(&[]), total_of(&loss, 1.0)));
    stack.adversarial_weight = 0.25;
    let weighted = tch::no_grad(|| {
        stack.student_loss(&latents, &(latents.detach() * 0.5), &images, &target, 0.3)
    })
    .unwrap();
    assert!(close(
        weighted.total.double_value(&[]),
        total_of(&weighted, 0.25)
    ));
    assert!(!close(
        weighted.total.double_value(&[]),
        total_of(&weighted, 1.0)
    ));
    stack.adversarial_weight = 1.0;
    loss.total.backward();
    let grad = images.grad();
    assert!(
        grad.abs().sum(Kind::Float).double_value(&[]) > 0.0,
        "no gradient reached the images"
    );
    assert!(latents.grad().abs().sum(Kind::Float).double_value(&[]) > 0.0);

    // The evaluation CLIP pair: image and text embeddings of one width, text pooled at EOS.
    let towers = model.join("towers");
    let vision = trainer::towers::load_clip_vision(&towers.join("clip-vision"), opts).unwrap();
    let text = trainer::towers::load_clip_text_projection(&towers.join("clip-text"), opts).unwrap();
    let tokenizer = runtime::ClipTokenizer::from_dir(&model.join("tokenizer")).unwrap();
    let ids: Vec<i64> = tokenizer
        .encode("a dog")
        .ids
        .into_iter()
        .map(i64::from)
        .collect();
    let ids = tch::Tensor::from_slice(&ids).view([1, 77]);
    let t = tch::no_grad(|| text.model.text_embeds(&ids));
    let pixels = trainer::vision::prepare(
        &target.narrow(0, 0, 1),
        trainer::towers::clip_input(32, true),
    );
    let v = tch::no_grad(|| vision.model.forward(&pixels))
        .unwrap()
        .image_embeds;
    assert_eq!(t.size(), v.size());
    let cos = tch::Tensor::cosine_similarity(&t, &v, -1, 1e-8).double_value(&[0]);
    assert!(cos.is_finite() && cos.abs() <= 1.0);
}

/// (tensors, parameters, SHA-256 of the sorted "name [shape]" lines) of one weight file's
/// layout, as tests/scripts/make_full_size_layouts.py summarises diffusers' and transformers'
/// state dicts.
fn layout_summary(tensors: &[(String, Vec<i64>)]) -> (u64, u64, String) {
    use sha2::{Digest, Sha256};
    let mut lines: Vec<String> = tensors
        .iter()
        .map(|(name, shape)| format!("{name} {shape:?}"))
        .collect();
    lines.sort();
    let parameters = tensors
        .iter()
        .map(|(_, s)| s.iter().product::<i64>() as u64)
        .sum();
    let digest = Sha256::digest(lines.join("\n").as_bytes());
    let hex = digest.iter().map(|b| format!("{b:02x}")).collect();
    (tensors.len() as u64, parameters, hex)
}

#[test]
fn full_size_models_have_the_reference_layouts() {
    // The full-size benchmark models (`init-tiny --architecture sd-turbo|sd21 --towers full`),
    // built from the same configs without drawing weights: every tensor name and shape must be
    // the one diffusers/transformers build from those configs (the committed goldens).
    let goldens: serde_json::Value =
        serde_json::from_slice(&fs::read(tests::fixture("full_size_layouts.json")).unwrap())
            .unwrap();
    let networks = &goldens["networks"];
    let mut checked = 0;
    for (arch, towers) in [("sd-turbo", "full"), ("sd21", "none")] {
        let architecture = trainer::random_init::Architecture::named(arch).unwrap();
        let set = trainer::random_init::TowerSet::named(towers).unwrap();
        for (file, tensors) in trainer::random_init::network_layouts(&architecture, set).unwrap() {
            if file == "towers/ip-adapter.safetensors" {
                // The original IP-Adapter file (no diffusers class): ip-adapter_sd15's projection.
                let want = [
                    ("image_proj.norm.bias".to_string(), vec![768]),
                    ("image_proj.norm.weight".to_string(), vec![768]),
                    ("image_proj.proj.bias".to_string(), vec![3072]),
                    ("image_proj.proj.weight".to_string(), vec![3072, 1024]),
                ];
                assert_eq!(tensors, want);
                checked += 1;
                continue;
            }
            let key = match file.strip_prefix("towers/") {
                Some(rest) => format!("full-towers/{}", rest.split('/').next().unwrap()),
                None => format!("{arch}/{}", file.split('/').next().unwrap()),
            };
            let want = &networks[&key];
            assert!(want.is_object(), "no golden for {key}");
            let (count, parameters, sha) = layout_summary(&tensors);
            assert_eq!(
                (count, parameters, sha.as_str()),
                (
                    want["tensors"].as_u64().unwrap(),
                    want["parameters"].as_u64().unwrap(),
                    want["sha256"].as_str().unwrap()
                ),
                "{key} ({file})"
            );
            checked += 1;
        }
    }
    assert_eq!(checked, 3 + 5 + 3, "every network was compared");
}

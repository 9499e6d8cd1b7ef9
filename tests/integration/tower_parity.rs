//! The image towers match transformers (and IP-Adapter's projection, and torch's area resize) in
//! f32, and refuse wrong inputs and mismatched checkpoints with clear errors.
//!
//! Fixtures: `tests/fixtures/towers/`, made by `tests/scripts/make_tower_goldens.py`.

use std::collections::HashMap;
use std::fs;
use std::path::PathBuf;

use tch::{Device, Kind, Tensor};
use tests::fixture;
use trainer::checkpoint::LoadOptions;
use trainer::models::ip_adapter::ImageProjection;
use trainer::towers::{
    load_clip_text_projection, load_clip_vision, load_dino_v1, load_dino_v2, IpEncoder,
};
use trainer::vision::area_resize;

const MAX_ABS_ERR: f64 = 1e-4;
const F32_CPU: LoadOptions = LoadOptions {
    device: Device::Cpu,
    kind: Kind::Float,
    variant: None,
};

fn towers() -> PathBuf {
    fixture("towers")
}

fn goldens() -> HashMap<String, Tensor> {
    let path = towers().join("goldens.safetensors");
    Tensor::read_safetensors(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .into_iter()
        .collect()
}

fn assert_close(what: &str, got: &Tensor, want: &Tensor) {
    assert_eq!(got.size(), want.size(), "{what}: shapes");
    let err = (got - want).abs().max().double_value(&[]);
    let scale = want.abs().max().double_value(&[]);
    eprintln!("{what}: max abs error {err:.2e} (values up to {scale:.3})");
    assert!(err <= MAX_ABS_ERR, "{what}: max abs error {err:e}");
    assert!(scale > 1e-3, "{what}: degenerate reference");
}

#[test]
fn dino_towers_match_transformers() {
    let g = goldens();
    let v1 = load_dino_v1(&towers().join("dino-v1"), F32_CPU).unwrap();
    let out = tch::no_grad(|| v1.model.forward(&g["dino_v1.pixel_values"])).unwrap();
    assert_close("dinov1", &out, &g["dino_v1.last_hidden_state"]);
    let v2 = load_dino_v2(&towers().join("dino-v2"), F32_CPU).unwrap();
    for size in [32, 40] {
        let out = tch::no_grad(|| {
            v2.model
                .forward(&g[&format!("dino_v2.pixel_values_{size}")])
        })
        .unwrap();
        assert_close(
            &format!("dinov2 at {size} px"),
            &out,
            &g[&format!("dino_v2.last_hidden_state_{size}")],
        );
    }
}

#[test]
fn clip_towers_match_transformers() {
    let g = goldens();
    for (dir, key) in [
        ("clip-vision", "clip_vision"),
        ("clip-vision-quick-gelu", "clip_vision_quick_gelu"),
    ] {
        let m = load_clip_vision(&towers().join(dir), F32_CPU).unwrap();
        let out = tch::no_grad(|| m.model.forward(&g[&format!("{key}.pixel_values")])).unwrap();
        assert_close(
            &format!("{key} image_embeds"),
            &out.image_embeds,
            &g[&format!("{key}.image_embeds")],
        );
        assert_close(
            &format!("{key} last_hidden_state"),
            &out.last_hidden_state,
            &g[&format!("{key}.last_hidden_state")],
        );
    }
    let text = load_clip_text_projection(&towers().join("clip-text-proj"), F32_CPU).unwrap();
    let ids = &g["clip_text.input_ids"];
    let hidden = tch::no_grad(|| text.model.text.forward(ids));
    assert_close(
        "clip text last_hidden_state",
        &hidden,
        &g["clip_text.last_hidden_state"],
    );
    let embeds = tch::no_grad(|| text.model.text_embeds(ids));
    assert_close(
        "clip text text_embeds",
        &embeds,
        &g["clip_text.text_embeds"],
    );
}

#[test]
fn ip_adapter_projection_matches_the_reference() {
    let g = goldens();
    let (_vs, proj) = ImageProjection::load(
        &towers().join("ip-adapter/ip-adapter.safetensors"),
        Device::Cpu,
        Kind::Float,
    )
    .unwrap();
    let tokens = tch::no_grad(|| proj.forward(&g["ip.image_embeds"])).unwrap();
    assert_close("ip-adapter tokens", &tokens, &g["ip.tokens"]);
}

#[test]
fn area_resize_matches_torch() {
    let g = goldens();
    let image = &g["resize.image"];
    assert_close(
        "area 24x32",
        &area_resize(image, 24, 32),
        &g["resize.area_24x32"],
    );
    assert_close(
        "area 14x14",
        &area_resize(image, 14, 14),
        &g["resize.area_14x14"],
    );
}

#[test]
fn wrong_image_sizes_are_refused() {
    let v1 = load_dino_v1(&towers().join("dino-v1"), F32_CPU).unwrap();
    let err = v1
        .model
        .forward(&Tensor::zeros([1, 3, 40, 40], tch::kind::FLOAT_CPU))
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("expects images (batch, 3, 32, 32), got [1, 3, 40, 40]"),
        "{err}"
    );
    let err = v1
        .model
        .forward(&Tensor::zeros([1, 4, 32, 32], tch::kind::FLOAT_CPU))
        .unwrap_err();
    assert!(err.to_string().contains("[1, 4, 32, 32]"), "{err}");
    let v2 = load_dino_v2(&towers().join("dino-v2"), F32_CPU).unwrap();
    let err = v2
        .model
        .forward(&Tensor::zeros([1, 3, 30, 32], tch::kind::FLOAT_CPU))
        .unwrap_err();
    assert!(err.to_string().contains("multiples of 4"), "{err}");
    let clip = load_clip_vision(&towers().join("clip-vision"), F32_CPU).unwrap();
    let err = clip
        .model
        .forward(&Tensor::zeros([2, 1, 32, 32], tch::kind::FLOAT_CPU))
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("CLIP vision expects images (batch, 3, 32, 32)"),
        "{err}"
    );
}

#[test]
fn missing_tensors_and_mismatched_projections_are_refused() {
    // A checkpoint without one of its tensors.
    let dir = tempfile::tempdir().unwrap();
    let src = towers().join("dino-v2");
    fs::copy(src.join("config.json"), dir.path().join("config.json")).unwrap();
    let tensors: Vec<(String, Tensor)> = Tensor::read_safetensors(src.join("model.safetensors"))
        .unwrap()
        .into_iter()
        .filter(|(k, _)| k != "encoder.layer.1.layer_scale2.lambda1")
        .collect();
    Tensor::write_safetensors(&tensors, dir.path().join("model.safetensors")).unwrap();
    let err = load_dino_v2(dir.path(), F32_CPU).err().unwrap();
    let text = format!("{err:#}");
    assert!(
        text.contains("missing (1): encoder.layer.1.layer_scale2.lambda1"),
        "{text}"
    );

    // An IP-Adapter projection that takes 8-wide embeddings, with a 16-wide encoder.
    let ip = dir.path().join("ip.safetensors");
    let opts = tch::kind::FLOAT_CPU;
    Tensor::write_safetensors(
        &[
            ("image_proj.proj.weight", Tensor::zeros([96, 8], opts)),
            ("image_proj.proj.bias", Tensor::zeros([96], opts)),
            ("image_proj.norm.weight", Tensor::ones([24], opts)),
            ("image_proj.norm.bias", Tensor::zeros([24], opts)),
        ],
        &ip,
    )
    .unwrap();
    let err = IpEncoder::load(&towers().join("clip-vision"), &ip, F32_CPU, true)
        .err()
        .unwrap();
    let text = format!("{err:#}");
    assert!(
        text.contains("projects 8-wide image embeddings") && text.contains("16-wide"),
        "{text}"
    );

    // A file that is not an IP-Adapter.
    let err = ImageProjection::load(
        &towers().join("dino-v2/model.safetensors"),
        Device::Cpu,
        Kind::Float,
    )
    .err()
    .unwrap();
    assert!(
        err.to_string().contains("no image_proj.proj.weight"),
        "{err}"
    );
}

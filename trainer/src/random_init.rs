//! Seeded random-weight models in the diffusers layout, for tests, the demo and benchmarks.
//!
//! The architectures are config folders under `trainer/configs/` (embedded in the binary):
//! `tiny-student` is SD-Turbo scaled down with every code path kept (four levels, three with
//! cross-attention, 1/2/4 heads, linear projections, Euler trailing, epsilon), `tiny-teacher`
//! the same with upcast attention, DDIM and v-prediction, and `sd-turbo` the full-size
//! architecture for benchmarks. The tokenizer is copied from a real CLIP tokenizer folder.
//! Weights come from the runtime core's Gaussian generator, so a seed gives the same files on
//! every machine. Tiny image towers (DINOv1, DINOv2, the IP-Adapter image encoder and
//! projection) are written beside the model in `towers/`, for the losses.

use std::path::Path;

use anyhow::{bail, Context, Result};
use runtime::{ClipTokenizer, GaussianRng};
use tch::{nn, Device, Tensor};

use crate::checkpoint::create_folder_beside;
use crate::models::clip_text::{ClipTextConfig, ClipTextModel, ClipTextModelWithProjection};
use crate::models::clip_vision::{ClipVisionConfig, ClipVisionModelWithProjection};
use crate::models::dinov2::Dinov2Model;
use crate::models::ip_adapter::ImageProjection;
use crate::models::unet_2d_condition::{UNet2DConditionModel, UNetConfig};
use crate::models::vae::{AutoencoderKL, VaeConfig};
use crate::models::vit::VitModel;

/// An embedded architecture: its name and (path inside the model folder, config text) pairs.
pub struct Architecture {
    /// Its name on the command line.
    pub name: &'static str,
    files: [(&'static str, &'static str); 5],
}

macro_rules! architecture {
    ($name:literal) => {
        Architecture {
            name: $name,
            files: [
                (
                    "model_index.json",
                    include_str!(concat!("../configs/", $name, "/model_index.json")),
                ),
                (
                    "unet/config.json",
                    include_str!(concat!("../configs/", $name, "/unet/config.json")),
                ),
                (
                    "vae/config.json",
                    include_str!(concat!("../configs/", $name, "/vae/config.json")),
                ),
                (
                    "text_encoder/config.json",
                    include_str!(concat!("../configs/", $name, "/text_encoder/config.json")),
                ),
                (
                    "scheduler/scheduler_config.json",
                    include_str!(concat!(
                        "../configs/",
                        $name,
                        "/scheduler/scheduler_config.json"
                    )),
                ),
            ],
        }
    };
}

/// Every embedded architecture.
pub fn architectures() -> [Architecture; 3] {
    [
        architecture!("tiny-student"),
        architecture!("tiny-teacher"),
        architecture!("sd-turbo"),
    ]
}

impl Architecture {
    /// Looks an architecture up by name.
    pub fn named(name: &str) -> Result<Self> {
        let all = architectures();
        let names: Vec<&str> = all.iter().map(|a| a.name).collect();
        match all.into_iter().find(|a| a.name == name) {
            Some(a) => Ok(a),
            None => bail!(
                "unknown architecture {name:?}: choose one of {}",
                names.join(", ")
            ),
        }
    }

    fn config(&self, path: &str) -> &'static str {
        self.files
            .iter()
            .find(|(p, _)| *p == path)
            .map_or("", |(_, text)| text)
    }
}

/// Fills every variable of `vs` from `rng`, in name order: matrices and kernels with
/// N(0, 1/fan_in), norm scales around 1, biases and vectors small.
fn fill(vs: &nn::VarStore, rng: &mut GaussianRng) {
    let mut vars: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    tch::no_grad(|| {
        for (name, mut var) in vars {
            let size = var.size();
            let numel: i64 = size.iter().product();
            let noise = Tensor::from_slice(&rng.normal(numel as usize)).view(size.as_slice());
            let value = if size.len() >= 2 {
                let fan_in = numel / size[0];
                noise / (fan_in as f64).sqrt()
            } else if name.ends_with("weight") {
                noise * 0.1 + 1.0
            } else {
                noise * 0.05
            };
            var.copy_(&value);
        }
    });
}

fn save(vs: &nn::VarStore, path: &Path) -> Result<()> {
    let mut vars: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    Tensor::write_safetensors(&vars, path)
        .with_context(|| format!("cannot write {}", path.display()))
}

/// The tiny image towers' configs (`trainer/configs/tiny-towers/`): the discriminator
/// backbones, IP-Adapter's image encoder, and an evaluation CLIP (vision and text, OpenAI-style
/// quick_gelu) for CLIP-I/CLIP-T.
const TINY_TOWERS: [(&str, &str); 5] = [
    (
        "dino-v1",
        include_str!("../configs/tiny-towers/dino-v1/config.json"),
    ),
    (
        "dino-v2",
        include_str!("../configs/tiny-towers/dino-v2/config.json"),
    ),
    (
        "image_encoder",
        include_str!("../configs/tiny-towers/image_encoder/config.json"),
    ),
    (
        "clip-vision",
        include_str!("../configs/tiny-towers/clip-vision/config.json"),
    ),
    (
        "clip-text",
        include_str!("../configs/tiny-towers/clip-text/config.json"),
    ),
];

/// IP-Adapter's image tokens (`clip_extra_context_tokens` of ip-adapter_sd15).
const IP_TOKENS: i64 = 4;

/// Writes tiny random image towers into `dir`: `dino-v1/`, `dino-v2/`, `image_encoder/`,
/// `clip-vision/`, `clip-text/` (each config.json + model.safetensors, Hugging Face layout),
/// `clip/` (the same two towers as one transformers `CLIPModel` folder with `tokenizer`'s files,
/// the evaluation CLIP's layout) and `ip-adapter.safetensors` (the original IP-Adapter layout)
/// projecting to `cross_attention_dim`-wide tokens.
pub fn write_random_towers(
    dir: &Path,
    cross_attention_dim: i64,
    seed: u64,
    tokenizer: &ClipTokenizer,
) -> Result<()> {
    let mut embed_dim = 0;
    for (i, (name, config)) in TINY_TOWERS.iter().enumerate() {
        let folder = dir.join(name);
        std::fs::create_dir_all(&folder)
            .with_context(|| format!("cannot create {}", folder.display()))?;
        std::fs::write(folder.join("config.json"), config)?;
        let vs = nn::VarStore::new(Device::Cpu);
        match *name {
            "dino-v1" => drop(VitModel::new(vs.root(), serde_json::from_str(config)?)?),
            "dino-v2" => drop(Dinov2Model::new(vs.root(), serde_json::from_str(config)?)?),
            "clip-text" => drop(ClipTextModelWithProjection::new(
                vs.root(),
                serde_json::from_str(config)?,
            )?),
            vision => {
                let cfg: ClipVisionConfig = serde_json::from_str(config)?;
                if vision == "image_encoder" {
                    embed_dim = cfg.projection_dim;
                }
                drop(ClipVisionModelWithProjection::new(vs.root(), cfg)?);
            }
        }
        fill(&vs, &mut GaussianRng::new(seed.wrapping_add(i as u64)));
        save(&vs, &folder.join("model.safetensors"))?;
    }
    write_random_clip_model(&dir.join("clip"), seed.wrapping_add(11), tokenizer)?;
    let vs = nn::VarStore::new(Device::Cpu);
    ImageProjection::new(
        vs.root() / "image_proj",
        embed_dim,
        IP_TOKENS,
        cross_attention_dim,
    );
    fill(&vs, &mut GaussianRng::new(seed.wrapping_add(10)));
    save(&vs, &dir.join("ip-adapter.safetensors"))
}

/// A tiny transformers `CLIPModel` folder: config.json with `text_config` and `vision_config`
/// (the tiny CLIP towers' configs), one model.safetensors, and the tokenizer files.
fn write_random_clip_model(folder: &Path, seed: u64, tokenizer: &ClipTokenizer) -> Result<()> {
    let text: serde_json::Value = serde_json::from_str(TINY_TOWERS[4].1)?;
    let vision: serde_json::Value = serde_json::from_str(TINY_TOWERS[3].1)?;
    let config = serde_json::json!({
        "architectures": ["CLIPModel"],
        "model_type": "clip",
        "projection_dim": text["projection_dim"],
        "text_config": text,
        "vision_config": vision,
    });
    std::fs::create_dir_all(folder)
        .with_context(|| format!("cannot create {}", folder.display()))?;
    std::fs::write(
        folder.join("config.json"),
        serde_json::to_string_pretty(&config)?,
    )?;
    let vs = nn::VarStore::new(Device::Cpu);
    drop(ClipVisionModelWithProjection::new(
        vs.root(),
        serde_json::from_value(vision)?,
    )?);
    drop(ClipTextModelWithProjection::new(
        vs.root(),
        serde_json::from_value(text)?,
    )?);
    // Unused by the metrics, but part of a complete CLIPModel checkpoint.
    drop(vs.root().var("logit_scale", &[], nn::Init::Const(2.6592)));
    fill(&vs, &mut GaussianRng::new(seed));
    save(&vs, &folder.join("model.safetensors"))?;
    tokenizer.save_dir(folder)?;
    Ok(())
}

/// Writes a random-weight model of `arch` to `out` (which must not exist yet), copying the
/// tokenizer from `tokenizer_dir`. The folder is assembled beside `out` and renamed into place.
pub fn write_random_model(
    arch: &Architecture,
    out: &Path,
    tokenizer_dir: &Path,
    seed: u64,
) -> Result<()> {
    let tokenizer = ClipTokenizer::from_dir(tokenizer_dir)?;
    create_folder_beside(out, "--out", |tmp| {
        for (path, text) in arch.files {
            let file = tmp.join(path);
            std::fs::create_dir_all(file.parent().context("config path")?)?;
            std::fs::write(&file, text)
                .with_context(|| format!("cannot write {}", file.display()))?;
        }
        tokenizer.save_dir(&tmp.join("tokenizer"))?;

        let vs = nn::VarStore::new(Device::Cpu);
        let text_config = ClipTextConfig::from_json(arch.config("text_encoder/config.json"))?;
        if text_config.vocab_size < tokenizer.len() as i64 {
            bail!(
                "the {} text encoder has {} token rows but the tokenizer has {} ids",
                arch.name,
                text_config.vocab_size,
                tokenizer.len()
            );
        }
        ClipTextModel::new(&vs.root(), text_config)?;
        fill(&vs, &mut GaussianRng::new(seed));
        save(&vs, &tmp.join("text_encoder/model.safetensors"))?;

        let vs = nn::VarStore::new(Device::Cpu);
        UNet2DConditionModel::new(
            vs.root(),
            UNetConfig::from_json(arch.config("unet/config.json"))?,
        )?;
        fill(&vs, &mut GaussianRng::new(seed.wrapping_add(1)));
        save(&vs, &tmp.join("unet/diffusion_pytorch_model.safetensors"))?;

        let vs = nn::VarStore::new(Device::Cpu);
        AutoencoderKL::new(
            vs.root(),
            VaeConfig::from_json(arch.config("vae/config.json"))?,
        );
        fill(&vs, &mut GaussianRng::new(seed.wrapping_add(2)));
        save(&vs, &tmp.join("vae/diffusion_pytorch_model.safetensors"))?;

        let cross =
            UNetConfig::from_json(arch.config("unet/config.json"))?.cross_attention_dim()?;
        write_random_towers(&tmp.join("towers"), cross, seed.wrapping_add(3), &tokenizer)
    })
}

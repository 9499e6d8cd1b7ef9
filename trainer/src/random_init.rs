//! Seeded random-weight models in the diffusers layout, for tests, the demo and benchmarks.
//!
//! The architectures are config folders under `trainer/configs/` (embedded in the binary):
//! `tiny-student` is SD-Turbo scaled down with every code path kept (four levels, three with
//! cross-attention, 1/2/4 heads, linear projections, Euler trailing, epsilon), `tiny-teacher`
//! the same with upcast attention, DDIM and v-prediction, and the full-size architectures for
//! benchmarks: `sd-turbo` (the student) and `sd21` (the teacher, SD 2.1 at 768 px: upcast
//! attention, DDIM, v-prediction). The tokenizer is copied from a real CLIP tokenizer folder.
//! Weights come from the runtime core's Gaussian generator, so a seed gives the same files on
//! every machine. Image towers (DINOv1, DINOv2, the IP-Adapter image encoder and projection, an
//! evaluation CLIP) are written beside the model in `towers/`: tiny ones for tests, or the
//! real architectures (`configs/full-towers/`) for benchmarks, or none.

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
pub fn architectures() -> [Architecture; 4] {
    [
        architecture!("tiny-student"),
        architecture!("tiny-teacher"),
        architecture!("sd-turbo"),
        architecture!("sd21"),
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

/// Which image towers are written beside a model (`init-tiny --towers`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TowerSet {
    /// Scaled-down towers (`trainer/configs/tiny-towers/`), for tests: also the evaluation CLIP
    /// as two separate folders `clip-vision/` and `clip-text/`.
    Tiny,
    /// The real architectures with random weights (`trainer/configs/full-towers/`), for
    /// benchmarks: DINOv1 ViT-S/16, DINOv2 ViT-L/14, IP-Adapter's OpenCLIP ViT-H/14 image encoder
    /// with `ip-adapter_sd15`'s projection (4 tokens of 768), and CLIP ViT-L/14@336 for the
    /// evaluation. About 1.4 billion parameters, 5.6 GB in f32.
    Full,
    /// No `towers/` folder (a teacher folder, whose towers would be unused).
    None,
}

impl TowerSet {
    /// Looks a tower set up by its command-line name.
    pub fn named(name: &str) -> Result<Self> {
        match name {
            "tiny" => Ok(Self::Tiny),
            "full" => Ok(Self::Full),
            "none" => Ok(Self::None),
            _ => bail!("unknown tower set {name:?}: choose tiny, full or none"),
        }
    }
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

/// The real towers' configs (`trainer/configs/full-towers/`), as their Hugging Face repos
/// publish them: facebook/dino-vits16, facebook/dinov2-large, h94/IP-Adapter's
/// models/image_encoder.
const FULL_TOWERS: [(&str, &str); 3] = [
    (
        "dino-v1",
        include_str!("../configs/full-towers/dino-v1/config.json"),
    ),
    (
        "dino-v2",
        include_str!("../configs/full-towers/dino-v2/config.json"),
    ),
    (
        "image_encoder",
        include_str!("../configs/full-towers/image_encoder/config.json"),
    ),
];

/// openai/clip-vit-large-patch14-336 as a transformers `CLIPModel` config.
const FULL_CLIP: &str = include_str!("../configs/full-towers/clip/config.json");

/// IP-Adapter's image tokens (`clip_extra_context_tokens` of ip-adapter_sd15).
const IP_TOKENS: i64 = 4;

/// The width of ip-adapter_sd15's tokens (SD 1.5's cross-attention width; the identity loss
/// compares tokens by cosine, so they need not match the UNet's).
const IP_SD15_WIDTH: i64 = 768;

/// One network of a model folder: where its weights go (relative to the folder), the seed
/// offset of its generator, and how to build it, from its config, into a fresh store.
struct Network {
    file: String,
    seed: u64,
    build: Box<dyn Fn() -> Result<nn::VarStore> + Send + Sync>,
}

impl Network {
    fn new(
        file: impl Into<String>,
        seed: u64,
        build: impl Fn() -> Result<nn::VarStore> + Send + Sync + 'static,
    ) -> Self {
        Self {
            file: file.into(),
            seed,
            build: Box::new(build),
        }
    }

    /// Builds, fills from its own generator and saves under `dir`.
    fn write(&self, dir: &Path) -> Result<()> {
        let vs = (self.build)()?;
        fill(&vs, &mut GaussianRng::new(self.seed));
        let path = dir.join(&self.file);
        std::fs::create_dir_all(path.parent().context("weights path")?)
            .with_context(|| format!("cannot create the folder of {}", path.display()))?;
        save(&vs, &path)
    }
}

/// Builds a store with `build` run on its root.
fn store(build: impl FnOnce(nn::Path) -> Result<()>) -> Result<nn::VarStore> {
    let vs = nn::VarStore::new(Device::Cpu);
    build(vs.root())?;
    Ok(vs)
}

/// The pipeline's networks: text encoder, UNet, VAE (seed offsets 0, 1, 2).
fn model_networks(arch: &Architecture, seed: u64) -> Vec<Network> {
    let text = arch.config("text_encoder/config.json");
    let unet = arch.config("unet/config.json");
    let vae = arch.config("vae/config.json");
    vec![
        Network::new("text_encoder/model.safetensors", seed, move || {
            store(|p| ClipTextModel::new(&p, ClipTextConfig::from_json(text)?).map(drop))
        }),
        Network::new(
            "unet/diffusion_pytorch_model.safetensors",
            seed.wrapping_add(1),
            move || store(|p| UNet2DConditionModel::new(p, UNetConfig::from_json(unet)?).map(drop)),
        ),
        Network::new(
            "vae/diffusion_pytorch_model.safetensors",
            seed.wrapping_add(2),
            move || {
                store(|p| {
                    AutoencoderKL::new(p, VaeConfig::from_json(vae)?);
                    Ok(())
                })
            },
        ),
    ]
}

/// What a tower set holds.
struct TowerConfigs {
    /// The towers' (folder, config.json) pairs.
    towers: &'static [(&'static str, &'static str)],
    /// The evaluation CLIP's `CLIPModel` config.
    clip: serde_json::Value,
    /// The width of the IP projection's tokens.
    ip_width: i64,
}

fn tower_configs(set: TowerSet, cross_attention_dim: i64) -> Result<Option<TowerConfigs>> {
    Ok(match set {
        TowerSet::Tiny => Some(TowerConfigs {
            towers: &TINY_TOWERS,
            clip: tiny_clip_config()?,
            ip_width: cross_attention_dim,
        }),
        TowerSet::Full => Some(TowerConfigs {
            towers: &FULL_TOWERS,
            clip: serde_json::from_str(FULL_CLIP)?,
            ip_width: IP_SD15_WIDTH,
        }),
        TowerSet::None => None,
    })
}

/// The towers' networks, in `towers/`: each tower (seed offsets 0, 1, …), the evaluation CLIP
/// (11) and IP-Adapter's projection (10).
fn tower_networks(set: TowerSet, cross_attention_dim: i64, seed: u64) -> Result<Vec<Network>> {
    let Some(TowerConfigs {
        towers,
        clip,
        ip_width,
    }) = tower_configs(set, cross_attention_dim)?
    else {
        return Ok(Vec::new());
    };
    let mut nets = Vec::new();
    let mut embed_dim = 0;
    for (i, &(name, config)) in towers.iter().enumerate() {
        if name == "image_encoder" {
            embed_dim = serde_json::from_str::<ClipVisionConfig>(config)?.projection_dim;
        }
        nets.push(Network::new(
            format!("towers/{name}/model.safetensors"),
            seed.wrapping_add(i as u64),
            move || {
                store(|p| {
                    match name {
                        "dino-v1" => drop(VitModel::new(p, serde_json::from_str(config)?)?),
                        "dino-v2" => drop(Dinov2Model::new(p, serde_json::from_str(config)?)?),
                        "clip-text" => drop(ClipTextModelWithProjection::new(
                            p,
                            serde_json::from_str(config)?,
                        )?),
                        _ => drop(ClipVisionModelWithProjection::new(
                            p,
                            serde_json::from_str(config)?,
                        )?),
                    }
                    Ok(())
                })
            },
        ));
    }
    nets.push(Network::new(
        "towers/clip/model.safetensors",
        seed.wrapping_add(11),
        move || store(|p| build_clip_model(p, &clip)),
    ));
    nets.push(Network::new(
        "towers/ip-adapter.safetensors",
        seed.wrapping_add(10),
        move || {
            store(|p| {
                ImageProjection::new(p / "image_proj", embed_dim, IP_TOKENS, ip_width);
                Ok(())
            })
        },
    ));
    Ok(nets)
}

/// Writes the towers' config and tokenizer files into `dir` (the weights are `tower_networks`'):
/// each tower's config.json, and `clip/` as a transformers `CLIPModel` folder with `tokenizer`'s
/// files.
fn write_tower_files(
    dir: &Path,
    set: TowerSet,
    cross_attention_dim: i64,
    tokenizer: &ClipTokenizer,
) -> Result<()> {
    let Some(TowerConfigs { towers, clip, .. }) = tower_configs(set, cross_attention_dim)? else {
        return Ok(());
    };
    for (name, config) in towers {
        let folder = dir.join(name);
        std::fs::create_dir_all(&folder)
            .with_context(|| format!("cannot create {}", folder.display()))?;
        std::fs::write(folder.join("config.json"), config)?;
    }
    let folder = dir.join("clip");
    std::fs::create_dir_all(&folder)
        .with_context(|| format!("cannot create {}", folder.display()))?;
    std::fs::write(
        folder.join("config.json"),
        serde_json::to_string_pretty(&clip)?,
    )?;
    tokenizer.save_dir(&folder)?;
    Ok(())
}

/// The tiny evaluation CLIP as one `CLIPModel` config: the tiny CLIP towers' configs as its
/// `text_config` and `vision_config`.
fn tiny_clip_config() -> Result<serde_json::Value> {
    let text: serde_json::Value = serde_json::from_str(TINY_TOWERS[4].1)?;
    let vision: serde_json::Value = serde_json::from_str(TINY_TOWERS[3].1)?;
    Ok(serde_json::json!({
        "architectures": ["CLIPModel"],
        "model_type": "clip",
        "projection_dim": text["projection_dim"],
        "text_config": text,
        "vision_config": vision,
    }))
}

/// A transformers `CLIPModel` of `config` (with `text_config` and `vision_config`) in `p`: both
/// towers with their projections and the logit scale.
fn build_clip_model(p: nn::Path, config: &serde_json::Value) -> Result<()> {
    // CLIPConfig keeps the shared projection width at the top level.
    let part = |key: &str| {
        let mut v = config[key].clone();
        v["projection_dim"] = config["projection_dim"].clone();
        v
    };
    drop(ClipVisionModelWithProjection::new(
        p.clone(),
        serde_json::from_value(part("vision_config"))?,
    )?);
    drop(ClipTextModelWithProjection::new(
        p.clone(),
        serde_json::from_value(part("text_config"))?,
    )?);
    // Unused by the metrics, but part of a complete CLIPModel checkpoint.
    drop(p.var("logit_scale", &[], nn::Init::Const(2.6592)));
    Ok(())
}

/// Every network of a model folder of `arch` with `towers`: the pipeline's, then the towers'
/// (their generators from `seed` + 3 on).
fn all_networks(arch: &Architecture, towers: TowerSet, seed: u64) -> Result<Vec<Network>> {
    let cross = cross_attention_dim(arch)?;
    let mut nets = model_networks(arch, seed);
    nets.extend(tower_networks(towers, cross, seed.wrapping_add(3))?);
    Ok(nets)
}

fn cross_attention_dim(arch: &Architecture) -> Result<i64> {
    UNetConfig::from_json(arch.config("unet/config.json"))?.cross_attention_dim()
}

/// A weight file's tensors: (name, shape), sorted by name.
pub type TensorLayout = Vec<(String, Vec<i64>)>;

/// Every tensor (name, shape) of every network `init-tiny` writes for `arch` with `towers`,
/// by weight file, built from the same configs without drawing or writing weights: what the
/// layout tests compare with diffusers' and transformers' own models.
pub fn network_layouts(
    arch: &Architecture,
    towers: TowerSet,
) -> Result<Vec<(String, TensorLayout)>> {
    let mut out = Vec::new();
    for net in all_networks(arch, towers, 0)? {
        let vs = (net.build)()?;
        let mut tensors: Vec<(String, Vec<i64>)> = vs
            .variables()
            .into_iter()
            .map(|(name, t)| (name, t.size()))
            .collect();
        tensors.sort();
        out.push((net.file, tensors));
    }
    Ok(out)
}

/// Writes a random-weight model of `arch` to `out` (which must not exist yet), copying the
/// tokenizer from `tokenizer_dir`, with the image towers of `towers` in `out/towers`. The
/// folder is assembled beside `out` and renamed into place.
pub fn write_random_model(
    arch: &Architecture,
    out: &Path,
    tokenizer_dir: &Path,
    seed: u64,
    towers: TowerSet,
) -> Result<()> {
    let tokenizer = ClipTokenizer::from_dir(tokenizer_dir)?;
    let text_config = ClipTextConfig::from_json(arch.config("text_encoder/config.json"))?;
    if text_config.vocab_size < tokenizer.len() as i64 {
        bail!(
            "the {} text encoder has {} token rows but the tokenizer has {} ids",
            arch.name,
            text_config.vocab_size,
            tokenizer.len()
        );
    }
    let cross = cross_attention_dim(arch)?;
    create_folder_beside(out, "--out", |tmp| {
        for (path, text) in arch.files {
            let file = tmp.join(path);
            std::fs::create_dir_all(file.parent().context("config path")?)?;
            std::fs::write(&file, text)
                .with_context(|| format!("cannot write {}", file.display()))?;
        }
        tokenizer.save_dir(&tmp.join("tokenizer"))?;
        write_tower_files(&tmp.join("towers"), towers, cross, &tokenizer)?;
        write_networks(&all_networks(arch, towers, seed)?, tmp)
    })
}

/// Writes `nets` under `dir`, several at once on a machine with several cores (the full-size
/// models take minutes one by one). Each network draws from its own generator, so the files
/// are the same in any order.
fn write_networks(nets: &[Network], dir: &Path) -> Result<()> {
    let workers = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(nets.len());
    let next = std::sync::atomic::AtomicUsize::new(0);
    let results: Vec<Result<()>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                scope.spawn(|| -> Result<()> {
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(net) = nets.get(i) else {
                            return Ok(());
                        };
                        net.write(dir)?;
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("a writer thread panicked")))
            })
            .collect()
    });
    results.into_iter().collect()
}

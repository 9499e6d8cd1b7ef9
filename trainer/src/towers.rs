//! Loading the frozen image towers from Hugging Face folders (config.json + model.safetensors)
//! and the IP-Adapter encoder that turns an image into the 4 projected tokens the identity loss
//! and the IP discriminator read.

use std::path::Path;

use anyhow::{bail, Context, Result};
use tch::Tensor;

use crate::checkpoint::component::{add_missing_prefix, skip_prefix};
use crate::checkpoint::{Component, LoadOptions, Loaded};
use crate::models::clip_text::{ClipTextConfig, ClipTextModelWithProjection};
use crate::models::clip_vision::{ClipVisionConfig, ClipVisionModelWithProjection};
use crate::models::dinov2::{Dinov2Config, Dinov2Model};
use crate::models::ip_adapter::ImageProjection;
use crate::models::vit::{VitConfig, VitModel};
use crate::vision::{
    prepare, Normalization, TowerInput, CLIP_MEAN, CLIP_STD, IMAGENET_MEAN, IMAGENET_STD,
};

fn config<C: serde::de::DeserializeOwned>(c: &Component) -> Result<C> {
    let path = c.dir.join("config.json");
    serde_json::from_str(&c.config_text()?)
        .with_context(|| format!("{}: not a valid config", path.display()))
}

/// A DINOv1 ViT folder (`facebook/dino-vits16` layout); its pooler, if saved, is skipped.
pub fn load_dino_v1(dir: &Path, opts: LoadOptions) -> Result<Loaded<VitModel>> {
    let c = Component::open(dir, "model")?;
    let cfg: VitConfig = config(&c)?;
    c.load(
        opts,
        |t| skip_prefix(t, "pooler."),
        |p| VitModel::new(p, cfg),
    )
    .with_context(|| format!("loading DINOv1 from {}", dir.display()))
}

/// A DINOv2 folder (`facebook/dinov2-large` layout).
pub fn load_dino_v2(dir: &Path, opts: LoadOptions) -> Result<Loaded<Dinov2Model>> {
    let c = Component::open(dir, "model")?;
    let cfg: Dinov2Config = config(&c)?;
    c.load(opts, |_| {}, |p| Dinov2Model::new(p, cfg))
        .with_context(|| format!("loading DINOv2 from {}", dir.display()))
}

/// A `CLIPVisionModelWithProjection` folder (IP-Adapter's `models/image_encoder`, eval CLIPs).
pub fn load_clip_vision(
    dir: &Path,
    opts: LoadOptions,
) -> Result<Loaded<ClipVisionModelWithProjection>> {
    let c = Component::open(dir, "model")?;
    let cfg: ClipVisionConfig = config(&c)?;
    c.load(opts, |_| {}, |p| ClipVisionModelWithProjection::new(p, cfg))
        .with_context(|| format!("loading the CLIP image encoder from {}", dir.display()))
}

/// A `CLIPTextModelWithProjection` folder (CLIP-T's text side).
pub fn load_clip_text_projection(
    dir: &Path,
    opts: LoadOptions,
) -> Result<Loaded<ClipTextModelWithProjection>> {
    let c = Component::open(dir, "model")?;
    let cfg: ClipTextConfig = config(&c)?;
    c.load(
        opts,
        |t| add_missing_prefix(t, "text_model."),
        |p| ClipTextModelWithProjection::new(p, cfg),
    )
    .with_context(|| format!("loading the CLIP text encoder from {}", dir.display()))
}

/// A transformers `CLIPModel` folder (e.g. `openai/clip-vit-large-patch14-336`, the evaluation
/// CLIPs): its image tower with `visual_projection`, its text tower with `text_projection`, and
/// the tokenizer files beside them. `logit_scale` is not needed and skipped.
pub fn load_clip_model(
    dir: &Path,
    opts: LoadOptions,
) -> Result<(
    Loaded<ClipVisionModelWithProjection>,
    Loaded<ClipTextModelWithProjection>,
    runtime::ClipTokenizer,
)> {
    let c = Component::open(dir, "model")?;
    let path = dir.join("config.json");
    let root: serde_json::Value = serde_json::from_str(&c.config_text()?)
        .with_context(|| format!("{}: not valid JSON", path.display()))?;
    let part = |key: &str| -> Result<serde_json::Value> {
        let mut v = root
            .get(key)
            .filter(|v| v.is_object())
            .cloned()
            .with_context(|| {
                format!(
                    "{} has no {key}: expected a CLIPModel folder (config.json with text_config and vision_config)",
                    path.display()
                )
            })?;
        // CLIPConfig keeps the shared projection width at the top level.
        if let Some(p) = root.get("projection_dim") {
            v["projection_dim"] = p.clone();
        }
        Ok(v)
    };
    let vision_cfg: ClipVisionConfig = serde_json::from_value(part("vision_config")?)
        .with_context(|| format!("{}: bad vision_config", path.display()))?;
    let text_cfg: ClipTextConfig = serde_json::from_value(part("text_config")?)
        .with_context(|| format!("{}: bad text_config", path.display()))?;
    let keep = |prefixes: [&'static str; 2]| {
        move |t: &mut std::collections::HashMap<String, Tensor>| {
            t.retain(|k, _| prefixes.iter().any(|p| k.starts_with(p)))
        }
    };
    let vision = c
        .load(opts, keep(["vision_model.", "visual_projection."]), |p| {
            ClipVisionModelWithProjection::new(p, vision_cfg)
        })
        .with_context(|| format!("loading the CLIP image tower from {}", dir.display()))?;
    let text = c
        .load(opts, keep(["text_model.", "text_projection."]), |p| {
            ClipTextModelWithProjection::new(p, text_cfg)
        })
        .with_context(|| format!("loading the CLIP text tower from {}", dir.display()))?;
    let tokenizer = runtime::ClipTokenizer::from_dir(dir)
        .with_context(|| format!("the CLIP tokenizer files in {}", dir.display()))?;
    Ok((vision, text, tokenizer))
}

/// The input of the DINO towers: ImageNet statistics unless raw input is asked for.
pub fn dino_input(size: i64, normalize: bool) -> TowerInput {
    TowerInput {
        size,
        normalization: if normalize {
            Normalization::MeanStd {
                mean: IMAGENET_MEAN,
                std: IMAGENET_STD,
            }
        } else {
            Normalization::None
        },
    }
}

/// The input of CLIP towers: CLIP statistics unless raw input is asked for.
pub fn clip_input(size: i64, normalize: bool) -> TowerInput {
    TowerInput {
        size,
        normalization: if normalize {
            Normalization::MeanStd {
                mean: CLIP_MEAN,
                std: CLIP_STD,
            }
        } else {
            Normalization::None
        },
    }
}

/// IP-Adapter's image encoder and projection: image → (batch, 4, 768) tokens.
pub struct IpEncoder {
    /// The CLIP image tower.
    pub encoder: Loaded<ClipVisionModelWithProjection>,
    /// The projection to tokens, with the store that owns it.
    pub projection: (tch::nn::VarStore, ImageProjection),
    /// How images are prepared for the encoder.
    pub input: TowerInput,
}

impl IpEncoder {
    /// Loads the image encoder folder and the IP-Adapter file; checks that they fit together.
    pub fn load(
        image_encoder: &Path,
        ip_adapter: &Path,
        opts: LoadOptions,
        normalize: bool,
    ) -> Result<Self> {
        let encoder = load_clip_vision(image_encoder, opts)?;
        let projection = ImageProjection::load(ip_adapter, opts.device, opts.kind)?;
        if projection.1.embed_dim() != encoder.model.projection_dim() {
            bail!(
                "{} projects {}-wide image embeddings but the encoder in {} makes {}-wide ones: pair the IP-Adapter with its own image encoder",
                ip_adapter.display(),
                projection.1.embed_dim(),
                image_encoder.display(),
                encoder.model.projection_dim()
            );
        }
        let input = clip_input(encoder.model.image_size(), normalize);
        Ok(Self {
            encoder,
            projection,
            input,
        })
    }

    /// The projected tokens for images in [-1, 1] (batch, 3, h, w).
    pub fn tokens(&self, images: &Tensor) -> Result<Tensor> {
        let embeds = self
            .encoder
            .model
            .forward(&prepare(images, self.input))?
            .image_embeds;
        self.projection.1.forward(&embeds)
    }
}

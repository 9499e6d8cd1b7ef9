//! One component folder of a diffusers model (`unet/`, `vae/`, `text_encoder/`): its config and
//! weights, in fp32 or a variant such as fp16, sharded or not.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use tch::{nn, Device, Kind, Tensor};

use super::{load_strict, read_tensors, shown};
use crate::models::clip_text::{ClipTextConfig, ClipTextModel};
use crate::models::unet_2d_condition::{UNet2DConditionModel, UNetConfig};
use crate::models::vae::{AutoencoderKL, VaeConfig};

/// A component folder and the base name of its weight files.
#[derive(Debug, Clone)]
pub struct Component {
    /// The folder, e.g. `sd-turbo/unet`.
    pub dir: PathBuf,
    /// `diffusion_pytorch_model` (diffusers) or `model` (transformers).
    pub weights_name: &'static str,
}

/// Where and how to put the loaded weights.
#[derive(Debug, Clone, Copy)]
pub struct LoadOptions<'a> {
    /// cpu or cuda.
    pub device: Device,
    /// f32, f16 or bf16.
    pub kind: Kind,
    /// A weight-file variant such as `fp16`; `None` prefers the plain file.
    pub variant: Option<&'a str>,
}

/// A network with the store that owns its weights.
pub struct Loaded<M> {
    /// The weights.
    pub vs: nn::VarStore,
    /// The network.
    pub model: M,
}

impl Component {
    /// A component folder, checked to exist.
    pub fn open(dir: &Path, weights_name: &'static str) -> Result<Self> {
        runtime::model_files::check_component_dir(dir)?;
        Ok(Self {
            dir: dir.to_path_buf(),
            weights_name,
        })
    }

    /// The text of `config.json`.
    pub fn config_text(&self) -> Result<String> {
        let path = self.dir.join("config.json");
        std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", shown(&path)))
    }

    /// The safetensors files holding the weights (see [`runtime::model_files::weight_files`]).
    pub fn weight_files(&self, variant: Option<&str>) -> Result<Vec<PathBuf>> {
        runtime::model_files::weight_files(&self.dir, self.weights_name, variant)
    }

    /// Builds a network with `build` in a fresh store and loads the weights strictly, after
    /// `adjust` has fixed up the checkpoint's names (layout differences between library
    /// versions, heads the network does not have).
    pub fn load<M>(
        &self,
        opts: LoadOptions,
        adjust: impl FnOnce(&mut HashMap<String, Tensor>),
        build: impl FnOnce(nn::Path) -> Result<M>,
    ) -> Result<Loaded<M>> {
        let files = self.weight_files(opts.variant)?;
        let mut vs = nn::VarStore::new(opts.device);
        let model = build(vs.root())?;
        let mut tensors = read_tensors(&files)?;
        adjust(&mut tensors);
        load_strict(&vs, &tensors, &shown(&self.dir))?;
        drop(tensors);
        vs.set_kind(opts.kind);
        vs.freeze();
        Ok(Loaded { vs, model })
    }
}

/// Prepends `prefix` to every name when none has it: transformers 5 saves `CLIPTextModel`
/// without its `text_model.` prefix, transformers 4 with it.
pub fn add_missing_prefix(tensors: &mut HashMap<String, Tensor>, prefix: &str) {
    if !tensors.keys().any(|k| k.starts_with(prefix)) {
        *tensors = std::mem::take(tensors)
            .into_iter()
            .map(|(k, v)| (format!("{prefix}{k}"), v))
            .collect();
    }
}

/// Drops the tensors under `prefix` (a head the network does not build, e.g. ViT's pooler).
pub fn skip_prefix(tensors: &mut HashMap<String, Tensor>, prefix: &str) {
    tensors.retain(|k, _| !k.starts_with(prefix));
}

/// A UNet folder (`unet/` of a model folder).
pub fn load_unet(dir: &Path, opts: LoadOptions) -> Result<Loaded<UNet2DConditionModel>> {
    let c = Component::open(dir, "diffusion_pytorch_model")?;
    let config = UNetConfig::from_json(&c.config_text()?)
        .with_context(|| format!("{}/config.json", shown(&c.dir)))?;
    c.load(opts, |_| {}, |p| UNet2DConditionModel::new(p, config))
        .with_context(|| format!("loading the UNet from {}", shown(&c.dir)))
}

/// A text encoder folder (`text_encoder/` of a model folder).
pub fn load_text_encoder(dir: &Path, opts: LoadOptions) -> Result<Loaded<ClipTextModel>> {
    let c = Component::open(dir, "model")?;
    let config = ClipTextConfig::from_json(&c.config_text()?)
        .with_context(|| format!("{}/config.json", shown(&c.dir)))?;
    c.load(
        opts,
        |t| add_missing_prefix(t, "text_model."),
        |p| ClipTextModel::new(&p, config),
    )
    .with_context(|| format!("loading the text encoder from {}", shown(&c.dir)))
}

/// A VAE folder (`vae/` of a model folder).
pub fn load_vae(dir: &Path, opts: LoadOptions) -> Result<Loaded<AutoencoderKL>> {
    let c = Component::open(dir, "diffusion_pytorch_model")?;
    let config = VaeConfig::from_json(&c.config_text()?)
        .with_context(|| format!("{}/config.json", shown(&c.dir)))?;
    c.load(opts, |_| {}, |p| Ok(AutoencoderKL::new(p, config)))
        .with_context(|| format!("loading the VAE from {}", shown(&c.dir)))
}

//! IP-Adapter's image projection (`ImageProjModel` of tencent-ailab/IP-Adapter): the CLIP image
//! embedding → Linear → `tokens` × `cross_attention_dim` → LayerNorm. Read from the `image_proj.*`
//! tensors of an `ip-adapter_sd15.safetensors`-style file, with sizes taken from the tensors.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use tch::nn::{self, Module};
use tch::{Device, Kind, Tensor};

use super::{layer_norm, linear};
use crate::checkpoint::{load_strict, read_tensors};

/// The projection to IP-Adapter's image tokens.
#[derive(Debug)]
pub struct ImageProjection {
    proj: nn::Linear,
    norm: nn::LayerNorm,
    tokens: i64,
    dim: i64,
    embed_dim: i64,
}

impl ImageProjection {
    /// Builds the variables under `p` (`proj`, `norm`).
    pub fn new(p: nn::Path, embed_dim: i64, tokens: i64, dim: i64) -> Self {
        Self {
            proj: linear(&p / "proj", embed_dim, tokens * dim, true),
            norm: layer_norm(&p / "norm", dim, 1e-5),
            tokens,
            dim,
            embed_dim,
        }
    }

    /// Loads `image_proj.*` from an IP-Adapter file (its `ip_adapter.*` attention weights are
    /// not needed here). The token count is read from the shapes: out = tokens × dim.
    pub fn load(file: &Path, device: Device, kind: Kind) -> Result<(nn::VarStore, Self)> {
        let all = read_tensors(&[file.to_path_buf()])?;
        let tensors: HashMap<String, Tensor> = all
            .into_iter()
            .filter_map(|(k, v)| k.strip_prefix("image_proj.").map(|k| (k.to_string(), v)))
            .collect();
        let shape = |name: &str| {
            tensors.get(name).map(Tensor::size).with_context(|| {
                format!(
                    "{}: no image_proj.{name} tensor (is this an IP-Adapter file?)",
                    file.display()
                )
            })
        };
        let proj = shape("proj.weight")?;
        let norm = shape("norm.weight")?;
        if proj.len() != 2 || norm.len() != 1 || norm[0] == 0 || proj[0] % norm[0] != 0 {
            bail!(
                "{}: image_proj.proj.weight {proj:?} is not tokens x {norm:?}",
                file.display()
            );
        }
        let vs = nn::VarStore::new(device);
        let model = Self::new(vs.root(), proj[1], proj[0] / norm[0], norm[0]);
        load_strict(&vs, &tensors, &format!("{} (image_proj)", file.display()))?;
        let mut vs = vs;
        vs.set_kind(kind);
        vs.freeze();
        Ok((vs, model))
    }

    /// tokens × dim: the width of the flattened output.
    pub fn output_len(&self) -> i64 {
        self.tokens * self.dim
    }

    /// Width of the CLIP image embedding it takes.
    pub fn embed_dim(&self) -> i64 {
        self.embed_dim
    }

    /// (batch, embed_dim) → (batch, tokens, dim).
    pub fn forward(&self, image_embeds: &Tensor) -> Result<Tensor> {
        let size = image_embeds.size();
        if size.len() != 2 || size[1] != self.embed_dim {
            bail!(
                "IP-Adapter projection takes image embeddings of width {}, got {size:?}: the image encoder's projection_dim must match",
                self.embed_dim
            );
        }
        let x = self
            .proj
            .forward(image_embeds)
            .reshape([size[0], self.tokens, self.dim]);
        Ok(self.norm.forward(&x))
    }
}

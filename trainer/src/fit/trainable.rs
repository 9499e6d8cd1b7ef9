//! What EchoDistill trains (SPEC §3), in stores of their own so that the optimiser sees nothing
//! else: the cross-attention `to_k` / `to_v` weights of a UNet (copied from the pretrained ones
//! and swapped into the network) and one new text-embedding row per modifier token. Everything
//! the networks were loaded with stays frozen.

use std::path::Path;

use anyhow::{bail, ensure, Context, Result};
use tch::{nn, Device, Kind, Tensor};

use crate::models::clip_text::ClipTextModel;
use crate::models::unet_2d_condition::UNet2DConditionModel;

/// Trainable copies of every `attn2.to_k.weight` and `attn2.to_v.weight` of one UNet.
pub struct CrossAttentionKv {
    /// The store the optimiser gets.
    pub vs: nn::VarStore,
    names: Vec<String>,
}

impl CrossAttentionKv {
    /// Copies the UNet's cross-attention K/V weights (in f32) into a new store on `device`,
    /// under their diffusers names, and makes the UNet use the copies.
    pub fn attach(unet: &mut UNet2DConditionModel, device: Device) -> Result<Self> {
        let vs = nn::VarStore::new(device);
        let mut names = Vec::new();
        for (path, attn) in unet.cross_attentions_mut() {
            for (proj, layer) in [("to_k", &mut attn.to_k), ("to_v", &mut attn.to_v)] {
                ensure!(
                    layer.bs.is_none(),
                    "{}.{proj} has a bias; EchoDistill trains bias-free K/V",
                    path.join(".")
                );
                let mut p = vs.root();
                for segment in &path {
                    p = p / segment.as_str();
                }
                let p = p / proj;
                let copy = p.var_copy("weight", &layer.ws.to_kind(Kind::Float));
                layer.ws = copy;
                names.push(format!("{}.{proj}.weight", path.join(".")));
            }
        }
        ensure!(
            !names.is_empty(),
            "the UNet has no cross-attention layers to train"
        );
        names.sort();
        Ok(Self { vs, names })
    }

    /// The trained tensors' diffusers names, sorted.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// The trained tensors by name, sorted.
    pub fn tensors(&self) -> Vec<(String, Tensor)> {
        let mut vars: Vec<(String, Tensor)> = self.vs.variables().into_iter().collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        vars
    }

    /// Writes the weights as safetensors under their diffusers names, through a temporary file
    /// beside `path`.
    pub fn save(&self, path: &Path) -> Result<()> {
        let tensors: Vec<(String, Tensor)> = self
            .tensors()
            .into_iter()
            .map(|(k, v)| (k, v.to_device(Device::Cpu)))
            .collect();
        write_safetensors_atomic(&tensors, path)
    }
}

/// One trainable embedding row per added token, appended to the text encoder's vocabulary.
pub struct TokenRows {
    /// The store the optimiser gets.
    pub vs: nn::VarStore,
    /// The rows (tokens × hidden).
    pub rows: Tensor,
    /// The tokens, in id order.
    pub tokens: Vec<String>,
}

impl TokenRows {
    /// Adds one row per `(token, initializer ids)` after the vocabulary, each initialised to the
    /// mean embedding of its initializer ids (one id for a one-token word such as "dog"), and
    /// makes the text encoder use them. Every row is trained.
    pub fn attach(
        text: &mut ClipTextModel,
        tokens: &[(String, Vec<i64>)],
        device: Device,
    ) -> Result<Self> {
        if tokens.is_empty() {
            bail!("no modifier tokens to add");
        }
        let vocab = text.token_embedding.ws.size()[0];
        let mut init = Vec::new();
        for (token, ids) in tokens {
            ensure!(!ids.is_empty(), "token {token:?} has no initializer ids");
            if let Some(bad) = ids.iter().find(|&&i| i < 0 || i >= vocab) {
                bail!("initializer id {bad} of {token:?} is outside the {vocab}-row vocabulary");
            }
            let idx = Tensor::from_slice(ids).to_device(text.token_embedding.ws.device());
            init.push(
                text.token_embedding
                    .ws
                    .index_select(0, &idx)
                    .to_kind(Kind::Float)
                    .mean_dim([0].as_slice(), false, Kind::Float),
            );
        }
        let vs = nn::VarStore::new(device);
        let rows = vs
            .root()
            .var_copy("token_rows", &Tensor::stack(&init, 0).detach());
        text.set_added_rows(Some(rows.shallow_clone()));
        Ok(Self {
            vs,
            rows,
            tokens: tokens.iter().map(|(t, _)| t.clone()).collect(),
        })
    }

    /// Each token with its row, in id order.
    pub fn tensors(&self) -> Vec<(String, Tensor)> {
        self.tokens
            .iter()
            .enumerate()
            .map(|(i, t)| {
                (
                    t.clone(),
                    self.rows.get(i as i64).detach().to_device(Device::Cpu),
                )
            })
            .collect()
    }

    /// Writes the rows as safetensors, one tensor per token named by the token, through a
    /// temporary file beside `path`.
    pub fn save(&self, path: &Path) -> Result<()> {
        write_safetensors_atomic(&self.tensors(), path)
    }
}

/// safetensors through a temporary file renamed into place.
fn write_safetensors_atomic(tensors: &[(String, Tensor)], path: &Path) -> Result<()> {
    crate::checkpoint::write_beside(path, |tmp| {
        Tensor::write_safetensors(tensors, tmp)
            .with_context(|| format!("cannot write {}", path.display()))
    })
}

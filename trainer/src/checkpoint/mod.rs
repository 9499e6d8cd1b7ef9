//! Loading networks from diffusers/transformers checkpoint folders.
//!
//! [`model_dir`] finds the model folder (local, or a Hugging Face repo id in the hub cache);
//! [`component`] reads one component's `config.json` and safetensors files; [`load_strict`]
//! copies the tensors into a tch `VarStore` only if every name and shape matches.

pub mod component;

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use tch::{nn, Tensor};

pub use component::{load_text_encoder, load_unet, load_vae, Component, LoadOptions, Loaded};
pub use runtime::hub::model_dir;

/// Tensors that checkpoints may carry but that are not weights (transformers' CLIP saves its
/// position-id buffer in older files).
fn ignorable(name: &str) -> bool {
    name.ends_with("position_ids")
}

/// How many names of each kind an error lists before "and N more".
const LIST_LIMIT: usize = 12;

fn list(names: &[String]) -> String {
    let mut text: Vec<String> = names.iter().take(LIST_LIMIT).cloned().collect();
    if names.len() > LIST_LIMIT {
        text.push(format!("... and {} more", names.len() - LIST_LIMIT));
    }
    text.join(", ")
}

/// Reads every tensor of `files` (one checkpoint, possibly sharded).
pub fn read_tensors(files: &[PathBuf]) -> Result<HashMap<String, Tensor>> {
    let mut tensors = HashMap::new();
    for file in files {
        let read = Tensor::read_safetensors(file).with_context(|| {
            format!(
                "cannot read {}: not a complete safetensors file (truncated or corrupt download?)",
                file.display()
            )
        })?;
        tensors.extend(read);
    }
    Ok(tensors)
}

/// Copies `tensors` into `vs`, failing with the lists of missing and unexpected names and of
/// shape mismatches unless they match exactly. `what` names the component in the error.
pub fn load_strict(vs: &nn::VarStore, tensors: &HashMap<String, Tensor>, what: &str) -> Result<()> {
    let vars = vs.variables();
    let expected: BTreeSet<&String> = vars.keys().collect();
    let found: BTreeSet<&String> = tensors.keys().filter(|n| !ignorable(n)).collect();
    let missing: Vec<String> = expected.difference(&found).map(|s| s.to_string()).collect();
    let unexpected: Vec<String> = found.difference(&expected).map(|s| s.to_string()).collect();
    let mismatched: Vec<String> = expected
        .intersection(&found)
        .filter(|n| vars[**n].size() != tensors[**n].size())
        .map(|n| {
            format!(
                "{n}: model {:?}, file {:?}",
                vars[*n].size(),
                tensors[*n].size()
            )
        })
        .collect();
    if !(missing.is_empty() && unexpected.is_empty() && mismatched.is_empty()) {
        let mut msg = format!(
            "{what}: the checkpoint does not match the architecture its config.json describes"
        );
        for (label, names) in [
            ("missing", &missing),
            ("unexpected", &unexpected),
            ("shape mismatch", &mismatched),
        ] {
            if !names.is_empty() {
                msg.push_str(&format!("\n  {label} ({}): {}", names.len(), list(names)));
            }
        }
        bail!(msg);
    }
    tch::no_grad(|| -> Result<()> {
        for (name, var) in &vars {
            let mut var = var.shallow_clone();
            var.f_copy_(&tensors[name])
                .with_context(|| format!("{what}: copying {name}"))?;
        }
        Ok(())
    })
}

/// The names `vs` expects, sorted: what a checkpoint for this architecture must contain.
pub fn expected_names(vs: &nn::VarStore) -> Vec<String> {
    let mut names: Vec<String> = vs.variables().into_keys().collect();
    names.sort();
    names
}

/// The hidden name beside `path` that a file or folder (`kind`) is written under before it is
/// renamed into place; the process id keeps two writers apart.
fn staging_path(path: &Path, kind: &str) -> Result<PathBuf> {
    let name = path
        .file_name()
        .with_context(|| format!("{} is not a {kind} path", path.display()))?;
    Ok(path.with_file_name(format!(
        ".{}.tmp-{}",
        name.to_string_lossy(),
        std::process::id()
    )))
}

/// Writes `path` through `write` into a temporary file beside it, then renames it into place,
/// so a crash never leaves a half-written file under the final name.
pub fn write_beside(path: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let tmp = staging_path(path, "file")?;
    write(&tmp)
        .and_then(|()| {
            std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))
        })
        .inspect_err(|_| {
            let _ = std::fs::remove_file(&tmp);
        })
}

/// Creates the folder `out` (which must not exist yet; `what` names the option that chose it
/// in the error): `build` fills a temporary folder beside it, which is then renamed into place,
/// so a crash or an error never leaves a half-written folder under the final name.
pub fn create_folder_beside<T>(
    out: &Path,
    what: &str,
    build: impl FnOnce(&Path) -> Result<T>,
) -> Result<T> {
    if out.exists() {
        bail!(
            "{} already exists: choose another {what} or remove it",
            out.display()
        );
    }
    let tmp = staging_path(out, "folder")?;
    (|| {
        std::fs::create_dir_all(&tmp)
            .with_context(|| format!("cannot create {}", tmp.display()))?;
        let value = build(&tmp)?;
        std::fs::rename(&tmp, out)
            .with_context(|| format!("cannot move {} into place", out.display()))?;
        Ok(value)
    })()
    .inspect_err(|_| {
        let _ = std::fs::remove_dir_all(&tmp);
    })
}

/// Writes text through a temporary file beside `path`.
pub fn write_text_atomic(path: &Path, text: &str) -> Result<()> {
    write_beside(path, |tmp| {
        std::fs::write(tmp, text).with_context(|| format!("cannot write {}", tmp.display()))
    })
}

/// A path for messages.
pub(crate) fn shown(path: &Path) -> String {
    path.display().to_string()
}

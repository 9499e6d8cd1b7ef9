//! The run's checkpoint folder, `RUN/checkpoint/`: trained tensors, optimiser moments and a
//! `state.json` (iteration, generator states, recovery state). Written into a fresh folder
//! beside it and swapped in, so a crash at any moment leaves a complete checkpoint (the new one,
//! or the previous one as `.checkpoint.old`). Shared by EchoDistill and the baselines.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context, Result};
use serde_json::json;
use tch::{nn, Device, Tensor};

use super::optim::AdamW;

/// What a method puts in a checkpoint: its trained stores by prefix, its optimisers by prefix
/// and its own state fields.
pub struct Contents<'a> {
    /// Trained stores, each saved under `<prefix>.<variable>`.
    pub stores: Vec<(&'static str, &'a nn::VarStore)>,
    /// Optimisers, each saved under `adam.<prefix>.…` with its step count.
    pub optimizers: Vec<(&'static str, &'a mut AdamW)>,
}

/// Writes `run/checkpoint/` with `contents` and `state` (a JSON object; `adam_steps` is added).
/// `pause` is called at named points of the write (a failpoint for crash tests).
pub fn save(
    run: &Path,
    contents: Contents<'_>,
    mut state: serde_json::Value,
    pause: &dyn Fn(&str),
) -> Result<()> {
    let mut tensors: Vec<(String, Tensor)> = Vec::new();
    for (prefix, vs) in &contents.stores {
        for (name, t) in vs.variables() {
            tensors.push((
                format!("{prefix}.{name}"),
                t.detach().to_device(Device::Cpu),
            ));
        }
    }
    let mut steps = serde_json::Map::new();
    for (prefix, opt) in contents.optimizers {
        let (saved, n) = opt.state(&format!("adam.{prefix}"));
        tensors.extend(
            saved
                .into_iter()
                .map(|(k, t)| (k, t.to_device(Device::Cpu))),
        );
        steps.insert(prefix.to_string(), json!(n));
    }
    if let Some(map) = state.as_object_mut() {
        map.insert("adam_steps".into(), serde_json::Value::Object(steps));
    }
    let dir = run.join("checkpoint");
    let tmp = run.join(format!(".checkpoint.tmp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    Tensor::write_safetensors(&tensors, tmp.join("state.safetensors"))
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    pause("write");
    std::fs::write(
        tmp.join("state.json"),
        serde_json::to_string_pretty(&state)?,
    )
    .with_context(|| format!("cannot write {}", tmp.display()))?;
    let old = run.join(".checkpoint.old");
    let _ = std::fs::remove_dir_all(&old);
    if dir.exists() {
        std::fs::rename(&dir, &old)
            .with_context(|| format!("cannot move {} aside", dir.display()))?;
    }
    pause("swap");
    std::fs::rename(&tmp, &dir)
        .with_context(|| format!("cannot move the checkpoint into {}", dir.display()))?;
    let _ = std::fs::remove_dir_all(&old);
    Ok(())
}

/// Restores `run/checkpoint/` (or the previous one, if a crash interrupted the swap) into
/// `contents` and returns its `state.json`.
pub fn load(run: &Path, contents: Contents<'_>) -> Result<serde_json::Value> {
    let dir = [run.join("checkpoint"), run.join(".checkpoint.old")]
        .into_iter()
        .find(|d| d.join("state.json").is_file())
        .with_context(|| format!("{} has no checkpoint to resume from", run.display()))?;
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("state.json"))?)
            .with_context(|| format!("{}/state.json is malformed", dir.display()))?;
    let tensors: HashMap<String, Tensor> = Tensor::read_safetensors(dir.join("state.safetensors"))
        .with_context(|| format!("cannot read {}/state.safetensors", dir.display()))?
        .into_iter()
        .collect();
    tch::no_grad(|| -> Result<()> {
        for (prefix, vs) in &contents.stores {
            for (name, var) in vs.variables() {
                let saved = tensors.get(&format!("{prefix}.{name}")).with_context(|| {
                    format!(
                        "the checkpoint lacks {prefix}.{name}: was it written with other settings?"
                    )
                })?;
                var.shallow_clone().copy_(saved);
            }
        }
        Ok(())
    })?;
    let steps = |k: &str| state["adam_steps"][k].as_i64().unwrap_or(0);
    for (prefix, opt) in contents.optimizers {
        opt.load_state(&format!("adam.{prefix}"), &tensors, steps(prefix))?;
    }
    Ok(state)
}

/// The iteration a `state.json` was saved at.
pub fn iteration(state: &serde_json::Value) -> Result<usize> {
    Ok(state["iteration"]
        .as_u64()
        .context("state.json: no iteration")? as usize)
}

/// A generator state saved under `key` of `state.json`.
pub fn rng_state(state: &serde_json::Value, key: &str) -> Result<[u64; 4]> {
    serde_json::from_value(state[key].clone()).with_context(|| format!("state.json: bad {key}"))
}

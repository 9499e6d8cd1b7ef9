//! Noise files: explicit Gaussian noise for a generation, so the trainer (`trainer sample
//! --noise`), the native runtime and tests start from the same numbers. A safetensors file with
//! `noise` (batch, channels, h, w) and optionally `step_noise` (k, batch, channels, h, w), the
//! fresh noise of ancestral steps: one per step, or one per step that adds noise. F32 only.

use std::path::Path;

use anyhow::{bail, ensure, Context, Result};

use crate::model_files::SafetensorsHeader;

/// A dense f32 tensor read from a noise file.
#[derive(Debug, Clone, PartialEq)]
pub struct NoiseTensor {
    /// Dimensions.
    pub shape: Vec<usize>,
    /// Values, row-major.
    pub data: Vec<f32>,
}

/// The contents of a noise file.
#[derive(Debug, Clone, PartialEq)]
pub struct NoiseFile {
    /// The initial latent noise (batch, channels, h, w).
    pub noise: NoiseTensor,
    /// Per-step noise (k, batch, channels, h, w), if any.
    pub step_noise: Option<NoiseTensor>,
}

fn read_tensor(header: &SafetensorsHeader, name: &str) -> Result<NoiseTensor> {
    let info = &header.tensors[name];
    ensure!(
        info.dtype == "F32",
        "noise file {}: `{name}` is {}, expected F32",
        header.path.display(),
        info.dtype
    );
    let bytes = header.read_bytes(name)?;
    Ok(NoiseTensor {
        shape: info.shape.iter().map(|&d| d as usize).collect(),
        data: bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
    })
}

impl NoiseFile {
    /// Reads and checks a noise file.
    pub fn read(path: &Path) -> Result<Self> {
        let header = SafetensorsHeader::read(path).with_context(|| {
            format!(
                "cannot read noise file {}: expected a safetensors file with a `noise` tensor",
                path.display()
            )
        })?;
        for name in header.tensors.keys() {
            if name != "noise" && name != "step_noise" {
                bail!(
                    "noise file {}: unexpected tensor {name:?} (expected `noise` and optional `step_noise`)",
                    path.display()
                );
            }
        }
        ensure!(
            header.tensors.contains_key("noise"),
            "noise file {} has no `noise` tensor",
            path.display()
        );
        let noise = read_tensor(&header, "noise")?;
        ensure!(
            noise.shape.len() == 4,
            "noise file {}: `noise` must be (batch, channels, h, w), got {:?}",
            path.display(),
            noise.shape
        );
        let step_noise = if header.tensors.contains_key("step_noise") {
            let s = read_tensor(&header, "step_noise")?;
            ensure!(
                s.shape.len() == 5 && s.shape[1..] == noise.shape[..],
                "noise file {}: `step_noise` must be (k, {}), got {:?}",
                path.display(),
                noise
                    .shape
                    .iter()
                    .map(usize::to_string)
                    .collect::<Vec<_>>()
                    .join(", "),
                s.shape
            );
            Some(s)
        } else {
            None
        };
        Ok(Self { noise, step_noise })
    }
}

/// The entry of a `step_noise` tensor with `entries` rows that step `step` of `steps` uses: one
/// entry per step, or one per step that adds noise (`noisy`, the scheduler's
/// [`noisy_steps`](crate::Scheduler::noisy_steps)).
pub fn step_noise_entry(
    entries: usize,
    step: usize,
    steps: usize,
    noisy: &[usize],
) -> Result<usize> {
    if entries == steps {
        Ok(step)
    } else if entries == noisy.len() {
        Ok(noisy.iter().position(|&s| s == step).unwrap_or(0))
    } else {
        bail!(
            "the noise file's `step_noise` has {entries} entries; {steps} steps need {steps} or {}",
            noisy.len()
        )
    }
}

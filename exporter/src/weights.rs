//! A component's weights (`unet/`, `text_encoder/`, `vae/`), read tensor by tensor from its
//! safetensors files as f32, with the run's learned tensors laid over the base ones. Reading on
//! demand keeps a bake's memory near one copy of the output model. Every tensor the graph
//! builder does not take is reported, so a checkpoint that does not fit the config is refused
//! instead of half-used.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use runtime::model_files::{weight_files, SafetensorsHeader};

use crate::onnx::Array;

/// Decodes little-endian safetensors bytes of `dtype` into f32.
pub fn decode(dtype: &str, bytes: &[u8]) -> Result<Vec<f32>> {
    Ok(match dtype {
        "F32" => bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        "F16" => bytes
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        "BF16" => bytes
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        "F64" => bytes
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().unwrap_or_default()) as f32)
            .collect(),
        other => bail!("tensors of dtype {other} are not weights this exporter reads"),
    })
}

/// One component's weights.
#[derive(Debug)]
pub struct Weights {
    /// The component folder, for messages.
    pub dir: PathBuf,
    headers: Vec<SafetensorsHeader>,
    overrides: BTreeMap<String, Array>,
    taken: BTreeSet<String>,
}

impl Weights {
    /// Opens the weight files of the component folder `dir` (`diffusion_pytorch_model` or
    /// `model` files, plain, fp16 or sharded).
    pub fn open(dir: &Path, base: &str) -> Result<Self> {
        let files = weight_files(dir, base, None)?;
        let headers = files
            .iter()
            .map(|f| SafetensorsHeader::read(f))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            dir: dir.to_path_buf(),
            headers,
            overrides: BTreeMap::new(),
            taken: BTreeSet::new(),
        })
    }

    /// Every tensor name in the files.
    pub fn names(&self) -> BTreeSet<String> {
        self.headers
            .iter()
            .flat_map(|h| h.tensors.keys().cloned())
            .collect()
    }

    /// The weight files.
    pub fn files(&self) -> Vec<PathBuf> {
        self.headers.iter().map(|h| h.path.clone()).collect()
    }

    /// The stored shape of `name`.
    pub fn shape(&self, name: &str) -> Option<Vec<usize>> {
        if let Some(a) = self.overrides.get(name) {
            return Some(a.shape.clone());
        }
        self.headers.iter().find_map(|h| {
            h.tensors
                .get(name)
                .map(|t| t.shape.iter().map(|&d| d as usize).collect())
        })
    }

    /// Replaces the base tensor `name` with `value`; the shapes must agree.
    pub fn replace(&mut self, name: &str, value: Array, source: &Path) -> Result<()> {
        let Some(shape) = self.shape(name) else {
            bail!(
                "{}: {name} is not a weight of {}",
                source.display(),
                self.dir.display()
            );
        };
        if shape != value.shape {
            bail!(
                "{}: {name} is {:?}, the base model's is {shape:?}",
                source.display(),
                value.shape
            );
        }
        self.overrides.insert(name.to_string(), value);
        Ok(())
    }

    /// Reads `name` as f32 without marking it used.
    pub fn peek(&self, name: &str) -> Result<Array> {
        if let Some(a) = self.overrides.get(name) {
            return Ok(a.clone());
        }
        for h in &self.headers {
            if let Some(info) = h.tensors.get(name) {
                let data = decode(&info.dtype, &h.read_bytes(name)?)
                    .with_context(|| format!("{}: {name}", h.path.display()))?;
                let shape = info.shape.iter().map(|&d| d as usize).collect();
                return Ok(Array::new(shape, data));
            }
        }
        bail!(
            "{} has no tensor {name}: the weights do not match the config",
            self.dir.display()
        )
    }

    /// Reads `name` as f32 and marks it used.
    pub fn take(&mut self, name: &str) -> Result<Array> {
        let a = self.peek(name)?;
        self.taken.insert(name.to_string());
        Ok(a)
    }

    /// Fails listing the tensors under `prefixes` (all when empty) that were never taken,
    /// ignoring buffers such as `position_ids`.
    pub fn check_all_taken(&self, prefixes: &[&str]) -> Result<()> {
        let left: Vec<String> = self
            .names()
            .into_iter()
            .filter(|n| prefixes.is_empty() || prefixes.iter().any(|p| n.starts_with(p)))
            .filter(|n| !n.ends_with("position_ids") && !self.taken.contains(n))
            .collect();
        if !left.is_empty() {
            bail!(
                "{}: {} tensors the config has no place for ({}{}): the weights do not match config.json",
                self.dir.display(),
                left.len(),
                left.iter().take(8).cloned().collect::<Vec<_>>().join(", "),
                if left.len() > 8 { ", ..." } else { "" }
            );
        }
        Ok(())
    }
}

//! `manifest.yaml`, the self-description of a baked model folder (`exporter bake`): what the
//! networks are and how to drive them (tokens, resolution, step counts, scheduler, latent
//! scaling, dtype), and the SHA-256 of every file so a consumer can check what it loads.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::model_files::hex;
use crate::scheduler::config::SchedulerConfigFile;
use crate::{ClipTokenizer, SchedulerConfig};

/// The manifest's file name in a model folder.
pub const MANIFEST_FILE: &str = "manifest.yaml";
/// The `format` value of this project's model folders.
pub const FORMAT: &str = "echodistill-onnx";
/// The layout version this code writes and reads.
pub const FORMAT_VERSION: u32 = 1;

/// An added token and its id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ManifestToken {
    /// The token text, e.g. `<new1>`.
    pub token: String,
    /// Its id in the bundled tokenizer (and row in the text encoder's embeddings).
    pub id: u32,
}

/// The image size the model was baked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resolution {
    /// Pixels.
    pub height: u32,
    /// Pixels.
    pub width: u32,
}

/// How latents relate to images.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Latent {
    /// Latent channels.
    pub channels: u32,
    /// Image pixels per latent pixel along each side.
    pub downscale_factor: u32,
    /// Latents are divided by this before the VAE decoder.
    pub scaling_factor: f64,
}

/// One network file and its interface.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Network {
    /// The `.onnx` file, relative to the folder.
    pub file: String,
    /// External data file, when the weights are outside the protobuf.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_data: Option<String>,
    /// Input names in order.
    pub inputs: Vec<String>,
    /// Output names in order.
    pub outputs: Vec<String>,
    /// Number of weight values.
    pub parameters: u64,
}

/// `manifest.yaml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Always [`FORMAT`].
    pub format: String,
    /// The layout version ([`FORMAT_VERSION`]).
    pub format_version: u32,
    /// What wrote the folder.
    pub producer: String,
    /// The base model the networks were baked from (folder or repo id, as given).
    pub base_model: String,
    /// The `trainer fit` run folder whose learned weights are folded in, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<String>,
    /// The run's method (`echodistill`, `custom-diffusion`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// The added tokens.
    pub tokens: Vec<ManifestToken>,
    /// The resolution the model was baked for.
    pub resolution: Resolution,
    /// Step counts the model is meant to be sampled with.
    pub steps: Vec<u32>,
    /// Weight precision: `f32` or `f16` (graph inputs and outputs are f32 either way).
    pub dtype: String,
    /// Latent layout and scaling.
    pub latent: Latent,
    /// Text sequence length the text encoder was trained with (77).
    pub max_text_length: u32,
    /// The base's `scheduler_config.json`, as diffusers wrote it.
    pub scheduler: serde_json::Value,
    /// The networks by role: `text_encoder`, `unet`, `vae_decoder` (or `pipeline`).
    pub networks: BTreeMap<String, Network>,
    /// SHA-256 of every file in the folder but the manifest, by relative path.
    pub files: BTreeMap<String, String>,
}

/// SHA-256 (hex) of a file's bytes, streamed.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut file =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut hash = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file
            .read(&mut buf)
            .with_context(|| format!("cannot read {}", path.display()))?;
        if n == 0 {
            break;
        }
        hash.update(&buf[..n]);
    }
    Ok(hex(&hash.finalize()))
}

/// SHA-256 (hex) of every regular file below `root`, by its path relative to `root` with `/`
/// separators on every platform (so the map compares across machines). Used for a baked
/// folder's `files` and for the trainer's model fingerprints.
pub fn file_hashes(root: &Path) -> Result<BTreeMap<String, String>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) -> Result<()> {
        let entries = std::fs::read_dir(dir)
            .with_context(|| format!("cannot read the folder {}", dir.display()))?;
        for entry in entries {
            let path = entry
                .with_context(|| format!("cannot read the folder {}", dir.display()))?
                .path();
            if path.is_dir() {
                walk(root, &path, out)?;
            } else if path.is_file() {
                let rel = path
                    .strip_prefix(root)
                    .unwrap_or(&path)
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy())
                    .collect::<Vec<_>>()
                    .join("/");
                out.insert(rel, sha256_file(&path)?);
            }
        }
        Ok(())
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out)?;
    Ok(out)
}

impl Manifest {
    /// Reads `manifest.yaml` from a model folder and checks its format.
    pub fn read(dir: &Path) -> Result<Self> {
        let path = dir.join(MANIFEST_FILE);
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "cannot read {}: is {} a model folder written by `exporter bake`?",
                path.display(),
                dir.display()
            )
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parses the text of a `manifest.yaml` (from `source`, named in errors) and checks its
    /// format.
    pub fn parse(text: &str, source: &str) -> Result<Self> {
        let manifest: Self =
            serde_yaml::from_str(text).with_context(|| format!("{source}: malformed manifest"))?;
        if manifest.format != FORMAT {
            bail!(
                "{source}: format {:?}, expected {FORMAT:?}",
                manifest.format
            );
        }
        if manifest.format_version > FORMAT_VERSION {
            bail!(
                "{source}: format version {} is newer than this program reads ({FORMAT_VERSION}): update it",
                manifest.format_version
            );
        }
        Ok(manifest)
    }

    /// The scheduler configured from the manifest's `scheduler` section.
    pub fn scheduler_config(&self) -> Result<SchedulerConfig> {
        let file: SchedulerConfigFile =
            serde_json::from_value(self.scheduler.clone()).context("the manifest's scheduler")?;
        SchedulerConfig::from_file(&file).context("the manifest's scheduler")
    }

    /// Checks that `tokenizer` gives every learned token the id the networks were baked with.
    pub fn check_tokenizer(&self, tokenizer: &ClipTokenizer) -> Result<()> {
        for t in &self.tokens {
            if tokenizer.token_to_id(&t.token) != Some(t.id) {
                bail!(
                    "the manifest gives {:?} id {}, the bundled tokenizer does not: bake the folder again",
                    t.token,
                    t.id
                );
            }
        }
        Ok(())
    }

    /// Checks that `steps` is one of the step counts the model was baked for.
    pub fn check_steps(&self, steps: u32) -> Result<()> {
        if !self.steps.contains(&steps) {
            bail!(
                "steps {steps}: the model was baked for {:?} steps (manifest.yaml); bake it with --steps to add more",
                self.steps
            );
        }
        Ok(())
    }

    /// Total weight values over the networks.
    pub fn parameters(&self) -> u64 {
        self.networks.values().map(|n| n.parameters).sum()
    }

    /// The latent shape `[batch, channels, h, w]` of `batch` images at the baked resolution.
    pub fn latent_shape(&self, batch: usize) -> [usize; 4] {
        let f = self.latent.downscale_factor.max(1);
        [
            batch,
            self.latent.channels as usize,
            (self.resolution.height / f) as usize,
            (self.resolution.width / f) as usize,
        ]
    }

    /// The manifest as YAML.
    pub fn to_yaml(&self) -> Result<String> {
        Ok(serde_yaml::to_string(self)?)
    }

    /// Recomputes every listed file's SHA-256 under `dir`; returns one line per problem
    /// (missing file or hash mismatch), empty when all match.
    pub fn verify(&self, dir: &Path) -> Vec<String> {
        let mut problems = Vec::new();
        for (file, expected) in &self.files {
            match sha256_file(&dir.join(file)) {
                Ok(actual) if &actual == expected => {}
                Ok(actual) => problems.push(format!(
                    "{file}: sha256 {actual}, the manifest says {expected}"
                )),
                Err(e) => problems.push(format!("{file}: {e:#}")),
            }
        }
        problems
    }
}

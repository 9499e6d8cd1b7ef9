//! A baked model folder loaded into ONNX Runtime sessions: the manifest checked (format,
//! version, every file's SHA-256), the tokenizer with the learned tokens, the scheduler, and one
//! session per graph, created once and reused by every generation.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use ort::session::Session;

use super::library::environment;
use super::providers::{session, Provider, SessionOptions};
use crate::manifest::Manifest;
use crate::{ClipTokenizer, SchedulerConfig};

/// How to load a model.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// Execution provider and threads.
    pub session: SessionOptions,
    /// Recompute every file's SHA-256 and refuse a folder that does not match its manifest
    /// (on by default in the CLI; a few seconds per GB).
    pub verify: bool,
    /// The ONNX Runtime library [default: `ORT_DYLIB_PATH`, or beside the executable].
    pub library: Option<PathBuf>,
}

/// The graphs of a model folder, each behind its own lock (ONNX Runtime's `run` needs
/// exclusive access to a session in `ort`; see [`Model`] on threads).
pub(crate) enum Graphs {
    /// `pipeline.onnx` (`exporter bake --fused`): ids + noise + steps in, RGB bytes out.
    Fused(Mutex<Session>),
    /// `text_encoder.onnx`, `unet.onnx`, `vae_decoder.onnx`, driven step by step.
    Split {
        text_encoder: Mutex<Session>,
        unet: Mutex<Session>,
        vae_decoder: Mutex<Session>,
    },
}

/// A loaded model folder, ready to generate.
///
/// `Model` is `Send + Sync`: share it (e.g. in an `Arc`) and call [`Model::generate`] from
/// any number of threads. Each graph's session is used by one call at a time (a mutex per
/// session), and a call holds one lock at a time, so with the split graphs one request can run
/// its UNet while another encodes its prompt. Each run uses ONNX Runtime's intra-op thread
/// pool ([`SessionOptions::threads`]); for more parallel throughput load the model more than
/// once.
pub struct Model {
    pub(crate) dir: PathBuf,
    pub(crate) manifest: Manifest,
    pub(crate) tokenizer: ClipTokenizer,
    pub(crate) scheduler: SchedulerConfig,
    pub(crate) graphs: Graphs,
    provider: Provider,
    load_seconds: f64,
}

pub(crate) fn lock(session: &Mutex<Session>) -> MutexGuard<'_, Session> {
    // A panic while a session ran leaves nothing half-written in it: keep using it.
    session.lock().unwrap_or_else(|e| e.into_inner())
}

impl Model {
    /// Loads the model folder `dir` written by `exporter bake`.
    pub fn load(dir: &Path, options: &LoadOptions) -> Result<Self> {
        let started = Instant::now();
        let manifest = Manifest::read(dir)?;
        if options.verify {
            let problems = manifest.verify(dir);
            if !problems.is_empty() {
                bail!(
                    "{} does not match its manifest (changed or damaged files; bake it again):\n  {}",
                    dir.display(),
                    problems.join("\n  ")
                );
            }
        }
        let tokenizer = ClipTokenizer::from_dir(&dir.join("tokenizer"))
            .with_context(|| format!("{}: the bundled tokenizer", dir.display()))?;
        manifest
            .check_tokenizer(&tokenizer)
            .with_context(|| dir.display().to_string())?;
        let scheduler = manifest
            .scheduler_config()
            .with_context(|| dir.display().to_string())?;

        let env = environment(options.library.as_deref())?;
        let mut session_options = options.session.clone();
        let mut provider = session_options.provider;
        let mut open = |role: &str| -> Result<Mutex<Session>> {
            let network = manifest.networks.get(role).with_context(|| {
                format!(
                    "{}: the manifest lists no {role} network (has: {})",
                    dir.display(),
                    manifest
                        .networks
                        .keys()
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            })?;
            let path = dir.join(&network.file);
            if !path.is_file() {
                bail!("{} is missing: bake the folder again", path.display());
            }
            let (s, used) = session(&env, &path, &session_options)?;
            // One fallback warning per model: the other graphs go straight to CPU.
            session_options.provider = used;
            provider = used;
            Ok(Mutex::new(s))
        };
        let graphs = if manifest.networks.contains_key("pipeline") {
            Graphs::Fused(open("pipeline")?)
        } else {
            Graphs::Split {
                text_encoder: open("text_encoder")?,
                unet: open("unet")?,
                vae_decoder: open("vae_decoder")?,
            }
        };
        Ok(Self {
            dir: dir.to_path_buf(),
            manifest,
            tokenizer,
            scheduler,
            graphs,
            provider,
            load_seconds: started.elapsed().as_secs_f64(),
        })
    }

    /// The folder it was loaded from.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The bundled tokenizer (with the learned tokens).
    pub fn tokenizer(&self) -> &ClipTokenizer {
        &self.tokenizer
    }

    /// Whether the fused `pipeline.onnx` serves generations (else the three networks).
    pub fn is_fused(&self) -> bool {
        matches!(self.graphs, Graphs::Fused(_))
    }

    /// The execution provider the sessions run on (CPU after a fallback).
    pub fn provider(&self) -> Provider {
        self.provider
    }

    /// Seconds [`Model::load`] took (hash check and session creation included).
    pub fn load_seconds(&self) -> f64 {
        self.load_seconds
    }

    /// The step count used when a request names none: the manifest's first.
    pub fn default_steps(&self) -> u32 {
        self.manifest.steps.first().copied().unwrap_or(1)
    }

    /// Output size (width, height) in pixels, from the manifest.
    pub fn image_size(&self) -> (u32, u32) {
        (
            self.manifest.resolution.width,
            self.manifest.resolution.height,
        )
    }
}

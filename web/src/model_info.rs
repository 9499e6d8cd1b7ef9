//! A baked model folder's `manifest.yaml`, for the page: what to fetch and how to drive it.

use runtime::manifest::Manifest;
use runtime::sampler::NoiseStreams;
use runtime::SchedulerConfig;
use wasm_bindgen::prelude::*;

use crate::{js_error, Sampler, Tokenizer};

/// The manifest of a model folder, checked.
#[wasm_bindgen]
pub struct ModelInfo {
    manifest: Manifest,
    scheduler: SchedulerConfig,
}

#[wasm_bindgen]
impl ModelInfo {
    /// Parses the text of `manifest.yaml` fetched from `source` (named in errors).
    #[wasm_bindgen(constructor)]
    pub fn new(manifest_yaml: &str, source: &str) -> Result<ModelInfo, JsError> {
        let manifest = Manifest::parse(manifest_yaml, source).map_err(js_error)?;
        let scheduler = manifest
            .scheduler_config()
            .map_err(|e| js_error(e.context(source.to_string())))?;
        for role in manifest.networks.keys() {
            if !["pipeline", "text_encoder", "unet", "vae_decoder"].contains(&role.as_str()) {
                return Err(JsError::new(&format!(
                    "{source}: unknown network role {role:?} (a newer bake? update the page)"
                )));
            }
        }
        Ok(Self {
            manifest,
            scheduler,
        })
    }

    /// Whether the folder holds the fused `pipeline.onnx` (else the three networks).
    #[wasm_bindgen(getter, js_name = isFused)]
    pub fn is_fused(&self) -> bool {
        self.manifest.networks.contains_key("pipeline")
    }

    /// The graphs to load, in load order: `pipeline`, or `text_encoder`, `unet`, `vae_decoder`.
    #[wasm_bindgen(getter)]
    pub fn roles(&self) -> Vec<String> {
        if self.is_fused() {
            vec!["pipeline".into()]
        } else {
            vec!["text_encoder".into(), "unet".into(), "vae_decoder".into()]
        }
    }

    /// The `.onnx` file of a graph, relative to the folder.
    #[wasm_bindgen(js_name = networkFile)]
    pub fn network_file(&self, role: &str) -> Result<String, JsError> {
        self.network(role).map(|n| n.file.clone())
    }

    /// The external data file of a graph, when its weights live outside the protobuf.
    #[wasm_bindgen(js_name = externalData)]
    pub fn external_data(&self, role: &str) -> Result<Option<String>, JsError> {
        self.network(role).map(|n| n.external_data.clone())
    }

    /// The tokenizer files the bundle has (names under `tokenizer/`).
    #[wasm_bindgen(getter, js_name = tokenizerFiles)]
    pub fn tokenizer_files(&self) -> Vec<String> {
        self.manifest
            .files
            .keys()
            .filter_map(|f| f.strip_prefix("tokenizer/").map(str::to_string))
            .collect()
    }

    /// The SHA-256 (hex) the manifest records for a file of the folder.
    pub fn sha256(&self, file: &str) -> Option<String> {
        self.manifest.files.get(file).cloned()
    }

    /// Weight values over all graphs.
    #[wasm_bindgen(getter)]
    pub fn parameters(&self) -> f64 {
        self.manifest.parameters() as f64
    }

    /// Weight precision, `f32` or `f16`.
    #[wasm_bindgen(getter)]
    pub fn dtype(&self) -> String {
        self.manifest.dtype.clone()
    }

    /// Image width in pixels.
    #[wasm_bindgen(getter)]
    pub fn width(&self) -> u32 {
        self.manifest.resolution.width
    }

    /// Image height in pixels.
    #[wasm_bindgen(getter)]
    pub fn height(&self) -> u32 {
        self.manifest.resolution.height
    }

    /// The step counts the model was baked for.
    #[wasm_bindgen(getter)]
    pub fn steps(&self) -> Vec<u32> {
        self.manifest.steps.clone()
    }

    /// The learned tokens, e.g. `<new1>`.
    #[wasm_bindgen(getter)]
    pub fn tokens(&self) -> Vec<String> {
        self.manifest
            .tokens
            .iter()
            .map(|t| t.token.clone())
            .collect()
    }

    /// The base model the folder was baked from.
    #[wasm_bindgen(getter, js_name = baseModel)]
    pub fn base_model(&self) -> String {
        self.manifest.base_model.clone()
    }

    /// The latent shape `[batch, channels, h, w]` of `batch` images.
    #[wasm_bindgen(js_name = latentShape)]
    pub fn latent_shape(&self, batch: usize) -> Vec<u32> {
        self.manifest
            .latent_shape(batch)
            .iter()
            .map(|&d| d as u32)
            .collect()
    }

    /// Checks that the bundled tokenizer gives the learned tokens the baked ids.
    #[wasm_bindgen(js_name = checkTokenizer)]
    pub fn check_tokenizer(&self, tokenizer: &Tokenizer) -> Result<(), JsError> {
        self.manifest
            .check_tokenizer(&tokenizer.inner)
            .map_err(js_error)
    }

    /// Checks a step count against the baked ones.
    #[wasm_bindgen(js_name = checkSteps)]
    pub fn check_steps(&self, steps: u32) -> Result<(), JsError> {
        self.manifest.check_steps(steps).map_err(js_error)
    }

    /// The initial noise of `batch` images from `seed` (image `i` uses `seed + i`): the fused
    /// pipeline's `noise` input.
    #[wasm_bindgen(js_name = initialNoise)]
    pub fn initial_noise(&self, seed: u64, batch: usize) -> Vec<f32> {
        let [_, c, h, w] = self.manifest.latent_shape(batch);
        NoiseStreams::seeded(seed, batch, c * h * w).1
    }

    /// The denoising loop of `batch` images from `seed` in `steps` steps (split graphs).
    #[wasm_bindgen(js_name = sampler)]
    pub fn sampler(&self, seed: u64, batch: usize, steps: u32) -> Result<Sampler, JsError> {
        self.check_steps(steps)?;
        let shape = self.manifest.latent_shape(batch);
        let [_, c, h, w] = shape;
        let (streams, initial) = NoiseStreams::seeded(seed, batch, c * h * w);
        Sampler::new(
            self.scheduler.clone(),
            steps,
            shape,
            initial,
            streams,
            self.manifest.latent.scaling_factor as f32,
        )
    }
}

impl ModelInfo {
    fn network(&self, role: &str) -> Result<&runtime::manifest::Network, JsError> {
        self.manifest.networks.get(role).ok_or_else(|| {
            JsError::new(&format!(
                "the manifest lists no {role} network (has: {})",
                self.manifest
                    .networks
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })
    }
}

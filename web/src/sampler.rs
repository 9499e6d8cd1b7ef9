//! The split graphs' denoising loop, for JavaScript: the page runs the UNet, this does the rest.

use runtime::sampler::{NoiseStreams, Sampler as CoreSampler};
use runtime::SchedulerConfig;
use wasm_bindgen::prelude::*;

use crate::js_error;

/// One generation's loop (from [`crate::ModelInfo::sampler`]): for each step, run the UNet on
/// `modelInput(i)` at `timestep(i)` and hand its output to `step(i, ...)`; then decode
/// `decoderInput()`.
#[wasm_bindgen]
pub struct Sampler {
    inner: CoreSampler,
    scaling_factor: f32,
}

impl Sampler {
    pub(crate) fn new(
        config: SchedulerConfig,
        steps: u32,
        shape: [usize; 4],
        initial: Vec<f32>,
        streams: NoiseStreams,
        scaling_factor: f32,
    ) -> Result<Self, JsError> {
        Ok(Self {
            inner: CoreSampler::new(config, steps, shape, initial, streams).map_err(js_error)?,
            scaling_factor,
        })
    }
}

#[wasm_bindgen]
impl Sampler {
    /// UNet calls in the loop.
    #[wasm_bindgen(getter)]
    pub fn steps(&self) -> usize {
        self.inner.steps()
    }

    /// The latent shape `[batch, channels, h, w]`.
    #[wasm_bindgen(getter)]
    pub fn shape(&self) -> Vec<u32> {
        self.inner.shape().iter().map(|&d| d as u32).collect()
    }

    /// The UNet's `sample` input at step `index`.
    #[wasm_bindgen(js_name = modelInput)]
    pub fn model_input(&self, index: usize) -> Result<Vec<f32>, JsError> {
        Ok(self.inner.model_input(index).map_err(js_error)?.0)
    }

    /// The UNet's `timestep` at step `index`.
    pub fn timestep(&self, index: usize) -> Result<f32, JsError> {
        self.inner.timestep(index).map_err(js_error)
    }

    /// Applies step `index` with the UNet's `out_sample`.
    pub fn step(&mut self, index: usize, model_output: &[f32]) -> Result<(), JsError> {
        self.inner.step(index, model_output).map_err(js_error)
    }

    /// The VAE decoder's `latent_sample` input, after the last step.
    #[wasm_bindgen(js_name = decoderInput)]
    pub fn decoder_input(&self) -> Result<Vec<f32>, JsError> {
        self.inner
            .decoder_input(self.scaling_factor)
            .map_err(js_error)
    }
}

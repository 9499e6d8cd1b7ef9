//! The browser side of one-step generation: wasm-bindgen bindings over the runtime core, for the
//! page in `web/static`. The page runs the networks with onnxruntime-web; everything else comes
//! from here, from the same code the native runtime runs, so a seed gives the same picture:
//! - [`Tokenizer`]: the CLIP tokenizer with the model's learned tokens;
//! - [`ModelInfo`]: the baked folder's `manifest.yaml` (networks, sizes, steps, scheduler);
//! - [`Sampler`]: the seeded noise and the scheduler's step math for 1/2/4 steps;
//! - [`chw_to_rgba`], [`rgb_to_rgba`]: network output to canvas pixels.
//!
//! The page fetches files and hands their text or bytes in; no file system is needed. Errors
//! cross into JavaScript as `Error` objects only at this boundary.

mod model_info;
mod pixels;
mod sampler;
mod tokenizer;

pub use model_info::ModelInfo;
pub use pixels::{chw_to_rgba, rgb_to_rgba};
pub use sampler::Sampler;
pub use tokenizer::Tokenizer;

use wasm_bindgen::JsError;

/// An `anyhow` error (with its causes) as a JavaScript `Error`.
fn js_error(e: anyhow::Error) -> JsError {
    JsError::new(&format!("{e:#}"))
}

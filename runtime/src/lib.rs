//! The EchoDistill runtime.
//!
//! Two layers live here. The framework-free core builds for every target, wasm32 included, and is
//! shared by the trainer (tch), the exporter and the web page:
//! - [`tokenizer`]: the CLIP byte-level BPE tokenizer of Stable Diffusion, with added modifier
//!   tokens such as `<new1>`;
//! - [`scheduler`], [`rng`], [`image_tensor`]: schedules, the seeded Gaussian generator, image
//!   conversion; [`sampler`]: the split sampler's loop (noise, model inputs, steps) that every
//!   backend drives;
//! - [`model_config`], [`model_files`]: diffusers configs and safetensors weight files, read
//!   without a tensor library; [`manifest`]: the baked model folder's `manifest.yaml`;
//!   [`run_files`]: the metadata keys of a `trainer fit` run's files;
//! - `hub` (feature `hub`, native only): Hugging Face repo ids through the hub cache.
//!
//! The ONNX Runtime layer ([`onnx`], behind the default `ort` feature) serves one-step generation
//! to native applications.

#[cfg(feature = "hub")]
pub mod hub;
pub mod image_tensor;
pub mod manifest;
pub mod model_config;
pub mod model_files;
pub mod noise_file;
pub mod rng;
pub mod run_files;
pub mod sampler;
pub mod scheduler;
pub mod tokenizer;

#[cfg(feature = "ort")]
pub mod onnx;

pub use rng::GaussianRng;
pub use scheduler::{Scheduler, SchedulerConfig};
pub use tokenizer::{ClipTokenizer, Encoding, TokenizerError, TokenizerFiles};

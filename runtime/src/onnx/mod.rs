//! One-step generation with ONNX Runtime (feature `ort`): load a folder written by `exporter
//! bake`, then generate from any thread.
//!
//! - [`library`]: finding and loading the ONNX Runtime shared library;
//! - [`providers`]: execution providers (CPU, CUDA, TensorRT, CoreML, DirectML) and threads;
//! - [`model`]: the model folder checked against its manifest, sessions created once;
//! - [`generate`]: prompts and noise to RGB images, fused or step by step.
//!
//! ```no_run
//! use runtime::onnx::{GenerateRequest, LoadOptions, Model};
//!
//! # fn main() -> anyhow::Result<()> {
//! let options = LoadOptions { verify: true, ..LoadOptions::default() };
//! let model = Model::load("model".as_ref(), &options)?;
//! let generation = model.generate(&GenerateRequest::new("a <new1> dog on the beach", 7, 1))?;
//! let image = &generation.images[0];
//! assert_eq!(image.rgb.len(), (3 * image.width * image.height) as usize);
//! # Ok(())
//! # }
//! ```

pub mod generate;
pub mod library;
pub mod model;
pub mod providers;

pub use generate::{GenerateRequest, GeneratedImage, Generation, Noise};
pub use library::{environment, load_onnxruntime, OnnxRuntimeLoadError};
pub use model::{LoadOptions, Model};
pub use providers::{Provider, SessionOptions};

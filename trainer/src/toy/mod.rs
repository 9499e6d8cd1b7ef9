//! The toy world: a procedural, captioned 64×64 scene dataset and 30 held-out subjects, small
//! enough that the project can pre-train its own VAE, CLIP, DINO stand-in, teacher and student
//! on it and check EchoDistill's claims with no downloaded weights.
//!
//! - [`vocab`]: every nameable attribute and its word.
//! - [`scene`]: a scene's structure and random sampling.
//! - [`render`]: drawing a scene, bit-exact across machines.
//! - [`caption`]: the caption grammar, writer and parser.
//! - [`world`]: settings, the infinite pre-training data, reference scenes.
//! - [`batch`]: the pre-training data as tensors, with caption dropout.
//! - [`subjects`]: the held-out subjects, the toy prompts, the DreamBench-shaped folder.
//! - [`export`]: `trainer toy-data`'s folder (dataset, preview grids, page).

pub mod batch;
pub mod caption;
pub mod export;
pub mod render;
pub mod rng;
pub mod scene;
pub mod subjects;
pub mod vocab;
pub mod world;

pub use batch::ToyBatch;
pub use caption::{parse, Description};
pub use export::{write_toy_data, ToyData};
pub use subjects::{write_dreambench, ToySubject, TOY_PROMPTS};
pub use world::{Sample, ToyWorld, ToyWorldConfig};

//! The networks the runtime serves, written as ONNX graphs from their diffusers/transformers
//! configs and weights, one module per network:
//! - [`clip_text`]: the CLIP text encoder, with the learned token rows;
//! - [`unet`]: the denoising UNet (learned K/V, DreamBooth weights or merged LoRA included);
//! - [`vae_decoder`]: the VAE decoder;
//!
//! built from the shared pieces in [`blocks`]; and [`pipeline`], the three fused with the
//! sampler's step math into one text-to-image graph (`exporter bake --fused`).

pub mod blocks;
pub mod clip_text;
pub mod pipeline;
pub mod unet;
pub mod vae_decoder;

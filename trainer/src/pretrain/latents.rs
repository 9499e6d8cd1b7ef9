//! The pool's posteriors under the trained autoencoder, computed once: the UNet stages draw a
//! fresh sample from each scene's posterior every time (as diffusers' training scripts do with
//! `latent_dist.sample()`), at the cost of a table lookup instead of an encoder pass.

use tch::{Device, Kind, Tensor};

use super::pool::Pool;
use crate::models::vae::AutoencoderKL;

/// Every pool scene's posterior mean and standard deviation.
pub struct PoolLatents {
    mean: Tensor,
    std: Tensor,
    scaling: f64,
}

impl PoolLatents {
    /// Encodes the whole pool in chunks of `chunk` on `device`.
    pub fn encode(
        vae: &AutoencoderKL,
        pool: &Pool,
        scaling: f64,
        device: Device,
        chunk: usize,
    ) -> Self {
        let mut means = Vec::new();
        let mut stds = Vec::new();
        tch::no_grad(|| {
            let mut start = 0;
            while start < pool.len() {
                let len = chunk.min(pool.len() - start);
                let posterior = vae.encode(&pool.range(start, len).to_device(device));
                means.push(posterior.mean.to_device(Device::Cpu));
                stds.push((posterior.logvar * 0.5).exp().to_device(Device::Cpu));
                start += len;
            }
        });
        Self {
            mean: Tensor::cat(&means, 0),
            std: Tensor::cat(&stds, 0),
            scaling,
        }
    }

    /// Scaled posterior samples (the UNet's x_0) of `indices`, on `device`.
    pub fn sample(&self, indices: &[i64], device: Device) -> Tensor {
        let idx = Tensor::from_slice(indices);
        let mean = self.mean.index_select(0, &idx).to_device(device);
        let std = self.std.index_select(0, &idx).to_device(device);
        (&mean + std * mean.randn_like()).to_kind(Kind::Float) * self.scaling
    }

    /// The autoencoder's scaling factor.
    pub fn scaling(&self) -> f64 {
        self.scaling
    }
}

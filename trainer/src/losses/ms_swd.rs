//! MS-SWD, the multi-scale sliced Wasserstein distance of He et al. (ECCV 2024), as SPEC §6 and
//! the official code define it:
//! 1. a Gaussian pyramid of the sRGB images (5×5 binomial kernel / 256, reflect padding, keep
//!    every second pixel), five levels including the original;
//! 2. each level to CIELAB: sRGB → linear RGB → XYZ (D65) → Lab;
//! 3. per level, fresh random unit directions over 11×11×3 patches (a stride-1 convolution with
//!    reflect padding 5), both images projected, each projection sorted over all pixels, the mean
//!    absolute difference;
//! 4. the mean over levels, one value per image pair.
//!
//! Images come in [-1, 1] from the VAE; they are mapped to [0, 1] and clamped first (the
//! authors' training code passes [-1, 1] straight in, which the metric is not defined on).
//! Directions come from a seeded generator so runs repeat. Everything is differentiable with
//! respect to both images.

use anyhow::{ensure, Result};
use runtime::GaussianRng;
use tch::{Kind, Tensor};

use crate::device::upload;

/// Side of the patches the spec projects (11×11).
pub const PATCH: i64 = 11;
/// Random directions per scale.
pub const PROJECTIONS: i64 = 128;

/// The most pyramid levels images whose short side is `side` allow with `patch`-pixel patches:
/// the coarsest level must be wider than the patch's reflect padding (half the patch).
pub fn max_scales(side: i64, patch: i64) -> usize {
    let mut scales = 0;
    while scales < 63 && side >> scales > patch / 2 {
        scales += 1;
    }
    scales
}

/// MS-SWD settings and its direction generator.
#[derive(Debug)]
pub struct MsSwd {
    scales: usize,
    projections: i64,
    patch: i64,
    rng: GaussianRng,
}

/// sRGB → linear RGB (the clamp keeps the gradient of the power finite).
fn srgb_to_linear(x: &Tensor) -> Tensor {
    let limit = 0.04045;
    let curve = ((x.clamp_min(limit) + 0.055) / 1.055).pow_tensor_scalar(2.4);
    curve.where_self(&x.gt(limit), &(x / 12.92))
}

/// Linear RGB → CIE XYZ (D65), the exact rational sRGB matrix.
fn linear_to_xyz(x: &Tensor) -> Tensor {
    let m: [f64; 9] = [
        10135552.0 / 24577794.0,
        8788810.0 / 24577794.0,
        4435075.0 / 24577794.0,
        2613072.0 / 12288897.0,
        8788810.0 / 12288897.0,
        887015.0 / 12288897.0,
        1425312.0 / 73733382.0,
        8788810.0 / 73733382.0,
        70074185.0 / 73733382.0,
    ];
    let m = upload(&Tensor::from_slice(&m).to_kind(x.kind()), x.device()).view([3, 3]);
    Tensor::einsum("ij,bjhw->bihw", &[m, x.shallow_clone()], None::<&[i64]>)
}

/// XYZ → CIELAB relative to the D65 white.
fn xyz_to_lab(x: &Tensor) -> Tensor {
    let inv_white = upload(
        &Tensor::from_slice(&[1.052_156_925f64, 1.0, 0.918_357_670]).to_kind(x.kind()),
        x.device(),
    )
    .view([1, 3, 1, 1]);
    let t = x * inv_white;
    let delta: f64 = 6.0 / 29.0;
    let cube = delta.powi(3);
    let root = t.clamp_min(cube).pow_tensor_scalar(1.0 / 3.0);
    let linear = &t / (3.0 * delta * delta) + 4.0 / 29.0;
    let f = root.where_self(&t.gt(cube), &linear);
    let (fx, fy, fz) = (f.narrow(1, 0, 1), f.narrow(1, 1, 1), f.narrow(1, 2, 1));
    Tensor::cat(
        &[&fy * 116.0 - 16.0, (&fx - &fy) * 500.0, (&fy - &fz) * 200.0],
        1,
    )
}

/// sRGB in [0, 1] (batch, 3, h, w) → CIELAB.
pub fn srgb_to_lab(x: &Tensor) -> Tensor {
    xyz_to_lab(&linear_to_xyz(&srgb_to_linear(x)))
}

/// The pyramid's levels: the image, then blurred and halved `levels − 1` times.
pub fn gaussian_pyramid(x: &Tensor, levels: usize) -> Vec<Tensor> {
    let k1 = [1.0f64, 4.0, 6.0, 4.0, 1.0];
    let kernel: Vec<f64> = k1
        .iter()
        .flat_map(|a| k1.iter().map(move |b| a * b / 256.0))
        .collect();
    let channels = x.size()[1];
    let kernel = upload(&Tensor::from_slice(&kernel).to_kind(x.kind()), x.device())
        .view([1, 1, 5, 5])
        .repeat([channels, 1, 1, 1]);
    let mut out = vec![x.shallow_clone()];
    for _ in 1..levels {
        let last = out.last().expect("the pyramid starts with the image");
        let blurred = last.reflection_pad2d([2, 2, 2, 2]).conv2d(
            &kernel,
            None::<Tensor>,
            [1, 1],
            [0, 0],
            [1, 1],
            channels,
        );
        let size = blurred.size();
        let halved = blurred.slice(2, 0, size[2], 2).slice(3, 0, size[3], 2);
        out.push(halved);
    }
    out
}

/// The sliced Wasserstein distance between two Lab images along `directions`
/// (projections, 3, patch, patch): one value per image pair.
pub fn sliced_wasserstein(x: &Tensor, y: &Tensor, directions: &Tensor) -> Tensor {
    let pad = directions.size()[2] / 2;
    let project = |t: &Tensor| {
        let b = t.size()[0];
        t.reflection_pad2d([pad, pad, pad, pad])
            .conv2d(directions, None::<Tensor>, [1, 1], [0, 0], [1, 1], 1)
            .reshape([b, directions.size()[0], -1])
            .sort(2, false)
            .0
    };
    (project(x) - project(y))
        .abs()
        .mean_dim([1, 2].as_slice(), false, x.kind())
}

impl MsSwd {
    /// The spec's 128 directions over 11×11 patches, on `scales` levels (the spec's 5 at
    /// SD's 512 px; at most [`max_scales`] of the images' side).
    pub fn new(scales: usize, seed: u64) -> Self {
        Self::with_settings(scales, PROJECTIONS, PATCH, seed)
    }

    /// Any number of scales, directions and patch side (odd).
    pub fn with_settings(scales: usize, projections: i64, patch: i64, seed: u64) -> Self {
        Self {
            scales,
            projections,
            patch,
            rng: GaussianRng::new(seed),
        }
    }

    /// The direction generator (its state is part of a training checkpoint).
    pub fn rng_mut(&mut self) -> &mut GaussianRng {
        &mut self.rng
    }

    /// Fresh unit directions (projections, 3, patch, patch).
    pub fn sample_directions(&mut self, kind: Kind, device: tch::Device) -> Tensor {
        let per = (3 * self.patch * self.patch) as usize;
        let raw = Tensor::from_slice(&self.rng.normal(per * self.projections as usize))
            .view([self.projections, per as i64]);
        let unit = &raw / raw.norm_scalaropt_dim(2.0, [1].as_slice(), true);
        upload(
            &unit
                .view([self.projections, 3, self.patch, self.patch])
                .to_kind(kind),
            device,
        )
    }

    /// MS-SWD between images in [-1, 1] (batch, 3, h, w): one value per pair, with fresh
    /// directions for every scale.
    pub fn forward(&mut self, x: &Tensor, y: &Tensor) -> Result<Tensor> {
        let directions: Vec<Tensor> = (0..self.scales)
            .map(|_| self.sample_directions(x.kind(), x.device()))
            .collect();
        self.forward_with(x, y, &directions)
    }

    /// MS-SWD with the given directions, one (projections, 3, patch, patch) tensor per scale.
    pub fn forward_with(&self, x: &Tensor, y: &Tensor, directions: &[Tensor]) -> Result<Tensor> {
        ensure!(
            x.size() == y.size(),
            "MS-SWD compares images of one shape, got {:?} and {:?}",
            x.size(),
            y.size()
        );
        let size = x.size();
        ensure!(
            size.len() == 4 && size[1] == 3,
            "MS-SWD takes RGB images (batch, 3, h, w), got {size:?}"
        );
        ensure!(
            directions.len() == self.scales,
            "{} direction sets for {} scales",
            directions.len(),
            self.scales
        );
        ensure!(
            (1..=max_scales(size[2].min(size[3]), self.patch)).contains(&self.scales),
            "images of {}x{} are too small for {} scales with {}-pixel patches",
            size[3],
            size[2],
            self.scales,
            self.patch
        );
        let unit = |t: &Tensor| ((t + 1.0) / 2.0).clamp(0.0, 1.0);
        let (px, py) = (
            gaussian_pyramid(&unit(x), self.scales),
            gaussian_pyramid(&unit(y), self.scales),
        );
        let per_scale: Vec<Tensor> = px
            .iter()
            .zip(&py)
            .zip(directions)
            .map(|((lx, ly), d)| sliced_wasserstein(&srgb_to_lab(lx), &srgb_to_lab(ly), d))
            .collect();
        Ok(Tensor::stack(&per_scale, 0).mean_dim([0].as_slice(), false, x.kind()))
    }
}

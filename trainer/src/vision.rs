//! Getting decoded images ([-1, 1], any size) into an image tower: area resize to the tower's
//! input size (SPEC §4: 224 for DINOv1 and the IP-Adapter encoder, 518 for DINOv2) and, by
//! default, the tower's own normalisation.
//!
//! The authors' code feeds [-1, 1] images to the discriminators without normalising them;
//! [`Normalization::None`] reproduces that. The default normalises as each tower was trained,
//! which is what the spec's frozen pretrained backbones expect.

use tch::{Kind, Tensor};

use crate::device::upload;

/// ImageNet statistics (DINOv1, DINOv2).
pub const IMAGENET_MEAN: [f64; 3] = [0.485, 0.456, 0.406];
/// ImageNet statistics (DINOv1, DINOv2).
pub const IMAGENET_STD: [f64; 3] = [0.229, 0.224, 0.225];
/// OpenAI CLIP statistics (CLIP and OpenCLIP towers, the IP-Adapter encoder).
pub const CLIP_MEAN: [f64; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
/// OpenAI CLIP statistics.
pub const CLIP_STD: [f64; 3] = [0.268_629_54, 0.261_302_58, 0.275_777_11];

/// How pixels are normalised after mapping [-1, 1] to [0, 1].
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Normalization {
    /// (x − mean) / std per channel.
    MeanStd {
        /// Channel means.
        mean: [f64; 3],
        /// Channel standard deviations.
        std: [f64; 3],
    },
    /// Feed the [-1, 1] image as it is (the authors' discriminator input).
    None,
}

/// What a tower takes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TowerInput {
    /// Square side in pixels.
    pub size: i64,
    /// Normalisation.
    pub normalization: Normalization,
}

/// Area interpolation (`F.interpolate(mode="area")`, i.e. adaptive average pooling).
pub fn area_resize(image: &Tensor, height: i64, width: i64) -> Tensor {
    image.adaptive_avg_pool2d([height, width])
}

/// Resizes and normalises a batch of images in [-1, 1] (batch, 3, h, w) for a tower.
pub fn prepare(image: &Tensor, input: TowerInput) -> Tensor {
    let resized = area_resize(image, input.size, input.size);
    match input.normalization {
        Normalization::None => resized,
        Normalization::MeanStd { mean, std } => {
            let opts = (Kind::Float, image.device());
            let mean = upload(
                &Tensor::from_slice(&mean)
                    .to_kind(Kind::Float)
                    .view([1, 3, 1, 1]),
                opts.1,
            );
            let std = upload(
                &Tensor::from_slice(&std)
                    .to_kind(Kind::Float)
                    .view([1, 3, 1, 1]),
                opts.1,
            );
            let unit = (resized + 1.0) / 2.0;
            ((unit - mean) / std).to_kind(image.kind())
        }
    }
}

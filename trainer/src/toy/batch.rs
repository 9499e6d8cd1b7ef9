//! The pre-training data as tensors: items drawn by index (so a resumed run continues with the
//! same data), images in [-1, 1] as the VAE takes them, and the caption dropout that
//! classifier-free guidance trains with (a dropped caption becomes the empty prompt).

use std::ops::Range;

use tch::Tensor;

use super::rng::ToyRng;
use super::world::ToyWorld;

/// Key of the caption-dropout stream.
const DROPOUT: u64 = 4;

/// A batch of pre-training items.
#[derive(Debug)]
pub struct ToyBatch {
    /// (n, 3, side, side) f32 in [-1, 1], on the CPU.
    pub images: Tensor,
    /// The items' captions, dropped ones empty.
    pub captions: Vec<String>,
}

impl ToyWorld {
    /// Items `range` of the pre-training data; each caption is replaced by "" with probability
    /// `caption_dropout`, decided by the item's own key (the same item always drops the same
    /// way).
    pub fn batch(&self, range: Range<u64>, caption_dropout: f64) -> ToyBatch {
        let side = i64::from(self.config().resolution);
        let mut pixels = Vec::with_capacity(range.end.saturating_sub(range.start) as usize);
        let mut captions = Vec::new();
        for index in range {
            let sample = self.sample(index);
            let dropped = ToyRng::keyed(self.config().seed, DROPOUT, index).chance(caption_dropout);
            captions.push(if dropped {
                String::new()
            } else {
                sample.caption
            });
            pixels.extend(runtime::image_tensor::rgb8_to_chw(
                sample.image.as_raw(),
                side as usize,
                side as usize,
            ));
        }
        let n = captions.len() as i64;
        ToyBatch {
            images: Tensor::from_slice(&pixels).view([n, 3, side, side]),
            captions,
        }
    }
}

#[cfg(test)]
mod tests {
    use tch::Tensor;

    use crate::toy::{ToyWorld, ToyWorldConfig};

    #[test]
    fn batches_hold_the_items_renders_and_captions() {
        let world = ToyWorld::new(ToyWorldConfig::default()).unwrap();
        let batch = world.batch(10..14, 0.0);
        assert_eq!(batch.images.size(), [4, 3, 64, 64]);
        for (k, index) in (10..14).enumerate() {
            let sample = world.sample(index);
            assert_eq!(batch.captions[k], sample.caption);
            // Pixel (x=5, y=7) of channel 1, mapped back from [-1, 1] to bytes.
            let v = batch.images.double_value(&[k as i64, 1, 7, 5]);
            let byte = f64::from(sample.image.get_pixel(5, 7).0[1]);
            assert!((v - (byte / 127.5 - 1.0)).abs() < 1e-6, "{v} vs {byte}");
        }
        let (lo, hi) = (
            batch.images.min().double_value(&[]),
            batch.images.max().double_value(&[]),
        );
        assert!(lo >= -1.0 && hi <= 1.0);
        // A batch is its items: splitting the range changes nothing.
        let halves = Tensor::cat(
            &[
                world.batch(10..12, 0.0).images,
                world.batch(12..14, 0.0).images,
            ],
            0,
        );
        assert!(halves.equal(&batch.images));
    }

    #[test]
    fn caption_dropout_is_per_item_and_at_the_asked_rate() {
        let world = ToyWorld::new(ToyWorldConfig {
            resolution: 16,
            ..ToyWorldConfig::default()
        })
        .unwrap();
        let a = world.batch(0..2000, 0.1);
        let dropped = a.captions.iter().filter(|c| c.is_empty()).count();
        // Binomial(2000, 0.1): mean 200, sd ~13.4; 5 sd either side.
        assert!((133..=267).contains(&dropped), "{dropped}");
        let b = world.batch(1000..1010, 0.1);
        assert_eq!(b.captions, a.captions[1000..1010]);
        assert!(world
            .batch(0..50, 1.0)
            .captions
            .iter()
            .all(String::is_empty));
    }
}

//! The pre-training scenes, rendered once per process and shared by every stage: rendering a
//! 64×64 scene costs about as much as a small network step, so drawing fresh scenes each step
//! would double the run. Batches are drawn from the pool by a key of (stage, step), so a resumed
//! stage sees the same batches it would have seen.

use anyhow::{ensure, Result};
use tch::{Kind, Tensor};

use crate::toy::rng::ToyRng;
use crate::toy::ToyWorld;

/// Items `0..n` of the toy world's pre-training data, as bytes and captions.
pub struct Pool {
    /// (n, 3, side, side) u8.
    images: Tensor,
    captions: Vec<String>,
    seed: u64,
}

/// The key stream of batch draws (the world's own streams are 1–4).
const DRAWS: u64 = 16;
/// The key stream of caption dropout during pre-training.
const DROPOUT: u64 = 17;

impl Pool {
    /// Renders items `0..n` of `world` on every core.
    pub fn render(world: &ToyWorld, n: usize) -> Result<Self> {
        ensure!(n > 0, "the pool needs at least one scene (pool: {n})");
        let side = world.config().resolution as usize;
        let threads = std::thread::available_parallelism().map_or(1, |t| t.get());
        let chunk = n.div_ceil(threads);
        let parts: Vec<(Vec<u8>, Vec<String>)> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..threads)
                .map(|t| {
                    s.spawn(move || {
                        let mut bytes = Vec::new();
                        let mut captions = Vec::new();
                        for i in (t * chunk)..((t + 1) * chunk).min(n) {
                            let sample = world.sample(i as u64);
                            bytes.extend(chw_bytes(sample.image.as_raw(), side));
                            captions.push(sample.caption);
                        }
                        (bytes, captions)
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("a render thread panicked"))
                .collect()
        });
        let mut bytes = Vec::with_capacity(n * 3 * side * side);
        let mut captions = Vec::with_capacity(n);
        for (b, c) in parts {
            bytes.extend(b);
            captions.extend(c);
        }
        let s = side as i64;
        Ok(Self {
            images: Tensor::from_slice(&bytes).view([n as i64, 3, s, s]),
            captions,
            seed: world.config().seed,
        })
    }

    /// Number of scenes.
    pub fn len(&self) -> usize {
        self.captions.len()
    }

    /// Whether the pool is empty (never: [`render`](Self::render) refuses).
    pub fn is_empty(&self) -> bool {
        self.captions.is_empty()
    }

    /// The `batch` pool indices of `step` of the stage keyed `stage`.
    pub fn draw(&self, stage: u64, step: usize, batch: usize) -> Vec<i64> {
        let mut rng = ToyRng::keyed(self.seed, DRAWS + (stage << 8), step as u64);
        (0..batch).map(|_| rng.below(self.len()) as i64).collect()
    }

    /// Images of `indices`, (batch, 3, side, side) f32 in [-1, 1].
    pub fn images(&self, indices: &[i64]) -> Tensor {
        self.images
            .index_select(0, &Tensor::from_slice(indices))
            .to_kind(Kind::Float)
            / 127.5
            - 1.0
    }

    /// Every image from `start` on, `len` of them, as [`images`](Self::images) gives them.
    pub fn range(&self, start: usize, len: usize) -> Tensor {
        self.images
            .narrow(0, start as i64, len as i64)
            .to_kind(Kind::Float)
            / 127.5
            - 1.0
    }

    /// The caption of scene `index`.
    pub fn caption(&self, index: i64) -> &str {
        &self.captions[index as usize]
    }

    /// Captions of `indices`; each is dropped (made "") with probability `dropout`, keyed by
    /// the draw so a resumed run drops the same ones.
    pub fn captions(&self, indices: &[i64], dropout: f64, step: usize) -> Vec<String> {
        indices
            .iter()
            .enumerate()
            .map(|(k, &i)| {
                let key = (step as u64) << 16 | k as u64;
                if ToyRng::keyed(self.seed, DROPOUT, key).chance(dropout) {
                    String::new()
                } else {
                    self.captions[i as usize].clone()
                }
            })
            .collect()
    }
}

/// Interleaved RGB bytes to planar CHW bytes.
fn chw_bytes(rgb: &[u8], side: usize) -> Vec<u8> {
    let plane = side * side;
    let mut out = vec![0; rgb.len()];
    for (i, px) in rgb.chunks_exact(3).enumerate() {
        for c in 0..3 {
            out[c * plane + i] = px[c];
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::toy::ToyWorldConfig;

    #[test]
    fn the_pool_holds_the_worlds_items_and_draws_repeat() {
        let world = ToyWorld::new(ToyWorldConfig::default()).unwrap();
        let pool = Pool::render(&world, 7).unwrap();
        assert_eq!(pool.len(), 7);
        let batch = world.batch(0..7, 0.0);
        let diff = (pool.range(0, 7) - &batch.images).abs().max();
        assert!(diff.double_value(&[]) < 1e-6);
        assert_eq!(pool.caption(3), batch.captions[3]);
        assert_eq!(pool.draw(1, 5, 4), pool.draw(1, 5, 4));
        assert_ne!(pool.draw(1, 5, 16), pool.draw(2, 5, 16));
        let all = pool.captions(&[0, 1, 2, 3, 4, 5, 6], 1.0, 0);
        assert!(all.iter().all(String::is_empty));
        let kept = pool.captions(&[0, 1], 0.0, 0);
        assert_eq!(kept[1], pool.caption(1));
    }
}

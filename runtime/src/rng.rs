//! The project's one Gaussian noise generator, identical on every target.
//!
//! Seeds must give the same image in the trainer (tch), the native runtime (ort) and the browser
//! (wasm32), so noise never comes from torch's or a platform's RNG. The generator is
//! xoshiro256++ seeded through SplitMix64 (Blackman and Vigna), and normals come from the
//! Box–Muller transform with the pure-Rust `libm` functions, whose results do not depend on the
//! platform's C library. Values are produced in row-major order of the requested shape.

/// A seeded source of standard normal `f32` values.
#[derive(Debug, Clone)]
pub struct GaussianRng {
    state: [u64; 4],
}

fn splitmix64(x: &mut u64) -> u64 {
    *x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *x;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl GaussianRng {
    /// A generator for `seed`; equal seeds give equal streams everywhere.
    pub fn new(seed: u64) -> Self {
        let mut x = seed;
        Self {
            state: [
                splitmix64(&mut x),
                splitmix64(&mut x),
                splitmix64(&mut x),
                splitmix64(&mut x),
            ],
        }
    }

    /// The generator's state, to checkpoint a run and resume it exactly.
    pub fn state(&self) -> [u64; 4] {
        self.state
    }

    /// A generator continuing from a saved [`state`](Self::state).
    pub fn from_state(state: [u64; 4]) -> Self {
        Self { state }
    }

    /// The next 64 random bits (xoshiro256++).
    pub fn next_u64(&mut self) -> u64 {
        let s = &mut self.state;
        let result = s[0].wrapping_add(s[3]).rotate_left(23).wrapping_add(s[0]);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    /// A uniform value in (0, 1): 53 random bits, never exactly 0, so its log is finite.
    pub fn next_open01(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 0.5) * (1.0 / (1u64 << 53) as f64)
    }

    /// Fills `out` with standard normal values. Each pair of outputs uses one Box–Muller draw;
    /// an odd length discards the last draw's second value, so a call's output depends only on
    /// the generator's state and `out.len()`.
    pub fn fill_normal(&mut self, out: &mut [f32]) {
        for pair in out.chunks_mut(2) {
            let radius = libm::sqrt(-2.0 * libm::log(self.next_open01()));
            let angle = core::f64::consts::TAU * self.next_open01();
            pair[0] = (radius * libm::cos(angle)) as f32;
            if let Some(second) = pair.get_mut(1) {
                *second = (radius * libm::sin(angle)) as f32;
            }
        }
    }

    /// `n` standard normal values.
    pub fn normal(&mut self, n: usize) -> Vec<f32> {
        let mut out = vec![0.0; n];
        self.fill_normal(&mut out);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_saved_state_continues_the_stream() {
        let mut a = GaussianRng::new(5);
        let _ = a.normal(7);
        let mut b = GaussianRng::from_state(a.state());
        assert_eq!(a.normal(9), b.normal(9));
    }

    #[test]
    fn equal_seeds_give_equal_streams() {
        assert_eq!(
            GaussianRng::new(7).normal(33),
            GaussianRng::new(7).normal(33)
        );
        assert_ne!(GaussianRng::new(7).normal(8), GaussianRng::new(8).normal(8));
    }

    #[test]
    fn xoshiro_matches_the_reference_stream() {
        // xoshiro256++ from the state {1, 2, 3, 4}, as in the authors' C reference code.
        let mut rng = GaussianRng {
            state: [1, 2, 3, 4],
        };
        let first: Vec<u64> = (0..3).map(|_| rng.next_u64()).collect();
        assert_eq!(first, [41943041, 58720359, 3588806011781223]);
    }

    #[test]
    fn moments_are_standard_normal() {
        let x = GaussianRng::new(0).normal(1_000_000);
        let n = x.len() as f64;
        let mean = x.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
        let var = x
            .iter()
            .map(|&v| (f64::from(v) - mean).powi(2))
            .sum::<f64>()
            / n;
        let kurt = x
            .iter()
            .map(|&v| (f64::from(v) - mean).powi(4))
            .sum::<f64>()
            / n
            / var.powi(2);
        assert!(mean.abs() < 0.005, "mean {mean}");
        assert!((var - 1.0).abs() < 0.005, "variance {var}");
        assert!((kurt - 3.0).abs() < 0.03, "kurtosis {kurt}");
        let beyond3 = x.iter().filter(|v| v.abs() > 3.0).count() as f64 / n;
        assert!((beyond3 - 0.0027).abs() < 0.0005, "tail mass {beyond3}");
    }

    #[test]
    fn odd_lengths_depend_only_on_state_and_length() {
        let mut a = GaussianRng::new(3);
        let mut b = GaussianRng::new(3);
        let x = a.normal(5);
        let y = b.normal(6);
        assert_eq!(x[..], y[..5]);
        // Both consumed three draws, so they continue in step.
        assert_eq!(a.normal(4), b.normal(4));
    }
}

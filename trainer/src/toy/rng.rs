//! The toy world's random numbers: SplitMix64, keyed by (seed, stream, index) so any scene of the
//! infinite dataset is drawn without drawing the ones before it, and the same key gives the same
//! bytes on every machine (integer arithmetic only; no platform maths library).

/// A small deterministic generator (SplitMix64, Steele et al. 2014).
#[derive(Debug, Clone)]
pub struct ToyRng {
    state: u64,
}

/// One SplitMix64 output step.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

impl ToyRng {
    /// The generator for item `index` of `stream` under the world's `seed`.
    pub fn keyed(seed: u64, stream: u64, index: u64) -> Self {
        let key = mix(mix(mix(seed ^ GOLDEN).wrapping_add(stream)).wrapping_add(index));
        Self { state: key }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(GOLDEN);
        mix(self.state)
    }

    /// A whole number in `0..n` (`n > 0`), without modulo bias.
    pub fn below(&mut self, n: usize) -> usize {
        assert!(n > 0, "ToyRng::below(0)");
        let n = n as u64;
        // Rejection keeps every value equally likely.
        let zone = u64::MAX - (u64::MAX % n);
        loop {
            let x = self.next_u64();
            if x < zone {
                return (x % n) as usize;
            }
        }
    }

    /// A uniform number in [0, 1) with 53 random bits.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }

    /// One item of a non-empty slice.
    pub fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_give_reproducible_independent_streams() {
        let a: Vec<u64> = (0..4).map(|_| ToyRng::keyed(1, 2, 3).next_u64()).collect();
        assert!(a.windows(2).all(|w| w[0] == w[1]));
        let b = ToyRng::keyed(1, 2, 4).next_u64();
        let c = ToyRng::keyed(1, 3, 3).next_u64();
        let d = ToyRng::keyed(2, 2, 3).next_u64();
        assert!(a[0] != b && a[0] != c && a[0] != d && b != c);
    }

    #[test]
    fn below_covers_the_range_evenly() {
        let mut rng = ToyRng::keyed(0, 0, 0);
        let mut counts = [0usize; 6];
        for _ in 0..60_000 {
            counts[rng.below(6)] += 1;
        }
        // Each count is Binomial(60000, 1/6): mean 10000, sd ~91; 5 sd either side.
        assert!(
            counts.iter().all(|&c| (9_545..=10_455).contains(&c)),
            "{counts:?}"
        );
    }
}

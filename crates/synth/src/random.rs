//! Per-image random streams and the few distributions the generator draws from.
//!
//! Every image gets its own ChaCha8 stream keyed by (seed, split, index), so an image's content never
//! depends on which thread drew it or in which order. The distributions are written here on top of
//! `next_u32`/`next_u64` rather than taken from `rand`'s helpers, so that a `rand` upgrade that
//! changes how `random_range` maps bits cannot silently change the bytes of a seeded set.

use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Which split a stream belongs to (part of the stream key).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Split {
    Train,
    Test,
}

impl Split {
    /// The name prefix of this split's images ("train" / "test").
    pub fn prefix(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Test => "test",
        }
    }

    /// The smallest number of digits of this split's image numbers (RAF-DB: 5 for train, 4 for test).
    pub fn min_digits(self) -> usize {
        match self {
            Split::Train => 5,
            Split::Test => 4,
        }
    }

    fn tag(self) -> u64 {
        match self {
            Split::Train => 1,
            Split::Test => 2,
        }
    }
}

/// Stream index used for per-split decisions (class assignment), distinct from every image index.
const SPLIT_STREAM: u64 = u64::MAX;

/// The random stream of image `index` (0-based) of `split` under `seed`.
pub fn image_rng(seed: u64, split: Split, index: u64) -> ChaCha8Rng {
    keyed_rng(seed, split.tag(), index)
}

/// The random stream of the extra training-label noise of image `index` (`--label-noise`): its own
/// stream, so that a set made without that option is byte-identical to one made before it existed.
pub fn train_noise_rng(seed: u64, index: u64) -> ChaCha8Rng {
    keyed_rng(seed, TRAIN_NOISE_TAG, index)
}

/// Stream tag of [`train_noise_rng`], distinct from every split's tag.
const TRAIN_NOISE_TAG: u64 = 3;

/// The random stream of per-split decisions (which expression each image shows).
pub fn split_rng(seed: u64, split: Split) -> ChaCha8Rng {
    keyed_rng(seed, split.tag(), SPLIT_STREAM)
}

fn keyed_rng(seed: u64, tag: u64, index: u64) -> ChaCha8Rng {
    // The 32-byte key holds the three numbers verbatim (no hashing, so no collisions) plus a
    // domain string, so streams of other tools seeded with the same number differ.
    let mut key = [0u8; 32];
    key[0..8].copy_from_slice(&seed.to_le_bytes());
    key[8..16].copy_from_slice(&tag.to_le_bytes());
    key[16..24].copy_from_slice(&index.to_le_bytes());
    key[24..32].copy_from_slice(b"aue-synt");
    ChaCha8Rng::from_seed(key)
}

/// Distributions drawn from any `RngCore`, defined bit-for-bit here (see the module doc).
pub trait Draw: RngCore {
    /// Uniform in [0, 1) with 24 bits.
    fn unit(&mut self) -> f32 {
        (self.next_u32() >> 8) as f32 * (1.0 / 16_777_216.0)
    }

    /// Uniform in [lo, hi).
    fn uniform(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * self.unit()
    }

    /// Uniform in [-a, a).
    fn sym(&mut self, a: f32) -> f32 {
        self.uniform(-a, a)
    }

    /// True with probability `p`.
    fn chance(&mut self, p: f32) -> bool {
        self.unit() < p
    }

    /// Uniform integer in [0, n) for n >= 1 (multiply-shift; the bias is below 2^-32).
    fn index(&mut self, n: usize) -> usize {
        ((u128::from(self.next_u64()) * n as u128) >> 64) as usize
    }

    /// Standard normal (Box-Muller, one value per call).
    fn normal(&mut self) -> f32 {
        // 1 - unit() lies in (0, 1], so the logarithm is finite.
        let u1 = 1.0 - self.unit();
        let u2 = self.unit();
        (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
    }

    /// Normal with standard deviation `sd`, truncated to +-2.5 sd (identity traits stay plausible).
    fn trunc_normal(&mut self, sd: f32) -> f32 {
        (self.normal() * sd).clamp(-2.5 * sd.abs(), 2.5 * sd.abs())
    }

    /// Index drawn with probability proportional to `weights` (non-negative, not all zero).
    fn weighted(&mut self, weights: &[f32]) -> usize {
        let total: f32 = weights.iter().sum();
        let mut t = self.unit() * total;
        for (i, &w) in weights.iter().enumerate() {
            if t < w {
                return i;
            }
            t -= w;
        }
        weights.len().saturating_sub(1)
    }

    /// Fisher-Yates shuffle.
    fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.index(i + 1);
            items.swap(i, j);
        }
    }
}

impl<R: RngCore + ?Sized> Draw for R {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_differ_by_split_and_index_and_repeat_exactly() {
        let a = image_rng(7, Split::Train, 0).next_u64();
        assert_eq!(a, image_rng(7, Split::Train, 0).next_u64());
        assert_ne!(a, image_rng(7, Split::Test, 0).next_u64());
        assert_ne!(a, image_rng(7, Split::Train, 1).next_u64());
        assert_ne!(a, image_rng(8, Split::Train, 0).next_u64());
        assert_ne!(a, split_rng(7, Split::Train).next_u64());
        assert_ne!(a, train_noise_rng(7, 0).next_u64());
    }

    #[test]
    fn distributions_stay_in_range() {
        let mut rng = image_rng(1, Split::Train, 3);
        let mut mean = 0.0f64;
        for _ in 0..4000 {
            let u = rng.uniform(2.0, 3.0);
            assert!((2.0..3.0).contains(&u));
            assert!(rng.index(5) < 5);
            let n = rng.trunc_normal(0.5);
            assert!(n.abs() <= 1.25);
            mean += f64::from(rng.normal());
        }
        assert!((mean / 4000.0).abs() < 0.1, "normal mean {}", mean / 4000.0);
    }
}

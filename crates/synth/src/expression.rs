//! Which expression each image shows, which AUs that expression activates, and label noise.
//!
//! The expression -> AU sampler follows the prior knowledge table of docs/METHOD.md section 2 (via
//! `aue_core::prior_level`): an AU whose prior entry is Strong (1.0) is active with probability
//! `p_strong`, Weak (0.5) with `p_weak`, Absent (0.1) with `p_absent` (`p_neutral` on the all-Absent
//! Neutral row). Active AUs get a random intensity in [intensity_min, intensity_max] within [0.3, 1];
//! inactive ones are exactly 0, so "present" in the AU ground truth means "intensity > 0".

use aue_core::{NUM_AUS, NUM_BASIC, PriorLevel, prior_level};

use crate::difficulty::Difficulty;
use crate::random::Draw;

/// Index of Neutral among the basic expressions (docs/METHOD.md section 1).
pub const NEUTRAL: usize = 6;

/// How many images of each class a split gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ClassBalance {
    /// RAF-DB basic's imbalance, softened: shares proportional to the square root of the RAF-DB
    /// train counts (Happiness about 26%, Fear about 6%), so the mean class accuracy and the overall
    /// accuracy differ as they do on RAF-DB while every class keeps enough samples to learn.
    #[default]
    RafDbSqrt,
    /// The same number of images per class.
    Uniform,
}

/// RAF-DB basic train counts in label-index order (Surprise .. Neutral); 12,271 in all.
const RAFDB_TRAIN_COUNTS: [f32; NUM_BASIC] = [1290.0, 281.0, 717.0, 4772.0, 1982.0, 705.0, 2524.0];

impl ClassBalance {
    /// Relative class shares, summing to 1.
    pub fn shares(self) -> [f32; NUM_BASIC] {
        let raw = match self {
            ClassBalance::Uniform => [1.0; NUM_BASIC],
            ClassBalance::RafDbSqrt => RAFDB_TRAIN_COUNTS.map(f32::sqrt),
        };
        let total: f32 = raw.iter().sum();
        raw.map(|w| w / total)
    }

    /// The command-line / README name.
    pub fn name(self) -> &'static str {
        match self {
            ClassBalance::RafDbSqrt => "rafdb-sqrt",
            ClassBalance::Uniform => "uniform",
        }
    }
}

impl std::str::FromStr for ClassBalance {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "rafdb-sqrt" | "rafdb" => Ok(ClassBalance::RafDbSqrt),
            "uniform" => Ok(ClassBalance::Uniform),
            other => {
                Err(format!("unknown class balance {other:?} (expected rafdb-sqrt or uniform)"))
            }
        }
    }
}

/// Exact per-class counts for a split of `n` images: the shares rounded by largest remainder, so the
/// counts sum to `n` and small sets still get every class once `n >= 7`.
pub fn class_counts(n: usize, balance: ClassBalance) -> [usize; NUM_BASIC] {
    let shares = balance.shares();
    let mut counts = [0usize; NUM_BASIC];
    let mut remainders = [(0.0f64, 0usize); NUM_BASIC];
    for c in 0..NUM_BASIC {
        let exact = n as f64 * f64::from(shares[c]);
        counts[c] = exact.floor() as usize;
        remainders[c] = (exact - exact.floor(), c);
    }
    // Every class gets at least one image when there are enough images to go round.
    if n >= NUM_BASIC {
        for c in 0..NUM_BASIC {
            if counts[c] == 0 {
                counts[c] = 1;
                remainders[c].0 = -1.0;
            }
        }
    }
    let assigned: usize = counts.iter().sum();
    // Ties broken by class index, so the result is deterministic.
    remainders.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    if assigned <= n {
        for &(_, c) in remainders.iter().cycle().take(n - assigned) {
            counts[c] += 1;
        }
    } else {
        // Only reachable through the at-least-one rule: take back from the largest classes.
        for _ in 0..assigned - n {
            if let Some(c) = (0..NUM_BASIC).max_by_key(|&c| (counts[c], usize::MAX - c)) {
                counts[c] -= 1;
            }
        }
    }
    counts
}

/// The generating expression of every image of a split, in a random order.
pub fn assign_expressions(n: usize, balance: ClassBalance, rng: &mut impl Draw) -> Vec<usize> {
    let counts = class_counts(n, balance);
    let mut out: Vec<usize> =
        counts.iter().enumerate().flat_map(|(c, &k)| std::iter::repeat_n(c, k)).collect();
    rng.shuffle(&mut out);
    out
}

/// The probability that AU `au` is active on a face showing `expression`.
pub fn activation_probability(expression: usize, au: usize, d: &Difficulty) -> f32 {
    if expression == NEUTRAL {
        return d.p_neutral;
    }
    match prior_level(expression, au) {
        PriorLevel::Strong => d.p_strong,
        PriorLevel::Weak => d.p_weak,
        PriorLevel::Absent => d.p_absent,
    }
}

/// Draws the AU intensities of one face showing `expression` (index into `EXPRESSIONS_BASIC`).
///
/// Intensities are rounded to 3 decimals, the precision of the ground-truth files, so the face
/// is rendered from exactly the values that are written.
pub fn sample_aus(expression: usize, d: &Difficulty, rng: &mut impl Draw) -> [f32; NUM_AUS] {
    let mut aus = [0.0f32; NUM_AUS];
    // One draw per AU in AU order, always (also for AUs that end up inactive), so changing one
    // probability does not shift the random stream of the rest of the face.
    for (au, a) in aus.iter_mut().enumerate() {
        let on = rng.chance(activation_probability(expression, au, d));
        let v = draw_intensity(d, rng);
        if on {
            *a = v;
        }
    }
    if d.at_least_one_strong && expression != NEUTRAL {
        let strong: Vec<usize> =
            (0..NUM_AUS).filter(|&au| prior_level(expression, au) == PriorLevel::Strong).collect();
        if !strong.is_empty() && strong.iter().all(|&au| aus[au] == 0.0) {
            let au = strong[rng.index(strong.len())];
            aus[au] = draw_intensity(d, rng);
        }
    }
    aus
}

/// One intensity in [intensity_min, intensity_max], rounded to the 3 decimals of the AU files.
fn draw_intensity(d: &Difficulty, rng: &mut impl Draw) -> f32 {
    let v = rng.uniform(d.intensity_min, d.intensity_max);
    ((v * 1000.0).round() / 1000.0).clamp(0.3, 1.0)
}

/// The label written for a face generated as `expression`: with probability `p` a different class
/// drawn uniformly (label noise, as in crowd-sourced RAF-DB labels), else `expression` itself.
pub fn noisy_label(expression: usize, p: f32, rng: &mut impl Draw) -> usize {
    // Both draws always happen, for the same stream-stability reason as in `sample_aus`.
    let flip = rng.chance(p);
    let other = (expression + 1 + rng.index(NUM_BASIC - 1)) % NUM_BASIC;
    if flip { other } else { expression }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::difficulty::DifficultyLevel;
    use crate::random::{Split, image_rng, split_rng};
    use aue_core::au_index;

    #[test]
    fn sampled_aus_follow_the_prior() {
        // 300 draws per expression: frequencies per prior level must match the configured
        // probabilities within binomial error (the at-least-one-strong rule only raises Strong).
        let d = Difficulty::preset(DifficultyLevel::Medium);
        let mut rng = image_rng(11, Split::Train, 0);
        let draws = 300;
        let mut hits = [[0usize; NUM_AUS]; NUM_BASIC];
        for (e, row) in hits.iter_mut().enumerate() {
            for _ in 0..draws {
                let aus = sample_aus(e, &d, &mut rng);
                for (au, &v) in aus.iter().enumerate() {
                    assert!(v == 0.0 || (0.3..=1.0).contains(&v), "intensity {v}");
                    assert!(v == 0.0 || (d.intensity_min..=d.intensity_max).contains(&v));
                    if v > 0.0 {
                        row[au] += 1;
                    }
                }
            }
        }
        let level_rate = |level: PriorLevel, neutral: bool| {
            let (mut n, mut k) = (0usize, 0usize);
            for (e, row) in hits.iter().enumerate() {
                if (e == NEUTRAL) != neutral {
                    continue;
                }
                for (au, &h) in row.iter().enumerate() {
                    if prior_level(e, au) == level {
                        n += draws;
                        k += h;
                    }
                }
            }
            k as f32 / n as f32
        };
        let strong = level_rate(PriorLevel::Strong, false);
        let weak = level_rate(PriorLevel::Weak, false);
        let absent = level_rate(PriorLevel::Absent, false);
        let neutral = level_rate(PriorLevel::Absent, true);
        assert!((d.p_strong - 0.02..d.p_strong + 0.06).contains(&strong), "strong {strong}");
        assert!((weak - d.p_weak).abs() < 0.05, "weak {weak}");
        assert!((absent - d.p_absent).abs() < 0.015, "absent {absent}");
        assert!((neutral - d.p_neutral).abs() < 0.015, "neutral {neutral}");
        // Every single Strong entry is common, every Absent entry rare.
        for (e, row) in hits.iter().enumerate() {
            for (au, &h) in row.iter().enumerate() {
                let rate = h as f32 / draws as f32;
                match (e == NEUTRAL, prior_level(e, au)) {
                    (false, PriorLevel::Strong) => assert!(rate > 0.7, "e{e} au{au} {rate}"),
                    (_, PriorLevel::Absent) => assert!(rate < 0.13, "e{e} au{au} {rate}"),
                    _ => {}
                }
            }
        }
        // Happiness: AU12 (Strong) far more often than AU15 (Absent).
        let (au12, au15) = (au_index(12).unwrap(), au_index(15).unwrap());
        assert!(hits[3][au12] > 5 * hits[3][au15].max(1));
    }

    #[test]
    fn emotional_faces_keep_a_defining_au() {
        let mut d = Difficulty::preset(DifficultyLevel::Medium);
        d.p_strong = 0.0;
        let mut rng = image_rng(3, Split::Test, 5);
        for e in 0..NEUTRAL {
            let aus = sample_aus(e, &d, &mut rng);
            let strong = (0..NUM_AUS).filter(|&a| prior_level(e, a) == PriorLevel::Strong);
            assert_eq!(strong.filter(|&a| aus[a] > 0.0).count(), 1, "expression {e}");
        }
    }

    #[test]
    fn class_counts_sum_and_cover() {
        for n in [0, 1, 6, 7, 8, 13, 100, 5000] {
            for balance in [ClassBalance::Uniform, ClassBalance::RafDbSqrt] {
                let c = class_counts(n, balance);
                assert_eq!(c.iter().sum::<usize>(), n, "{n} {balance:?}");
                if n >= NUM_BASIC {
                    assert!(c.iter().all(|&k| k > 0), "{n} {balance:?} {c:?}");
                }
            }
        }
        let c = class_counts(7000, ClassBalance::Uniform);
        assert!(c.iter().all(|&k| k == 1000));
        let c = class_counts(10000, ClassBalance::RafDbSqrt);
        assert!(c[3] > c[6] && c[6] > c[1], "{c:?}");
        let order = assign_expressions(100, ClassBalance::Uniform, &mut split_rng(1, Split::Train));
        assert_eq!(order.len(), 100);
        let mut sorted = order.clone();
        sorted.sort_unstable();
        assert_ne!(order, sorted, "expressions are shuffled");
    }

    #[test]
    fn label_noise_rate_and_never_same_when_flipped() {
        let mut rng = image_rng(5, Split::Train, 9);
        let n = 4000;
        let flipped = (0..n).filter(|i| noisy_label(i % 7, 0.1, &mut rng) != i % 7).count();
        let rate = flipped as f32 / n as f32;
        assert!((rate - 0.1).abs() < 0.02, "rate {rate}");
        assert!((0..200).all(|i| noisy_label(i % 7, 0.0, &mut rng) == i % 7));
        assert!((0..200).all(|i| noisy_label(i % 7, 1.0, &mut rng) != i % 7));
    }
}

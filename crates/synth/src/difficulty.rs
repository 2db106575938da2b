//! Every knob that makes the synthetic set easier or harder, in one struct, with three presets.
//!
//! The expression -> AU probabilities follow the prior of docs/METHOD.md section 2 (Strong / Weak /
//! Absent entries of `aue_core::prior_level`); the rest sets how much identity, pose, scene clutter
//! and image degradation hide the AUs. Tuning the set for a model means editing one of these values.

use std::fmt;
use std::str::FromStr;

/// The named presets (`--difficulty easy|medium|hard`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum DifficultyLevel {
    /// Strong, clean AUs; little pose, clutter or noise.
    Easy,
    /// The default: the prior's probabilities, the full intensity range, moderate pose and noise.
    #[default]
    Medium,
    /// Weaker intensities, more pose, clutter, blur and noise, more label noise.
    Hard,
}

impl DifficultyLevel {
    /// The lower-case name used on the command line and in the README.
    pub fn name(self) -> &'static str {
        match self {
            DifficultyLevel::Easy => "easy",
            DifficultyLevel::Medium => "medium",
            DifficultyLevel::Hard => "hard",
        }
    }
}

impl fmt::Display for DifficultyLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for DifficultyLevel {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "easy" => Ok(DifficultyLevel::Easy),
            "medium" => Ok(DifficultyLevel::Medium),
            "hard" => Ok(DifficultyLevel::Hard),
            other => Err(format!("unknown difficulty {other:?} (expected easy, medium or hard)")),
        }
    }
}

/// All difficulty knobs. Lengths are in face units (the jaw's half-width at eye level is about 1)
/// unless named as a fraction of the image side.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Difficulty {
    /// The preset these values started from (recorded in the README).
    pub level: DifficultyLevel,

    // Expression -> AUs (docs/METHOD.md section 2).
    /// Probability that a Strong (1.0) prior entry is active.
    pub p_strong: f32,
    /// Probability that a Weak (0.5) prior entry is active.
    pub p_weak: f32,
    /// Probability that an Absent (0.1) entry of an emotional expression is active.
    pub p_absent: f32,
    /// Probability that an AU is active on a Neutral face (its row is all Absent).
    pub p_neutral: f32,
    /// Present AUs get an intensity uniform in [intensity_min, intensity_max] (within [0.3, 1]).
    pub intensity_min: f32,
    /// See `intensity_min`.
    pub intensity_max: f32,
    /// For an emotional expression that drew no Strong AU, activate one at random (a face whose
    /// defining AUs are all missing is indistinguishable from Neutral).
    pub at_least_one_strong: bool,
    /// Probability that the written label is another class than the generating expression.
    pub label_noise: f32,

    // Face.
    /// Multiplies every AU's landmark motion (1 = the reference motion at intensity 1).
    pub au_gain: f32,
    /// Multiplies the opacity of AU appearance cues (wrinkles, folds, bulges).
    pub cue_strength: f32,
    /// Multiplies the spread of identity shape traits (0 = every face has the average shape).
    pub identity_spread: f32,
    /// Standard deviation of independent per-landmark jitter (natural asymmetry), face units.
    pub landmark_jitter: f32,

    // Pose.
    /// In-plane rotation drawn from a triangular distribution on [-max_roll_deg, max_roll_deg].
    pub max_roll_deg: f32,
    /// Face scale relative to the nominal size (jaw width about 0.43 of the image side).
    pub scale_min: f32,
    /// See `scale_min`.
    pub scale_max: f32,
    /// Face centre shift, uniform on each axis in +-max_shift (fraction of the image side).
    pub max_shift: f32,
    /// Face-detector box jitter, uniform per edge in +-box_jitter (fraction of the box side).
    pub box_jitter: f32,

    // Scene and image degradation.
    /// Number of background clutter shapes, uniform in [clutter_min, clutter_max].
    pub clutter_min: u32,
    /// See `clutter_min`.
    pub clutter_max: u32,
    /// Probability of one occluding shape (hand-like blob) over the lower face edge.
    pub occluder_prob: f32,
    /// Peak opacity of the global lighting gradient (light on one side, shade on the other).
    pub lighting: f32,
    /// Gaussian blur sigma drawn uniform in [0, blur_max], in pixels at 160 px (scaled with size).
    pub blur_max: f32,
    /// Pixel noise standard deviation drawn uniform in [0, noise_max], in 8-bit levels.
    pub noise_max: f32,
}

impl Difficulty {
    /// The values of a named preset.
    pub fn preset(level: DifficultyLevel) -> Self {
        match level {
            DifficultyLevel::Easy => Difficulty {
                level,
                p_strong: 0.95,
                p_weak: 0.4,
                p_absent: 0.02,
                p_neutral: 0.01,
                intensity_min: 0.6,
                intensity_max: 1.0,
                at_least_one_strong: true,
                label_noise: 0.0,
                au_gain: 1.0,
                cue_strength: 1.0,
                identity_spread: 0.7,
                landmark_jitter: 0.003,
                max_roll_deg: 5.0,
                scale_min: 0.95,
                scale_max: 1.05,
                max_shift: 0.03,
                box_jitter: 0.01,
                clutter_min: 0,
                clutter_max: 2,
                occluder_prob: 0.0,
                lighting: 0.1,
                blur_max: 0.3,
                noise_max: 2.0,
            },
            DifficultyLevel::Medium => Difficulty {
                level,
                p_strong: 0.85,
                p_weak: 0.4,
                p_absent: 0.05,
                p_neutral: 0.03,
                intensity_min: 0.3,
                intensity_max: 1.0,
                at_least_one_strong: true,
                label_noise: 0.03,
                au_gain: 1.0,
                cue_strength: 1.0,
                identity_spread: 1.0,
                landmark_jitter: 0.006,
                max_roll_deg: 12.0,
                scale_min: 0.85,
                scale_max: 1.1,
                max_shift: 0.06,
                box_jitter: 0.02,
                clutter_min: 2,
                clutter_max: 6,
                occluder_prob: 0.05,
                lighting: 0.25,
                blur_max: 0.8,
                noise_max: 6.0,
            },
            DifficultyLevel::Hard => Difficulty {
                level,
                p_strong: 0.75,
                p_weak: 0.4,
                p_absent: 0.08,
                p_neutral: 0.05,
                intensity_min: 0.3,
                intensity_max: 0.8,
                at_least_one_strong: false,
                label_noise: 0.05,
                au_gain: 0.85,
                cue_strength: 0.7,
                identity_spread: 1.25,
                landmark_jitter: 0.01,
                max_roll_deg: 25.0,
                scale_min: 0.75,
                scale_max: 1.15,
                max_shift: 0.1,
                box_jitter: 0.04,
                clutter_min: 4,
                clutter_max: 10,
                occluder_prob: 0.15,
                lighting: 0.4,
                blur_max: 1.5,
                noise_max: 12.0,
            },
        }
    }

    /// Every knob as (name, value) in declaration order, for READMEs and logs.
    pub fn knobs(&self) -> Vec<(&'static str, String)> {
        vec![
            ("p_strong", self.p_strong.to_string()),
            ("p_weak", self.p_weak.to_string()),
            ("p_absent", self.p_absent.to_string()),
            ("p_neutral", self.p_neutral.to_string()),
            ("intensity_min", self.intensity_min.to_string()),
            ("intensity_max", self.intensity_max.to_string()),
            ("at_least_one_strong", self.at_least_one_strong.to_string()),
            ("label_noise", self.label_noise.to_string()),
            ("au_gain", self.au_gain.to_string()),
            ("cue_strength", self.cue_strength.to_string()),
            ("identity_spread", self.identity_spread.to_string()),
            ("landmark_jitter", self.landmark_jitter.to_string()),
            ("max_roll_deg", self.max_roll_deg.to_string()),
            ("scale_min", self.scale_min.to_string()),
            ("scale_max", self.scale_max.to_string()),
            ("max_shift", self.max_shift.to_string()),
            ("box_jitter", self.box_jitter.to_string()),
            ("clutter_min", self.clutter_min.to_string()),
            ("clutter_max", self.clutter_max.to_string()),
            ("occluder_prob", self.occluder_prob.to_string()),
            ("lighting", self.lighting.to_string()),
            ("blur_max", self.blur_max.to_string()),
            ("noise_max", self.noise_max.to_string()),
        ]
    }

    /// Checks that every value is in its range; the message names the first bad knob.
    pub fn validate(&self) -> Result<(), String> {
        let prob = |name: &str, p: f32| {
            if (0.0..=1.0).contains(&p) {
                Ok(())
            } else {
                Err(format!("{name} = {p} is not in [0, 1]"))
            }
        };
        prob("p_strong", self.p_strong)?;
        prob("p_weak", self.p_weak)?;
        prob("p_absent", self.p_absent)?;
        prob("p_neutral", self.p_neutral)?;
        prob("label_noise", self.label_noise)?;
        prob("occluder_prob", self.occluder_prob)?;
        prob("lighting", self.lighting)?;
        if !(0.3 <= self.intensity_min
            && self.intensity_min <= self.intensity_max
            && self.intensity_max <= 1.0)
        {
            return Err(format!(
                "intensity range [{}, {}] is not within [0.3, 1]",
                self.intensity_min, self.intensity_max
            ));
        }
        let non_negative = [
            ("au_gain", self.au_gain),
            ("cue_strength", self.cue_strength),
            ("identity_spread", self.identity_spread),
            ("landmark_jitter", self.landmark_jitter),
            ("max_roll_deg", self.max_roll_deg),
            ("max_shift", self.max_shift),
            ("box_jitter", self.box_jitter),
            ("blur_max", self.blur_max),
            ("noise_max", self.noise_max),
        ];
        for (name, v) in non_negative {
            if !(v.is_finite() && v >= 0.0) {
                return Err(format!("{name} = {v} must be finite and >= 0"));
            }
        }
        if self.max_roll_deg > 45.0 {
            return Err(format!("max_roll_deg = {} is above 45", self.max_roll_deg));
        }
        if self.max_shift > 0.25 {
            return Err(format!("max_shift = {} is above 0.25", self.max_shift));
        }
        if !(0.3 <= self.scale_min && self.scale_min <= self.scale_max && self.scale_max <= 1.5) {
            return Err(format!(
                "scale range [{}, {}] is not within [0.3, 1.5]",
                self.scale_min, self.scale_max
            ));
        }
        if self.clutter_min > self.clutter_max || self.clutter_max > 64 {
            return Err(format!(
                "clutter range [{}, {}] is empty or above 64",
                self.clutter_min, self.clutter_max
            ));
        }
        Ok(())
    }
}

impl Default for Difficulty {
    fn default() -> Self {
        Difficulty::preset(DifficultyLevel::Medium)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_are_valid_and_ordered() {
        let [e, m, h] = [DifficultyLevel::Easy, DifficultyLevel::Medium, DifficultyLevel::Hard]
            .map(Difficulty::preset);
        for d in [e, m, h] {
            d.validate().unwrap();
        }
        assert!(e.p_strong > m.p_strong && m.p_strong > h.p_strong);
        assert!(e.max_roll_deg < m.max_roll_deg && m.max_roll_deg < h.max_roll_deg);
        assert!(e.noise_max < m.noise_max && m.noise_max < h.noise_max);
        assert!(h.intensity_max < m.intensity_max);
        assert_eq!("HARD".parse::<DifficultyLevel>(), Ok(DifficultyLevel::Hard));
        assert!("brutal".parse::<DifficultyLevel>().is_err());
    }

    #[test]
    fn validate_names_the_bad_knob() {
        let d = Difficulty { intensity_min: 0.1, ..Difficulty::default() };
        assert!(d.validate().unwrap_err().contains("intensity"));
        let d = Difficulty { p_weak: 1.5, ..Difficulty::default() };
        assert!(d.validate().unwrap_err().contains("p_weak"));
    }
}

//! The ablation grid (docs/ABLATION.md): which synthetic sets, seeds and stage-2/3 variants
//! `aue-ablation` trains, read from a TOML file, and the plan of commands that trains them.
//!
//! Each seed generates its own copy of every set (the set's seed is the run seed), then trains
//! stage 1 once and, per variant, stages 2 and 3 from that stage 1's `best.safetensors`. The
//! folders under the grid's output folder:
//! - `data/<set>-seed<k>/`: the synthetic set;
//! - `runs/<set>/seed<k>/stage1/`: stage 1;
//! - `runs/<set>/seed<k>/<variant>/stage{2,3}/`: stages 2 and 3 of a variant;
//! - `logs/<set>-seed<k>-<step>.log`: each command's output; `done/...`: one empty file per
//!   finished step, so that a rerun skips what is done;
//! - `grid.toml`: the grid that was run (the report reads it back).

use std::fmt;
use std::path::{Path, PathBuf};

use aue_synth::{ClassBalance, DifficultyLevel};
use serde::{Deserialize, Serialize};

use crate::error::{ReportError, Result, io_err};

/// The default grid (`aue-ablation` without `--grid`), chosen before any result was seen.
pub const DEFAULT_GRID: &str = include_str!("../ablation/default.toml");
/// The smoke-run grid of `aue-ablation --quick`.
pub const QUICK_GRID: &str = include_str!("../ablation/quick.toml");
/// The grid file written into the output folder.
pub const GRID_FILE: &str = "grid.toml";

/// What stages 2 and 3 are run with; each variant starts from the same stage 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Variant {
    /// The reference's settings (docs/METHOD.md section 4).
    Reference,
    /// `--eiau-weight 0` in stages 2 and 3: no EIAU loss term.
    #[serde(rename = "eiau-0")]
    EiauZero,
    /// `--frozen-eval` in stages 2 and 3: the frozen parts in eval mode (BatchNorm statistics
    /// of the backbone no longer drift while stage 2 trains the AU branch).
    FrozenEval,
}

impl Variant {
    /// Every variant, in table order.
    pub const ALL: [Variant; 3] = [Variant::Reference, Variant::EiauZero, Variant::FrozenEval];

    /// The name in grid files (as serde writes it), folders and tables.
    pub fn name(self) -> &'static str {
        match self {
            Variant::Reference => "reference",
            Variant::EiauZero => "eiau-0",
            Variant::FrozenEval => "frozen-eval",
        }
    }

    /// The stage 2 and stage 3 flags of the variant.
    pub fn flags(self) -> &'static [&'static str] {
        match self {
            Variant::Reference => &[],
            Variant::EiauZero => &["--eiau-weight", "0"],
            Variant::FrozenEval => &["--frozen-eval", "true"],
        }
    }
}

impl fmt::Display for Variant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One synthetic set of the grid.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetSpec {
    /// Name in folders and tables (letters, digits, `-`, `_`).
    pub name: String,
    /// `aue-synth --difficulty`.
    pub difficulty: String,
    /// `aue-synth --balance`.
    pub balance: String,
    /// `aue-synth --label-noise`: extra label noise on the training split.
    #[serde(default)]
    pub label_noise: f32,
    /// Variants trained on this set [default: the grid's `variants`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variants: Option<Vec<Variant>>,
}

/// The training settings of one stage (the rest are the tiny preset's demo settings).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StageSettings {
    /// `--epochs`.
    pub epochs: usize,
    /// `--lr`.
    pub lr: f64,
    /// `--lr-milestones`.
    #[serde(default)]
    pub lr_milestones: Vec<usize>,
}

/// A whole grid, as in `crates/report/ablation/*.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GridConfig {
    /// Run seeds: each seeds the synthetic sets and the three stages.
    pub seeds: Vec<u64>,
    /// Training images per set.
    pub train: usize,
    /// Test images per set.
    pub test: usize,
    /// Image side of the synthetic sets, pixels.
    pub image_size: u32,
    /// Model preset of every stage.
    pub preset: String,
    /// Training batch size of every stage.
    pub batch_size: usize,
    /// `--max-steps` of every stage (smoke runs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_steps: Option<usize>,
    /// Variants of stages 2 and 3 trained on every set that does not list its own.
    pub variants: Vec<Variant>,
    /// Stage 1 settings.
    pub stage1: StageSettings,
    /// Stage 2 settings (best.safetensors is chosen by AU F1 against the pseudo-targets, as in
    /// the demo).
    pub stage2: StageSettings,
    /// Stage 3 settings.
    pub stage3: StageSettings,
    /// The synthetic sets.
    pub sets: Vec<SetSpec>,
}

fn grid_err(path: &Path, msg: impl Into<String>) -> ReportError {
    ReportError::Json { what: "ablation grid", path: path.to_owned(), msg: msg.into() }
}

impl GridConfig {
    /// Parses and checks a grid; `path` names the source in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self> {
        let grid: GridConfig = toml::from_str(text).map_err(|e| grid_err(path, e.to_string()))?;
        grid.check().map_err(|msg| grid_err(path, msg))?;
        Ok(grid)
    }

    /// Reads and checks a grid file.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(io_err("cannot read", path))?;
        Self::parse(&text, path)
    }

    /// The built-in default grid, or the quick one.
    pub fn builtin(quick: bool) -> Result<Self> {
        if quick {
            Self::parse(QUICK_GRID, Path::new("crates/report/ablation/quick.toml"))
        } else {
            Self::parse(DEFAULT_GRID, Path::new("crates/report/ablation/default.toml"))
        }
    }

    /// The variants trained on `set`.
    pub fn set_variants<'a>(&'a self, set: &'a SetSpec) -> &'a [Variant] {
        set.variants.as_deref().unwrap_or(&self.variants)
    }

    /// Checks every value; the message names the key.
    pub fn check(&self) -> std::result::Result<(), String> {
        if self.seeds.is_empty() {
            return Err("seeds: give at least one".into());
        }
        let mut seeds = self.seeds.clone();
        seeds.sort_unstable();
        seeds.dedup();
        if seeds.len() != self.seeds.len() {
            return Err(format!("seeds: {:?} repeats a seed", self.seeds));
        }
        if self.train == 0 || self.test == 0 {
            return Err("train, test: each split needs at least one image".into());
        }
        if self.batch_size == 0 || self.batch_size > self.train {
            return Err(format!(
                "batch_size: {} is not in [1, train = {}]",
                self.batch_size, self.train
            ));
        }
        if self.max_steps == Some(0) {
            return Err("max_steps: must be at least 1".into());
        }
        self.preset.parse::<aue_model::Preset>().map_err(|e| format!("preset: {e}"))?;
        for (key, s) in
            [("stage1", &self.stage1), ("stage2", &self.stage2), ("stage3", &self.stage3)]
        {
            if s.epochs == 0 {
                return Err(format!("{key}.epochs: must be at least 1"));
            }
            if !(s.lr.is_finite() && s.lr > 0.0) {
                return Err(format!("{key}.lr: must be a positive number, not {}", s.lr));
            }
        }
        if self.sets.is_empty() {
            return Err("sets: give at least one".into());
        }
        for (i, set) in self.sets.iter().enumerate() {
            let key = format!("sets[{i}] ({})", set.name);
            let name_ok = !set.name.is_empty()
                && set.name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
            if !name_ok {
                return Err(format!("{key}.name: use letters, digits, - and _"));
            }
            if self.sets[..i].iter().any(|s| s.name == set.name) {
                return Err(format!("{key}.name: another set has this name"));
            }
            set.difficulty
                .parse::<DifficultyLevel>()
                .map_err(|e| format!("{key}.difficulty: {e}"))?;
            set.balance.parse::<ClassBalance>().map_err(|e| format!("{key}.balance: {e}"))?;
            if !(0.0..=1.0).contains(&set.label_noise) {
                return Err(format!("{key}.label_noise: {} is not in [0, 1]", set.label_noise));
            }
            let variants = self.set_variants(set);
            if !variants.contains(&Variant::Reference) {
                return Err(format!("{key}.variants: the list must hold `reference`"));
            }
        }
        if !self.variants.contains(&Variant::Reference) {
            return Err("variants: the list must hold `reference`".into());
        }
        Ok(())
    }

    /// The grid as TOML (written into the output folder).
    pub fn to_toml(&self) -> String {
        // Plain data with string keys always serialises.
        toml::to_string(self).unwrap_or_default()
    }

    /// The number of stage trainings of the grid (for progress).
    pub fn trainings(&self) -> usize {
        let per_seed: usize = self.sets.iter().map(|s| 1 + 2 * self.set_variants(s).len()).sum();
        per_seed * self.seeds.len()
    }
}

/// The folders of one grid output folder.
#[derive(Debug, Clone)]
pub struct GridPaths {
    /// The output folder.
    pub root: PathBuf,
}

impl GridPaths {
    /// The synthetic set of `set` for `seed`.
    pub fn data(&self, set: &str, seed: u64) -> PathBuf {
        self.root.join("data").join(format!("{set}-seed{seed}"))
    }

    /// The run folder of `set` and `seed` (holds `stage1` and one folder per variant).
    pub fn seed_dir(&self, set: &str, seed: u64) -> PathBuf {
        self.root.join("runs").join(set).join(format!("seed{seed}"))
    }

    /// The stage 1 folder.
    pub fn stage1(&self, set: &str, seed: u64) -> PathBuf {
        self.seed_dir(set, seed).join("stage1")
    }

    /// The run folder of a variant (holds `stage2` and `stage3`).
    pub fn variant_dir(&self, set: &str, seed: u64, variant: Variant) -> PathBuf {
        self.seed_dir(set, seed).join(variant.name())
    }
}

/// What a step runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Program {
    /// `aue-synth`.
    Synth,
    /// `aue-stage1`, `aue-stage2` or `aue-stage3`.
    Stage(u8),
}

impl Program {
    /// The binary's name.
    pub fn binary(&self) -> String {
        match self {
            Program::Synth => "aue-synth".into(),
            Program::Stage(n) => format!("aue-stage{n}"),
        }
    }
}

/// One command of the grid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// `<set>-seed<k>-<what>`: names the log and the done marker.
    pub id: String,
    /// The binary.
    pub program: Program,
    /// Its arguments.
    pub args: Vec<String>,
}

/// `--name value` pairs as one argument list.
fn flag_list(pairs: &[(&str, String)]) -> Vec<String> {
    pairs.iter().flat_map(|(name, value)| [name.to_string(), value.clone()]).collect()
}

/// The commands that run `grid` into `paths`, in order (a step needs only earlier ones): first
/// every seed's sets, stage 1 and reference stages 2 and 3, seed after seed, then the other
/// variants, so that a grid stopped early holds whole seeds of the main comparison.
pub fn plan(grid: &GridConfig, paths: &GridPaths) -> Vec<Step> {
    let mut steps = Vec::new();
    let mut variant_steps = Vec::new();
    let s = |p: &Path| p.display().to_string();
    for &seed in &grid.seeds {
        for set in &grid.sets {
            let data = paths.data(&set.name, seed);
            let id = |what: &str| format!("{}-seed{seed}-{what}", set.name);
            steps.push(Step {
                id: id("data"),
                program: Program::Synth,
                args: flag_list(&[
                    ("--out", s(&data)),
                    ("--train", grid.train.to_string()),
                    ("--test", grid.test.to_string()),
                    ("--seed", seed.to_string()),
                    ("--size", grid.image_size.to_string()),
                    ("--difficulty", set.difficulty.clone()),
                    ("--balance", set.balance.clone()),
                    ("--label-noise", set.label_noise.to_string()),
                ]),
            });
            let stage_args = |n: u8, run_dir: &Path, st: &StageSettings| {
                let mut a = flag_list(&[
                    ("--dataset", "rafdb".into()),
                    ("--data-root", s(&data)),
                    ("--preset", grid.preset.clone()),
                    ("--device", "cpu".into()),
                    ("--run-dir", s(run_dir)),
                    ("--seed", seed.to_string()),
                    ("--epochs", st.epochs.to_string()),
                    ("--lr", st.lr.to_string()),
                    ("--train-batch-size", grid.batch_size.to_string()),
                    ("--test-batch-size", "100".into()),
                ]);
                a.push("--overwrite".into());
                if !st.lr_milestones.is_empty() {
                    let m: Vec<String> = st.lr_milestones.iter().map(usize::to_string).collect();
                    a.push(format!("--lr-milestones={}", m.join(",")));
                }
                if let Some(m) = grid.max_steps {
                    a.extend(flag_list(&[("--max-steps", m.to_string())]));
                }
                if n == 2 {
                    a.extend(flag_list(&[("--select-by", "au-f1".into())]));
                }
                a
            };
            steps.push(Step {
                id: id("stage1"),
                program: Program::Stage(1),
                args: stage_args(1, &paths.seed_dir(&set.name, seed), &grid.stage1),
            });
            let stage1_best =
                paths.stage1(&set.name, seed).join(aue_contract::layout::BEST_CHECKPOINT);
            for &variant in grid.set_variants(set) {
                let dir = paths.variant_dir(&set.name, seed, variant);
                let flags = variant.flags().iter().map(|f| f.to_string());
                let mut a2 = stage_args(2, &dir, &grid.stage2);
                a2.extend(flag_list(&[("--resume-model", s(&stage1_best))]));
                a2.extend(flags.clone());
                let stage2 = Step {
                    id: id(&format!("{variant}-stage2")),
                    program: Program::Stage(2),
                    args: a2,
                };
                let mut a3 = stage_args(3, &dir, &grid.stage3);
                a3.extend(flags);
                let stage3 = Step {
                    id: id(&format!("{variant}-stage3")),
                    program: Program::Stage(3),
                    args: a3,
                };
                let list =
                    if variant == Variant::Reference { &mut steps } else { &mut variant_steps };
                list.extend([stage2, stage3]);
            }
        }
    }
    steps.extend(variant_steps);
    steps
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_grids_parse_and_plan() {
        let full = GridConfig::builtin(false).unwrap();
        assert!(full.seeds.len() >= 3, "the default grid runs at least 3 seeds");
        let quick = GridConfig::builtin(true).unwrap();
        assert!(quick.train < full.train && quick.max_steps.is_some());
        let paths = GridPaths { root: PathBuf::from("out") };
        let steps = plan(&quick, &paths);
        let trainings = steps.iter().filter(|s| s.program != Program::Synth).count();
        assert_eq!(trainings, quick.trainings());
        assert_eq!(steps.len() - trainings, quick.seeds.len() * quick.sets.len());
        // A variant's stage 2 starts from the shared stage 1 and carries the variant's flags.
        let eiau = steps.iter().find(|s| s.id.ends_with("eiau-0-stage2")).unwrap();
        assert!(eiau.args.windows(2).any(|w| w == ["--eiau-weight", "0"]));
        let resume = eiau.args.iter().position(|a| a == "--resume-model").unwrap();
        assert!(eiau.args[resume + 1].ends_with("stage1/best.safetensors"));
        // The grid survives its own TOML.
        assert_eq!(GridConfig::parse(&quick.to_toml(), Path::new("x")).unwrap(), quick);
    }

    #[test]
    fn bad_grids_name_the_key() {
        let msg =
            |text: &str| GridConfig::parse(text, Path::new("g.toml")).unwrap_err().to_string();
        let bad = QUICK_GRID.replace("difficulty = \"easy\"", "difficulty = \"brutal\"");
        let m = msg(&bad);
        assert!(m.contains("g.toml") && m.contains("difficulty"), "{m}");
        let bad = QUICK_GRID.replace("seeds = [0]", "seeds = []");
        assert!(msg(&bad).contains("seeds"));
        assert!(msg("seeds = [0]").contains("g.toml"));
        assert!(msg(&format!("{QUICK_GRID}\nextra = 1")).contains("extra"));
    }
}

//! The command line shared by the three stage binaries: the flags of [`StageArgs`] under the
//! binary's own name and description.

use aue_model::Stage;
use clap::{Args, Command, FromArgMatches};

use crate::config::StageArgs;

/// The command of `aue-stage<N>`.
pub fn command(stage: Stage) -> Command {
    let about = match stage {
        Stage::Em => {
            "AUE-CRL stage 1 (EM): trains the backbone and the expression branch with \
             cross-entropy (REFERENCE.md section 4)"
        }
        Stage::Au => {
            "AUE-CRL stage 2 (AU): trains the AU branch and the prior table on the frozen \
             backbone, from stage 1's checkpoint"
        }
        Stage::Fuse => {
            "AUE-CRL stage 3 (Fuse): trains the fusion branch and the EM head on everything else \
             frozen, from stage 2's checkpoint"
        }
    };
    let name = match stage {
        Stage::Em => "aue-stage1",
        Stage::Au => "aue-stage2",
        Stage::Fuse => "aue-stage3",
    };
    // The about text is set after the flags: `augment_args` would replace it with the doc
    // comment of `StageArgs`.
    let cmd = StageArgs::augment_args(Command::new(name))
        .about(about)
        .long_about(None)
        .version(env!("CARGO_PKG_VERSION"));
    // Each stage shows only the starting-point flag it accepts.
    match stage {
        Stage::Em => cmd.mut_arg("resume_model", |a| a.hide(true)),
        Stage::Au | Stage::Fuse => cmd.mut_arg("pretrained", |a| a.hide(true)),
    }
}

/// Parses the process arguments (exits with clap's message on bad flags or `--help`).
pub fn parse(stage: Stage) -> StageArgs {
    let matches = command(stage).get_matches();
    StageArgs::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_parse() {
        let m = command(Stage::Em)
            .try_get_matches_from([
                "aue-stage1",
                "--preset",
                "tiny",
                "--dataset",
                "rafdb-compound",
                "--lr-milestones",
                "3,6",
                "--frozen-eval",
                "--device",
                "cuda:1",
            ])
            .unwrap();
        let a = StageArgs::from_arg_matches(&m).unwrap();
        assert_eq!(a.backbone, Some(aue_model::Preset::Tiny));
        assert_eq!(a.dataset, Some(crate::config::Dataset::RafdbCompound));
        assert_eq!(a.lr_milestones, Some(vec![3, 6]));
        assert_eq!(a.frozen_eval, Some(true));
        assert_eq!(a.device, Some(crate::config::DeviceSpec::Cuda(1)));
        command(Stage::Au).debug_assert();
        assert!(command(Stage::Em).try_get_matches_from(["x", "--backbone", "vgg"]).is_err());
    }
}

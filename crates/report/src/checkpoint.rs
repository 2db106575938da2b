//! What the report reads from checkpoints without loading a model: the trainer's metadata and
//! the one small tensor it draws, the 7 x 17 `PriorKnowledgeTable` (docs/METHOD.md section 2),
//! both through the stage contract (`aue-contract`), the one reader of checkpoint files.

use std::path::Path;

pub use aue_contract::inspect::{CheckpointInfo, PRIOR_TABLE_KEY, PriorTable};
use aue_model::Stage;

use crate::error::Result;

/// Reads the learned `PriorKnowledgeTable` of a stage-2 or stage-3 checkpoint (stage 1 does
/// not train it: its table is the initial value plus nothing learned, so it is refused).
/// Only the header and the table's 476 bytes are read.
pub fn read_prior_table(path: &Path) -> Result<(CheckpointInfo, PriorTable)> {
    let info = CheckpointInfo::read_metadata(path)?;
    info.expect_stage(&[Stage::Au, Stage::Fuse], "the prior table (learned in stage 2)")?;
    let table = aue_contract::inspect::read_prior_table(path)?;
    Ok((info, table))
}

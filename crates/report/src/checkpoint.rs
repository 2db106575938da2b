//! What the report reads from checkpoints without loading a model: the trainer's `__metadata__`
//! (aue-train's [`ModelMeta`], read through aue-model's header-only `read_metadata`) and the one
//! small tensor it draws, the 7 x 17 `PriorKnowledgeTable` (REFERENCE.md section 2), read from
//! the safetensors header and that tensor's bytes alone.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use aue_core::{NUM_AUS, NUM_BASIC};
use aue_model::{Stage, checkpoint};
use aue_train::checkpoints::ModelMeta;
use safetensors::Dtype;
use safetensors::tensor::Metadata;

use crate::error::{ReportError, Result, io_err};

/// The parameter name of the prior table in a checkpoint (REFERENCE.md section 2).
pub const PRIOR_TABLE_KEY: &str = "PriorKnowledgeTable";

/// Largest safetensors header read (the safetensors crate's own limit).
const MAX_HEADER: u64 = 100_000_000;

/// A 7 x 17 prior table, rows = expressions (label order), columns = AUs (AU order).
pub type PriorTable = [[f32; NUM_AUS]; NUM_BASIC];

/// A checkpoint's trainer metadata.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckpointInfo {
    /// The file.
    pub path: PathBuf,
    /// aue-model's checkpoint format version (`aue_format`), if recorded.
    pub format: Option<String>,
    /// The trainer's metadata: stage, preset, config, epoch, metrics, dataset, labels, parent.
    pub meta: ModelMeta,
}

impl CheckpointInfo {
    /// Reads the metadata of `path` (header only). A checkpoint without trainer metadata (a
    /// foreign file) is an error: the report needs to know its stage and labels.
    pub fn read(path: &Path) -> Result<Self> {
        let map = checkpoint::read_metadata(path).map_err(|e| ReportError::Checkpoint {
            path: path.to_owned(),
            msg: format!("cannot read its metadata: {e}"),
        })?;
        let meta = ModelMeta::from_map(path, &map)
            .map_err(|source| ReportError::Train { op: "read checkpoint metadata", source })?
            .ok_or_else(|| ReportError::Checkpoint {
                path: path.to_owned(),
                msg: "has no training metadata (stage, labels): not written by the aue stages"
                    .into(),
            })?;
        Ok(Self { path: path.to_owned(), format: map.get(checkpoint::FORMAT_KEY).cloned(), meta })
    }

    /// The stage that wrote the checkpoint.
    pub fn stage(&self) -> Stage {
        self.meta.stage
    }

    /// Errors unless the checkpoint was written by one of `allowed` (`what` says what for).
    pub fn expect_stage(&self, allowed: &[Stage], what: &str) -> Result<()> {
        if allowed.contains(&self.meta.stage) {
            return Ok(());
        }
        let names: Vec<String> = allowed.iter().map(|s| format!("stage {}", s.number())).collect();
        Err(ReportError::WrongStage {
            path: self.path.clone(),
            found: self.meta.stage.number(),
            expected: format!("a {} checkpoint ({what})", names.join(" or ")),
        })
    }

    /// Errors unless the checkpoint's class names equal `labels` (`source` names where those
    /// come from).
    pub fn expect_labels(&self, labels: &[String], source: &str) -> Result<()> {
        if self.meta.labels == labels {
            return Ok(());
        }
        Err(ReportError::LabelMismatch {
            left: format!("checkpoint {} (dataset `{}`)", self.path.display(), self.meta.dataset),
            left_labels: self.meta.labels.clone(),
            right: source.to_string(),
            right_labels: labels.to_vec(),
        })
    }
}

/// Reads the learned `PriorKnowledgeTable` of a stage-2 or stage-3 checkpoint (stage 1 does
/// not train it: its table is the initial value plus nothing learned, so it is refused).
/// Only the header and the table's 476 bytes are read.
pub fn read_prior_table(path: &Path) -> Result<(CheckpointInfo, PriorTable)> {
    let info = CheckpointInfo::read(path)?;
    info.expect_stage(&[Stage::Au, Stage::Fuse], "the prior table is learned in stage 2")?;
    let table = read_prior_tensor(path)?;
    Ok((info, table))
}

/// Reads the `PriorKnowledgeTable` tensor of any safetensors file, checking dtype and shape.
pub fn read_prior_tensor(path: &Path) -> Result<PriorTable> {
    let bad = |msg: String| ReportError::Checkpoint { path: path.to_owned(), msg };
    let mut file = File::open(path).map_err(io_err("cannot open checkpoint", path))?;
    let file_len = file.metadata().map_err(io_err("cannot stat checkpoint", path))?.len();
    let mut len = [0u8; 8];
    file.read_exact(&mut len)
        .map_err(|_| bad("not a safetensors file (shorter than 8 bytes)".into()))?;
    let n = u64::from_le_bytes(len);
    if n > MAX_HEADER || 8 + n > file_len {
        return Err(bad(format!("header length {n} does not fit the file ({file_len} bytes)")));
    }
    let mut header = vec![0u8; n as usize];
    file.read_exact(&mut header).map_err(io_err("cannot read checkpoint header", path))?;
    let meta: Metadata = serde_json::from_slice(&header)
        .map_err(|e| bad(format!("malformed safetensors header: {e}")))?;
    let info = meta
        .info(PRIOR_TABLE_KEY)
        .ok_or_else(|| bad(format!("holds no `{PRIOR_TABLE_KEY}` tensor")))?;
    if info.dtype != Dtype::F32 || info.shape != [NUM_BASIC, NUM_AUS] {
        return Err(bad(format!(
            "`{PRIOR_TABLE_KEY}` is {:?} {:?}, expected F32 [{NUM_BASIC}, {NUM_AUS}]",
            info.dtype, info.shape
        )));
    }
    let (begin, end) = info.data_offsets;
    let want = NUM_BASIC * NUM_AUS * 4;
    if end.checked_sub(begin) != Some(want) || 8 + n + end as u64 > file_len {
        return Err(bad(format!(
            "`{PRIOR_TABLE_KEY}` data [{begin}, {end}) does not fit the file"
        )));
    }
    file.seek(SeekFrom::Start(8 + n + begin as u64)).map_err(io_err("cannot seek in", path))?;
    let mut bytes = vec![0u8; want];
    file.read_exact(&mut bytes).map_err(io_err("cannot read the prior table of", path))?;
    let mut table = [[0f32; NUM_AUS]; NUM_BASIC];
    for (i, chunk) in bytes.chunks_exact(4).enumerate() {
        let v = f32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        if !v.is_finite() {
            return Err(bad(format!("`{PRIOR_TABLE_KEY}` holds a non-finite value ({v})")));
        }
        table[i / NUM_AUS][i % NUM_AUS] = v;
    }
    Ok(table)
}

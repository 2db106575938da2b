//! `aue-export`'s library: a trained AUE-CRL checkpoint as an ONNX graph, so that a model trained
//! with aue can be served from any ONNX runtime (C++, C#, the browser, phones).
//!
//! The graph is aue's eval-mode forward pass (docs/METHOD.md section 3, with the reference's
//! quirks) built by walking the model's structure ([`graph`]), with every BatchNorm folded into
//! the layer before it ([`fold`]) and the 34 AU crops taken inside the graph from `au_loc`.
//! Beside it goes `model.json` ([`meta`]): stage, label names, AU order, input size,
//! normalisation, inputs and outputs. [`check`] runs the graph in tract and compares it with
//! aue's own forward pass.
//!
//! ```text
//! aue-export --checkpoint checkpoints/demo/stage3/best.safetensors --out model.onnx
//! ```

pub mod check;
pub mod error;
pub mod fold;
pub mod graph;
pub mod meta;
pub mod onnx;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use aue_contract::CheckpointInfo;
use aue_model::{AueModel, Preset};
use prost::Message;
use sha2::{Digest, Sha256};
use tract_onnx::pb;

pub use error::{ExportError, Result};
pub use graph::{GraphSpec, Output};
pub use meta::ModelJson;

/// Largest message protobuf implementations read (2 GiB - 1).
const PROTOBUF_LIMIT: u64 = i32::MAX as u64;

/// What to export.
#[derive(Debug, Clone)]
pub struct ExportConfig {
    /// The checkpoint (`.safetensors`, with the trainer's metadata or `preset`).
    pub checkpoint: PathBuf,
    /// The ONNX file to write; `model.json` goes beside it as `<stem>.json`.
    pub out: PathBuf,
    /// The preset, required for a checkpoint without trainer metadata.
    pub preset: Option<Preset>,
    /// Normalisation in the graph: `image` is then u8 [N, S, S, 3] RGB.
    pub preprocess: bool,
    /// Every output of the eval forward pass, not only the stage's.
    pub all_outputs: bool,
    /// Write the weights to [`ExportConfig::data_path`] (ONNX external data) instead of into the
    /// ONNX file; done anyway when one file would pass protobuf's 2 GiB limit.
    pub external_data: bool,
}

impl ExportConfig {
    /// The path of the JSON description: the ONNX path with the extension `json`.
    pub fn json_path(&self) -> PathBuf {
        self.out.with_extension("json")
    }

    /// The external weights file: the ONNX path with `.data` appended.
    pub fn data_path(&self) -> PathBuf {
        let mut name = self.out.file_name().unwrap_or_default().to_os_string();
        name.push(".data");
        self.out.with_file_name(name)
    }

    /// The graph to build for a checkpoint of `info.stage`.
    pub fn spec(&self, info: &CheckpointInfo) -> GraphSpec {
        let outputs = if self.all_outputs {
            Output::all_for_stage(info.stage())
        } else {
            Output::for_stage(info.stage())
        };
        GraphSpec { stage: info.stage(), outputs, preprocess: self.preprocess }
    }
}

/// An exported model in memory.
pub struct Exported {
    /// The ONNX model.
    pub proto: pb::ModelProto,
    /// Its description.
    pub json: ModelJson,
}

/// An encoded model: the ONNX file's bytes and, with external data, the weights file's.
pub struct Encoded {
    /// The ONNX file.
    pub onnx: Vec<u8>,
    /// The external weights file, if the weights are not inside `onnx`.
    pub data: Option<Vec<u8>>,
}

/// Initializers at least this large go to the external data file (small ones, shapes and
/// constants, stay inline, which ONNX allows).
const EXTERNAL_MIN_BYTES: usize = 1024;
/// Offsets in the external data file are aligned to this (so that a runtime may map it).
const EXTERNAL_ALIGN: usize = 4096;

impl Exported {
    /// Encode the model. With `json.external_data` set, every initializer of at least 1 KiB is
    /// moved into the data file, each at a 4 KiB-aligned offset, and described by ONNX's
    /// external-data keys (`location`, `offset`, `length`). A single file over protobuf's
    /// 2 GiB message limit is an error. Returns the description beside the bytes.
    pub fn encode(mut self) -> Result<(Encoded, ModelJson)> {
        let data = match (&self.json.external_data, self.proto.graph.as_mut()) {
            (Some(location), Some(graph)) => {
                let mut data = Vec::new();
                for t in graph.initializer.iter_mut() {
                    if t.raw_data.len() < EXTERNAL_MIN_BYTES {
                        continue;
                    }
                    data.resize(data.len().next_multiple_of(EXTERNAL_ALIGN), 0);
                    let (offset, length) = (data.len(), t.raw_data.len());
                    data.append(&mut t.raw_data);
                    let entry =
                        |k: &str, v: String| pb::StringStringEntryProto { key: k.into(), value: v };
                    t.external_data = vec![
                        entry("location", location.clone()),
                        entry("offset", offset.to_string()),
                        entry("length", length.to_string()),
                    ];
                    t.data_location = Some(pb::tensor_proto::DataLocation::External as i32);
                }
                Some(data)
            }
            _ => None,
        };
        let bytes = self.proto.encoded_len() as u64;
        if bytes > PROTOBUF_LIMIT {
            return Err(ExportError::TooLarge { bytes });
        }
        Ok((Encoded { onnx: self.proto.encode_to_vec(), data }, self.json))
    }
}

/// Resolve the checkpoint (stage, preset, sizes, labels: aue-predict's reading) and load it on
/// the CPU.
pub fn load_checkpoint(cfg: &ExportConfig) -> Result<(CheckpointInfo, AueModel)> {
    let info = CheckpointInfo::read(&cfg.checkpoint, cfg.preset)?;
    let model = info.load_model(&candle_core::Device::Cpu)?;
    Ok((info, model))
}

/// The sha256 of a file, hex.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut file = std::fs::File::open(path).map_err(|e| ExportError::io(path, e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(|e| ExportError::io(path, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

fn file_name(path: &Path) -> String {
    path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

/// Build the ONNX model of `model` (a checkpoint described by `info`) and its `model.json`.
pub fn export(model: &AueModel, info: &CheckpointInfo, cfg: &ExportConfig) -> Result<Exported> {
    let spec = cfg.spec(info);
    let built = graph::build(model, &spec)?;
    // The weights decide the file size; the graph's structure adds well under a megabyte.
    let external = cfg.external_data || built.graph.weight_bytes() + (64 << 20) > PROTOBUF_LIMIT;
    let sha = sha256_file(&cfg.checkpoint)?;
    let mut json = ModelJson::new(
        info,
        &file_name(&cfg.out),
        (&file_name(&cfg.checkpoint), &sha),
        cfg.preprocess,
        built.inputs,
        built.outputs,
    );
    if external {
        json.external_data = Some(file_name(&cfg.data_path()));
    }
    let text = serde_json::to_string(&json)
        .map_err(|e| ExportError::Invalid(format!("model.json: {e}")))?;
    let labels = serde_json::to_string(&json.labels)
        .map_err(|e| ExportError::Invalid(format!("labels: {e}")))?;
    let metadata = [
        ("aue".to_string(), text),
        ("stage".to_string(), info.stage().number().to_string()),
        ("labels".to_string(), labels),
    ];
    let doc = format!(
        "AUE-CRL {} model of a stage-{} checkpoint ({}), eval mode, BatchNorm folded. See the \
         `aue` metadata (model.json) for inputs, outputs and normalisation.",
        info.meta.preset,
        info.stage().number(),
        file_name(&cfg.checkpoint)
    );
    let proto = built.graph.finish(
        &format!("aue_{}_stage{}", info.meta.preset, info.stage().number()),
        &doc,
        &metadata,
    );
    Ok(Exported { proto, json })
}

/// Write `bytes` to `path` atomically: a temp file in the same folder, fsync, rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let folder = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let tmp = folder.join(format!(".{}.tmp-{}", file_name(path), std::process::id()));
    let result = (|| -> Result<()> {
        let mut f = std::fs::File::create(&tmp).map_err(|e| ExportError::io(&tmp, e))?;
        f.write_all(bytes).map_err(|e| ExportError::io(&tmp, e))?;
        f.sync_all().map_err(|e| ExportError::io(&tmp, e))?;
        std::fs::rename(&tmp, path).map_err(|e| ExportError::io(path, e))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Write the encoded model to `cfg.out` (and its weights to [`ExportConfig::data_path`] when
/// they are external) and its description to [`ExportConfig::json_path`].
pub fn write(cfg: &ExportConfig, encoded: &Encoded, json: &ModelJson) -> Result<()> {
    let json_path = cfg.json_path();
    if json_path == cfg.out {
        return Err(ExportError::Invalid(format!(
            "--out {}: the ONNX file needs another extension than .json (model.json goes beside it)",
            cfg.out.display()
        )));
    }
    let mut text = serde_json::to_string_pretty(json)
        .map_err(|e| ExportError::Invalid(format!("model.json: {e}")))?;
    text.push('\n');
    if let Some(data) = &encoded.data {
        write_atomic(&cfg.data_path(), data)?;
    }
    write_atomic(&cfg.out, &encoded.onnx)?;
    write_atomic(&json_path, text.as_bytes())
}

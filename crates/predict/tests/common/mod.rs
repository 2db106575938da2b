//! Helpers shared by the integration tests: a tiny checkpoint saved as the trainer saves one,
//! running the binary, reading its CSV.

#![allow(dead_code)] // Each test file uses its own subset.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use aue_contract::meta::ModelMeta;
use aue_model::{AueModel, ModelConfig, Preset, Stage};
use candle_core::Device;

pub const BIN: &str = env!("CARGO_BIN_EXE_aue-predict");
pub const FACE: &str =
    concat!(env!("CARGO_MANIFEST_DIR"), "/../landmarks/tests/fixtures/astronaut_face.png");

/// A tiny model with default init, saved as the trainer saves a checkpoint of `stage`.
pub fn tiny_checkpoint(dir: &Path, stage: Stage, with_meta: bool) -> PathBuf {
    let config = ModelConfig::preset(Preset::Tiny);
    let model = AueModel::new(&config, &Device::Cpu).unwrap();
    aue_model::init::init_default(model.varmap(), 7).unwrap();
    let path = dir.join(format!("stage{}.safetensors", stage.number()));
    let meta = ModelMeta::untrained(stage, Preset::Tiny, &config);
    let map = if with_meta { meta.to_map() } else { BTreeMap::new() };
    aue_contract::format::save(model.varmap(), &path, &map).unwrap();
    path
}

pub fn run(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().unwrap()
}

pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The header and the rows (as column -> value maps) of a CSV written by aue-predict.
pub fn parse_csv(text: &str) -> (Vec<String>, Vec<BTreeMap<String, String>>) {
    // Fields here hold no quotes except the error message; split on commas outside quotes.
    let split = |line: &str| {
        let (mut out, mut cur, mut q) = (Vec::new(), String::new(), false);
        for c in line.chars() {
            match c {
                '"' => q = !q,
                ',' if !q => out.push(std::mem::take(&mut cur)),
                _ => cur.push(c),
            }
        }
        out.push(cur);
        out
    };
    let mut lines = text.lines();
    let header = split(lines.next().unwrap());
    let rows = lines
        .map(|l| {
            let f = split(l);
            assert_eq!(f.len(), header.len(), "{l}");
            header.iter().cloned().zip(f).collect()
        })
        .collect();
    (header, rows)
}

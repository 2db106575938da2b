//! Freezing rules of docs/METHOD.md section 4, checked on one real training step per stage of the
//! tiny model: the trainable tensors change, every other parameter stays bit-identical, and the
//! BatchNorm running statistics of frozen parts follow the reference's modes (quirk) or, with
//! `frozen_eval`, stay put.

use std::collections::BTreeMap;

mod common;

use aue_contract::{DeviceBatch, SplitAccumulator, SplitName};
use aue_model::{AueModel, ModelConfig, Preset, Stage, is_bn_buffer};
use aue_train::engine::Trainer;
use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;

/// Every reference state entry's values, by key (each crop net and fusion head on its own, not
/// as the group variable that holds them).
fn snapshot(map: &VarMap) -> BTreeMap<String, Vec<f32>> {
    aue_model::state::state_tensors(map)
        .unwrap()
        .into_iter()
        .map(|(k, v)| {
            let t = v.flatten_all().unwrap().to_dtype(DType::F32).unwrap();
            (k, t.to_vec1::<f32>().unwrap())
        })
        .collect()
}

/// A tiny model with the default initialisation, and a batch of 4 random images with valid
/// AU centres (grid 16, centres in [3, 13]) and labels covering several classes.
fn setup() -> (VarMap, AueModel, DeviceBatch) {
    let dev = Device::Cpu;
    let cfg = ModelConfig::preset(Preset::Tiny);
    let map = VarMap::new();
    let model = AueModel::with_varmap(&map, &cfg, &dev).unwrap();
    aue_model::init::init_default(&map, 3).unwrap();
    let s = cfg.input_size;
    let images = Tensor::randn(0f32, 1.0, (4, 3, s, s), &dev).unwrap();
    let loc: Vec<i64> = (0..4 * 17 * 4).map(|i| 3 + (i * 7 % 11) as i64).collect();
    let au_loc = Tensor::from_vec(loc, (4, 17, 4), &dev).unwrap();
    let labels = Tensor::new(&[0i64, 3, 5, 6], &dev).unwrap();
    (map, model, DeviceBatch { images, au_loc, labels, au_gt: None })
}

/// Runs one step of `stage` and returns the keys whose values changed.
fn changed_after_step(
    stage: Stage,
    frozen_eval: bool,
) -> (Vec<String>, BTreeMap<String, Vec<f32>>) {
    let (map, model, batch) = setup();
    let before = snapshot(&map);
    let def = common::def(stage);
    let mut trainer = Trainer::new(def, model, 0.9, frozen_eval);
    let mut acc = SplitAccumulator::new(def.records(), SplitName::Train, 7, &Device::Cpu).unwrap();
    let loss = trainer.train_step(&batch, 0.1, &mut acc).unwrap();
    assert!(loss.to_scalar::<f32>().unwrap().is_finite());
    let after = snapshot(&map);
    let changed = before.iter().filter(|(k, v)| after[*k] != **v).map(|(k, _)| k.clone()).collect();
    (changed, before)
}

/// Trainable tensors whose gradient is zero by construction, so a step need not move them:
/// - `backbone.fc` is in stage 1's set (a `backbone.` key) but no branch uses it, as in the
///   reference;
/// - the fusion Linear biases sit right before a train-mode BatchNorm1d, whose batch mean
///   cancels them (their gradient is zero up to rounding).
fn unused(key: &str) -> bool {
    key.starts_with("backbone.fc.")
        || key == "fc_em_fuse_3.1.bias"
        || (key.starts_with("fc_au_fuse_3.") && key.ends_with(".1.bias"))
}

/// The per-AU fusion layers reach the loss only through the attention logit
/// `relu(fc_attention_fuse_3(em * au_i))`: an AU row whose logit is negative for the whole batch
/// gets no gradient in that step. At least one of them must move.
fn behind_relu(key: &str) -> bool {
    key.starts_with("fc_au_fuse_3.") && !key.ends_with(".1.bias")
}

fn check_parameters(stage: Stage, changed: &[String], all: &BTreeMap<String, Vec<f32>>) {
    if stage == Stage::Fuse {
        let moved = changed.iter().filter(|k| !is_bn_buffer(k) && behind_relu(k)).count();
        assert!(moved > 0, "no fc_au_fuse_3 parameter changed");
    }
    for key in all.keys().filter(|k| !is_bn_buffer(k)) {
        let moved = changed.contains(key);
        let trainable = common::def(stage).trainable(key);
        if !trainable {
            assert!(!moved, "stage {}: frozen `{key}` changed", stage.number());
        } else if !unused(key) && !behind_relu(key) {
            assert!(moved, "stage {}: trainable `{key}` did not change", stage.number());
        }
    }
}

fn buffer_moved(changed: &[String], prefix: &str) -> bool {
    changed.iter().any(|k| k.starts_with(prefix) && k.ends_with("running_mean"))
}

#[test]
fn stage1_trains_backbone_and_em_branch_only() {
    let (changed, all) = changed_after_step(Stage::Em, false);
    check_parameters(Stage::Em, &changed, &all);
    assert!(buffer_moved(&changed, "backbone."));
    assert!(buffer_moved(&changed, "reduce_dim_em."));
    // The AU branch does not run in stage 1: its statistics stay.
    assert!(!buffer_moved(&changed, "deconv_layer1."));
}

#[test]
fn stage2_trains_au_branch_and_table_with_backbone_bn_in_train_mode() {
    let (changed, all) = changed_after_step(Stage::Au, false);
    check_parameters(Stage::Au, &changed, &all);
    assert!(changed.iter().any(|k| k == "PriorKnowledgeTable"));
    // quirk: the frozen backbone's BatchNorm still updates its running statistics.
    assert!(buffer_moved(&changed, "backbone."), "stage 2 quirk: backbone BN statistics");
    assert!(buffer_moved(&changed, "reduce_dim_1_au."));
}

#[test]
fn stage2_frozen_eval_keeps_backbone_statistics() {
    let (changed, all) = changed_after_step(Stage::Au, true);
    check_parameters(Stage::Au, &changed, &all);
    assert!(!buffer_moved(&changed, "backbone."));
    assert!(buffer_moved(&changed, "reduce_dim_1_au."));
}

#[test]
fn stage3_trains_fusion_and_em_head_with_frozen_branches_in_train_mode() {
    let (changed, all) = changed_after_step(Stage::Fuse, false);
    check_parameters(Stage::Fuse, &changed, &all);
    assert!(changed.iter().any(|k| k == "pred_em.weight"));
    // The backbone is in eval mode in stage 3 (the reference's backbone.eval()).
    assert!(!buffer_moved(&changed, "backbone."));
    // quirk: the frozen EM-reduce and AU-decoder BatchNorms update their statistics.
    assert!(buffer_moved(&changed, "reduce_dim_em."), "stage 3 quirk: EM reduce BN statistics");
    assert!(buffer_moved(&changed, "deconv_layer2."), "stage 3 quirk: AU decoder BN statistics");
}

#[test]
fn stage3_frozen_eval_keeps_every_frozen_statistic() {
    let (changed, all) = changed_after_step(Stage::Fuse, true);
    check_parameters(Stage::Fuse, &changed, &all);
    for prefix in ["backbone.", "reduce_dim_em.", "deconv_layer", "reduce_dim_1_au."] {
        assert!(!buffer_moved(&changed, prefix), "{prefix} statistics moved under frozen_eval");
    }
    // The fusion branch's own BatchNorm1d layers are trained, in train mode.
    assert!(buffer_moved(&changed, "fc_em_fuse_3."));
}

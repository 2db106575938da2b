//! Checkpoint I/O: atomic save with metadata, strict load, torchvision import (docs/FILES.md
//! "Model state").

use std::collections::BTreeMap;
use std::path::Path;

use aue_contract::ContractError;
use aue_contract::format::{
    self as checkpoint, FORMAT_KEY, import_torchvision, load, read_metadata, save,
};
use aue_model::init::{fill_parity, init_default};
use aue_model::state::{state_entries, state_tensors};
use aue_model::{AueModel, BlockKind, ModelConfig, Preset};
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarMap;

fn tiny() -> AueModel {
    AueModel::new(&ModelConfig::preset(Preset::Tiny), &Device::Cpu).unwrap()
}

/// The reference state dict's values by key (group variables expanded).
fn values(map: &VarMap) -> BTreeMap<String, Vec<f64>> {
    state_tensors(map)
        .unwrap()
        .into_iter()
        .map(|(k, v)| {
            (k, v.flatten_all().unwrap().to_dtype(DType::F64).unwrap().to_vec1::<f64>().unwrap())
        })
        .collect()
}

fn meta() -> BTreeMap<String, String> {
    BTreeMap::from([
        ("stage".to_string(), "em".to_string()),
        ("epoch".to_string(), "3".to_string()),
    ])
}

#[test]
fn save_then_load_round_trips_every_variable_and_the_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    let a = tiny();
    init_default(a.varmap(), 1).unwrap();
    save(a.varmap(), &path, &meta()).unwrap();
    // Only the checkpoint is left in the folder (the temp file was renamed).
    let names: Vec<_> =
        std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names, ["model.safetensors"]);

    let m = read_metadata(&path).unwrap();
    assert_eq!(m["stage"], "em");
    assert_eq!(m[FORMAT_KEY], checkpoint::FORMAT_VERSION);

    let b = tiny();
    assert_eq!(load(b.varmap(), &path).unwrap(), m);
    assert_eq!(values(a.varmap()), values(b.varmap()));
    let nbt = b.varmap().data().lock().unwrap()["backbone.bn1.num_batches_tracked"].clone();
    assert_eq!((nbt.dtype(), nbt.dims()), (DType::I64, &[][..]));

    // The file is plain safetensors.
    let bytes = std::fs::read(&path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    // Under the reference keys: the stacked crop nets are written one crop per key.
    assert_eq!(st.len(), state_entries(a.varmap()).len());
    assert!(st.names().iter().all(|k| !k.contains('*')));
    let crop = st.tensor("Crop_Net_2.33.0.weight").unwrap();
    let want = state_tensors(a.varmap()).unwrap()["Crop_Net_2.33.0.weight"].clone();
    assert_eq!(crop.shape(), want.dims());
    let got: Vec<f32> =
        crop.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
    assert_eq!(got, want.flatten_all().unwrap().to_vec1::<f32>().unwrap());
    assert_eq!(
        st.tensor("backbone.bn1.num_batches_tracked").unwrap().dtype(),
        safetensors::Dtype::I64
    );
}

/// An f64 model saved as F64 (`--checkpoint-dtype f64`): every float entry is F64 and holds the
/// f64 values exactly; an f64 model loads it bit for bit, and the f32 readers (`load_model`, which
/// aue-report and aue-predict use, and the prior-table reader) round it to nearest.
#[test]
fn f64_files_load_exactly_into_f64_and_rounded_into_f32() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model64.safetensors");
    let config = ModelConfig::preset(Preset::Tiny);
    let a = AueModel::with_dtype(&VarMap::new(), &config, &Device::Cpu, DType::F64).unwrap();
    init_default(a.varmap(), 1).unwrap();
    // Values an f32 cannot hold: the saved file must keep them.
    for var in a.varmap().all_vars() {
        if var.dtype() == DType::F64 {
            var.set(&(var.as_tensor() * (1.0 + 1e-12)).unwrap()).unwrap();
        }
    }
    checkpoint::save_as(a.varmap(), &path, &meta(), DType::F64).unwrap();
    for (key, (dtype, _)) in checkpoint::tensor_infos(&path).unwrap() {
        assert!(matches!(dtype, DType::F64 | DType::I64), "`{key}` is {dtype:?}");
    }

    let b = AueModel::with_dtype(&VarMap::new(), &config, &Device::Cpu, DType::F64).unwrap();
    load(b.varmap(), &path).unwrap();
    assert_eq!(values(a.varmap()), values(b.varmap()));

    let rounded: BTreeMap<String, Vec<f64>> = values(a.varmap())
        .into_iter()
        .map(|(k, v)| (k, v.into_iter().map(|x| x as f32 as f64).collect()))
        .collect();
    let (c, _) = checkpoint::load_model(&path, &config, &Device::Cpu).unwrap();
    assert!(c.varmap().all_vars().iter().all(|v| v.dtype() != DType::F64));
    assert_eq!(values(c.varmap()), rounded);
    let table = aue_contract::inspect::read_prior_table(&path).unwrap();
    let want = &rounded["PriorKnowledgeTable"];
    let got: Vec<f64> = table.iter().flatten().map(|&x| x as f64).collect();
    assert_eq!(&got, want);
}

/// A change to a checkpoint's key -> tensor map.
type Edit = dyn FnOnce(&mut BTreeMap<String, Tensor>);

/// Save a copy of `map` changed by `edit` (which gets the key -> tensor map).
fn save_edited(map: &VarMap, path: &Path, edit: impl FnOnce(&mut BTreeMap<String, Tensor>)) {
    let mut tensors: BTreeMap<String, Tensor> = state_tensors(map).unwrap();
    edit(&mut tensors);
    let out = VarMap::new();
    for (k, t) in tensors {
        out.data().lock().unwrap().insert(k, Var::from_tensor(&t).unwrap());
    }
    save(&out, path, &meta()).unwrap();
}

#[test]
fn load_is_strict_and_names_the_key_and_changes_nothing_on_error() {
    let dir = tempfile::tempdir().unwrap();
    let source = tiny();
    init_default(source.varmap(), 2).unwrap();
    let target = tiny();
    fill_parity(target.varmap()).unwrap();
    let before = values(target.varmap());
    let cases: Vec<(&str, Box<Edit>, &str)> = vec![
        (
            "missing",
            Box::new(|t| drop(t.remove("pred_au.0.bias"))),
            "missing tensor `pred_au.0.bias`",
        ),
        (
            "extra",
            Box::new(|t| {
                drop(t.insert(
                    "pred_au.1.bias".into(),
                    Tensor::zeros(17, DType::F32, &Device::Cpu).unwrap(),
                ))
            }),
            "unexpected tensor `pred_au.1.bias`",
        ),
        (
            "shape",
            Box::new(|t| {
                drop(t.insert(
                    "pred_em.bias".into(),
                    Tensor::zeros(8, DType::F32, &Device::Cpu).unwrap(),
                ))
            }),
            "tensor `pred_em.bias` has shape [8], expected [7]",
        ),
        (
            "dtype",
            Box::new(|t| {
                let k = "backbone.bn1.num_batches_tracked";
                t.insert(k.into(), Tensor::zeros((), DType::F32, &Device::Cpu).unwrap());
            }),
            "tensor `backbone.bn1.num_batches_tracked` has dtype F32, expected I64",
        ),
    ];
    for (name, edit, expect) in cases {
        let path = dir.path().join(format!("{name}.safetensors"));
        save_edited(source.varmap(), &path, edit);
        let err = load(target.varmap(), &path).unwrap_err().to_string();
        assert!(
            err.contains(expect) && err.contains(&format!("{name}.safetensors")),
            "{name}: {err}"
        );
        assert_eq!(values(target.varmap()), before, "{name}: a failed load changed the model");
    }
}

#[test]
fn unreadable_files_are_errors_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("junk.safetensors");
    std::fs::write(&path, b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}......").unwrap();
    let err = load(tiny().varmap(), &path).unwrap_err();
    assert!(
        matches!(err, ContractError::BadFile { .. })
            && err.to_string().contains("junk.safetensors"),
        "{err}"
    );
    let err = read_metadata(dir.path().join("absent.safetensors")).unwrap_err().to_string();
    assert!(err.contains("absent.safetensors"), "{err}");
}

/// torchvision's ResNet-18 topology at 1/32 of its widths (the .pth fixture's).
fn micro() -> AueModel {
    let cfg = ModelConfig {
        block: BlockKind::Basic,
        layers: [2, 2, 2, 2],
        stem: 2,
        planes: [2, 4, 8, 16],
        input_size: 64,
        em_dim: 8,
        fuse_dim: 8,
        au_feat: 4,
        crop_channels: 4,
        num_classes: 7,
        dropout: 0.5,
    };
    AueModel::new(&cfg, &Device::Cpu).unwrap()
}

fn backbone_values(map: &VarMap) -> BTreeMap<String, Vec<f64>> {
    values(map)
        .into_iter()
        .filter(|(k, _)| k.starts_with("backbone.") && !k.starts_with("backbone.fc."))
        .collect()
}

#[test]
fn imports_a_torchvision_pth_state_dict() {
    // Written by tests/fixtures/make_torchvision_pth.py with the parity rule's values.
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/torchvision_micro.pth");
    let model = micro();
    let summary = import_torchvision(model.varmap(), &path).unwrap();
    assert_eq!((summary.ignored_fc, summary.zeroed_batch_counters), (2, 0));
    let expect = micro();
    fill_parity(expect.varmap()).unwrap();
    let (got, want) = (backbone_values(model.varmap()), backbone_values(expect.varmap()));
    assert_eq!(summary.loaded, got.len());
    for (k, w) in &want {
        if k.ends_with("num_batches_tracked") {
            assert_eq!(got[k], [5.0], "{k}");
        } else {
            assert_eq!(&got[k], w, "{k}");
        }
    }
    // fc and the branches are untouched.
    assert!(values(model.varmap())["backbone.fc.weight"].iter().all(|&v| v == 0.0));
    assert!(values(model.varmap())["pred_em.weight"].iter().all(|&v| v == 0.0));
}

#[test]
fn imports_torchvision_safetensors_with_a_prefix_and_is_strict() {
    let dir = tempfile::tempdir().unwrap();
    let source = micro();
    fill_parity(source.varmap()).unwrap();
    // Backbone only, `backbone.` prefix, fc of another size, no num_batches_tracked (old weights).
    let path = dir.path().join("resnet.safetensors");
    save_edited(source.varmap(), &path, |t| {
        t.retain(|k, _| k.starts_with("backbone.") && !k.ends_with("num_batches_tracked"));
        t.insert(
            "backbone.fc.weight".into(),
            Tensor::zeros((1000, 16), DType::F32, &Device::Cpu).unwrap(),
        );
    });
    let model = micro();
    init_default(model.varmap(), 0).unwrap();
    let summary = import_torchvision(model.varmap(), &path).unwrap();
    assert_eq!((summary.ignored_fc, summary.zeroed_batch_counters), (2, 20));
    let (got, want) = (backbone_values(model.varmap()), backbone_values(source.varmap()));
    assert_eq!(got, want);

    // A missing backbone tensor and an unknown key are errors naming them.
    save_edited(source.varmap(), &path, |t| {
        t.retain(|k, _| k.starts_with("backbone.") && k != "backbone.layer3.1.bn2.running_var");
    });
    let err = import_torchvision(model.varmap(), &path).unwrap_err().to_string();
    assert!(err.contains("missing tensor `layer3.1.bn2.running_var`"), "{err}");
    save_edited(source.varmap(), &path, |t| {
        t.retain(|k, _| k.starts_with("backbone."));
        t.insert(
            "backbone.layer5.0.conv1.weight".into(),
            Tensor::zeros(1, DType::F32, &Device::Cpu).unwrap(),
        );
    });
    let err = import_torchvision(model.varmap(), &path).unwrap_err().to_string();
    assert!(err.contains("unexpected tensor `backbone.layer5.0.conv1.weight`"), "{err}");
}

//! The `aue-forward` binary, run for real in a temp dir on the tiny parity fixture.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use aue_contract::format::{read_safetensors, save, write_safetensors};
use aue_model::init::fill_parity;
use aue_model::{AueModel, ModelConfig, Preset};
use candle_core::{DType, Device, Tensor};

fn fixture() -> BTreeMap<String, Tensor> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../model/tests/fixtures/parity_tiny.safetensors");
    read_safetensors(path, &Device::Cpu).unwrap().1
}

fn run(args: &[&std::ffi::OsStr]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_aue-forward")).args(args).output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn rel_l2(a: &Tensor, b: &Tensor) -> f64 {
    let f = |t: &Tensor| t.to_dtype(DType::F64).unwrap().flatten_all().unwrap();
    let n = |t: &Tensor| t.sqr().unwrap().sum_all().unwrap().to_scalar::<f64>().unwrap().sqrt();
    n(&(f(a) - f(b)).unwrap()) / n(&f(b))
}

#[test]
fn forward_binary_matches_the_reference_outputs_and_reports_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let fx = fixture();
    let model = AueModel::new(&ModelConfig::preset(Preset::Tiny), &Device::Cpu).unwrap();
    fill_parity(model.varmap()).unwrap();
    let weights = dir.path().join("w.safetensors");
    save(model.varmap(), &weights, &BTreeMap::new()).unwrap();
    let inputs = dir.path().join("i.safetensors");
    let pick = |keys: &[&str]| {
        keys.iter().map(|k| (k.to_string(), fx[*k].clone())).collect::<BTreeMap<_, _>>()
    };
    write_safetensors(&inputs, &pick(&["image", "au_loc", "label"]), &BTreeMap::new()).unwrap();
    let out = dir.path().join("o.safetensors");
    let (w, i, o) = (weights.as_os_str(), inputs.as_os_str(), out.as_os_str());
    let flags = |w, i| {
        vec![
            "--weights".as_ref(),
            w,
            "--inputs".as_ref(),
            i,
            "--out".as_ref(),
            o,
            "--preset".as_ref(),
            "tiny".as_ref(),
        ]
    };

    let (ok, stderr) = run(&flags(w, i));
    assert!(ok, "{stderr}");
    let (_, got) = read_safetensors(&out, &Device::Cpu).unwrap();
    for (name, golden) in [
        ("pred_em", "pred_em"),
        ("pred1", "pred_em"),
        ("pred2", "pred2"),
        ("pred_au", "pred_au"),
        ("au_prob", "au_prob"),
        ("au_target", "au_target"),
        ("loss_em", "loss_em"),
        ("loss_au", "loss_au"),
        ("loss_fuse", "loss_fuse"),
    ] {
        assert_eq!(got[name].dims(), fx[golden].dims(), "{name}");
        let e = rel_l2(&got[name], &fx[golden]);
        assert!(e <= 1e-4, "{name}: relative L2 error {e:.2e}");
    }

    // Bad input: a missing tensor, a wrong dtype, weights with a wrong key.
    let bad = dir.path().join("bad.safetensors");
    write_safetensors(&bad, &pick(&["image", "label"]), &BTreeMap::new()).unwrap();
    let (ok, stderr) = run(&flags(w, bad.as_os_str()));
    assert!(
        !ok && stderr.contains("missing tensor `au_loc`") && stderr.contains("bad.safetensors"),
        "{stderr}"
    );
    let mut t = pick(&["image", "au_loc"]);
    t.insert("label".into(), fx["label"].to_dtype(DType::F32).unwrap());
    write_safetensors(&bad, &t, &BTreeMap::new()).unwrap();
    let (ok, stderr) = run(&flags(w, bad.as_os_str()));
    assert!(!ok && stderr.contains("tensor `label` is F32 [4], expected I64 [4]"), "{stderr}");
    let mut t = pick(&["image", "au_loc", "label"]);
    t.insert("image".into(), Tensor::zeros((4, 3, 48, 48), DType::F32, &Device::Cpu).unwrap());
    write_safetensors(&bad, &t, &BTreeMap::new()).unwrap();
    let (ok, stderr) = run(&flags(w, bad.as_os_str()));
    assert!(!ok && stderr.contains("multiple of 32"), "{stderr}");
    let (ok, stderr) = run(&flags(i, i));
    assert!(!ok && stderr.contains("pred_em.bias"), "{stderr}");
}

//! Running an exported graph in tract (a pure-Rust ONNX runtime) and comparing its outputs with
//! aue's own eval-mode forward pass on the same inputs, by relative L2 error per output.

use std::path::Path;

use aue_core::NUM_AUS;
use aue_model::{AueModel, ForwardOptions, Outputs};
use candle_core::{Device, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tract_onnx::prelude::{
    Arc, Framework, InferenceModel, InferenceModelExt, IntoRunnable, IntoTValue, TVec,
    Tensor as TractTensor, TypedSimplePlan, tvec,
};

use crate::error::{ExportError, Result};
use crate::graph::{GraphSpec, Output};

/// A batch of inputs: RGB bytes (HWC per image) and AU centres.
#[derive(Debug, Clone)]
pub struct Batch {
    /// Batch size.
    pub size: usize,
    /// Input side S.
    pub side: usize,
    /// [N, S, S, 3] RGB bytes.
    pub rgb: Vec<u8>,
    /// [N, 17, 4] AU centres on the grid.
    pub au_loc: Vec<i64>,
}

impl Batch {
    /// Random bytes and random AU centres in [0, `grid`] (windows that leave the map included),
    /// from `seed`.
    pub fn random(size: usize, side: usize, grid: usize, seed: u64) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let rgb = (0..size * side * side * 3).map(|_| rng.random::<u8>()).collect();
        let au_loc = (0..size * NUM_AUS * 4).map(|_| rng.random_range(0..=grid as i64)).collect();
        Batch { size, side, rgb, au_loc }
    }

    /// The images as the model takes them: [N, 3, S, S], normalised as the data pipeline does.
    pub fn normalised(&self) -> Vec<f32> {
        let plane = self.side * self.side * 3;
        let mut out = vec![0f32; self.size * plane];
        for (src, dst) in self.rgb.chunks_exact(plane).zip(out.chunks_exact_mut(plane)) {
            aue_data::preprocess::normalise_into(src, dst);
        }
        out
    }
}

/// One output of a run: its name, shape and values.
#[derive(Debug, Clone)]
pub struct Named {
    /// Output name.
    pub name: String,
    /// Shape.
    pub shape: Vec<usize>,
    /// Values, row-major.
    pub values: Vec<f32>,
}

/// An exported graph loaded into tract, with a symbolic batch size.
pub struct TractModel {
    plan: Arc<TypedSimplePlan>,
    names: Vec<String>,
    preprocess: bool,
    au_loc: bool,
}

fn runtime<E: std::fmt::Display>(what: &str) -> impl FnOnce(E) -> ExportError + '_ {
    move |e| ExportError::Runtime(format!("{what}: {e:#}"))
}

impl TractModel {
    /// Load and optimise the ONNX bytes of a graph built for `spec` (weights inside the file).
    pub fn load(onnx: &[u8], spec: &GraphSpec) -> Result<Self> {
        let model = tract_onnx::onnx()
            .model_for_read(&mut &onnx[..])
            .map_err(runtime("reading the ONNX file"))?;
        Self::optimise(model, spec)
    }

    /// Load and optimise the ONNX file `path` of a graph built for `spec` (external weights are
    /// read from its folder).
    pub fn load_file(path: &Path, spec: &GraphSpec) -> Result<Self> {
        let what = format!("reading {}", path.display());
        let model = tract_onnx::onnx().model_for_path(path).map_err(runtime(&what))?;
        Self::optimise(model, spec)
    }

    fn optimise(model: InferenceModel, spec: &GraphSpec) -> Result<Self> {
        let names = model
            .output_outlets()
            .map_err(runtime("listing outputs"))?
            .iter()
            .map(|o| model.outlet_label(*o).unwrap_or(&model.node(o.node).name).to_string())
            .collect();
        let au_loc = model.input_outlets().map_err(runtime("listing inputs"))?.len() > 1;
        let plan = model
            .into_optimized()
            .map_err(runtime("optimising the graph"))?
            .into_runnable()
            .map_err(runtime("planning the graph"))?;
        Ok(TractModel { plan, names, preprocess: spec.preprocess, au_loc })
    }

    /// Run on `batch`.
    pub fn run(&self, batch: &Batch) -> Result<Vec<Named>> {
        let (n, s) = (batch.size, batch.side);
        let image: TractTensor = if self.preprocess {
            TractTensor::from_shape(&[n, s, s, 3], &batch.rgb)
        } else {
            TractTensor::from_shape(&[n, 3, s, s], &batch.normalised())
        }
        .map_err(runtime("making the image tensor"))?;
        let mut inputs: TVec<_> = tvec![image.into_tvalue()];
        if self.au_loc {
            let loc = TractTensor::from_shape(&[n, NUM_AUS, 4], &batch.au_loc)
                .map_err(runtime("making the au_loc tensor"))?;
            inputs.push(loc.into_tvalue());
        }
        let outputs = self.plan.run(inputs).map_err(runtime("running the graph"))?;
        outputs
            .iter()
            .zip(&self.names)
            .map(|(t, name)| {
                let view = t.to_plain_array_view::<f32>().map_err(runtime("reading an output"))?;
                Ok(Named {
                    name: name.clone(),
                    shape: view.shape().to_vec(),
                    values: view.iter().copied().collect(),
                })
            })
            .collect()
    }
}

/// aue's eval forward pass on `batch`, as the graph's outputs `spec.outputs` (the expression
/// probabilities are aue-predict's softmax of the stage's logits).
pub fn aue_outputs(model: &AueModel, spec: &GraphSpec, batch: &Batch) -> Result<Vec<Named>> {
    let (n, s) = (batch.size, batch.side);
    let images = Tensor::from_vec(batch.normalised(), (n, 3, s, s), &Device::Cpu)?
        .to_device(model.device())?;
    let au_loc = Tensor::from_vec(batch.au_loc.clone(), (n, NUM_AUS, 4), &Device::Cpu)?
        .to_device(model.device())?;
    let out: Outputs = model.forward(&images, Some(&au_loc), &ForwardOptions::eval())?;
    let named = |name: &str, t: &Tensor| -> Result<Named> {
        Ok(Named {
            name: name.into(),
            shape: t.dims().to_vec(),
            values: t.flatten_all()?.to_device(&Device::Cpu)?.to_vec1::<f32>()?,
        })
    };
    let mut result = Vec::new();
    for o in &spec.outputs {
        let got = match o {
            Output::Feature => named(o.name(), out.feature()?)?,
            Output::PredEm => named(o.name(), out.pred_em()?)?,
            Output::AuFeat => named(o.name(), out.au_feat()?)?,
            Output::PredAu => named(o.name(), out.pred_au()?)?,
            Output::Pred2 => named(o.name(), out.pred2()?)?,
            Output::AuProb => named(o.name(), out.au_prob()?)?,
            Output::ExpressionProb => {
                let logits = match spec.stage {
                    aue_model::Stage::Em => out.pred_em()?,
                    _ => out.pred2()?,
                };
                let mut t = named(o.name(), logits)?;
                let k = t.shape[1];
                t.values = t.values.chunks_exact(k).flat_map(aue_predict::softmax).collect();
                t
            }
        };
        result.push(got);
    }
    Ok(result)
}

/// ||a - b|| / ||b|| (0 when both are zero).
pub fn relative_l2(a: &[f32], b: &[f32]) -> f64 {
    let (mut d, mut n) = (0f64, 0f64);
    for (x, y) in a.iter().zip(b) {
        d += (f64::from(*x) - f64::from(*y)).powi(2);
        n += f64::from(*y).powi(2);
    }
    if n == 0.0 { d.sqrt() } else { (d / n).sqrt() }
}

/// One output's comparison.
#[derive(Debug, Clone)]
pub struct Difference {
    /// Output name.
    pub name: String,
    /// Relative L2 error of the graph's values against aue's.
    pub relative_l2: f64,
}

/// Compare the graph's outputs with aue's by name; an output missing on either side or with
/// another shape is an error.
pub fn compare(graph: &[Named], aue: &[Named]) -> Result<Vec<Difference>> {
    if graph.len() != aue.len() {
        return Err(ExportError::Mismatch(format!(
            "the graph gives {} outputs, aue {}",
            graph.len(),
            aue.len()
        )));
    }
    aue.iter()
        .map(|want| {
            let got = graph.iter().find(|g| g.name == want.name).ok_or_else(|| {
                ExportError::Mismatch(format!("the graph has no output `{}`", want.name))
            })?;
            if got.shape != want.shape {
                return Err(ExportError::Mismatch(format!(
                    "output `{}`: shape {:?} in the graph, {:?} in aue",
                    want.name, got.shape, want.shape
                )));
            }
            Ok(Difference {
                name: want.name.clone(),
                relative_l2: relative_l2(&got.values, &want.values),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_l2_is_scale_free() {
        assert_eq!(relative_l2(&[1.0, 2.0], &[1.0, 2.0]), 0.0);
        let e = relative_l2(&[1.1, 0.0], &[1.0, 0.0]);
        assert!((e - 0.1).abs() < 1e-6, "{e}");
        let e = relative_l2(&[110.0, 0.0], &[100.0, 0.0]);
        assert!((e - 0.1).abs() < 1e-6, "{e}");
        assert_eq!(relative_l2(&[0.0], &[0.0]), 0.0);
    }

    #[test]
    fn random_batches_are_seeded_and_in_range() {
        let a = Batch::random(2, 32, 8, 5);
        let b = Batch::random(2, 32, 8, 5);
        assert_eq!((a.rgb.len(), a.au_loc.len()), (2 * 32 * 32 * 3, 2 * 17 * 4));
        assert_eq!((&a.rgb, &a.au_loc), (&b.rgb, &b.au_loc));
        assert!(a.au_loc.iter().all(|v| (0..=8).contains(v)));
        assert!(a.au_loc.contains(&0) && a.au_loc.contains(&8));
        let x = a.normalised();
        // Pixel (0, 0) of image 0, red: (v / 255 - 0.485) / 0.229.
        let want = (f32::from(a.rgb[0]) / 255.0 - 0.485) / 0.229;
        assert_eq!(x[0], want);
    }
}

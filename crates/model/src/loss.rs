//! The prior knowledge table's AU pseudo-target and the four losses of AUE-CRL
//! (docs/METHOD.md sections 2 and 4), vectorised: no loop over samples or AU pairs.

use aue_core::{NUM_AUS, NUM_BASIC, PriorLevel, eiau_pairs, prior_mask};
use candle_core::{DType, Device, Tensor};

use crate::error::{ModelError, Result};
use crate::model::{Outputs, Stage};
use crate::nn::{Params, clamp_exact};

/// The expression-AU knowledge the losses use: the trainable `PriorKnowledgeTable` T, the constant
/// masks A, B, C, and the EIAU pair indices (built once, kept on the model's device).
#[derive(Debug, Clone)]
pub struct AuKnowledge {
    table: Tensor,
    masks: [Tensor; 3],
    eiau: EiauIndex,
}

/// Gather indices of the EIAU pairs: AU i, AU j and the flat index i * 17 + j, per pair kind.
#[derive(Debug, Clone)]
struct EiauIndex {
    positive: [Tensor; 3],
    negative: [Tensor; 3],
}

impl EiauIndex {
    fn new(device: &Device) -> Result<Self> {
        let (pos, neg) = eiau_pairs();
        let index = |pairs: &[(usize, usize)]| -> Result<[Tensor; 3]> {
            let col = |f: &dyn Fn(&(usize, usize)) -> usize| {
                let v: Vec<u32> = pairs.iter().map(|p| f(p) as u32).collect();
                Tensor::from_vec(v, pairs.len(), device)
            };
            Ok([col(&|p| p.0)?, col(&|p| p.1)?, col(&|p| p.0 * NUM_AUS + p.1)?])
        };
        Ok(EiauIndex { positive: index(&pos)?, negative: index(&neg)? })
    }
}

impl AuKnowledge {
    pub(crate) fn new(p: &Params) -> Result<Self> {
        let table = p.param("PriorKnowledgeTable", &[NUM_BASIC, NUM_AUS])?;
        let mask = |level| -> Result<Tensor> {
            let m: Vec<f32> = prior_mask(level).iter().flatten().copied().collect();
            Ok(Tensor::from_vec(m, (NUM_BASIC, NUM_AUS), p.device())?.to_dtype(p.dtype())?)
        };
        let masks = [mask(PriorLevel::Strong)?, mask(PriorLevel::Weak)?, mask(PriorLevel::Absent)?];
        Ok(AuKnowledge { table, masks, eiau: EiauIndex::new(p.device())? })
    }

    /// The table T (the model's `PriorKnowledgeTable` variable).
    pub fn table(&self) -> &Tensor {
        &self.table
    }

    /// AU pseudo-targets: onehot(e) @ (clamp(T, .75, 1) A + clamp(T, .5, .75) B + clamp(T, 0, .25) C),
    /// differentiable in T (section 2). Labels must be basic expressions (0..7).
    ///
    /// # Shapes
    /// labels i64 [B] -> [B, 17]
    pub fn au_target(&self, labels: &Tensor) -> Result<Tensor> {
        check_labels(labels, NUM_BASIC)?;
        let [a, b, c] = &self.masks;
        let t = &self.table;
        let rows = ((clamp_exact(t, 0.75, 1.0)? * a)?
            + (clamp_exact(t, 0.5, 0.75)? * b)?
            + (clamp_exact(t, 0.0, 0.25)? * c)?)?; // [7, 17]
        // onehot(e) @ rows is row e of rows.
        Ok(rows.index_select(labels, 0)?)
    }

    /// TABLE(T) = mean over the 7 x 17 entries of A |T - 0.875| + B |T - 0.625| + C |T - 0.125|.
    ///
    /// # Shapes
    /// -> []
    pub fn table_loss(&self) -> Result<Tensor> {
        let [a, b, c] = &self.masks;
        let t = &self.table;
        let l = ((a * (t - 0.875)?.abs()?)?
            + (b * (t - 0.625)?.abs()?)?
            + (c * (t - 0.125)?.abs()?)?)?;
        Ok(l.mean_all()?)
    }

    /// EIAU(p), the expression-independent AU relation loss of section 4, summed over the pairs.
    ///
    /// # Shapes
    /// p [B, 17] (AU probabilities) -> []
    pub fn eiau_loss(&self, p: &Tensor) -> Result<Tensor> {
        let (batch, aus) = p.dims2()?;
        if aus != NUM_AUS {
            return Err(ModelError::input(
                "au probabilities",
                format!("shape {:?}, expected [B, 17]", p.dims()),
            ));
        }
        let inv_b = 1.0 / batch as f64;
        let on = p.ge(0.5)?.to_dtype(p.dtype())?; // [B, 17], constant
        let p_on = (p * &on)?;
        let p_off = (p - &p_on)?; // p * [p < 0.5]
        let p1 = (p_on.sum(0)? * inv_b)?; // [17]
        let p0 = (p_off.sum(0)? * inv_b)?; // [17]
        let p11 = (p_on.t()?.matmul(&p_on)? * inv_b)?.flatten_all()?; // [17 * 17]
        // The three relu arguments' building blocks per pair: P1i P1j - P11, P0i P1j - P11, P1i P0j - P11.
        let terms = |[i, j, ij]: &[Tensor; 3]| -> Result<[Tensor; 3]> {
            let (p1i, p1j) = (p1.index_select(i, 0)?, p1.index_select(j, 0)?);
            let (p0i, p0j) = (p0.index_select(i, 0)?, p0.index_select(j, 0)?);
            let q = p11.index_select(ij, 0)?;
            Ok([(&p1i * &p1j)?.sub(&q)?, (&p0i * &p1j)?.sub(&q)?, (&p1i * &p0j)?.sub(&q)?])
        };
        let [a, b, c] = terms(&self.eiau.positive)?;
        let positive = (a.relu()? + b.relu()? + c.relu()?)?.sum_all()?;
        let [a, b, c] = terms(&self.eiau.negative)?;
        // negative pairs: relu(P1 P1 - P11) + relu(P11 - P0 P1) + relu(P11 - P1 P0)
        let negative = (a.relu()? + b.neg()?.relu()? + c.neg()?.relu()?)?.sum_all()?;
        Ok((positive + negative)?)
    }
}

/// Labels must be i64 [B] with values in 0..classes.
pub(crate) fn check_labels(labels: &Tensor, classes: usize) -> Result<()> {
    if labels.dtype() != DType::I64 || labels.rank() != 1 {
        return Err(ModelError::input(
            "labels",
            format!("expected i64 [B], got {:?} {:?}", labels.dtype(), labels.dims()),
        ));
    }
    let values = labels.to_vec1::<i64>()?;
    if let Some(bad) = values.iter().find(|&&v| v < 0 || v >= classes as i64) {
        return Err(ModelError::input("labels", format!("label {bad} is outside 0..{classes}")));
    }
    Ok(())
}

/// Mean cross-entropy of logits against class labels.
///
/// # Shapes
/// logits [B, K], labels i64 [B] -> []
pub fn cross_entropy(logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
    check_labels(labels, logits.dim(1)?)?;
    if labels.dim(0)? != logits.dim(0)? {
        return Err(ModelError::input(
            "labels",
            format!("{} labels for {} samples", labels.dim(0)?, logits.dim(0)?),
        ));
    }
    let log_p = candle_nn::ops::log_softmax(logits, 1)?; // [B, K]
    let picked = log_p.gather(&labels.unsqueeze(1)?, 1)?; // [B, 1]
    Ok(picked.mean_all()?.neg()?)
}

/// WMSE(p, t) = mean((p - t)^2 w), w = 3 where t >= 0.5 else 1 (section 4).
///
/// # Shapes
/// p [B, 17], t [B, 17] -> []
pub fn wmse(p: &Tensor, t: &Tensor) -> Result<Tensor> {
    let w = t.ge(0.5)?.to_dtype(p.dtype())?.affine(2.0, 1.0)?; // constant
    Ok((p - t)?.sqr()?.mul(&w)?.mean_all()?)
}

/// The reference's weight of the EIAU term in `stage`'s loss: 0.5 in stage 2, 0.05 in stage 3
/// (0 in stage 1, which has none).
pub fn reference_eiau_weight(stage: Stage) -> f64 {
    match stage {
        Stage::Em => 0.0,
        Stage::Au => 0.5,
        Stage::Fuse => 0.05,
    }
}

/// The loss a stage minimises (section 4):
/// - stage 1: CE(pred1, y);
/// - stage 2: WMSE(pred_au, target(y, T)) + 0.5 EIAU(pred_au) + TABLE(T);
/// - stage 3: CE(pred1, y) + CE(pred2, y) + 0.05 EIAU(au_prob).
///
/// # Shapes
/// outputs of [`crate::AueModel::forward`] (those the stage needs), labels i64 [B] -> []
pub fn stage_loss(
    stage: Stage,
    outputs: &Outputs,
    labels: &Tensor,
    knowledge: &AuKnowledge,
) -> Result<Tensor> {
    stage_loss_weighted(stage, outputs, labels, knowledge, reference_eiau_weight(stage))
}

/// [`stage_loss`] with another weight of the EIAU term (stages 2 and 3; ignored in stage 1). A
/// weight of 0 skips computing the term.
pub fn stage_loss_weighted(
    stage: Stage,
    outputs: &Outputs,
    labels: &Tensor,
    knowledge: &AuKnowledge,
    eiau_weight: f64,
) -> Result<Tensor> {
    let eiau = |p: &Tensor| -> Result<Option<Tensor>> {
        if eiau_weight == 0.0 {
            return Ok(None);
        }
        Ok(Some((knowledge.eiau_loss(p)? * eiau_weight)?))
    };
    match stage {
        Stage::Em => cross_entropy(outputs.pred_em()?, labels),
        Stage::Au => {
            let p = outputs.pred_au()?;
            let target = knowledge.au_target(labels)?;
            // Summed in the reference's order: WMSE + EIAU + TABLE.
            let mut loss = wmse(p, &target)?;
            if let Some(e) = eiau(p)? {
                loss = (loss + e)?;
            }
            Ok((loss + knowledge.table_loss()?)?)
        }
        Stage::Fuse => {
            let mut loss = (cross_entropy(outputs.pred_em()?, labels)?
                + cross_entropy(outputs.pred2()?, labels)?)?;
            if let Some(e) = eiau(outputs.au_prob()?)? {
                loss = (loss + e)?;
            }
            Ok(loss)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{AueModel, ModelConfig, Preset};
    use aue_core::{PriorLevel, prior_level};
    use candle_core::Var;

    fn knowledge() -> (AueModel, AuKnowledge) {
        let model = AueModel::new(&ModelConfig::preset(Preset::Tiny), &Device::Cpu).unwrap();
        crate::init::fill_parity(model.varmap()).unwrap();
        let k = model.knowledge().clone();
        (model, k)
    }

    fn table_values(k: &AuKnowledge) -> Vec<Vec<f64>> {
        k.table().to_dtype(DType::F64).unwrap().to_vec2::<f64>().unwrap()
    }

    /// AU probabilities away from 0.5, with both sides present.
    fn probs(batch: usize) -> Vec<f32> {
        (0..batch * NUM_AUS).map(|i| (i * 37 % 101) as f32 / 101.0 * 0.9 + 0.05).collect()
    }

    /// EIAU written straight from section 4, with loops over pairs and samples.
    fn eiau_loop(p: &[f32], batch: usize) -> f64 {
        let at = |b: usize, i: usize| p[b * NUM_AUS + i] as f64;
        let bf = batch as f64;
        let p1 =
            |i| (0..batch).map(|b| if at(b, i) >= 0.5 { at(b, i) } else { 0.0 }).sum::<f64>() / bf;
        let p0 =
            |i| (0..batch).map(|b| if at(b, i) < 0.5 { at(b, i) } else { 0.0 }).sum::<f64>() / bf;
        let p11 = |i, j| {
            (0..batch)
                .map(|b| if at(b, i) >= 0.5 && at(b, j) >= 0.5 { at(b, i) * at(b, j) } else { 0.0 })
                .sum::<f64>()
                / bf
        };
        let (pos, neg) = eiau_pairs();
        let r = |x: f64| x.max(0.0);
        let mut loss = 0.0;
        for (i, j) in pos {
            let q = p11(i, j);
            loss += r(p1(i) * p1(j) - q) + r(p0(i) * p1(j) - q) + r(p1(i) * p0(j) - q);
        }
        for (i, j) in neg {
            let q = p11(i, j);
            loss += r(p1(i) * p1(j) - q) + r(q - p0(i) * p1(j)) + r(q - p1(i) * p0(j));
        }
        loss
    }

    #[test]
    fn eiau_matches_a_direct_loop_and_its_gradient_finite_differences() {
        let (_m, k) = knowledge();
        let batch = 5;
        let pv = probs(batch);
        let p = Var::from_vec(pv.clone(), (batch, NUM_AUS), &Device::Cpu).unwrap();
        let loss = k.eiau_loss(&p).unwrap();
        let expect = eiau_loop(&pv, batch);
        assert!(expect > 0.0);
        assert!(
            (loss.to_scalar::<f32>().unwrap() as f64 - expect).abs() < 1e-6,
            "{loss} vs {expect}"
        );
        let g = loss
            .backward()
            .unwrap()
            .get(p.as_tensor())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        for i in 0..pv.len() {
            let bump = |d: f64| {
                let mut q = pv.clone();
                q[i] = (q[i] as f64 + d) as f32;
                eiau_loop(&q, batch)
            };
            let fd = (bump(1e-3) - bump(-1e-3)) / 2e-3;
            assert!((g[i] as f64 - fd).abs() < 1e-4, "p[{i}]: {} vs {fd}", g[i]);
        }
    }

    #[test]
    fn wmse_weights_targets_from_one_half() {
        let p = Tensor::new(&[[0.2f32, 0.9], [0.6, 0.1]], &Device::Cpu).unwrap();
        let t = Tensor::new(&[[0.5f32, 0.4], [0.75, 0.0]], &Device::Cpu).unwrap();
        let got = wmse(&p, &t).unwrap().to_scalar::<f32>().unwrap() as f64;
        let expect = (3.0 * 0.09 + 0.25 + 3.0 * 0.0225 + 0.01) / 4.0;
        assert!((got - expect).abs() < 1e-7, "{got} vs {expect}");
    }

    #[test]
    fn table_loss_and_target_match_their_formulas() {
        let (_m, k) = knowledge();
        let t = table_values(&k);
        let level = |e: usize, a: usize| match prior_level(e, a) {
            PriorLevel::Strong => ((0.75, 1.0), 0.875),
            PriorLevel::Weak => ((0.5, 0.75), 0.625),
            PriorLevel::Absent => ((0.0, 0.25), 0.125),
        };
        let sum: f64 = t
            .iter()
            .enumerate()
            .flat_map(|(e, row)| {
                row.iter().enumerate().map(move |(a, v)| (v - level(e, a).1).abs())
            })
            .sum();
        let expect = sum / (NUM_BASIC * NUM_AUS) as f64;
        let got = k.table_loss().unwrap().to_scalar::<f32>().unwrap() as f64;
        assert!((got - expect).abs() < 1e-6, "{got} vs {expect}");

        let labels = Tensor::new(&[3i64, 0, 6, 3], &Device::Cpu).unwrap();
        let target =
            k.au_target(&labels).unwrap().to_dtype(DType::F64).unwrap().to_vec2::<f64>().unwrap();
        for (row, &e) in target.iter().zip(&[3usize, 0, 6, 3]) {
            for a in 0..NUM_AUS {
                let ((lo, hi), _) = level(e, a);
                assert_eq!(row[a], t[e][a].clamp(lo, hi));
            }
        }
        let bad = Tensor::new(&[7i64], &Device::Cpu).unwrap();
        assert!(k.au_target(&bad).unwrap_err().to_string().contains("label 7"));
    }

    #[test]
    fn au_target_gradient_reaches_the_table_including_values_on_a_bound() {
        // At its initial value the table sits exactly on the clamp bounds 1.0 and 0.5: PyTorch's
        // clamp passes the gradient there (Candle's would halve it).
        let model = AueModel::new(&ModelConfig::preset(Preset::Tiny), &Device::Cpu).unwrap();
        crate::init::init_default(model.varmap(), 0).unwrap();
        let k = model.knowledge();
        let labels = Tensor::new(&[0i64, 0, 4], &Device::Cpu).unwrap();
        let loss = k.au_target(&labels).unwrap().sum_all().unwrap();
        let g = loss.backward().unwrap().get(k.table()).unwrap().to_vec2::<f32>().unwrap();
        // Surprise (row 0) twice, Sadness (row 4) once, every entry inside its closed clamp range.
        assert!(g[0].iter().all(|&v| v == 2.0));
        assert!(g[4].iter().all(|&v| v == 1.0));
        assert!(g[1].iter().all(|&v| v == 0.0));
    }

    #[test]
    fn cross_entropy_matches_log_softmax() {
        let logits = Tensor::new(&[[1.0f32, 2.0, 0.5], [0.0, -1.0, 3.0]], &Device::Cpu).unwrap();
        let labels = Tensor::new(&[1i64, 2], &Device::Cpu).unwrap();
        let got = cross_entropy(&logits, &labels).unwrap().to_scalar::<f32>().unwrap() as f64;
        let lse = |v: [f64; 3]| v.iter().map(|x| x.exp()).sum::<f64>().ln();
        let expect = ((lse([1.0, 2.0, 0.5]) - 2.0) + (lse([0.0, -1.0, 3.0]) - 3.0)) / 2.0;
        assert!((got - expect).abs() < 1e-6);
        let short = Tensor::new(&[1i64], &Device::Cpu).unwrap();
        assert!(
            cross_entropy(&logits, &short)
                .unwrap_err()
                .to_string()
                .contains("1 labels for 2 samples")
        );
    }
}

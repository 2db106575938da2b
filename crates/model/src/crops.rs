//! The 34 AU crops and their crop nets, batched (docs/METHOD.md section 3, AU branch steps 5-6).
//!
//! The reference runs 34 separate `Crop_Net_1.{k}` (Conv2d 3x3 + ReLU) and `Crop_Net_2.{k}`
//! (Linear + ReLU + Dropout) modules on 34 crops of the AU map M. Here:
//! - the im2col matrix of each crop is rows of the zero-padded, channels-last map gathered by
//!   index (crop gather and im2col fused: the taps of the 3x3 conv that fall outside a crop, the
//!   conv's own zero padding, read a padding zero);
//! - `Crop_Net_1` is one op, aue-kernels' `gather_batched_matmul`: those matrices times the 34
//!   kernels stacked to [34, 9 C, C], each matrix gathered just before its product, forward and
//!   backward, so that the graph keeps the map, not the 34 matrices (360 MB at resnet18's sizes,
//!   batch 8), with the values and gradients of `index_select` then a batched matmul;
//! - `Crop_Net_2` is one batched matmul with the 34 weights stacked to [34, F, C L^2].
//!
//! Without a gradient on the CPU (inference, stage 3's frozen AU branch) the crops are cut as
//! images instead (aue-kernels' `crop_windows`, zero outside the map) and each `Crop_Net_1` runs
//! as an inference convolution with its bias and ReLU (Winograd's algorithm: fewer products than
//! the gathered im2col, and its output already in the channel-major order `Crop_Net_2` reads).
//!
//! The variables stay per crop with the reference's names and shapes; the stacks are built inside
//! the forward pass (`Tensor::stack` of the variables keeps the gradient flowing to each of them).

use aue_core::NUM_AUS;
use aue_kernels::infer::{Act, Epilogue};
use candle_core::{DType, Tensor};
use rayon::prelude::*;

use crate::config::ModelConfig;
use crate::error::{ModelError, Result};
use crate::nn::{Params, PartMode, dropout, relu};

/// Number of crops: two centres per AU.
pub const NUM_CROPS: usize = 2 * NUM_AUS;

/// Checked AU centres of a batch: crop k = 2i + c is centred at (x, y) = (loc[i][2c], loc[i][2c+1]).
#[derive(Debug, Clone)]
pub struct CropCentres {
    batch: usize,
    /// (x, y) per (sample, crop), sample-major.
    xy: Vec<(usize, usize)>,
}

impl CropCentres {
    /// The crop centres of a batch of `batch` images when the AU outputs are `needed`: `au_loc`
    /// is then required and must hold one row per image; `None` when they are not needed.
    pub(crate) fn for_batch(
        needed: bool,
        au_loc: Option<&Tensor>,
        grid: usize,
        batch: usize,
    ) -> Result<Option<Self>> {
        if !needed {
            return Ok(None);
        }
        let loc = au_loc
            .ok_or_else(|| ModelError::input("au_loc", "needed for the AU and fusion outputs"))?;
        let c = CropCentres::new(loc, grid)?;
        if c.batch() != batch {
            let msg = format!("{} samples for {} images", c.batch(), batch);
            return Err(ModelError::input("au_loc", msg));
        }
        Ok(Some(c))
    }

    /// Read and check `au_loc` (i64 [B, 17, 4], x1 y1 x2 y2 on the G grid). Every coordinate must be
    /// in [0, G]; a window that leaves the map reads zeros there (with the loader's clamping to
    /// [L/2, G - L/2] none does). `au_loc` may live on any device; on the CPU reading it costs no
    /// device synchronisation (the trainer keeps it there).
    pub fn new(au_loc: &Tensor, grid: usize) -> Result<Self> {
        let dims = au_loc.dims();
        if au_loc.dtype() != DType::I64 || dims.len() != 3 || dims[1] != NUM_AUS || dims[2] != 4 {
            return Err(ModelError::input(
                "au_loc",
                format!("expected i64 [B, 17, 4], got {:?} {:?}", au_loc.dtype(), dims),
            ));
        }
        let batch = dims[0];
        let flat = au_loc.flatten_all()?.to_vec1::<i64>()?;
        let mut xy = Vec::with_capacity(batch * NUM_CROPS);
        for (n, sample) in flat.chunks_exact(4 * NUM_AUS).enumerate() {
            for (i, c) in sample.chunks_exact(4).enumerate() {
                for (x, y) in [(c[0], c[1]), (c[2], c[3])] {
                    let ok = |v: i64| (0..=grid as i64).contains(&v);
                    if !ok(x) || !ok(y) {
                        return Err(ModelError::input(
                            "au_loc",
                            format!(
                                "sample {n}, AU index {i}: centre ({x}, {y}) is outside the grid [0, {grid}]"
                            ),
                        ));
                    }
                    xy.push((x as usize, y as usize));
                }
            }
        }
        Ok(CropCentres { batch, xy })
    }

    /// Batch size.
    pub fn batch(&self) -> usize {
        self.batch
    }

    /// Row indices into the padded channels-last map [B * Gp * Gp, C] (Gp = G + L) that form the
    /// im2col matrix of the 3x3 / padding 1 conv on every crop, ordered (crop, sample, position,
    /// tap). A zero read points to row 0, a padding zero (L/2 >= 1).
    ///
    /// # Shapes
    /// -> [34 * B * L * L * 9]
    fn im2col_rows(&self, grid: usize, side: usize) -> Vec<u32> {
        let (gp, h) = (grid + side, side / 2);
        let (half, l) = (h as isize, side as isize);
        let per_crop = side * side * 9;
        let mut out = vec![0u32; NUM_CROPS * self.batch * per_crop];
        // One (crop, sample) block per task: 1.4 M entries at resnet18's sizes, batch 8.
        out.par_chunks_mut(per_crop).enumerate().for_each(|(j, rows)| {
            let (k, n) = (j / self.batch, j % self.batch);
            let (cx, cy) = self.xy[n * NUM_CROPS + k];
            let mut e = 0;
            for py in 0..l {
                for px in 0..l {
                    for ky in 0..3 {
                        for kx in 0..3 {
                            // Crop-local tap position, then map position; outside either: 0.
                            let (yy, xx) = (py + ky - 1, px + kx - 1);
                            let in_crop = (0..l).contains(&yy) && (0..l).contains(&xx);
                            let (my, mx) = (cy as isize - half + yy, cx as isize - half + xx);
                            let g = grid as isize;
                            if in_crop && (0..g).contains(&my) && (0..g).contains(&mx) {
                                let (my, mx) = (my as usize, mx as usize);
                                rows[e] = (n * gp * gp + (my + h) * gp + mx + h) as u32;
                            }
                            e += 1;
                        }
                    }
                }
            }
        });
        out
    }
}

/// All 34 `Crop_Net_1.{k}` and `Crop_Net_2.{k}`, each family's parameters stacked in one group
/// variable (`crate::state`): the reference's names and shapes per crop in checkpoints, one
/// tensor per parameter kind in the forward pass.
#[derive(Debug, Clone)]
pub(crate) struct CropNets {
    /// [34, c, c, 3, 3]
    pub(crate) conv_w: Tensor,
    /// [34, c]
    pub(crate) conv_b: Tensor,
    /// [34, F, c L^2]
    pub(crate) fc_w: Tensor,
    /// [34, F]
    pub(crate) fc_b: Tensor,
    pub(crate) geom: CropGrid,
    dropout: f32,
}

/// The crops' geometry: the AU map's side G and the crop side L.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CropGrid {
    pub(crate) grid: usize,
    pub(crate) side: usize,
}

impl CropNets {
    pub(crate) fn new(root: &Params, cfg: &ModelConfig) -> Result<Self> {
        let (c, f, d) = (cfg.crop_channels, cfg.au_feat, cfg.crop_flat());
        Ok(CropNets {
            conv_w: root.group_param("Crop_Net_1", NUM_CROPS, "0.weight", &[c, c, 3, 3])?,
            conv_b: root.group_param("Crop_Net_1", NUM_CROPS, "0.bias", &[c])?,
            fc_w: root.group_param("Crop_Net_2", NUM_CROPS, "0.weight", &[f, d])?,
            fc_b: root.group_param("Crop_Net_2", NUM_CROPS, "0.bias", &[f])?,
            geom: CropGrid { grid: cfg.grid(), side: cfg.crop_side() },
            dropout: cfg.dropout,
        })
    }

    /// The same nets with their tensors detached and in `dtype` (shared, not copied, when it is
    /// theirs): for the inference model.
    pub(crate) fn to_dtype(&self, dtype: DType) -> Result<Self> {
        let t = |x: &Tensor| x.detach().to_dtype(dtype);
        Ok(CropNets {
            conv_w: t(&self.conv_w)?,
            conv_b: t(&self.conv_b)?,
            fc_w: t(&self.fc_w)?,
            fc_b: t(&self.fc_b)?,
            geom: self.geom,
            dropout: self.dropout,
        })
    }

    /// Crop M at the centres and run the 34 crop nets.
    ///
    /// # Shapes
    /// m [B, C, G, G] -> au_feat [B, 34, F] (crop order k = 2i + c)
    pub(crate) fn forward(
        &self,
        m: &Tensor,
        centres: &CropCentres,
        mode: PartMode,
    ) -> Result<Tensor> {
        let dims = m.dims4()?;
        let h2 = if mode.grad || !aue_kernels::train_kernels_supported(m) {
            let rows = self.geom.padded_rows(m, centres)?;
            let ids = centres.im2col_rows(self.geom.grid, self.geom.side);
            let first = Crop1::Gathered { rows: &rows, ids: &ids };
            let all = 0..NUM_CROPS;
            if mode.grad {
                self.crops(&first, dims, all, mode)?
            } else {
                self.crops_in_chunks(&first, dims, mode)?
            }
        } else {
            self.geom.check(m, centres)?;
            self.crops_in_chunks(&Crop1::Direct { m, centres }, dims, mode)?
        };
        Ok(h2.permute((2, 0, 1))?.contiguous()?) // [b, 34, F]
    }

    /// [`CropNets::crops`] without a gradient, a few crops at a time (the products of
    /// Crop_Net_2's outputs with them too). Each crop's products are the same gemm calls as in
    /// one pass over all crops: the same values.
    ///
    /// # Shapes
    /// -> [34, F, B]
    fn crops_in_chunks(
        &self,
        first: &Crop1<'_>,
        dims: (usize, usize, usize, usize),
        mode: PartMode,
    ) -> Result<Tensor> {
        let chunk = EVAL_CROPS.max(rayon::current_num_threads()).min(NUM_CROPS);
        let parts = (0..NUM_CROPS)
            .step_by(chunk)
            .map(|k0| self.crops(first, dims, k0..(k0 + chunk).min(NUM_CROPS), mode))
            .collect::<Result<Vec<_>>>()?;
        Ok(Tensor::cat(&parts, 0)?)
    }

    /// The crop nets `range` on their crops (`first` says how Crop_Net_1 gets them).
    ///
    /// # Shapes
    /// -> [range.len(), F, B]
    fn crops(
        &self,
        first: &Crop1<'_>,
        (b, c, _, _): (usize, usize, usize, usize),
        range: std::ops::Range<usize>,
        mode: PartMode,
    ) -> Result<Tensor> {
        let l = self.geom.side;
        let (k0, n) = (range.start, range.len());
        let part = |t: &Tensor| -> Result<Tensor> {
            let t = mode.see(t);
            Ok(if n == NUM_CROPS { t } else { t.narrow(0, k0, n)? })
        };
        let h1 = match *first {
            Crop1::Gathered { rows, ids } => {
                let per_crop = b * l * l * 9;
                let ids = &ids[k0 * per_crop..(k0 + n) * per_crop];
                // Crop_Net_1: kernels [n, c_out, c_in, 3, 3] -> [n, ky, kx, c_in, c_out] ->
                // [n, 9 c, c], times the crops' im2col matrices [n, b * l * l, 9 c] gathered
                // from `rows` at `ids`.
                let w1 = part(&self.conv_w)?.permute((0, 3, 4, 2, 1))?.reshape((n, 9 * c, c))?;
                let conv = aue_kernels::gather_batched_matmul(rows, ids, &w1)
                    .map_err(candle_core::Error::from)?;
                let h1 = bias_relu(&conv, &part(&self.conv_b)?)?; // [n, b * l * l, c]
                // Flatten each crop channel-major, as PyTorch's flatten of [c, l, l].
                transpose_copy(&h1.reshape((n * b, l * l, c))?)? // [n b, c, l * l]
            }
            Crop1::Direct { m, centres } => {
                // The crops as images [n b, c, l, l] (zero outside the map), each crop net's
                // convolution on its b images (aue-kernels' inference convolution with the bias
                // and ReLU: Winograd's algorithm on the CPU), already channel-major.
                let h = (l / 2) as isize;
                let windows: Vec<(usize, isize, isize)> = (k0..k0 + n)
                    .flat_map(|k| {
                        (0..b).map(move |i| {
                            let (cx, cy) = centres.xy[i * NUM_CROPS + k];
                            (i, cy as isize - h, cx as isize - h)
                        })
                    })
                    .collect();
                let images =
                    aue_kernels::crop_windows(m, &windows, l).map_err(candle_core::Error::from)?;
                let params = aue_kernels::ConvParams { stride: 1, padding: 1, dilation: 1 };
                let outs = (0..n)
                    .map(|j| {
                        let (w, bias) = (self.conv_w.get(k0 + j)?, self.conv_b.get(k0 + j)?);
                        let ep = Epilogue::bias(&bias, Act::Relu);
                        aue_kernels::infer::conv2d_bias_act(
                            &images.narrow(0, j * b, b)?,
                            &w,
                            params,
                            ep,
                        )
                        .map_err(candle_core::Error::from)
                    })
                    .collect::<candle_core::Result<Vec<_>>>()?;
                Tensor::cat(&outs, 0)? // [n b, c, l, l]
            }
        };
        let h1 = h1.reshape((n, b, c * l * l))?;
        // Crop_Net_2 as W [n, F, c l^2] x h1^T [n, c l^2, b]: the weight is the left factor in
        // its own layout, so its gradient is one product in that layout (no transposed copy of
        // the largest tensor of the model), and h1's gradient comes out in h1's layout.
        let w2 = part(&self.fc_w)?;
        let b2 = part(&self.fc_b)?.unsqueeze(2)?; // [n, F, 1]
        let h2 = relu(&bmm_nt(&w2, &h1)?.broadcast_add(&b2)?)?; // [n, F, b]
        dropout(&h2, self.dropout, mode)
    }
}

/// How Crop_Net_1 gets its crops: gathered from the padded map's rows as im2col matrices (with a
/// gradient, and on other devices), or cut as images for a direct convolution (CPU, no gradient).
enum Crop1<'a> {
    Gathered { rows: &'a Tensor, ids: &'a [u32] },
    Direct { m: &'a Tensor, centres: &'a CropCentres },
}

/// Crops per chunk of an eval forward pass without gradient ([`CropNets::forward`]), at least
/// (more with more threads, so that each runs one crop's products).
const EVAL_CROPS: usize = 4;

/// `relu(x + bias)` with one bias per group and channel: aue-kernels' one-pass op on the CPU
/// (its bias gradient summed per group in parallel), Candle's values and gradients bit for bit.
///
/// # Shapes
/// x [g, p, c], bias [g, c] -> [g, p, c]
fn bias_relu(x: &Tensor, bias: &Tensor) -> Result<Tensor> {
    Ok(aue_kernels::bias_relu(x, bias).map_err(candle_core::Error::from)?)
}

/// `x` with its last two dimensions swapped, copied in parallel both ways on the CPU (Candle's
/// strided copy runs on one thread).
fn transpose_copy(x: &Tensor) -> Result<Tensor> {
    Ok(aue_kernels::transpose_copy(x).map_err(candle_core::Error::from)?)
}

/// `lhs x rhs^T` as aue-kernels' `batched_matmul` (the products of a batch in parallel on the
/// CPU, Candle's values) of `rhs`'s transposed view, but `rhs`'s gradient is computed in its
/// own layout (`grad^T x lhs`): for `Crop_Net_2` the faster product, and no transposed copy of it
/// (rounding may differ from Candle's `lhs^T x grad`; see aue-kernels' tests).
fn bmm_nt(lhs: &Tensor, rhs: &Tensor) -> Result<Tensor> {
    Ok(aue_kernels::batched_matmul_nt(lhs, rhs).map_err(candle_core::Error::from)?)
}

impl CropGrid {
    /// Checks the map against the centres and the crop geometry.
    pub(crate) fn check(&self, m: &Tensor, centres: &CropCentres) -> Result<()> {
        let (b, _, g, _) = m.dims4()?;
        if b != centres.batch() || g != self.grid {
            return Err(ModelError::input(
                "au_loc",
                format!(
                    "{} samples for a map of shape {:?} (grid {})",
                    centres.batch(),
                    m.dims(),
                    self.grid
                ),
            ));
        }
        Ok(())
    }

    /// The map zero-padded by half a crop on every side, channels last, one row per position:
    /// what [`CropCentres::im2col_rows`] indexes. `index_select_rows` of those rows is the crop
    /// convs' im2col matrix (aue-kernels' parallel gather on the CPU, whose backward adds each
    /// row's gradients in parallel in `index_add`'s order: Candle's values and gradient).
    ///
    /// # Shapes
    /// m [B, C, G, G] -> [B * (G + L)^2, C]
    pub(crate) fn padded_rows(&self, m: &Tensor, centres: &CropCentres) -> Result<Tensor> {
        self.check(m, centres)?;
        let (b, c, g, _) = m.dims4()?;
        let (l, h) = (self.side, self.side / 2);
        let gp = g + l;
        // [b, c, g * g] -> [b, g * g, c] in parallel (Candle's strided copy of the permuted view
        // runs on one thread), then [b, gp, gp, c] -> rows [b * gp * gp, c]
        let last = transpose_copy(&m.reshape((b, c, g * g))?)?;
        let padded =
            last.reshape((b, g, g, c))?.pad_with_zeros(1, h, h)?.pad_with_zeros(2, h, h)?;
        Ok(padded.reshape((b * gp * gp, c))?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};
    use candle_nn::VarMap;

    fn loc_tensor(loc: &[i64], batch: usize) -> Tensor {
        Tensor::from_vec(loc.to_vec(), (batch, NUM_AUS, 4), &Device::Cpu).unwrap()
    }

    /// The crop of M at (x, y), zero outside the map: M[:, y-L/2 : y+L/2, x-L/2 : x+L/2].
    fn naive_crop(m: &[f32], c: usize, g: usize, l: usize, x: usize, y: usize) -> Vec<f32> {
        let mut out = vec![0f32; c * l * l];
        for ch in 0..c {
            for py in 0..l {
                for px in 0..l {
                    let (yy, xx) = (
                        y as isize - (l / 2) as isize + py as isize,
                        x as isize - (l / 2) as isize + px as isize,
                    );
                    if yy >= 0 && xx >= 0 && (yy as usize) < g && (xx as usize) < g {
                        out[(ch * l + py) * l + px] = m[(ch * g + yy as usize) * g + xx as usize];
                    }
                }
            }
        }
        out
    }

    /// 3x3 / padding 1 conv + bias + ReLU on one [c, l, l] crop (kernel [c_out, c_in, 3, 3]).
    fn naive_conv_relu(x: &[f32], w: &[f32], bias: &[f32], c: usize, l: usize) -> Vec<f32> {
        let mut out = vec![0f32; c * l * l];
        for o in 0..c {
            for py in 0..l {
                for px in 0..l {
                    let mut acc = bias[o] as f64;
                    for i in 0..c {
                        for ky in 0..3 {
                            for kx in 0..3 {
                                let (yy, xx) =
                                    (py as isize + ky as isize - 1, px as isize + kx as isize - 1);
                                if yy >= 0 && xx >= 0 && (yy as usize) < l && (xx as usize) < l {
                                    acc += w[((o * c + i) * 3 + ky) * 3 + kx] as f64
                                        * x[(i * l + yy as usize) * l + xx as usize] as f64;
                                }
                            }
                        }
                    }
                    out[(o * l + py) * l + px] = acc.max(0.0) as f32;
                }
            }
        }
        out
    }

    fn tiny_cfg() -> ModelConfig {
        ModelConfig::preset(crate::config::Preset::Tiny).with_dropout(0.0).unwrap()
    }

    fn random_nets(cfg: &ModelConfig) -> (VarMap, CropNets) {
        random_nets_of(cfg, DType::F32)
    }

    fn random_nets_of(cfg: &ModelConfig, dtype: DType) -> (VarMap, CropNets) {
        let map = VarMap::new();
        let nets = CropNets::new(&Params::new(&map, &Device::Cpu, dtype), cfg).unwrap();
        for var in map.all_vars() {
            let t = Tensor::randn(0f32, 0.3, var.shape(), &Device::Cpu).unwrap();
            var.set(&t.to_dtype(dtype).unwrap()).unwrap();
        }
        (map, nets)
    }

    /// No images: empty features on both paths (cut crops without a gradient, gathered with one).
    #[test]
    fn an_empty_batch_gives_empty_features() {
        let cfg = tiny_cfg();
        let (c, g) = (cfg.crop_channels, cfg.grid());
        let (_map, nets) = random_nets(&cfg);
        let m = Tensor::zeros((0, c, g, g), DType::F32, &Device::Cpu).unwrap();
        let loc = Tensor::zeros((0, NUM_AUS, 4), DType::I64, &Device::Cpu).unwrap();
        let centres = CropCentres::new(&loc, g).unwrap();
        for mode in [PartMode::EVAL, PartMode::TRAIN] {
            let out = nets.forward(&m, &centres, mode).unwrap();
            assert_eq!(out.dims(), [0, NUM_CROPS, cfg.au_feat]);
        }
    }

    #[test]
    fn batched_crop_nets_match_a_per_crop_loop() {
        let cfg = tiny_cfg();
        let (c, g, l, f) = (cfg.crop_channels, cfg.grid(), cfg.crop_side(), cfg.au_feat);
        let (_map, nets) = random_nets(&cfg);
        let batch = 2;
        // Centres in [0, G], some windows leaving the map (zero fill) and some at the corners.
        let mut loc: Vec<i64> =
            (0..batch * NUM_AUS * 4).map(|i| ((i * 7 + 3) % (g + 1)) as i64).collect();
        loc[0] = 0;
        loc[1] = g as i64;
        let m = Tensor::randn(0f32, 1., (batch, c, g, g), &Device::Cpu).unwrap();
        let centres = CropCentres::new(&loc_tensor(&loc, batch), g).unwrap();
        // Both paths without a gradient: the crops cut as images (what `forward` takes on the
        // CPU) and the gathered im2col products (other devices), a chunk of crops at a time.
        let direct = nets.forward(&m, &centres, PartMode::EVAL).unwrap();
        let rows = nets.geom.padded_rows(&m, &centres).unwrap();
        let ids = centres.im2col_rows(g, l);
        let first = Crop1::Gathered { rows: &rows, ids: &ids };
        let gathered = nets.crops_in_chunks(&first, m.dims4().unwrap(), PartMode::EVAL).unwrap();
        let gathered = gathered.permute((2, 0, 1)).unwrap().contiguous().unwrap();
        for (path, got) in [("direct", direct), ("gathered", gathered)] {
            assert_eq!(got.dims(), [batch, NUM_CROPS, f], "{path}");
            let got = got.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let ms = m.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let v = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            for n in 0..batch {
                let mn = &ms[n * c * g * g..(n + 1) * c * g * g];
                for k in 0..NUM_CROPS {
                    let (i, cc) = (k / 2, k % 2);
                    let at = (n * NUM_AUS + i) * 4 + 2 * cc;
                    let crop = naive_crop(mn, c, g, l, loc[at] as usize, loc[at + 1] as usize);
                    let h1 = naive_conv_relu(
                        &crop,
                        &v(&nets.conv_w.get(k).unwrap()),
                        &v(&nets.conv_b.get(k).unwrap()),
                        c,
                        l,
                    );
                    let (w2, b2) = (v(&nets.fc_w.get(k).unwrap()), v(&nets.fc_b.get(k).unwrap()));
                    for o in 0..f {
                        let acc: f64 = b2[o] as f64
                            + h1.iter()
                                .enumerate()
                                .map(|(j, h)| w2[o * h1.len() + j] as f64 * *h as f64)
                                .sum::<f64>();
                        let expect = acc.max(0.0);
                        let g_ = got[(n * NUM_CROPS + k) * f + o] as f64;
                        assert!(
                            (g_ - expect).abs() < 1e-4 * (1.0 + expect.abs()),
                            "{path}: n {n} k {k} o {o}: {g_} vs {expect}"
                        );
                    }
                }
            }
        }
    }

    /// The reference's per-crop loop written with Candle ops (narrow the padded map, conv2d,
    /// linear), for comparing gradients with the batched version.
    fn per_crop_loop(nets: &CropNets, m: &Tensor, loc: &[i64]) -> Tensor {
        let (b, _, _, _) = m.dims4().unwrap();
        let (l, h) = (nets.geom.side, nets.geom.side / 2);
        let padded = m.pad_with_zeros(2, h, h).unwrap().pad_with_zeros(3, h, h).unwrap();
        let mut rows = vec![];
        for n in 0..b {
            let mut feats = vec![];
            for k in 0..NUM_CROPS {
                let at = (n * NUM_AUS + k / 2) * 4 + 2 * (k % 2);
                let (x, y) = (loc[at] as usize, loc[at + 1] as usize);
                let crop = padded
                    .narrow(0, n, 1)
                    .unwrap()
                    .narrow(2, y, l)
                    .unwrap()
                    .narrow(3, x, l)
                    .unwrap();
                let c1 = crop.conv2d(&nets.conv_w.get(k).unwrap(), 1, 1, 1, 1).unwrap();
                let c1 = c1
                    .broadcast_add(&nets.conv_b.get(k).unwrap().reshape((1, (), 1, 1)).unwrap())
                    .unwrap()
                    .relu()
                    .unwrap();
                let f = c1
                    .flatten_all()
                    .unwrap()
                    .unsqueeze(0)
                    .unwrap()
                    .matmul(&nets.fc_w.get(k).unwrap().t().unwrap())
                    .unwrap();
                feats.push(f.broadcast_add(&nets.fc_b.get(k).unwrap()).unwrap().relu().unwrap());
            }
            rows.push(Tensor::cat(&feats, 0).unwrap());
        }
        Tensor::stack(&rows, 0).unwrap()
    }

    #[test]
    fn batched_crop_net_gradients_match_the_per_crop_loop() {
        // Reference-sized channels (64) on a small grid. In f64: the two sides sum in different
        // orders, and in f32 a pre-activation within rounding of a ReLU's kink took the other
        // side in about one random draw in 30, moving one unit's share of the gradient (0.2%).
        let mut cfg =
            ModelConfig::preset(crate::config::Preset::Resnet18).with_dropout(0.0).unwrap();
        cfg = cfg.with_input_size(64).unwrap();
        cfg.au_feat = 8;
        let (c, g) = (cfg.crop_channels, cfg.grid());
        let (_map, nets) = random_nets_of(&cfg, DType::F64);
        let batch = 2;
        let loc: Vec<i64> = (0..batch * NUM_AUS * 4).map(|i| (3 + (i * 7) % 11) as i64).collect();
        let m = Var::randn(0f64, 1., (batch, c, g, g), &Device::Cpu).unwrap();
        let coef = Tensor::randn(0f64, 1., (batch, NUM_CROPS, cfg.au_feat), &Device::Cpu).unwrap();
        let centres = CropCentres::new(&loc_tensor(&loc, batch), g).unwrap();
        let ours = nets.forward(&m, &centres, PartMode::TRAIN).unwrap();
        let reference = per_crop_loop(&nets, &m, &loc);
        let close = |a: &Tensor, b: &Tensor, what: &str| {
            let d = (a - b)
                .unwrap()
                .sqr()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f64>()
                .unwrap()
                .sqrt();
            let n = b.sqr().unwrap().sum_all().unwrap().to_scalar::<f64>().unwrap().sqrt();
            assert!(d <= 1e-12 * n, "{what}: relative error {}", d / n);
        };
        close(&ours, &reference, "outputs");
        let g_ours = ours.mul(&coef).unwrap().sum_all().unwrap().backward().unwrap();
        let g_ref = reference.mul(&coef).unwrap().sum_all().unwrap().backward().unwrap();
        close(
            g_ours.get(m.as_tensor()).unwrap(),
            g_ref.get(m.as_tensor()).unwrap(),
            "gradient wrt M",
        );
        // Every crop's parameters at once: the group variables' whole gradients.
        for (p, what) in [
            (&nets.conv_w, "Crop_Net_1 weights"),
            (&nets.conv_b, "Crop_Net_1 biases"),
            (&nets.fc_w, "Crop_Net_2 weights"),
            (&nets.fc_b, "Crop_Net_2 biases"),
        ] {
            close(g_ours.get(p).unwrap(), g_ref.get(p).unwrap(), what);
        }
    }

    #[test]
    fn crop_gather_reads_zeros_outside_the_map_and_routes_gradients() {
        // With identity-like crop nets the gradient w.r.t. M counts how often each pixel is read.
        let cfg = tiny_cfg();
        let (c, g) = (cfg.crop_channels, cfg.grid());
        let (_map, nets) = random_nets(&cfg);
        let loc = vec![0i64; NUM_AUS * 4]; // every crop at the corner: 3/4 of each window outside
        let centres = CropCentres::new(&loc_tensor(&loc, 1), g).unwrap();
        let m = Var::randn(0f32, 1., (1, c, g, g), &Device::Cpu).unwrap();
        let out = nets.forward(&m, &centres, PartMode::TRAIN).unwrap();
        let grads = out.sum_all().unwrap().backward().unwrap();
        let gm = grads.get(m.as_tensor()).unwrap();
        // Only the top-left L/2 x L/2 block of M is inside the windows: the rest gets no gradient.
        let h = cfg.crop_side() / 2;
        let outside = gm
            .narrow(2, h, g - h)
            .unwrap()
            .abs()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert_eq!(outside, 0.0);
        // And every crop's weights receive a gradient (each slice of the group variables).
        for p in [&nets.conv_w, &nets.fc_w] {
            let g = grads.get(p).unwrap();
            for k in 0..NUM_CROPS {
                let norm = g.get(k).unwrap().abs().unwrap().sum_all().unwrap();
                assert!(norm.to_scalar::<f32>().unwrap() > 0.0, "crop {k}: no gradient");
            }
        }
    }

    #[test]
    fn centres_outside_the_grid_are_an_error_naming_the_sample() {
        let mut loc = vec![5i64; 2 * NUM_AUS * 4];
        loc[NUM_AUS * 4 + 3 * 4 + 1] = 17;
        let err = CropCentres::new(&loc_tensor(&loc, 2), 16).unwrap_err().to_string();
        assert!(err.contains("au_loc") && err.contains("sample 1, AU index 3"), "{err}");
        let bad = Tensor::zeros((2, 17, 2), DType::I64, &Device::Cpu).unwrap();
        assert!(CropCentres::new(&bad, 16).unwrap_err().to_string().contains("[B, 17, 4]"));
    }
}

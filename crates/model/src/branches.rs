//! The expression (EM), AU and fusion branches of AUE-CRL (docs/METHOD.md section 3, generalised to
//! the widths of section 8).

use aue_core::NUM_AUS;
use candle_core::{D, DType, Tensor, Var};

use crate::config::ModelConfig;
use crate::crops::{CropCentres, CropNets};
use crate::error::Result;
use crate::nn::{
    BatchNorm, Conv2d, ConvSpec, ConvTranspose2d, Linear, Params, PartMode, batch_norm_eval,
    batch_norm_train, dropout, lrn_quirk, max_pool_exact, update_running,
};

/// Conv (or transposed conv) -> BatchNorm -> ReLU, as `nn.Sequential` at `.0`, `.1`, (`.2` = ReLU).
#[derive(Debug, Clone)]
pub(crate) struct ConvBnRelu<C> {
    pub(crate) conv: C,
    pub(crate) bn: BatchNorm,
}

impl ConvBnRelu<Conv2d> {
    fn conv3x3(p: &Params, c_in: usize, c_out: usize) -> Result<Self> {
        Ok(ConvBnRelu {
            conv: Conv2d::new(&p.pp(0), ConvSpec::same(c_in, c_out, 3))?,
            bn: BatchNorm::new(&p.pp(1), c_out)?,
        })
    }

    fn forward(&self, x: &Tensor, mode: PartMode) -> Result<Tensor> {
        self.bn.forward_relu(&self.conv.forward(x, mode)?, mode)
    }
}

impl ConvBnRelu<ConvTranspose2d> {
    fn deconv(p: &Params, c_in: usize, c_out: usize) -> Result<Self> {
        Ok(ConvBnRelu {
            conv: ConvTranspose2d::new(&p.pp(0), c_in, c_out)?,
            bn: BatchNorm::new(&p.pp(1), c_out)?,
        })
    }

    fn forward(&self, x: &Tensor, mode: PartMode) -> Result<Tensor> {
        self.bn.forward_relu(&self.conv.forward(x, mode)?, mode)
    }
}

/// EM branch up to `feature`: pool f1..f3 to f4's side, concat, LRN, `reduce_dim_em`, global
/// average pool. (`pred_em` is separate: stage 3 trains it while this part is frozen.)
#[derive(Debug, Clone)]
pub(crate) struct EmBranch {
    pub(crate) reduce_dim_em: ConvBnRelu<Conv2d>,
}

impl EmBranch {
    pub(crate) fn new(p: &Params, cfg: &ModelConfig) -> Result<Self> {
        let c_in = cfg.widths().iter().sum();
        Ok(EmBranch {
            reduce_dim_em: ConvBnRelu::conv3x3(&p.pp("reduce_dim_em"), c_in, cfg.em_dim)?,
        })
    }

    /// # Shapes
    /// f1..f4 (see `ResNet::forward`) -> feature [B, em_dim]
    pub(crate) fn forward(&self, f: &[Tensor; 4], mode: PartMode) -> Result<Tensor> {
        let [f1, f2, f3, f4] = f.clone().map(|t| mode.see(&t));
        // kernel = stride 8, 4, 2 bring S/4, S/8, S/16 down to S/32
        let x = Tensor::cat(
            &[max_pool_exact(&f1, 8)?, max_pool_exact(&f2, 4)?, max_pool_exact(&f3, 2)?, f4],
            1,
        )?;
        // [B, C1 + C2 + C3 + C4, S/32, S/32]
        let x = self.reduce_dim_em.forward(&lrn_quirk(&x)?, mode)?; // [B, em_dim, S/32, S/32]
        Ok(x.mean((2, 3))?)
    }
}

/// AU branch: the decoder to the G grid, LRN, the 34 crop nets and `pred_au`.
#[derive(Debug, Clone)]
pub(crate) struct AuBranch {
    pub(crate) deconv: [ConvBnRelu<ConvTranspose2d>; 3],
    pub(crate) reduce: [ConvBnRelu<Conv2d>; 3],
    pub(crate) crops: CropNets,
    pub(crate) pred_au: Linear,
}

impl AuBranch {
    pub(crate) fn new(p: &Params, cfg: &ModelConfig) -> Result<Self> {
        let [c1, c2, c3, c4] = cfg.widths();
        let deconv = [
            ConvBnRelu::deconv(&p.pp("deconv_layer1"), c4, c3)?,
            ConvBnRelu::deconv(&p.pp("deconv_layer2"), c3, c2)?,
            ConvBnRelu::deconv(&p.pp("deconv_layer3"), c2, c1)?,
        ];
        let reduce = [
            ConvBnRelu::conv3x3(&p.pp("reduce_dim_1_au"), 2 * c3, c3)?,
            ConvBnRelu::conv3x3(&p.pp("reduce_dim_2_au"), 2 * c2, c2)?,
            ConvBnRelu::conv3x3(&p.pp("reduce_dim_3_au"), 2 * c1, cfg.crop_channels)?,
        ];
        let crops = CropNets::new(p, cfg)?;
        let pred_au = Linear::new(&p.pp("pred_au").pp(0), 2 * NUM_AUS * cfg.au_feat, NUM_AUS)?;
        Ok(AuBranch { deconv, reduce, crops, pred_au })
    }

    /// # Shapes
    /// f1..f4 -> au_feat [B, 34, au_feat], pred_au [B, 17] (probabilities)
    pub(crate) fn forward(
        &self,
        f: &[Tensor; 4],
        centres: &CropCentres,
        mode: PartMode,
    ) -> Result<(Tensor, Tensor)> {
        let [f1, f2, f3, f4] = f.clone().map(|t| mode.see(&t));
        let mut x = f4;
        for (i, skip) in [f3, f2, f1].iter().enumerate() {
            let up = self.deconv[i].forward(&x, mode)?; // [B, C_{3-i}, 2h, 2w]
            x = self.reduce[i].forward(&Tensor::cat(&[skip, &up], 1)?, mode)?;
        }
        let m = lrn_quirk(&x)?; // [B, crop_channels, G, G]
        let au_feat = self.crops.forward(&m, centres, mode)?; // [B, 34, F]
        let logits = self.pred_au.forward(&au_feat.flatten_from(1)?, mode)?; // [B, 17]
        Ok((au_feat, candle_nn::ops::sigmoid(&logits)?))
    }
}

/// Fusion branch (stage 3): `fc_em_fuse_3`, the 17 `fc_au_fuse_3.{i}`, `fc_attention_fuse_3`,
/// `pred_em_fuse_3`. The 17 AU heads' parameters and BatchNorm statistics are group variables
/// (`crate::state`), run as one batched product and one BatchNorm over [17, Dim] channels.
#[derive(Debug, Clone)]
pub(crate) struct Fusion {
    pub(crate) em_fc: Linear,
    pub(crate) em_bn: BatchNorm,
    /// The 17 heads' Linear: weight [17, Dim, 2F], bias [17, Dim].
    pub(crate) au_w: Tensor,
    pub(crate) au_b: Tensor,
    /// The 17 heads' BatchNorm1d: weight, bias [17, Dim]; running statistics [17, Dim] and
    /// counters [17].
    pub(crate) au_bn_w: Tensor,
    pub(crate) au_bn_b: Tensor,
    pub(crate) au_running_mean: Var,
    pub(crate) au_running_var: Var,
    pub(crate) au_batches: Var,
    pub(crate) attention: Linear,
    pub(crate) pred: Linear,
    pub(crate) dropout: f32,
}

impl Fusion {
    pub(crate) fn new(p: &Params, cfg: &ModelConfig) -> Result<Self> {
        let (dim, row) = (cfg.fuse_dim, 2 * cfg.au_feat);
        let em = p.pp("fc_em_fuse_3");
        let heads = "fc_au_fuse_3";
        let n = NUM_AUS;
        Ok(Fusion {
            em_fc: Linear::new(&em.pp(1), cfg.em_dim, dim)?,
            em_bn: BatchNorm::new(&em.pp(2), dim)?,
            au_w: p.group_param(heads, n, "1.weight", &[dim, row])?,
            au_b: p.group_param(heads, n, "1.bias", &[dim])?,
            au_bn_w: p.group_param(heads, n, "2.weight", &[dim])?,
            au_bn_b: p.group_param(heads, n, "2.bias", &[dim])?,
            au_running_mean: p.group_var(heads, n, "2.running_mean", &[dim], p.dtype())?,
            au_running_var: p.group_var(heads, n, "2.running_var", &[dim], p.dtype())?,
            au_batches: p.group_var(heads, n, "2.num_batches_tracked", &[], DType::I64)?,
            attention: Linear::new(&p.pp("fc_attention_fuse_3").pp(0), dim, 1)?,
            pred: Linear::new(&p.pp("pred_em_fuse_3"), cfg.em_dim + row, cfg.num_classes)?,
            dropout: cfg.dropout,
        })
    }

    /// # Shapes
    /// feature [B, em_dim], au_feat [B, 34, F] -> pred2 [B, classes], au_prob [B, 17]
    pub(crate) fn forward(
        &self,
        feature: &Tensor,
        au_feat: &Tensor,
        mode: PartMode,
    ) -> Result<(Tensor, Tensor)> {
        let (feature, au_feat) = (mode.see(feature), mode.see(au_feat));
        let (b, _, width) = au_feat.dims3()?;
        // quirk: viewed as [B, 2, 17, F] then transposed, so row i = [crop i, crop i + 17].
        let rows = au_feat.reshape((b, 2, NUM_AUS, width))?.transpose(1, 2)?.reshape((
            b,
            NUM_AUS,
            2 * width,
        ))?;
        let em = self.em_fc.forward(&dropout(&feature, self.dropout, mode)?, mode)?;
        let em = self.em_bn.forward(&em, mode)?.tanh()?; // [B, Dim]
        let au = self.au_heads(&dropout(&rows, self.dropout, mode)?, mode)?; // [17, B, Dim]
        let logits = self
            .attention
            .forward(&au.broadcast_mul(&em.unsqueeze(0)?)?.reshape((NUM_AUS * b, ()))?, mode)?;
        let logits = logits.relu()?.reshape((NUM_AUS, b))?.t()?; // [B, 17]
        // candle_nn::ops::softmax_last_dim has no backward (see crate::nn): use the composite one.
        let au_prob = candle_nn::ops::softmax(&logits, D::Minus1)?;
        let result = au_prob.unsqueeze(1)?.matmul(&rows)?.squeeze(1)?; // [B, 2F]
        let pred2 = self.pred.forward(&Tensor::cat(&[&feature, &result], 1)?, mode)?;
        Ok((pred2, au_prob))
    }

    /// The 17 `Linear -> BatchNorm1d -> Tanh` heads, batched.
    ///
    /// # Shapes
    /// rows [B, 17, 2F] -> [17, B, Dim]
    fn au_heads(&self, rows: &Tensor, mode: PartMode) -> Result<Tensor> {
        let w = mode.see(&self.au_w); // [17, Dim, 2F]
        let bias = mode.see(&self.au_b).unsqueeze(2)?; // [17, Dim, 1]
        // W x rows^T with the weight in its own layout (its gradient needs no transposed copy).
        // (rows^T is small; made contiguous so that every backend's batched gemm takes it.)
        let rows_t = rows.permute((1, 2, 0))?.contiguous()?; // [17, 2F, B]
        // aue-kernels' batched product (Candle's values): the 17 products split between the
        // threads, where Candle's matmul splits each small product, forward and backward.
        let x = aue_kernels::batched_matmul(&w, &rows_t).map_err(candle_core::Error::from)?;
        let x = x.broadcast_add(&bias)?; // [17, Dim, B]
        let gamma = mode.see(&self.au_bn_w).unsqueeze(2)?; // [17, Dim, 1]
        let beta = mode.see(&self.au_bn_b).unsqueeze(2)?;
        let y = if mode.train_bn {
            let (y, mean, var) = batch_norm_train(&x, &gamma, &beta, &[2])?;
            update_running(
                &self.au_running_mean,
                &self.au_running_var,
                &self.au_batches,
                &mean.squeeze(2)?,
                &var.squeeze(2)?,
            )?;
            y
        } else {
            let rm = self.au_running_mean.as_tensor().detach().unsqueeze(2)?;
            let rv = self.au_running_var.as_tensor().detach().unsqueeze(2)?;
            batch_norm_eval(&x, &gamma, &beta, &rm, &rv)?
        };
        Ok(y.tanh()?.transpose(1, 2)?) // [17, B, Dim]
    }
}

//! Layers and ops the model is built from, written for training on Candle 0.11.
//!
//! Candle 0.11 has gaps that matter here; each has a replacement below and a unit test that fails
//! if a Candle upgrade changes the behaviour (so the replacement can be reconsidered):
//! - `max_pool2d`'s backward multiplies the gradient by (#maxima)/k^2 instead of dividing by the
//!   number of maxima, so with kernel = stride the gradient is 1/k^2 too small:
//!   [`max_pool_exact`] reshapes and takes the max instead (exact gradient).
//! - pooling has no padding, and `max_pool2d` has no backward when kernel != stride, so the ResNet
//!   stem's 3x3 / stride 2 / padding 1 max pool has no gradient: [`max_pool_3x3_s2_p1`] is
//!   aue-kernels' `max_pool2d_train` (on other devices: -inf padding and the max of the 9 taps
//!   gathered by one `index_select`).
//! - `relu` runs on one thread with a six-pass backward: [`relu`] is aue-kernels' one-pass op.
//! - `candle_nn::ops::softmax_last_dim` is a custom op without a backward: its gradient is silently
//!   dropped. The model uses `candle_nn::ops::softmax`, which is made of differentiable ops.
//! - `Tensor::clamp` is `maximum` then `minimum`, whose backward gives half the gradient where the
//!   value sits exactly on a bound (PyTorch gives all of it): [`clamp_exact`].
//! - no local response norm: [`lrn_quirk`] writes the reference's (docs/METHOD.md section 3, step 2).
//! - `candle_nn::SGD` has no momentum; the trainer implements SGD with momentum itself.
//! - candle-transformers' ResNet is inference-only; `crate::resnet` is ours.
//! - Candle's CPU random numbers (and so `candle_nn::ops::dropout`) come from an unseeded
//!   generator: [`seed_dropout`] gives the thread's dropout masks a seeded stream instead.
//!
//! Every convolution goes through [`conv2d_forward`] and every transposed convolution through
//! [`conv_transpose2d_forward`], so that a faster implementation (a custom op with a better
//! backward) can replace them in one place.

use std::cell::RefCell;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarMap;
use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::error::{ModelError, Result, TensorMismatch};

/// How one part of the model runs in a forward pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartMode {
    /// BatchNorm uses batch statistics and updates its running statistics (PyTorch train mode);
    /// otherwise it uses the running statistics (eval mode).
    pub train_bn: bool,
    /// Dropout layers are active (they also need a non-zero `ModelConfig::dropout`).
    pub dropout: bool,
    /// The part builds a gradient graph. When false the part runs like PyTorch's `no_grad`: its
    /// parameters and inputs are detached, so no gradient reaches them or flows through the part.
    pub grad: bool,
}

impl PartMode {
    /// PyTorch `eval()` under `no_grad`.
    pub const EVAL: PartMode = PartMode { train_bn: false, dropout: false, grad: false };
    /// PyTorch `train()` with gradients.
    pub const TRAIN: PartMode = PartMode { train_bn: true, dropout: true, grad: true };
    /// PyTorch `train()` under `no_grad` (a frozen part left in train mode).
    pub const FROZEN_TRAIN: PartMode = PartMode { train_bn: true, dropout: true, grad: false };

    /// `t` as this part sees it: detached when the part runs without gradient.
    pub(crate) fn see(&self, t: &Tensor) -> Tensor {
        if self.grad { t.clone() } else { t.detach() }
    }
}

/// Creates or fetches the model's variables in a [`VarMap`] under a dotted prefix (like
/// `candle_nn::VarBuilder::pp`), so that names are exactly the reference state-dict keys.
///
/// A missing variable is created filled with zeros (the initialisers in `crate::init` set values);
/// an existing one must have the requested shape and dtype.
#[derive(Clone)]
pub(crate) struct Params {
    map: VarMap,
    prefix: String,
    device: Device,
    /// The float dtype of parameters and BN statistics (F32; F64 for precision checks).
    dtype: DType,
}

impl Params {
    pub(crate) fn new(map: &VarMap, device: &Device, dtype: DType) -> Self {
        Params { map: map.clone(), prefix: String::new(), device: device.clone(), dtype }
    }

    /// The sub-builder for module `name` (`pp("layer1").pp(0)` -> `layer1.0.`).
    pub(crate) fn pp(&self, name: impl std::fmt::Display) -> Self {
        Params { prefix: format!("{}{name}.", self.prefix), ..self.clone() }
    }

    pub(crate) fn device(&self) -> &Device {
        &self.device
    }

    pub(crate) fn dtype(&self) -> DType {
        self.dtype
    }

    /// The variable `name` under this prefix.
    pub(crate) fn var(&self, name: &str, shape: &[usize], dtype: DType) -> Result<Var> {
        let key = format!("{}{name}", self.prefix);
        let mut data = self.map.data().lock().unwrap_or_else(|e| e.into_inner());
        if let Some(var) = data.get(&key) {
            TensorMismatch::check(
                "<model state>".as_ref(),
                &key,
                (var.dims(), var.dtype()),
                (shape, dtype),
            )?;
            return Ok(var.clone());
        }
        let var = Var::zeros(shape, dtype, &self.device)?;
        data.insert(key, var.clone());
        Ok(var)
    }

    /// A float parameter, as the tensor the forward pass uses (it shares the variable's storage).
    pub(crate) fn param(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        Ok(self.var(name, shape, self.dtype)?.as_tensor().clone())
    }

    /// The variables `{family}.{i}.{suffix}` for i < `count`, each of `shape`, held as one group
    /// variable of shape [count, shape...] under the key `{family}.*.{suffix}` (see
    /// `crate::state`): the stacked weights a batched product uses.
    pub(crate) fn group_var(
        &self,
        family: &str,
        count: usize,
        suffix: &str,
        shape: &[usize],
        dtype: DType,
    ) -> Result<Var> {
        let mut full = vec![count];
        full.extend_from_slice(shape);
        self.var(&crate::state::group_key(family, suffix), &full, dtype)
    }

    /// A float group parameter (see [`Params::group_var`]), as the forward pass uses it.
    pub(crate) fn group_param(
        &self,
        family: &str,
        count: usize,
        suffix: &str,
        shape: &[usize],
    ) -> Result<Tensor> {
        Ok(self.group_var(family, count, suffix, shape, self.dtype)?.as_tensor().clone())
    }
}

/// Every 2-d convolution of the model.
///
/// # Shapes
/// x [B, C_in, H, W], weight [C_out, C_in, k, k] -> [B, C_out, H', W']
pub fn conv2d_forward(
    x: &Tensor,
    weight: &Tensor,
    stride: usize,
    padding: usize,
) -> Result<Tensor> {
    // Through aue-kernels: Candle's own backward computes the input gradient with a naive
    // transposed convolution (4.5x the forward on CPU); these run both gradients as forward
    // convolutions.
    let params = aue_kernels::ConvParams { stride, padding, dilation: 1 };
    Ok(aue_kernels::conv2d(x, weight, params).map_err(candle_core::Error::from)?)
}

/// Every 2-d transposed convolution of the model (PyTorch weight layout [C_in, C_out, k, k]).
///
/// # Shapes
/// x [B, C_in, H, W], weight [C_in, C_out, k, k] -> [B, C_out, (H - 1) * stride - 2 * padding + k, ...]
pub fn conv_transpose2d_forward(
    x: &Tensor,
    weight: &Tensor,
    stride: usize,
    padding: usize,
) -> Result<Tensor> {
    let params =
        aue_kernels::ConvTransposeParams { stride, padding, output_padding: 0, dilation: 1 };
    Ok(aue_kernels::conv_transpose2d(x, weight, params).map_err(candle_core::Error::from)?)
}

/// The geometry of a square convolution.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ConvSpec {
    pub in_channels: usize,
    pub out_channels: usize,
    pub kernel: usize,
    pub stride: usize,
    pub padding: usize,
    pub bias: bool,
}

impl ConvSpec {
    /// A `kernel` x `kernel` convolution, stride 1, "same" padding, no bias.
    pub(crate) fn same(in_channels: usize, out_channels: usize, kernel: usize) -> Self {
        ConvSpec { in_channels, out_channels, kernel, stride: 1, padding: kernel / 2, bias: false }
    }

    pub(crate) fn stride(self, stride: usize) -> Self {
        ConvSpec { stride, ..self }
    }

    pub(crate) fn padding(self, padding: usize) -> Self {
        ConvSpec { padding, ..self }
    }
}

/// `nn.Conv2d` (weight [C_out, C_in, k, k], optional bias).
#[derive(Debug, Clone)]
pub(crate) struct Conv2d {
    pub(crate) weight: Tensor,
    pub(crate) bias: Option<Tensor>,
    pub(crate) stride: usize,
    pub(crate) padding: usize,
}

impl Conv2d {
    pub(crate) fn new(p: &Params, s: ConvSpec) -> Result<Self> {
        let weight = p.param("weight", &[s.out_channels, s.in_channels, s.kernel, s.kernel])?;
        let bias = if s.bias { Some(p.param("bias", &[s.out_channels])?) } else { None };
        Ok(Conv2d { weight, bias, stride: s.stride, padding: s.padding })
    }

    /// # Shapes
    /// x [B, C_in, H, W] -> [B, C_out, H', W']
    pub(crate) fn forward(&self, x: &Tensor, mode: PartMode) -> Result<Tensor> {
        let y = conv2d_forward(x, &mode.see(&self.weight), self.stride, self.padding)?;
        match &self.bias {
            Some(b) => Ok(y.broadcast_add(&mode.see(b).reshape((1, (), 1, 1))?)?),
            None => Ok(y),
        }
    }
}

/// `nn.ConvTranspose2d(c_in, c_out, 4, stride 2, padding 1, bias=False)` of the AU decoder.
#[derive(Debug, Clone)]
pub(crate) struct ConvTranspose2d {
    pub(crate) weight: Tensor,
    pub(crate) stride: usize,
    pub(crate) padding: usize,
}

impl ConvTranspose2d {
    pub(crate) fn new(p: &Params, in_channels: usize, out_channels: usize) -> Result<Self> {
        let weight = p.param("weight", &[in_channels, out_channels, 4, 4])?;
        Ok(ConvTranspose2d { weight, stride: 2, padding: 1 })
    }

    /// # Shapes
    /// x [B, C_in, H, W] -> [B, C_out, 2H, 2W]
    pub(crate) fn forward(&self, x: &Tensor, mode: PartMode) -> Result<Tensor> {
        conv_transpose2d_forward(x, &mode.see(&self.weight), self.stride, self.padding)
    }
}

/// `nn.Linear` (weight [out, in], bias [out]).
#[derive(Debug, Clone)]
pub(crate) struct Linear {
    pub(crate) weight: Tensor,
    pub(crate) bias: Tensor,
}

impl Linear {
    pub(crate) fn new(p: &Params, in_features: usize, out_features: usize) -> Result<Self> {
        let weight = p.param("weight", &[out_features, in_features])?;
        let bias = p.param("bias", &[out_features])?;
        Ok(Linear { weight, bias })
    }

    /// On the CPU `x W^T` is aue-kernels' product with `W` in its own layout: through Candle's
    /// transposed view the weight's gradient came out transposed and was copied on one thread
    /// (4 MB for the fusion layer's `[1024, 1024]`, about 2% of a two-thread stage-3 step).
    ///
    /// # Shapes
    /// x [B, in] -> [B, out]
    pub(crate) fn forward(&self, x: &Tensor, mode: PartMode) -> Result<Tensor> {
        let w = mode.see(&self.weight);
        let y = if aue_kernels::train_kernels_supported(x) {
            let y = aue_kernels::batched_matmul_nt(&x.unsqueeze(0)?, &w.unsqueeze(0)?);
            y.map_err(candle_core::Error::from)?.squeeze(0)?
        } else {
            x.matmul(&w.t()?)?
        };
        Ok(y.broadcast_add(&mode.see(&self.bias))?)
    }
}

/// PyTorch's BatchNorm defaults.
pub const BN_EPS: f64 = 1e-5;
pub(crate) const BN_MOMENTUM: f64 = 0.1;

/// `nn.BatchNorm1d` / `nn.BatchNorm2d`: parameters `weight`, `bias`; buffers `running_mean`,
/// `running_var` and the i64 scalar `num_batches_tracked`.
#[derive(Debug, Clone)]
pub(crate) struct BatchNorm {
    pub(crate) weight: Tensor,
    pub(crate) bias: Tensor,
    pub(crate) running_mean: Var,
    pub(crate) running_var: Var,
    pub(crate) num_batches_tracked: Var,
}

impl BatchNorm {
    pub(crate) fn new(p: &Params, channels: usize) -> Result<Self> {
        Ok(BatchNorm {
            weight: p.param("weight", &[channels])?,
            bias: p.param("bias", &[channels])?,
            running_mean: p.var("running_mean", &[channels], p.dtype())?,
            running_var: p.var("running_var", &[channels], p.dtype())?,
            num_batches_tracked: p.var("num_batches_tracked", &[], DType::I64)?,
        })
    }

    /// Normalise over every dim but 1 (the channel dim).
    ///
    /// Train mode (`mode.train_bn`): batch statistics (biased variance), then running_mean and
    /// running_var (unbiased variance) move by momentum 0.1 and num_batches_tracked grows by 1,
    /// in place, as in PyTorch. Eval mode: running statistics.
    ///
    /// # Shapes
    /// x [B, C] or [B, C, H, W] -> same
    pub(crate) fn forward(&self, x: &Tensor, mode: PartMode) -> Result<Tensor> {
        self.forward_then(x, mode, Then::Nothing)
    }

    /// `relu(self.forward(x, mode))`, the same values and gradients; in train mode on the CPU
    /// one op (aue-kernels' `batch_norm_train_relu`: no normalised tensor kept for the ReLU).
    pub(crate) fn forward_relu(&self, x: &Tensor, mode: PartMode) -> Result<Tensor> {
        self.forward_then(x, mode, Then::Relu)
    }

    /// `relu(self.forward(x, mode) + residual)`, the end of a residual block: the same values
    /// and gradients as the two steps; in train mode on the CPU one op (aue-kernels'
    /// `batch_norm_train_add_relu`).
    pub(crate) fn forward_add_relu(
        &self,
        x: &Tensor,
        residual: &Tensor,
        mode: PartMode,
    ) -> Result<Tensor> {
        self.forward_then(x, mode, Then::AddRelu(residual))
    }

    fn forward_then(&self, x: &Tensor, mode: PartMode, then: Then<'_>) -> Result<Tensor> {
        let rank = x.rank();
        let c = x.dim(1)?;
        let mut stat_shape = vec![1; rank];
        stat_shape[1] = c;
        let reduce: Vec<usize> = (0..rank).filter(|&d| d != 1).collect();
        let (w, b) = (mode.see(&self.weight), mode.see(&self.bias));
        let (w, b) = (w.reshape(stat_shape.as_slice())?, b.reshape(stat_shape.as_slice())?);
        if mode.train_bn {
            let (y, mean, var) = batch_norm_train_then(x, &w, &b, &reduce, then)?;
            let (rm, rv, n) = (&self.running_mean, &self.running_var, &self.num_batches_tracked);
            update_running(rm, rv, n, &mean.reshape(c)?, &var.reshape(c)?)?;
            Ok(y)
        } else {
            // Buffers, not parameters: never part of a gradient graph.
            let rm = self.running_mean.as_tensor().detach().reshape(stat_shape.as_slice())?;
            let rv = self.running_var.as_tensor().detach().reshape(stat_shape.as_slice())?;
            then.apply(batch_norm_eval(x, &w, &b, &rm, &rv)?)
        }
    }
}

/// What follows a BatchNorm in the same op ([`BatchNorm::forward_then`]).
#[derive(Clone, Copy)]
enum Then<'a> {
    Nothing,
    Relu,
    /// `relu(y + residual)`.
    AddRelu(&'a Tensor),
}

impl Then<'_> {
    /// The step on its own, after a BatchNorm's output `y`.
    fn apply(self, y: Tensor) -> Result<Tensor> {
        match self {
            Then::Nothing => Ok(y),
            Then::Relu => relu(&y),
            Then::AddRelu(r) => Ok(aue_kernels::add_relu(&y, r).map_err(candle_core::Error::from)?),
        }
    }
}

/// Train-mode batch norm over `reduce` dims; `weight`/`bias` already have the keep-dim shape.
/// Returns the output, the batch mean and the unbiased batch variance (both detached, keep-dim
/// shape) for the running-statistics update.
///
/// # Shapes
/// x [.., C, ..], weight/bias: x's shape with the `reduce` dims set to 1 -> y like x; stats like weight
pub(crate) fn batch_norm_train(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    reduce: &[usize],
) -> Result<(Tensor, Tensor, Tensor)> {
    batch_norm_train_then(x, weight, bias, reduce, Then::Nothing)
}

/// [`batch_norm_train`], its output through `then` (one op on the CPU).
fn batch_norm_train_then(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    reduce: &[usize],
    then: Then<'_>,
) -> Result<(Tensor, Tensor, Tensor)> {
    let n: usize = reduce.iter().map(|&d| x.dims()[d]).product();
    if n < 2 {
        return Err(ModelError::input(
            "batch",
            format!(
                "BatchNorm in train mode needs more than 1 value per channel, got shape {:?}",
                x.dims()
            ),
        ));
    }
    // The kept (channel) dims must be one block: x is then [outer, c, inner] for aue-kernels'
    // one-op batch norm (CPU), much faster than the ops below.
    let dims = x.dims();
    let kept: Vec<usize> = (0..dims.len()).filter(|d| !reduce.contains(d)).collect();
    if let (Some(&a), Some(&b)) = (kept.first(), kept.last())
        && b + 1 - a == kept.len()
        && aue_kernels::batch_norm_supported(x)
    {
        let (outer, c, inner) = (
            dims[..a].iter().product::<usize>(),
            dims[a..=b].iter().product::<usize>(),
            dims[b + 1..].iter().product::<usize>(),
        );
        let (x3, w, b) = (x.reshape((outer, c, inner))?, weight.reshape(c)?, bias.reshape(c)?);
        let (y, mean, var) = match then {
            Then::Nothing => aue_kernels::batch_norm_train(&x3, &w, &b, BN_EPS),
            Then::Relu => aue_kernels::batch_norm_train_relu(&x3, &w, &b, BN_EPS),
            Then::AddRelu(r) => {
                let r = r.reshape((outer, c, inner))?;
                aue_kernels::batch_norm_train_add_relu(&x3, &r, &w, &b, BN_EPS)
            }
        }
        .map_err(candle_core::Error::from)?;
        let stat_shape = weight.shape();
        let unbiased = (var * (n as f64 / (n - 1) as f64))?.reshape(stat_shape)?;
        return Ok((y.reshape(dims)?, mean.reshape(stat_shape)?, unbiased));
    }
    let (y, mean, var) = batch_norm_train_ops(x, weight, bias, reduce)?;
    Ok((then.apply(y)?, mean, var))
}

/// [`batch_norm_train`] written with Candle ops: what other devices run (and the definition the
/// CPU kernel is tested against).
pub(crate) fn batch_norm_train_ops(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    reduce: &[usize],
) -> Result<(Tensor, Tensor, Tensor)> {
    let n: usize = reduce.iter().map(|&d| x.dims()[d]).product();
    let mean = x.mean_keepdim(reduce)?;
    let centred = x.broadcast_sub(&mean)?;
    let var = centred.sqr()?.mean_keepdim(reduce)?; // biased, as PyTorch normalises
    let inv_std = (&var + BN_EPS)?.sqrt()?.recip()?; // the gradient flows through mean and var
    let y = centred.broadcast_mul(&inv_std.broadcast_mul(weight)?)?.broadcast_add(bias)?;
    let unbiased = (var.detach() * (n as f64 / (n - 1) as f64))?;
    Ok((y, mean.detach(), unbiased))
}

/// Eval-mode batch norm with running statistics, folded into one scale and shift per channel;
/// all four statistics tensors already have the keep-dim shape.
pub(crate) fn batch_norm_eval(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    running_mean: &Tensor,
    running_var: &Tensor,
) -> Result<Tensor> {
    let scale = weight.broadcast_div(&(running_var + BN_EPS)?.sqrt()?)?;
    let shift = bias.broadcast_sub(&running_mean.broadcast_mul(&scale)?)?;
    if scale.elem_count() != x.dim(1)? {
        // A group of layers (statistics per group and channel): Candle's broadcast ops.
        return Ok(x.broadcast_mul(&scale)?.broadcast_add(&shift)?);
    }
    // One parallel pass on the CPU without gradient (a frozen part), Candle's two broadcast ops
    // otherwise; the same values either way.
    Ok(aue_kernels::channel_affine(x, &scale, &shift).map_err(candle_core::Error::from)?)
}

/// PyTorch's running-statistics update: r <- (1 - m) r + m s, num_batches_tracked += 1. Works
/// elementwise, so a group of layers (statistics [n, C], counters [n]) updates in one call.
pub(crate) fn update_running(
    running_mean: &Var,
    running_var: &Var,
    num_batches_tracked: &Var,
    batch_mean: &Tensor,
    batch_var_unbiased: &Tensor,
) -> Result<()> {
    let m = BN_MOMENTUM;
    let rm = ((running_mean.as_tensor().detach() * (1.0 - m))? + (batch_mean * m)?)?;
    let rv = ((running_var.as_tensor().detach() * (1.0 - m))? + (batch_var_unbiased * m)?)?;
    running_mean.set(&rm)?;
    running_var.set(&rv)?;
    let one = Tensor::ones((), DType::I64, num_batches_tracked.device())?;
    // A group of BatchNorm layers keeps one counter per layer: add to each.
    num_batches_tracked.set(&num_batches_tracked.as_tensor().detach().broadcast_add(&one)?)?;
    Ok(())
}

thread_local! {
    /// The stream of this thread's dropout masks, once [`seed_dropout`] has set it.
    static DROPOUT_RNG: RefCell<Option<ChaCha8Rng>> = const { RefCell::new(None) };
}

/// Seeds the dropout masks drawn on this thread from (`seed`, `epoch`), so that a training run
/// repeats exactly, also after `--resume` (the trainer calls it at the start of each epoch).
/// Without it dropout draws from Candle's generator, which is unseeded on the CPU.
pub fn seed_dropout(seed: u64, epoch: u64) {
    let mut key = [0u8; 32];
    key[0..8].copy_from_slice(&seed.to_le_bytes());
    key[8..16].copy_from_slice(&epoch.to_le_bytes());
    key[16..32].copy_from_slice(b"aue-dropout-mask");
    DROPOUT_RNG.with(|r| *r.borrow_mut() = Some(ChaCha8Rng::from_seed(key)));
}

/// Runs `f` on a thread of Rayon's global pool and returns its result, carrying this thread's
/// dropout stream ([`seed_dropout`]) there and back, so that masks continue exactly as on this
/// thread.
///
/// A training step or a forward pass is hundreds of parallel loops. Started from a thread outside
/// the pool, each loop hands its work to the pool and puts the caller to sleep until it is done
/// (two thread switches per loop, and the pool's threads sleep between loops); started from a
/// worker, a loop runs on that worker and its siblings steal from it. From a worker (a nested
/// call) `f` runs in place.
pub fn in_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    let stream = DROPOUT_RNG.with(|r| r.borrow_mut().take());
    let (out, stream) = rayon::scope(move |_| {
        let outer = DROPOUT_RNG.with(|r| r.replace(stream));
        let out = f();
        (out, DROPOUT_RNG.with(|r| r.replace(outer)))
    });
    DROPOUT_RNG.with(|r| *r.borrow_mut() = stream);
    out
}

/// Dropout with drop probability `p` when the part's dropout is active; identity otherwise.
/// Kept elements are scaled by 1 / (1 - p), as in `candle_nn::ops::dropout` and PyTorch; the mask
/// comes from the [`seed_dropout`] stream when the thread has one.
pub(crate) fn dropout(x: &Tensor, p: f32, mode: PartMode) -> Result<Tensor> {
    if !(mode.dropout && p > 0.0) {
        return Ok(x.clone());
    }
    let mask = DROPOUT_RNG.with(|r| {
        r.borrow_mut().as_mut().map(|rng| {
            let scale = 1.0 / (1.0 - p);
            // 24 random bits per element: uniform in [0, 1) on a grid of 2^-24.
            let keep = |u: u32| (u >> 8) as f32 * (1.0 / 16_777_216.0) >= p;
            (0..x.elem_count())
                .map(|_| if keep(rng.next_u32()) { scale } else { 0.0 })
                .collect::<Vec<f32>>()
        })
    });
    match mask {
        Some(mask) => {
            let mask = Tensor::from_vec(mask, x.shape(), x.device())?.to_dtype(x.dtype())?;
            Ok(x.mul(&mask)?)
        }
        None => Ok(candle_nn::ops::dropout(x, p)?),
    }
}

/// Max pool with kernel = stride = `k` by reshape + max: exact gradient, unlike Candle's
/// `max_pool2d` (see the module doc).
///
/// # Shapes
/// x [B, C, H, W] (H, W multiples of k) -> [B, C, H / k, W / k]
pub fn max_pool_exact(x: &Tensor, k: usize) -> Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    if k == 0 || h % k != 0 || w % k != 0 {
        return Err(ModelError::input(
            "max_pool",
            format!("kernel {k} does not divide the map {h}x{w}"),
        ));
    }
    if aue_kernels::train_kernels_supported(x) {
        // The same values and gradient in one parallel pass each way.
        let win = aue_kernels::PoolWindow { kernel: k, stride: k, padding: 0 };
        return Ok(aue_kernels::max_pool2d_train(x, win).map_err(candle_core::Error::from)?);
    }
    // [b, c, h/k, k, w/k, k] -> max over the two kernel axes
    Ok(x.reshape((b, c, h / k, k, w / k, k))?.max(5)?.max(3)?)
}

/// The ResNet stem's max pool: kernel 3, stride 2, padding 1 (padding never wins the max, as in
/// PyTorch), with Candle's max gradient (Candle's pooling has no padding and no backward here):
/// aue-kernels' `max_pool2d_train`, one parallel pass each way on the CPU.
///
/// # Shapes
/// x [B, C, H, W] -> [B, C, (H - 1) / 2 + 1, (W - 1) / 2 + 1]
pub fn max_pool_3x3_s2_p1(x: &Tensor) -> Result<Tensor> {
    let win = aue_kernels::PoolWindow { kernel: 3, stride: 2, padding: 1 };
    Ok(aue_kernels::max_pool2d_train(x, win).map_err(candle_core::Error::from)?)
}

/// `max(x, 0)` with Candle's gradient: aue-kernels' one-pass parallel op on the CPU (Candle's
/// `relu` and its backward run on one thread, the backward in six passes).
///
/// # Shapes
/// x any -> same
pub fn relu(x: &Tensor) -> Result<Tensor> {
    Ok(aue_kernels::relu(x).map_err(candle_core::Error::from)?)
}

/// quirk: the reference's local response norm (docs/METHOD.md section 3, step 2): size 2, alpha 1e-4,
/// beta 0.75, k 1, with the window SUMMED (it multiplies the average by the size):
/// y_c = x_c / (1 + 1e-4 (x_{c-1}^2 + x_c^2))^0.75 with x_{-1} = 0. Not PyTorch's nn.LocalResponseNorm.
///
/// On the CPU (f32, f64) aue-kernels' parallel ops, the same operations in the same order as the
/// Candle ops below and their backward pass (equal bit for bit; those run on one thread, six
/// passes forward and about fifteen backward, Candle's `powf` alone 1-2% of a two-thread stage-3
/// step): without a gradient to record (a frozen part, eval) `lrn_prev_channel` in f32, else
/// `lrn_prev_channel_train`.
///
/// # Shapes
/// x [B, C, H, W] -> [B, C, H, W]
pub fn lrn_quirk(x: &Tensor) -> Result<Tensor> {
    const ALPHA: f64 = 1e-4;
    const BETA: f64 = 0.75;
    const K: f64 = 1.0;
    if !x.track_op() && x.dims().len() == 4 && aue_kernels::infer::cpu_f32(x) {
        let (alpha, beta, k) = (ALPHA as f32, BETA as f32, K as f32);
        let y = aue_kernels::infer::lrn_prev_channel(x, alpha, beta, k);
        return Ok(y.map_err(candle_core::Error::from)?);
    }
    if x.dims().len() == 4 && aue_kernels::train_kernels_supported(x) {
        let p = aue_kernels::LrnParams { alpha: ALPHA, beta: BETA, k: K };
        return Ok(aue_kernels::lrn_prev_channel_train(x, p).map_err(candle_core::Error::from)?);
    }
    let c = x.dim(1)?;
    let sq = x.sqr()?;
    let s = if c > 1 {
        // channel c of `prev` holds x_{c-1}^2 (zero for c = 0)
        let prev = sq.narrow(1, 0, c - 1)?.pad_with_zeros(1, 1, 0)?;
        (&sq + prev)?
    } else {
        sq
    };
    Ok(x.div(&s.affine(ALPHA, K)?.powf(BETA)?)?)
}

/// Clamp to [lo, hi] with PyTorch's gradient: 1 inside the closed interval, 0 outside. Candle's
/// `clamp` (maximum then minimum) halves the gradient where a value equals a bound, and the prior
/// table starts exactly on its bounds (1.0 and 0.5).
///
/// # Shapes
/// x any -> same
pub fn clamp_exact(x: &Tensor, lo: f64, hi: f64) -> Result<Tensor> {
    let inside = x.ge(lo)?.mul(&x.le(hi)?)?;
    let clamped = x.detach().clamp(lo, hi)?;
    Ok(inside.where_cond(x, &clamped)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{D, Device};

    fn grad_of(var: &Var, loss: &Tensor) -> Option<Tensor> {
        loss.backward().unwrap().get(var.as_tensor()).cloned()
    }

    #[test]
    fn seeded_dropout_repeats_per_seed_and_epoch_and_scales_kept_values() {
        let x = Tensor::ones((4, 1000), DType::F32, &Device::Cpu).unwrap();
        let draw = |seed, epoch| {
            seed_dropout(seed, epoch);
            dropout(&x, 0.25, PartMode::TRAIN).unwrap().flatten_all().unwrap().to_vec1::<f32>()
        };
        let a = draw(3, 0).unwrap();
        assert_eq!(a, draw(3, 0).unwrap(), "same seed and epoch, same mask");
        assert_ne!(a, draw(3, 1).unwrap(), "another epoch, another mask");
        assert_ne!(a, draw(4, 0).unwrap(), "another seed, another mask");
        // Kept values are 1 / (1 - p); about p of them are dropped (4000 draws: sd 0.7%).
        assert!(a.iter().all(|&v| v == 0.0 || (v - 1.0 / 0.75).abs() < 1e-6));
        let dropped = a.iter().filter(|&&v| v == 0.0).count() as f64 / a.len() as f64;
        assert!((dropped - 0.25).abs() < 0.03, "dropped fraction {dropped}");
        let eval = dropout(&x, 0.25, PartMode::EVAL).unwrap();
        assert_eq!(eval.sum_all().unwrap().to_scalar::<f32>().unwrap(), 4000.0);
    }

    #[test]
    fn in_pool_continues_this_threads_dropout_stream() {
        let x = Tensor::ones((2, 500), DType::F32, &Device::Cpu).unwrap();
        let draw = || dropout(&x, 0.5, PartMode::TRAIN).unwrap().flatten_all().unwrap();
        let masks = |pooled: [bool; 3]| {
            seed_dropout(7, 0);
            pooled
                .map(|p| if p { in_pool(draw) } else { draw() }.to_vec1::<f32>().unwrap())
                .concat()
        };
        let here = masks([false; 3]);
        assert_eq!(masks([true, false, true]), here, "the pool's draws continue the stream");
        assert_eq!(masks([true; 3]), here);
        // Nested: the inner call runs in place and still draws from the same stream.
        seed_dropout(7, 0);
        let nested =
            in_pool(|| [draw(), in_pool(draw), draw()]).map(|t| t.to_vec1::<f32>().unwrap());
        assert_eq!(nested.concat(), here);
    }

    /// Fails when Candle fixes its max_pool2d backward (then `max_pool_exact` can go).
    #[test]
    fn candle_max_pool2d_backward_still_scales_by_one_over_k2() {
        let x = Var::new(&[[[[1f32, 2.], [4., 3.]]]], &Device::Cpu).unwrap();
        let g = grad_of(&x, &x.max_pool2d(2).unwrap().sum_all().unwrap()).unwrap();
        assert_eq!(g.flatten_all().unwrap().to_vec1::<f32>().unwrap(), [0., 0., 0.25, 0.]);
        let g = grad_of(&x, &max_pool_exact(&x, 2).unwrap().sum_all().unwrap()).unwrap();
        assert_eq!(g.flatten_all().unwrap().to_vec1::<f32>().unwrap(), [0., 0., 1., 0.]);
    }

    #[test]
    fn max_pool_exact_matches_a_loop() {
        let x = Tensor::randn(0f32, 1., (2, 3, 8, 4), &Device::Cpu).unwrap();
        let y = max_pool_exact(&x, 4).unwrap();
        assert_eq!(y.dims(), [2, 3, 2, 1]);
        let xs = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let ys = y.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        for bc in 0..6 {
            for oy in 0..2 {
                let mut m = f32::NEG_INFINITY;
                for yy in 0..4 {
                    for xx in 0..4 {
                        m = m.max(xs[bc * 32 + (oy * 4 + yy) * 4 + xx]);
                    }
                }
                assert_eq!(ys[bc * 2 + oy], m);
            }
        }
    }

    /// Fails when Candle's max_pool2d gets a backward for kernel != stride.
    #[test]
    fn candle_max_pool2d_has_no_backward_for_overlapping_windows() {
        let x = Var::rand(0f32, 1., (1, 1, 6, 6), &Device::Cpu).unwrap();
        let y = x.max_pool2d_with_stride(3, 2).unwrap().sum_all().unwrap();
        assert!(y.backward().is_err());
    }

    #[test]
    fn stem_max_pool_matches_a_loop_with_exact_gradient() {
        let (h, w) = (6, 5);
        let x = Var::randn(0f32, 1., (2, 2, h, w), &Device::Cpu).unwrap();
        let y = max_pool_3x3_s2_p1(&x).unwrap();
        let (ho, wo) = (3, 3);
        assert_eq!(y.dims(), [2, 2, ho, wo]);
        let xs = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let ys = y.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let mut expect_grad = vec![0f32; xs.len()];
        for bc in 0..4 {
            for oy in 0..ho {
                for ox in 0..wo {
                    let (mut m, mut at) = (f32::NEG_INFINITY, 0);
                    for ky in 0..3 {
                        for kx in 0..3 {
                            let (yy, xx) = ((2 * oy + ky) as isize - 1, (2 * ox + kx) as isize - 1);
                            if yy < 0 || xx < 0 || yy >= h as isize || xx >= w as isize {
                                continue;
                            }
                            let i = bc * h * w + yy as usize * w + xx as usize;
                            if xs[i] > m {
                                (m, at) = (xs[i], i);
                            }
                        }
                    }
                    assert_eq!(ys[(bc * ho + oy) * wo + ox], m);
                    expect_grad[at] += 1.0;
                }
            }
        }
        let g = grad_of(&x, &y.sum_all().unwrap()).unwrap();
        assert_eq!(g.flatten_all().unwrap().to_vec1::<f32>().unwrap(), expect_grad);
    }

    /// Fails when Candle gives `softmax_last_dim` a backward (then it could replace `softmax`).
    #[test]
    fn candle_softmax_last_dim_still_drops_its_gradient() {
        let x = Var::new(&[[0.1f32, 0.7, -0.3]], &Device::Cpu).unwrap();
        let w = Tensor::new(&[[1f32, 2., 3.]], &Device::Cpu).unwrap();
        let loss =
            candle_nn::ops::softmax_last_dim(&x).unwrap().mul(&w).unwrap().sum_all().unwrap();
        assert!(grad_of(&x, &loss).is_none());
        // The composite softmax has the analytic gradient s_i (w_i - sum_j s_j w_j).
        let s = candle_nn::ops::softmax(&x, D::Minus1).unwrap();
        let g = grad_of(&x, &s.mul(&w).unwrap().sum_all().unwrap()).unwrap();
        let sv = s.to_vec2::<f32>().unwrap()[0].clone();
        let mean_w: f32 = sv.iter().zip([1f32, 2., 3.]).map(|(s, w)| s * w).sum();
        let gv = g.to_vec2::<f32>().unwrap()[0].clone();
        for i in 0..3 {
            assert!((gv[i] - sv[i] * ((i + 1) as f32 - mean_w)).abs() < 1e-6);
        }
    }

    /// Fails when Candle's clamp gets PyTorch's gradient at the bounds (then `clamp_exact` can go).
    #[test]
    fn candle_clamp_halves_the_gradient_on_a_bound() {
        let x = Var::new(&[0.75f32, 1.0, 0.9, 1.2, 0.3], &Device::Cpu).unwrap();
        let g = grad_of(&x, &x.clamp(0.75f32, 1.0f32).unwrap().sum_all().unwrap()).unwrap();
        assert_eq!(g.to_vec1::<f32>().unwrap(), [0.5, 0.5, 1., 0., 0.]);
        let y = clamp_exact(&x, 0.75, 1.0).unwrap();
        assert_eq!(y.to_vec1::<f32>().unwrap(), [0.75, 1.0, 0.9, 1.0, 0.75]);
        let g = grad_of(&x, &y.sum_all().unwrap()).unwrap();
        assert_eq!(g.to_vec1::<f32>().unwrap(), [1., 1., 1., 0., 0.]);
    }

    #[test]
    fn lrn_without_gradient_equals_the_recorded_ops_bit_for_bit() {
        let x = (Tensor::randn(0f32, 1., (2, 7, 5, 3), &Device::Cpu).unwrap() * 40.).unwrap();
        let var = candle_core::Var::from_tensor(&x).unwrap();
        let (plain, recorded) = (lrn_quirk(&x).unwrap(), lrn_quirk(var.as_tensor()).unwrap());
        assert!(!plain.track_op() && recorded.track_op());
        let bits = |t: &Tensor| {
            t.flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().map(|v| v.to_bits()).collect()
        };
        let (a, b): (Vec<u32>, Vec<u32>) = (bits(&plain), bits(&recorded));
        assert_eq!(a, b);
    }

    #[test]
    fn lrn_matches_the_summed_window_formula() {
        let x = (Tensor::randn(0f32, 1., (2, 5, 3, 2), &Device::Cpu).unwrap() * 40.).unwrap();
        let y = lrn_quirk(&x).unwrap();
        let xs = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let ys = y.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let hw = 6;
        for b in 0..2 {
            for c in 0..5 {
                for p in 0..hw {
                    let at = |c: usize| xs[(b * 5 + c) * hw + p] as f64;
                    let prev = if c == 0 { 0.0 } else { at(c - 1).powi(2) };
                    let expect = at(c) / (1.0 + 1e-4 * (prev + at(c).powi(2))).powf(0.75);
                    let got = ys[(b * 5 + c) * hw + p] as f64;
                    assert!((got - expect).abs() <= 1e-5 * expect.abs().max(1.0), "{got} {expect}");
                }
            }
        }
    }

    #[test]
    fn batch_norm_train_and_eval_match_pytorch_formulas() {
        let map = VarMap::new();
        let p = Params::new(&map, &Device::Cpu, DType::F32).pp("bn");
        let bn = BatchNorm::new(&p, 3).unwrap();
        let set = |k: &str, v: &[f32]| {
            map.data().lock().unwrap()[k].set(&Tensor::new(v, &Device::Cpu).unwrap()).unwrap()
        };
        set("bn.weight", &[1.5, 0.5, 2.0]);
        set("bn.bias", &[0.1, -0.2, 0.3]);
        set("bn.running_mean", &[0.5, -1.0, 0.0]);
        set("bn.running_var", &[2.0, 0.5, 1.0]);
        let x = Tensor::randn(0f32, 2., (4, 3, 2, 2), &Device::Cpu).unwrap();
        let xs = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let (w, b) = ([1.5f64, 0.5, 2.0], [0.1f64, -0.2, 0.3]);
        let (rm0, rv0) = ([0.5f64, -1.0, 0.0], [2.0f64, 0.5, 1.0]);
        let vals = |c: usize| -> Vec<f64> {
            (0..4)
                .flat_map(|n| (0..4).map(move |p| (n, p)))
                .map(|(n, p)| xs[(n * 3 + c) * 4 + p] as f64)
                .collect()
        };

        let forward =
            |mode| bn.forward(&x, mode).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();

        // Eval mode: running statistics, nothing updated.
        let y = forward(PartMode::EVAL);
        for c in 0..3 {
            for (i, v) in vals(c).into_iter().enumerate() {
                let (n, p) = (i / 4, i % 4);
                let e = (v - rm0[c]) / (rv0[c] + 1e-5).sqrt() * w[c] + b[c];
                assert!((y[(n * 3 + c) * 4 + p] as f64 - e).abs() < 1e-5);
            }
        }
        assert_eq!(bn.num_batches_tracked.to_scalar::<i64>().unwrap(), 0);

        // Train mode: batch statistics (biased), running update with the unbiased variance.
        let y = forward(PartMode::TRAIN);
        let rm = bn.running_mean.to_vec1::<f32>().unwrap();
        let rv = bn.running_var.to_vec1::<f32>().unwrap();
        for c in 0..3 {
            let v = vals(c);
            let mean = v.iter().sum::<f64>() / 16.0;
            let var = v.iter().map(|a| (a - mean).powi(2)).sum::<f64>() / 16.0;
            for (i, a) in v.iter().enumerate() {
                let (n, p) = (i / 4, i % 4);
                let e = (a - mean) / (var + 1e-5).sqrt() * w[c] + b[c];
                assert!((y[(n * 3 + c) * 4 + p] as f64 - e).abs() < 1e-4);
            }
            assert!((rm[c] as f64 - (0.9 * rm0[c] + 0.1 * mean)).abs() < 1e-5);
            assert!((rv[c] as f64 - (0.9 * rv0[c] + 0.1 * var * 16.0 / 15.0)).abs() < 1e-5);
        }
        assert_eq!(bn.num_batches_tracked.to_scalar::<i64>().unwrap(), 1);
    }

    /// The CPU kernel path of `batch_norm_train` and the op-by-op path (other devices) agree on
    /// outputs, statistics and gradients, for the model's layouts: NCHW over (0, 2, 3), BN1d over
    /// (0), and the fusion heads' [17, Dim, B] over (2).
    #[test]
    fn batch_norm_kernel_and_ops_paths_agree() {
        let dev = Device::Cpu;
        for (shape, reduce) in [
            (vec![4usize, 3, 5, 5], vec![0usize, 2, 3]),
            (vec![6, 8], vec![0]),
            (vec![3, 4, 6], vec![2]),
        ] {
            let mut stat = shape.clone();
            for &d in &reduce {
                stat[d] = 1;
            }
            let x = Var::randn(0.3f64, 1.5, shape.as_slice(), &dev).unwrap();
            let w = Var::randn(1f64, 0.2, stat.as_slice(), &dev).unwrap();
            let b = Var::randn(0f64, 0.2, stat.as_slice(), &dev).unwrap();
            let coef = Tensor::randn(0f64, 1.0, shape.as_slice(), &dev).unwrap();
            let fast = batch_norm_train(&x, &w, &b, &reduce).unwrap();
            let ops = batch_norm_train_ops(&x, &w, &b, &reduce).unwrap();
            let diff = |a: &Tensor, b: &Tensor| -> f64 {
                (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f64>().unwrap()
            };
            assert!(diff(&fast.0, &ops.0) < 1e-12, "{shape:?}: output");
            assert!(diff(&fast.1, &ops.1) < 1e-12, "{shape:?}: mean");
            assert!(diff(&fast.2, &ops.2) < 1e-12, "{shape:?}: variance");
            let gf = (&fast.0 * &coef).unwrap().sum_all().unwrap().backward().unwrap();
            let go = (&ops.0 * &coef).unwrap().sum_all().unwrap().backward().unwrap();
            for v in [&x, &w, &b] {
                let d = diff(gf.get(v).unwrap(), go.get(v).unwrap());
                assert!(d < 1e-10, "{shape:?}: gradient differs by {d}");
            }
        }
    }

    #[test]
    fn batch_norm_train_gradient_matches_finite_differences() {
        let map = VarMap::new();
        let p = Params::new(&map, &Device::Cpu, DType::F32).pp("bn");
        let bn = BatchNorm::new(&p, 2).unwrap();
        map.data().lock().unwrap()["bn.weight"]
            .set(&Tensor::new(&[1.3f32, 0.7], &Device::Cpu).unwrap())
            .unwrap();
        let x = Var::randn(0f32, 1., (3, 2, 2, 1), &Device::Cpu).unwrap();
        let coef = Tensor::randn(0f32, 1., (3, 2, 2, 1), &Device::Cpu).unwrap();
        let f = |x: &Tensor| {
            bn.forward(x, PartMode::TRAIN).unwrap().mul(&coef).unwrap().sum_all().unwrap()
        };
        let g = grad_of(&x, &f(x.as_tensor()))
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let x64 = x.as_tensor().to_dtype(DType::F64).unwrap();
        let coef64 = coef.to_dtype(DType::F64).unwrap();
        let w64 = Tensor::new(&[1.3f64, 0.7], &Device::Cpu).unwrap().reshape((1, 2, 1, 1)).unwrap();
        let b64 = Tensor::zeros((1, 2, 1, 1), DType::F64, &Device::Cpu).unwrap();
        let f64_ = |x: &Tensor| {
            let (y, _, _) = batch_norm_train(x, &w64, &b64, &[0, 2, 3]).unwrap();
            y.mul(&coef64).unwrap().sum_all().unwrap().to_scalar::<f64>().unwrap()
        };
        let xs = x64.flatten_all().unwrap().to_vec1::<f64>().unwrap();
        for i in 0..xs.len() {
            let bump = |d: f64| {
                let mut v = xs.clone();
                v[i] += d;
                Tensor::from_vec(v, (3, 2, 2, 1), &Device::Cpu).unwrap()
            };
            let fd = (f64_(&bump(1e-6)) - f64_(&bump(-1e-6))) / 2e-6;
            assert!((g[i] as f64 - fd).abs() < 1e-3, "element {i}: {} vs {fd}", g[i]);
        }
    }
}

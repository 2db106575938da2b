//! `conv2d` and `conv_transpose2d` as Candle custom ops whose backward passes are forward
//! convolutions (see `grad.rs` for the maths).
//!
//! Candle offers no public way to build a tensor with a hand-written backward other than the
//! `CustomOpN` traits, and its per-backend forward entry points (`BackendStorage::conv2d`) take a
//! `ParamsConv2D` whose fields are private. A convolution that one of this crate's slice kernels
//! computes (on CPU f32 / f64: Winograd's algorithm, the shifted views, im2col + gemm:
//! [`SlicePlan`]) runs inside the op's `cpu_fwd`, on the storages Candle hands it. Any other is
//! computed first, outside any storage lock (im2col + gemm for f16, grouped convolutions,
//! strided operands; Candle's `conv2d` elsewhere), and the op's `cpu_fwd` /
//! `cuda_fwd` copy that result into the storage they must return ([`Precomputed`]); the
//! precomputed tensor is dropped as soon as it has been copied, so the graph keeps no second copy
//! alive. When neither argument needs a gradient no op is recorded at all.

use std::sync::Mutex;

use candle_core::backend::{BackendDevice, BackendStorage};
use candle_core::{CpuStorage, CudaStorage, CustomOp2, DType, Layout, Shape, Storage, Tensor};

use crate::cpu::{by_dtype, slice};
use crate::error::{KernelError, Result};
use crate::grad::{
    Engine, SlicePlan, WeightGradAlgo, conv2d_input_grad, conv2d_weight_grad, forward_view,
};
use crate::params::{ConvParams, ConvTransposeParams};

/// 2D convolution (NCHW, groups = 1) with a fast backward pass.
///
/// Same result as `x.conv2d(w, padding, stride, dilation, 1)`: on the CPU (f32, f64, f16) up to
/// rounding, since it is computed by this crate's im2col + one gemm (about twice as fast as
/// Candle's), elsewhere by that very call. The gradients of `x` and `w` are each one gemm (CPU)
/// or forward convolutions (other devices) instead of Candle's naive transposed convolution, and
/// none is computed for an argument that does not need it (e.g. the image into the stem).
/// Result contiguous.
///
/// # Shapes
/// `x: [b, c_in, h, w]`, `w: [c_out, c_in, kh, kw]` -> `[b, c_out, oh, ow]` with
/// `oh = floor((h + 2*padding - dilation*(kh-1) - 1) / stride) + 1` (likewise `ow`).
pub fn conv2d(x: &Tensor, w: &Tensor, params: ConvParams) -> Result<Tensor> {
    conv2d_grouped(x, w, params, 1)
}

/// Grouped 2D convolution (PyTorch's `groups`): group `g` convolves input channels
/// `[g*c_in/groups, (g+1)*c_in/groups)` with weights `[g*c_out/groups, (g+1)*c_out/groups)`.
/// Same as [`conv2d`] per group, inside one op, so that each gradient is built once for all
/// groups (a `narrow` per group would make Candle add a full-size zero-padded gradient per group).
///
/// # Shapes
/// `x: [b, c_in, h, w]`, `w: [c_out, c_in / groups, kh, kw]` -> `[b, c_out, oh, ow]`.
pub fn conv2d_grouped(x: &Tensor, w: &Tensor, params: ConvParams, groups: usize) -> Result<Tensor> {
    let (input_hw, kernel_hw, out_hw) = check_conv("conv2d", x, w, params, groups)?;
    tracing::trace!(x = ?x.dims(), w = ?w.dims(), ?params, groups, "conv2d");
    let backward = Conv2dBackward { params, groups, input_hw, kernel_hw };
    if groups == 1
        && (x.track_op() || w.track_op())
        && let Some(plan) = SlicePlan::of(x, w, params, Engine::Auto)?
    {
        return Ok(x.apply_op2(w, OnSlices { plan, backward })?);
    }
    let (xd, wd) = (x.detach(), w.detach());
    // [b, c_out, oh, ow]
    let y = per_group(groups, (&xd, 1), (&wd, 0), 1, |x, w| {
        forward_view(x, w, params, None, Engine::Auto)
    })?;
    debug_assert_eq!(y.dims()[2..], [out_hw.0, out_hw.1]);
    if !x.track_op() && !w.track_op() {
        return Ok(y.contiguous()?);
    }
    Ok(x.apply_op2(w, Precomputed::new(backward, y))?)
}

/// `f` on each group's slices of `a` (channels along `a.1`) and `b` (along `b.1`), the results
/// concatenated along `out_dim`; just `f(a, b)` for one group.
fn per_group(
    groups: usize,
    a: (&Tensor, usize),
    b: (&Tensor, usize),
    out_dim: usize,
    f: impl Fn(&Tensor, &Tensor) -> candle_core::Result<Tensor>,
) -> candle_core::Result<Tensor> {
    if groups == 1 {
        return f(a.0, b.0);
    }
    let (na, nb) = (a.0.dim(a.1)? / groups, b.0.dim(b.1)? / groups);
    let parts = (0..groups)
        .map(|g| f(&a.0.narrow(a.1, g * na, na)?, &b.0.narrow(b.1, g * nb, nb)?))
        .collect::<candle_core::Result<Vec<_>>>()?;
    Tensor::cat(&parts, out_dim)
}

/// 2D transposed convolution (NCHW, groups = 1) with a fast forward and backward pass.
///
/// Same result as `x.conv_transpose2d(w, padding, output_padding, stride, dilation)` up to
/// rounding, but the forward pass is the input gradient of the convolution it transposes (one
/// gemm + col2im on the CPU, forward convolutions elsewhere) instead of Candle's naive loop, and
/// both gradients are a forward convolution and a weight gradient. Result contiguous.
///
/// # Shapes
/// `x: [b, c_in, h, w]`, `w: [c_in, c_out, kh, kw]` -> `[b, c_out, oh, ow]` with
/// `oh = (h - 1)*stride - 2*padding + dilation*(kh - 1) + output_padding + 1` (likewise `ow`).
pub fn conv_transpose2d(x: &Tensor, w: &Tensor, params: ConvTransposeParams) -> Result<Tensor> {
    let op_name = "conv_transpose2d";
    let (b, c_in, h, wd) = dims4(op_name, x, w, params, x)?;
    let (c_in_w, _, kh, kw) = dims4(op_name, x, w, params, w)?;
    let invalid = |msg: String| KernelError::InvalidArgs {
        op: op_name,
        msg,
        input: x.shape().clone(),
        weight: w.shape().clone(),
        params: format!("{params:?}"),
    };
    check_common(op_name, x, w, params)?;
    if c_in != c_in_w {
        return Err(invalid(format!("input has {c_in} channels, weight expects {c_in_w}")));
    }
    let (Some(oh), Some(ow)) = (params.output_size(h, kh), params.output_size(wd, kw)) else {
        return Err(invalid(
            "no valid output size (stride and dilation must be >= 1, output_padding < \
             max(stride, dilation), and the output must not be empty)"
                .into(),
        ));
    };
    tracing::trace!(x = ?x.dims(), w = ?w.dims(), ?params, "conv_transpose2d");
    // The adjoint of conv2d(., w, as_conv) from [b, c_out, oh, ow] to [b, c_in, h, w].
    let y = conv2d_input_grad(&x.detach(), &w.detach(), params.as_conv(), (oh, ow), Engine::Auto)?;
    debug_assert_eq!(y.dims(), [b, w.dim(1)?, oh, ow]);
    if !x.track_op() && !w.track_op() {
        return Ok(y.contiguous()?);
    }
    let backward = ConvTranspose2dBackward { params, input_hw: (h, wd), kernel_hw: (kh, kw) };
    Ok(x.apply_op2(w, Precomputed::new(backward, y))?)
}

/// Checks a convolution's arguments; returns the input, kernel and output spatial sizes.
pub(crate) type Hw = (usize, usize);
pub(crate) fn check_conv(
    op: &'static str,
    x: &Tensor,
    w: &Tensor,
    params: ConvParams,
    groups: usize,
) -> Result<(Hw, Hw, Hw)> {
    let (_, c_in, h, wd) = dims4(op, x, w, params, x)?;
    let (c_out, c_in_w, kh, kw) = dims4(op, x, w, params, w)?;
    let invalid = |msg: String| KernelError::InvalidArgs {
        op,
        msg,
        input: x.shape().clone(),
        weight: w.shape().clone(),
        params: format!("{params:?}, groups {groups}"),
    };
    check_common(op, x, w, params)?;
    if groups == 0 || c_out % groups != 0 {
        return Err(invalid(format!("{c_out} output channels cannot form {groups} groups")));
    }
    if c_in != c_in_w * groups {
        return Err(invalid(format!(
            "input has {c_in} channels, weight expects {c_in_w} per group x {groups} groups"
        )));
    }
    match (params.output_size(h, kh), params.output_size(wd, kw)) {
        (Some(oh), Some(ow)) => Ok(((h, wd), (kh, kw), (oh, ow))),
        _ => Err(invalid(
            "no valid output size (stride and dilation must be >= 1 and the dilated kernel must \
             fit the padded input)"
                .into(),
        )),
    }
}

fn dims4(
    op: &'static str,
    x: &Tensor,
    w: &Tensor,
    params: impl std::fmt::Debug,
    t: &Tensor,
) -> Result<(usize, usize, usize, usize)> {
    t.dims4().map_err(|_| KernelError::InvalidArgs {
        op,
        msg: "input and weight must both be rank 4 (NCHW input, PyTorch weight layout)".into(),
        input: x.shape().clone(),
        weight: w.shape().clone(),
        params: format!("{params:?}"),
    })
}

fn check_common(
    op: &'static str,
    x: &Tensor,
    w: &Tensor,
    params: impl std::fmt::Debug,
) -> Result<()> {
    let msg = if x.dtype() != w.dtype() {
        format!("input is {:?} but weight is {:?}", x.dtype(), w.dtype())
    } else if !is_float(x.dtype()) {
        format!("{:?} is not a floating-point dtype", x.dtype())
    } else if !x.device().same_device(w.device()) {
        format!("input is on {:?} but weight is on {:?}", x.device(), w.device())
    } else {
        return Ok(());
    };
    Err(KernelError::InvalidArgs {
        op,
        msg,
        input: x.shape().clone(),
        weight: w.shape().clone(),
        params: format!("{params:?}"),
    })
}

fn is_float(dtype: DType) -> bool {
    matches!(dtype, DType::F16 | DType::BF16 | DType::F32 | DType::F64)
}

/// Hands over a result computed before the op was applied (see the module doc).
fn take_result(slot: &Mutex<Option<Tensor>>, op: &'static str) -> candle_core::Result<Tensor> {
    let mut slot =
        slot.lock().map_err(|_| candle_core::Error::Msg(format!("{op}: poisoned lock")))?;
    slot.take().ok_or_else(|| candle_core::Error::Msg(format!("{op}: forward ran twice")))
}

/// A fresh contiguous copy of `layout`'s elements of `storage`, on the same device.
fn copy_contiguous<S>(storage: &S, layout: &Layout) -> candle_core::Result<S>
where
    S: BackendStorage,
    S::Device: BackendDevice<Storage = S>,
{
    // SAFETY: `copy_strided_src` writes every element of a contiguous buffer of `layout`'s
    // shape, which is exactly what is allocated here, before anything reads it.
    let mut dst = unsafe { storage.device().alloc_uninit(layout.shape(), storage.dtype())? };
    storage.copy_strided_src(&mut dst, 0, layout)?;
    Ok(dst)
}

/// The precomputed result in `slot` as the storage of one backend (`pick` finds it; `backend`
/// names it in the error), with its shape.
fn take_storage<S>(
    slot: &Mutex<Option<Tensor>>,
    op: &'static str,
    (pick, backend): (fn(&Storage) -> Option<&S>, &str),
) -> candle_core::Result<(S, Shape)>
where
    S: BackendStorage,
    S::Device: BackendDevice<Storage = S>,
{
    let y = take_result(slot, op)?;
    let (storage, layout) = y.storage_and_layout();
    match pick(&storage) {
        Some(s) => Ok((copy_contiguous(s, layout)?, layout.shape().clone())),
        None => candle_core::bail!("{op}: result is not on {backend}"),
    }
}

fn on_cpu(s: &Storage) -> Option<&CpuStorage> {
    if let Storage::Cpu(s) = s { Some(s) } else { None }
}

fn on_cuda(s: &Storage) -> Option<&CudaStorage> {
    if let Storage::Cuda(s) = s { Some(s) } else { None }
}

/// The backward pass of a two-argument op whose forward result was computed before the op was
/// applied (see the module doc): `(x, w, output gradient) -> (gx, gw)`.
trait Backward2: Send + Sync {
    /// The op's name in Candle's graph.
    const NAME: &'static str;

    fn backward(
        &self,
        x: &Tensor,
        w: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)>;
}

/// A Candle op that hands over a precomputed forward result and differentiates with `B`.
struct Precomputed<B> {
    backward: B,
    /// The forward result, until `cpu_fwd` / `cuda_fwd` copies it out.
    result: Mutex<Option<Tensor>>,
}

impl<B> Precomputed<B> {
    fn new(backward: B, result: Tensor) -> Self {
        Self { backward, result: Mutex::new(Some(result)) }
    }
}

impl<B: Backward2> CustomOp2 for Precomputed<B> {
    fn name(&self) -> &'static str {
        B::NAME
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        take_storage(&self.result, B::NAME, (on_cpu, "the CPU"))
    }

    fn cuda_fwd(
        &self,
        _: &CudaStorage,
        _: &Layout,
        _: &CudaStorage,
        _: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        take_storage(&self.result, B::NAME, (on_cuda, "a CUDA device"))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        self.backward.backward(x, w, grad)
    }
}

/// A Candle op that computes its forward result from the storages it is handed, by one of this
/// crate's CPU kernels ([`SlicePlan`]), and differentiates with `B`: no result computed before
/// and copied in, as [`Precomputed`] must.
struct OnSlices<B> {
    plan: SlicePlan,
    backward: B,
}

impl<B: Backward2> CustomOp2 for OnSlices<B> {
    fn name(&self) -> &'static str {
        B::NAME
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        x_layout: &Layout,
        w: &CpuStorage,
        w_layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let dims = self.out_dims(x_layout, w_layout)?;
        let (op, plan) = (B::NAME, &self.plan);
        let y = by_dtype(
            x.dtype(),
            op,
            || {
                let (x, w) = (slice(x, x_layout, op, "input")?, slice(w, w_layout, op, "weight")?);
                Ok(CpuStorage::F32(plan.run::<f32>(x, w)?))
            },
            || {
                let (x, w) = (slice(x, x_layout, op, "input")?, slice(w, w_layout, op, "weight")?);
                Ok(CpuStorage::F64(plan.run::<f64>(x, w)?))
            },
        )?;
        Ok((y, Shape::from(&dims)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        self.backward.backward(x, w, grad)
    }
}

impl<B> OnSlices<B> {
    /// `[b, c_out, oh, ow]` of the plan, checked against the operands' layouts.
    fn out_dims(&self, x: &Layout, w: &Layout) -> candle_core::Result<[usize; 4]> {
        let [dims, x_dims, w_dims] = self.plan.dims();
        if x.dims() != x_dims || w.dims() != w_dims {
            candle_core::bail!(
                "conv2d: planned for {x_dims:?} x {w_dims:?}, given {:?} x {:?}",
                x.dims(),
                w.dims()
            )
        }
        Ok(dims)
    }
}

/// The gradients of [`conv2d_grouped`].
struct Conv2dBackward {
    params: ConvParams,
    groups: usize,
    input_hw: Hw,
    kernel_hw: Hw,
}

impl Backward2 for Conv2dBackward {
    const NAME: &'static str = "aue-conv2d";

    fn backward(
        &self,
        x: &Tensor,
        w: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        // No gradient for an argument that does not need one (e.g. the image into the stem).
        // The gradients are computed from detached tensors: they are not themselves
        // differentiated (as in Candle by default), and recording their graph would cost memory.
        let (x_d, w_d) = (x.detach(), w.detach());
        let (p, groups) = (self.params, self.groups);
        let input_grad = || -> candle_core::Result<Option<Tensor>> {
            if !x.track_op() {
                return Ok(None);
            }
            // Group g: its output-gradient channels with its weights -> its input channels.
            let gx = per_group(groups, (grad, 1), (&w_d, 0), 1, |g, w| {
                conv2d_input_grad(g, w, p, self.input_hw, Engine::Auto)
            })?;
            Ok(Some(gx))
        };
        let weight_grad = || -> candle_core::Result<Option<Tensor>> {
            if !w.track_op() {
                return Ok(None);
            }
            // Group g: its input channels and output-gradient channels -> its weights.
            let algo = WeightGradAlgo::Auto;
            let gw = per_group(groups, (&x_d, 1), (grad, 1), 0, |x, g| {
                conv2d_weight_grad(x, g, p, self.kernel_hw, algo)
            })?;
            Ok(Some(gw))
        };
        // The two gradients are independent: on the CPU they run side by side on the pool, so
        // that a thread finished with its share of one takes tasks of the other instead of
        // waiting at the end of each parallel loop. Each is computed as it would be alone (same
        // bits on any thread count).
        let (gx, gw) = if grad.device().is_cpu() {
            rayon::join(input_grad, weight_grad)
        } else {
            (input_grad(), weight_grad())
        };
        Ok((gx?, gw?))
    }
}

/// The gradients of [`conv_transpose2d`].
struct ConvTranspose2dBackward {
    params: ConvTransposeParams,
    input_hw: Hw,
    kernel_hw: Hw,
}

impl Backward2 for ConvTranspose2dBackward {
    const NAME: &'static str = "aue-conv-transpose2d";

    fn backward(
        &self,
        x: &Tensor,
        w: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let conv = self.params.as_conv();
        let (h, wd) = self.input_hw;
        let gx = if x.track_op() {
            // The adjoint of the adjoint: the forward convolution, cut to the size of x (its full
            // output is larger when output_padding >= stride, allowed when dilation > stride).
            Some(forward_view(grad, &w.detach(), conv, Some((h, wd)), Engine::Auto)?) // [b, c_in, h, w]
        } else {
            None
        };
        let gw = if w.track_op() {
            // y = conv2d_input_grad(x; w), so <y, g> = <x, conv2d(g; w)>: the weight gradient of
            // the convolution of g whose output gradient is x. [c_in, c_out, kh, kw]
            Some(conv2d_weight_grad(grad, &x.detach(), conv, self.kernel_hw, WeightGradAlgo::Auto)?)
        } else {
            None
        };
        Ok((gx, gw))
    }
}

//! TensorFlow-style layers on Candle: "same" padding, depthwise separable convolutions, leaky ReLU.
//!
//! face-api was written for TensorFlow.js, whose "same" padding puts the odd pixel of padding at
//! the bottom/right (a stride-2 3x3 convolution of a 112-pixel input pads 0 above and 1 below),
//! unlike PyTorch's symmetric padding; every layer here pads explicitly so the outputs match.
//!
//! Candle's grouped convolution runs one convolution per group, which for a depthwise layer with
//! 256 channels means 256 tiny convolutions; [`depthwise_conv2d`] is a direct CPU kernel instead.

use candle_core::{CpuStorage, CustomOp2, DType, Layout, Shape, Tensor, bail};
use rayon::prelude::*;

use crate::error::{CandleContext, Result};

/// TensorFlow's "same" padding along one axis: `(output size, padding before, padding after)`.
pub fn same_padding(input: usize, kernel: usize, stride: usize) -> (usize, usize, usize) {
    let out = input.div_ceil(stride);
    let total = ((out - 1) * stride + kernel).saturating_sub(input);
    (out, total / 2, total - total / 2)
}

/// Pads spatial dims 2 and 3 of `x` with a constant.
///
/// # Shapes
/// `x`: [b, c, h, w] -> [b, c, h + top + bottom, w + left + right]
pub fn pad_hw(
    x: &Tensor,
    (top, bottom): (usize, usize),
    (left, right): (usize, usize),
    value: f32,
) -> Result<Tensor> {
    let (b, c, h, w) = x.dims4().op("pad: input rank")?;
    let mut x = x.clone();
    if top + bottom > 0 {
        let mut parts = Vec::with_capacity(3);
        if top > 0 {
            parts.push(Tensor::full(value, (b, c, top, w), x.device()).op("pad: fill")?);
        }
        parts.push(x.clone());
        if bottom > 0 {
            parts.push(Tensor::full(value, (b, c, bottom, w), x.device()).op("pad: fill")?);
        }
        x = Tensor::cat(&parts, 2).op("pad: cat rows")?; // [b, c, h', w]
    }
    if left + right > 0 {
        let hp = h + top + bottom;
        let mut parts = Vec::with_capacity(3);
        if left > 0 {
            parts.push(Tensor::full(value, (b, c, hp, left), x.device()).op("pad: fill")?);
        }
        parts.push(x.clone());
        if right > 0 {
            parts.push(Tensor::full(value, (b, c, hp, right), x.device()).op("pad: fill")?);
        }
        x = Tensor::cat(&parts, 3).op("pad: cat cols")?; // [b, c, h', w']
    }
    Ok(x)
}

/// A dense convolution with TensorFlow "same" padding (`same = true`) or none ("valid"), plus bias.
///
/// # Shapes
/// `x`: [b, c_in, h, w], `weight`: [c_out, c_in, k, k], `bias`: [c_out] -> [b, c_out, h', w']
pub fn conv2d_tf(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    stride: usize,
    same: bool,
) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4().op("conv2d: input rank")?;
    let (_, _, kh, kw) = weight.dims4().op("conv2d: weight rank")?;
    let x = if same {
        let (_, top, bottom) = same_padding(h, kh, stride);
        let (_, left, right) = same_padding(w, kw, stride);
        pad_hw(x, (top, bottom), (left, right), 0.0)?
    } else {
        x.clone()
    };
    let y = x.conv2d(weight, 0, stride, 1, 1).op("conv2d")?; // [b, c_out, h', w']
    y.broadcast_add(&bias.reshape((1, (), 1, 1)).op("conv2d: bias")?).op("conv2d: add bias")
}

/// A 1x1 convolution as one matrix product per image.
///
/// # Shapes
/// `x`: [b, c_in, h, w], `weight`: [c_out, c_in, 1, 1] -> [b, c_out, h, w]
pub fn pointwise_conv(x: &Tensor, weight: &Tensor) -> Result<Tensor> {
    let (b, c_in, h, w) = x.dims4().op("pointwise: input rank")?;
    let c_out = weight.dim(0).op("pointwise: weight rank")?;
    let wm = weight.reshape((c_out, c_in)).op("pointwise: weight")?; // [c_out, c_in]
    let xm = x.reshape((b, c_in, h * w)).op("pointwise: input")?; // [b, c_in, h*w]
    let y = wm.broadcast_matmul(&xm).op("pointwise: matmul")?; // [b, c_out, h*w]
    y.reshape((b, c_out, h, w)).op("pointwise: output")
}

/// TensorFlow's `separableConv2d(x, depthwise, pointwise, stride, padding) + bias`.
///
/// `pads` = `((top, bottom), (left, right))` around the depthwise stage.
///
/// # Shapes
/// `x`: [b, c, h, w], `depthwise`: [c, 1, k, k], `pointwise`: [c_out, c, 1, 1], `bias`: [c_out]
/// -> [b, c_out, h', w']
pub fn separable_conv(
    x: &Tensor,
    depthwise: &Tensor,
    pointwise: &Tensor,
    bias: &Tensor,
    stride: usize,
    pads: ((usize, usize), (usize, usize)),
) -> Result<Tensor> {
    let d = depthwise_conv2d(x, depthwise, stride, pads)?; // [b, c, h', w']
    let p = pointwise_conv(&d, pointwise)?; // [b, c_out, h', w']
    p.broadcast_add(&bias.reshape((1, (), 1, 1)).op("separable: bias")?).op("separable: add bias")
}

/// `separable_conv` with TensorFlow "same" padding.
pub fn separable_conv_same(
    x: &Tensor,
    depthwise: &Tensor,
    pointwise: &Tensor,
    bias: &Tensor,
    stride: usize,
) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4().op("separable: input rank")?;
    let (_, _, kh, kw) = depthwise.dims4().op("separable: depthwise rank")?;
    let (_, top, bottom) = same_padding(h, kh, stride);
    let (_, left, right) = same_padding(w, kw, stride);
    separable_conv(x, depthwise, pointwise, bias, stride, ((top, bottom), (left, right)))
}

/// face-api's leaky ReLU, written as it is (`relu(x - 0.1 x) + 0.1 x`) so the rounding matches.
pub fn leaky(x: &Tensor) -> Result<Tensor> {
    let min = x.affine(0.100_000_001_490_116_12, 0.0).op("leaky: scale")?;
    (x - &min).op("leaky: sub")?.relu().op("leaky: relu")?.add(&min).op("leaky: add")
}

/// A 2x2 max pool with TensorFlow "same" padding (padded cells never win).
///
/// # Shapes
/// `x`: [b, c, h, w] -> [b, c, ceil(h / stride), ceil(w / stride)]
pub fn max_pool_same(x: &Tensor, stride: usize) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4().op("maxpool: input rank")?;
    let (_, top, bottom) = same_padding(h, 2, stride);
    let (_, left, right) = same_padding(w, 2, stride);
    let x = pad_hw(x, (top, bottom), (left, right), f32::NEG_INFINITY)?;
    x.max_pool2d_with_stride((2, 2), (stride, stride)).op("maxpool")
}

/// Depthwise 2-D convolution (one k x k filter per channel, no bias) with explicit zero padding.
///
/// # Shapes
/// `x`: [b, c, h, w], `kernel`: [c, 1, kh, kw] -> [b, c, h', w'] with
/// h' = (h + top + bottom - kh) / stride + 1 (likewise w').
pub fn depthwise_conv2d(
    x: &Tensor,
    kernel: &Tensor,
    stride: usize,
    ((top, bottom), (left, right)): ((usize, usize), (usize, usize)),
) -> Result<Tensor> {
    let x = x.contiguous().op("depthwise: contiguous input")?;
    let kernel = kernel.contiguous().op("depthwise: contiguous kernel")?;
    let op = DepthwiseConv { stride, top, bottom, left, right };
    x.apply_op2_no_bwd(&kernel, &op).op("depthwise conv")
}

struct DepthwiseConv {
    stride: usize,
    top: usize,
    bottom: usize,
    left: usize,
    right: usize,
}

impl CustomOp2 for DepthwiseConv {
    fn name(&self) -> &'static str {
        "depthwise-conv2d"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (b, c, h, w) = l1.shape().dims4()?;
        let (kc, one, kh, kw) = l2.shape().dims4()?;
        if kc != c || one != 1 {
            bail!("depthwise conv: kernel {:?} does not fit input {:?}", l2.shape(), l1.shape());
        }
        let (hp, wp) = (h + self.top + self.bottom, w + self.left + self.right);
        if hp < kh || wp < kw || self.stride == 0 {
            bail!("depthwise conv: input {:?} too small for kernel {kh}x{kw}", l1.shape());
        }
        let (oh, ow) = ((hp - kh) / self.stride + 1, (wp - kw) / self.stride + 1);
        let (Some((x0, x1)), Some((k0, k1))) = (l1.contiguous_offsets(), l2.contiguous_offsets())
        else {
            bail!("depthwise conv: inputs must be contiguous");
        };
        let (CpuStorage::F32(xs), CpuStorage::F32(ks)) = (s1, s2) else {
            bail!("depthwise conv: only f32 is implemented");
        };
        let (xs, ks) = (&xs[x0..x1], &ks[k0..k1]);
        let mut out = vec![0f32; b * c * oh * ow];
        let (s, top, left) = (self.stride, self.top as isize, self.left as isize);
        out.par_chunks_mut(oh * ow).enumerate().for_each(|(plane, o)| {
            let ch = plane % c;
            let xp = &xs[plane * h * w..(plane + 1) * h * w];
            let kp = &ks[ch * kh * kw..(ch + 1) * kh * kw];
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut acc = 0f32;
                    for ky in 0..kh {
                        let iy = (oy * s + ky) as isize - top;
                        if iy < 0 || iy >= h as isize {
                            continue;
                        }
                        let row = &xp[iy as usize * w..(iy as usize + 1) * w];
                        for kx in 0..kw {
                            let ix = (ox * s + kx) as isize - left;
                            if ix >= 0 && ix < w as isize {
                                acc += row[ix as usize] * kp[ky * kw + kx];
                            }
                        }
                    }
                    o[oy * ow + ox] = acc;
                }
            }
        });
        Ok((CpuStorage::F32(out), Shape::from((b, c, oh, ow))))
    }
}

/// Checks a tensor is f32 (the nets compute in f32 only).
pub fn ensure_f32(x: &Tensor, what: &'static str) -> Result<()> {
    if x.dtype() != DType::F32 {
        return Err(crate::LandmarkError::Invalid(format!(
            "{what}: expected f32, got {:?}",
            x.dtype()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::*;

    #[test]
    fn same_padding_puts_the_odd_pixel_last() {
        assert_eq!(same_padding(112, 3, 2), (56, 0, 1));
        assert_eq!(same_padding(56, 3, 1), (56, 1, 1));
        assert_eq!(same_padding(207, 2, 2), (104, 0, 1));
        assert_eq!(same_padding(13, 2, 1), (13, 0, 1));
        assert_eq!(same_padding(414, 2, 2), (207, 0, 0));
    }

    #[test]
    fn depthwise_matches_grouped_conv() {
        // Candle's own grouped convolution (one conv per channel) is the slow reference.
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (2, 5, 9, 8), &dev).unwrap();
        let k = Tensor::randn(0f32, 1.0, (5, 1, 3, 3), &dev).unwrap();
        for stride in [1, 2] {
            let got = depthwise_conv2d(&x, &k, stride, ((1, 1), (1, 1))).unwrap();
            let want = x.conv2d(&k, 1, stride, 1, 5).unwrap();
            assert_eq!(got.dims(), want.dims());
            let diff = (got - want).unwrap().abs().unwrap().max_all().unwrap();
            assert!(diff.to_scalar::<f32>().unwrap() < 1e-5);
        }
        // Asymmetric padding: pad explicitly, then a valid grouped conv.
        let got = depthwise_conv2d(&x, &k, 2, ((0, 1), (0, 1))).unwrap();
        let xp = pad_hw(&x, (0, 1), (0, 1), 0.0).unwrap();
        let want = xp.conv2d(&k, 0, 2, 1, 5).unwrap();
        let diff = (got - want).unwrap().abs().unwrap().max_all().unwrap();
        assert!(diff.to_scalar::<f32>().unwrap() < 1e-5);
    }

    #[test]
    fn max_pool_same_ignores_padding() {
        let x = Tensor::full(-5f32, (1, 1, 3, 3), &Device::Cpu).unwrap();
        let y = max_pool_same(&x, 2).unwrap();
        assert_eq!(y.dims(), &[1, 1, 2, 2]);
        assert_eq!(y.flatten_all().unwrap().to_vec1::<f32>().unwrap(), vec![-5.0; 4]);
    }

    #[test]
    fn leaky_is_identity_above_zero_and_tenth_below() {
        let x = Tensor::new(&[2f32, -3.0], &Device::Cpu).unwrap();
        let y = leaky(&x).unwrap().to_vec1::<f32>().unwrap();
        assert!((y[0] - 2.0).abs() < 1e-6 && (y[1] + 0.3).abs() < 1e-6, "{y:?}");
    }
}

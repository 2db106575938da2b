//! im2col on the CPU, as a Candle custom op, and the convolution built on it (one gemm).
//!
//! Candle's CPU `conv2d` spends most of its time in an element-by-element im2col loop inside
//! each 512-pixel tile (measured: about 2/3 of a ResNet 3x3 layer), not in its gemm. Here the
//! columns are gathered row by row (a `memcpy` per output row at stride 1) into one
//! `[c_in*kh*kw, b*oh*ow]` matrix and the convolution is a single large gemm through Candle's
//! `matmul`. The window is general (any stride, dilation and a signed origin per axis with zeros
//! outside the input), so the phases of an input gradient need no padding or cropping copies.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor, WithDType};
use rayon::prelude::*;

/// Which input position each output reads: output `(oy, ox)` through tap `(th, tw)` reads input
/// `(origin.0 + oy*stride + th*dilation, origin.1 + ox*stride + tw*dilation)`, zero outside.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Window {
    pub stride: usize,
    pub dilation: usize,
    /// Input position of output 0, tap 0, per axis; negative inside the leading zero padding.
    pub origin: (isize, isize),
    /// Output size.
    pub out: (usize, usize),
}

/// The custom op: `[b, c, h, w]` (any strides) -> `[c*kh*kw, b*oh*ow]` (contiguous).
struct Im2Col {
    kernel: (usize, usize),
    win: Window,
}

/// Upper bound on the elements of one column matrix; larger batches are processed in chunks of
/// images so that the extra memory stays bounded (64 MiB of f32).
const COLUMN_BUDGET: usize = 1 << 24;

/// Images per chunk for a column matrix of `per_image` elements per image.
fn batch_chunk(b: usize, per_image: usize) -> usize {
    (COLUMN_BUDGET / per_image.max(1)).clamp(1, b.max(1))
}

/// The columns of `x` for the kernel size `kernel` and window `win`.
///
/// # Shapes
/// `x: [b, c, h, w]` -> `[c*kh*kw, b*oh*ow]`, rows ordered (c, th, tw), columns (b, oy, ox).
pub(crate) fn im2col(
    x: &Tensor,
    kernel: (usize, usize),
    win: Window,
) -> candle_core::Result<Tensor> {
    x.apply_op1_no_bwd(&Im2Col { kernel, win })
}

/// Convolution of `x` with `w` over the window `win`, as im2col + one gemm per chunk of images.
/// Returns a transposed view (`[c_out, b, ...]` storage); callers copy it where they need to.
///
/// # Shapes
/// `x: [b, c_in, h, w]`, `w: [c_out, c_in, kh, kw]` -> `[b, c_out, oh, ow]`.
pub(crate) fn conv(x: &Tensor, w: &Tensor, win: Window) -> candle_core::Result<Tensor> {
    let (b, c_in, _, _) = x.dims4()?;
    let (c_out, _, kh, kw) = w.dims4()?;
    let (oh, ow) = win.out;
    let k = c_in * kh * kw;
    let w2 = w.reshape((c_out, k))?; // [c_out, c_in*kh*kw]
    let chunk = batch_chunk(b, k * oh * ow);
    let mut parts = Vec::with_capacity(b.div_ceil(chunk));
    for start in (0..b).step_by(chunk) {
        let n = chunk.min(b - start);
        let cols = im2col(&x.narrow(0, start, n)?, (kh, kw), win)?; // [k, n*oh*ow]
        parts.push(w2.matmul(&cols)?); // [c_out, n*oh*ow]
    }
    let y = if parts.len() == 1 { parts.swap_remove(0) } else { Tensor::cat(&parts, 1)? };
    y.reshape((c_out, b, oh, ow))?.transpose(0, 1) // [b, c_out, oh, ow]
}

/// Weight gradient `sum over (b, o) of grad[b, co, o] * x[b, ci, window(o, t)]` as one gemm per
/// chunk of images: `[c_out, b*oh*ow] x [b*oh*ow, c_in*kh*kw]`.
///
/// # Shapes
/// `x: [b, c_in, h, w]`, `grad: [b, c_out, oh, ow]` -> `[c_out, c_in, kh, kw]`.
pub(crate) fn weight_grad(
    x: &Tensor,
    grad: &Tensor,
    kernel: (usize, usize),
    win: Window,
) -> candle_core::Result<Tensor> {
    let (b, c_in, _, _) = x.dims4()?;
    let (_, c_out, oh, ow) = grad.dims4()?;
    let (kh, kw) = kernel;
    let k = c_in * kh * kw;
    let chunk = batch_chunk(b, k * oh * ow);
    let mut acc: Option<Tensor> = None;
    for start in (0..b).step_by(chunk) {
        let n = chunk.min(b - start);
        let cols = im2col(&x.narrow(0, start, n)?, kernel, win)?; // [k, n*oh*ow]
        // [n, c_out, oh, ow] -> [c_out, n*oh*ow]
        let g = grad
            .narrow(0, start, n)?
            .transpose(0, 1)?
            .contiguous()?
            .reshape((c_out, n * oh * ow))?;
        let part = g.matmul(&cols.t()?)?; // [c_out, k]
        acc = Some(match acc {
            Some(a) => (a + part)?,
            None => part,
        });
    }
    match acc {
        Some(gw) => gw.reshape((c_out, c_in, kh, kw)),
        None => Tensor::zeros((c_out, c_in, kh, kw), x.dtype(), x.device()),
    }
}

impl CustomOp1 for Im2Col {
    fn name(&self) -> &'static str {
        "aue-im2col"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (b, c, _, _) = layout.shape().dims4()?;
        let (kh, kw) = self.kernel;
        let (oh, ow) = self.win.out;
        let shape = Shape::from((c * kh * kw, b * oh * ow));
        let cols = match storage {
            CpuStorage::F32(v) => CpuStorage::F32(self.run(v, layout)?),
            CpuStorage::F64(v) => CpuStorage::F64(self.run(v, layout)?),
            CpuStorage::F16(v) => CpuStorage::F16(self.run(v, layout)?),
            CpuStorage::BF16(v) => CpuStorage::BF16(self.run(v, layout)?),
            other => candle_core::bail!("aue-im2col: unsupported dtype {:?}", other.dtype()),
        };
        Ok((cols, shape))
    }
}

impl Im2Col {
    fn run<T: WithDType>(&self, src: &[T], layout: &Layout) -> candle_core::Result<Vec<T>> {
        let (b, c, h, w) = layout.shape().dims4()?;
        let &[sb, sc, sh, sw] = layout.stride() else {
            candle_core::bail!("aue-im2col: rank-4 input expected, got {:?}", layout.shape())
        };
        let offset = layout.start_offset();
        let (kh, kw) = self.kernel;
        let Window { stride: s, dilation: d, origin: (o_h, o_w), out: (oh, ow) } = self.win;
        let plane = oh * ow;
        let zero = T::from_f64(0.0);
        let mut dst = vec![zero; c * kh * kw * b * plane];
        if plane == 0 {
            return Ok(dst);
        }
        // One output plane (oh*ow values) per (channel, th, tw, image), in that order.
        dst.par_chunks_mut(plane).enumerate().for_each(|(idx, out)| {
            let n = idx % b;
            let tap = idx / b;
            let (ch, th, tw) = (tap / (kh * kw), (tap / kw) % kh, tap % kw);
            let base = offset + n * sb + ch * sc;
            // Output columns whose input column is inside [0, w).
            let first_x = o_w + (tw * d) as isize;
            let (x_lo, x_hi) = valid_range(first_x, s, w, ow);
            if x_lo >= x_hi {
                return;
            }
            let ix0 = (first_x + (x_lo * s) as isize) as usize;
            let step = s * sw;
            for oy in 0..oh {
                let iy = o_h + (oy * s + th * d) as isize;
                if iy < 0 || iy >= h as isize {
                    continue;
                }
                let row = base + iy as usize * sh + ix0 * sw;
                let out_row = &mut out[oy * ow + x_lo..oy * ow + x_hi];
                if step == 1 {
                    out_row.copy_from_slice(&src[row..row + out_row.len()]);
                } else {
                    for (j, o) in out_row.iter_mut().enumerate() {
                        *o = src[row + j * step];
                    }
                }
            }
        });
        Ok(dst)
    }
}

/// The outputs `o` in `[0, m)` with `first + o*s` inside `[0, n)`, as `[lo, hi)`.
fn valid_range(first: isize, s: usize, n: usize, m: usize) -> (usize, usize) {
    let s = s as isize;
    let lo = if first >= 0 { 0 } else { ((-first + s - 1) / s) as usize };
    let last = n as isize - 1 - first; // o*s <= last
    let hi = if last < 0 { 0 } else { (last / s + 1) as usize };
    (lo.min(m), hi.min(m))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn valid_ranges() {
        // first = -3, stride 2, n = 7: o*2 - 3 in [0, 7) -> o in [2, 5).
        assert_eq!(valid_range(-3, 2, 7, 10), (2, 5));
        assert_eq!(valid_range(0, 1, 7, 5), (0, 5));
        assert_eq!(valid_range(9, 1, 7, 5), (0, 0));
        assert_eq!(valid_range(-20, 1, 7, 5), (5, 5));
    }

    #[test]
    fn columns_of_a_small_image() -> candle_core::Result<()> {
        // x = [[0, 1, 2], [3, 4, 5]] (1 image, 1 channel), 2x2 kernel, padding 1, stride 2:
        // output 2x2; tap (0, 0) reads (-1 + 2oy, -1 + 2ox).
        let x = Tensor::arange(0f32, 6., &Device::Cpu)?.reshape((1, 1, 2, 3))?;
        let win = Window { stride: 2, dilation: 1, origin: (-1, -1), out: (2, 2) };
        let cols = im2col(&x, (2, 2), win)?;
        let expect = [
            [0., 0., 0., 4.], // tap (0, 0): (-1,-1) (-1,1) (1,-1) (1,1)
            [0., 0., 3., 5.], // tap (0, 1): (-1,0) (-1,2) (1,0) (1,2)
            [0., 1., 0., 0.], // tap (1, 0): (0,-1) (0,1) (2,-1) (2,1)
            [0., 2., 0., 0.], // tap (1, 1): (0,0) (0,2) (2,0) (2,2)
        ];
        assert_eq!(cols.to_vec2::<f32>()?, expect.map(|r| r.to_vec()).to_vec());
        Ok(())
    }
}

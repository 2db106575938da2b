//! 3x3 stride-1 convolutions on the CPU by Winograd's minimal filtering F(2x2, 3x3) (Lavin and
//! Gray, "Fast Algorithms for Convolutional Neural Networks", 2016): each 2x2 block of outputs
//! comes from a 4x4 block of inputs with 16 multiplications per input and output channel pair
//! instead of 36, so the products shrink by 2.25x for the price of two cheap linear transforms.
//!
//! With the filter transformed once, `U = G g G^T` (4x4 per channel pair), and each 4x4 input
//! tile `d` (tiles overlap by 2, zero outside the input) transformed as `V = B^T d B`, the 16
//! positions `k` of the tiles are 16 independent products over the channels,
//! `M_k [c_out, tiles] = U_k [c_out, c_in] x V_k [c_in, tiles]` (one gemm each), and each output
//! block is `A^T M A`:
//!
//! ```text
//! B^T = [1  0 -1  0]    G = [1    0    0 ]    A^T = [1  1  1  0]
//!       [0  1  1  0]        [1/2  1/2  1/2]          [0  1 -1 -1]
//!       [0 -1  1  0]        [1/2 -1/2  1/2]
//!       [0  1  0 -1]        [0    0    1 ]
//! ```
//!
//! No crate offers this for Candle tensors (Candle convolves by im2col), hence the hand-written
//! transforms; the products are `gemm`'s, as elsewhere in this crate. The result equals the
//! direct convolution up to rounding: the transforms add and halve, so f32 results differ from
//! the direct sums by a few units in the last place more than another summation order would
//! (the tests hold it to the definition with the same bounds as im2col in f64 and 1e-5 in f32).
//!
//! The input gradient of a 3x3 stride-1 convolution with padding `p <= 2` is itself one: the
//! output gradient convolved with the flipped, transposed kernel and padding `2 - p`.
//!
//! On output maps of 28 x 28 and more, the forward pass and the input gradient use F(4x4, 3x3)
//! instead (4x4 output blocks from 6x6 input blocks: 36 products per 16 outputs instead of 16 per
//! 4; see [`F4_MIN_SIDE`]), and so does the weight gradient there ([`weight_grad_pays`]).

use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicU8, Ordering};

use candle_core::Tensor;
use gemm::Parallelism;
use multiversion::multiversion;

use rayon::prelude::*;

use crate::cpu::{
    MIN_TASK, Real, SharedMut, View, by_dtype, gemm_view, par_zeroed, slots, sum_in_order,
    train_kernels_supported, with_cpu_slices,
};
use crate::params::ConvParams;

/// Output tile side (F(2x2, 3x3)).
const M: usize = 2;
/// Input tile side.
const A: usize = 4;
/// Positions per tile.
const K: usize = A * A;

/// F(4x4, 3x3)'s output tile side, input tile side and positions per tile (see [`F4_MIN_SIDE`]).
const M4: usize = 4;
const A4: usize = 6;
const K4: usize = A4 * A4;

/// Tiles per product, at least (images are grouped until their tiles reach it): fewer columns
/// make the 16 products too narrow for gemm's blocking (7 x 7 maps have 16 tiles per image).
const MIN_COLUMNS: usize = 256;

/// Whether `Engine::Auto` takes Winograd's algorithm where it applies: unset (read from the
/// environment on first use), on or off (see [`set_winograd`]).
static STATE: AtomicU8 = AtomicU8::new(UNSET);
const UNSET: u8 = 0;
const ON: u8 = 1;
const OFF: u8 = 2;

/// Whether `Engine::Auto` convolves 3x3 stride-1 kernels on the CPU by Winograd's algorithm
/// (the default) or directly (shifted views or im2col, as every other convolution): the results
/// agree up to rounding, Winograd's rounding a little larger in f32 (see the module doc).
/// Process-wide; without a call, the environment variable `AUE_CONV` decides (`direct`: off;
/// unset, `auto` or `winograd`: on). `Engine::Winograd` asks for it whatever this says.
pub fn set_winograd(enabled: bool) {
    STATE.store(if enabled { ON } else { OFF }, Ordering::Relaxed);
}

/// See [`set_winograd`].
pub(crate) fn enabled() -> bool {
    match STATE.load(Ordering::Relaxed) {
        ON => true,
        OFF => false,
        _ => {
            let on = match std::env::var("AUE_CONV") {
                Err(_) => true,
                Ok(v) => match v.as_str() {
                    "" | "auto" | "winograd" => true,
                    "direct" => false,
                    other => {
                        tracing::warn!(
                            "AUE_CONV={other:?} is not one of auto, winograd, direct: using auto"
                        );
                        true
                    }
                },
            };
            // A concurrent set_winograd wins over the environment.
            let _ = STATE.compare_exchange(
                UNSET,
                if on { ON } else { OFF },
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
            STATE.load(Ordering::Relaxed) == ON
        }
    }
}

/// Whether [`conv`] computes `conv2d(x, w, p)` for a `kernel`-sized kernel on tensors like `t`:
/// CPU f32 / f64, 3x3, stride 1, dilation 1, padding at most 2.
pub(crate) fn supports(t: &Tensor, kernel: (usize, usize), p: ConvParams) -> bool {
    kernel == (3, 3)
        && p.stride == 1
        && p.dilation == 1
        && p.padding <= 2
        && train_kernels_supported(t)
}

/// Tiles per output map below which `Engine::Auto` convolves forward directly (im2col) rather
/// than by Winograd's algorithm.
const MIN_FORWARD_TILES: usize = 32;

/// Whether `Engine::Auto` takes Winograd's algorithm for a forward convolution with an output of
/// `out`: on maps of at least [`MIN_FORWARD_TILES`] tiles. On 7 x 7 maps (16 tiles per image) a
/// batch has so few tile columns that each of the 16 products is mostly the transformed filter,
/// 16/9 of the weights, written by the filter transform and read back; the direct product reads
/// the weights once. Measured (f32, batch 8, one thread, 3x3 512 -> 512 @ 7): Intel Xeon (Sapphire
/// Rapids) im2col 20.7 ms, Winograd 27.5 ms; AMD EPYC 20.3 and 20.6 ms. The input gradient keeps
/// Winograd's algorithm there: on the Intel machine im2col's was faster too (26.4 against 32.8
/// ms), on AMD EPYC slower (26.0 against 21.6 ms).
pub(crate) fn forward_pays(out: (usize, usize)) -> bool {
    out.0.div_ceil(M) * out.1.div_ceil(M) >= MIN_FORWARD_TILES
}

/// Whether `WeightGradAlgo::Auto` takes [`weight_grad`] for an output of `out`: on the maps
/// that F(4x4, 3x3) takes (see [`F4_MIN_SIDE`]), and F(2x2, 3x3) for maps of 32 to 256 of its
/// tiles per image. Measured against im2col, F(2x2) (one thread, batch 8, f32, AMD EPYC): 3x3 at
/// 28 x 28 (196 tiles) 24.7 -> 21.5 ms, at 14 x 14 (49) 21.5 -> 17.8 ms; slower at 56 x 56 (784
/// tiles: 26.3 -> 31.1 ms, the transforms of both operands cost more than the products save)
/// and at 7 x 7 (16 tiles, a third of them half empty: 21.0 -> 26.4 ms). F(4x4) (Intel Xeon
/// Sapphire Rapids, same settings, interleaved medians of 9), im2col / F(2x2) / F(4x4): 64 @ 56
/// 19.5 / 18.7 / 15.2 ms, 128 @ 28 16.4 / 16.4 / 12.0.
pub(crate) fn weight_grad_pays(out: (usize, usize)) -> bool {
    let tiles = out.0.div_ceil(M) * out.1.div_ceil(M);
    tile_side(out) == M4 || (32..=256).contains(&tiles)
}

/// Output maps at least this wide and high are convolved (forward and input gradient) by
/// F(4x4, 3x3) rather than F(2x2, 3x3): each 4x4 output block from a 6x6 input block, 36
/// positions per 16 outputs instead of 16 per 4, so the products shrink by another 1.78x and the
/// transformed inputs by 1.78x, for transforms with larger coefficients (its f32 rounding is a
/// few times F(2x2)'s: 5.5e-7 to 1.1e-6 relative L2 against 1.1-1.4e-7 in the unit tests). On
/// smaller maps the 4x4 tiles' overhang (a 14 x 14 map computes 16 x 16) and the 36-position
/// filter (2.25x the weights) eat the gain. Measured (f32, batch 8, one thread, forward / input
/// gradient, interleaved medians of 11, Intel Xeon Sapphire Rapids), F(2x2) -> F(4x4): 3x3
/// 64 @ 56 20.5 / 20.4 -> 16.2 / 15.9 ms, 128 @ 28 20.7 / 20.8 -> 14.5 / 13.9, 256 @ 14
/// 20.2 / 21.4 -> 19.8 / 20.0, 512 @ 7 26.0 / 29.6 -> 29.6 / 33.3.
const F4_MIN_SIDE: usize = 28;

/// The output tile side for an output of `out`: 4 from [`F4_MIN_SIDE`] on, else 2.
fn tile_side(out: (usize, usize)) -> usize {
    if out.0.min(out.1) >= F4_MIN_SIDE { M4 } else { M }
}

/// One convolution's sizes and its output tile side `m` (2: F(2x2, 3x3), 4: F(4x4, 3x3)).
#[derive(Debug, Clone, Copy)]
struct Geometry {
    b: usize,
    c_in: usize,
    c_out: usize,
    h: usize,
    w: usize,
    pad: usize,
    oh: usize,
    ow: usize,
    m: usize,
}

impl Geometry {
    /// Tiles per image: rows, columns.
    fn tiles(&self) -> (usize, usize) {
        (self.oh.div_ceil(self.m), self.ow.div_ceil(self.m))
    }

    /// Positions per tile (and products).
    fn k(&self) -> usize {
        if self.m == M4 { K4 } else { K }
    }

    /// Images per group of products (see [`MIN_COLUMNS`]).
    fn group(&self) -> usize {
        let (th, tw) = self.tiles();
        MIN_COLUMNS.div_ceil((th * tw).max(1)).clamp(1, self.b.max(1))
    }

    /// Images per group when `threads` threads each run whole groups: the batch in a multiple
    /// of `threads` groups of at least [`Geometry::group`] images, or `None` when it has fewer
    /// such groups than threads.
    fn parallel_group(&self, threads: usize) -> Option<usize> {
        let whole = self.b / self.group();
        if whole < threads.max(1) {
            return None;
        }
        Some(self.b.div_ceil(whole / threads * threads))
    }
}

/// `U = G g G^T` for every channel pair of `w` (`[c_out, c_in, 3, 3]`), stored `[16, c_out,
/// c_in]`; with `flip`, of the flipped, transposed kernel (`w'[ci, co] = w[co, ci]` rotated by
/// 180 degrees, stored `[16, c_in, c_out]`: the input gradient's kernel).
///
/// Row by row of the result (`co`, or `ci` when flipped): its nine taps are first gathered into
/// nine contiguous runs, so that the transform is element-wise over runs (it vectorises).
fn filter_transform<T: Real>(w: &[T], c_out: usize, c_in: usize, flip: bool) -> Vec<T> {
    let half = T::from_f64(0.5);
    let pairs = c_out * c_in;
    let (rows, inner) = if flip { (c_in, c_out) } else { (c_out, c_in) };
    // Every element is written below, once: not zero-filled first (the EM branch's flipped
    // kernel alone is 63M values in ResNet-101).
    let mut u: Vec<T> = Vec::with_capacity(K * pairs);
    let up = SharedMut(u.spare_capacity_mut().as_mut_ptr());
    // Scratch per task: the row's taps [9][inner] and G g, row by row of G: [4][3 columns][inner].
    let scratch = || (vec![T::zero(); 9 * inner], vec![T::zero(); A * 3 * inner]);
    (0..rows).into_par_iter().for_each_init(scratch, |(taps, gg), a| {
        gather_taps(w, c_in, flip, a, taps);
        let tap = |r: usize, c: usize| &taps[(r * 3 + c) * inner..(r * 3 + c + 1) * inner];
        for c in 0..3 {
            let (g0, g1, g2) = (tap(0, c), tap(1, c), tap(2, c));
            let run = |r: usize| (r * 3 + c) * inner;
            for j in 0..inner {
                gg[run(0) + j] = g0[j];
                gg[run(1) + j] = (g0[j] + g1[j] + g2[j]) * half;
                gg[run(2) + j] = (g0[j] - g1[j] + g2[j]) * half;
                gg[run(3) + j] = g2[j];
            }
        }
        for r in 0..A {
            let col = |c: usize| &gg[(r * 3 + c) * inner..(r * 3 + c + 1) * inner];
            let (x, y, z) = (col(0), col(1), col(2));
            // SAFETY: row `a` of each of the 16 planes belongs to this task alone.
            let out = |k: usize| unsafe { up.run(k * pairs + a * inner, inner) };
            let (u0, u1, u2, u3) = (out(r * A), out(r * A + 1), out(r * A + 2), out(r * A + 3));
            for j in 0..inner {
                u0[j].write(x[j]);
                u1[j].write((x[j] + y[j] + z[j]) * half);
                u2[j].write((x[j] - y[j] + z[j]) * half);
                u3[j].write(z[j]);
            }
        }
    });
    // SAFETY: the tasks wrote row `a` of the 16 planes for every `a` (4 rows of G times 4
    // positions each): all `16 * rows * inner` elements; a panic in a task propagates before this
    // line and drops `u` with length 0.
    unsafe { u.set_len(K * pairs) };
    u
}

/// Row `a` of a filter transform's input (output channel `a`, or input channel `a` of the
/// flipped kernel when `flip`): its nine taps as nine runs of `inner = taps.len() / 9` values,
/// one per input (output) channel, so that the transform is element-wise over runs.
fn gather_taps<T: Copy>(w: &[T], c_in: usize, flip: bool, a: usize, taps: &mut [T]) {
    let inner = taps.len() / 9;
    for b in 0..inner {
        let (co, ci) = if flip { (b, a) } else { (a, b) };
        let src = &w[(co * c_in + ci) * 9..][..9];
        for t in 0..9 {
            // Flipped: tap (r, c) of w' is tap (2 - r, 2 - c) of w.
            taps[t * inner + b] = if flip { src[8 - t] } else { src[t] };
        }
    }
}

/// Scratch rows of the transforms, reused across channels.
struct Scratch<T> {
    /// Input tile rows after the column transform `[row][column][tile]`, or the output's
    /// `A^T M` `[row][column][tile]`.
    rows: Vec<T>,
    /// One input row's columns by phase mod `m` (`[phase][tw + 1]`), and a second buffer of
    /// whole-plane runs beside `rows` (which holds 16 or 36 of them): the gathered tiles and
    /// their row transform, or `A^T M` and its column transform.
    phases: Vec<T>,
    spare: Vec<T>,
}

impl<T: Real> Scratch<T> {
    /// For `(th, tw)` tiles per plane with output tile side `m`.
    fn new((th, tw): (usize, usize), m: usize) -> Self {
        let z = T::zero();
        let tiles = th * tw;
        if m == M4 {
            return Self {
                rows: vec![z; K4 * tiles],
                phases: vec![z; M4 * (tw + 1)],
                spare: vec![z; K4 * tiles],
            };
        }
        Self { rows: vec![z; K * tiles], phases: vec![z; M * (tw + 1)], spare: vec![z; K * tiles] }
    }
}

/// Column `q` of a row padded by `pad` zeros on the left, i.e. `src[q - pad]`, into `even[q /
/// 2]` (even `q`) or `odd[q / 2]` (odd `q`), for every `q` below `2 * even.len()`; the other
/// entries are left as they are. Pairs of `src` go to one slot of each (a branch-free
/// de-interleave the compiler vectorises).
#[inline(always)]
fn split_even_odd<T: Copy>(src: &[T], pad: usize, even: &mut [T], odd: &mut [T]) {
    debug_assert!(even.len() == odd.len() && pad <= 2 * even.len());
    let n = src.len().min(2 * even.len() - pad);
    let src = &src[..n];
    // Source pair (2j, 2j + 1) is padded columns (2j + pad, 2j + pad + 1).
    let (first, second) = if pad.is_multiple_of(2) { (even, odd) } else { (odd, even) };
    let pairs = n / 2;
    let first = &mut first[pad / 2..];
    let second = &mut second[pad.div_ceil(2)..][..pairs];
    for ((a, b), pair) in first[..pairs].iter_mut().zip(second.iter_mut()).zip(src.chunks_exact(2))
    {
        *a = pair[0];
        *b = pair[1];
    }
    if n % 2 == 1 {
        first[pairs] = src[n - 1];
    }
}

/// `V = B^T d B` for every tile of one input plane (`h x w`, zero padding `pad`), position `k`'s
/// values of all `th * tw` tiles written to `dst(k)`.
///
/// As in [`input_plane4`], the tiles' 16 input values are first gathered into 16 runs over the
/// whole plane (tile `j` of a row reads columns `2j..2j + 4`: even and odd columns at `j` and
/// `j + 1`), so that both passes run over runs of `th * tw` values: a 14 x 14 map has only 7
/// tiles per row, a 7 x 7 map 4, too few to vectorise a tile row.
#[multiversion(targets("x86_64+avx2+fma"))]
fn input_plane<'a, T: Real>(
    plane: &[T],
    (h, w): (usize, usize),
    pad: usize,
    (th, tw): (usize, usize),
    s: &mut Scratch<T>,
    mut dst: impl FnMut(usize) -> &'a mut [MaybeUninit<T>],
) {
    let tiles = th * tw;
    let Scratch { phases, rows: d, spare: e, .. } = s;
    let (d, e) = (&mut d[..K * tiles], &mut e[..K * tiles]);
    gather_tiles(plane, (h, w), pad, (th, tw), (M, A), &mut phases[..M * (tw + 1)], d);
    // d B per row: columns (d0 - d2, d1 + d2, d2 - d1, d1 - d3).
    for r in 0..A {
        let src = &d[r * A * tiles..(r + 1) * A * tiles];
        let [d0, d1, d2, d3] = [0, 1, 2, 3].map(|c| &src[c * tiles..(c + 1) * tiles]);
        let out = &mut e[r * A * tiles..(r + 1) * A * tiles];
        let mut outs = out.chunks_exact_mut(tiles);
        let mut next = || outs.next().expect("four runs");
        let (c0, c1, c2, c3) = (next(), next(), next(), next());
        for j in 0..tiles {
            c0[j] = d0[j] - d2[j];
            c1[j] = d1[j] + d2[j];
            c2[j] = d2[j] - d1[j];
            c3[j] = d1[j] - d3[j];
        }
    }
    // B^T (d B): rows (r0 - r2, r1 + r2, r2 - r1, r1 - r3), column by column.
    for col in 0..A {
        let [r0, r1, r2, r3] = [0, 1, 2, 3].map(|r| &e[(r * A + col) * tiles..][..tiles]);
        let out = &mut dst(col)[..tiles];
        for j in 0..tiles {
            out[j].write(r0[j] - r2[j]);
        }
        let out = &mut dst(A + col)[..tiles];
        for j in 0..tiles {
            out[j].write(r1[j] + r2[j]);
        }
        let out = &mut dst(2 * A + col)[..tiles];
        for j in 0..tiles {
            out[j].write(r2[j] - r1[j]);
        }
        let out = &mut dst(3 * A + col)[..tiles];
        for j in 0..tiles {
            out[j].write(r1[j] - r3[j]);
        }
    }
}

/// `Y = A^T M A` for every tile of one output plane (`oh x ow`, into `out`), from the 16
/// positions' runs `m(k)` (`th * tw` tiles each), both passes over whole-plane runs as in
/// [`input_plane`].
#[multiversion(targets("x86_64+avx2+fma"))]
fn output_plane<'a, T: Real>(
    m: impl Fn(usize) -> &'a [T],
    (th, tw): (usize, usize),
    out: &mut [MaybeUninit<T>],
    (oh, ow): (usize, usize),
    s: &mut Scratch<T>,
) {
    let tiles = th * tw;
    let Scratch { rows, spare, .. } = s;
    // A^T M: rows[r][c] for the two rows r of the result and the four columns c.
    let (s0, s1) = rows[..M * A * tiles].split_at_mut(A * tiles);
    for col in 0..A {
        let [a, b, cc, d] = [0, 1, 2, 3].map(|r| &m(r * A + col)[..tiles]);
        let s0 = &mut s0[col * tiles..(col + 1) * tiles];
        let s1 = &mut s1[col * tiles..(col + 1) * tiles];
        for j in 0..tiles {
            s0[j] = a[j] + b[j] + cc[j];
            s1[j] = b[j] - cc[j] - d[j];
        }
    }
    // (A^T M) A: ys[r][q], output (2 ti + r, 2 tj + q) of tile (ti, tj).
    let ys = &mut spare[..M * M * tiles];
    for r in 0..M {
        let [a, b, cc, d] = [0, 1, 2, 3].map(|c| &rows[(r * A + c) * tiles..][..tiles]);
        let (y0, y1) = ys[r * M * tiles..(r + 1) * M * tiles].split_at_mut(tiles);
        for j in 0..tiles {
            y0[j] = a[j] + b[j] + cc[j];
            y1[j] = b[j] - cc[j] - d[j];
        }
    }
    let full = ow / M;
    for ti in 0..th {
        for r in 0..M {
            let oy = ti * M + r;
            if oy >= oh {
                break;
            }
            let y = |q: usize| &ys[(r * M + q) * tiles + ti * tw..][..tw];
            let (y0, y1) = (y(0), y(1));
            let dst = &mut out[oy * ow..(oy + 1) * ow];
            for (j, pair) in dst.chunks_exact_mut(M).enumerate() {
                pair[0].write(y0[j]);
                pair[1].write(y1[j]);
            }
            if ow % M == 1 {
                dst[full * M].write(y0[full]);
            }
        }
    }
}

/// F(4x4, 3x3)'s `U = G g G^T` (6x6 per channel pair), stored `[36, c_out, c_in]` (or, with
/// `flip`, the input gradient's kernel `[36, c_in, c_out]`, as in [`filter_transform`]), with
///
/// ```text
/// G = [ 1/4    0     0  ]
///     [-1/6  -1/6  -1/6 ]
///     [-1/6   1/6  -1/6 ]
///     [1/24  1/12   1/6 ]
///     [1/24 -1/12   1/6 ]
///     [ 0      0     1  ]
/// ```
fn filter_transform4<T: Real>(w: &[T], c_out: usize, c_in: usize, flip: bool) -> Vec<T> {
    let pairs = c_out * c_in;
    let (rows, inner) = if flip { (c_in, c_out) } else { (c_out, c_in) };
    let mut u = par_zeroed(K4 * pairs);
    let up = SharedMut(u.as_mut_ptr());
    // G's rows applied to three runs (the taps of one column, or one row of G g).
    let g_rows = |x: &[T], y: &[T], z: &[T], out: &mut [&mut [T]; A4]| {
        let (q, s, t, tf) = (
            T::from_f64(0.25),
            T::from_f64(1.0 / 6.0),
            T::from_f64(1.0 / 12.0),
            T::from_f64(1.0 / 24.0),
        );
        for j in 0..x.len() {
            let (a, b, c) = (x[j], y[j], z[j]);
            out[0][j] = a * q;
            out[1][j] = T::zero() - (a + b + c) * s;
            out[2][j] = T::zero() - (a - b + c) * s;
            out[3][j] = a * tf + b * t + c * s;
            out[4][j] = a * tf - b * t + c * s;
            out[5][j] = c;
        }
    };
    // Scratch per task: the row's taps [9][inner] and G g [6 rows][3 columns][inner].
    let scratch = || (vec![T::zero(); 9 * inner], vec![T::zero(); A4 * 3 * inner]);
    (0..rows).into_par_iter().for_each_init(scratch, |(taps, gg), a| {
        gather_taps(w, c_in, flip, a, taps);
        let tap = |r: usize, c: usize| &taps[(r * 3 + c) * inner..(r * 3 + c + 1) * inner];
        for c in 0..3 {
            // Rows r of G g for column c: runs (r * 3 + c).
            let mut outs: Vec<&mut [T]> = gg.chunks_exact_mut(inner).collect();
            let mut pick = |r: usize| std::mem::take(&mut outs[r * 3 + c]);
            let mut out = [pick(0), pick(1), pick(2), pick(3), pick(4), pick(5)];
            g_rows(tap(0, c), tap(1, c), tap(2, c), &mut out);
        }
        for r in 0..A4 {
            let col = |c: usize| &gg[(r * 3 + c) * inner..(r * 3 + c + 1) * inner];
            // SAFETY: row `a` of each of the 36 planes belongs to this task alone.
            let out = |k: usize| unsafe { up.run(k * pairs + a * inner, inner) };
            let mut outs = [
                out(r * A4),
                out(r * A4 + 1),
                out(r * A4 + 2),
                out(r * A4 + 3),
                out(r * A4 + 4),
                out(r * A4 + 5),
            ];
            g_rows(col(0), col(1), col(2), &mut outs);
        }
    });
    u
}

/// Column `q` of a row padded by `pad` zeros on the left, i.e. `src[q - pad]`, into
/// `phases[(q % 4) * len + q / 4]` for every `q` below `4 * len`; the other entries are left as
/// they are.
#[inline(always)]
fn split_phases4<T: Copy>(src: &[T], pad: usize, phases: &mut [T], len: usize) {
    debug_assert!(phases.len() >= M4 * len && pad <= M4 * len);
    let n = src.len().min(M4 * len - pad);
    let (p0, rest) = phases.split_at_mut(len);
    let (p1, rest) = rest.split_at_mut(len);
    let (p2, p3) = rest.split_at_mut(len);
    let mut ph: [&mut [T]; M4] = [p0, p1, p2, &mut p3[..len]];
    // Up to the first column of phase 0, one by one; then groups of four.
    let head = ((M4 - pad % M4) % M4).min(n);
    for (i, &v) in src[..head].iter().enumerate() {
        let q = i + pad;
        ph[q % M4][q / M4] = v;
    }
    let j0 = (head + pad) / M4;
    let body = &src[head..n];
    let groups = body.len() / M4;
    let [a, b, c, d] = &mut ph;
    let (a, b, c, d) = (
        &mut a[j0..j0 + groups],
        &mut b[j0..j0 + groups],
        &mut c[j0..j0 + groups],
        &mut d[j0..j0 + groups],
    );
    for (j, g) in body.chunks_exact(M4).enumerate() {
        a[j] = g[0];
        b[j] = g[1];
        c[j] = g[2];
        d[j] = g[3];
    }
    for (i, &v) in body[groups * M4..].iter().enumerate() {
        ph[i][j0 + groups] = v;
    }
}

/// F(4x4, 3x3)'s `V = B^T d B` for every 6x6 tile of one input plane (`h x w`, zero padding
/// `pad`), position `k`'s values of all `th * tw` tiles written to `dst(k)`, with
///
/// ```text
/// B^T = [4  0 -5  0  1  0]
///       [0 -4 -4  1  1  0]
///       [0  4 -4 -1  1  0]
///       [0 -2 -1  2  1  0]
///       [0  2 -1 -2  1  0]
///       [0  4  0 -5  0  1]
/// ```
///
/// As in [`input_plane`], the tiles' 36 input values are first gathered into 36 runs over the
/// whole plane (`th * tw` values; tile `j` of a row reads columns `4j..4j + 6`: phases 0-3 of the
/// row at `j`, phases 0-1 at `j + 1`), so that both passes of the transform run over long runs: a
/// 28 x 28 map has 7 tiles per row, too few to vectorise.
#[multiversion(targets("x86_64+avx2+fma"))]
fn input_plane4<'a, T: Real>(
    plane: &[T],
    (h, w): (usize, usize),
    pad: usize,
    (th, tw): (usize, usize),
    s: &mut Scratch<T>,
    mut dst: impl FnMut(usize) -> &'a mut [MaybeUninit<T>],
) {
    let (tiles, len) = (th * tw, tw + 1);
    let consts = (T::from_f64(2.0), T::from_f64(4.0), T::from_f64(5.0));
    let Scratch { phases, rows: d, spare: e, .. } = s;
    let (d, e) = (&mut d[..K4 * tiles], &mut e[..K4 * tiles]);
    gather_tiles(plane, (h, w), pad, (th, tw), (M4, A4), &mut phases[..M4 * len], d);
    // d B: the six columns of each row.
    for r in 0..A4 {
        let src = &d[r * A4 * tiles..(r + 1) * A4 * tiles];
        let out = &mut e[r * A4 * tiles..(r + 1) * A4 * tiles];
        let mut outs = as_uninit(out).chunks_exact_mut(tiles);
        let mut next = || outs.next().expect("six runs");
        let runs = [0, 1, 2, 3, 4, 5].map(|c| &src[c * tiles..(c + 1) * tiles]);
        input_rows4(runs, [next(), next(), next(), next(), next(), next()], consts);
    }
    // B^T (d B): the six rows of each column, into the 36 positions.
    for c in 0..A4 {
        let runs = [0, 1, 2, 3, 4, 5].map(|r| &e[(r * A4 + c) * tiles..(r * A4 + c + 1) * tiles]);
        let mut run = |r: usize| -> &'a mut [MaybeUninit<T>] { &mut dst(r * A4 + c)[..tiles] };
        let outs = [run(0), run(1), run(2), run(3), run(4), run(5)];
        input_rows4(runs, outs, consts);
    }
}

/// The `side x side` values of every tile of one plane (`h x w`, zero padding `pad`, tiles
/// `step` apart: F(2x2)'s 4x4 input tiles, F(4x4)'s 6x6 input or 4x4 gradient tiles) into
/// `side * side` runs of all `th * tw` tiles: `d[(r * side + c) * tiles + t]` is row `r`, column
/// `c` of tile `t`. Each row of the plane is split by column phase mod `step` into `phases`
/// (`step * (tw + 1)`); tile `j` reads phase `c % step` at `j + c / step`.
fn gather_tiles<T: Real>(
    plane: &[T],
    (h, w): (usize, usize),
    pad: usize,
    (th, tw): (usize, usize),
    (step, side): (usize, usize),
    phases: &mut [T],
    d: &mut [T],
) {
    let (tiles, len) = (th * tw, tw + 1);
    for ti in 0..th {
        for r in 0..side {
            let iy = (ti * step + r) as isize - pad as isize;
            let at = |c: usize| (r * side + c) * tiles + ti * tw;
            if iy < 0 || iy >= h as isize {
                for c in 0..side {
                    d[at(c)..at(c) + tw].fill(T::zero());
                }
                continue;
            }
            phases.fill(T::zero());
            let row = &plane[iy as usize * w..(iy as usize + 1) * w];
            if step == M4 {
                split_phases4(row, pad, phases, len);
            } else {
                let (even, odd) = phases.split_at_mut(len);
                split_even_odd(row, pad, even, &mut odd[..len]);
            }
            for c in 0..side {
                let from = (c % step) * len + c / step;
                d[at(c)..at(c) + tw].copy_from_slice(&phases[from..from + tw]);
            }
        }
    }
}

/// `B^T`'s six rows applied across six runs: `out[i][j] = sum over q of B^T[i][q] d[q][j]`.
#[inline(always)]
fn input_rows4<T: Real>(
    d: [&[T]; A4],
    out: [&mut [MaybeUninit<T>]; A4],
    (two, four, five): (T, T, T),
) {
    let n = out[0].len();
    let [d0, d1, d2, d3, d4, d5] = d.map(|r| &r[..n]);
    let [c0, c1, c2, c3, c4, c5] = out;
    let (c1, c2, c3, c4, c5) =
        (&mut c1[..n], &mut c2[..n], &mut c3[..n], &mut c4[..n], &mut c5[..n]);
    for j in 0..n {
        let (a0, a1, a2, a3, a4, a5) = (d0[j], d1[j], d2[j], d3[j], d4[j], d5[j]);
        c0[j].write(four * a0 - five * a2 + a4);
        c1[j].write(a3 + a4 - four * (a1 + a2));
        c2[j].write(four * (a1 - a2) + a4 - a3);
        c3[j].write(two * (a3 - a1) + a4 - a2);
        c4[j].write(two * (a1 - a3) + a4 - a2);
        c5[j].write(four * a1 - five * a3 + a5);
    }
}

/// `A^T`'s four rows applied across six runs (see [`output_plane4`]).
#[inline(always)]
fn output_rows4<T: Real>(d: [&[T]; A4], out: [&mut [T]; M4], (two, four, eight): (T, T, T)) {
    let n = out[0].len();
    let [d0, d1, d2, d3, d4, d5] = d.map(|r| &r[..n]);
    let [y0, y1, y2, y3] = out;
    let (y1, y2, y3) = (&mut y1[..n], &mut y2[..n], &mut y3[..n]);
    for j in 0..n {
        let (s12, d12) = (d1[j] + d2[j], d1[j] - d2[j]);
        let (s34, d34) = (d3[j] + d4[j], d3[j] - d4[j]);
        y0[j] = d0[j] + s12 + s34;
        y1[j] = d12 + two * d34;
        y2[j] = s12 + four * s34;
        y3[j] = d12 + eight * d34 + d5[j];
    }
}

/// F(4x4, 3x3)'s `Y = A^T M A` for every tile of one output plane (`oh x ow`, into `out`), from
/// the 36 positions' runs `m(k)` (`th * tw` tiles each), both passes over whole-plane runs as in
/// [`input_plane4`], with
///
/// ```text
/// A^T = [1  1  1  1  1  0]
///       [0  1 -1  2 -2  0]
///       [0  1  1  4  4  0]
///       [0  1 -1  8 -8  1]
/// ```
#[multiversion(targets("x86_64+avx2+fma"))]
fn output_plane4<'a, T: Real>(
    m: impl Fn(usize) -> &'a [T],
    (th, tw): (usize, usize),
    out: &mut [MaybeUninit<T>],
    (oh, ow): (usize, usize),
    s: &mut Scratch<T>,
) {
    let tiles = th * tw;
    let consts = (T::from_f64(2.0), T::from_f64(4.0), T::from_f64(8.0));
    let Scratch { rows, spare, .. } = s;
    // A^T M: rows[r][c] for the four rows r of the result and the six columns c.
    let rows = &mut rows[..M4 * A4 * tiles];
    for c in 0..A4 {
        let runs = [0, 1, 2, 3, 4, 5].map(|r| &m(r * A4 + c)[..tiles]);
        let mut outs = rows.chunks_exact_mut(tiles).skip(c).step_by(A4);
        let mut next = || outs.next().expect("four rows");
        output_rows4(runs, [next(), next(), next(), next()], consts);
    }
    // (A^T M) A: ys[r][q], output (4 ti + r, 4 tj + q) of tile (ti, tj).
    let ys = &mut spare[..M4 * M4 * tiles];
    for r in 0..M4 {
        let runs =
            [0, 1, 2, 3, 4, 5].map(|c| &rows[(r * A4 + c) * tiles..(r * A4 + c + 1) * tiles]);
        let mut outs = ys[r * M4 * tiles..(r + 1) * M4 * tiles].chunks_exact_mut(tiles);
        let mut next = || outs.next().expect("four columns");
        output_rows4(runs, [next(), next(), next(), next()], consts);
    }
    let full = ow / M4;
    for ti in 0..th {
        for r in 0..M4 {
            let oy = ti * M4 + r;
            if oy >= oh {
                break;
            }
            let y = |q: usize| &ys[(r * M4 + q) * tiles + ti * tw..][..tw];
            let (y0, y1, y2, y3) = (y(0), y(1), y(2), y(3));
            let dst = &mut out[oy * ow..(oy + 1) * ow];
            for (j, quad) in dst.chunks_exact_mut(M4).enumerate() {
                quad[0].write(y0[j]);
                quad[1].write(y1[j]);
                quad[2].write(y2[j]);
                quad[3].write(y3[j]);
            }
            for (q, o) in dst[full * M4..].iter_mut().enumerate() {
                o.write(y(q)[full]);
            }
        }
    }
}

/// The filter transform of `g`'s algorithm.
fn filter_for<T: Real>(g: &Geometry, w: &[T], c_out: usize, c_in: usize, flip: bool) -> Vec<T> {
    if c_out * c_in == 0 {
        return Vec::new(); // no channel pairs (the transforms' row gathers need at least one)
    }
    if g.m == M4 {
        filter_transform4(w, c_out, c_in, flip)
    } else {
        filter_transform(w, c_out, c_in, flip)
    }
}

/// The input transform of `g`'s algorithm on one plane.
fn input_for<'a, T: Real>(
    g: &Geometry,
    plane: &[T],
    s: &mut Scratch<T>,
    dst: impl FnMut(usize) -> &'a mut [MaybeUninit<T>],
) {
    if g.m == M4 {
        input_plane4(plane, (g.h, g.w), g.pad, g.tiles(), s, dst)
    } else {
        input_plane(plane, (g.h, g.w), g.pad, g.tiles(), s, dst)
    }
}

/// The output transform of `g`'s algorithm on one plane.
fn output_for<'a, T: Real>(
    g: &Geometry,
    m: impl Fn(usize) -> &'a [T],
    out: &mut [MaybeUninit<T>],
    s: &mut Scratch<T>,
) {
    if g.m == M4 {
        output_plane4(m, g.tiles(), out, (g.oh, g.ow), s)
    } else {
        output_plane(m, g.tiles(), out, (g.oh, g.ow), s)
    }
}

/// `M_k = U_k x V_k` (`[c_out, c_in] x [c_in, cols]`) into `m` (`[c_out, cols]`).
fn product<T: Real>(
    (c_out, c_in, cols): (usize, usize, usize),
    u_k: &[T],
    v_k: &[T],
    m_k: &mut [MaybeUninit<T>],
    parallelism: Parallelism,
) {
    debug_assert!(u_k.len() >= c_out * c_in && v_k.len() >= c_in * cols);
    debug_assert!(m_k.len() >= c_out * cols);
    let dst = View { ptr: m_k.as_mut_ptr().cast::<T>(), rs: cols, cs: 1 };
    let lhs = View { ptr: u_k.as_ptr(), rs: c_in, cs: 1 };
    let rhs = View { ptr: v_k.as_ptr(), rs: cols, cs: 1 };
    // SAFETY: the three row-major matrices lie inside their slices (checked above in debug
    // builds; the callers slice them to these sizes); dst is written without being read.
    unsafe { gemm_view((c_out, cols, c_in), dst, false, lhs, rhs, parallelism) }
}

/// The convolution of `x` (`[b, c_in, h, w]`) with the transformed filter `u` (`[16, c_out,
/// c_in]`): `[b, c_out, oh, ow]`. On one thread, or where the batch has at least one group per
/// thread ([`Geometry::parallel_group`]), the images go in groups of at least [`MIN_COLUMNS`]
/// tiles (transforms and products in the cache together, each group on one thread); otherwise
/// each phase runs in parallel over the whole batch, through buffers of the whole batch's
/// transformed inputs and products. (Groups instead of phases for resnet18's 56 x 56 layers at
/// batch 8, two threads: a stage-1 step 0.97 of the time, inference 0.90, Intel Xeon VM.)
fn convolve<T: Real>(x: &[T], u: &[T], g: &Geometry) -> Vec<T> {
    if g.c_in == 0 {
        // An empty sum: the products would write nothing.
        return vec![T::zero(); g.b * g.c_out * g.oh * g.ow];
    }
    let threads = rayon::current_num_threads();
    let (th, tw) = g.tiles();
    let tiles = th * tw;
    let group = if threads > 1 { g.parallel_group(threads) } else { Some(g.group()) };
    let Some(group) = group else {
        return convolve_phased(x, u, g);
    };
    let (image_in, image_out) = (g.c_in * g.h * g.w, g.c_out * g.oh * g.ow);
    // Each worker's transformed inputs and products, sized for a whole group and reused for
    // every group it runs (every element a group reads is written first, so they are not
    // zero-filled; allocated per group, they cost fresh page faults each time: about 2% of a
    // stage-1 step in a one-thread profile on Intel).
    let buffers = || Buffers {
        v: slots(g.k() * g.c_in * group * tiles),
        m: slots(g.k() * g.c_out * group * tiles),
        s: Scratch::new((th, tw), g.m),
    };
    let run = |bufs: &mut Buffers<T>, first: usize, y: &mut [MaybeUninit<T>]| {
        let n = y.len() / image_out;
        let cols = n * tiles;
        let Buffers { v, m, s } = bufs;
        let v = &mut v[..g.k() * g.c_in * cols];
        for i in 0..n {
            let xi = &x[(first + i) * image_in..(first + i + 1) * image_in];
            for (ch, plane) in xi.chunks_exact(g.h * g.w).enumerate() {
                let v = SharedMut(v.as_mut_ptr());
                let at = |k: usize| (k * g.c_in + ch) * cols + i * tiles;
                // SAFETY: each k's run is inside `v` and read by nothing else meanwhile.
                input_for(g, plane, s, |k| unsafe { v.run(at(k), tiles) });
            }
        }
        // SAFETY: the input transforms above wrote every (position, channel, tile) of `v`.
        let v = unsafe { assume_init(v) };
        let m = &mut m[..g.k() * g.c_out * cols];
        for (k, m_k) in m.chunks_exact_mut(g.c_out * cols).enumerate() {
            let u_k = &u[k * g.c_out * g.c_in..(k + 1) * g.c_out * g.c_in];
            let v_k = &v[k * g.c_in * cols..(k + 1) * g.c_in * cols];
            product((g.c_out, g.c_in, cols), u_k, v_k, m_k, Parallelism::None);
        }
        // SAFETY: the products above wrote every (position, output channel, tile) of `m`.
        let m = unsafe { assume_init(m) };
        for (p, out) in y.chunks_exact_mut(g.oh * g.ow).enumerate() {
            let (i, ch) = (p / g.c_out, p % g.c_out);
            let m_run = |k: usize| &m[(k * g.c_out + ch) * cols + i * tiles..][..tiles];
            output_for(g, m_run, out, s);
        }
    };
    // Every output plane is written whole by the output transform: not zero-filled first.
    let len = g.b * image_out;
    let mut y: Vec<T> = Vec::with_capacity(len);
    let parts = &mut y.spare_capacity_mut()[..len];
    if threads > 1 {
        parts
            .par_chunks_mut(group * image_out)
            .enumerate()
            .for_each_init(buffers, |bufs, (j, part)| run(bufs, j * group, part));
    } else {
        let mut bufs = buffers();
        for (j, part) in parts.chunks_mut(group * image_out).enumerate() {
            run(&mut bufs, j * group, part);
        }
    }
    // SAFETY: the groups cover the `len` elements, each plane written whole by `output_for`; a
    // panic propagates before this line and drops `y` with length 0.
    unsafe { y.set_len(len) };
    y
}

/// Upper bound on the elements of one transformed filter in a forward convolution: larger
/// filters are transformed and applied a block of output channels at a time ([`forward`]).
/// 16M elements is 64 MiB of f32. Whole, ResNet-101's first AU reduction (3x3, 2048 -> 1024 on
/// 14 x 14) had a 134 MB transformed filter (16/9 of its weights), the largest buffer of an
/// inference pass; in two blocks its input transform is done twice and its products pack that
/// twice (measured on ResNet-101 inference, batch 4, Intel Xeon: 150 MiB less peak memory, the
/// time within 1%; blocks of 32 MiB cost 3-6%).
const FILTER_BUDGET: usize = 1 << 24;

/// `conv(x, w)` with `w` `[c_out, c_in, 3, 3]` as `g` says: [`convolve`] with the whole
/// transformed filter, or, where that would exceed `budget` elements, with that of equal blocks
/// of output channels in turn, each block's planes copied into place. The same values either way
/// (each output channel's products and transform do not depend on the others).
fn forward<T: Real>(x: &[T], w: &[T], g: &Geometry, budget: usize) -> Vec<T> {
    let blocks = (g.k() * g.c_out * g.c_in).div_ceil(budget.max(1)).clamp(1, g.c_out.max(1));
    if blocks == 1 {
        return convolve(x, &filter_for(g, w, g.c_out, g.c_in, false), g);
    }
    // Whole 64-row panels of gemm's AVX-512 kernel for blocks of that size.
    let step = g.c_out.div_ceil(blocks);
    let step = if step >= 64 { step.next_multiple_of(64).min(g.c_out) } else { step };
    let plane = g.oh * g.ow;
    let len = g.b * g.c_out * plane;
    let mut y: Vec<T> = Vec::with_capacity(len);
    let dst = &mut y.spare_capacity_mut()[..len];
    for first in (0..g.c_out).step_by(step) {
        let n = step.min(g.c_out - first);
        let gb = Geometry { c_out: n, ..*g };
        let wb = &w[first * g.c_in * 9..(first + n) * g.c_in * 9];
        let yb = convolve(x, &filter_for(&gb, wb, n, g.c_in, false), &gb); // [b, n, oh, ow]
        dst.par_chunks_mut(g.c_out * plane).zip(yb.par_chunks(n * plane)).for_each(|(d, src)| {
            for (d, &v) in d[first * plane..(first + n) * plane].iter_mut().zip(src) {
                d.write(v);
            }
        });
    }
    // SAFETY: the blocks cover the output channels: every plane of every image was written.
    unsafe { y.set_len(len) };
    y
}

/// `s` as slots to write: for a result written through [`MaybeUninit::write`] into either a
/// fresh buffer ([`slots`]) or, through this, an initialised one (which stays initialised: only
/// values are written).
fn as_uninit<T>(s: &mut [T]) -> &mut [MaybeUninit<T>] {
    // SAFETY: `MaybeUninit<T>` has `T`'s layout, and the callers write only initialised values.
    unsafe { &mut *(s as *mut [T] as *mut [MaybeUninit<T>]) }
}

/// The values of slots that have all been written.
///
/// # Safety
/// Every element of `s` must have been written.
unsafe fn assume_init<T>(s: &[MaybeUninit<T>]) -> &[T] {
    // SAFETY: `MaybeUninit<T>` has `T`'s layout and the caller promises every element is set.
    unsafe { &*(s as *const [MaybeUninit<T>] as *const [T]) }
}

/// One worker's buffers in [`convolve`].
struct Buffers<T> {
    /// The transformed inputs of a group: `[16, c_in, group * tiles]`.
    v: Vec<MaybeUninit<T>>,
    /// Their products with the filter: `[16, c_out, group * tiles]`.
    m: Vec<MaybeUninit<T>>,
    s: Scratch<T>,
}

/// [`convolve`] with each phase in parallel over the whole batch: the input transform by
/// (image, channel), the 16 products by position (each whole on one thread), the output
/// transform by output plane.
fn convolve_phased<T: Real>(x: &[T], u: &[T], g: &Geometry) -> Vec<T> {
    let (th, tw) = g.tiles();
    let tiles = th * tw;
    let cols = g.b * tiles;
    let plane_in = g.h * g.w;
    let mut v = slots(g.k() * g.c_in * cols);
    let vp = SharedMut(v.as_mut_ptr());
    x.par_chunks_exact(plane_in).enumerate().for_each_init(
        || Scratch::new((th, tw), g.m),
        |s, (p, plane)| {
            let (i, ch) = (p / g.c_in, p % g.c_in);
            let at = |k: usize| (k * g.c_in + ch) * cols + i * tiles;
            // SAFETY: image i and channel ch own these runs of `v`.
            input_for(g, plane, s, |k| unsafe { vp.run(at(k), tiles) });
        },
    );
    // SAFETY: the (image, channel) tasks wrote every run of `v`.
    let v = unsafe { assume_init(&v) };
    // The products and the output are written whole (gemm without reading its result, the
    // output transform plane by plane): not zero-filled first.
    let m_len = g.k() * g.c_out * cols;
    let mut m: Vec<T> = Vec::with_capacity(m_len);
    m.spare_capacity_mut()[..m_len].par_chunks_exact_mut(g.c_out * cols).enumerate().for_each(
        |(k, m_k)| {
            let u_k = &u[k * g.c_out * g.c_in..(k + 1) * g.c_out * g.c_in];
            let v_k = &v[k * g.c_in * cols..(k + 1) * g.c_in * cols];
            product((g.c_out, g.c_in, cols), u_k, v_k, m_k, Parallelism::None);
        },
    );
    // SAFETY: the 16 or 36 products wrote their `c_out * cols` elements each, all of `m`.
    unsafe { m.set_len(m_len) };
    let y_len = g.b * g.c_out * g.oh * g.ow;
    let mut y: Vec<T> = Vec::with_capacity(y_len);
    y.spare_capacity_mut()[..y_len].par_chunks_exact_mut(g.oh * g.ow).enumerate().for_each_init(
        || Scratch::new((th, tw), g.m),
        |s, (p, out)| {
            let (i, ch) = (p / g.c_out, p % g.c_out);
            let m_run = |k: usize| &m[(k * g.c_out + ch) * cols + i * tiles..][..tiles];
            output_for(g, m_run, out, s);
        },
    );
    // SAFETY: every output plane was written whole by `output_for`.
    unsafe { y.set_len(y_len) };
    y
}

/// `conv2d(x, w, p)` for a 3x3 kernel, stride 1 (see [`supports`]): `[b, c_out, oh, ow]`.
pub(crate) fn conv(x: &Tensor, w: &Tensor, p: ConvParams) -> candle_core::Result<Tensor> {
    run(x, w, &Plan::new(x, w, p)?.0, false, "conv2d")
}

/// [`conv`] prepared from the tensors' shapes and run later on their slices: for the
/// convolution op, which computes its result from the storages Candle hands it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Plan(Geometry);

impl Plan {
    /// The plan of `conv(x, w, p)` (shapes as [`conv`]).
    pub(crate) fn new(x: &Tensor, w: &Tensor, p: ConvParams) -> candle_core::Result<Self> {
        let (b, c_in, h, wd) = x.dims4()?;
        let c_out = w.dim(0)?;
        let (oh, ow) = (h + 2 * p.padding - 2, wd + 2 * p.padding - 2);
        Ok(Self(Geometry {
            b,
            c_in,
            c_out,
            h,
            w: wd,
            pad: p.padding,
            oh,
            ow,
            m: tile_side((oh, ow)),
        }))
    }

    /// The output's, the input's and the weight's dimensions.
    pub(crate) fn dims(&self) -> [[usize; 4]; 3] {
        let g = &self.0;
        [[g.b, g.c_out, g.oh, g.ow], [g.b, g.c_in, g.h, g.w], [g.c_out, g.c_in, 3, 3]]
    }

    /// `conv(x, w, p)` of contiguous `x` and `w` as the plan's shapes say.
    pub(crate) fn run<T: Real>(&self, x: &[T], w: &[T]) -> Vec<T> {
        forward(x, w, &self.0, FILTER_BUDGET)
    }
}

/// [`conv`]'s values (f32) as they come out: for an epilogue applied in place.
pub(crate) fn conv_f32(x: &Tensor, w: &Tensor, p: ConvParams) -> candle_core::Result<Vec<f32>> {
    let (x, w) = (x.contiguous()?, w.contiguous()?);
    let plan = Plan::new(&x, &w, p)?;
    with_cpu_slices::<f32, _, 2>("conv2d", [(&x, "input"), (&w, "weight")], |[x, w]| plan.run(x, w))
}

/// The input gradient of `conv2d(x, w, p)` for the output gradient `grad` (3x3, stride 1,
/// padding <= 2; see [`supports`]): `[b, c_in, h, w]`.
pub(crate) fn input_grad(grad: &Tensor, w: &Tensor, p: ConvParams) -> candle_core::Result<Tensor> {
    let (b, c_out, oh, ow) = grad.dims4()?;
    let c_in = w.dim(1)?;
    let pad = 2 - p.padding;
    let g = Geometry {
        b,
        c_in: c_out,
        c_out: c_in,
        h: oh,
        w: ow,
        pad,
        oh: oh + 2 * pad - 2,
        ow: ow + 2 * pad - 2,
        m: tile_side((oh + 2 * pad - 2, ow + 2 * pad - 2)),
    };
    run(grad, w, &g, true, "conv2d input gradient")
}

/// [`convolve`] on tensors: `x` is the input (or output gradient), `w` the `[c_out, c_in, 3, 3]`
/// weight, flipped and transposed when `flip`.
fn run(x: &Tensor, w: &Tensor, g: &Geometry, flip: bool, op: &str) -> candle_core::Result<Tensor> {
    let (x, w) = (x.contiguous()?, w.contiguous()?);
    if x.dtype() != w.dtype() {
        candle_core::bail!("{op}: input is {:?}, weight {:?}", x.dtype(), w.dtype())
    }
    let (wo, wi) = (w.dim(0)?, w.dim(1)?);
    let shape = (g.b, g.c_out, g.oh, g.ow);
    let dev = x.device().clone();
    let ts = [(&x, "input"), (&w, "weight")];
    by_dtype(
        x.dtype(),
        op,
        || {
            let y = with_cpu_slices::<f32, _, 2>(op, ts, |[x, w]| apply(x, w, g, flip, (wo, wi)))?;
            Tensor::from_vec(y, shape, &dev)
        },
        || {
            let y = with_cpu_slices::<f64, _, 2>(op, ts, |[x, w]| apply(x, w, g, flip, (wo, wi)))?;
            Tensor::from_vec(y, shape, &dev)
        },
    )
}

/// [`run`] on slices: the input gradient's flipped kernel transformed whole, or [`forward`].
fn apply<T: Real>(x: &[T], w: &[T], g: &Geometry, flip: bool, (wo, wi): (usize, usize)) -> Vec<T> {
    if flip {
        convolve(x, &filter_for(g, w, wo, wi, true), g)
    } else {
        forward(x, w, g, FILTER_BUDGET)
    }
}

/// `A gy A^T` for every 2x2 tile of one output-gradient plane (`oh x ow`, zero past its edge),
/// position `k`'s values of all `th * tw` tiles written to `dst(k)`: the adjoint of the output
/// transform (`A = [1 0; 1 1; 1 -1; 0 -1]`), over whole-plane runs as in [`input_plane`].
#[multiversion(targets("x86_64+avx2+fma"))]
fn grad_plane<'a, T: Real>(
    plane: &[T],
    (oh, ow): (usize, usize),
    (th, tw): (usize, usize),
    s: &mut Scratch<T>,
    mut dst: impl FnMut(usize) -> &'a mut [MaybeUninit<T>],
) {
    let tiles = th * tw;
    let Scratch { phases, rows, spare: d, .. } = s;
    let d = &mut d[..M * M * tiles];
    gather_tiles(plane, (oh, ow), 0, (th, tw), (M, M), &mut phases[..M * (tw + 1)], d);
    // gy A^T per row: [p, q] -> [p, p + q, p - q, -q], into rows[r][col][tile].
    let rows = &mut rows[..M * A * tiles];
    for r in 0..M {
        let (p, q) = (&d[r * M * tiles..][..tiles], &d[(r * M + 1) * tiles..][..tiles]);
        let mut outs = rows[r * A * tiles..(r + 1) * A * tiles].chunks_exact_mut(tiles);
        let mut next = || outs.next().expect("four runs");
        let (c0, c1, c2, c3) = (next(), next(), next(), next());
        for j in 0..tiles {
            c0[j] = p[j];
            c1[j] = p[j] + q[j];
            c2[j] = p[j] - q[j];
            c3[j] = T::zero() - q[j];
        }
    }
    // A (gy A^T): rows [r0, r0 + r1, r0 - r1, -r1], column by column.
    for col in 0..A {
        let r0 = &rows[col * tiles..][..tiles];
        let r1 = &rows[(A + col) * tiles..][..tiles];
        let out = &mut dst(col)[..tiles];
        for j in 0..tiles {
            out[j].write(r0[j]);
        }
        let out = &mut dst(A + col)[..tiles];
        for j in 0..tiles {
            out[j].write(r0[j] + r1[j]);
        }
        let out = &mut dst(2 * A + col)[..tiles];
        for j in 0..tiles {
            out[j].write(r0[j] - r1[j]);
        }
        let out = &mut dst(3 * A + col)[..tiles];
        for j in 0..tiles {
            out[j].write(T::zero() - r1[j]);
        }
    }
}

/// F(4x4, 3x3)'s `Z = A gy A^T` for every 4x4 tile of one output-gradient plane (`oh x ow`, zero
/// past its edge), position `k`'s values of all `th * tw` tiles written to `dst(k)`: the adjoint
/// of [`output_plane4`] (`A` is the transpose of its `A^T`), over whole-plane runs likewise.
#[multiversion(targets("x86_64+avx2+fma"))]
fn grad_plane4<'a, T: Real>(
    plane: &[T],
    (oh, ow): (usize, usize),
    (th, tw): (usize, usize),
    s: &mut Scratch<T>,
    mut dst: impl FnMut(usize) -> &'a mut [MaybeUninit<T>],
) {
    let tiles = th * tw;
    let consts = (T::from_f64(2.0), T::from_f64(4.0), T::from_f64(8.0));
    let Scratch { phases, rows: d, spare: e, .. } = s;
    // The tiles' 16 values gathered into runs d[r][q] (tile j of a row: columns 4j..4j + 4).
    let d = &mut d[..M4 * M4 * tiles];
    gather_tiles(plane, (oh, ow), 0, (th, tw), (M4, M4), &mut phases[..M4 * (tw + 1)], d);
    // gy A^T: each row's four values to six, e[r][c].
    let e = &mut e[..M4 * A4 * tiles];
    for r in 0..M4 {
        let runs = [0, 1, 2, 3].map(|q| &d[(r * M4 + q) * tiles..(r * M4 + q + 1) * tiles]);
        let mut outs =
            as_uninit(&mut e[r * A4 * tiles..(r + 1) * A4 * tiles]).chunks_exact_mut(tiles);
        let mut next = || outs.next().expect("six runs");
        grad_rows4(runs, [next(), next(), next(), next(), next(), next()], consts);
    }
    // A (gy A^T): each column's four values to six, into the 36 positions.
    for c in 0..A4 {
        let runs = [0, 1, 2, 3].map(|r| &e[(r * A4 + c) * tiles..(r * A4 + c + 1) * tiles]);
        let mut run = |r: usize| -> &'a mut [MaybeUninit<T>] { &mut dst(r * A4 + c)[..tiles] };
        let outs = [run(0), run(1), run(2), run(3), run(4), run(5)];
        grad_rows4(runs, outs, consts);
    }
}

/// `A`'s six rows (the columns of [`output_rows4`]'s `A^T`) applied across four runs:
/// `[p0, p0 + p1 + p2 + p3, p0 - p1 + p2 - p3, p0 + 2 p1 + 4 p2 + 8 p3, p0 - 2 p1 + 4 p2 - 8 p3, p3]`.
#[inline(always)]
fn grad_rows4<T: Real>(
    p: [&[T]; M4],
    out: [&mut [MaybeUninit<T>]; A4],
    (two, four, eight): (T, T, T),
) {
    let n = out[0].len();
    let [p0, p1, p2, p3] = p.map(|r| &r[..n]);
    let [c0, c1, c2, c3, c4, c5] = out;
    let (c1, c2, c3, c4, c5) =
        (&mut c1[..n], &mut c2[..n], &mut c3[..n], &mut c4[..n], &mut c5[..n]);
    for j in 0..n {
        let (even, odd) = (p0[j] + p2[j], p1[j] + p3[j]);
        let (even2, odd2) = (p0[j] + four * p2[j], two * p1[j] + eight * p3[j]);
        c0[j].write(p0[j]);
        c1[j].write(even + odd);
        c2[j].write(even - odd);
        c3[j].write(even2 + odd2);
        c4[j].write(even2 - odd2);
        c5[j].write(p3[j]);
    }
}

/// `gw = G^T M G` for every channel pair, from the summed products `m` (`[k][pairs]`, `k` = 16
/// or 36 positions): the adjoint of the filter transform of the tile side `g.m`, element-wise
/// over the pairs. `[pairs, 3, 3]`.
fn weight_from_products<T: Real>(m: &[T], pairs: usize, tile: usize) -> Vec<T> {
    // G^T's three rows applied across the a = 4 or 6 runs `v` into `out`.
    fn gt<T: Real>(v: &[&[T]], out: [&mut [T]; 3]) {
        let [o0, o1, o2] = out;
        let n = o0.len();
        let (o1, o2) = (&mut o1[..n], &mut o2[..n]);
        if v.len() == A {
            // G^T = [1 1/2 1/2 0; 0 1/2 -1/2 0; 0 1/2 1/2 1]
            let half = T::from_f64(0.5);
            let (a, b, c, d) = (&v[0][..n], &v[1][..n], &v[2][..n], &v[3][..n]);
            for j in 0..n {
                o0[j] = a[j] + (b[j] + c[j]) * half;
                o1[j] = (b[j] - c[j]) * half;
                o2[j] = (b[j] + c[j]) * half + d[j];
            }
        } else {
            // G^T = [1/4 -1/6 -1/6 1/24 1/24 0; 0 -1/6 1/6 1/12 -1/12 0; 0 -1/6 -1/6 1/6 1/6 1]
            let (q, s, t, tf) = (
                T::from_f64(0.25),
                T::from_f64(1.0 / 6.0),
                T::from_f64(1.0 / 12.0),
                T::from_f64(1.0 / 24.0),
            );
            let [a, b, c, d, e, f] = [0, 1, 2, 3, 4, 5].map(|i| &v[i][..n]);
            for j in 0..n {
                let (s12, d12) = (b[j] + c[j], c[j] - b[j]);
                let (s34, d34) = (d[j] + e[j], d[j] - e[j]);
                o0[j] = a[j] * q - s12 * s + s34 * tf;
                o1[j] = d12 * s + d34 * t;
                o2[j] = (s34 - s12) * s + f[j];
            }
        }
    }
    let a = tile + 2;
    // Every step is element-wise over the pairs: split them between tasks, each transforming
    // its run of pairs of every position into its block of `gw`.
    let per_task = MIN_TASK.div_ceil(a * a).max(1);
    let mut gw = vec![T::zero(); pairs * 9];
    gw.par_chunks_mut(per_task * 9).enumerate().for_each(|(task, gw)| {
        let (j0, n) = (task * per_task, gw.len() / 9);
        let run = |k: usize| &m[k * pairs + j0..][..n];
        // (G^T M): [3 rows][a columns][n], then (G^T M) G row by row into `res` [3][3][n].
        let mut rows = vec![T::zero(); 3 * a * n];
        for c in 0..a {
            let v: Vec<&[T]> = (0..a).map(|r| run(r * a + c)).collect();
            let mut outs = rows.chunks_exact_mut(n).skip(c).step_by(a);
            let mut next = || outs.next().expect("three rows");
            gt(&v, [next(), next(), next()]);
        }
        let mut res = vec![T::zero(); 9 * n];
        for r in 0..3 {
            let v: Vec<&[T]> =
                (0..a).map(|c| &rows[(r * a + c) * n..(r * a + c + 1) * n]).collect();
            let mut outs = res[r * 3 * n..(r + 1) * 3 * n].chunks_exact_mut(n);
            let mut next = || outs.next().expect("three columns");
            gt(&v, [next(), next(), next()]);
        }
        for (t, run) in res.chunks_exact(n).enumerate() {
            for (j, &v) in run.iter().enumerate() {
                gw[j * 9 + t] = v;
            }
        }
    });
    gw
}

/// The weight gradient of a 3x3 stride-1 convolution of `x` (`[b, c_in, h, w]`) whose output
/// gradient is `gy` (`[b, c_out, oh, ow]`), by the adjoint of the forward algorithm: with the
/// input tiles transformed as in the forward pass (`V = B^T d B`) and the gradient's 2x2 tiles
/// as `Z = A gy A^T`, `gw = G^T [sum over tiles of Z . V] G` for each channel pair; the sums over
/// the tiles are 16 gemms `Z_k [c_out, tiles] x V_k^T [tiles, c_in]`. `[c_out, c_in, 3, 3]`.
fn weight_grad_slices<T: Real>(x: &[T], gy: &[T], g: &Geometry, budget: usize) -> Vec<T> {
    let pairs = g.c_out * g.c_in;
    if g.b == 0 {
        return vec![T::zero(); pairs * 9];
    }
    // M_k = sum over the tiles of Z_k x V_k^T: [16 or 36, c_out, c_in], summed group of images by
    // group of images (each group's transforms stay in the cache). With several groups whose
    // sums fit in `budget` elements ([`PARTIAL_BUDGET`]), each group's go into a sum of its own,
    // the groups in parallel (their transforms and products are phases in parallel too, within
    // the group), and the sums are then added in group order; otherwise the groups run in
    // order, each adding to one sum. Either way the same values at any thread count. (Two
    // threads, resnet18's 56 x 56 layers at batch 8 have 4 groups, which otherwise ran as 12
    // short parallel phases.)
    let group = g.group();
    let firsts: Vec<usize> = (0..g.b).step_by(group).collect();
    let size = g.k() * pairs;
    if firsts.len() > 1 && size * firsts.len() <= budget {
        let sums: Vec<Vec<T>> = firsts
            .par_iter()
            .map(|&first| {
                let mut m: Vec<T> = Vec::with_capacity(size);
                let slots = &mut m.spare_capacity_mut()[..size];
                group_products(x, gy, g, (first, group.min(g.b - first)), slots, false);
                // SAFETY: a group's products (not accumulated) write all `size` elements.
                unsafe { m.set_len(size) };
                m
            })
            .collect();
        return weight_from_products(&sum_in_order(sums), pairs, g.m);
    }
    // Written by the first group's products (not accumulated), then added to: not zero-filled.
    let mut m = slots(size);
    for &first in &firsts {
        group_products(x, gy, g, (first, group.min(g.b - first)), &mut m, first > 0);
    }
    // SAFETY: the first group's products (`first` 0: b >= 1) wrote all of `m`.
    weight_from_products(unsafe { assume_init(&m) }, pairs, g.m)
}

/// Largest total of per-group sums (elements) that [`weight_grad_slices`] keeps to run its
/// groups of images in parallel: 32 MiB of f32.
const PARTIAL_BUDGET: usize = 1 << 23;

/// Where a plane transform writes position `k`'s values: `dst(k)`.
type RunOut<'r, 'c, T> = dyn FnMut(usize) -> &'r mut [MaybeUninit<T>] + 'c;

/// One plane's Winograd transform, position `k`'s values written to the run `dst(k)`.
type PlaneTransform<'f, T> =
    dyn for<'r, 'c> Fn(&[T], &mut Scratch<T>, &'c mut RunOut<'r, 'c, T>) + Sync + 'f;

/// The products `Z_k x V_k^T` of images `first..first + n` into `m` (`[16 or 36, c_out, c_in]`),
/// added to it when `accumulate`, else written.
fn group_products<T: Real>(
    x: &[T],
    gy: &[T],
    g: &Geometry,
    (first, n): (usize, usize),
    m: &mut [MaybeUninit<T>],
    accumulate: bool,
) {
    let (th, tw) = g.tiles();
    let tiles = th * tw;
    let (plane_in, plane_out) = (g.h * g.w, g.oh * g.ow);
    let pairs = g.c_out * g.c_in;
    let cols = n * tiles;
    // The transformed planes of images `first..first + n` of `src` (`channels` planes of `plane`
    // values per image), `[16 or 36, channels, cols]`, each plane by `transform`.
    let transformed = |src: &[T], channels: usize, plane: usize, transform: &PlaneTransform<T>| {
        let mut v = slots(g.k() * channels * cols);
        let vp = SharedMut(v.as_mut_ptr());
        let planes = &src[first * channels * plane..(first + n) * channels * plane];
        planes.par_chunks_exact(plane).enumerate().for_each_init(
            || Scratch::new((th, tw), g.m),
            |s, (p, plane)| {
                let (i, ch) = (p / channels, p % channels);
                let at = |k: usize| (k * channels + ch) * cols + i * tiles;
                // SAFETY: image i and channel ch own these runs of `v`.
                transform(plane, s, &mut |k| unsafe { vp.run(at(k), tiles) });
            },
        );
        v
    };
    let v = transformed(x, g.c_in, plane_in, &|plane, s, dst| input_for(g, plane, s, dst));
    let z = transformed(gy, g.c_out, plane_out, &|plane, s, dst| {
        if g.m == M4 {
            grad_plane4(plane, (g.oh, g.ow), (th, tw), s, dst)
        } else {
            grad_plane(plane, (g.oh, g.ow), (th, tw), s, dst)
        }
    });
    // SAFETY: the (image, channel) tasks of `transformed` wrote every run of `v` and of `z`.
    let (v, z) = unsafe { (assume_init(&v), assume_init(&z)) };
    m.par_chunks_exact_mut(pairs).enumerate().for_each(|(k, m_k)| {
        let z_k = &z[k * g.c_out * cols..(k + 1) * g.c_out * cols];
        let v_k = &v[k * g.c_in * cols..(k + 1) * g.c_in * cols];
        let dst = View { ptr: m_k.as_mut_ptr().cast::<T>(), rs: g.c_in, cs: 1 };
        let lhs = View { ptr: z_k.as_ptr(), rs: cols, cs: 1 };
        // V_k^T: element (tile, ci) of V_k [c_in, cols].
        let rhs = View { ptr: v_k.as_ptr(), rs: 1, cs: cols };
        // SAFETY: m_k is [c_out, c_in] (written without being read unless `accumulate`, when
        // an earlier group wrote it), z_k [c_out, cols], v_k^T [cols, c_in], all inside their
        // slices.
        let shape = (g.c_out, g.c_in, cols);
        unsafe { gemm_view(shape, dst, accumulate, lhs, rhs, Parallelism::None) };
    });
}

/// The weight gradient of `conv2d(x, w, p)` (3x3, stride 1, padding <= 2; see [`supports`])
/// for the output gradient `grad`: `[c_out, c_in, 3, 3]`.
pub(crate) fn weight_grad(x: &Tensor, grad: &Tensor, p: ConvParams) -> candle_core::Result<Tensor> {
    let op = "conv2d weight gradient";
    let (x, grad) = (x.contiguous()?, grad.contiguous()?);
    let (b, c_in, h, w) = x.dims4()?;
    let (_, c_out, oh, ow) = grad.dims4()?;
    if x.dtype() != grad.dtype() {
        candle_core::bail!("{op}: input is {:?}, gradient {:?}", x.dtype(), grad.dtype())
    }
    let g = Geometry { b, c_in, c_out, h, w, pad: p.padding, oh, ow, m: tile_side((oh, ow)) };
    let shape = (c_out, c_in, 3, 3);
    let dev = x.device().clone();
    let ts = [(&x, "input"), (&grad, "gradient")];
    by_dtype(
        x.dtype(),
        op,
        || {
            let gw = with_cpu_slices::<f32, _, 2>(op, ts, |[x, gy]| {
                weight_grad_slices(x, gy, &g, PARTIAL_BUDGET)
            })?;
            Tensor::from_vec(gw, shape, &dev)
        },
        || {
            let gw = with_cpu_slices::<f64, _, 2>(op, ts, |[x, gy]| {
                weight_grad_slices(x, gy, &g, PARTIAL_BUDGET)
            })?;
            Tensor::from_vec(gw, shape, &dev)
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic values in [-1, 1).
    fn values<T: Real>(n: usize, seed: u64) -> Vec<T> {
        let mut z = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        (0..n)
            .map(|_| {
                z ^= z << 13;
                z ^= z >> 7;
                z ^= z << 17;
                T::from_f64((z >> 11) as f64 / (1u64 << 52) as f64 - 1.0)
            })
            .collect()
    }

    /// The 3x3 convolution of `x` by `w` (flipped and transposed when `flip`) by its definition,
    /// in f64.
    fn direct(x: &[f64], w: &[f64], g: &Geometry, flip: bool) -> Vec<f64> {
        let mut y = vec![0.0; g.b * g.c_out * g.oh * g.ow];
        for n in 0..g.b {
            for co in 0..g.c_out {
                for ci in 0..g.c_in {
                    let tap = |r: usize, c: usize| {
                        if flip {
                            w[((ci * g.c_out + co) * 3 + 2 - r) * 3 + 2 - c]
                        } else {
                            w[((co * g.c_in + ci) * 3 + r) * 3 + c]
                        }
                    };
                    for oy in 0..g.oh {
                        for ox in 0..g.ow {
                            let mut acc = 0.0;
                            for r in 0..3 {
                                for c in 0..3 {
                                    let (iy, ix) = (
                                        (oy + r) as isize - g.pad as isize,
                                        (ox + c) as isize - g.pad as isize,
                                    );
                                    if iy >= 0
                                        && ix >= 0
                                        && (iy as usize) < g.h
                                        && (ix as usize) < g.w
                                    {
                                        acc += tap(r, c)
                                            * x[((n * g.c_in + ci) * g.h + iy as usize) * g.w
                                                + ix as usize];
                                    }
                                }
                            }
                            y[((n * g.c_out + co) * g.oh + oy) * g.ow + ox] += acc;
                        }
                    }
                }
            }
        }
        y
    }

    fn rel_l2(a: &[f64], b: &[f64]) -> f64 {
        let d: f64 = a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum();
        let n: f64 = b.iter().map(|y| y * y).sum();
        (d / n).sqrt()
    }

    /// `f(what, i, g)` for shape `i` of `shapes` (`b, c_in, c_out, h, w, pad`) with both tile
    /// sides, on one thread and on three (the grouped and the phased paths).
    fn each_case(
        shapes: &[(usize, usize, usize, usize, usize, usize)],
        f: impl Fn(&str, usize, &Geometry) + Sync,
    ) {
        for threads in [1, 3] {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().expect("pool");
            pool.install(|| {
                for (i, &(b, c_in, c_out, h, w, pad)) in shapes.iter().enumerate() {
                    for m in [M, M4] {
                        let (oh, ow) = (h + 2 * pad - 2, w + 2 * pad - 2);
                        let g = Geometry { b, c_in, c_out, h, w, pad, oh, ow, m };
                        f(&format!("{threads} threads, F({m}), {:?}", shapes[i]), i, &g);
                    }
                }
            });
        }
    }

    /// The f32 bound (relative L2 against the definition) for tile side `m`: F(4x4)'s rounding
    /// is 5-8x F(2x2)'s here (5e-7 to 1.3e-6 against 1.1-1.8e-7): its transforms multiply by up
    /// to 8 and sum six terms where F(2x2)'s add at most three.
    fn f32_bound(m: usize) -> f64 {
        if m == M4 { 4e-6 } else { 5e-7 }
    }

    /// Both tile sides, forward and with the flipped kernel, maps not a multiple of the tile in
    /// either direction, every padding: the definition's values, to rounding (f64) and within
    /// [`f32_bound`] (f32).
    #[test]
    fn both_tile_sides_match_the_definition() {
        let shapes = [
            (1, 3, 4, 5, 7, 0),
            (2, 5, 3, 9, 6, 1),
            (3, 4, 6, 13, 11, 2),
            (2, 7, 5, 16, 17, 1),
            (1, 2, 3, 3, 3, 2),
            // F(2x2): 144 tiles per image, groups of 2 images, one per thread at 3 threads.
            (6, 2, 3, 24, 24, 1),
        ];
        each_case(&shapes, |what, i, g| {
            let (b, c_in, c_out) = (g.b, g.c_in, g.c_out);
            for flip in [false, true] {
                let x: Vec<f64> = values(b * c_in * g.h * g.w, i as u64);
                let wt: Vec<f64> = values(c_out * c_in * 9, 100 + i as u64);
                let (wo, wi) = if flip { (c_in, c_out) } else { (c_out, c_in) };
                let want = direct(&x, &wt, g, flip);
                let e = rel_l2(&convolve(&x, &filter_for(g, &wt, wo, wi, flip), g), &want);
                assert!(e < 1e-14, "{what}, flip {flip}: f64 {e:e}");
                let x32: Vec<f32> = x.iter().map(|&v| v as f32).collect();
                let w32: Vec<f32> = wt.iter().map(|&v| v as f32).collect();
                let got = convolve(&x32, &filter_for(g, &w32, wo, wi, flip), g);
                let got: Vec<f64> = got.iter().map(|&v| f64::from(v)).collect();
                let e = rel_l2(&got, &want);
                assert!(e < f32_bound(g.m), "{what}, flip {flip}: f32 {e:e}");
            }
        });
    }

    /// The forward convolution in blocks of output channels equals it whole, bit for bit.
    #[test]
    fn blocks_of_output_channels_give_the_same_values() {
        each_case(&[(2, 3, 5, 9, 8, 1), (3, 4, 7, 6, 6, 0)], |what, i, g| {
            let x = values::<f32>(g.b * g.c_in * g.h * g.w, i as u64);
            let w = values::<f32>(g.c_out * g.c_in * 9, i as u64 + 7);
            let whole = forward(&x, &w, g, usize::MAX);
            // A budget of two output channels' transformed filters: blocks of 2 (and a last
            // one of 1).
            let blocked = forward(&x, &w, g, 2 * g.k() * g.c_in);
            assert_eq!(whole, blocked, "{what}");
            assert_eq!(whole, convolve(&x, &filter_for(g, &w, g.c_out, g.c_in, false), g));
        });
    }

    /// Groups per thread: whole groups, as many per thread, or the phased path.
    #[test]
    fn parallel_groups_are_whole_and_shared_evenly() {
        let geom = |b, side, m| Geometry {
            b,
            c_in: 1,
            c_out: 1,
            h: side,
            w: side,
            pad: 1,
            oh: side,
            ow: side,
            m,
        };
        // resnet18's 56 x 56 layers at batch 8: 196 tiles, groups of 2 images, 2 per thread.
        assert_eq!(geom(8, 56, M4).parallel_group(2), Some(2));
        // 28 x 28 (49 tiles): groups of 6 images, one whole group only: the phased path.
        assert_eq!(geom(8, 28, M4).parallel_group(2), None);
        // Large maps: an image per group.
        assert_eq!(geom(8, 112, M4).parallel_group(2), Some(1));
        // 5 images of one group each at 2 threads: 4 groups' worth, so groups of 2 (2, 2, 1).
        assert_eq!(geom(5, 112, M4).parallel_group(2), Some(2));
        assert_eq!(geom(6, 24, M).parallel_group(3), Some(2));
        assert_eq!(geom(0, 24, M).parallel_group(2), None);
    }

    /// Empty sums give exact zeros on every path, although the buffers are not zero-filled: no
    /// input channels (forward) and no images (weight gradient).
    #[test]
    fn empty_sums_are_zeros() {
        each_case(&[(2, 0, 3, 9, 8, 1)], |what, _, g| {
            let y = convolve::<f32>(&[], &filter_for(g, &[], g.c_out, 0, false), g);
            assert_eq!(y, vec![0.0; g.b * g.c_out * g.oh * g.ow], "{what}");
        });
        each_case(&[(0, 2, 3, 9, 8, 1)], |what, _, g| {
            assert_eq!(
                weight_grad_slices::<f64>(&[], &[], g, PARTIAL_BUDGET),
                vec![0.0; 2 * 3 * 9],
                "{what}"
            );
        });
    }

    /// The weight gradient `gw[co, ci, r, c] = sum over (n, oy, ox) of gy[n, co, oy, ox]
    /// x[n, ci, oy + r - pad, ox + c - pad]` by its definition, in f64.
    fn direct_weight_grad(x: &[f64], gy: &[f64], g: &Geometry) -> Vec<f64> {
        let mut gw = vec![0.0; g.c_out * g.c_in * 9];
        for n in 0..g.b {
            for co in 0..g.c_out {
                for ci in 0..g.c_in {
                    for t in 0..9 {
                        let (r, c) = (t / 3, t % 3);
                        let mut acc = 0.0;
                        for oy in 0..g.oh {
                            for ox in 0..g.ow {
                                let (iy, ix) = (
                                    (oy + r) as isize - g.pad as isize,
                                    (ox + c) as isize - g.pad as isize,
                                );
                                if iy >= 0 && ix >= 0 && (iy as usize) < g.h && (ix as usize) < g.w
                                {
                                    acc += gy[((n * g.c_out + co) * g.oh + oy) * g.ow + ox]
                                        * x[((n * g.c_in + ci) * g.h + iy as usize) * g.w
                                            + ix as usize];
                                }
                            }
                        }
                        gw[(co * g.c_in + ci) * 9 + t] += acc;
                    }
                }
            }
        }
        gw
    }

    /// The weight gradient by both tile sides, groups of images summed in turn (the last one
    /// shorter): the definition's values, to rounding (f64) and within [`f32_bound`] (f32).
    #[test]
    fn weight_gradient_of_both_tile_sides_matches_the_definition() {
        let shapes = [
            (1, 3, 4, 5, 7, 0),
            (2, 5, 3, 9, 6, 1),
            (3, 4, 6, 13, 11, 2),
            (2, 7, 5, 16, 17, 1),
            (5, 2, 3, 24, 22, 1),
        ];
        each_case(&shapes, |what, i, g| {
            let x: Vec<f64> = values(g.b * g.c_in * g.h * g.w, 200 + i as u64);
            let gy: Vec<f64> = values(g.b * g.c_out * g.oh * g.ow, 300 + i as u64);
            let want = direct_weight_grad(&x, &gy, g);
            // Groups of images summed in parallel (the budget) and in order (none).
            for budget in [PARTIAL_BUDGET, 0] {
                let e = rel_l2(&weight_grad_slices(&x, &gy, g, budget), &want);
                assert!(e < 1e-14, "{what}, budget {budget}: f64 {e:e}");
                let x32: Vec<f32> = x.iter().map(|&v| v as f32).collect();
                let gy32: Vec<f32> = gy.iter().map(|&v| v as f32).collect();
                let got = weight_grad_slices(&x32, &gy32, g, budget);
                let got: Vec<f64> = got.iter().map(|&v| f64::from(v)).collect();
                let e = rel_l2(&got, &want);
                assert!(e < f32_bound(g.m), "{what}, budget {budget}: f32 {e:e}");
            }
        });
        // The same bits at any thread count, on both paths (3 groups of 2 images at F(2x2)).
        let g = Geometry { b: 5, c_in: 2, c_out: 3, h: 24, w: 22, pad: 1, oh: 24, ow: 22, m: M };
        let x: Vec<f32> = values(5 * 2 * 24 * 22, 7).iter().map(|&v: &f64| v as f32).collect();
        let gy: Vec<f32> = values(5 * 3 * 24 * 22, 8).iter().map(|&v: &f64| v as f32).collect();
        assert_eq!(g.b.div_ceil(g.group()), 3);
        for budget in [PARTIAL_BUDGET, 0] {
            let on = |threads: usize| {
                let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build();
                let gw = pool.expect("pool").install(|| weight_grad_slices(&x, &gy, &g, budget));
                gw.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
            };
            assert_eq!(on(1), on(3), "budget {budget}");
        }
    }

    /// The pairs' transforms split between tasks give each pair's own transform bit for bit
    /// (1000 pairs: several tasks at both tile sides, the last one shorter), on 3 threads.
    #[test]
    fn weight_from_products_splits_pairs_between_tasks() {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(3).build().expect("pool");
        let pairs = 1000;
        for tile in [M, M4] {
            let a = tile + 2;
            let m: Vec<f32> =
                values(a * a * pairs, 40 + tile as u64).iter().map(|&v: &f64| v as f32).collect();
            let all = pool.install(|| weight_from_products(&m, pairs, tile));
            for j in [0, 1, 113, 114, 255, 256, 999] {
                let own: Vec<f32> = (0..a * a).map(|k| m[k * pairs + j]).collect();
                let want = weight_from_products(&own, 1, tile);
                assert_eq!(all[j * 9..(j + 1) * 9], want[..], "tile {tile}, pair {j}");
            }
        }
    }

    #[test]
    fn split_phases4_matches_its_definition() {
        for pad in 0..=2 {
            for len in 1..6 {
                for n in 0..26 {
                    let src: Vec<i32> = (1..=n).collect();
                    let mut ph = vec![-1; 4 * len];
                    split_phases4(&src, pad, &mut ph, len);
                    for q in 0..4 * len {
                        let want =
                            q.checked_sub(pad).and_then(|i| src.get(i)).copied().unwrap_or(-1);
                        assert_eq!(
                            ph[(q % 4) * len + q / 4],
                            want,
                            "pad {pad}, len {len}, n {n}, column {q}"
                        );
                    }
                }
            }
        }
    }

    /// Every padding the transforms use, rows shorter, as long as and longer than the scratch.
    #[test]
    fn split_even_odd_matches_its_definition() {
        for pad in 0..=2 {
            for half in 1..6 {
                for len in 0..14 {
                    let src: Vec<i32> = (1..=len).collect();
                    let (mut even, mut odd) = (vec![-1; half], vec![-1; half]);
                    split_even_odd(&src, pad, &mut even, &mut odd);
                    for q in 0..2 * half {
                        let want =
                            q.checked_sub(pad).and_then(|i| src.get(i)).copied().unwrap_or(-1);
                        let got = if q % 2 == 0 { even[q / 2] } else { odd[q / 2] };
                        assert_eq!(got, want, "pad {pad}, half {half}, len {len}, column {q}");
                    }
                }
            }
        }
    }
}

//! Test helpers: deterministic data and direct-loop reference convolutions (the definitions,
//! written as sums over every tap) with their gradients, in f64.

#![allow(dead_code)]

use candle_core::{DType, Device, Tensor};

/// A dense NCHW-style 4-d array of f64.
#[derive(Debug, Clone)]
pub struct Arr4 {
    pub dims: [usize; 4],
    pub v: Vec<f64>,
}

impl Arr4 {
    pub fn zeros(dims: [usize; 4]) -> Self {
        Self { dims, v: vec![0.0; dims.iter().product()] }
    }

    pub fn idx(&self, a: usize, b: usize, c: usize, d: usize) -> usize {
        ((a * self.dims[1] + b) * self.dims[2] + c) * self.dims[3] + d
    }

    pub fn from_tensor(t: &Tensor) -> Self {
        let (a, b, c, d) = t.dims4().expect("rank 4");
        let v = t
            .to_dtype(DType::F64)
            .and_then(|t| t.flatten_all())
            .and_then(|t| t.to_vec1::<f64>())
            .expect("to vec");
        Self { dims: [a, b, c, d], v }
    }

    pub fn to_tensor(&self, dtype: DType) -> Tensor {
        Tensor::from_vec(self.v.clone(), self.dims.to_vec(), &Device::Cpu)
            .and_then(|t| t.to_dtype(dtype))
            .expect("tensor")
    }
}

/// Deterministic values in [-1, 1) (splitmix64), so that failures reproduce.
pub fn det(dims: [usize; 4], seed: u64) -> Arr4 {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
    let n: usize = dims.iter().product();
    let v = (0..n)
        .map(|_| {
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            (z >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
        })
        .collect();
    Arr4 { dims, v }
}

/// Positions `(o, i)` along one axis with `i = o*s + t*d - p` inside `[0, n)`, for tap `t`.
fn pairs(n: usize, m: usize, t: usize, s: usize, p: usize, d: usize) -> Vec<(usize, usize)> {
    (0..m)
        .filter_map(|o| {
            let i = (o * s + t * d) as isize - p as isize;
            (0..n as isize).contains(&i).then_some((o, i as usize))
        })
        .collect()
}

/// Convolution geometry: stride, padding, dilation.
#[derive(Debug, Clone, Copy)]
pub struct Geo {
    pub s: usize,
    pub p: usize,
    pub d: usize,
}

/// `y[yi] += x[xi] * w[wi]` over every product `(xi, yi, wi)` of a convolution-like op, and its
/// two gradients for the output gradient `g`: `gx[xi] += g[yi] * w[wi]`, `gw[wi] += g[yi] * x[xi]`.
fn accumulate(
    x: &Arr4,
    w: &Arr4,
    g: Option<&Arr4>,
    y_dims: [usize; 4],
    products: impl Iterator<Item = (usize, usize, usize)>,
) -> (Arr4, Arr4, Arr4) {
    let mut y = Arr4::zeros(y_dims);
    let mut gx = Arr4::zeros(x.dims);
    let mut gw = Arr4::zeros(w.dims);
    for (xi, yi, wi) in products {
        y.v[yi] += x.v[xi] * w.v[wi];
        if let Some(g) = g {
            gx.v[xi] += g.v[yi] * w.v[wi];
            gw.v[wi] += g.v[yi] * x.v[xi];
        }
    }
    (y, gx, gw)
}

/// Every `(n, ci, co, (th, tw), (x row, y row), (x col, y col))` of a convolution-like op with
/// `b` images, `channels = (ci, co)`, `kernel = (kh, kw)`; `rows(th)` / `cols(tw)` give the
/// `(x, y)` positions that tap joins along each axis.
fn taps(
    b: usize,
    channels: (usize, usize),
    kernel: (usize, usize),
    rows: impl Fn(usize) -> Vec<(usize, usize)>,
    cols: impl Fn(usize) -> Vec<(usize, usize)>,
) -> Vec<Tap> {
    let mut out = Vec::new();
    for th in 0..kernel.0 {
        let ph = rows(th);
        for tw in 0..kernel.1 {
            let pw = cols(tw);
            for n in 0..b {
                for ci in 0..channels.0 {
                    for co in 0..channels.1 {
                        for &r in &ph {
                            out.extend(pw.iter().map(|&c| Tap { n, ci, co, t: (th, tw), r, c }));
                        }
                    }
                }
            }
        }
    }
    out
}

/// One product of [`taps`].
struct Tap {
    n: usize,
    ci: usize,
    co: usize,
    t: (usize, usize),
    /// (x row, y row).
    r: (usize, usize),
    /// (x column, y column).
    c: (usize, usize),
}

/// `conv2d` by its definition, with both gradients for the output gradient `g`.
/// Returns `(y, gx, gw)`; `x: [b, ci, h, w]`, `w: [co, ci, kh, kw]`, `g: [b, co, oh, ow]`.
pub fn conv_ref(x: &Arr4, w: &Arr4, g: Option<&Arr4>, geo: Geo) -> (Arr4, Arr4, Arr4) {
    let [b, ci, h, wd] = x.dims;
    let [co, _, kh, kw] = w.dims;
    let oh = (h + 2 * geo.p - geo.d * (kh - 1) - 1) / geo.s + 1;
    let ow = (wd + 2 * geo.p - geo.d * (kw - 1) - 1) / geo.s + 1;
    let y = Arr4::zeros([b, co, oh, ow]);
    // `pairs` gives (output, input): swapped into (x, y).
    let swap = |v: Vec<(usize, usize)>| v.into_iter().map(|(o, i)| (i, o)).collect();
    let all = taps(
        b,
        (ci, co),
        (kh, kw),
        |th| swap(pairs(h, oh, th, geo.s, geo.p, geo.d)),
        |tw| swap(pairs(wd, ow, tw, geo.s, geo.p, geo.d)),
    );
    let products = all.into_iter().map(|t| {
        let xi = x.idx(t.n, t.ci, t.r.0, t.c.0);
        (xi, y.idx(t.n, t.co, t.r.1, t.c.1), w.idx(t.co, t.ci, t.t.0, t.t.1))
    });
    accumulate(x, w, g, y.dims, products)
}

/// `conv_transpose2d` by its definition (`y[o] += x[i] * w[t]` for `o = i*s + t*d - p`), with
/// both gradients. `x: [b, ci, h, w]`, `w: [ci, co, kh, kw]`, `g: [b, co, oh, ow]`.
pub fn conv_transpose_ref(
    x: &Arr4,
    w: &Arr4,
    g: Option<&Arr4>,
    geo: Geo,
    output_padding: usize,
) -> (Arr4, Arr4, Arr4) {
    let [b, ci, h, wd] = x.dims;
    let [_, co, kh, kw] = w.dims;
    let oh = (h - 1) * geo.s + geo.d * (kh - 1) + output_padding + 1 - 2 * geo.p;
    let ow = (wd - 1) * geo.s + geo.d * (kw - 1) + output_padding + 1 - 2 * geo.p;
    let y = Arr4::zeros([b, co, oh, ow]);
    // (i, o) pairs: the roles of `pairs` swapped (o = i*s + t*d - p inside [0, oh)).
    let all = taps(
        b,
        (ci, co),
        (kh, kw),
        |th| pairs(oh, h, th, geo.s, geo.p, geo.d),
        |tw| pairs(ow, wd, tw, geo.s, geo.p, geo.d),
    );
    let products = all.into_iter().map(|t| {
        let xi = x.idx(t.n, t.ci, t.r.0, t.c.0);
        (xi, y.idx(t.n, t.co, t.r.1, t.c.1), w.idx(t.ci, t.co, t.t.0, t.t.1))
    });
    accumulate(x, w, g, y.dims, products)
}

/// Relative L2 error `|a - b| / max(|b|, tiny)`.
pub fn rel_err(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    let diff: f64 = a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum::<f64>().sqrt();
    let norm: f64 = b.iter().map(|y| y * y).sum::<f64>().sqrt();
    diff / norm.max(1e-300)
}

/// Flattened values of a tensor as f64.
pub fn vals(t: &Tensor) -> Vec<f64> {
    t.to_dtype(DType::F64)
        .and_then(|t| t.flatten_all())
        .and_then(|t| t.to_vec1::<f64>())
        .expect("values")
}

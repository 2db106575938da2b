//! `aue_kernels::conv2d`: forward equal to Candle's, gradients equal to the direct-loop
//! definition, to central finite differences and to Candle's own backward pass.

mod common;

use aue_kernels::grad::{
    Engine, WeightGradAlgo, conv2d_forward, conv2d_input_grad, conv2d_weight_grad,
};
use aue_kernels::{ConvParams, KernelError, conv2d, conv2d_grouped};
use candle_core::{DType, Device, Tensor, Var};
use common::{Arr4, Geo, conv_ref, det, rel_err, vals};

/// One test case: shapes and parameters.
#[derive(Debug, Clone, Copy)]
struct Case {
    b: usize,
    ci: usize,
    co: usize,
    hw: (usize, usize),
    k: usize,
    p: ConvParams,
}

impl Case {
    fn new(hw: (usize, usize), k: usize, stride: usize, padding: usize, dilation: usize) -> Self {
        Self { b: 2, ci: 3, co: 4, hw, k, p: ConvParams { stride, padding, dilation } }
    }

    fn fits(&self) -> bool {
        self.p.output_size(self.hw.0, self.k).is_some()
            && self.p.output_size(self.hw.1, self.k).is_some()
    }

    fn geo(&self) -> Geo {
        Geo { s: self.p.stride, p: self.p.padding, d: self.p.dilation }
    }

    fn out_dims(&self) -> [usize; 4] {
        let oh = self.p.output_size(self.hw.0, self.k).expect("fits");
        let ow = self.p.output_size(self.hw.1, self.k).expect("fits");
        [self.b, self.co, oh, ow]
    }

    /// Input, weight (scaled like a default init) and output gradient.
    fn data(&self, seed: u64) -> (Arr4, Arr4, Arr4) {
        let x = det([self.b, self.ci, self.hw.0, self.hw.1], seed);
        let mut w = det([self.co, self.ci, self.k, self.k], seed + 1);
        let scale = 1.0 / ((self.ci * self.k * self.k) as f64).sqrt();
        w.v.iter_mut().for_each(|v| *v *= scale);
        let g = det(self.out_dims(), seed + 2);
        (x, w, g)
    }
}

/// `sum(conv2d(x, w) * g)`: its gradient in the output is `g`.
fn loss(x: &Tensor, w: &Tensor, g: &Tensor, p: ConvParams) -> Tensor {
    let y = conv2d(x, w, p).expect("conv2d");
    y.mul(g).and_then(|t| t.sum_all()).expect("loss")
}

fn scalar(t: &Tensor) -> f64 {
    t.to_dtype(DType::F64).and_then(|t| t.to_scalar::<f64>()).expect("scalar")
}

/// `conv(x, w)` and the gradients of `<conv(x, w), g>` for `x` and `w`, in `dtype`.
fn grads_of(
    x: &Arr4,
    w: &Arr4,
    g: &Arr4,
    dtype: DType,
    conv: impl Fn(&Tensor, &Tensor) -> Tensor,
) -> (Tensor, Tensor, Tensor) {
    let xv = Var::from_tensor(&x.to_tensor(dtype)).expect("var");
    let wv = Var::from_tensor(&w.to_tensor(dtype)).expect("var");
    let y = conv(xv.as_tensor(), wv.as_tensor());
    let grads = y.mul(&g.to_tensor(dtype)).and_then(|t| t.sum_all()).and_then(|l| l.backward());
    let grads = grads.expect("backward");
    let gx = grads.get(xv.as_tensor()).expect("x grad").clone();
    let gw = grads.get(wv.as_tensor()).expect("w grad").clone();
    (y, gx, gw)
}

/// Which conv2d [`grads`] differentiates.
#[derive(Debug, Clone, Copy)]
enum Conv {
    /// This crate's.
    Ours,
    /// Candle's built-in one and its backward pass.
    Candle,
}

/// `conv` and its gradients.
fn grads(
    conv: Conv,
    (x, w, g): (&Arr4, &Arr4, &Arr4),
    p: ConvParams,
    dtype: DType,
) -> (Tensor, Tensor, Tensor) {
    grads_of(x, w, g, dtype, |x, w| match conv {
        Conv::Ours => conv2d(x, w, p).expect("conv2d"),
        Conv::Candle => x.conv2d(w, p.padding, p.stride, p.dilation, 1).expect("candle conv2d"),
    })
}

/// Central difference of the loss along `dir` against `<grad, dir>`. The loss is linear in each
/// argument, so the difference is exact up to rounding and a large step is fine.
fn check_directional(case: &Case, x: &Arr4, w: &Arr4, g: &Arr4, gx: &Tensor, gw: &Tensor) {
    let (xt, wt, gt) = (x.to_tensor(DType::F64), w.to_tensor(DType::F64), g.to_tensor(DType::F64));
    for seed in [11u64, 12] {
        let vx = det(x.dims, seed).to_tensor(DType::F64);
        let vw = det(w.dims, seed + 100).to_tensor(DType::F64);
        let h = 0.5;
        let shift = |t: &Tensor, v: &Tensor, a: f64| (t + (v * a).expect("scale")).expect("shift");
        let fd_x = (scalar(&loss(&shift(&xt, &vx, h), &wt, &gt, case.p))
            - scalar(&loss(&shift(&xt, &vx, -h), &wt, &gt, case.p)))
            / (2.0 * h);
        let fd_w = (scalar(&loss(&xt, &shift(&wt, &vw, h), &gt, case.p))
            - scalar(&loss(&xt, &shift(&wt, &vw, -h), &gt, case.p)))
            / (2.0 * h);
        let an_x = scalar(&gx.mul(&vx).and_then(|t| t.sum_all()).expect("dot"));
        let an_w = scalar(&gw.mul(&vw).and_then(|t| t.sum_all()).expect("dot"));
        assert!((fd_x - an_x).abs() <= 1e-9 * an_x.abs().max(1.0), "{case:?}: x {fd_x} vs {an_x}");
        assert!((fd_w - an_w).abs() <= 1e-9 * an_w.abs().max(1.0), "{case:?}: w {fd_w} vs {an_w}");
    }
}

fn all_cases() -> Vec<Case> {
    let mut cases = Vec::new();
    for hw in [(7, 9), (11, 11)] {
        for k in [1, 3, 7] {
            for stride in [1, 2] {
                for padding in [0, 1, 3] {
                    cases.push(Case::new(hw, k, stride, padding, 1));
                }
            }
        }
    }
    cases.into_iter().filter(Case::fits).collect()
}

#[test]
fn forward_matches_candles_conv2d() {
    for case in all_cases() {
        for dtype in [DType::F32, DType::F64] {
            let (x, w, _) = case.data(1);
            let (x, w) = (x.to_tensor(dtype), w.to_tensor(dtype));
            let p = case.p;
            let theirs = x.conv2d(&w, p.padding, p.stride, p.dilation, 1).expect("candle");
            // Our CPU im2col + gemm sums in another order: equal up to rounding.
            let ours = conv2d(&x, &w, p).expect("conv2d");
            assert_eq!(ours.dims(), theirs.dims(), "{case:?}");
            assert!(ours.is_contiguous());
            let tol = if dtype == DType::F64 { 1e-14 } else { 1e-6 };
            let e = rel_err(&vals(&ours), &vals(&theirs));
            assert!(e < tol, "{case:?} {dtype:?}: {e:e}");
            for engine in [Engine::Im2col, Engine::Shifted, Engine::Winograd] {
                let y = conv2d_forward(&x, &w, p, engine).expect("forward");
                let e = rel_err(&vals(&y), &vals(&theirs));
                assert!(e < tol, "{case:?} {dtype:?} {engine:?}: {e:e}");
            }
            // The Candle engine is Candle's conv2d itself.
            let same = conv2d_forward(&x, &w, p, Engine::Candle).expect("candle engine");
            assert_eq!(vals(&same), vals(&theirs), "{case:?} {dtype:?}");
        }
    }
}

#[test]
fn gradients_match_definition_and_finite_differences_f64() {
    let cases = all_cases();
    assert_eq!(cases.len(), 36);
    for (i, case) in cases.iter().enumerate() {
        let (x, w, g) = case.data(10 * i as u64);
        let (y, gx, gw) = grads(Conv::Ours, (&x, &w, &g), case.p, DType::F64);
        let (y_ref, gx_ref, gw_ref) = conv_ref(&x, &w, Some(&g), case.geo());
        assert_eq!(y.dims(), y_ref.dims, "{case:?}");
        assert!(rel_err(&vals(&y), &y_ref.v) < 1e-12, "{case:?}: forward");
        assert_eq!(gx.dims(), x.dims, "{case:?}");
        assert_eq!(gw.dims(), w.dims, "{case:?}");
        let (ex, ew) = (rel_err(&vals(&gx), &gx_ref.v), rel_err(&vals(&gw), &gw_ref.v));
        assert!(ex < 1e-12 && ew < 1e-12, "{case:?}: x grad {ex:e}, w grad {ew:e}");
        check_directional(case, &x, &w, &g, &gx, &gw);
    }
}

#[test]
fn gradients_match_candles_builtin_backward() {
    // Candle's backward takes the output padding of both axes from the height, so it is only
    // compared on square inputs (where it is right).
    let cases: Vec<Case> = all_cases().into_iter().filter(|c| c.hw.0 == c.hw.1).collect();
    assert!(!cases.is_empty());
    f64_gradients_match(&cases, 7, |case, x, w, g| {
        let (_, gx, gw) = grads(Conv::Candle, (x, w, g), case.p, DType::F64);
        (vals(&gx), vals(&gw))
    });
}

/// Our f64 gradients of every case equal `reference`'s (x and w gradients, flat) to a relative
/// 1e-12; case `i` draws its data from seed `seed + i`.
fn f64_gradients_match(
    cases: &[Case],
    seed: u64,
    reference: impl Fn(&Case, &Arr4, &Arr4, &Arr4) -> (Vec<f64>, Vec<f64>),
) {
    for (i, case) in cases.iter().enumerate() {
        let (x, w, g) = case.data(seed + i as u64);
        let (_, gx, gw) = grads(Conv::Ours, (&x, &w, &g), case.p, DType::F64);
        let (want_x, want_w) = reference(case, &x, &w, &g);
        let (ex, ew) = (rel_err(&vals(&gx), &want_x), rel_err(&vals(&gw), &want_w));
        assert!(ex < 1e-12 && ew < 1e-12, "{case:?}: x grad {ex:e}, w grad {ew:e}");
    }
}

/// The gradients by the definition (`conv_ref`), for [`f64_gradients_match`].
fn by_definition(case: &Case, x: &Arr4, w: &Arr4, g: &Arr4) -> (Vec<f64>, Vec<f64>) {
    let (_, gx, gw) = conv_ref(x, w, Some(g), case.geo());
    (gx.v, gw.v)
}

#[test]
fn gradients_f32_match_candle_and_definition() {
    let cases = [
        Case::new((11, 11), 3, 1, 1, 1),
        Case::new((11, 11), 3, 2, 1, 1),
        Case::new((11, 11), 7, 2, 3, 1),
        Case::new((11, 11), 1, 2, 0, 1),
    ];
    for (i, case) in cases.iter().enumerate() {
        let (x, w, g) = case.data(100 + i as u64);
        let (_, gx, gw) = grads(Conv::Ours, (&x, &w, &g), case.p, DType::F32);
        assert_eq!(gx.dtype(), DType::F32);
        let (_, cgx, cgw) = grads(Conv::Candle, (&x, &w, &g), case.p, DType::F32);
        let (_, gx_ref, gw_ref) = conv_ref(&x, &w, Some(&g), case.geo());
        // f32 sums of at most a few hundred terms of size ~1: relative errors ~1e-7.
        for (name, ours, other) in [
            ("x vs candle", &gx, vals(&cgx)),
            ("w vs candle", &gw, vals(&cgw)),
            ("x vs definition", &gx, gx_ref.v.clone()),
            ("w vs definition", &gw, gw_ref.v.clone()),
        ] {
            let e = rel_err(&vals(ours), &other);
            assert!(e < 1e-5, "{case:?}: {name} {e:e}");
        }
    }
}

#[test]
fn dilated_gradients_match_definition() {
    let mut cases = Vec::new();
    for stride in [1, 2, 3] {
        for padding in [0, 2] {
            cases.push(Case::new((11, 9), 3, stride, padding, 2));
        }
    }
    cases.push(Case::new((11, 11), 2, 2, 1, 3));
    cases.retain(Case::fits);
    f64_gradients_match(&cases, 300, by_definition);
}

#[test]
fn stride_three_and_padding_wider_than_kernel() {
    // Phases that no tap reaches, and padding larger than the kernel's reach.
    let cases = [
        Case::new((10, 8), 2, 3, 0, 1),
        Case::new((9, 11), 3, 3, 1, 1),
        Case::new((7, 9), 1, 1, 3, 1),
        Case::new((7, 9), 3, 2, 3, 1),
    ];
    f64_gradients_match(&cases, 400, by_definition);
}

#[test]
fn every_engine_and_weight_gradient_algorithm_matches_the_definition() {
    // The Candle engine and the Unfold / Conv algorithms are what runs on CUDA: checked here on
    // the CPU against the definition, case by case.
    let mut cases = all_cases();
    cases.extend([Case::new((11, 9), 3, 2, 2, 2), Case::new((9, 11), 3, 3, 1, 1)]);
    for (i, case) in cases.iter().enumerate() {
        let (x, w, g) = case.data(500 + i as u64);
        let (_, gx_ref, gw_ref) = conv_ref(&x, &w, Some(&g), case.geo());
        let (x, w, g) = (x.to_tensor(DType::F64), w.to_tensor(DType::F64), g.to_tensor(DType::F64));
        for engine in [Engine::Im2col, Engine::Shifted, Engine::Winograd, Engine::Candle] {
            let gx = conv2d_input_grad(&g, &w, case.p, case.hw, engine).expect("input grad");
            assert_eq!(gx.dims(), x.dims(), "{case:?}");
            let e = rel_err(&vals(&gx), &gx_ref.v);
            assert!(e < 1e-12, "{case:?} {engine:?}: {e:e}");
        }
        let kernel = (case.k, case.k);
        for algo in [
            WeightGradAlgo::Im2col,
            WeightGradAlgo::Shifted,
            WeightGradAlgo::Winograd,
            WeightGradAlgo::Unfold,
            WeightGradAlgo::Conv,
        ] {
            let gw = conv2d_weight_grad(&x, &g, case.p, kernel, algo).expect("weight grad");
            assert_eq!(gw.dims(), w.dims(), "{case:?}");
            let e = rel_err(&vals(&gw), &gw_ref.v);
            assert!(e < 1e-12, "{case:?} {algo:?}: {e:e}");
        }
    }
}

#[test]
fn shifted_views_and_winograd_on_one_thread_and_on_more_threads_than_images() {
    // The shifted-view and Winograd paths split their work by thread count (images in parallel,
    // or gemm's own threads when there are fewer images than threads; the weight gradient's taps
    // and channel blocks in parallel): each way gives the definition's values. Stride 1 only
    // (else im2col); Winograd 3x3 with padding <= 2 only (else the Auto engine).
    let mut cases: Vec<Case> = all_cases().into_iter().filter(|c| c.p.stride == 1).collect();
    cases.push(Case::new((9, 11), 3, 1, 2, 2));
    // Winograd's images in groups of at least 256 tiles, each worker reusing its buffers: 132
    // tiles per image make groups of 2, the last one shorter (5 images); 289 tiles, one image
    // per group, with more images than threads.
    cases.push(Case { b: 5, ..Case::new((24, 22), 3, 1, 1, 1) });
    cases.push(Case { b: 4, ..Case::new((34, 34), 3, 1, 1, 1) });
    // More channels than the other cases, neither a power of two: the filter transform's rows
    // (c_out forward, c_in for the input gradient's flipped kernel) and their gathers.
    cases.push(Case { ci: 11, co: 19, ..Case::new((9, 10), 3, 1, 1, 1) });
    // A 1x1 kernel without padding, written by one product per image: images in parallel
    // (5 images, 3 threads) as well as one after the other.
    cases.push(Case { b: 5, ..Case::new((9, 11), 1, 1, 0, 1) });
    for threads in [1, 3] {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().expect("pool");
        pool.install(|| {
            for (i, case) in cases.iter().enumerate() {
                let (x, w, g) = case.data(700 + i as u64);
                let (y_ref, gx_ref, gw_ref) = conv_ref(&x, &w, Some(&g), case.geo());
                let (x, w, g) =
                    (x.to_tensor(DType::F64), w.to_tensor(DType::F64), g.to_tensor(DType::F64));
                let kernel = (case.k, case.k);
                for algo in [WeightGradAlgo::Shifted, WeightGradAlgo::Winograd] {
                    let gw = conv2d_weight_grad(&x, &g, case.p, kernel, algo).expect("gw");
                    let e = rel_err(&vals(&gw), &gw_ref.v);
                    assert!(e < 1e-12, "{threads} threads, {algo:?}, {case:?}: gw {e:e}");
                }
                for engine in [Engine::Shifted, Engine::Winograd] {
                    let y = conv2d_forward(&x, &w, case.p, engine).expect("forward");
                    let gx = conv2d_input_grad(&g, &w, case.p, case.hw, engine).expect("gx");
                    for (name, ours, want) in [("y", &y, &y_ref.v), ("gx", &gx, &gx_ref.v)] {
                        let e = rel_err(&vals(ours), want);
                        assert!(e < 1e-12, "{threads} threads, {engine:?}, {case:?}: {name} {e:e}");
                    }
                }
            }
        });
    }
}

#[test]
fn chained_layers_match_candle() {
    // stem-like conv on a plain input, relu, then a strided conv: the graph's gradients for the
    // two weights equal Candle's, and the input gets none.
    let x = det([2, 3, 11, 11], 900).to_tensor(DType::F64);
    let w1 = Var::from_tensor(&det([4, 3, 3, 3], 901).to_tensor(DType::F64)).expect("var");
    let w2 = Var::from_tensor(&det([5, 4, 3, 3], 902).to_tensor(DType::F64)).expect("var");
    let (p1, p2) = (
        ConvParams { padding: 1, ..Default::default() },
        ConvParams { stride: 2, padding: 1, dilation: 1 },
    );
    let ours = conv2d(&x, &w1, p1)
        .and_then(|h| Ok(h.relu()?))
        .and_then(|h| conv2d(&h, &w2, p2))
        .expect("ours");
    let theirs = x
        .conv2d(&w1, 1, 1, 1, 1)
        .and_then(|h| h.relu())
        .and_then(|h| h.conv2d(&w2, 1, 2, 1, 1))
        .expect("candle");
    assert!(rel_err(&vals(&ours), &vals(&theirs)) < 1e-14);
    let r = det([2, 5, 6, 6], 903).to_tensor(DType::F64);
    let g_ours = ours.mul(&r).and_then(|t| t.sum_all()).and_then(|l| l.backward()).expect("bwd");
    let g_theirs =
        theirs.mul(&r).and_then(|t| t.sum_all()).and_then(|l| l.backward()).expect("bwd");
    assert!(g_ours.get(&x).is_none());
    for w in [&w1, &w2] {
        let a = g_ours.get(w).expect("ours");
        let b = g_theirs.get(w).expect("candle");
        assert!(rel_err(&vals(a), &vals(b)) < 1e-12);
    }
}

#[test]
fn no_graph_without_variables_and_strided_inputs_work() {
    let x = det([2, 9, 3, 11], 1000).to_tensor(DType::F32);
    // [2, 3, 9, 11] with non-contiguous strides.
    let xt = x.transpose(1, 2).expect("transpose");
    assert!(!xt.is_contiguous());
    let w = det([4, 3, 3, 3], 1001).to_tensor(DType::F32);
    let p = ConvParams { stride: 2, padding: 1, dilation: 1 };
    let y = conv2d(&xt, &w, p).expect("conv2d");
    assert!(!y.track_op());
    let theirs = xt.conv2d(&w, 1, 2, 1, 1).expect("candle");
    assert!(rel_err(&vals(&y), &vals(&theirs)) < 1e-6);
    // And with a gradient flowing to the strided input.
    let xv = Var::from_tensor(&x.to_dtype(DType::F64).expect("f64")).expect("var");
    let xs = xv.transpose(1, 2).expect("transpose");
    let wd = w.to_dtype(DType::F64).expect("f64");
    let g = det([2, 4, 5, 6], 1002);
    let y = conv2d(&xs, &wd, p).expect("conv2d");
    let grads =
        y.mul(&g.to_tensor(DType::F64)).and_then(|t| t.sum_all()).and_then(|l| l.backward());
    let gx = grads.expect("backward").get(xv.as_tensor()).expect("grad").clone();
    let xs_arr = Arr4::from_tensor(&xs);
    let w_arr = Arr4::from_tensor(&wd);
    let (_, gx_ref, _) = conv_ref(&xs_arr, &w_arr, Some(&g), Geo { s: 2, p: 1, d: 1 });
    let gx = gx.transpose(1, 2).expect("back to [b, c, h, w]");
    assert!(rel_err(&vals(&gx), &gx_ref.v) < 1e-12);
}

#[test]
fn grouped_matches_per_group_definition_and_candle() {
    // (groups, c_in, c_out, size, kernel, stride, padding)
    let cases = [
        (2, 4, 6, (11, 11), 3, 1, 1),
        (3, 6, 3, (7, 9), 3, 2, 1),
        (3, 6, 9, (11, 11), 1, 2, 0),
        (4, 8, 4, (9, 9), 3, 1, 1),
    ];
    for (i, &(groups, ci, co, hw, k, stride, padding)) in cases.iter().enumerate() {
        let p = ConvParams { stride, padding, dilation: 1 };
        let geo = Geo { s: stride, p: padding, d: 1 };
        let seed = 700 + 10 * i as u64;
        let x = det([2, ci, hw.0, hw.1], seed).to_tensor(DType::F64);
        let w = det([co, ci / groups, k, k], seed + 1).to_tensor(DType::F64);
        let (oh, ow) =
            (p.output_size(hw.0, k).expect("fits"), p.output_size(hw.1, k).expect("fits"));
        let g = det([2, co, oh, ow], seed + 2).to_tensor(DType::F64);
        let xv = Var::from_tensor(&x).expect("var");
        let wv = Var::from_tensor(&w).expect("var");
        let y = conv2d_grouped(xv.as_tensor(), wv.as_tensor(), p, groups).expect("ours");
        let theirs = x.conv2d(&w, padding, stride, 1, groups).expect("candle");
        assert!(rel_err(&vals(&y), &vals(&theirs)) < 1e-14, "case {i}");
        let grads = y.mul(&g).and_then(|t| t.sum_all()).and_then(|l| l.backward()).expect("bwd");
        let gx = grads.get(xv.as_tensor()).expect("x grad");
        let gw = grads.get(wv.as_tensor()).expect("w grad");
        // The definition, group by group.
        let (cig, cog) = (ci / groups, co / groups);
        let (mut gx_ref, mut gw_ref) = (Vec::new(), Vec::new());
        for grp in 0..groups {
            let part = |t: &Tensor, dim: usize, n: usize| {
                Arr4::from_tensor(&t.narrow(dim, grp * n, n).expect("narrow"))
            };
            let (_, gxg, gwg) =
                conv_ref(&part(&x, 1, cig), &part(&w, 0, cog), Some(&part(&g, 1, cog)), geo);
            gx_ref.push(gxg.to_tensor(DType::F64));
            gw_ref.push(gwg.to_tensor(DType::F64));
        }
        let gx_ref = Tensor::cat(&gx_ref, 1).expect("cat");
        let gw_ref = Tensor::cat(&gw_ref, 0).expect("cat");
        assert!(rel_err(&vals(gx), &vals(&gx_ref)) < 1e-12, "case {i}: x grad");
        assert!(rel_err(&vals(gw), &vals(&gw_ref)) < 1e-12, "case {i}: w grad");
        if hw.0 == hw.1 {
            let xv = Var::from_tensor(&x).expect("var");
            let wv = Var::from_tensor(&w).expect("var");
            let y = xv.conv2d(wv.as_tensor(), padding, stride, 1, groups).expect("candle");
            let cg = y.mul(&g).and_then(|t| t.sum_all()).and_then(|l| l.backward()).expect("bwd");
            let cgx = cg.get(xv.as_tensor()).expect("x grad");
            let cgw = cg.get(wv.as_tensor()).expect("w grad");
            assert!(rel_err(&vals(gx), &vals(cgx)) < 1e-12, "case {i}: x grad vs candle");
            assert!(rel_err(&vals(gw), &vals(cgw)) < 1e-12, "case {i}: w grad vs candle");
        }
    }
}

#[test]
fn bad_arguments_are_errors_naming_the_op_and_shapes() {
    let dev = Device::Cpu;
    let x = Tensor::zeros((2, 3, 7, 7), DType::F32, &dev).expect("x");
    let p = ConvParams::default();
    let expect_invalid = |r: aue_kernels::Result<Tensor>, needle: &str| match r {
        Err(e @ KernelError::InvalidArgs { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains("conv2d") && msg.contains(needle), "{msg}");
            assert!(msg.contains("[2, 3, 7, 7]"), "{msg}");
        }
        other => panic!("expected InvalidArgs, got {other:?}"),
    };
    let w = Tensor::zeros((4, 2, 3, 3), DType::F32, &dev).expect("w");
    expect_invalid(conv2d(&x, &w, p), "channels");
    let w = Tensor::zeros((4, 3, 9, 9), DType::F32, &dev).expect("w");
    expect_invalid(conv2d(&x, &w, p), "fit");
    let w = Tensor::zeros((4, 3, 3), DType::F32, &dev).expect("w");
    expect_invalid(conv2d(&x, &w, p), "rank 4");
    let w = Tensor::zeros((4, 3, 3, 3), DType::F64, &dev).expect("w");
    expect_invalid(conv2d(&x, &w, p), "F64");
    let w = Tensor::zeros((4, 3, 3, 3), DType::F32, &dev).expect("w");
    expect_invalid(conv2d(&x, &w, ConvParams { stride: 0, ..p }), "stride");
    let w = Tensor::zeros((4, 1, 3, 3), DType::F32, &dev).expect("w");
    expect_invalid(conv2d_grouped(&x, &w, p, 3), "groups");
    let w = Tensor::zeros((4, 3, 3, 3), DType::F32, &dev).expect("w");
    // Errors convert into Candle's, for model code returning candle_core::Result.
    let e: candle_core::Error = conv2d(&x, &w, ConvParams { dilation: 0, ..p }).unwrap_err().into();
    assert!(e.to_string().contains("conv2d"));
}

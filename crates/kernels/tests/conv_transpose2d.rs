//! `aue_kernels::conv_transpose2d`: forward equal to Candle's and to the direct-loop definition,
//! gradients equal to the definition, to central finite differences and to Candle's backward.

mod common;

use aue_kernels::{ConvTransposeParams, KernelError, conv_transpose2d};
use candle_core::{DType, Device, Tensor, Var};
use common::{Arr4, Geo, conv_transpose_ref, det, rel_err, vals};

#[derive(Debug, Clone, Copy)]
struct Case {
    hw: (usize, usize),
    k: usize,
    p: ConvTransposeParams,
}

const B: usize = 2;
const CI: usize = 3;
const CO: usize = 4;

impl Case {
    fn new(hw: (usize, usize), k: usize, s: usize, p: usize, op: usize, d: usize) -> Self {
        Self {
            hw,
            k,
            p: ConvTransposeParams { stride: s, padding: p, output_padding: op, dilation: d },
        }
    }

    fn geo(&self) -> Geo {
        Geo { s: self.p.stride, p: self.p.padding, d: self.p.dilation }
    }

    fn out_dims(&self) -> [usize; 4] {
        let oh = self.p.output_size(self.hw.0, self.k).expect("valid");
        let ow = self.p.output_size(self.hw.1, self.k).expect("valid");
        [B, CO, oh, ow]
    }

    fn data(&self, seed: u64) -> (Arr4, Arr4, Arr4) {
        let x = det([B, CI, self.hw.0, self.hw.1], seed);
        let w = det([CI, CO, self.k, self.k], seed + 1);
        let g = det(self.out_dims(), seed + 2);
        (x, w, g)
    }

    fn candle(&self, x: &Tensor, w: &Tensor) -> Tensor {
        let p = self.p;
        x.conv_transpose2d(w, p.padding, p.output_padding, p.stride, p.dilation).expect("candle")
    }
}

fn cases() -> Vec<Case> {
    vec![
        // The AU decoder's upsampling layer.
        Case::new((7, 7), 4, 2, 1, 0, 1),
        Case::new((7, 9), 4, 2, 1, 0, 1),
        Case::new((5, 7), 3, 2, 1, 1, 1),
        Case::new((7, 9), 3, 1, 1, 0, 1),
        Case::new((5, 6), 5, 3, 2, 2, 1),
        Case::new((6, 5), 1, 2, 0, 1, 1),
        Case::new((5, 7), 3, 1, 0, 0, 2),
        Case::new((5, 5), 3, 2, 2, 1, 2),
        // output_padding >= stride (allowed because dilation > stride).
        Case::new((5, 6), 3, 1, 1, 2, 3),
    ]
}

fn our_grads(case: &Case, x: &Arr4, w: &Arr4, g: &Arr4) -> (Tensor, Tensor, Tensor) {
    let xv = Var::from_tensor(&x.to_tensor(DType::F64)).expect("var");
    let wv = Var::from_tensor(&w.to_tensor(DType::F64)).expect("var");
    let y = conv_transpose2d(xv.as_tensor(), wv.as_tensor(), case.p).expect("ours");
    let grads =
        y.mul(&g.to_tensor(DType::F64)).and_then(|t| t.sum_all()).and_then(|l| l.backward());
    let grads = grads.expect("backward");
    let gx = grads.get(xv.as_tensor()).expect("x grad").clone();
    let gw = grads.get(wv.as_tensor()).expect("w grad").clone();
    (y, gx, gw)
}

#[test]
fn forward_matches_candle_and_definition() {
    for (i, case) in cases().iter().enumerate() {
        let (x, w, _) = case.data(20 * i as u64);
        for dtype in [DType::F64, DType::F32] {
            let (xt, wt) = (x.to_tensor(dtype), w.to_tensor(dtype));
            let ours = conv_transpose2d(&xt, &wt, case.p).expect("ours");
            assert!(!ours.track_op());
            let theirs = case.candle(&xt, &wt);
            assert_eq!(ours.dims(), theirs.dims(), "{case:?}");
            // Different summation order: equal up to rounding.
            let tol = if dtype == DType::F64 { 1e-13 } else { 1e-6 };
            let e = rel_err(&vals(&ours), &vals(&theirs));
            assert!(e < tol, "{case:?} {dtype:?}: {e:e}");
        }
        let (y_ref, _, _) = conv_transpose_ref(&x, &w, None, case.geo(), case.p.output_padding);
        let ours = conv_transpose2d(&x.to_tensor(DType::F64), &w.to_tensor(DType::F64), case.p);
        assert!(rel_err(&vals(&ours.expect("ours")), &y_ref.v) < 1e-13, "{case:?}");
    }
}

#[test]
fn gradients_match_definition_and_finite_differences() {
    for (i, case) in cases().iter().enumerate() {
        let (x, w, g) = case.data(50 + 20 * i as u64);
        let (y, gx, gw) = our_grads(case, &x, &w, &g);
        assert_eq!(y.dims(), case.out_dims(), "{case:?}");
        let (y_ref, gx_ref, gw_ref) =
            conv_transpose_ref(&x, &w, Some(&g), case.geo(), case.p.output_padding);
        assert!(rel_err(&vals(&y), &y_ref.v) < 1e-13, "{case:?}");
        assert_eq!(gx.dims(), x.dims, "{case:?}");
        assert_eq!(gw.dims(), w.dims, "{case:?}");
        let (ex, ew) = (rel_err(&vals(&gx), &gx_ref.v), rel_err(&vals(&gw), &gw_ref.v));
        assert!(ex < 1e-12 && ew < 1e-12, "{case:?}: x grad {ex:e}, w grad {ew:e}");

        // Central differences along random directions (the loss is linear in each argument).
        let (xt, wt, gt) =
            (x.to_tensor(DType::F64), w.to_tensor(DType::F64), g.to_tensor(DType::F64));
        let loss = |x: &Tensor, w: &Tensor| -> f64 {
            let y = conv_transpose2d(x, w, case.p).expect("ours");
            y.mul(&gt).and_then(|t| t.sum_all()).and_then(|t| t.to_scalar::<f64>()).expect("loss")
        };
        let dot = |a: &Tensor, b: &Tensor| -> f64 {
            a.mul(b).and_then(|t| t.sum_all()).and_then(|t| t.to_scalar::<f64>()).expect("dot")
        };
        let vx = det(x.dims, 7).to_tensor(DType::F64);
        let vw = det(w.dims, 8).to_tensor(DType::F64);
        let shift = |t: &Tensor, v: &Tensor, a: f64| (t + (v * a).expect("scale")).expect("shift");
        let fd_x = (loss(&shift(&xt, &vx, 0.5), &wt) - loss(&shift(&xt, &vx, -0.5), &wt)) / 1.0;
        let fd_w = (loss(&xt, &shift(&wt, &vw, 0.5)) - loss(&xt, &shift(&wt, &vw, -0.5))) / 1.0;
        let (an_x, an_w) = (dot(&gx, &vx), dot(&gw, &vw));
        assert!((fd_x - an_x).abs() <= 1e-9 * an_x.abs().max(1.0), "{case:?}: {fd_x} vs {an_x}");
        assert!((fd_w - an_w).abs() <= 1e-9 * an_w.abs().max(1.0), "{case:?}: {fd_w} vs {an_w}");
    }
}

#[test]
fn gradients_match_candles_builtin_backward() {
    // Candle's conv-transpose backward is right for these (output_padding < stride).
    for (i, case) in cases().iter().take(6).enumerate() {
        let (x, w, g) = case.data(300 + i as u64);
        let (_, gx, gw) = our_grads(case, &x, &w, &g);
        let xv = Var::from_tensor(&x.to_tensor(DType::F64)).expect("var");
        let wv = Var::from_tensor(&w.to_tensor(DType::F64)).expect("var");
        let y = case.candle(xv.as_tensor(), wv.as_tensor());
        let grads =
            y.mul(&g.to_tensor(DType::F64)).and_then(|t| t.sum_all()).and_then(|l| l.backward());
        let grads = grads.expect("candle backward");
        let cgx = grads.get(xv.as_tensor()).expect("x grad");
        let cgw = grads.get(wv.as_tensor()).expect("w grad");
        let (ex, ew) = (rel_err(&vals(&gx), &vals(cgx)), rel_err(&vals(&gw), &vals(cgw)));
        assert!(ex < 1e-12 && ew < 1e-12, "{case:?}: x grad {ex:e}, w grad {ew:e}");
    }
}

#[test]
fn only_the_weight_gets_a_gradient_when_the_input_is_constant() {
    let case = Case::new((7, 7), 4, 2, 1, 0, 1);
    let (x, w, g) = case.data(77);
    let x = x.to_tensor(DType::F32);
    let wv = Var::from_tensor(&w.to_tensor(DType::F32)).expect("var");
    let y = conv_transpose2d(&x, wv.as_tensor(), case.p).expect("ours");
    let grads =
        y.mul(&g.to_tensor(DType::F32)).and_then(|t| t.sum_all()).and_then(|l| l.backward());
    let grads = grads.expect("backward");
    assert!(grads.get(&x).is_none());
    let (_, _, gw_ref) = conv_transpose_ref(&Arr4::from_tensor(&x), &w, Some(&g), case.geo(), 0);
    let gw = grads.get(wv.as_tensor()).expect("w grad");
    assert!(rel_err(&vals(gw), &gw_ref.v) < 1e-5);
}

#[test]
fn bad_arguments_are_errors() {
    let dev = Device::Cpu;
    let x = Tensor::zeros((2, 3, 7, 7), DType::F32, &dev).expect("x");
    let w = Tensor::zeros((4, 5, 4, 4), DType::F32, &dev).expect("w");
    let p = ConvTransposeParams { stride: 2, padding: 1, output_padding: 0, dilation: 1 };
    match conv_transpose2d(&x, &w, p) {
        Err(e @ KernelError::InvalidArgs { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains("conv_transpose2d") && msg.contains("channels"), "{msg}");
        }
        other => panic!("expected InvalidArgs, got {other:?}"),
    }
    let w = Tensor::zeros((3, 5, 4, 4), DType::F32, &dev).expect("w");
    let bad = ConvTransposeParams { output_padding: 2, ..p };
    assert!(matches!(conv_transpose2d(&x, &w, bad), Err(KernelError::InvalidArgs { .. })));
}

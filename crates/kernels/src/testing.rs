//! Helpers of the unit tests that compare a kernel with the Candle ops it replaces.

use candle_core::{DType, Device, Tensor, Var};

/// A normal random variable (mean 0, std 1) of `dtype` on the CPU.
pub(crate) fn randn_var(dims: &[usize], dtype: DType) -> Var {
    let t = Tensor::randn(0f32, 1., dims, &Device::Cpu).unwrap();
    Var::from_tensor(&t.to_dtype(dtype).unwrap()).unwrap()
}

/// `a` and `b` hold the same values (f32 and f64 widen exactly, so this is bit for bit but for
/// the sign of zeros).
pub(crate) fn assert_same_values(a: &Tensor, b: &Tensor, what: &str) {
    assert_eq!(a.dims(), b.dims(), "{what}: shapes");
    assert_eq!(a.dtype(), b.dtype(), "{what}: dtypes");
    let flat = |t: &Tensor| {
        t.to_dtype(DType::F64).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap()
    };
    let (va, vb) = (flat(a), flat(b));
    let differ = va.iter().zip(&vb).filter(|(x, y)| x != y).count();
    assert_eq!(differ, 0, "{what}: {differ} of {} values differ", va.len());
}

/// The gradients of `sum(mine * coef)` and of `sum(theirs * coef)` with respect to `vars`.
pub(crate) fn candle_grads(
    mine: &Tensor,
    theirs: &Tensor,
    coef: &Tensor,
    vars: &[&Var],
) -> (Vec<Tensor>, Vec<Tensor>) {
    let grads = |y: &Tensor| {
        let store = (y * coef).unwrap().sum_all().unwrap().backward().unwrap();
        vars.iter().map(|v| store.get(v.as_tensor()).unwrap().clone()).collect::<Vec<_>>()
    };
    (grads(mine), grads(theirs))
}

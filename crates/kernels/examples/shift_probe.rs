use aue_kernels::grad::{conv2d_forward, conv2d_input_grad, conv2d_weight_grad};
use aue_kernels::{ConvParams, Engine, WeightGradAlgo};
use candle_core::{Device, Tensor};
use std::time::Instant;
fn med(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}
fn main() -> candle_core::Result<()> {
    unsafe {
        libc::mallopt(libc::M_MMAP_MAX, 0);
        libc::mallopt(libc::M_TRIM_THRESHOLD, libc::c_int::MAX);
    }
    let dev = Device::Cpu;
    let b: usize = std::env::var("B").ok().and_then(|s| s.parse().ok()).unwrap_or(8);
    let only = std::env::var("ONLY").unwrap_or_default();
    let engines: Vec<usize> = std::env::var("ENG")
        .ok()
        .map(|s| s.split(',').map(|x| x.parse().unwrap()).collect())
        .unwrap_or(vec![0, 1, 2]);
    for &(name, ci, co, hw, k, pad, st) in &[
        ("conv1", 3, 64, 224, 7, 3, 2),
        ("l1", 64, 64, 56, 3, 1, 1),
        ("l2", 128, 128, 28, 3, 1, 1),
        ("l3", 256, 256, 14, 3, 1, 1),
        ("l4", 512, 512, 7, 3, 1, 1),
        ("1x1 56", 64, 256, 56, 1, 0, 1),
        ("1x1 14", 1024, 256, 14, 1, 0, 1),
    ] {
        if !name.contains(only.as_str()) {
            continue;
        }
        let p = ConvParams { stride: st, padding: pad, dilation: 1 };
        let oh = (hw + 2 * pad - k) / st + 1;
        let x = Tensor::randn(0f32, 1., (b, ci, hw, hw), &dev)?;
        let w = Tensor::randn(0f32, 0.1, (co, ci, k, k), &dev)?;
        let g = Tensor::randn(0f32, 1., (b, co, oh, oh), &dev)?;
        let mut t = vec![vec![]; 9];
        for r in 0..9 {
            for (j, (e, a)) in [
                (Engine::Im2col, WeightGradAlgo::Im2col),
                (Engine::Shifted, WeightGradAlgo::Shifted),
                (Engine::Winograd, WeightGradAlgo::Auto),
            ]
            .into_iter()
            .enumerate()
            {
                if !engines.contains(&j) {
                    continue;
                }
                let s = Instant::now();
                let y = conv2d_forward(&x, &w, p, e)?;
                let t0 = s.elapsed().as_secs_f64();
                drop(y);
                let s = Instant::now();
                let y = conv2d_input_grad(&g, &w, p, (hw, hw), e)?;
                let t1 = s.elapsed().as_secs_f64();
                drop(y);
                let s = Instant::now();
                let y = conv2d_weight_grad(&x, &g, p, (k, k), a)?;
                let t2 = s.elapsed().as_secs_f64();
                drop(y);
                if r >= 2 {
                    t[j * 3].push(t0);
                    t[j * 3 + 1].push(t1);
                    t[j * 3 + 2].push(t2);
                }
            }
        }
        let m: Vec<f64> =
            t.into_iter().map(|v| if v.is_empty() { 0.0 } else { med(v) * 1e3 }).collect();
        println!(
            "{name:8} im2col fwd {:6.2} igrad {:6.2} wgrad {:6.2} | shifted fwd {:6.2} igrad {:6.2} wgrad {:6.2} | winograd fwd {:6.2} igrad {:6.2}",
            m[0], m[1], m[2], m[3], m[4], m[5], m[6], m[7]
        );
    }
    Ok(())
}

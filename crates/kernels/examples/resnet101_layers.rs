//! Per-layer times of ResNet-101's distinct convolution shapes and the EM branch's convolution
//! (batch 4 by default), forward / input gradient / weight gradient, medians of 7 in ms, with
//! each shape's count in the network, as TSV (name, count, forward, input gradient, weight
//! gradient). `tools/conv_layers_torch.py` times the same list with PyTorch.
//!
//! `RAYON_NUM_THREADS=1 cargo run --release -p aue-kernels --example resnet101_layers [batch]`;
//! `ENGINE=im2col|shifted|winograd` picks an engine instead of `Auto`, `ONLY=text` keeps the
//! layers whose name contains `text`.
use std::time::Instant;

use aue_kernels::grad::{conv2d_forward, conv2d_input_grad, conv2d_weight_grad};
use aue_kernels::{ConvParams, Engine, WeightGradAlgo};
use candle_core::{Device, Tensor};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// One convolution shape: name, input channels, output channels, input side, kernel side,
/// stride, padding, and how many the network has.
struct Layer(&'static str, usize, usize, usize, usize, usize, usize, usize);

const LAYERS: &[Layer] = &[
    Layer("stem", 3, 64, 224, 7, 2, 3, 1),
    Layer("l1 1x1 64-64", 64, 64, 56, 1, 1, 0, 1),
    Layer("l1 1x1 256-64", 256, 64, 56, 1, 1, 0, 2),
    Layer("l1 3x3 64", 64, 64, 56, 3, 1, 1, 3),
    Layer("l1 1x1 64-256", 64, 256, 56, 1, 1, 0, 4),
    Layer("l2 1x1 256-128", 256, 128, 56, 1, 1, 0, 1),
    Layer("l2 3x3/2 128", 128, 128, 56, 3, 2, 1, 1),
    Layer("l2 1x1 128-512", 128, 512, 28, 1, 1, 0, 4),
    Layer("l2 ds 256-512/2", 256, 512, 56, 1, 2, 0, 1),
    Layer("l2 1x1 512-128", 512, 128, 28, 1, 1, 0, 3),
    Layer("l2 3x3 128", 128, 128, 28, 3, 1, 1, 3),
    Layer("l3 1x1 512-256", 512, 256, 28, 1, 1, 0, 1),
    Layer("l3 3x3/2 256", 256, 256, 28, 3, 2, 1, 1),
    Layer("l3 1x1 256-1024", 256, 1024, 14, 1, 1, 0, 23),
    Layer("l3 ds 512-1024/2", 512, 1024, 28, 1, 2, 0, 1),
    Layer("l3 1x1 1024-256", 1024, 256, 14, 1, 1, 0, 22),
    Layer("l3 3x3 256", 256, 256, 14, 3, 1, 1, 22),
    Layer("l4 1x1 1024-512", 1024, 512, 14, 1, 1, 0, 1),
    Layer("l4 3x3/2 512", 512, 512, 14, 3, 2, 1, 1),
    Layer("l4 1x1 512-2048", 512, 2048, 7, 1, 1, 0, 3),
    Layer("l4 ds 1024-2048/2", 1024, 2048, 14, 1, 2, 0, 1),
    Layer("l4 1x1 2048-512", 2048, 512, 7, 1, 1, 0, 2),
    Layer("l4 3x3 512", 512, 512, 7, 3, 1, 1, 2),
    Layer("em 3x3 3840-1024", 3840, 1024, 7, 3, 1, 1, 1),
];

aue_cli::global_allocator!();

fn main() -> candle_core::Result<()> {
    aue_cli::alloc::keep_freed_memory();
    let b: usize = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(4);
    let dev = Device::Cpu;
    let (engine, algo) = match std::env::var("ENGINE").as_deref() {
        Ok("im2col") => (Engine::Im2col, WeightGradAlgo::Im2col),
        Ok("shifted") => (Engine::Shifted, WeightGradAlgo::Shifted),
        Ok("winograd") => (Engine::Winograd, WeightGradAlgo::Winograd),
        _ => (Engine::Auto, WeightGradAlgo::Auto),
    };
    let only = std::env::var("ONLY").unwrap_or_default();
    for &Layer(name, ci, co, side, k, stride, pad, count) in LAYERS {
        if !name.contains(only.as_str()) {
            continue;
        }
        let p = ConvParams { stride, padding: pad, dilation: 1 };
        let os = (side + 2 * pad - k) / stride + 1;
        let x = Tensor::randn(0f32, 1., (b, ci, side, side), &dev)?;
        let w = Tensor::randn(0f32, 0.1, (co, ci, k, k), &dev)?;
        let g = Tensor::randn(0f32, 1., (b, co, os, os), &dev)?;
        let mut t = [Vec::new(), Vec::new(), Vec::new()];
        for rep in 0..9 {
            let s = Instant::now();
            drop(conv2d_forward(&x, &w, p, engine)?);
            let t0 = s.elapsed().as_secs_f64();
            let s = Instant::now();
            drop(conv2d_input_grad(&g, &w, p, (side, side), engine)?);
            let t1 = s.elapsed().as_secs_f64();
            let s = Instant::now();
            drop(conv2d_weight_grad(&x, &g, p, (k, k), algo)?);
            let t2 = s.elapsed().as_secs_f64();
            if rep >= 2 {
                t[0].push(t0);
                t[1].push(t1);
                t[2].push(t2);
            }
        }
        let [f, i, w] = t;
        println!(
            "{name}\t{count}\t{:.2}\t{:.2}\t{:.2}",
            median(f) * 1e3,
            median(i) * 1e3,
            median(w) * 1e3
        );
    }
    Ok(())
}

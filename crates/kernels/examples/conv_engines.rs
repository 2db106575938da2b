//! The CPU convolution methods side by side on ResNet's stride-1 layer shapes (f32): forward,
//! input gradient and weight gradient by im2col, shifted views and Winograd, and what
//! `Engine::Auto` picks, interleaved, medians in ms, as a Markdown table.
//!
//! `RAYON_NUM_THREADS=1 cargo run --release -p aue-kernels --example conv_engines [batch]`
//! (`AUE_CONV=direct` makes Auto skip Winograd).

use std::time::Instant;

use aue_kernels::grad::{conv2d_forward, conv2d_input_grad, conv2d_weight_grad};
use aue_kernels::{ConvParams, Engine, WeightGradAlgo};
use candle_core::{Device, Tensor};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

aue_cli::global_allocator!();

fn main() -> candle_core::Result<()> {
    aue_cli::alloc::keep_freed_memory();
    let b: usize = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(8);
    let dev = Device::Cpu;
    // (name, c_in, c_out, side, kernel, padding)
    let layers = [
        ("3x3 64 @ 56", 64, 64, 56, 3, 1),
        ("3x3 128 @ 28", 128, 128, 28, 3, 1),
        ("3x3 256 @ 14", 256, 256, 14, 3, 1),
        ("3x3 512 @ 7", 512, 512, 7, 3, 1),
        ("1x1 64 -> 256 @ 56", 64, 256, 56, 1, 0),
        ("1x1 1024 -> 256 @ 14", 1024, 256, 14, 1, 0),
        // resnet18's EM branch: the four stage maps, pooled to 7 x 7 and stacked, to 1024.
        ("3x3 960 -> 1024 @ 7", 960, 1024, 7, 3, 1),
    ];
    let methods = [
        ("im2col", Engine::Im2col, WeightGradAlgo::Im2col),
        ("shifted", Engine::Shifted, WeightGradAlgo::Shifted),
        ("Winograd", Engine::Winograd, WeightGradAlgo::Winograd),
        ("Auto", Engine::Auto, WeightGradAlgo::Auto),
    ];
    println!(
        "# conv_engines: f32, batch {b}, {} threads, median of 7 after 2, ms (forward / input \
         gradient / weight gradient)\n",
        rayon::current_num_threads()
    );
    let head: Vec<&str> = methods.iter().map(|m| m.0).collect();
    println!("| layer | {} |", head.join(" | "));
    println!("|---|{}", "---:|".repeat(methods.len()));
    for (name, ci, co, side, k, pad) in layers {
        let p = ConvParams { stride: 1, padding: pad, dilation: 1 };
        let x = Tensor::randn(0f32, 1., (b, ci, side, side), &dev)?;
        let w = Tensor::randn(0f32, 0.1, (co, ci, k, k), &dev)?;
        let g = Tensor::randn(0f32, 1., (b, co, side, side), &dev)?;
        let mut t = vec![[Vec::new(), Vec::new(), Vec::new()]; methods.len()];
        for rep in 0..9 {
            for (i, &(_, engine, algo)) in methods.iter().enumerate() {
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
                    t[i][0].push(t0);
                    t[i][1].push(t1);
                    t[i][2].push(t2);
                }
            }
        }
        let cells: Vec<String> = t
            .into_iter()
            .map(|[f, i, w]| {
                format!("{:.1} / {:.1} / {:.1}", median(f) * 1e3, median(i) * 1e3, median(w) * 1e3)
            })
            .collect();
        println!("| {name} | {} |", cells.join(" | "));
    }
    Ok(())
}

//! `Crop_Net_2`'s forward products (34 weights `[256, 36864]` times a batch's crop features
//! `[b, 36864]`, `batched_matmul_nt`) issued in calls of `g` products, as the crop nets do (all
//! 34 at once in training, chunks in eval): median ms per 34 products over 7 runs after 2.
//! Shows whether the threads share out calls whose batch is not a multiple of their number.
//!
//! `RAYON_NUM_THREADS=2 cargo run --release -p aue-kernels --example crop_products [b] [g...]`
//! (defaults: b = 8, g = 34 4 3 1).

use std::time::Instant;

use candle_core::{Device, Tensor};

aue_cli::global_allocator!();

const CROPS: usize = 34;
const ROWS: usize = 256;
const K: usize = 36864;

fn main() -> anyhow::Result<()> {
    let args: Vec<usize> = std::env::args().skip(1).map(|s| s.parse()).collect::<Result<_, _>>()?;
    let b = args.first().copied().unwrap_or(8);
    let groups = if args.len() > 1 { args[1..].to_vec() } else { vec![CROPS, 4, 3, 1] };
    if let Some(g) = groups.iter().find(|g| !(1..=CROPS).contains(*g)) {
        anyhow::bail!("products per call must be 1 to {CROPS}, got {g}");
    }
    let dev = Device::Cpu;
    let weights = Tensor::randn(0f32, 1., (CROPS, ROWS, K), &dev)?;
    let features = Tensor::randn(0f32, 1., (CROPS, b, K), &dev)?;
    println!(
        "# crop_products: f32, {CROPS} x [{ROWS}, {K}] x [{b}, {K}]^T, {} threads, median of 7 \
         after 2, ms per {CROPS} products\n",
        rayon::current_num_threads()
    );
    println!("| products per call | calls | ms |\n|---:|---:|---:|");
    for g in groups {
        let mut times = Vec::new();
        for rep in 0..9 {
            let start = Instant::now();
            for k0 in (0..CROPS).step_by(g) {
                let n = g.min(CROPS - k0);
                let y = aue_kernels::batched_matmul_nt(
                    &weights.narrow(0, k0, n)?,
                    &features.narrow(0, k0, n)?,
                )?;
                drop(y);
            }
            if rep >= 2 {
                times.push(start.elapsed().as_secs_f64() * 1e3);
            }
        }
        times.sort_by(f64::total_cmp);
        println!("| {g} | {} | {:.1} |", CROPS.div_ceil(g), times[times.len() / 2]);
    }
    Ok(())
}

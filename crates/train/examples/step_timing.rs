use aue_model::{AueModel, ForwardOptions, ModelConfig, Preset, Stage, stage_loss};
use candle_core::{Device, Tensor};
use candle_nn::VarMap;
use std::time::Instant;
fn main() {
    let dev = Device::Cpu;
    let cfg = ModelConfig::preset(Preset::Tiny);
    let map = VarMap::new();
    let model = AueModel::with_varmap(&map, &cfg, &dev).unwrap();
    aue_model::init::init_default(&map, 3).unwrap();
    let b = 32;
    let images = Tensor::randn(0f32, 1.0, (b, 3, 64, 64), &dev).unwrap();
    let loc: Vec<i64> = (0..b * 17 * 4).map(|i| 3 + (i * 7 % 11) as i64).collect();
    let au_loc = Tensor::from_vec(loc, (b, 17, 4), &dev).unwrap();
    let labels =
        Tensor::from_vec((0..b as i64).map(|i| i % 7).collect::<Vec<_>>(), b, &dev).unwrap();
    for stage in [Stage::Em, Stage::Au, Stage::Fuse] {
        let opts = ForwardOptions::stage(stage);
        for _ in 0..3 {
            let t = Instant::now();
            let out = model.forward(&images, Some(&au_loc), &opts).unwrap();
            let loss = stage_loss(stage, &out, &labels, model.knowledge()).unwrap();
            let _ = loss.to_scalar::<f32>().unwrap();
            let tf = t.elapsed().as_secs_f64();
            let g = loss.backward().unwrap();
            let tb = t.elapsed().as_secs_f64() - tf;
            drop(g);
            println!("{stage}: fwd {tf:.3}s bwd {tb:.3}s");
        }
        let t = Instant::now();
        let out = model.forward(&images, Some(&au_loc), &ForwardOptions::eval()).unwrap();
        let _ = out.pred_em.unwrap().to_vec2::<f32>().unwrap();
        println!("eval all {:.3}", t.elapsed().as_secs_f64());
    }
}

//! Renders a contact sheet for eyeballing the generator: one row per basic expression (Surprise,
//! Fear, Disgust, Happiness, Sadness, Anger, Neutral). The first columns show the same identities
//! in every row with the expression's Strong AUs of the prior at intensity 0.85 (prototypes); the
//! last columns show faces as the dataset draws them (AUs from the sampler, random identity).
//!
//! With `crop`, each cell shows what a model at 64 px input sees: the face box enlarged by 7.5% per
//! side (docs/METHOD.md section 5), resized to 64 x 64, then enlarged to the cell for viewing.
//!
//! `cargo run --release -p aue-synth --example contact_sheet -- OUT.png [SIZE] [easy|medium|hard] [crop]`

use aue_core::{NUM_AUS, NUM_BASIC, PriorLevel, prior_level};
use aue_synth::{Difficulty, DifficultyLevel, FaceParams, Split, image_rng, render, sample_aus};
use image::RgbImage;

const PROTOTYPE_COLUMNS: u32 = 6;
const SAMPLED_COLUMNS: u32 = 4;
const GAP: u32 = 8;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let out = args.next().unwrap_or_else(|| "synth_sheet.png".into());
    let size: u32 = args.next().map(|s| s.parse()).transpose()?.unwrap_or(160);
    let level: DifficultyLevel =
        args.next().map(|s| s.parse()).transpose().map_err(anyhow::Error::msg)?.unwrap_or_default();
    let d = Difficulty::preset(level);
    let crop = args.next().is_some_and(|s| s == "crop");
    let cell = |face: &aue_synth::RenderedFace| {
        if crop { model_view(face, size) } else { face.image.clone() }
    };
    let width = (PROTOTYPE_COLUMNS + SAMPLED_COLUMNS) * size + GAP;
    let mut sheet =
        RgbImage::from_pixel(width, NUM_BASIC as u32 * size, image::Rgb([255, 255, 255]));
    for e in 0..NUM_BASIC {
        let mut prototype = [0.0f32; NUM_AUS];
        for (au, v) in prototype.iter_mut().enumerate() {
            if prior_level(e, au) == PriorLevel::Strong && e != 6 {
                *v = 0.85;
            }
        }
        for col in 0..PROTOTYPE_COLUMNS {
            // Same identity stream per column: only the AUs differ down a column.
            let mut rng = image_rng(1000 + u64::from(col), Split::Test, 0);
            let mut params = FaceParams::sample(size, prototype, &d, &mut rng);
            params.aus = prototype;
            let face = render(&params, &mut rng)?;
            image::imageops::replace(
                &mut sheet,
                &cell(&face),
                i64::from(col * size),
                (e as u32 * size).into(),
            );
        }
        for col in 0..SAMPLED_COLUMNS {
            let mut rng = image_rng(7, Split::Train, (e as u64) * 100 + u64::from(col));
            let aus = sample_aus(e, &d, &mut rng);
            let params = FaceParams::sample(size, aus, &d, &mut rng);
            let face = render(&params, &mut rng)?;
            let x = (PROTOTYPE_COLUMNS + col) * size + GAP;
            image::imageops::replace(
                &mut sheet,
                &cell(&face),
                i64::from(x),
                (e as u32 * size).into(),
            );
        }
    }
    sheet.save(&out)?;
    println!("wrote {out} ({width} x {} px)", sheet.height());
    Ok(())
}

/// The loader's crop (box + 7.5% per side) at 64 px, enlarged to `size` with nearest neighbour.
fn model_view(face: &aue_synth::RenderedFace, size: u32) -> RgbImage {
    let [x1, y1, x2, y2] = face.bbox;
    let pad = ((0.15 * (x2 - x1)) as i64 / 2) as f32;
    let (w, h) = (face.image.width() as f32, face.image.height() as f32);
    let (cx1, cy1) = ((x1 - pad).max(0.0), (y1 - pad).max(0.0));
    let (cx2, cy2) = ((x2 + pad).min(w), (y2 + pad).min(h));
    let view = image::imageops::crop_imm(
        &face.image,
        cx1.round() as u32,
        cy1.round() as u32,
        ((cx2 - cx1).round() as u32).max(1),
        ((cy2 - cy1).round() as u32).max(1),
    )
    .to_image();
    let small = image::imageops::resize(&view, 64, 64, image::imageops::FilterType::Triangle);
    image::imageops::resize(&small, size, size, image::imageops::FilterType::Nearest)
}

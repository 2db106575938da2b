//! Image degradation after drawing: canvas to RGB, Gaussian blur, pixel noise.

use image::RgbImage;
use tiny_skia::Pixmap;

use crate::appearance::Rgb;
use crate::geometry::Pt;
use crate::random::Draw;

/// Fills the whole canvas with an opaque linear gradient: `c0` at `p0`, `c1` at `p1`, constant
/// beyond (a plain loop: a full-canvas fill through the raster pipeline costs several times more).
pub fn fill_linear(pm: &mut Pixmap, p0: Pt, p1: Pt, c0: Rgb, c1: Rgb) {
    let w = pm.width() as usize;
    let d = p1 - p0;
    let norm = (d.x * d.x + d.y * d.y).max(1e-6);
    let (tx, ty) = (d.x / norm, d.y / norm);
    let (a, b) = ([c0.r, c0.g, c0.b].map(|v| v * 255.0), [c1.r, c1.g, c1.b].map(|v| v * 255.0));
    for (y, row) in pm.data_mut().chunks_exact_mut(4 * w).enumerate() {
        // t is affine in x along a row: start value plus a constant step.
        let t0 = (0.5 - p0.x) * tx + (y as f32 + 0.5 - p0.y) * ty;
        for (x, px) in row.chunks_exact_mut(4).enumerate() {
            let t = (t0 + x as f32 * tx).clamp(0.0, 1.0);
            for c in 0..3 {
                px[c] = (a[c] + (b[c] - a[c]) * t + 0.5) as u8;
            }
            px[3] = 255;
        }
    }
}

/// Copies an opaque canvas into an RGB image (the background is opaque, so premultiplied RGBA
/// equals straight RGBA and the alpha byte can be dropped).
pub fn to_rgb(pm: &Pixmap) -> RgbImage {
    let data: Vec<u8> = pm.data().chunks_exact(4).flat_map(|px| [px[0], px[1], px[2]]).collect();
    RgbImage::from_raw(pm.width(), pm.height(), data)
        .unwrap_or_else(|| RgbImage::new(pm.width(), pm.height()))
}

/// Global lighting: the side the light comes from (direction `angle` from the centre) is blended
/// towards warm white, the opposite side towards black, both up to opacity `strength` at the
/// image edge and fading to nothing across the centre line.
pub fn apply_light(img: &mut RgbImage, angle: f32, strength: f32) {
    if strength <= 0.003 {
        return;
    }
    let (w, h) = (img.width() as usize, img.height() as usize);
    let half = w.max(h) as f32 / 2.0;
    // t = -1 on the lit edge (towards `angle` from the centre), +1 on the shaded edge; affine in
    // x along a row.
    let (tx, ty) = (-angle.cos() / half, -angle.sin() / half);
    let white = [255.0f32, 250.0, 240.0];
    for (y, row) in img.as_mut().chunks_exact_mut(3 * w).enumerate() {
        let t0 = (0.5 - w as f32 / 2.0) * tx + (y as f32 + 0.5 - h as f32 / 2.0) * ty;
        for (x, px) in row.chunks_exact_mut(3).enumerate() {
            let t = (t0 + x as f32 * tx).clamp(-1.0, 1.0);
            let k = strength * t.abs();
            for (ch, v) in px.iter_mut().enumerate() {
                let target = if t < 0.0 { white[ch] } else { 0.0 };
                let v0 = f32::from(*v);
                *v = (v0 + (target - v0) * k + 0.5) as u8;
            }
        }
    }
}

/// Separable Gaussian blur with standard deviation `sigma` pixels (no-op below 0.2), clamped edges.
pub fn gaussian_blur(img: &mut RgbImage, sigma: f32) {
    if sigma < 0.2 {
        return;
    }
    let radius = (3.0 * sigma).ceil() as usize;
    let mut kernel: Vec<f32> = (0..=2 * radius)
        .map(|i| {
            let d = i as f32 - radius as f32;
            (-(d * d) / (2.0 * sigma * sigma)).exp()
        })
        .collect();
    let total: f32 = kernel.iter().sum();
    kernel.iter_mut().for_each(|k| *k /= total);
    let (w, h) = (img.width() as usize, img.height() as usize);
    let row = 3 * w;
    // Both passes are written as whole-slice multiply-adds (shifted rows / whole rows), which the
    // compiler vectorises; edge pixels are repeated into a padded row instead of clamping indices.
    let mut tmp = vec![0.0f32; row * h];
    let mut padded = vec![0.0f32; row + 6 * radius];
    for (y, out_row) in tmp.chunks_exact_mut(row).enumerate() {
        let src = &img.as_raw()[y * row..(y + 1) * row];
        for (i, p) in padded.iter_mut().enumerate() {
            let x = (i / 3).saturating_sub(radius).min(w - 1);
            *p = f32::from(src[x * 3 + i % 3]);
        }
        for (k, &wt) in kernel.iter().enumerate() {
            for (o, &v) in out_row.iter_mut().zip(&padded[3 * k..3 * k + row]) {
                *o += wt * v;
            }
        }
    }
    let mut acc = vec![0.0f32; row];
    let out = img.as_mut();
    for y in 0..h {
        acc.fill(0.0);
        for (k, &wt) in kernel.iter().enumerate() {
            let yy = (y + k).saturating_sub(radius).min(h - 1);
            for (a, &v) in acc.iter_mut().zip(&tmp[yy * row..(yy + 1) * row]) {
                *a += wt * v;
            }
        }
        for (o, &a) in out[y * row..(y + 1) * row].iter_mut().zip(&acc) {
            // Saturating float-to-int cast: rounds half up and clamps to [0, 255].
            *o = (a + 0.5) as u8;
        }
    }
}

/// Adds zero-mean noise of standard deviation `sigma` (8-bit levels) to every channel.
///
/// Each value is the centred sum of the four bytes of one `u32` (Irwin-Hall, close to normal and
/// far cheaper than Box-Muller per pixel).
pub fn add_noise(img: &mut RgbImage, sigma: f32, rng: &mut impl Draw) {
    if sigma < 0.05 {
        return;
    }
    // Four uniform bytes: mean 510, standard deviation sqrt(4 * (256^2 - 1) / 12) = 147.8.
    let k = sigma / 147.8;
    for v in img.as_mut().iter_mut() {
        let b = rng.next_u32().to_le_bytes();
        let sum = b.iter().map(|&x| f32::from(x)).sum::<f32>() - 510.0;
        // Saturating float-to-int cast: rounds half up and clamps to [0, 255].
        *v = (f32::from(*v) + sum * k + 0.5) as u8;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::random::{Split, image_rng};

    #[test]
    fn blur_keeps_flat_images_and_spreads_a_dot() {
        let mut img = RgbImage::from_pixel(9, 9, image::Rgb([100, 100, 100]));
        gaussian_blur(&mut img, 1.0);
        assert!(img.pixels().all(|p| p.0 == [100, 100, 100]));
        let mut img = RgbImage::new(9, 9);
        img.put_pixel(4, 4, image::Rgb([255, 255, 255]));
        gaussian_blur(&mut img, 1.0);
        assert!(img.get_pixel(4, 4).0[0] < 255 && img.get_pixel(5, 4).0[0] > 0);
    }

    #[test]
    fn noise_has_the_requested_spread() {
        let mut img = RgbImage::from_pixel(64, 64, image::Rgb([128, 128, 128]));
        add_noise(&mut img, 10.0, &mut image_rng(0, Split::Train, 0));
        let vals: Vec<f32> = img.as_raw().iter().map(|&v| f32::from(v) - 128.0).collect();
        let mean = vals.iter().sum::<f32>() / vals.len() as f32;
        let sd = (vals.iter().map(|v| (v - mean).powi(2)).sum::<f32>() / vals.len() as f32).sqrt();
        assert!(mean.abs() < 0.5 && (sd - 10.0).abs() < 0.6, "mean {mean} sd {sd}");
    }
}

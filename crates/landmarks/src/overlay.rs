//! Drawing face boxes and landmarks on an image, to look at what the nets found.
//!
//! Points are coloured by iBUG region (jaw, brows, nose, eyes, mouth) so a swapped or shifted
//! region stands out; known true points, when given, are drawn as small white crosses.

use image::{Rgb, RgbImage};

use crate::geometry::{FaceBox, Landmarks68};

const JAW: Rgb<u8> = Rgb([255, 220, 0]);
const BROWS: Rgb<u8> = Rgb([255, 120, 0]);
const NOSE: Rgb<u8> = Rgb([0, 200, 255]);
const EYES: Rgb<u8> = Rgb([0, 255, 80]);
const MOUTH: Rgb<u8> = Rgb([255, 0, 160]);
const BOX: Rgb<u8> = Rgb([255, 0, 0]);
const TRUTH: Rgb<u8> = Rgb([255, 255, 255]);

fn region_colour(i: usize) -> Rgb<u8> {
    match i {
        0..=16 => JAW,
        17..=26 => BROWS,
        27..=35 => NOSE,
        36..=47 => EYES,
        _ => MOUTH,
    }
}

fn put(img: &mut RgbImage, x: i64, y: i64, c: Rgb<u8>) {
    if x >= 0 && y >= 0 && x < i64::from(img.width()) && y < i64::from(img.height()) {
        img.put_pixel(x as u32, y as u32, c);
    }
}

/// Draws each face's box and points, and the true points if given, on a copy of `image`.
pub fn draw(
    image: &RgbImage,
    faces: &[(FaceBox, Landmarks68)],
    truth: Option<&Landmarks68>,
) -> RgbImage {
    let mut img = image.clone();
    for (face, points) in faces {
        // Line and dot sizes follow the face so small and large faces both read.
        let t = (face.width().max(face.height()) / 150.0).ceil().max(1.0) as i64;
        let (x1, y1, x2, y2) = (face.x1 as i64, face.y1 as i64, face.x2 as i64, face.y2 as i64);
        for k in 0..t {
            for x in x1..=x2 {
                put(&mut img, x, y1 + k, BOX);
                put(&mut img, x, y2 - k, BOX);
            }
            for y in y1..=y2 {
                put(&mut img, x1 + k, y, BOX);
                put(&mut img, x2 - k, y, BOX);
            }
        }
        let r = t + 1;
        for (i, p) in points.iter().enumerate() {
            let (cx, cy) = (p[0].round() as i64, p[1].round() as i64);
            for dy in -r..=r {
                for dx in -r..=r {
                    if dx * dx + dy * dy <= r * r {
                        put(&mut img, cx + dx, cy + dy, region_colour(i));
                    }
                }
            }
        }
        if let Some(truth) = truth {
            for p in truth {
                let (cx, cy) = (p[0].round() as i64, p[1].round() as i64);
                for d in -r..=r {
                    put(&mut img, cx + d, cy, TRUTH);
                    put(&mut img, cx, cy + d, TRUTH);
                }
            }
        }
    }
    img
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_inside_and_clips_outside() {
        let img = RgbImage::new(20, 20);
        let mut pts = [[10.0f32, 10.0]; 68];
        pts[0] = [-50.0, 300.0]; // off the image: must not panic
        let out = draw(&img, &[(FaceBox::from_corners(2.0, 2.0, 17.0, 17.0), pts)], Some(&pts));
        assert_eq!(*out.get_pixel(2, 5), BOX);
        assert_ne!(*out.get_pixel(10, 10), Rgb([0, 0, 0]));
    }
}

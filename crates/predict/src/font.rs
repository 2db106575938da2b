//! A 3 x 5 pixel bitmap font (upper-case letters, digits, a few signs), enough to label an
//! overlay with an expression name, a probability and AU names without shipping a font file.

use image::{Rgb, RgbImage};

/// Rows of a glyph, top to bottom; bit 2 is the left column.
fn glyph(c: char) -> [u8; 5] {
    match c.to_ascii_uppercase() {
        'A' => [0b010, 0b101, 0b111, 0b101, 0b101],
        'B' => [0b110, 0b101, 0b110, 0b101, 0b110],
        'C' => [0b011, 0b100, 0b100, 0b100, 0b011],
        'D' => [0b110, 0b101, 0b101, 0b101, 0b110],
        'E' => [0b111, 0b100, 0b110, 0b100, 0b111],
        'F' => [0b111, 0b100, 0b110, 0b100, 0b100],
        'G' => [0b011, 0b100, 0b101, 0b101, 0b011],
        'H' => [0b101, 0b101, 0b111, 0b101, 0b101],
        'I' => [0b111, 0b010, 0b010, 0b010, 0b111],
        'J' => [0b001, 0b001, 0b001, 0b101, 0b010],
        'K' => [0b101, 0b101, 0b110, 0b101, 0b101],
        'L' => [0b100, 0b100, 0b100, 0b100, 0b111],
        'M' => [0b101, 0b111, 0b111, 0b101, 0b101],
        'N' => [0b110, 0b101, 0b101, 0b101, 0b101],
        'O' => [0b010, 0b101, 0b101, 0b101, 0b010],
        'P' => [0b110, 0b101, 0b110, 0b100, 0b100],
        'Q' => [0b010, 0b101, 0b101, 0b110, 0b011],
        'R' => [0b110, 0b101, 0b110, 0b101, 0b101],
        'S' => [0b011, 0b100, 0b010, 0b001, 0b110],
        'T' => [0b111, 0b010, 0b010, 0b010, 0b010],
        'U' => [0b101, 0b101, 0b101, 0b101, 0b111],
        'V' => [0b101, 0b101, 0b101, 0b101, 0b010],
        'W' => [0b101, 0b101, 0b111, 0b111, 0b101],
        'X' => [0b101, 0b101, 0b010, 0b101, 0b101],
        'Y' => [0b101, 0b101, 0b010, 0b010, 0b010],
        'Z' => [0b111, 0b001, 0b010, 0b100, 0b111],
        '0' => [0b111, 0b101, 0b101, 0b101, 0b111],
        '1' => [0b010, 0b110, 0b010, 0b010, 0b111],
        '2' => [0b110, 0b001, 0b010, 0b100, 0b111],
        '3' => [0b110, 0b001, 0b010, 0b001, 0b110],
        '4' => [0b101, 0b101, 0b111, 0b001, 0b001],
        '5' => [0b111, 0b100, 0b110, 0b001, 0b110],
        '6' => [0b011, 0b100, 0b111, 0b101, 0b111],
        '7' => [0b111, 0b001, 0b010, 0b010, 0b010],
        '8' => [0b111, 0b101, 0b111, 0b101, 0b111],
        '9' => [0b111, 0b101, 0b111, 0b001, 0b110],
        '.' => [0, 0, 0, 0, 0b010],
        ':' => [0, 0b010, 0, 0b010, 0],
        '-' => [0, 0, 0b111, 0, 0],
        '_' => [0, 0, 0, 0, 0b111],
        '=' => [0, 0b111, 0, 0b111, 0],
        '#' => [0b101, 0b111, 0b101, 0b111, 0b101],
        ' ' => [0; 5],
        _ => [0b110, 0b001, 0b010, 0, 0b010],
    }
}

/// Width and height in pixels of `text` drawn at `scale`.
pub fn text_size(text: &str, scale: u32) -> (u32, u32) {
    let n = text.chars().count() as u32;
    (n * 4 * scale + scale, 7 * scale)
}

/// Draws `text` at `(x, y)` (top-left) in `fg` on a `bg` box, clipped to the image.
pub fn draw_text(
    img: &mut RgbImage,
    x: i64,
    y: i64,
    text: &str,
    scale: u32,
    fg: Rgb<u8>,
    bg: Rgb<u8>,
) {
    let (w, h) = text_size(text, scale);
    let s = i64::from(scale);
    let mut put = |px: i64, py: i64, c: Rgb<u8>| {
        if px >= 0 && py >= 0 && px < i64::from(img.width()) && py < i64::from(img.height()) {
            img.put_pixel(px as u32, py as u32, c);
        }
    };
    for dy in 0..i64::from(h) {
        for dx in 0..i64::from(w) {
            put(x + dx, y + dy, bg);
        }
    }
    for (k, c) in text.chars().enumerate() {
        let left = x + s + k as i64 * 4 * s;
        for (row, bits) in glyph(c).iter().enumerate() {
            for col in 0..3 {
                if bits & (0b100 >> col) != 0 {
                    for yy in 0..s {
                        for xx in 0..s {
                            put(left + col * s + xx, y + s + row as i64 * s + yy, fg);
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_a_glyph_where_asked_and_clips() {
        let mut img = RgbImage::new(20, 10);
        draw_text(&mut img, 0, 0, "I", 1, Rgb([255, 255, 255]), Rgb([1, 1, 1]));
        // 'I' top row is 111 starting at x = 1, y = 1.
        assert_eq!(*img.get_pixel(1, 1), Rgb([255, 255, 255]));
        assert_eq!(*img.get_pixel(2, 2), Rgb([255, 255, 255]));
        assert_eq!(*img.get_pixel(1, 2), Rgb([1, 1, 1]));
        draw_text(&mut img, 15, 8, "WIDE TEXT", 2, Rgb([9, 9, 9]), Rgb([0, 0, 0]));
    }
}

//! Face boxes and 68-point landmark sets in image pixels (iBUG 68 layout, docs/METHOD.md section 5).

/// 68 points `[x, y]` in image pixels, iBUG order (0-16 jaw, 17-26 brows, 27-35 nose, 36-47 eyes,
/// 48-67 mouth).
pub type Landmarks68 = [[f32; 2]; 68];

pub use aue_core::FaceBox;

/// Inter-ocular distance: outer eye corners, points 36 and 45 (the 300-W normalisation).
pub fn inter_ocular(points: &Landmarks68) -> f32 {
    distance(points[36], points[45])
}

/// `f` moved by `(dx, dy)` pixels (from a tile's or crop's pixels to the image's).
pub fn shifted(f: &FaceBox, dx: f32, dy: f32) -> FaceBox {
    FaceBox { x1: f.x1 + dx, y1: f.y1 + dy, x2: f.x2 + dx, y2: f.y2 + dy, score: f.score }
}

/// The square box of side `side` centred on `centre`.
pub fn square(centre: [f32; 2], side: f32, score: f32) -> FaceBox {
    let (half, [cx, cy]) = (side / 2.0, centre);
    FaceBox { x1: cx - half, y1: cy - half, x2: cx + half, y2: cy + half, score }
}

/// A box from its corners and score (the tests' shorthand).
#[cfg(test)]
pub(crate) fn scored(x1: f32, y1: f32, x2: f32, y2: f32, score: f32) -> FaceBox {
    FaceBox { x1, y1, x2, y2, score }
}

/// Whether each box holds the other's centre (the same face, whatever the box convention).
pub fn mutual_centres(a: &FaceBox, b: &FaceBox) -> bool {
    a.contains(b.centre()) && b.contains(a.centre())
}

/// Euclidean distance of two points.
pub fn distance(a: [f32; 2], b: [f32; 2]) -> f32 {
    ((a[0] - b[0]).powi(2) + (a[1] - b[1]).powi(2)).sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iou_of_half_overlap() {
        let a = FaceBox::from_corners(0.0, 0.0, 2.0, 2.0);
        let b = FaceBox::from_corners(1.0, 0.0, 3.0, 2.0);
        assert!((a.iou(&b) - 1.0 / 3.0).abs() < 1e-6);
        assert_eq!(a.iou(&FaceBox::from_corners(5.0, 5.0, 6.0, 6.0)), 0.0);
    }

    #[test]
    fn box_around_points() {
        let mut p = [[1.0f32, 2.0]; 68];
        p[3] = [-1.0, 7.0];
        let b = FaceBox::around(&p);
        assert_eq!((b.x1, b.y1, b.x2, b.y2), (-1.0, 2.0, 1.0, 7.0));
    }
}

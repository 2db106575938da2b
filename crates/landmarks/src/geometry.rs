//! Face boxes and 68-point landmark sets in image pixels (iBUG 68 layout, docs/METHOD.md section 5).

/// 68 points `[x, y]` in image pixels, iBUG order (0-16 jaw, 17-26 brows, 27-35 nose, 36-47 eyes,
/// 48-67 mouth).
pub type Landmarks68 = [[f32; 2]; 68];

pub use aue_core::FaceBox;

/// Inter-ocular distance: outer eye corners, points 36 and 45 (the 300-W normalisation).
pub fn inter_ocular(points: &Landmarks68) -> f32 {
    distance(points[36], points[45])
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

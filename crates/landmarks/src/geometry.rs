//! Face boxes and 68-point landmark sets in image pixels (iBUG 68 layout, docs/METHOD.md section 5).

/// 68 points `[x, y]` in image pixels, iBUG order (0-16 jaw, 17-26 brows, 27-35 nose, 36-47 eyes,
/// 48-67 mouth).
pub type Landmarks68 = [[f32; 2]; 68];

/// A face box in image pixels (x2, y2 exclusive edges, as `x1 + width`), with the detector's score
/// (1 for a box that came from a dataset file).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FaceBox {
    pub x1: f32,
    pub y1: f32,
    pub x2: f32,
    pub y2: f32,
    pub score: f32,
}

impl FaceBox {
    /// A box from its corners with score 1.
    pub fn from_corners(x1: f32, y1: f32, x2: f32, y2: f32) -> Self {
        Self { x1, y1, x2, y2, score: 1.0 }
    }

    pub fn width(&self) -> f32 {
        self.x2 - self.x1
    }

    pub fn height(&self) -> f32 {
        self.y2 - self.y1
    }

    pub fn area(&self) -> f32 {
        self.width().max(0.0) * self.height().max(0.0)
    }

    /// Area of the overlap with `other`.
    pub fn intersection(&self, other: &FaceBox) -> f32 {
        let w = (self.x2.min(other.x2) - self.x1.max(other.x1)).max(0.0);
        let h = (self.y2.min(other.y2) - self.y1.max(other.y1)).max(0.0);
        w * h
    }

    /// Whether `p` lies inside the box.
    pub fn contains(&self, p: [f32; 2]) -> bool {
        p[0] >= self.x1 && p[0] < self.x2 && p[1] >= self.y1 && p[1] < self.y2
    }

    /// The centre point.
    pub fn centre(&self) -> [f32; 2] {
        [(self.x1 + self.x2) / 2.0, (self.y1 + self.y2) / 2.0]
    }

    /// Intersection over union with `other`.
    pub fn iou(&self, other: &FaceBox) -> f32 {
        let inter = self.intersection(other);
        let union = self.area() + other.area() - inter;
        if union > 0.0 { inter / union } else { 0.0 }
    }

    /// The smallest box holding all points (the SFEW convention of docs/METHOD.md section 5).
    pub fn around(points: &Landmarks68) -> Self {
        let mut b = Self::from_corners(f32::MAX, f32::MAX, f32::MIN, f32::MIN);
        for &[x, y] in points {
            b.x1 = b.x1.min(x);
            b.y1 = b.y1.min(y);
            b.x2 = b.x2.max(x);
            b.y2 = b.y2.max(y);
        }
        b
    }
}

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

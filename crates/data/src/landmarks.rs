//! Facial landmarks: the iBUG 68-point layout, the 66-point variant, the mirror permutation and
//! the AU centre table of docs/METHOD.md section 5.

/// One landmark, `[x, y]` in pixels. `f64` because the reference computes with numpy float64
/// and the AU locations are rounded: a tie (x.5) must fall the same way.
pub type Point = [f64; 2];

/// The number of points of the iBUG 68 layout.
pub const NUM_LANDMARKS: usize = 68;

/// 68 landmarks in iBUG order.
pub type Landmarks = [Point; NUM_LANDMARKS];

/// Copies 68 points (the caller checked the count).
pub(crate) fn from_68(points: &[Point]) -> Landmarks {
    let mut out = [[0.0; 2]; NUM_LANDMARKS];
    out.copy_from_slice(&points[..NUM_LANDMARKS]);
    out
}

/// Maps a 66-point file into the 68 layout.
///
/// The 66-point layout (as written by 66-point trackers) is iBUG 68 without the two inner-mouth
/// corners, indices 60 and 64: 66-index 0..=59 is iBUG 0..=59 and 66-index 60..=65 is iBUG 61,
/// 62, 63, 65, 66, 67. The missing inner corners are taken from the outer mouth corners (60 from
/// 48, 64 from 54): they are the nearest points the file has, on the same horizontal line of
/// the mouth, a little outside the inner corners. Only AU23 (centre 60) and AU24 (centre 64)
/// use them. (The reference instead drops AU5, AU9, AU16, AU20, AU25 and AU26 for 66-point
/// data, which changes the model's shape; we keep all 17 AUs.)
pub(crate) fn from_66(points: &[Point]) -> Landmarks {
    let mut out = [[0.0; 2]; NUM_LANDMARKS];
    out[..60].copy_from_slice(&points[..60]);
    out[61..64].copy_from_slice(&points[60..63]);
    out[65..68].copy_from_slice(&points[63..66]);
    out[60] = out[48];
    out[64] = out[54];
    out
}

/// The left/right mirror of each iBUG 68 index: after a horizontal flip, point `i` of the
/// mirrored face is point `IBUG68_MIRROR[i]` of the original.
pub const IBUG68_MIRROR: [usize; NUM_LANDMARKS] = [
    16, 15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0, // jaw 0..=16
    26, 25, 24, 23, 22, 21, 20, 19, 18, 17, // brows 17..=26
    27, 28, 29, 30, // nose bridge 27..=30
    35, 34, 33, 32, 31, // nostrils 31..=35
    45, 44, 43, 42, 47, 46, // right eye 36..=41 <-> left eye 42..=47
    39, 38, 37, 36, 41, 40, //
    54, 53, 52, 51, 50, 49, 48, // outer lip top 48..=54
    59, 58, 57, 56, 55, // outer lip bottom 55..=59
    64, 63, 62, 61, 60, // inner lip top 60..=64
    67, 66, 65, // inner lip bottom 65..=67
];

/// Applies [`IBUG68_MIRROR`]: the points of the mirrored face in iBUG order.
pub fn swap_left_right(points: &Landmarks) -> Landmarks {
    let mut out = [[0.0; 2]; NUM_LANDMARKS];
    for (o, &m) in out.iter_mut().zip(IBUG68_MIRROR.iter()) {
        *o = points[m];
    }
    out
}

/// Where one AU centre sits: a landmark, or the midpoint of two.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Centre {
    /// Landmark `i`.
    Point(usize),
    /// Midpoint of landmarks `a` and `b` (of the grid-scaled points).
    Mid(usize, usize),
}

use Centre::{Mid, Point as P};

/// The two centres of each AU, in the AU order of docs/METHOD.md section 1 (table of section 5).
pub const AU_CENTRES: [(Centre, Centre); aue_core::NUM_AUS] = [
    (P(21), P(22)),             // AU1
    (P(18), P(25)),             // AU2
    (Mid(21, 22), Mid(19, 24)), // AU4
    (Mid(37, 38), Mid(43, 44)), // AU5
    (P(41), P(46)),             // AU6
    (P(38), P(43)),             // AU7
    (P(31), P(35)),             // AU9
    (P(50), P(52)),             // AU10
    (P(48), P(54)),             // AU12
    (P(48), P(54)),             // AU15
    (P(58), P(56)),             // AU16
    (P(51), P(57)),             // AU17
    (P(48), P(54)),             // AU20
    (P(60), P(62)),             // AU23
    (P(61), P(64)),             // AU24
    (P(62), P(66)),             // AU25
    (P(51), P(57)),             // AU26
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mirror_is_an_involution_that_fixes_the_midline() {
        for (i, &m) in IBUG68_MIRROR.iter().enumerate() {
            assert_eq!(IBUG68_MIRROR[m], i, "index {i}");
        }
        for fixed in [8, 27, 28, 29, 30, 33, 51, 57, 62, 66] {
            assert_eq!(IBUG68_MIRROR[fixed], fixed);
        }
        assert_eq!(IBUG68_MIRROR[36], 45);
        assert_eq!(IBUG68_MIRROR[41], 46);
        assert_eq!(IBUG68_MIRROR[48], 54);
        assert_eq!(IBUG68_MIRROR[60], 64);
    }

    #[test]
    fn swapping_mirrors_points() {
        let mut p = [[0.0; 2]; NUM_LANDMARKS];
        for (i, q) in p.iter_mut().enumerate() {
            *q = [i as f64, 0.0];
        }
        let s = swap_left_right(&p);
        assert_eq!(s[21][0], 22.0);
        assert_eq!(s[0][0], 16.0);
    }
}

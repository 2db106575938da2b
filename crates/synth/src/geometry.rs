//! Face geometry: the neutral iBUG-68 template, identity shape traits, FACS action-unit motion and
//! the in-plane pose that maps face units to image pixels.
//!
//! Face units: x to the image right, y down, origin between the eye corners; the jaw's half-width
//! at eye level is about 1 and the chin sits about 1.64 below the eye line. The template uses the
//! iBUG-68 point order of docs/METHOD.md section 5 (jaw 0-16, brows 17-26, nose 27-35, eyes 36-47,
//! outer lips 48-59, inner lips 60-67), with "left" meaning image-left (the subject's right).

use std::ops::{Add, Mul, Sub};

use aue_core::{NUM_AUS, au_index};

use crate::random::Draw;

/// A 2-D point (face units or pixels, by context).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Pt {
    pub x: f32,
    pub y: f32,
}

impl Pt {
    pub const fn new(x: f32, y: f32) -> Self {
        Pt { x, y }
    }

    /// Euclidean distance.
    pub fn dist(self, o: Pt) -> f32 {
        (self.x - o.x).hypot(self.y - o.y)
    }

    /// Linear interpolation: `self` at t = 0, `o` at t = 1.
    pub fn lerp(self, o: Pt, t: f32) -> Pt {
        self + (o - self) * t
    }

    /// Midpoint.
    pub fn mid(self, o: Pt) -> Pt {
        self.lerp(o, 0.5)
    }
}

impl Add for Pt {
    type Output = Pt;
    fn add(self, o: Pt) -> Pt {
        Pt::new(self.x + o.x, self.y + o.y)
    }
}

impl Sub for Pt {
    type Output = Pt;
    fn sub(self, o: Pt) -> Pt {
        Pt::new(self.x - o.x, self.y - o.y)
    }
}

impl Mul<f32> for Pt {
    type Output = Pt;
    fn mul(self, k: f32) -> Pt {
        Pt::new(self.x * k, self.y * k)
    }
}

/// Number of landmarks of the iBUG-68 layout.
pub const NUM_LANDMARKS: usize = 68;

/// The 68 landmarks of one face.
pub type Landmarks = [Pt; NUM_LANDMARKS];

/// Mirror pairs (image-left index, image-right index); the other 10 points lie on the midline.
pub const MIRROR_PAIRS: [(usize, usize); 29] = [
    (0, 16),
    (1, 15),
    (2, 14),
    (3, 13),
    (4, 12),
    (5, 11),
    (6, 10),
    (7, 9),
    (17, 26),
    (18, 25),
    (19, 24),
    (20, 23),
    (21, 22),
    (31, 35),
    (32, 34),
    (36, 45),
    (37, 44),
    (38, 43),
    (39, 42),
    (40, 47),
    (41, 46),
    (48, 54),
    (49, 53),
    (50, 52),
    (59, 55),
    (58, 56),
    (60, 64),
    (61, 63),
    (67, 65),
];

/// Landmarks on the facial midline.
pub const MIDLINE: [usize; 10] = [8, 27, 28, 29, 30, 33, 51, 57, 62, 66];

/// Average neutral positions of the image-left and midline points, face units (the right half is
/// the mirror image). Proportions of the usual iBUG-68 mean shape; the lips are closed (the mean
/// shape's slight opening comes from averaging expressive faces).
const TEMPLATE_HALF: [(usize, f32, f32); 39] = [
    // Jaw, ear level to chin.
    (0, -1.00, 0.02),
    (1, -0.99, 0.285),
    (2, -0.96, 0.55),
    (3, -0.905, 0.81),
    (4, -0.80, 1.055),
    (5, -0.64, 1.27),
    (6, -0.45, 1.45),
    (7, -0.235, 1.60),
    (8, 0.0, 1.64),
    // Brow, outer to inner.
    (17, -0.795, -0.20),
    (18, -0.67, -0.296),
    (19, -0.50, -0.322),
    (20, -0.33, -0.294),
    (21, -0.166, -0.225),
    // Nose bridge and tip, nostril base.
    (27, 0.0, -0.026),
    (28, 0.0, 0.148),
    (29, 0.0, 0.323),
    (30, 0.0, 0.50),
    (31, -0.195, 0.613),
    (32, -0.102, 0.651),
    (33, 0.0, 0.684),
    // Eye: outer corner, upper lid (outer, inner), inner corner, lower lid (inner, outer).
    (36, -0.596, -0.005),
    (37, -0.491, -0.07),
    (38, -0.363, -0.07),
    (39, -0.256, 0.012),
    (40, -0.374, 0.04),
    (41, -0.499, 0.038),
    // Outer lips: corner, upper lip, Cupid's bow, centre; lower lip.
    (48, -0.389, 0.945),
    (49, -0.248, 0.885),
    (50, -0.104, 0.857),
    (51, 0.0, 0.875),
    (59, -0.254, 1.06),
    (58, -0.113, 1.12),
    (57, 0.0, 1.13),
    // Inner lips (closed: lower inner = upper inner).
    (60, -0.33, 0.955),
    (61, -0.105, 0.962),
    (62, 0.0, 0.968),
    (67, -0.105, 0.962),
    (66, 0.0, 0.968),
];

/// The mirror partner of landmark `i` (itself on the midline).
pub fn mirror_of(i: usize) -> usize {
    for &(l, r) in &MIRROR_PAIRS {
        if l == i {
            return r;
        }
        if r == i {
            return l;
        }
    }
    i
}

/// The average neutral face (before identity traits), face units.
pub fn average_template() -> Landmarks {
    let mut lm = [Pt::default(); NUM_LANDMARKS];
    for &(i, x, y) in &TEMPLATE_HALF {
        lm[i] = Pt::new(x, y);
        lm[mirror_of(i)] = Pt::new(-x, y);
    }
    lm
}

/// Identity shape traits (one face's proportions). Ratios are 1 for the average face.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FaceShape {
    /// Jaw half-width at eye level, face units.
    pub half_width: f32,
    /// Chin height below the eye line relative to the average (face length).
    pub length: f32,
    /// Extra width of the lower jaw (> 0 square, < 0 tapered), relative.
    pub jaw_square: f32,
    /// Top of the skull above the eye line, face units.
    pub forehead: f32,
    /// Half the distance between the eye centres relative to the average.
    pub eye_spacing: f32,
    /// Eye width relative to the average.
    pub eye_size: f32,
    /// Eye opening (lid to lid) relative to the average.
    pub eye_open: f32,
    /// Canthal tilt: the outer corners' rise, face units.
    pub eye_tilt: f32,
    /// Brow height offset (negative = higher), face units.
    pub brow_raise: f32,
    /// Brow arch relative to the average.
    pub brow_arch: f32,
    /// Brow thickness, face units.
    pub brow_thickness: f32,
    /// Nose length relative to the average.
    pub nose_length: f32,
    /// Nose width relative to the average.
    pub nose_width: f32,
    /// Mouth height offset (positive = lower), face units.
    pub mouth_drop: f32,
    /// Mouth width relative to the average.
    pub mouth_width: f32,
    /// Upper lip thickness relative to the average.
    pub upper_lip: f32,
    /// Lower lip thickness relative to the average.
    pub lower_lip: f32,
}

impl FaceShape {
    /// The average face.
    pub fn average() -> Self {
        FaceShape {
            half_width: 1.0,
            length: 1.0,
            jaw_square: 0.0,
            forehead: 1.28,
            eye_spacing: 1.0,
            eye_size: 1.0,
            eye_open: 1.0,
            eye_tilt: 0.0,
            brow_raise: 0.0,
            brow_arch: 1.0,
            brow_thickness: 0.075,
            nose_length: 1.0,
            nose_width: 1.0,
            mouth_drop: 0.0,
            mouth_width: 1.0,
            upper_lip: 1.0,
            lower_lip: 1.0,
        }
    }

    /// A random identity; `spread` scales every trait's deviation (0 = the average face).
    pub fn sample(rng: &mut impl Draw, spread: f32) -> Self {
        let a = FaceShape::average();
        let mut rel = |sd: f32| 1.0 + rng.trunc_normal(sd * spread);
        FaceShape {
            half_width: a.half_width * rel(0.05),
            length: rel(0.06),
            jaw_square: rel(0.06) - 1.0,
            forehead: a.forehead * rel(0.05),
            eye_spacing: rel(0.05),
            eye_size: rel(0.07),
            eye_open: rel(0.15),
            eye_tilt: rel(0.02) - 1.0,
            brow_raise: rel(0.035) - 1.0,
            brow_arch: rel(0.3),
            brow_thickness: a.brow_thickness * rel(0.22),
            nose_length: rel(0.08),
            nose_width: rel(0.1),
            mouth_drop: rel(0.03) - 1.0,
            mouth_width: rel(0.08),
            upper_lip: rel(0.2),
            lower_lip: rel(0.18),
        }
    }
}

/// The neutral landmarks of one identity, face units.
pub fn neutral_landmarks(s: &FaceShape) -> Landmarks {
    let mut lm = average_template();
    // Jaw: width, length, squareness (strongest around the jaw angle, points 3-6).
    const SQUARE_WEIGHT: [f32; 9] = [0.0, 0.0, 0.2, 0.5, 0.8, 0.8, 0.6, 0.3, 0.0];
    for (i, w) in SQUARE_WEIGHT.iter().enumerate() {
        for j in [i, 16 - i] {
            let p = lm[j];
            lm[j] = Pt::new(p.x * s.half_width * (1.0 + s.jaw_square * w), p.y * s.length);
        }
    }
    // Eyes: centre spacing, size and opening about each eye's centre, then the canthal tilt.
    let centre_x = 0.426;
    for (side, idx) in [(-1.0f32, [36, 37, 38, 39, 40, 41]), (1.0, [45, 44, 43, 42, 47, 46])] {
        for (k, &i) in idx.iter().enumerate() {
            let p = lm[i];
            let rel_x = p.x - side * centre_x;
            let x = side * centre_x * s.eye_spacing + rel_x * s.eye_size;
            let y = p.y * s.eye_size * s.eye_open;
            // Outer corner (k = 0) up by the tilt, inner corner (k = 3) down by a third of it.
            let tilt = match k {
                0 => -s.eye_tilt,
                3 => s.eye_tilt / 3.0,
                _ => 0.0,
            };
            lm[i] = Pt::new(x, y + tilt);
        }
    }
    // Brows: follow the eye spacing, height offset, arch about the line between the ends.
    for (side, idx) in [(-1.0f32, [17, 18, 19, 20, 21]), (1.0, [26, 25, 24, 23, 22])] {
        let (outer, inner) = (lm[idx[0]], lm[idx[4]]);
        for &i in &idx {
            let p = lm[i];
            let t = (p.x - outer.x) / (inner.x - outer.x);
            let chord_y = outer.y + t * (inner.y - outer.y);
            let y = chord_y + (p.y - chord_y) * s.brow_arch + s.brow_raise;
            let x = p.x + side * 0.426 * (s.eye_spacing - 1.0);
            lm[i] = Pt::new(x, y);
        }
    }
    // Nose: length scales the bridge and moves the base; width scales the nostrils.
    let base_shift = 0.5 * (s.nose_length - 1.0);
    for p in &mut lm[27..=30] {
        p.y = -0.026 + (p.y + 0.026) * s.nose_length;
    }
    for p in &mut lm[31..=35] {
        *p = Pt::new(p.x * s.nose_width, p.y + base_shift);
    }
    // Mouth: height, width, lip thickness about the lip line.
    let line_y = 0.962;
    for p in &mut lm[48..=67] {
        let dy = p.y - line_y;
        let k = if dy < 0.0 { s.upper_lip } else { s.lower_lip };
        *p = Pt::new(p.x * s.mouth_width, line_y + dy * k + s.mouth_drop + base_shift * 0.5);
    }
    lm
}

/// Moves a mirrored pair: `out` away from the midline (negative = towards it), `dy` down.
fn pair(lm: &mut Landmarks, left: usize, out: f32, dy: f32) {
    let right = mirror_of(left);
    lm[left].x -= out;
    lm[left].y += dy;
    lm[right].x += out;
    lm[right].y += dy;
}

/// Moves a midline point down by `dy`.
fn mid(lm: &mut Landmarks, i: usize, dy: f32) {
    lm[i].y += dy;
}

/// The intensity of FACS action unit `number` (0 when not modelled).
fn au(aus: &[f32; NUM_AUS], number: u8) -> f32 {
    au_index(number).map_or(0.0, |i| aus[i])
}

/// Applies the landmark motion of the 17 AUs (intensities in [0, 1], times `gain`) to a neutral
/// face. Displacements are in face units at intensity 1; the comments say what FACS describes.
pub fn apply_aus(lm: &mut Landmarks, aus: &[f32; NUM_AUS], gain: f32) {
    let a = |n| au(aus, n) * gain;
    let (a1, a2, a4, a5, a6, a7, a9) = (a(1), a(2), a(4), a(5), a(6), a(7), a(9));
    let (a10, a12, a15, a16, a17, a20) = (a(10), a(12), a(15), a(16), a(17), a(20));
    let (a23, a24, a25, a26) = (a(23), a(24), a(25), a(26));
    let lips_part = au(aus, 25) > 0.0;

    // AU1 inner brow raiser: the medial brow rises (oblique brow), slightly towards the midline.
    for (i, dy, out) in [(21, -0.17, -0.01), (20, -0.12, 0.0), (19, -0.065, 0.0), (18, -0.025, 0.0)]
    {
        pair(lm, i, out * a1, dy * a1);
    }
    // AU2 outer brow raiser: the lateral brow rises (arched brow).
    for (i, dy) in [(17, -0.17), (18, -0.16), (19, -0.12), (20, -0.06), (21, -0.02)] {
        pair(lm, i, 0.0, dy * a2);
    }
    // AU4 brow lowerer: brows down and drawn together, the medial end most; upper lids lowered.
    for (i, dy, out) in [
        (21, 0.12, -0.075),
        (20, 0.10, -0.055),
        (19, 0.07, -0.03),
        (18, 0.045, -0.01),
        (17, 0.02, 0.0),
    ] {
        pair(lm, i, out * a4, dy * a4);
    }
    for i in [37, 38] {
        pair(lm, i, 0.0, 0.012 * a4);
    }
    // AU5 upper lid raiser: upper lids up, the sclera shows above the iris.
    for i in [37, 38] {
        pair(lm, i, 0.0, -0.08 * a5);
    }
    for i in [40, 41] {
        pair(lm, i, 0.0, 0.006 * a5);
    }
    // AU6 cheek raiser: the infraorbital skin pushes the lower lids up, outer corners lift, the
    // lateral brow is pulled down a little.
    for (i, dy) in [(40, -0.025), (41, -0.03), (36, -0.01), (17, 0.02), (18, 0.01)] {
        pair(lm, i, 0.0, dy * a6);
    }
    // AU7 lid tightener: lower lids up and straightened, upper lids slightly down.
    for (i, dy) in [(40, -0.032), (41, -0.03), (37, 0.02), (38, 0.02)] {
        pair(lm, i, 0.0, dy * a7);
    }
    // AU9 nose wrinkler: nostril wings and upper lip pulled up, medial brows pulled down.
    for (i, out, dy) in
        [(31, 0.02, -0.05), (32, 0.01, -0.045), (21, -0.02, 0.05), (20, -0.01, 0.03)]
    {
        pair(lm, i, out * a9, dy * a9);
    }
    for (i, dy) in [(33, -0.04), (30, -0.02), (29, -0.01), (51, -0.045)] {
        mid(lm, i, dy * a9);
    }
    for (i, dy) in [(49, -0.04), (50, -0.045), (48, -0.01)] {
        pair(lm, i, 0.0, dy * a9);
    }
    // AU10 upper lip raiser: the upper lip rises, most at its centre and sides (squarish shape).
    for (i, dy) in [(49, -0.065), (50, -0.085), (48, -0.02), (60, -0.02), (31, -0.02)] {
        pair(lm, i, 0.0, dy * a10);
    }
    mid(lm, 51, -0.085 * a10);
    // The inner upper lip follows fully only when the lips part (otherwise the lips stay sealed).
    let inner_lift = if lips_part { 0.075 * a10 + 0.04 * a9 } else { 0.02 * a10 + 0.01 * a9 };
    pair(lm, 61, 0.0, -inner_lift);
    mid(lm, 62, -inner_lift);
    // AU12 lip corner puller: corners up and out (obliquely), the lower lip curves into a U.
    for (i, out, dy) in [
        (48, 0.10, -0.15),
        (60, 0.09, -0.14),
        (49, 0.045, -0.065),
        (59, 0.055, -0.10),
        (58, 0.02, -0.04),
        (67, 0.035, -0.08),
        (61, 0.01, -0.03),
        (50, 0.0, -0.01),
        (40, 0.0, -0.01),
        (41, 0.0, -0.012),
        (4, 0.02, 0.0),
        (5, 0.015, 0.0),
    ] {
        pair(lm, i, out * a12, dy * a12);
    }
    // AU15 lip corner depressor: corners pulled down (an inverted U).
    for (i, out, dy) in
        [(48, 0.01, 0.12), (60, 0.01, 0.11), (59, 0.0, 0.055), (49, 0.0, 0.04), (67, 0.0, 0.04)]
    {
        pair(lm, i, out * a15, dy * a15);
    }
    // AU16 lower lip depressor: the lower lip pulled down (its inner edge only if the lips part).
    for (i, dy) in [(58, 0.07), (59, 0.04)] {
        pair(lm, i, 0.0, dy * a16);
    }
    mid(lm, 57, 0.08 * a16);
    if lips_part {
        pair(lm, 67, 0.0, 0.06 * a16);
        mid(lm, 66, 0.075 * a16);
    }
    // AU17 chin raiser: the chin boss pushes up, the lower lip up and out, the corners slightly down.
    for (i, dy) in [(7, -0.06), (6, -0.035), (5, -0.01), (58, -0.06), (59, -0.04), (67, -0.025)] {
        pair(lm, i, 0.0, dy * a17);
    }
    for (i, dy) in [(8, -0.07), (57, -0.07), (66, -0.03), (62, -0.01), (51, -0.01)] {
        mid(lm, i, dy * a17);
    }
    pair(lm, 48, 0.0, 0.025 * a17);
    // AU20 lip stretcher: corners pulled sideways, the lips flatten and thin.
    for (i, out, dy) in [
        (48, 0.10, 0.015),
        (60, 0.09, 0.01),
        (49, 0.05, 0.0),
        (59, 0.05, -0.01),
        (50, 0.02, 0.0),
        (58, 0.02, -0.01),
        (5, 0.015, 0.0),
        (6, 0.015, 0.0),
    ] {
        pair(lm, i, out * a20, dy * a20);
    }
    mid(lm, 51, 0.015 * a20);
    mid(lm, 57, -0.02 * a20);
    // AU23 lip tightener: the red of the lips narrows and the mouth narrows.
    for (i, out, dy) in [
        (48, -0.04, 0.0),
        (60, -0.035, 0.0),
        (49, -0.02, 0.03),
        (50, 0.0, 0.03),
        (59, -0.02, -0.04),
        (58, 0.0, -0.045),
    ] {
        pair(lm, i, out * a23, dy * a23);
    }
    mid(lm, 51, 0.03 * a23);
    mid(lm, 57, -0.045 * a23);
    // AU24 lip presser: the lips pressed together, thinner, the corners a little in.
    for (i, out, dy) in
        [(48, -0.02, 0.01), (49, 0.0, 0.025), (50, 0.0, 0.025), (59, 0.0, -0.035), (58, 0.0, -0.04)]
    {
        pair(lm, i, out * a24, dy * a24);
    }
    mid(lm, 51, 0.025 * a24);
    mid(lm, 57, -0.04 * a24);
    // AU25 lips part: the lower lip separates from the upper.
    let part = 0.07 * a25;
    for (i, dy) in [(67, part), (58, part * 0.9), (59, part * 0.7)] {
        pair(lm, i, 0.0, dy);
    }
    mid(lm, 66, part);
    mid(lm, 57, part * 0.9);
    pair(lm, 61, 0.0, -0.01 * a25);
    mid(lm, 62, -0.01 * a25);
    // AU26 jaw drop: the mandible lowers (and the lower face narrows); the lower lip rides along,
    // fully when the lips part, partly (stretched, sealed) when they do not.
    for (i, out, dy) in
        [(7, -0.02, 0.32), (6, -0.03, 0.25), (5, -0.03, 0.17), (4, -0.02, 0.09), (3, 0.0, 0.03)]
    {
        pair(lm, i, out * a26, dy * a26);
    }
    mid(lm, 8, 0.34 * a26);
    let ride = if lips_part { 1.0 } else { 0.35 };
    for (i, dy) in [(58, 0.27), (59, 0.2), (67, 0.28)] {
        pair(lm, i, 0.0, dy * a26 * ride);
    }
    mid(lm, 57, 0.29 * a26 * ride);
    mid(lm, 66, 0.30 * a26 * ride);
    for (i, out, dy) in [(48, -0.04, 0.06), (60, -0.035, 0.06), (49, -0.02, 0.0)] {
        pair(lm, i, out * a26, dy * a26);
    }

    // Lip presser closes an opening that AU25 made, in proportion to its intensity.
    let close = (0.85 * a24).min(1.0);
    // Sealed lips: the lower inner edge coincides with the upper inner edge.
    for (upper, lower) in [(61, 67), (62, 66), (63, 65)] {
        let u = lm[upper];
        let l = lm[lower];
        lm[lower] = if lips_part {
            let l = Pt::new(l.x, l.y.max(u.y));
            Pt::new(l.x, u.y + (l.y - u.y) * (1.0 - close))
        } else {
            u
        };
    }
    // Physical limits: lids never cross, lips keep some thickness, the chin stays below the lip.
    for (upper, lower) in [(37, 41), (38, 40), (44, 46), (43, 47)] {
        let min_y = lm[upper].y + 0.012;
        if lm[lower].y < min_y {
            let m = (lm[upper].y + lm[lower].y) / 2.0;
            lm[upper].y = m - 0.006;
            lm[lower].y = m + 0.006;
        }
    }
    for (outer, inner) in [(50, 61), (51, 62), (52, 63)] {
        lm[outer].y = lm[outer].y.min(lm[inner].y - 0.03);
    }
    for (outer, inner) in [(58, 67), (57, 66), (56, 65)] {
        lm[outer].y = lm[outer].y.max(lm[inner].y + 0.04);
    }
    lm[8].y = lm[8].y.max(lm[57].y + 0.3);
}

/// The landmarks of one identity showing `aus`, face units.
pub fn face_landmarks(shape: &FaceShape, aus: &[f32; NUM_AUS], gain: f32) -> Landmarks {
    let mut lm = neutral_landmarks(shape);
    apply_aus(&mut lm, aus, gain);
    lm
}

/// In-plane pose: face units -> image pixels (rotate by `roll`, scale, translate).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Pose {
    /// Rotation in radians (positive = clockwise on screen, y being down).
    pub roll: f32,
    /// Pixels per face unit.
    pub scale: f32,
    /// Image position of the face-unit origin.
    pub origin: Pt,
}

impl Pose {
    /// Maps a face-unit point to image pixels.
    pub fn apply(&self, p: Pt) -> Pt {
        let (s, c) = self.roll.sin_cos();
        Pt::new(
            self.origin.x + self.scale * (c * p.x - s * p.y),
            self.origin.y + self.scale * (s * p.x + c * p.y),
        )
    }

    /// The same map as a `tiny_skia` transform (drawing in face units).
    pub fn transform(&self) -> tiny_skia::Transform {
        let (s, c) = self.roll.sin_cos();
        let k = self.scale;
        tiny_skia::Transform::from_row(k * c, k * s, -k * s, k * c, self.origin.x, self.origin.y)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(aus: &[(u8, f32)]) -> Landmarks {
        let mut v = [0.0; NUM_AUS];
        for &(n, x) in aus {
            v[au_index(n).unwrap()] = x;
        }
        face_landmarks(&FaceShape::average(), &v, 1.0)
    }

    fn mouth_centre(lm: &Landmarks) -> Pt {
        lm[62].mid(lm[66])
    }

    #[test]
    fn template_is_symmetric_and_ordered() {
        let lm = average_template();
        for &(l, r) in &MIRROR_PAIRS {
            assert!(lm[l].x < 0.0 && lm[r].x > 0.0, "pair {l} {r}");
            assert_eq!(lm[l].x, -lm[r].x);
            assert_eq!(lm[l].y, lm[r].y);
        }
        for i in MIDLINE {
            assert_eq!(lm[i].x, 0.0, "midline {i}");
        }
        // Top to bottom: brows, eyes, nose tip, mouth, chin.
        assert!(lm[19].y < lm[37].y && lm[37].y < lm[41].y);
        assert!(lm[41].y < lm[30].y && lm[30].y < lm[33].y && lm[33].y < lm[51].y);
        assert!(lm[51].y < lm[62].y && lm[62].y < lm[57].y && lm[57].y < lm[8].y);
        // Jaw from image-left to image-right; left eye corner order 36 (outer) .. 39 (inner).
        assert!((0..16).all(|i| lm[i].x < lm[i + 1].x));
        assert!(lm[36].x < lm[39].x && lm[42].x < lm[45].x);
    }

    #[test]
    fn neutral_is_symmetric_for_any_identity() {
        let mut rng = crate::random::image_rng(2, crate::random::Split::Train, 4);
        let shape = FaceShape::sample(&mut rng, 1.5);
        let lm = neutral_landmarks(&shape);
        for &(l, r) in &MIRROR_PAIRS {
            assert!((lm[l].x + lm[r].x).abs() < 1e-5 && (lm[l].y - lm[r].y).abs() < 1e-5);
        }
        // Closed lips.
        assert_eq!(lm[62], lm[66]);
    }

    #[test]
    fn au26_opens_jaw() {
        let (n, j) = (with(&[]), with(&[(25, 0.8), (26, 1.0)]));
        let d = |lm: &Landmarks| lm[8].y - mouth_centre(lm).y;
        assert!(d(&j) > d(&n) + 0.1, "mouth-chin {} -> {}", d(&n), d(&j));
        assert!(j[66].y - j[62].y > 0.2, "lips apart");
        assert!(j[8].y > n[8].y + 0.25);
    }

    #[test]
    fn au12_raises_and_widens_corners() {
        let (n, s) = (with(&[]), with(&[(12, 1.0)]));
        let rel = |lm: &Landmarks| mouth_centre(lm).y - (lm[48].y + lm[54].y) / 2.0;
        assert!(rel(&s) > rel(&n) + 0.07, "corner height {} -> {}", rel(&n), rel(&s));
        assert!(s[54].x - s[48].x > n[54].x - n[48].x + 0.1);
    }

    #[test]
    fn au15_lowers_corners() {
        let (n, s) = (with(&[]), with(&[(15, 1.0)]));
        let rel = |lm: &Landmarks| (lm[48].y + lm[54].y) / 2.0 - mouth_centre(lm).y;
        assert!(rel(&s) > rel(&n) + 0.06);
    }

    #[test]
    fn au4_draws_brows_together_and_down() {
        let (n, b) = (with(&[]), with(&[(4, 1.0)]));
        assert!(b[22].x - b[21].x < n[22].x - n[21].x - 0.1);
        assert!(b[21].y > n[21].y + 0.1);
    }

    #[test]
    fn brow_raisers() {
        let n = with(&[]);
        let inner = with(&[(1, 1.0)]);
        let outer = with(&[(2, 1.0)]);
        // AU1 raises the medial end more than the lateral; AU2 the other way round.
        assert!(n[21].y - inner[21].y > 0.15 && n[17].y - inner[17].y < 0.01);
        assert!(n[17].y - outer[17].y > 0.15 && n[21].y - outer[21].y < 0.03);
    }

    #[test]
    fn lids_open_and_narrow() {
        let opening = |lm: &Landmarks| lm[41].y - lm[37].y + lm[40].y - lm[38].y;
        let n = opening(&with(&[]));
        assert!(opening(&with(&[(5, 1.0)])) > n * 1.7);
        assert!(opening(&with(&[(7, 1.0)])) < n * 0.6);
        assert!(opening(&with(&[(6, 1.0)])) < n * 0.85);
        // Even every closing AU at once keeps the lids apart and ordered.
        let shut = with(&[(4, 1.0), (6, 1.0), (7, 1.0)]);
        assert!(shut[41].y > shut[37].y && shut[40].y > shut[38].y);
    }

    #[test]
    fn mouth_aus() {
        let n = with(&[]);
        let width = |lm: &Landmarks| lm[54].x - lm[48].x;
        let height = |lm: &Landmarks| lm[57].y - lm[51].y;
        assert!(width(&with(&[(20, 1.0)])) > width(&n) + 0.15, "AU20 stretches");
        assert!(height(&with(&[(23, 1.0)])) < height(&n) - 0.06, "AU23 thins");
        assert!(height(&with(&[(24, 1.0)])) < height(&n) - 0.05, "AU24 presses");
        let up = with(&[(10, 1.0)]);
        assert!(up[51].y < n[51].y - 0.07, "AU10 raises the upper lip");
        let nose = with(&[(9, 1.0)]);
        assert!(nose[31].y < n[31].y - 0.04 && nose[51].y < n[51].y - 0.03, "AU9");
        let chin = with(&[(17, 1.0)]);
        assert!(chin[8].y < n[8].y - 0.05 && chin[57].y < n[57].y - 0.05, "AU17");
        let lower = with(&[(16, 1.0), (25, 0.5)]);
        assert!(lower[66].y > with(&[(25, 0.5)])[66].y + 0.05, "AU16");
        // Lip presser closes what lips-part opened.
        let pressed = with(&[(25, 1.0), (24, 1.0)]);
        let parted = with(&[(25, 1.0)]);
        assert!(pressed[66].y - pressed[62].y < 0.3 * (parted[66].y - parted[62].y));
        // Without AU25 the lips stay sealed even under a jaw drop.
        let sealed = with(&[(26, 1.0)]);
        assert_eq!(sealed[62], sealed[66]);
    }

    #[test]
    fn pose_transform_matches_apply() {
        let pose = Pose { roll: 0.3, scale: 40.0, origin: Pt::new(80.0, 70.0) };
        let t = pose.transform();
        for p in [Pt::new(0.0, 0.0), Pt::new(1.0, 0.5), Pt::new(-0.3, 1.6)] {
            let mut q = tiny_skia::Point::from_xy(p.x, p.y);
            t.map_point(&mut q);
            let a = pose.apply(p);
            assert!((q.x - a.x).abs() < 1e-4 && (q.y - a.y).abs() < 1e-4);
        }
    }
}

//! Draws one face from its 68 landmarks with `tiny-skia` (anti-aliased paths in face units under
//! the pose transform), adds the appearance cues by which FACS coders recognise each AU, and
//! returns the image with its true landmarks, face box and AU intensities.
//!
//! The landmarks written for an image are exactly the points the features were drawn through
//! (after pose), so they are ground truth for the docs/METHOD.md section 5 crop and AU centres.

use aue_core::{NUM_AUS, au_index};
use image::RgbImage;
use tiny_skia::{
    FillRule, GradientStop, LineCap, LinearGradient, Mask, Paint, Path, PathBuilder, Pixmap,
    RadialGradient, Rect, Shader, SpreadMode, Stroke, Transform,
};

use crate::appearance::{Appearance, Clutter, HairStyle, Rgb, Scene};
use crate::difficulty::Difficulty;
use crate::error::{Result, SynthError};
use crate::geometry::{
    FaceShape, Landmarks, NUM_LANDMARKS, Pose, Pt, apply_aus, neutral_landmarks,
};
use crate::post;
use crate::random::Draw;

/// Nominal scale: pixels per face unit as a fraction of the image side (the jaw is then about
/// 0.4 of the image wide, and the detector box about 0.43).
const NOMINAL_SCALE: f32 = 0.2;

/// Face-unit point that is put at the image position chosen by the pose (centre of the landmarks).
const FACE_CENTRE: Pt = Pt::new(0.0, 0.66);

/// Everything that decides one picture: who, which AUs, where, in what scene.
#[derive(Debug, Clone, PartialEq)]
pub struct FaceParams {
    /// Image side in pixels (square images).
    pub size: u32,
    /// AU intensities in AU order (docs/METHOD.md section 1), 0 = absent.
    pub aus: [f32; NUM_AUS],
    pub shape: FaceShape,
    pub look: Appearance,
    pub pose: Pose,
    pub scene: Scene,
    /// Independent per-landmark offsets (natural asymmetry), face units.
    pub jitter: Landmarks,
    /// Detector-box edge offsets (x1, y1, x2, y2) as fractions of the box side.
    pub box_jitter: [f32; 4],
    /// Multiplies every AU's landmark motion.
    pub au_gain: f32,
    /// Multiplies the opacity of AU appearance cues.
    pub cue_strength: f32,
}

impl FaceParams {
    /// Draws identity, pose and scene for a face showing `aus` in an image of side `size`.
    pub fn sample(size: u32, aus: [f32; NUM_AUS], d: &Difficulty, rng: &mut impl Draw) -> Self {
        let shape = FaceShape::sample(rng, d.identity_spread);
        let look = Appearance::sample(rng);
        let s = size as f32;
        let roll = (rng.unit() + rng.unit() - 1.0) * d.max_roll_deg.to_radians();
        let scale = s * NOMINAL_SCALE * rng.uniform(d.scale_min, d.scale_max);
        let target = Pt::new(
            s * (0.5 + rng.sym(d.max_shift.max(1e-6))),
            s * (0.53 + rng.sym(d.max_shift.max(1e-6))),
        );
        let mut pose = Pose { roll, scale, origin: Pt::default() };
        pose.origin = target - pose.apply(FACE_CENTRE);
        let scene = Scene::sample(size, d, rng);
        let mut jitter = [Pt::default(); NUM_LANDMARKS];
        for p in &mut jitter {
            *p = Pt::new(rng.normal(), rng.normal()) * d.landmark_jitter;
        }
        let mut box_jitter = [0.0; 4];
        for b in &mut box_jitter {
            *b = rng.sym(d.box_jitter.max(1e-6));
        }
        FaceParams {
            size,
            aus,
            shape,
            look,
            pose,
            scene,
            jitter,
            box_jitter,
            au_gain: d.au_gain,
            cue_strength: d.cue_strength,
        }
    }

    /// The face's landmarks in face units (neutral identity + AU motion + jitter).
    pub fn face_landmarks(&self) -> Landmarks {
        let mut lm = neutral_landmarks(&self.shape);
        apply_aus(&mut lm, &self.aus, self.au_gain);
        for (p, j) in lm.iter_mut().zip(&self.jitter) {
            *p = *p + *j;
        }
        lm
    }
}

/// A rendered face with its ground truth.
#[derive(Debug, Clone)]
pub struct RenderedFace {
    pub image: RgbImage,
    /// The 68 landmarks in image pixels.
    pub landmarks: [[f32; 2]; NUM_LANDMARKS],
    /// Face box (x1, y1, x2, y2) in image pixels, inside the image.
    pub bbox: [f32; 4],
    /// AU intensities in AU order, 0 = absent.
    pub aus: [f32; NUM_AUS],
}

/// Samples identity, pose and scene, and renders a face showing `aus` (image side `size`).
pub fn render_face(
    size: u32,
    aus: [f32; NUM_AUS],
    d: &Difficulty,
    rng: &mut impl Draw,
) -> Result<RenderedFace> {
    let params = FaceParams::sample(size, aus, d, rng);
    render(&params, rng)
}

/// Renders a fully specified face; `rng` only drives the pixel noise.
pub fn render(params: &FaceParams, rng: &mut impl Draw) -> Result<RenderedFace> {
    let size = params.size;
    let s = size as f32;
    let face = params.face_landmarks();
    let neutral = neutral_landmarks(&params.shape);

    // Keep the whole landmark set inside the image: shift the pose if the draw pushed it out.
    let mut pose = params.pose;
    let (lo, hi) = extent(&face.map(|p| pose.apply(p)));
    let margin = 1.0;
    let fit = |lo: f32, hi: f32| {
        if hi - lo > s - 2.0 * margin {
            (s - lo - hi) / 2.0
        } else if lo < margin {
            margin - lo
        } else if hi > s - margin {
            s - margin - hi
        } else {
            0.0
        }
    };
    pose.origin = pose.origin + Pt::new(fit(lo.x, hi.x), fit(lo.y, hi.y));
    let image_lm = face.map(|p| pose.apply(p));

    let mut pixmap = Pixmap::new(size, size).ok_or(SynthError::Canvas { size })?;
    let mut cv = Canvas { pm: &mut pixmap, tf: pose.transform(), size };
    draw_background(&mut cv, &params.scene);
    draw_head(&mut cv, &params.shape, &params.look, &face);
    let cues = Cues::new(&params.aus, params.cue_strength);
    draw_skin_cues(&mut cv, &params.look, &face, &neutral, &cues);
    draw_nose(&mut cv, &params.look, &face);
    for side in [Side::Left, Side::Right] {
        draw_eye(&mut cv, &params.look, &face, &neutral, side);
        draw_brow(&mut cv, &params.shape, &params.look, &face, side);
    }
    draw_mouth(&mut cv, &params.look, &face);
    if let Some((centre, r, colour)) = params.scene.occluder {
        let path = PathBuilder::from_circle(centre.x, centre.y, r);
        cv.fill_opt(path.as_ref(), colour, 1.0);
    }

    let mut image = post::to_rgb(&pixmap);
    post::apply_light(&mut image, params.scene.light_angle, params.scene.light_strength);
    post::gaussian_blur(&mut image, params.scene.blur_sigma);
    post::add_noise(&mut image, params.scene.noise_sigma, rng);

    Ok(RenderedFace {
        image,
        landmarks: image_lm.map(|p| [p.x, p.y]),
        bbox: face_box(&image_lm, &params.box_jitter, s),
        aus: params.aus,
    })
}

/// Lowest and highest coordinates of a point set.
fn extent(pts: &[Pt]) -> (Pt, Pt) {
    let mut lo = Pt::new(f32::INFINITY, f32::INFINITY);
    let mut hi = Pt::new(f32::NEG_INFINITY, f32::NEG_INFINITY);
    for p in pts {
        lo = Pt::new(lo.x.min(p.x), lo.y.min(p.y));
        hi = Pt::new(hi.x.max(p.x), hi.y.max(p.y));
    }
    (lo, hi)
}

/// A face detector's box: square around the landmarks' extent with a margin, nudged up to take in
/// some forehead, jittered per edge, clipped to the image.
fn face_box(lm: &[Pt; NUM_LANDMARKS], jitter: &[f32; 4], s: f32) -> [f32; 4] {
    let (lo, hi) = extent(lm);
    let side = (hi.x - lo.x).max(hi.y - lo.y) * 1.08;
    let c = lo.mid(hi) - Pt::new(0.0, 0.04 * side);
    let raw = [
        c.x - side / 2.0 + jitter[0] * side,
        c.y - side / 2.0 + jitter[1] * side,
        c.x + side / 2.0 + jitter[2] * side,
        c.y + side / 2.0 + jitter[3] * side,
    ];
    raw.map(|v| v.clamp(0.0, s))
}

/// The pixmap being drawn and the face-units-to-pixels transform.
struct Canvas<'a> {
    pm: &'a mut Pixmap,
    tf: Transform,
    size: u32,
}

fn paint_of(colour: Rgb, alpha: f32) -> Paint<'static> {
    let mut p = Paint { anti_alias: true, ..Paint::default() };
    p.set_color(colour.with_alpha(alpha));
    p
}

impl Canvas<'_> {
    fn fill(&mut self, path: &Path, colour: Rgb, alpha: f32) {
        if alpha > 0.003 {
            self.pm.fill_path(path, &paint_of(colour, alpha), FillRule::Winding, self.tf, None);
        }
    }

    fn fill_opt(&mut self, path: Option<&Path>, colour: Rgb, alpha: f32) {
        if let Some(p) = path {
            self.fill(p, colour, alpha);
        }
    }

    fn fill_masked(&mut self, path: Option<&Path>, colour: Rgb, alpha: f32, mask: &Mask) {
        if let Some(p) = path {
            let paint = paint_of(colour, alpha);
            self.pm.fill_path(p, &paint, FillRule::Winding, self.tf, Some(mask));
        }
    }

    fn shade(&mut self, path: Option<&Path>, shader: Option<Shader<'static>>) {
        if let (Some(p), Some(shader)) = (path, shader) {
            let paint = Paint { shader, anti_alias: true, ..Paint::default() };
            self.pm.fill_path(p, &paint, FillRule::Winding, self.tf, None);
        }
    }

    fn stroke(&mut self, path: Option<&Path>, colour: Rgb, alpha: f32, width: f32) {
        if let Some(p) = path
            && alpha > 0.003
        {
            let stroke = Stroke { width, line_cap: LineCap::Round, ..Stroke::default() };
            self.pm.stroke_path(p, &paint_of(colour, alpha), &stroke, self.tf, None);
        }
    }

    /// A mask of `path` (face units) for clipping the eyes' and mouth's interiors.
    fn mask(&self, path: Option<&Path>) -> Option<Mask> {
        let mut m = Mask::new(self.size, self.size)?;
        m.fill_path(path?, FillRule::Winding, true, self.tf);
        Some(m)
    }
}

/// Appends a Catmull-Rom spline through `pts` (cubic Bezier pieces); `start` begins a new
/// subpath, otherwise the spline joins the current point with a line.
fn spline(pb: &mut PathBuilder, pts: &[Pt], start: bool) {
    let Some(&first) = pts.first() else { return };
    if start {
        pb.move_to(first.x, first.y);
    } else {
        pb.line_to(first.x, first.y);
    }
    let n = pts.len();
    for i in 0..n.saturating_sub(1) {
        let p0 = pts[i.saturating_sub(1)];
        let (p1, p2) = (pts[i], pts[i + 1]);
        let p3 = pts[(i + 2).min(n - 1)];
        let c1 = p1 + (p2 - p0) * (1.0 / 6.0);
        let c2 = p2 - (p3 - p1) * (1.0 / 6.0);
        pb.cubic_to(c1.x, c1.y, c2.x, c2.y, p2.x, p2.y);
    }
}

/// An open smooth curve through `pts`.
fn curve(pts: &[Pt]) -> Option<Path> {
    let mut pb = PathBuilder::new();
    spline(&mut pb, pts, true);
    pb.finish()
}

/// A closed smooth curve through `pts` (wrapping tangents, no corners).
fn closed_curve(pts: &[Pt]) -> Option<Path> {
    let n = pts.len();
    let mut pb = PathBuilder::new();
    pb.move_to(pts.first()?.x, pts[0].y);
    for i in 0..n {
        let (p0, p1, p2, p3) = (pts[(i + n - 1) % n], pts[i], pts[(i + 1) % n], pts[(i + 2) % n]);
        let c1 = p1 + (p2 - p0) * (1.0 / 6.0);
        let c2 = p2 - (p3 - p1) * (1.0 / 6.0);
        pb.cubic_to(c1.x, c1.y, c2.x, c2.y, p2.x, p2.y);
    }
    pb.close();
    pb.finish()
}

/// Polygon with straight edges.
fn polygon(pts: &[Pt]) -> Option<Path> {
    let mut pb = PathBuilder::new();
    pb.move_to(pts.first()?.x, pts[0].y);
    for p in &pts[1..] {
        pb.line_to(p.x, p.y);
    }
    pb.close();
    pb.finish()
}

/// Ellipse with centre `c`, radii `rx`, `ry`.
fn ellipse(c: Pt, rx: f32, ry: f32) -> Option<Path> {
    let mut pb = PathBuilder::new();
    pb.push_oval(Rect::from_xywh(c.x - rx, c.y - ry, 2.0 * rx, 2.0 * ry)?);
    pb.finish()
}

/// Soft elliptical spot: `colour` at `alpha` in the centre fading to nothing at the rim.
fn soft_spot(cv: &mut Canvas, c: Pt, rx: f32, ry: f32, colour: Rgb, alpha: f32) {
    if alpha <= 0.003 {
        return;
    }
    let stops = vec![
        GradientStop::new(0.0, colour.with_alpha(alpha)),
        GradientStop::new(1.0, colour.with_alpha(0.0)),
    ];
    // A unit circle at the origin, stretched and moved onto the ellipse.
    let ts = Transform::from_row(rx, 0.0, 0.0, ry, c.x, c.y);
    cv.shade(ellipse(c, rx, ry).as_ref(), unit_radial(stops, ts));
}

fn draw_background(cv: &mut Canvas, scene: &Scene) {
    let s = cv.size as f32;
    post::fill_linear(cv.pm, Pt::new(0.0, 0.0), Pt::new(0.3 * s, s), scene.bg_top, scene.bg_bottom);
    for c in &scene.clutter {
        match *c {
            Clutter::Rect { centre, w, h, angle, colour, alpha } => {
                let Some(rect) = Rect::from_xywh(-w / 2.0, -h / 2.0, w, h) else { continue };
                let ts =
                    Transform::from_rotate(angle.to_degrees()).post_translate(centre.x, centre.y);
                let paint = paint_of(colour, alpha);
                cv.pm.fill_rect(rect, &paint, ts, None);
            }
            Clutter::Disc { centre, r, colour, alpha } => {
                if let Some(p) = PathBuilder::from_circle(centre.x, centre.y, r) {
                    cv.pm.fill_path(
                        &p,
                        &paint_of(colour, alpha),
                        FillRule::Winding,
                        Transform::identity(),
                        None,
                    );
                }
            }
            Clutter::Bar { a, b, width, colour, alpha } => {
                let mut pb = PathBuilder::new();
                pb.move_to(a.x, a.y);
                pb.line_to(b.x, b.y);
                if let Some(p) = pb.finish() {
                    let stroke = Stroke { width, ..Stroke::default() };
                    cv.pm.stroke_path(
                        &p,
                        &paint_of(colour, alpha),
                        &stroke,
                        Transform::identity(),
                        None,
                    );
                }
            }
        }
    }
}

/// The outline of the head: the jaw landmarks, then the skull over the top.
fn head_outline(shape: &FaceShape, lm: &Landmarks) -> Option<Path> {
    let mut pb = PathBuilder::new();
    spline(&mut pb, &lm[0..=16], true);
    let (r, l) = (lm[16], lm[0]);
    let top = Pt::new(0.0, -shape.forehead);
    // Quarter ellipses (Bezier constant 0.5523) from the ear-level jaw points over the skull.
    let k = 0.5523;
    pb.cubic_to(r.x * 1.02, r.y + (top.y - r.y) * k, r.x * k, top.y, top.x, top.y);
    pb.cubic_to(l.x * k, top.y, l.x * 1.02, l.y + (top.y - l.y) * k, l.x, l.y);
    pb.close();
    pb.finish()
}

/// Hair behind the head (the part that frames the face), face units.
fn back_hair(shape: &FaceShape, style: HairStyle) -> Option<Path> {
    let w = shape.half_width;
    let (side_w, bottom) = match style {
        HairStyle::Bald => return None,
        HairStyle::Short => (1.06 * w, 0.1),
        HairStyle::Medium => (1.16 * w, 1.25),
        HairStyle::Long => (1.24 * w, 2.7),
    };
    let top = -(shape.forehead + 0.14);
    let k = 0.5523;
    let shoulder = -0.15;
    let mut pb = PathBuilder::new();
    pb.move_to(-side_w, bottom);
    pb.line_to(-side_w * 1.02, shoulder);
    pb.cubic_to(-side_w * 1.03, shoulder + (top - shoulder) * k, -side_w * k, top, 0.0, top);
    pb.cubic_to(
        side_w * k,
        top,
        side_w * 1.03,
        shoulder + (top - shoulder) * k,
        side_w * 1.02,
        shoulder,
    );
    pb.line_to(side_w, bottom);
    pb.quad_to(0.0, bottom + 0.15, -side_w, bottom);
    pb.close();
    pb.finish()
}

/// Hair over the forehead: between the skull outline and the hairline.
fn front_hair(shape: &FaceShape, look: &Appearance) -> Option<Path> {
    let w = shape.half_width;
    let top = -(shape.forehead + 0.1);
    let hl = -shape.forehead * look.hairline;
    let px = look.parting * 0.5 * w;
    let k = 0.5523;
    let temple = -0.1;
    let mut pb = PathBuilder::new();
    // Outer edge over the skull, image-left temple to image-right temple.
    pb.move_to(-1.05 * w, temple);
    pb.cubic_to(-1.06 * w, temple + (top - temple) * k, -w * k, top, 0.0, top);
    pb.cubic_to(w * k, top, 1.06 * w, temple + (top - temple) * k, 1.05 * w, temple);
    // Hairline back, right to left.
    let hairline: Vec<Pt> = if look.fringe {
        // A fringe with a ragged lower edge, always above the highest a raised brow reaches.
        let base = -0.7;
        let mut v = vec![Pt::new(0.96 * w, temple), Pt::new(0.9 * w, -0.45)];
        for i in 0..=8 {
            let x = 0.8 * w - 1.6 * w * i as f32 / 8.0;
            let dip = if i % 2 == 0 { 0.0 } else { 0.06 };
            v.push(Pt::new(x, base + dip - 0.05 * (x / w).powi(2)));
        }
        v.extend([Pt::new(-0.9 * w, -0.45), Pt::new(-0.96 * w, temple)]);
        v
    } else {
        vec![
            Pt::new(0.96 * w, temple),
            Pt::new(0.88 * w, -0.6),
            Pt::new(0.55 * w, hl * 0.97),
            Pt::new(px, hl * 1.04),
            Pt::new(-0.55 * w, hl * 0.97),
            Pt::new(-0.88 * w, -0.6),
            Pt::new(-0.96 * w, temple),
        ]
    };
    spline(&mut pb, &hairline, false);
    pb.close();
    pb.finish()
}

fn draw_head(cv: &mut Canvas, shape: &FaceShape, look: &Appearance, lm: &Landmarks) {
    let w = shape.half_width;
    let skin = look.skin;
    // Hair behind the head.
    let back = back_hair(shape, look.hair_style);
    cv.fill_opt(back.as_ref(), look.hair.scale(0.85), 1.0);
    // Neck, with the shadow under the jaw.
    let neck = polygon(&[
        Pt::new(-0.5 * w, 0.8),
        Pt::new(0.5 * w, 0.8),
        Pt::new(0.56 * w, 2.8),
        Pt::new(-0.56 * w, 2.8),
    ]);
    cv.fill_opt(neck.as_ref(), skin.scale(0.86), 1.0);
    let stops = vec![
        GradientStop::new(0.0, skin.scale(0.5).with_alpha(0.7)),
        GradientStop::new(1.0, skin.scale(0.5).with_alpha(0.0)),
    ];
    let jaw_y = lm[8].y;
    let shader = LinearGradient::new(
        tiny_skia::Point::from_xy(0.0, jaw_y - 0.2),
        tiny_skia::Point::from_xy(0.0, jaw_y + 0.45),
        stops,
        SpreadMode::Pad,
        Transform::identity(),
    );
    cv.shade(neck.as_ref(), shader);
    // Clothes over the shoulders, with a rounded neckline.
    let mut pb = PathBuilder::new();
    pb.move_to(-3.2, 5.0);
    pb.line_to(-3.2, 2.9);
    pb.cubic_to(-2.8, 2.25, -1.4, 2.15, -0.6 * w, 2.1);
    pb.quad_to(0.0, 2.55, 0.6 * w, 2.1);
    pb.cubic_to(1.4, 2.15, 2.8, 2.25, 3.2, 2.9);
    pb.line_to(3.2, 5.0);
    pb.close();
    cv.fill_opt(pb.finish().as_ref(), look.clothes, 1.0);
    // Ears.
    for side in [-1.0f32, 1.0] {
        let c = Pt::new(side * (w + 0.02), 0.27);
        cv.fill_opt(ellipse(c, 0.13, 0.27).as_ref(), skin.scale(0.93), 1.0);
        let inner = curve(&[
            Pt::new(c.x + side * 0.02, c.y - 0.17),
            Pt::new(c.x + side * 0.07, c.y - 0.02),
            Pt::new(c.x + side * 0.02, c.y + 0.15),
        ]);
        cv.stroke(inner.as_ref(), skin.scale(0.6), 0.5, 0.03);
    }
    // Face and forehead with a soft radial shading (lit centre, darker rim).
    let head = head_outline(shape, lm);
    cv.fill_opt(head.as_ref(), skin, 1.0);
    let stops = vec![
        GradientStop::new(0.0, skin.scale(1.06).with_alpha(1.0)),
        GradientStop::new(0.6, skin.with_alpha(1.0)),
        GradientStop::new(1.0, skin.scale(0.8).with_alpha(1.0)),
    ];
    let ts = Transform::from_row(1.15 * w, 0.0, 0.0, 1.75, 0.0, 0.1);
    cv.shade(head.as_ref(), unit_radial(stops, ts));
    // Cheeks' colour.
    for side in [-1.0f32, 1.0] {
        soft_spot(cv, Pt::new(side * 0.5, 0.45), 0.25, 0.17, Rgb::from_u8(210, 90, 90), look.blush);
    }
    // Hair over the forehead, with a few strands for texture.
    if look.hair_style != HairStyle::Bald {
        cv.fill_opt(front_hair(shape, look).as_ref(), look.hair, 1.0);
        let px = look.parting * 0.5 * w;
        let top = -(shape.forehead + 0.05);
        for i in 0..5 {
            let t = i as f32 / 4.0;
            let end_x = (-0.9 + 1.8 * t) * w;
            let strand = curve(&[
                Pt::new(px, top + 0.05),
                Pt::new((px + end_x) / 2.0, top + 0.1 + 0.1 * (1.0 - (2.0 * t - 1.0).abs())),
                Pt::new(end_x, -shape.forehead * look.hairline * 0.9),
            ]);
            cv.stroke(strand.as_ref(), look.hair.scale(0.6), 0.35, 0.025);
        }
    }
}

/// Opacities of the AU appearance cues (intensity times cue strength).
struct Cues {
    a: [f32; NUM_AUS],
}

impl Cues {
    fn new(aus: &[f32; NUM_AUS], strength: f32) -> Self {
        Cues { a: aus.map(|v| (v * strength).clamp(0.0, 1.0)) }
    }

    fn au(&self, n: u8) -> f32 {
        au_index(n).map_or(0.0, |i| self.a[i])
    }
}

/// Wrinkles, folds and bulges (drawn on the skin before the features).
fn draw_skin_cues(
    cv: &mut Canvas,
    look: &Appearance,
    lm: &Landmarks,
    neutral: &Landmarks,
    c: &Cues,
) {
    let crease = look.skin.scale(0.55);
    let light = look.skin.scale(1.15);
    let (a1, a2, a4, a6, a7, a9) = (c.au(1), c.au(2), c.au(4), c.au(6), c.au(7), c.au(9));
    let (a10, a12, a15, a17, a20, a24) =
        (c.au(10), c.au(12), c.au(15), c.au(17), c.au(20), c.au(24));

    // AU1 / AU2: horizontal forehead furrows above the raised brows; AU1's are medial and bow up
    // in the middle, AU2's run across the forehead.
    let brow_y = (lm[19].y + lm[24].y + lm[21].y + lm[22].y) / 4.0;
    for (strength, span, bow) in [(a1, 0.38, -0.035), (a2, 0.72, -0.01)] {
        for k in 0..3 {
            let y = brow_y - 0.17 - 0.1 * k as f32;
            let pts: Vec<Pt> = (0..=6)
                .map(|i| {
                    let x = span * (i as f32 / 3.0 - 1.0);
                    Pt::new(x, y + bow * (1.0 - (x / span).powi(2)))
                })
                .collect();
            cv.stroke(curve(&pts).as_ref(), crease, 0.6 * strength * (1.0 - 0.2 * k as f32), 0.022);
        }
    }
    // AU4: vertical furrows and a shadow between the lowered, gathered brows.
    let glabella = lm[21].mid(lm[22]);
    soft_spot(cv, glabella + Pt::new(0.0, 0.04), 0.14, 0.1, crease, 0.35 * a4);
    for side in [-1.0f32, 1.0] {
        let x = glabella.x + side * 0.045;
        let line = curve(&[
            Pt::new(x + side * 0.01, glabella.y - 0.12),
            Pt::new(x, glabella.y - 0.03),
            Pt::new(x - side * 0.005, glabella.y + 0.06),
        ]);
        cv.stroke(line.as_ref(), crease, 0.7 * a4, 0.022);
    }
    // AU9: transverse wrinkles across the nose root and oblique lines on its sides.
    for k in 0..3 {
        let y = lm[27].y + 0.05 + 0.05 * k as f32;
        let line =
            curve(&[Pt::new(-0.09, y + 0.01), Pt::new(0.0, y - 0.012), Pt::new(0.09, y + 0.01)]);
        cv.stroke(line.as_ref(), crease, 0.7 * a9, 0.02);
    }
    for side in [-1.0f32, 1.0] {
        let line =
            curve(&[Pt::new(side * 0.08, lm[28].y - 0.02), Pt::new(side * 0.17, lm[29].y + 0.03)]);
        cv.stroke(line.as_ref(), crease, 0.5 * a9, 0.02);
    }
    for side in [Side::Left, Side::Right] {
        let f = side.flip();
        let (outer, lower) = (lm[side.eye()[0]], [lm[side.eye()[4]], lm[side.eye()[5]]]);
        // AU6: crow's feet fanning from the outer eye corner, a raised cheek (highlight with the
        // infraorbital furrow below the lower lid).
        for (k, angle) in [-0.45f32, 0.0, 0.45].iter().enumerate() {
            let dir = Pt::new(f * angle.cos(), angle.sin());
            let start = outer + dir * 0.05;
            let line = curve(&[start, start + dir * (0.1 + 0.02 * k as f32)]);
            cv.stroke(line.as_ref(), crease, 0.65 * a6, 0.018);
        }
        let cheek = Pt::new(f * 0.5, 0.34);
        soft_spot(cv, cheek, 0.26, 0.17, light, 0.55 * a6.max(0.6 * a12));
        soft_spot(cv, cheek + Pt::new(0.0, 0.2), 0.3, 0.12, crease, 0.18 * a6.max(0.6 * a12));
        let furrow: Vec<Pt> = [lm[side.eye()[3]], lower[0], lower[1], outer]
            .iter()
            .map(|p| *p + Pt::new(0.0, 0.06))
            .collect();
        cv.stroke(curve(&furrow).as_ref(), crease, 0.55 * a6.max(0.7 * a7), 0.02);
        // Nasolabial fold: faint on every face, deepened by AU9, AU10 and AU12.
        let wing = lm[side.nostril()];
        let corner = lm[side.mouth_corner()];
        let depth = (0.6 * a10.max(0.9 * a12).max(0.8 * a9)).max(0.12);
        let fold = curve(&[
            wing + Pt::new(f * 0.06, -0.05),
            Pt::new(wing.x + f * 0.14, (wing.y + corner.y) / 2.0),
            corner + Pt::new(f * 0.1, 0.1),
        ]);
        cv.stroke(fold.as_ref(), crease, depth, 0.022 + 0.02 * depth);
        let bulge = curve(&[
            wing + Pt::new(f * 0.12, -0.02),
            Pt::new(wing.x + f * 0.22, (wing.y + corner.y) / 2.0 - 0.03),
        ]);
        cv.stroke(bulge.as_ref(), light, 0.5 * a12.max(a10 * 0.6), 0.06);
        // AU12: a dimple lateral to the corner. AU15: a shadow under the lowered corner.
        let dimple = corner + Pt::new(f * 0.07, 0.01);
        soft_spot(cv, dimple, 0.025, 0.03, crease, 0.6 * a12);
        let down = curve(&[corner + Pt::new(f * 0.02, 0.03), corner + Pt::new(f * 0.05, 0.14)]);
        cv.stroke(down.as_ref(), crease, 0.6 * a15, 0.022);
        soft_spot(cv, corner + Pt::new(f * 0.05, 0.1), 0.09, 0.08, crease, 0.35 * a15);
        // AU20: vertical stretch lines beside the stretched corners.
        let stretch = curve(&[corner + Pt::new(f * 0.06, -0.06), corner + Pt::new(f * 0.08, 0.07)]);
        cv.stroke(stretch.as_ref(), crease, 0.5 * a20, 0.018);
    }
    // AU17: the chin boss bulges (highlight) and dimples, the mentolabial furrow deepens.
    let chin = lm[57].lerp(lm[8], 0.6);
    soft_spot(cv, chin, 0.2, 0.13, light, 0.45 * a17);
    for (dx, dy) in [(-0.06, -0.03), (0.05, -0.04), (-0.02, 0.03), (0.07, 0.03), (0.0, -0.01)] {
        soft_spot(cv, chin + Pt::new(dx, dy), 0.018, 0.018, crease, 0.6 * a17);
    }
    let sulcus_y = lm[57].y + 0.07;
    let sulcus = curve(&[
        Pt::new(lm[58].x - 0.04, sulcus_y - 0.02),
        Pt::new(lm[57].x, sulcus_y + 0.01),
        Pt::new(lm[56].x + 0.04, sulcus_y - 0.02),
    ]);
    cv.stroke(sulcus.as_ref(), crease, 0.15 + 0.5 * a17, 0.025);
    // AU24: the skin bulges above and below the pressed lips.
    let above = curve(&[
        lm[50] + Pt::new(-0.02, -0.06),
        lm[51] + Pt::new(0.0, -0.07),
        lm[52] + Pt::new(0.02, -0.06),
    ]);
    cv.stroke(above.as_ref(), crease, 0.45 * a24, 0.018);
    // Upper lid fold (every face): where the lid meets the orbit, above the lid itself.
    for side in [Side::Left, Side::Right] {
        let e = side.eye();
        let fold: Vec<Pt> = [e[0], e[1], e[2], e[3]]
            .iter()
            .map(|&i| {
                let lift = (neutral[i].y - 0.055).min(lm[i].y - 0.03);
                Pt::new(lm[i].x, lift)
            })
            .collect();
        cv.stroke(curve(&fold).as_ref(), crease, 0.35, 0.018);
    }
}

/// Which half of the face (image-left = the subject's right).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Left,
    Right,
}

impl Side {
    /// -1 for image-left, +1 for image-right (the outward x direction).
    fn flip(self) -> f32 {
        match self {
            Side::Left => -1.0,
            Side::Right => 1.0,
        }
    }

    /// Eye landmarks: outer corner, upper outer, upper inner, inner corner, lower inner, lower outer.
    fn eye(self) -> [usize; 6] {
        match self {
            Side::Left => [36, 37, 38, 39, 40, 41],
            Side::Right => [45, 44, 43, 42, 47, 46],
        }
    }

    /// Brow landmarks in increasing x.
    fn brow(self) -> [usize; 5] {
        match self {
            Side::Left => [17, 18, 19, 20, 21],
            Side::Right => [22, 23, 24, 25, 26],
        }
    }

    fn nostril(self) -> usize {
        match self {
            Side::Left => 31,
            Side::Right => 35,
        }
    }

    /// The nostril-base point next to the wing, towards the midline.
    fn nostril_inner(self) -> usize {
        match self {
            Side::Left => 32,
            Side::Right => 34,
        }
    }

    fn mouth_corner(self) -> usize {
        match self {
            Side::Left => 48,
            Side::Right => 54,
        }
    }
}

fn draw_nose(cv: &mut Canvas, look: &Appearance, lm: &Landmarks) {
    let skin = look.skin;
    // Bridge sides and the tip's highlight.
    for side in [-1.0f32, 1.0] {
        let line = curve(&[
            Pt::new(side * 0.07, lm[27].y + 0.08),
            Pt::new(side * 0.08, lm[29].y),
            Pt::new(side * 0.11, lm[30].y - 0.02),
        ]);
        cv.stroke(line.as_ref(), skin.scale(0.75), 0.3, 0.03);
    }
    soft_spot(cv, lm[30] + Pt::new(0.0, 0.02), 0.06, 0.05, skin.scale(1.15), 0.5);
    // Nostril wings (alae) and nostrils.
    for side in [Side::Left, Side::Right] {
        let f = side.flip();
        let (wing, inner) = (lm[side.nostril()], lm[side.nostril_inner()]);
        let ala = curve(&[
            wing + Pt::new(-f * 0.02, -0.08),
            wing + Pt::new(f * 0.025, -0.03),
            wing + Pt::new(-f * 0.005, 0.02),
            inner + Pt::new(0.0, 0.01),
        ]);
        cv.stroke(ala.as_ref(), skin.scale(0.55), 0.55, 0.02);
        let hole = wing.lerp(inner, 0.55) + Pt::new(0.0, -0.012);
        cv.fill_opt(ellipse(hole, 0.04, 0.018).as_ref(), skin.scale(0.3), 0.8);
    }
    let base = curve(&[lm[32], lm[33], lm[34]]);
    cv.stroke(base.as_ref(), skin.scale(0.6), 0.35, 0.02);
}

fn draw_eye(cv: &mut Canvas, look: &Appearance, lm: &Landmarks, neutral: &Landmarks, side: Side) {
    let e = side.eye().map(|i| lm[i]);
    let skin = look.skin;
    let (outer, inner) = (e[0], e[3]);
    let width = outer.dist(inner);
    // Socket shade around the eye.
    let centre = outer.mid(inner);
    soft_spot(cv, centre + Pt::new(0.0, -0.02), width * 0.75, 0.15, skin.scale(0.7), 0.3);
    // The opening: upper lid curve corner to corner, lower lid curve back.
    let mut pb = PathBuilder::new();
    spline(&mut pb, &[e[0], e[1], e[2], e[3]], true);
    spline(&mut pb, &[e[3], e[4], e[5], e[0]], false);
    pb.close();
    let opening = pb.finish();
    cv.fill_opt(opening.as_ref(), Rgb::from_u8(236, 232, 226), 1.0);
    // Iris and pupil, clipped to the opening. The iris centre stays where the neutral eye's
    // centre is (lids move, the eyeball does not), plus the gaze.
    let n = side.eye().map(|i| neutral[i]);
    let r = 0.2 * width;
    let iris_c = Pt::new(
        centre.x + look.gaze.x * width * 0.25,
        (n[1].y + n[2].y + n[4].y + n[5].y) / 4.0 + look.gaze.y * 0.04,
    );
    if let Some(mask) = cv.mask(opening.as_ref()) {
        let iris = PathBuilder::from_circle(iris_c.x, iris_c.y, r);
        cv.fill_masked(iris.as_ref(), look.iris, 1.0, &mask);
        let rim = PathBuilder::from_circle(iris_c.x, iris_c.y, r * 0.95);
        if let Some(p) = rim.as_ref() {
            let stroke = Stroke { width: r * 0.15, ..Stroke::default() };
            let paint = paint_of(look.iris.scale(0.5), 0.8);
            cv.pm.stroke_path(p, &paint, &stroke, cv.tf, Some(&mask));
        }
        let pupil = PathBuilder::from_circle(iris_c.x, iris_c.y, r * 0.45);
        cv.fill_masked(pupil.as_ref(), Rgb::from_u8(10, 8, 8), 1.0, &mask);
        let glint = PathBuilder::from_circle(iris_c.x - r * 0.3, iris_c.y - r * 0.3, r * 0.2);
        cv.fill_masked(glint.as_ref(), Rgb::from_u8(255, 255, 255), 0.85, &mask);
        // Shadow of the upper lid on the eyeball.
        let mut pb = PathBuilder::new();
        spline(&mut pb, &[e[0], e[1], e[2], e[3]], true);
        let drop = Pt::new(0.0, 0.025);
        spline(&mut pb, &[e[3] + drop, e[2] + drop, e[1] + drop, e[0] + drop], false);
        pb.close();
        cv.fill_masked(pb.finish().as_ref(), Rgb::from_u8(60, 40, 40), 0.3, &mask);
    }
    // Lash line on the upper lid, a faint lower lid.
    cv.stroke(curve(&[e[0], e[1], e[2], e[3]]).as_ref(), Rgb::from_u8(25, 18, 18), 0.95, 0.03);
    cv.stroke(curve(&[e[3], e[4], e[5], e[0]]).as_ref(), skin.scale(0.45), 0.55, 0.014);
}

fn draw_brow(cv: &mut Canvas, shape: &FaceShape, look: &Appearance, lm: &Landmarks, side: Side) {
    let c = side.brow().map(|i| lm[i]);
    // Thickness profile from the brow's medial head to its lateral tail.
    let profile = match side {
        Side::Left => [0.45, 0.75, 0.9, 1.0, 1.0],
        Side::Right => [1.0, 1.0, 0.9, 0.75, 0.45],
    };
    let mut upper = Vec::with_capacity(5);
    let mut lower = Vec::with_capacity(5);
    for i in 0..5 {
        let t = c[(i + 1).min(4)] - c[i.saturating_sub(1)];
        let len = (t.x * t.x + t.y * t.y).sqrt().max(1e-6);
        let normal_up = Pt::new(t.y / len, -t.x / len);
        let half = shape.brow_thickness * profile[i] / 2.0;
        upper.push(c[i] + normal_up * half);
        lower.push(c[i] - normal_up * half);
    }
    lower.reverse();
    let mut pts = upper;
    pts.extend(lower);
    cv.fill_opt(closed_curve(&pts).as_ref(), look.brow, 0.95);
}

fn draw_mouth(cv: &mut Canvas, look: &Appearance, lm: &Landmarks) {
    let pts = |idx: &[usize]| idx.iter().map(|&i| lm[i]).collect::<Vec<_>>();
    let gap = lm[66].y - lm[62].y;
    let open = gap > 0.012;
    if open {
        let inner = pts(&[60, 61, 62, 63, 64, 65, 66, 67]);
        let mut pb = PathBuilder::new();
        spline(&mut pb, &inner[0..5], true);
        spline(&mut pb, &[lm[64], lm[65], lm[66], lm[67], lm[60]], false);
        pb.close();
        let cavity = pb.finish();
        cv.fill_opt(cavity.as_ref(), Rgb::from_u8(70, 18, 24), 1.0);
        if let Some(mask) = cv.mask(cavity.as_ref()) {
            let width = lm[64].x - lm[60].x;
            // Tongue low in the mouth.
            let tongue = ellipse(lm[66], 0.3 * width, 0.09);
            cv.fill_masked(tongue.as_ref(), Rgb::from_u8(190, 80, 90), 1.0, &mask);
            // Upper teeth hang from the upper lip; lower teeth show when the jaw drops.
            let teeth = Rgb::from_u8(242, 238, 228);
            let upper: Vec<Pt> = pts(&[60, 61, 62, 63, 64]);
            let mut band = upper.clone();
            band.extend(upper.iter().rev().map(|p| *p + Pt::new(0.0, 0.085)));
            cv.fill_masked(polygon(&band).as_ref(), teeth, 1.0, &mask);
            let mid_line = curve(&[lm[62], lm[62] + Pt::new(0.0, 0.08)]);
            if let Some(p) = mid_line.as_ref() {
                let stroke = Stroke { width: 0.008, ..Stroke::default() };
                let paint = paint_of(Rgb::from_u8(150, 140, 130), 0.6);
                cv.pm.stroke_path(p, &paint, &stroke, cv.tf, Some(&mask));
            }
            if gap > 0.12 {
                let lower: Vec<Pt> = pts(&[60, 67, 66, 65, 64]);
                let mut band = lower.clone();
                band.extend(lower.iter().rev().map(|p| *p + Pt::new(0.0, -0.05)));
                cv.fill_masked(polygon(&band).as_ref(), teeth.scale(0.93), 1.0, &mask);
            }
        }
    }
    // Lips: the upper lip between the outer and inner upper edges, the lower lip likewise.
    let mut pb = PathBuilder::new();
    spline(&mut pb, &pts(&[48, 49, 50, 51, 52, 53, 54]), true);
    spline(&mut pb, &pts(&[64, 63, 62, 61, 60]), false);
    pb.close();
    cv.fill_opt(pb.finish().as_ref(), look.lips.scale(0.92), 1.0);
    let mut pb = PathBuilder::new();
    spline(&mut pb, &pts(&[54, 55, 56, 57, 58, 59, 48]), true);
    spline(&mut pb, &pts(&[60, 67, 66, 65, 64]), false);
    pb.close();
    cv.fill_opt(pb.finish().as_ref(), look.lips, 1.0);
    soft_spot(cv, lm[57].lerp(lm[66], 0.55), 0.08, 0.025, look.lips.scale(1.3), 0.35);
    // The line between the lips, darker at the corners.
    let line_colour = look.lips.scale(0.4);
    cv.stroke(
        curve(&pts(&[60, 61, 62, 63, 64])).as_ref(),
        line_colour,
        if open { 0.5 } else { 0.9 },
        0.02,
    );
    for i in [48, 54] {
        soft_spot(cv, lm[i], 0.03, 0.02, line_colour, 0.6);
    }
}

/// A radial gradient over the unit circle at the origin, placed by `ts` (stretched and moved onto
/// an ellipse), padded beyond its last stop.
fn unit_radial(stops: Vec<GradientStop>, ts: Transform) -> Option<Shader<'static>> {
    let origin = tiny_skia::Point::zero();
    RadialGradient::new(origin, origin, 1.0, stops, SpreadMode::Pad, ts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::difficulty::DifficultyLevel;
    use crate::random::{Split, image_rng};

    #[test]
    fn rendered_face_is_consistent_and_deterministic() {
        let d = Difficulty::preset(DifficultyLevel::Hard);
        let mut aus = [0.0; NUM_AUS];
        aus[au_index(12).unwrap()] = 0.9;
        aus[au_index(25).unwrap()] = 0.5;
        let a = render_face(96, aus, &d, &mut image_rng(1, Split::Train, 2)).unwrap();
        let b = render_face(96, aus, &d, &mut image_rng(1, Split::Train, 2)).unwrap();
        assert_eq!(a.image.as_raw(), b.image.as_raw());
        assert_eq!(a.landmarks, b.landmarks);
        assert_eq!(a.image.dimensions(), (96, 96));
        let [x1, y1, x2, y2] = a.bbox;
        assert!(0.0 <= x1 && x1 < x2 && x2 <= 96.0 && 0.0 <= y1 && y1 < y2 && y2 <= 96.0);
        for [x, y] in a.landmarks {
            assert!((0.0..=96.0).contains(&x) && (0.0..=96.0).contains(&y));
        }
        // Most landmarks fall inside the detector box (its jitter may cut the jaw's edge).
        let inside = a
            .landmarks
            .iter()
            .filter(|[x, y]| (x1..=x2).contains(x) && (y1..=y2).contains(y))
            .count();
        assert!(inside >= 60, "{inside} of 68 inside the box");
        let c = render_face(96, aus, &d, &mut image_rng(1, Split::Train, 3)).unwrap();
        assert_ne!(a.image.as_raw(), c.image.as_raw());
    }

    #[test]
    fn open_mouth_is_dark_inside() {
        // The pixel between the parted lips is darker than the lips' skin surroundings.
        let d = Difficulty::preset(DifficultyLevel::Easy);
        let mut aus = [0.0; NUM_AUS];
        aus[au_index(25).unwrap()] = 1.0;
        aus[au_index(26).unwrap()] = 1.0;
        let mut rng = image_rng(4, Split::Test, 0);
        let mut params = FaceParams::sample(128, aus, &d, &mut rng);
        params.scene.noise_sigma = 0.0;
        params.scene.blur_sigma = 0.0;
        params.scene.light_strength = 0.0;
        params.scene.occluder = None;
        let face = render(&params, &mut rng).unwrap();
        let lm = face.landmarks;
        let mouth = [(lm[62][0] + lm[66][0]) / 2.0, (lm[62][1] * 0.3 + lm[66][1] * 0.7)];
        let cheek = [(lm[2][0] * 0.7 + lm[30][0] * 0.3), lm[30][1]];
        let lum = |p: [f32; 2]| {
            let px = face.image.get_pixel(p[0] as u32, p[1] as u32);
            px.0.iter().map(|&v| f32::from(v)).sum::<f32>()
        };
        assert!(lum(mouth) < 0.7 * lum(cheek), "mouth {} cheek {}", lum(mouth), lum(cheek));
    }
}

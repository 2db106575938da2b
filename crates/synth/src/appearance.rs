//! Identity appearance (skin, hair, eyes, lips, clothes) and the scene around the face
//! (background, clutter, lighting, blur, noise): everything the expression does not change.

use crate::difficulty::Difficulty;
use crate::geometry::Pt;
use crate::random::Draw;

/// A linear-ish RGB colour with components in [0, 1].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rgb {
    pub r: f32,
    pub g: f32,
    pub b: f32,
}

impl Rgb {
    /// From 8-bit components.
    pub const fn from_u8(r: u8, g: u8, b: u8) -> Self {
        Rgb { r: r as f32 / 255.0, g: g as f32 / 255.0, b: b as f32 / 255.0 }
    }

    /// Every component times `k` (clamped later, at paint time).
    pub fn scale(self, k: f32) -> Self {
        Rgb { r: self.r * k, g: self.g * k, b: self.b * k }
    }

    /// `self` at t = 0, `o` at t = 1.
    pub fn mix(self, o: Rgb, t: f32) -> Self {
        Rgb {
            r: self.r + (o.r - self.r) * t,
            g: self.g + (o.g - self.g) * t,
            b: self.b + (o.b - self.b) * t,
        }
    }

    /// Adds independent uniform jitter of +-`a` per component.
    pub fn jitter(self, a: f32, rng: &mut impl Draw) -> Self {
        Rgb { r: self.r + rng.sym(a), g: self.g + rng.sym(a), b: self.b + rng.sym(a) }
    }

    /// A `tiny_skia` colour with opacity `alpha` (components clamped to [0, 1]).
    pub fn with_alpha(self, alpha: f32) -> tiny_skia::Color {
        let c = |v: f32| if v.is_finite() { v.clamp(0.0, 1.0) } else { 0.0 };
        tiny_skia::Color::from_rgba(c(self.r), c(self.g), c(self.b), c(alpha))
            .unwrap_or(tiny_skia::Color::BLACK)
    }
}

/// Six colours from 18 bytes, red, green and blue of each in turn (keeps the colour tables short).
const fn rgb6(bytes: [u8; 18]) -> [Rgb; 6] {
    let mut out = [Rgb::from_u8(0, 0, 0); 6];
    let mut i = 0;
    while i < 6 {
        out[i] = Rgb::from_u8(bytes[3 * i], bytes[3 * i + 1], bytes[3 * i + 2]);
        i += 1;
    }
    out
}

/// Skin tones from light to dark; an identity's tone is interpolated between two neighbours.
const SKIN_TONES: [Rgb; 6] =
    rgb6([250, 221, 196, 236, 192, 160, 214, 164, 126, 180, 126, 90, 134, 88, 60, 92, 60, 42]);

/// Hair colours: black, dark brown, brown, auburn, blond, grey.
const HAIR_COLOURS: [Rgb; 6] =
    rgb6([24, 20, 20, 58, 38, 26, 104, 70, 42, 140, 70, 38, 196, 160, 100, 150, 146, 140]);

/// Iris colours: dark brown, brown, hazel, green, blue, grey.
const IRIS_COLOURS: [Rgb; 6] =
    rgb6([52, 32, 20, 96, 60, 32, 120, 100, 50, 70, 110, 70, 70, 110, 160, 110, 120, 130]);

/// Hair cut (how much of the head and shoulders the hair covers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HairStyle {
    /// No hair drawn (bald or shaved).
    Bald,
    /// Close to the skull.
    Short,
    /// Down to the jaw, framing the face.
    Medium,
    /// Down to the shoulders.
    Long,
}

/// The look of one identity.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Appearance {
    pub skin: Rgb,
    pub hair: Rgb,
    pub brow: Rgb,
    pub iris: Rgb,
    pub lips: Rgb,
    pub clothes: Rgb,
    pub hair_style: HairStyle,
    /// Hairline height above the eye line (face units, positive = higher).
    pub hairline: f32,
    /// Fringe (bangs) hanging over the forehead.
    pub fringe: bool,
    /// Side parting position in [-1, 1] of the head's half-width.
    pub parting: f32,
    /// Gaze offset of the irises, fraction of the eye's half-width / half-height.
    pub gaze: Pt,
    /// Blush/rosiness of the cheeks (opacity).
    pub blush: f32,
}

impl Appearance {
    /// A random identity look.
    pub fn sample(rng: &mut impl Draw) -> Self {
        let t = rng.uniform(0.0, (SKIN_TONES.len() - 1) as f32);
        let i = (t.floor() as usize).min(SKIN_TONES.len() - 2);
        let skin = SKIN_TONES[i].mix(SKIN_TONES[i + 1], t - i as f32).jitter(0.02, rng);
        let hair = HAIR_COLOURS[rng.weighted(&[3.0, 3.0, 2.0, 0.7, 1.2, 0.8])].jitter(0.03, rng);
        // Brows are dark even under light hair (at 64 px they must stay visible), never lighter
        // than the skin.
        let brow = hair.mix(Rgb::from_u8(40, 30, 25), rng.uniform(0.3, 0.7)).scale(0.9);
        let iris = IRIS_COLOURS[rng.weighted(&[4.0, 3.0, 1.0, 0.7, 1.0, 0.5])];
        let lips = skin.mix(Rgb::from_u8(170, 60, 70), rng.uniform(0.35, 0.6)).scale(0.9);
        let clothes = Rgb { r: rng.unit(), g: rng.unit(), b: rng.unit() }.scale(0.8);
        let hair_style = [HairStyle::Bald, HairStyle::Short, HairStyle::Medium, HairStyle::Long]
            [rng.weighted(&[0.6, 3.0, 2.5, 2.5])];
        Appearance {
            skin,
            hair,
            brow,
            iris,
            lips,
            clothes,
            hair_style,
            hairline: rng.uniform(0.72, 0.98),
            fringe: rng.chance(0.3),
            parting: rng.sym(0.6),
            gaze: Pt::new(rng.sym(0.25), rng.sym(0.15)),
            blush: rng.uniform(0.0, 0.25),
        }
    }
}

/// One background clutter shape, in image pixels.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Clutter {
    /// Axis-aligned rectangle (x, y, w, h), rotated by `angle` about its centre.
    Rect { centre: Pt, w: f32, h: f32, angle: f32, colour: Rgb, alpha: f32 },
    /// Disc.
    Disc { centre: Pt, r: f32, colour: Rgb, alpha: f32 },
    /// Thick line segment.
    Bar { a: Pt, b: Pt, width: f32, colour: Rgb, alpha: f32 },
}

/// Everything around the face, in image pixels.
#[derive(Debug, Clone, PartialEq)]
pub struct Scene {
    pub bg_top: Rgb,
    pub bg_bottom: Rgb,
    pub clutter: Vec<Clutter>,
    /// Occluder over the lower face edge: its centre in face units and radius.
    pub occluder: Option<(Pt, f32, Rgb)>,
    /// Direction the light comes from (radians, image frame).
    pub light_angle: f32,
    /// Opacity of the light/shade gradient.
    pub light_strength: f32,
    /// Blur sigma, pixels.
    pub blur_sigma: f32,
    /// Pixel noise standard deviation, 8-bit levels.
    pub noise_sigma: f32,
}

impl Scene {
    /// A random scene for an image of side `size` pixels.
    pub fn sample(size: u32, d: &Difficulty, rng: &mut impl Draw) -> Self {
        let s = size as f32;
        let muted = |rng: &mut dyn rand::RngCore| {
            let grey = rng.uniform(0.25, 0.85);
            Rgb { r: grey, g: grey, b: grey }
                .mix(Rgb { r: rng.unit(), g: rng.unit(), b: rng.unit() }, rng.uniform(0.1, 0.6))
        };
        let bg_top = muted(rng);
        let bg_bottom = bg_top.mix(muted(rng), rng.uniform(0.2, 0.8));
        let n = d.clutter_min + rng.index((d.clutter_max - d.clutter_min + 1) as usize) as u32;
        let mut clutter = Vec::with_capacity(n as usize);
        for _ in 0..n {
            let centre = Pt::new(rng.uniform(0.0, s), rng.uniform(0.0, s));
            let colour = muted(rng);
            let alpha = rng.uniform(0.35, 0.9);
            clutter.push(match rng.index(3) {
                0 => Clutter::Rect {
                    centre,
                    w: rng.uniform(0.05, 0.45) * s,
                    h: rng.uniform(0.05, 0.45) * s,
                    angle: rng.sym(0.6),
                    colour,
                    alpha,
                },
                1 => Clutter::Disc { centre, r: rng.uniform(0.03, 0.2) * s, colour, alpha },
                _ => {
                    let angle = rng.uniform(0.0, std::f32::consts::TAU);
                    let len = rng.uniform(0.2, 0.8) * s;
                    let half = Pt::new(angle.cos(), angle.sin()) * (len / 2.0);
                    Clutter::Bar {
                        a: centre - half,
                        b: centre + half,
                        width: rng.uniform(0.01, 0.05) * s,
                        colour,
                        alpha,
                    }
                }
            });
        }
        // Drawn always, used only with probability occluder_prob: keeps the stream aligned.
        let occ_on = rng.chance(d.occluder_prob);
        let side = if rng.chance(0.5) { -1.0 } else { 1.0 };
        let occ_centre = Pt::new(side * rng.uniform(0.75, 1.1), rng.uniform(0.9, 1.6));
        let occ_r = rng.uniform(0.25, 0.4);
        let occ_colour = muted(rng);
        Scene {
            bg_top,
            bg_bottom,
            clutter,
            occluder: occ_on.then_some((occ_centre, occ_r, occ_colour)),
            light_angle: rng.uniform(0.0, std::f32::consts::TAU),
            light_strength: rng.uniform(0.3, 1.0) * d.lighting,
            blur_sigma: rng.uniform(0.0, d.blur_max) * s / 160.0,
            noise_sigma: rng.uniform(0.0, d.noise_max),
        }
    }
}

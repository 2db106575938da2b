//! Label sets, action units and the expression-AU prior knowledge of AUE-CRL.
//!
//! These are the facts of docs/METHOD.md sections 1 and 2 that more than one crate needs: the data
//! crate (label files), the synthetic face generator (which AUs an expression shows), the model
//! (the initial `PriorKnowledgeTable` and its masks) and the report (class names). Keeping them in
//! one crate without heavy dependencies means there is exactly one copy of each table. The
//! [`error`] pieces every crate's error type shares live here too.

pub mod error;
pub use error::{Context, FileError, io_err};

/// The 7 basic expressions in label-index order (RAF-DB label `n` is index `n - 1`).
pub const EXPRESSIONS_BASIC: [&str; 7] =
    ["Surprise", "Fear", "Disgust", "Happiness", "Sadness", "Anger", "Neutral"];

/// The 11 RAF-DB compound expressions in label-index order (label `n` is index `n - 1`).
pub const EXPRESSIONS_COMPOUND: [&str; 11] = [
    "Happily Surprised",
    "Happily Disgusted",
    "Sadly Fearful",
    "Sadly Angry",
    "Sadly Surprised",
    "Sadly Disgusted",
    "Fearfully Angry",
    "Fearfully Surprised",
    "Angrily Surprised",
    "Angrily Disgusted",
    "Disgustedly Surprised",
];

/// SFEW 2.0 folder names mapped to the basic label indices.
pub const SFEW_FOLDERS: [(&str, usize); 7] = [
    ("Surprise", 0),
    ("Fear", 1),
    ("Disgust", 2),
    ("Happy", 3),
    ("Sad", 4),
    ("Angry", 5),
    ("Neutral", 6),
];

/// Number of action units the method models.
pub const NUM_AUS: usize = 17;

/// Number of basic expressions (rows of the prior table).
pub const NUM_BASIC: usize = 7;

/// FACS numbers of the 17 action units, in the model's AU index order.
pub const AU_NUMBERS: [u8; NUM_AUS] = [1, 2, 4, 5, 6, 7, 9, 10, 12, 15, 16, 17, 20, 23, 24, 25, 26];

/// `AU01` ... `AU26`: the names OpenFace users know, in AU index order.
pub const AU_NAMES: [&str; NUM_AUS] = [
    "AU01", "AU02", "AU04", "AU05", "AU06", "AU07", "AU09", "AU10", "AU12", "AU15", "AU16", "AU17",
    "AU20", "AU23", "AU24", "AU25", "AU26",
];

/// The AU index of FACS action unit `number`, if the method models it.
pub fn au_index(number: u8) -> Option<usize> {
    AU_NUMBERS.iter().position(|&n| n == number)
}

/// How strongly the prior ties an AU to an expression (docs/METHOD.md section 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PriorLevel {
    /// Initial value 1.0: the AU is a defining cue of the expression (mask A).
    Strong,
    /// Initial value 0.5: the AU often accompanies the expression (mask B).
    Weak,
    /// Initial value 0.1: the AU is not expected (mask C).
    Absent,
}

impl PriorLevel {
    /// The initial table value of this level.
    pub fn initial_value(self) -> f32 {
        match self {
            PriorLevel::Strong => 1.0,
            PriorLevel::Weak => 0.5,
            PriorLevel::Absent => 0.1,
        }
    }
}

/// The FACS numbers of the Strong (1.0) and Weak (0.5) AUs of each basic expression, row order.
const PRIOR_ENTRIES: [(&[u8], &[u8]); NUM_BASIC] = [
    (&[1, 2, 5, 25, 26], &[16]),       // Surprise
    (&[1, 2, 4, 5, 7, 20], &[23, 25]), // Fear
    (&[9, 10], &[17, 25]),             // Disgust
    (&[6, 12], &[7, 25]),              // Happiness
    (&[1, 7, 15], &[4, 6, 17]),        // Sadness
    (&[4, 5, 23, 24], &[7, 17]),       // Anger
    (&[], &[]),                        // Neutral: all 0.1
];

/// The prior level of AU index `au` for basic expression index `expression`.
///
/// # Panics
/// If `expression >= 7` or `au >= 17` (programming errors: indices come from checked labels).
pub fn prior_level(expression: usize, au: usize) -> PriorLevel {
    let (strong, weak) = PRIOR_ENTRIES[expression];
    let number = AU_NUMBERS[au];
    if strong.contains(&number) {
        PriorLevel::Strong
    } else if weak.contains(&number) {
        PriorLevel::Weak
    } else {
        PriorLevel::Absent
    }
}

/// The initial 7 x 17 `PriorKnowledgeTable` (docs/METHOD.md section 2), row-major.
pub fn prior_table_init() -> [[f32; NUM_AUS]; NUM_BASIC] {
    let mut table = [[0.0; NUM_AUS]; NUM_BASIC];
    for (e, row) in table.iter_mut().enumerate() {
        for (a, v) in row.iter_mut().enumerate() {
            *v = prior_level(e, a).initial_value();
        }
    }
    table
}

/// The 0/1 mask of one prior level (A = Strong, B = Weak, C = Absent), 7 x 17 row-major.
pub fn prior_mask(level: PriorLevel) -> [[f32; NUM_AUS]; NUM_BASIC] {
    let mut mask = [[0.0; NUM_AUS]; NUM_BASIC];
    for (e, row) in mask.iter_mut().enumerate() {
        for (a, v) in row.iter_mut().enumerate() {
            *v = if prior_level(e, a) == level { 1.0 } else { 0.0 };
        }
    }
    mask
}

/// A pair of AU indices.
pub type AuPair = (usize, usize);

/// AU pairs of the expression-independent relation loss (docs/METHOD.md section 4), as AU indices:
/// `(positive, negative)`. Positive pairs tend to occur together; negative pairs tend not to.
pub fn eiau_pairs() -> (Vec<AuPair>, Vec<AuPair>) {
    const POSITIVE: [(u8, u8); 10] =
        [(1, 2), (4, 7), (4, 9), (7, 9), (6, 12), (9, 17), (15, 17), (15, 24), (17, 24), (23, 24)];
    const NEGATIVE: [(u8, u8); 4] = [(2, 6), (2, 7), (12, 15), (12, 17)];
    let to_index = |pairs: &[(u8, u8)]| {
        pairs.iter().filter_map(|&(a, b)| Some((au_index(a)?, au_index(b)?))).collect::<Vec<_>>()
    };
    (to_index(&POSITIVE), to_index(&NEGATIVE))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_matches_reference_rows() {
        let t = prior_table_init();
        // Surprise: AU1, AU2, AU5, AU25, AU26 at 1.0, AU16 at 0.5, the rest 0.1.
        let surprise: Vec<f32> = t[0].to_vec();
        assert_eq!(
            surprise,
            vec![
                1.0, 1.0, 0.1, 1.0, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.5, 0.1, 0.1, 0.1, 0.1, 1.0, 1.0
            ]
        );
        // Neutral is all 0.1.
        assert!(t[6].iter().all(|&v| v == 0.1));
        // 22 strong and 12 weak entries in all.
        let count = |level| prior_mask(level).iter().flatten().filter(|&&v| v == 1.0).count();
        assert_eq!(count(PriorLevel::Strong), 22);
        assert_eq!(count(PriorLevel::Weak), 12);
        assert_eq!(count(PriorLevel::Absent), 7 * 17 - 34);
    }

    #[test]
    fn masks_partition_the_table() {
        let (a, b, c) = (
            prior_mask(PriorLevel::Strong),
            prior_mask(PriorLevel::Weak),
            prior_mask(PriorLevel::Absent),
        );
        for e in 0..NUM_BASIC {
            for u in 0..NUM_AUS {
                assert_eq!(a[e][u] + b[e][u] + c[e][u], 1.0);
            }
        }
    }

    #[test]
    fn eiau_pairs_are_all_modelled_aus() {
        let (pos, neg) = eiau_pairs();
        assert_eq!(pos.len(), 10);
        assert_eq!(neg.len(), 4);
        // (6, 12) is AU index (4, 8).
        assert!(pos.contains(&(4, 8)));
        assert!(neg.contains(&(8, 9)));
    }
}

/// A face box in image pixels: left, top, right, bottom (`x2 = x1 + width`), with a detector's
/// score (1 for a box read from a dataset file). The one face-box type of the workspace: the
/// detector and landmark nets compute in `f32` (`FaceBox`, the default), the data pipeline's crop
/// arithmetic in `f64` (`FaceBox<f64>`), as the reference's Python floats do.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FaceBox<T = f32> {
    /// Left edge.
    pub x1: T,
    /// Top edge.
    pub y1: T,
    /// Right edge.
    pub x2: T,
    /// Bottom edge.
    pub y2: T,
    /// Detector score (1 for a box from a file).
    pub score: f32,
}

impl FaceBox<f32> {
    /// A box from its corners with score 1.
    pub fn from_corners(x1: f32, y1: f32, x2: f32, y2: f32) -> Self {
        Self { x1, y1, x2, y2, score: 1.0 }
    }

    /// Width.
    pub fn width(&self) -> f32 {
        self.x2 - self.x1
    }

    /// Height.
    pub fn height(&self) -> f32 {
        self.y2 - self.y1
    }

    /// Area (0 for an empty box).
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
    pub fn around(points: &[[f32; 2]]) -> Self {
        let mut b = Self::from_corners(f32::MAX, f32::MAX, f32::MIN, f32::MIN);
        for &[x, y] in points {
            b.x1 = b.x1.min(x);
            b.y1 = b.y1.min(y);
            b.x2 = b.x2.max(x);
            b.y2 = b.y2.max(y);
        }
        b
    }

    /// The same box in `f64`, for the data pipeline's crop arithmetic.
    pub fn to_f64(&self) -> FaceBox<f64> {
        FaceBox {
            x1: self.x1.into(),
            y1: self.y1.into(),
            x2: self.x2.into(),
            y2: self.y2.into(),
            score: self.score,
        }
    }
}

impl FaceBox<f64> {
    /// A box from its corners with score 1.
    pub fn corners(x1: f64, y1: f64, x2: f64, y2: f64) -> Self {
        Self { x1, y1, x2, y2, score: 1.0 }
    }

    /// The extent of a set of points (SFEW's box, docs/METHOD.md section 5).
    pub fn extent(points: &[[f64; 2]]) -> Self {
        let mut b =
            Self::corners(f64::INFINITY, f64::INFINITY, f64::NEG_INFINITY, f64::NEG_INFINITY);
        for p in points {
            b.x1 = b.x1.min(p[0]);
            b.y1 = b.y1.min(p[1]);
            b.x2 = b.x2.max(p[0]);
            b.y2 = b.y2.max(p[1]);
        }
        b
    }
}

/// The file and folder names of the dataset layouts aue reads and writes (docs/METHOD.md
/// section 5), defined once for the data readers, the synthetic set and the landmark tool.
///
/// RAF-DB paths are relative to the subset folder (`basic/` or `compound/`); SFEW paths to a
/// split folder (`Train/`, `Val/`) except [`layout::SFEW_LIST_DIR`], which is under the root.
pub mod layout {
    /// RAF-DB basic subset folder.
    pub const RAF_BASIC: &str = "basic";
    /// RAF-DB compound subset folder.
    pub const RAF_COMPOUND: &str = "compound";
    /// The folder of the label list.
    pub const RAF_LABEL_DIR: &str = "EmoLabel";
    /// The label list (RAF-DB's own spelling of "partition").
    pub const RAF_LABEL_LIST: &str = "EmoLabel/list_patition_label.txt";
    /// Original images.
    pub const RAF_IMAGES_ORIGINAL: &str = "Image/original";
    /// Aligned images.
    pub const RAF_IMAGES_ALIGNED: &str = "Image/aligned";
    /// Face boxes, `<stem>.txt` with `x1 y1 x2 y2`.
    pub const RAF_BOXES: &str = "Annotation/boundingbox";
    /// Folder holding the landmark folder (and the AU ground truth).
    pub const RAF_ANNOTATION: &str = "Annotation";
    /// Name of the landmark folder: 68 points relative to the box.
    pub const RAF_LANDMARKS_NAME: &str = "Landmarks_68_FAN_bbox";
    /// 68 points relative to the box, `<stem>.txt`.
    pub const RAF_LANDMARKS: &str = "Annotation/Landmarks_68_FAN_bbox";
    /// Ground-truth AU intensities (the synthetic set), `<stem>.txt`.
    pub const RAF_AU_GT: &str = "Annotation/AU_gt";
    /// SFEW split folders: train, then the split used as test.
    pub const SFEW_SPLITS: [&str; 2] = ["Train", "Val"];
    /// Images, `<Class>/<id>.jpg|png` inside a split folder.
    pub const SFEW_IMAGES: &str = "imgs";
    /// Name of the landmark folder: 68 points in image pixels.
    pub const SFEW_LANDMARKS_NAME: &str = "Landmarks_68_FAN";
    /// 68 points in image pixels, `<Class>/<id>.txt` inside a split folder.
    pub const SFEW_LANDMARKS: &str = "Annotations/Landmarks_68_FAN";
    /// Folder of the id lists, under the SFEW root.
    pub const SFEW_LIST_DIR: &str = "list_experiment";
}

/// The message of a name that is none of `names`: `unknown dataset `x` (use rafdb, rafdb-compound
/// or sfew)`.
pub fn unknown_name(what: &str, name: &str, names: &[&str]) -> String {
    let list = match names {
        [] => String::new(),
        [one] => (*one).to_string(),
        [init @ .., last] => format!("{} or {last}", init.join(", ")),
    };
    format!("unknown {what} `{name}` (use {list})")
}

/// Gives a fieldless enum whose values each have one name (on command lines, in config files and
/// in checkpoint metadata) its `name()`, `Display`, `FromStr` (an unknown name is an error listing
/// the known ones, built by `$error`) and the `String` conversions serde's `try_from`/`into` use,
/// so that every spelling of a value goes through one table.
///
/// ```
/// #[derive(Debug, Clone, Copy, PartialEq)]
/// enum Shade { Light, Dark }
/// aue_core::named_enum!(Shade, "shade", String => String::from, { Light => "light", Dark => "dark" });
/// assert_eq!("dark".parse::<Shade>(), Ok(Shade::Dark));
/// assert_eq!(Shade::Light.to_string(), "light");
/// assert_eq!("grey".parse::<Shade>().unwrap_err(), "unknown shade `grey` (use light or dark)");
/// ```
#[macro_export]
macro_rules! named_enum {
    ($ty:ident, $what:literal, $err:ty => $error:expr, { $($variant:ident => $name:literal),+ $(,)? }) => {
        impl $ty {
            /// The name used on command lines, in config files and in checkpoint metadata.
            pub fn name(self) -> &'static str {
                match self {
                    $($ty::$variant => $name,)+
                }
            }
        }

        impl ::std::fmt::Display for $ty {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(self.name())
            }
        }

        impl ::std::str::FromStr for $ty {
            type Err = $err;
            fn from_str(s: &str) -> ::std::result::Result<Self, $err> {
                match s {
                    $($name => Ok($ty::$variant),)+
                    _ => Err(($error)($crate::unknown_name($what, s, &[$($name),+]))),
                }
            }
        }

        impl ::std::convert::TryFrom<String> for $ty {
            type Error = $err;
            fn try_from(s: String) -> ::std::result::Result<Self, $err> {
                s.parse()
            }
        }

        impl ::std::convert::From<$ty> for String {
            fn from(v: $ty) -> String {
                v.name().to_string()
            }
        }
    };
}

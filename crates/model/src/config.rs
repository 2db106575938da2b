//! Model configurations and the presets of docs/FILES.md (docs/METHOD.md sections 3 and 8).
//!
//! A [`ModelConfig`] fixes every width of the model; the branch widths follow the backbone's stage
//! widths C1..C4 as docs/METHOD.md section 8 says. The input side S sets the AU grid G = S/4 and the
//! crop side L = 2 * round(G * 12 / 56).

use serde::{Deserialize, Serialize};

use crate::error::{ModelError, Result};

/// The residual block of a ResNet stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BlockKind {
    /// Two 3x3 convs (ResNet-18/34), expansion 1.
    Basic,
    /// 1x1, 3x3 (strided, torchvision v1.5), 1x1 convs (ResNet-50/101), expansion 4.
    Bottleneck,
}

impl BlockKind {
    /// Output channels per `planes` of the block.
    pub fn expansion(self) -> usize {
        match self {
            BlockKind::Basic => 1,
            BlockKind::Bottleneck => 4,
        }
    }
}

/// The named presets of docs/FILES.md.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Preset {
    /// ResNet-101 backbone at 224: the reference model.
    Resnet101,
    /// ResNet-50 backbone at 224.
    Resnet50,
    /// ResNet-18 backbone at 224.
    Resnet18,
    /// ResNet-18 topology with widths / 4 at 64: for tests.
    Tiny,
}

impl Preset {
    /// All presets, largest first.
    pub const ALL: [Preset; 4] =
        [Preset::Resnet101, Preset::Resnet50, Preset::Resnet18, Preset::Tiny];
}

aue_core::named_enum!(Preset, "preset", ModelError => ModelError::Config, {
    Resnet101 => "resnet101",
    Resnet50 => "resnet50",
    Resnet18 => "resnet18",
    Tiny => "tiny",
});

/// Every size of the model. Build one with [`ModelConfig::preset`], then adjust with the `with_*`
/// methods; [`ModelConfig::validate`] checks the result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    /// The residual block kind.
    pub block: BlockKind,
    /// Blocks per stage (layer1..layer4).
    pub layers: [usize; 4],
    /// Stem channels (conv1 output).
    pub stem: usize,
    /// Bottleneck/basic `planes` per stage; stage widths C_i = planes_i * expansion.
    pub planes: [usize; 4],
    /// Input side S (a multiple of 32).
    pub input_size: usize,
    /// EM feature width (`reduce_dim_em` output, 1024 in the reference).
    pub em_dim: usize,
    /// Fusion width `Dim` (1024 in the reference).
    pub fuse_dim: usize,
    /// Width of each crop feature (`Crop_Net_2` output, 256 in the reference).
    pub au_feat: usize,
    /// Channels of the AU map M (`reduce_dim_3_au` output, 64 in the reference).
    pub crop_channels: usize,
    /// Expression classes: 7 (basic, SFEW) or 11 (compound).
    pub num_classes: usize,
    /// Drop probability of the Dropout layers (0.5 in the reference); 0 switches dropout off in
    /// every mode (parity tests).
    pub dropout: f32,
}

impl ModelConfig {
    /// The preset's configuration (7 classes, dropout 0.5).
    pub fn preset(preset: Preset) -> Self {
        let full = |block, layers| ModelConfig {
            block,
            layers,
            stem: 64,
            planes: [64, 128, 256, 512],
            input_size: 224,
            em_dim: 1024,
            fuse_dim: 1024,
            au_feat: 256,
            crop_channels: 64,
            num_classes: 7,
            dropout: 0.5,
        };
        match preset {
            Preset::Resnet101 => full(BlockKind::Bottleneck, [3, 4, 23, 3]),
            Preset::Resnet50 => full(BlockKind::Bottleneck, [3, 4, 6, 3]),
            Preset::Resnet18 => full(BlockKind::Basic, [2, 2, 2, 2]),
            Preset::Tiny => ModelConfig {
                stem: 16,
                planes: [16, 32, 64, 128],
                input_size: 64,
                em_dim: 64,
                fuse_dim: 32,
                au_feat: 16,
                crop_channels: 16,
                ..full(BlockKind::Basic, [2, 2, 2, 2])
            },
        }
    }

    /// Override the input side S (must be a multiple of 32).
    pub fn with_input_size(mut self, input_size: usize) -> Result<Self> {
        self.input_size = input_size;
        self.validate()?;
        Ok(self)
    }

    /// Override the number of expression classes.
    pub fn with_num_classes(mut self, num_classes: usize) -> Result<Self> {
        self.num_classes = num_classes;
        self.validate()?;
        Ok(self)
    }

    /// Override the dropout probability (0 = off).
    pub fn with_dropout(mut self, dropout: f32) -> Result<Self> {
        self.dropout = dropout;
        self.validate()?;
        Ok(self)
    }

    /// Check that the sizes make a valid model.
    pub fn validate(&self) -> Result<()> {
        let bad = |msg: String| Err(ModelError::Config(msg));
        if self.input_size < 32 || !self.input_size.is_multiple_of(32) {
            return bad(format!(
                "input size {} is not a positive multiple of 32 (docs/METHOD.md section 8)",
                self.input_size
            ));
        }
        if self.num_classes < 2 {
            return bad(format!("num_classes {} must be at least 2", self.num_classes));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return bad(format!("dropout {} must be in [0, 1)", self.dropout));
        }
        let widths = [
            self.stem,
            self.em_dim,
            self.fuse_dim,
            self.au_feat,
            self.crop_channels,
            self.planes[0],
            self.planes[1],
            self.planes[2],
            self.planes[3],
        ];
        if widths.contains(&0) || self.layers.contains(&0) {
            return bad(format!("zero width or depth in {self:?}"));
        }
        Ok(())
    }

    /// Stage widths C1..C4 (channels of f1..f4).
    pub fn widths(&self) -> [usize; 4] {
        self.planes.map(|p| p * self.block.expansion())
    }

    /// AU grid side G = S / 4 (the side of f1 and of the AU map M).
    pub fn grid(&self) -> usize {
        self.input_size / 4
    }

    /// Side of f4 (S / 32): the EM branch pools f1..f3 down to it.
    pub fn top_side(&self) -> usize {
        self.input_size / 32
    }

    /// Crop side L = 2 * round(G * 12 / 56), Python's round (half to even): 24 at S = 224.
    pub fn crop_side(&self) -> usize {
        2 * round_half_even_ratio(self.grid() * 12, 56)
    }

    /// Valid AU centre range on the grid: [L/2, G - L/2] (docs/METHOD.md section 8).
    pub fn centre_range(&self) -> (usize, usize) {
        let half = self.crop_side() / 2;
        (half, self.grid() - half)
    }

    /// Input width of each `Crop_Net_2` linear layer: crop_channels * L^2.
    pub fn crop_flat(&self) -> usize {
        self.crop_channels * self.crop_side() * self.crop_side()
    }
}

/// round(num / den) with ties to even, in integers.
fn round_half_even_ratio(num: usize, den: usize) -> usize {
    let (q, r) = (num / den, num % den);
    match (2 * r).cmp(&den) {
        std::cmp::Ordering::Less => q,
        std::cmp::Ordering::Greater => q + 1,
        std::cmp::Ordering::Equal => q + (q % 2),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_match_the_contract_table() {
        let r101 = ModelConfig::preset(Preset::Resnet101);
        assert_eq!(r101.widths(), [256, 512, 1024, 2048]);
        assert_eq!((r101.grid(), r101.crop_side(), r101.centre_range()), (56, 24, (12, 44)));
        assert_eq!(r101.crop_flat(), 36864);
        let r18 = ModelConfig::preset(Preset::Resnet18);
        assert_eq!(r18.widths(), [64, 128, 256, 512]);
        let tiny = ModelConfig::preset(Preset::Tiny);
        assert_eq!(tiny.widths(), [16, 32, 64, 128]);
        assert_eq!((tiny.grid(), tiny.crop_side(), tiny.centre_range()), (16, 6, (3, 13)));
        assert_eq!(
            (tiny.em_dim, tiny.fuse_dim, tiny.au_feat, tiny.crop_channels),
            (64, 32, 16, 16)
        );
        let r18_64 = r18.with_input_size(64).unwrap();
        assert_eq!(r18_64.crop_side(), 6);
    }

    #[test]
    fn input_size_must_be_a_multiple_of_32() {
        let err = ModelConfig::preset(Preset::Tiny).with_input_size(100).unwrap_err();
        assert!(err.to_string().contains("multiple of 32"), "{err}");
    }

    #[test]
    fn preset_names_round_trip() {
        for p in Preset::ALL {
            assert_eq!(p.name().parse::<Preset>().unwrap(), p);
        }
        assert!("resnet34".parse::<Preset>().unwrap_err().to_string().contains("resnet34"));
    }

    #[test]
    fn python_round_is_half_to_even() {
        assert_eq!(round_half_even_ratio(5, 2), 2); // 2.5 -> 2
        assert_eq!(round_half_even_ratio(7, 2), 4); // 3.5 -> 4
        assert_eq!(round_half_even_ratio(7, 3), 2); // 2.33 -> 2
        // G = 40 (S = 160): 40 * 12 / 56 = 8.57 -> 9 -> L = 18.
        assert_eq!(2 * round_half_even_ratio(40 * 12, 56), 18);
    }
}

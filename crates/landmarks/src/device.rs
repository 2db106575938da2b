//! Where the nets run: `cpu`, `cuda` (= `cuda:0`) or `cuda:N`.
//!
//! The CPU path uses this crate's own kernels (`ops`); on other devices every layer falls back to
//! Candle's generic operations, which CUDA builds of Candle provide. CUDA needs the crate's `cuda`
//! feature (and `cudnn` for cuDNN convolutions); a build without it says so instead of failing
//! somewhere inside Candle.

use candle_core::Device;

pub use aue_cli::DeviceSpec;

use crate::error::{LandmarkError, Result};

/// Opens the device; a CUDA device in a build without the `cuda` feature is a clear error.
pub fn open(spec: DeviceSpec) -> Result<Device> {
    spec.open().map_err(|e| LandmarkError::Invalid(format!("{e:#}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cpu_cuda_and_ordinals() {
        assert_eq!("cpu".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cpu);
        assert_eq!("cuda".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cuda(0));
        assert_eq!("cuda:3".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cuda(3));
        for bad in ["gpu", "cuda:", "cuda:x", "cuda:-1", "CPU"] {
            let e = bad.parse::<DeviceSpec>().unwrap_err();
            assert!(e.contains(bad) && e.contains("cuda:N"), "{e}");
        }
        assert_eq!(DeviceSpec::Cuda(2).to_string(), "cuda:2");
    }

    #[test]
    fn cpu_opens() {
        assert!(open(DeviceSpec::Cpu).unwrap().is_cpu());
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn cuda_without_the_feature_is_a_clear_error() {
        let e = open(DeviceSpec::Cuda(0)).unwrap_err().to_string();
        assert!(e.contains("no CUDA support") && e.contains("--features cuda"), "{e}");
    }
}

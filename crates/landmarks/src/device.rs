//! Where the nets run: `cpu`, `cuda` (= `cuda:0`) or `cuda:N`.
//!
//! The CPU path uses this crate's own kernels (`ops`); on other devices every layer falls back to
//! Candle's generic operations, which CUDA builds of Candle provide. CUDA needs the crate's `cuda`
//! feature (and `cudnn` for cuDNN convolutions); a build without it says so instead of failing
//! somewhere inside Candle.

use std::fmt;
use std::str::FromStr;

use candle_core::Device;

use crate::error::{LandmarkError, Result};

/// A device setting as given on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceSpec {
    /// The CPU.
    #[default]
    Cpu,
    /// CUDA device by ordinal.
    Cuda(usize),
}

impl FromStr for DeviceSpec {
    type Err = LandmarkError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "cpu" => Ok(Self::Cpu),
            "cuda" => Ok(Self::Cuda(0)),
            _ => s.strip_prefix("cuda:").and_then(|n| n.parse().ok()).map(Self::Cuda).ok_or_else(
                || {
                    LandmarkError::Invalid(format!(
                        "unknown device {s:?} (use cpu, cuda or cuda:N)"
                    ))
                },
            ),
        }
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Cpu => f.write_str("cpu"),
            Self::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

/// Opens the device; a CUDA device in a build without the `cuda` feature is a clear error.
pub fn open(spec: DeviceSpec) -> Result<Device> {
    match spec {
        DeviceSpec::Cpu => Ok(Device::Cpu),
        DeviceSpec::Cuda(n) => {
            if !candle_core::utils::cuda_is_available() {
                return Err(LandmarkError::Invalid(format!(
                    "device {spec}: aue-landmarks was built without CUDA; rebuild with \
                     `--features cuda` (or `cudnn`)"
                )));
            }
            Device::new_cuda(n)
                .map_err(|source| LandmarkError::Candle { op: "open the CUDA device", source })
        }
    }
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
            let e = bad.parse::<DeviceSpec>().unwrap_err().to_string();
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
        assert!(e.contains("built without CUDA") && e.contains("--features cuda"), "{e}");
    }
}

//! `--device cpu|cuda|cuda:N`, the one device setting of every binary that runs a network.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Where tensors live: `cpu`, `cuda` (= `cuda:0`) or `cuda:N`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum DeviceSpec {
    /// The CPU.
    #[default]
    Cpu,
    /// CUDA device by ordinal.
    Cuda(usize),
}

impl DeviceSpec {
    /// Opens the device. A CUDA device in a build without the `cuda` feature is an error that
    /// says how to build one.
    pub fn open(self) -> anyhow::Result<candle_core::Device> {
        match self {
            DeviceSpec::Cpu => Ok(candle_core::Device::Cpu),
            DeviceSpec::Cuda(n) => {
                if !candle_core::utils::cuda_is_available() {
                    anyhow::bail!(
                        "--device {self}: this build has no CUDA support; build with `--features \
                         cuda` (scripts/gpu-build.sh) or use --device cpu"
                    );
                }
                candle_core::Device::new_cuda(n)
                    .map_err(|e| anyhow::anyhow!("cannot open CUDA device {n}: {e}"))
            }
        }
    }
}

impl FromStr for DeviceSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "cpu" => Ok(DeviceSpec::Cpu),
            "cuda" => Ok(DeviceSpec::Cuda(0)),
            _ => s
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(DeviceSpec::Cuda)
                .ok_or_else(|| format!("unknown device `{s}` (use cpu, cuda or cuda:N)")),
        }
    }
}

impl TryFrom<String> for DeviceSpec {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<DeviceSpec> for String {
    fn from(d: DeviceSpec) -> String {
        d.to_string()
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceSpec::Cpu => f.write_str("cpu"),
            DeviceSpec::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parsing() {
        assert_eq!("cpu".parse(), Ok(DeviceSpec::Cpu));
        assert_eq!("cuda".parse(), Ok(DeviceSpec::Cuda(0)));
        assert_eq!("cuda:3".parse(), Ok(DeviceSpec::Cuda(3)));
        assert!("gpu".parse::<DeviceSpec>().is_err());
        assert!("cuda:x".parse::<DeviceSpec>().is_err());
    }

    #[test]
    fn cpu_opens_and_cuda_without_the_feature_says_how_to_build() {
        assert!(DeviceSpec::Cpu.open().is_ok_and(|d| d.is_cpu()));
        if !candle_core::utils::cuda_is_available() {
            let err = DeviceSpec::Cuda(0).open().unwrap_err().to_string();
            assert!(err.contains("--features cuda"), "{err}");
        }
    }
}

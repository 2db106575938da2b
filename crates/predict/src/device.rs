//! Where the model runs: `--device cpu|cuda|cuda:N` (the trainer's [`DeviceSpec`], parsed the
//! same way). CUDA needs a binary built with the `cuda` cargo feature (`cudnn` adds cuDNN
//! convolutions); the face detector and landmark net always run on the CPU.

use candle_core::Device;

pub use aue_train::DeviceSpec;

use crate::error::{PredictError, Result};

/// Whether this binary was built with CUDA support.
pub const CUDA_BUILT: bool = cfg!(feature = "cuda");

/// Opens the device of `spec`. Asking for CUDA from a build without it is an error that says
/// how to build with it.
pub fn open(spec: DeviceSpec) -> Result<Device> {
    match spec {
        DeviceSpec::Cpu => Ok(Device::Cpu),
        DeviceSpec::Cuda(_) if !CUDA_BUILT => Err(PredictError::Config(format!(
            "--device {spec}: this aue-predict was built without CUDA; build it with \
             `cargo build --release -p aue-predict --features cuda` (or `--features cuda,cudnn`), \
             or use --device cpu"
        ))),
        DeviceSpec::Cuda(n) => Device::new_cuda(n).map_err(|e| {
            PredictError::Config(format!("--device {spec}: cannot open CUDA device {n}: {e}"))
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_flags_parse() {
        assert_eq!("cpu".parse(), Ok(DeviceSpec::Cpu));
        assert_eq!("cuda".parse(), Ok(DeviceSpec::Cuda(0)));
        assert_eq!("cuda:2".parse(), Ok(DeviceSpec::Cuda(2)));
        for bad in ["gpu", "cuda:", "cuda:x", "cuda:-1", "CPU ", ""] {
            assert!(bad.parse::<DeviceSpec>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn cpu_opens_and_cuda_without_the_feature_says_how_to_build() {
        assert!(open(DeviceSpec::Cpu).unwrap().is_cpu());
        if !CUDA_BUILT {
            let e = open(DeviceSpec::Cuda(1)).unwrap_err().to_string();
            assert!(e.contains("cuda:1") && e.contains("--features cuda"), "{e}");
        }
    }
}

//! `--device auto|cpu|cuda[:N]`: which ONNX Runtime execution provider runs
//! the models.
//!
//! The choice is made once, at startup, so that a misconfigured GPU node
//! fails before it takes traffic (`cuda`) or says plainly that it is running
//! on CPU (`auto`) instead of quietly serving at a tenth of the speed.

use std::fmt;
use std::path::Path;
use std::str::FromStr;

/// What the operator asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceRequest {
    /// CUDA when this build and the loaded library support it, else CPU.
    #[default]
    Auto,
    Cpu,
    Cuda {
        device_id: i32,
    },
}

/// What the models will run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Device {
    Cpu,
    Cuda { device_id: i32 },
}

impl fmt::Display for DeviceRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceRequest::Auto => f.write_str("auto"),
            DeviceRequest::Cpu => f.write_str("cpu"),
            DeviceRequest::Cuda { device_id } => write!(f, "cuda:{device_id}"),
        }
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Cpu => f.write_str("cpu"),
            Device::Cuda { device_id } => write!(f, "cuda:{device_id}"),
        }
    }
}

/// `--device` was not one of the accepted spellings.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid device {0:?}: expected auto, cpu, cuda or cuda:N (N a GPU index)")]
pub struct ParseDeviceError(String);

impl FromStr for DeviceRequest {
    type Err = ParseDeviceError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseDeviceError(s.to_owned());
        match s {
            "auto" => Ok(DeviceRequest::Auto),
            "cpu" => Ok(DeviceRequest::Cpu),
            "cuda" => Ok(DeviceRequest::Cuda { device_id: 0 }),
            _ => {
                let id = s.strip_prefix("cuda:").ok_or_else(err)?;
                let device_id: i32 = id.parse().map_err(|_| err())?;
                if device_id < 0 {
                    return Err(err());
                }
                Ok(DeviceRequest::Cuda { device_id })
            }
        }
    }
}

/// CUDA was asked for and cannot be had.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeviceError {
    #[error(
        "--device {requested}: this abmesh was built without CUDA support; rebuild it with \
         `cargo build --release -p abmesh --features cuda`, or use --device cpu"
    )]
    NotCompiled { requested: DeviceRequest },
    #[error(
        "--device {requested}: the ONNX Runtime library {library} has no CUDA execution provider \
         (it is a CPU-only build). Install `pip install onnxruntime-gpu==1.31.1` (needs CUDA 13 and \
         cuDNN 9) and point ORT_DYLIB_PATH at its libonnxruntime, or use --device cpu"
    )]
    NoProvider {
        requested: DeviceRequest,
        library: String,
    },
    #[error(
        "--device {requested}: could not ask ONNX Runtime for its execution providers: {reason}"
    )]
    Query {
        requested: DeviceRequest,
        reason: String,
    },
}

/// Settles the device for a library that is already loaded.
///
/// `auto` never fails: it logs why it chose the CPU.
pub fn resolve(requested: DeviceRequest, library: &Path) -> Result<Device, DeviceError> {
    match requested {
        DeviceRequest::Cpu => Ok(Device::Cpu),
        DeviceRequest::Cuda { device_id } => {
            cuda_provider(requested, library)?;
            Ok(Device::Cuda { device_id })
        }
        DeviceRequest::Auto => match cuda_provider(requested, library) {
            Ok(()) => {
                tracing::info!("device auto: using CUDA device 0");
                Ok(Device::Cuda { device_id: 0 })
            }
            Err(e) => {
                tracing::info!(
                    reason = %e,
                    "device auto: CUDA is not available, falling back to CPU"
                );
                Ok(Device::Cpu)
            }
        },
    }
}

#[cfg(feature = "cuda")]
fn cuda_provider(requested: DeviceRequest, library: &Path) -> Result<(), DeviceError> {
    use ort::ep::ExecutionProvider;
    match ort::ep::CUDA::is_available() {
        Ok(true) => Ok(()),
        Ok(false) => Err(DeviceError::NoProvider {
            requested,
            library: library.display().to_string(),
        }),
        Err(e) => Err(DeviceError::Query {
            requested,
            reason: e.to_string(),
        }),
    }
}

#[cfg(not(feature = "cuda"))]
fn cuda_provider(requested: DeviceRequest, _library: &Path) -> Result<(), DeviceError> {
    Err(DeviceError::NotCompiled { requested })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_spellings() {
        assert_eq!("auto".parse(), Ok(DeviceRequest::Auto));
        assert_eq!("cpu".parse(), Ok(DeviceRequest::Cpu));
        assert_eq!("cuda".parse(), Ok(DeviceRequest::Cuda { device_id: 0 }));
        assert_eq!("cuda:3".parse(), Ok(DeviceRequest::Cuda { device_id: 3 }));
        for bad in ["gpu", "cuda:", "cuda:-1", "cuda:x", "CPU"] {
            assert!(bad.parse::<DeviceRequest>().is_err(), "{bad}");
        }
    }

    #[test]
    fn cpu_needs_nothing() {
        assert_eq!(resolve(DeviceRequest::Cpu, Path::new("x")), Ok(Device::Cpu));
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn without_the_feature_cuda_fails_and_auto_falls_back() {
        let e = resolve(DeviceRequest::Cuda { device_id: 1 }, Path::new("x")).unwrap_err();
        assert!(e.to_string().contains("built without CUDA support"), "{e}");
        assert_eq!(
            resolve(DeviceRequest::Auto, Path::new("x")),
            Ok(Device::Cpu)
        );
    }
}

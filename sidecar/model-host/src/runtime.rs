//! The ONNX Runtime environment of the process and the sessions made in it.
//!
//! ONNX Runtime allows one environment per process; [`Runtime`] owns it,
//! together with the device every session is placed on, so that all model
//! versions are created the same way.

use parking_lot::Mutex;
use std::path::Path;

use ort::environment::Environment;
use ort::session::builder::GraphOptimizationLevel;
use ort::session::Session;

use super::device::{self, Device, DeviceError, DeviceRequest};
use super::dylib::OrtLibrary;

/// Per-session settings, the same for every version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionOptions {
    /// Threads ONNX Runtime uses inside one operator. The host runs one
    /// session per pool worker, so the default of 1 lets the pool, not each
    /// session, use the cores; raise it for large models served at low
    /// concurrency, where one request should use several cores.
    pub intra_op_threads: usize,
}

impl Default for SessionOptions {
    fn default() -> Self {
        SessionOptions {
            intra_op_threads: 1,
        }
    }
}

/// ONNX Runtime could not be started.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("loading ONNX Runtime from {path} (found by {source_desc}): {reason}")]
    Load {
        path: String,
        source_desc: String,
        reason: String,
    },
    #[error("creating the ONNX Runtime environment: {0}")]
    Environment(ort::Error),
    #[error(transparent)]
    Device(#[from] DeviceError),
}

/// A model file could not be turned into a session.
#[derive(Debug, thiserror::Error)]
#[error("creating an ONNX Runtime session ({device}) for {path}: {source}")]
pub struct SessionError {
    pub path: String,
    pub device: Device,
    #[source]
    pub source: ort::Error,
}

/// The process's ONNX Runtime: library, environment and device.
pub struct Runtime {
    env: Environment,
    library: OrtLibrary,
    requested: DeviceRequest,
    /// Starts as resolved at startup; `auto` may move it to the CPU the first
    /// time a CUDA session cannot be created (a GPU build on a GPU-less node).
    device: Mutex<Device>,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("library", &self.library)
            .field("device", &self.device())
            .finish_non_exhaustive()
    }
}

impl Runtime {
    /// Loads the library and settles the device. Call once per process.
    pub fn init(library: OrtLibrary, requested: DeviceRequest) -> Result<Runtime, RuntimeError> {
        let load_err = |reason: String| RuntimeError::Load {
            path: library.path.display().to_string(),
            source_desc: library.source.to_string(),
            reason,
        };
        let env = ort::init_from(&library.path)
            .map_err(|e| load_err(e.to_string()))?
            .with_name("abmesh")
            .with_telemetry(false)
            .build()
            .map_err(RuntimeError::Environment)?;
        let device = device::resolve(requested, &library.path)?;
        Ok(Runtime {
            env,
            library,
            requested,
            device: Mutex::new(device),
        })
    }

    pub fn library(&self) -> &OrtLibrary {
        &self.library
    }

    /// The device new sessions are created on.
    pub fn device(&self) -> Device {
        *self.device.lock()
    }

    /// Creates a session for a model file.
    pub fn session(&self, path: &Path, options: &SessionOptions) -> Result<Session, SessionError> {
        let device = self.device();
        match self.try_session(path, options, device) {
            Err(e) if device != Device::Cpu && self.requested == DeviceRequest::Auto => {
                tracing::warn!(
                    error = %e,
                    "device auto: CUDA session creation failed, falling back to CPU for all models"
                );
                *self.device.lock() = Device::Cpu;
                self.try_session(path, options, Device::Cpu)
            }
            other => other,
        }
    }

    fn try_session(
        &self,
        path: &Path,
        options: &SessionOptions,
        device: Device,
    ) -> Result<Session, SessionError> {
        let wrap = |source: ort::Error| SessionError {
            path: path.display().to_string(),
            device,
            source,
        };
        let builder = Session::builder(&self.env)
            .map_err(wrap)?
            .with_optimization_level(GraphOptimizationLevel::All)
            .map_err(|e| wrap(e.into()))?
            .with_intra_threads(options.intra_op_threads)
            .map_err(|e| wrap(e.into()))?
            .with_inter_threads(1)
            .map_err(|e| wrap(e.into()))?;
        let mut builder = with_device(builder, device).map_err(wrap)?;
        builder.commit_from_file(path).map_err(wrap)
    }
}

#[cfg(feature = "cuda")]
fn with_device(
    builder: ort::session::builder::SessionBuilder,
    device: Device,
) -> Result<ort::session::builder::SessionBuilder, ort::Error> {
    match device {
        Device::Cpu => Ok(builder),
        Device::Cuda { device_id } => {
            Ok(builder.with_execution_providers([ort::ep::CUDA::default()
                .with_device_id(device_id)
                .build()
                .error_on_failure()])?)
        }
    }
}

#[cfg(not(feature = "cuda"))]
fn with_device(
    builder: ort::session::builder::SessionBuilder,
    device: Device,
) -> Result<ort::session::builder::SessionBuilder, ort::Error> {
    match device {
        Device::Cpu => Ok(builder),
        // `device::resolve` never yields CUDA without the feature.
        Device::Cuda { .. } => Err(ort::Error::new(
            "this abmesh was built without the `cuda` feature",
        )),
    }
}

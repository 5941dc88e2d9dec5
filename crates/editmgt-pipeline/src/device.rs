use std::fmt;
use std::str::FromStr;

use burn::tensor::Device;

use crate::EditError;

/// Which Burn backend to run on, chosen at run time among those compiled in.
///
/// `Cpu` is Burn's `flex` backend (Cargo feature `flex`, on by default), `Wgpu` the default
/// wgpu adapter (feature `wgpu`), `Cuda(i)` the i-th CUDA device (feature `cuda`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceSpec {
    /// The CPU (`flex` backend).
    #[default]
    Cpu,
    /// The default wgpu adapter.
    Wgpu,
    /// A CUDA device by index.
    Cuda(usize),
}

impl DeviceSpec {
    /// The Burn device, or [`EditError::Device`] when its backend was not compiled in.
    pub fn device(self) -> Result<Device, EditError> {
        match self {
            #[cfg(feature = "flex")]
            DeviceSpec::Cpu => Ok(Device::flex()),
            #[cfg(feature = "wgpu")]
            DeviceSpec::Wgpu => Ok(Device::wgpu(Default::default())),
            #[cfg(feature = "cuda")]
            DeviceSpec::Cuda(index) => Ok(Device::cuda(index)),
            #[allow(unreachable_patterns)]
            other => Err(EditError::Device {
                name: other.to_string(),
                reason: format!(
                    "this build lacks the `{}` Cargo feature of editmgt-pipeline",
                    other.feature()
                ),
            }),
        }
    }

    /// The Cargo feature that provides this backend.
    pub fn feature(self) -> &'static str {
        match self {
            DeviceSpec::Cpu => "flex",
            DeviceSpec::Wgpu => "wgpu",
            DeviceSpec::Cuda(_) => "cuda",
        }
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceSpec::Cpu => f.write_str("cpu"),
            DeviceSpec::Wgpu => f.write_str("wgpu"),
            DeviceSpec::Cuda(0) => f.write_str("cuda"),
            DeviceSpec::Cuda(i) => write!(f, "cuda:{i}"),
        }
    }
}

impl FromStr for DeviceSpec {
    type Err = EditError;

    /// `cpu` (or `flex`), `wgpu`, `cuda`, `cuda:N`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let lower = s.trim().to_ascii_lowercase();
        match lower.as_str() {
            "cpu" | "flex" => Ok(DeviceSpec::Cpu),
            "wgpu" | "gpu" => Ok(DeviceSpec::Wgpu),
            "cuda" => Ok(DeviceSpec::Cuda(0)),
            _ => match lower.strip_prefix("cuda:").map(str::parse::<usize>) {
                Some(Ok(i)) => Ok(DeviceSpec::Cuda(i)),
                _ => Err(EditError::Device {
                    name: s.to_string(),
                    reason: "expected cpu, wgpu, cuda or cuda:N".into(),
                }),
            },
        }
    }
}

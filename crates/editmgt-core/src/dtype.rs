use std::fmt;
use std::str::FromStr;

use burn::tensor::{DType, Device};

use crate::LoadError;

/// The float type model weights are held in (and computed in) on the device.
///
/// Checkpoints may be stored in any of the three; loading converts to the requested type.
/// `F32` is the reference precision; `F16`/`BF16` halve the memory where the device supports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum FloatType {
    /// 32-bit IEEE float (default; what the parity fixtures were computed in).
    #[default]
    F32,
    /// 16-bit IEEE half precision.
    F16,
    /// bfloat16. On the CPU the MGT keeps activations in `f32` and computes its products in
    /// bf16 with `f32` sums where the CPU has AMX-BF16 or AVX512-BF16 (see
    /// [`crate::bf16_products`]), and runs in `f32` where it has neither.
    BF16,
}

impl FloatType {
    /// The Burn dtype.
    pub fn dtype(self) -> DType {
        match self {
            FloatType::F32 => DType::F32,
            FloatType::F16 => DType::F16,
            FloatType::BF16 => DType::BF16,
        }
    }

    /// The float type of a Burn dtype, if it is one of the three.
    pub fn from_dtype(dtype: DType) -> Option<Self> {
        match dtype {
            DType::F32 => Some(FloatType::F32),
            DType::F16 => Some(FloatType::F16),
            DType::BF16 => Some(FloatType::BF16),
            _ => None,
        }
    }

    /// Fails with [`LoadError::UnsupportedFloatType`] when `device` cannot hold this type.
    pub fn check_device(self, device: &Device) -> Result<(), LoadError> {
        if device.supports_dtype(self.dtype()) {
            Ok(())
        } else {
            Err(LoadError::UnsupportedFloatType {
                dtype: self.to_string(),
                device: format!("{device:?}"),
            })
        }
    }
}

impl fmt::Display for FloatType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FloatType::F32 => "f32",
            FloatType::F16 => "f16",
            FloatType::BF16 => "bf16",
        })
    }
}

impl FromStr for FloatType {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "f32" | "float32" => Ok(FloatType::F32),
            "f16" | "float16" | "half" => Ok(FloatType::F16),
            "bf16" | "bfloat16" => Ok(FloatType::BF16),
            other => Err(format!(
                "unknown float type `{other}` (expected f32, f16 or bf16)"
            )),
        }
    }
}

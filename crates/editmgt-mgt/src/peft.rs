//! LoRA adapters on disk in peft's format: `adapter_config.json` (`r`, `lora_alpha`,
//! `target_modules`) and `adapter_model.safetensors` with `<module>.lora_A.weight` and
//! `<module>.lora_B.weight` (module paths as in the checkpoint, e.g.
//! `transformer_blocks.0.attn.to_q`). The reference's own files (`lora_config.json`,
//! `pytorch_lora_weights.safetensors`, names prefixed `unet.` / `unet._orig_mod.` or with peft's
//! `.default` adapter name) are read too.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::tensor::{Device, Tensor, TensorData};
use safetensors::{Dtype, SafeTensors};
use serde::{Deserialize, Serialize};

use crate::lora::{LoraAdapter, LoraStreams};
use crate::{MgtError, MgtTransformer};

/// The adapter weights file name (peft's).
pub const ADAPTER_WEIGHTS: &str = "adapter_model.safetensors";
/// The adapter configuration file name (peft's).
pub const ADAPTER_CONFIG: &str = "adapter_config.json";

/// The fields of peft's `adapter_config.json` this port reads and writes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdapterConfig {
    /// Always `LORA`.
    #[serde(default = "lora_type")]
    pub peft_type: String,
    /// Rank.
    pub r: usize,
    /// `lora_alpha` (the adapters are scaled by `alpha / r`).
    pub lora_alpha: f64,
    /// Target module names.
    #[serde(default)]
    pub target_modules: Vec<String>,
    /// Which streams the adapters were trained on (this port's field; peft ignores it).
    #[serde(default)]
    pub editmgt_lora_streams: Option<LoraStreams>,
}

fn lora_type() -> String {
    "LORA".into()
}

impl AdapterConfig {
    /// `alpha / r`.
    pub fn scaling(&self) -> f32 {
        (self.lora_alpha / self.r.max(1) as f64) as f32
    }
}

/// One adapter's factors: `A` and `B`, each with its shape.
#[derive(Debug, Clone, PartialEq)]
pub struct Factors {
    /// `A [r, in]` values, row-major.
    pub a: Vec<f32>,
    /// Shape of `A`.
    pub a_shape: Vec<usize>,
    /// `B [out, r]` values, row-major.
    pub b: Vec<f32>,
    /// Shape of `B`.
    pub b_shape: Vec<usize>,
}

/// An adapter read from disk.
#[derive(Debug, Clone, PartialEq)]
pub struct PeftAdapter {
    /// The weights file it came from.
    pub path: PathBuf,
    /// The configuration.
    pub config: AdapterConfig,
    /// Factors by module path (`transformer_blocks.0.attn.to_q`).
    pub factors: BTreeMap<String, Factors>,
}

fn error(path: &Path, reason: impl Into<String>) -> MgtError {
    MgtError::Lora {
        path: path.display().to_string(),
        reason: reason.into(),
    }
}

/// Strips the prefixes peft and diffusers put before module names, and peft's adapter name.
fn normalise_name(name: &str) -> String {
    let mut n = name;
    for prefix in ["base_model.model.", "unet.", "transformer.", "_orig_mod."] {
        if let Some(rest) = n.strip_prefix(prefix) {
            n = rest;
        }
    }
    n.replace(".default.weight", ".weight")
}

fn to_f32(path: &Path, name: &str, dtype: Dtype, data: &[u8]) -> Result<Vec<f32>, MgtError> {
    Ok(match dtype {
        Dtype::F32 => data
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        Dtype::F16 => data
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        Dtype::BF16 => data
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        other => {
            return Err(error(
                path,
                format!("tensor `{name}` is {other:?}, expected a float type"),
            ));
        }
    })
}

impl PeftAdapter {
    /// Reads an adapter folder.
    pub fn read(dir: &Path) -> Result<Self, MgtError> {
        let pick = |names: [&str; 2]| {
            names
                .iter()
                .map(|n| dir.join(n))
                .find(|p| p.is_file())
                .unwrap_or_else(|| dir.join(names[0]))
        };
        let config_path = pick([ADAPTER_CONFIG, "lora_config.json"]);
        let text = std::fs::read_to_string(&config_path).map_err(|e| {
            error(
                &config_path,
                format!("cannot read the adapter configuration: {e}"),
            )
        })?;
        let config: AdapterConfig = serde_json::from_str(&text)
            .map_err(|e| error(&config_path, format!("bad adapter configuration: {e}")))?;
        if config.r == 0 || !(config.lora_alpha.is_finite() && config.lora_alpha > 0.0) {
            return Err(error(
                &config_path,
                format!(
                    "r = {}, lora_alpha = {}: both must be positive",
                    config.r, config.lora_alpha
                ),
            ));
        }
        let path = pick([ADAPTER_WEIGHTS, "pytorch_lora_weights.safetensors"]);
        let bytes = std::fs::read(&path)
            .map_err(|e| error(&path, format!("cannot read the adapter weights: {e}")))?;
        let st = SafeTensors::deserialize(&bytes)
            .map_err(|e| error(&path, format!("not safetensors: {e}")))?;
        let mut a_parts = BTreeMap::new();
        let mut b_parts = BTreeMap::new();
        for (name, view) in st.tensors() {
            let normal = normalise_name(&name);
            let (module, is_a) = if let Some(m) = normal.strip_suffix(".lora_A.weight") {
                (m.to_string(), true)
            } else if let Some(m) = normal.strip_suffix(".lora_B.weight") {
                (m.to_string(), false)
            } else {
                continue;
            };
            let values = to_f32(&path, &name, view.dtype(), view.data())?;
            let entry = (view.shape().to_vec(), values);
            if is_a {
                a_parts.insert(module, entry);
            } else {
                b_parts.insert(module, entry);
            }
        }
        let mut factors = BTreeMap::new();
        for (module, (a_shape, a)) in a_parts {
            let (b_shape, b) = b_parts.remove(&module).ok_or_else(|| {
                error(
                    &path,
                    format!("`{module}.lora_B.weight` is missing (its lora_A is present)"),
                )
            })?;
            factors.insert(
                module,
                Factors {
                    a,
                    a_shape,
                    b,
                    b_shape,
                },
            );
        }
        if let Some(module) = b_parts.keys().next() {
            return Err(error(
                &path,
                format!("`{module}.lora_A.weight` is missing (its lora_B is present)"),
            ));
        }
        if factors.is_empty() {
            return Err(error(&path, "holds no lora_A / lora_B tensor"));
        }
        Ok(Self {
            path,
            config,
            factors,
        })
    }

    /// Attaches every adapter to `model` (on `device`), scaled by `alpha / r * scale`.
    pub fn attach(
        &self,
        model: &mut MgtTransformer,
        scale: f32,
        device: &Device,
    ) -> Result<(), MgtError> {
        let s = self.config.scaling() * scale;
        for (module, f) in &self.factors {
            let tensor = |shape: &[usize], v: &[f32]| match shape {
                [r, c] if r * c == v.len() => Ok(Tensor::<2>::from_data(
                    TensorData::new(v.to_vec(), [*r, *c]),
                    device,
                )),
                _ => Err(error(
                    &self.path,
                    format!("`{module}`: factor of shape {shape:?} is not a 2-D matrix"),
                )),
            };
            let adapter = LoraAdapter::new(tensor(&f.a_shape, &f.a)?, tensor(&f.b_shape, &f.b)?, s);
            model.attach_adapter(module, adapter)?;
        }
        Ok(())
    }
}

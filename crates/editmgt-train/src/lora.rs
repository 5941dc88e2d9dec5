//! LoRA adapters: attaching new ones for training, and saving / loading them in peft's format
//! (`adapter_model.safetensors` with `<module>.lora_A.weight` / `<module>.lora_B.weight`, and
//! `adapter_config.json` with `r`, `lora_alpha`, `target_modules`).

use std::path::Path;

use burn::tensor::{Device, Tensor, TensorData};
use editmgt_mgt::lora::adapter_path;
use editmgt_mgt::{LoraAdapter, MgtTransformer};

use crate::TrainError;
use crate::config::LoraConfig;
use crate::rng::SplitMix64;

pub use editmgt_mgt::peft::{ADAPTER_CONFIG, ADAPTER_WEIGHTS, AdapterConfig, PeftAdapter};

/// The peft configuration of a training run's adapters.
pub fn adapter_config(config: &LoraConfig) -> AdapterConfig {
    AdapterConfig {
        peft_type: "LORA".into(),
        r: config.rank,
        lora_alpha: config.alpha,
        target_modules: config.targets.clone(),
        editmgt_lora_streams: Some(config.streams),
    }
}

/// Attaches a new adapter (peft initialisation) to every projection of `model` whose name is a
/// target of `config`.
pub fn attach_new(
    model: &mut MgtTransformer,
    config: &LoraConfig,
    rng: &mut SplitMix64,
    device: &Device,
) -> Result<(), TrainError> {
    let scale = config.scaling();
    let singles = model.single_transformer_blocks.len();
    let doubles = model.transformer_blocks.len();
    let slots = (0..doubles)
        .map(|i| (false, i))
        .chain((0..singles).map(|i| (true, i)));
    for (single, block) in slots {
        for target in &config.targets {
            let path = adapter_path(single, block, target);
            let Ok(base) = model.adapter_base(&path) else {
                // Targets that a kind of block lacks (`to_out.0` in single-stream blocks).
                continue;
            };
            let [d_in, d_out] = base.weight.dims();
            let bound = 1.0 / (d_in as f64).sqrt();
            let values: Vec<f32> = (0..config.rank * d_in)
                .map(|_| ((rng.next_f64() * 2.0 - 1.0) * bound) as f32)
                .collect();
            let a = Tensor::<2>::from_data(TensorData::new(values, [config.rank, d_in]), device);
            let b = Tensor::<2>::zeros([d_out, config.rank], device);
            model.attach_adapter(&path, LoraAdapter::new(a, b, scale))?;
        }
    }
    if model.adapters().is_empty() {
        return Err(TrainError::Config {
            field: "lora.targets",
            value: config.targets.join(","),
            reason: "no projection of the model matches".into(),
        });
    }
    Ok(())
}

/// Writes the adapters of `model` to `dir` in peft's format.
pub fn save_adapter(
    model: &MgtTransformer,
    config: &AdapterConfig,
    dir: &Path,
) -> Result<(), TrainError> {
    std::fs::create_dir_all(dir).map_err(TrainError::io(dir, "adapter folder"))?;
    let mut tensors: Vec<(String, Vec<usize>, Vec<f32>)> = Vec::new();
    for (path, adapter) in model.adapters() {
        for (suffix, t) in [
            ("lora_A.weight", adapter.lora_a.val()),
            ("lora_B.weight", adapter.lora_b.val()),
        ] {
            let dims = t.dims().to_vec();
            let values = t
                .without_autodiff()
                .into_data()
                .convert::<f32>()
                .try_to_vec::<f32>()
                .map_err(|e| TrainError::format(dir, format!("{path}: {e:?}")))?;
            tensors.push((format!("{path}.{suffix}"), dims, values));
        }
    }
    let file = dir.join(ADAPTER_WEIGHTS);
    crate::checkpoint::write_f32_safetensors(&file, &tensors, None)?;
    let json = serde_json::to_string_pretty(config)
        .map_err(|e| TrainError::format(dir.join(ADAPTER_CONFIG), e.to_string()))?;
    std::fs::write(dir.join(ADAPTER_CONFIG), json).map_err(TrainError::io(
        dir.join(ADAPTER_CONFIG),
        "adapter configuration",
    ))
}

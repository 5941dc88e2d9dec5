//! Writing fine-tuned weights in the released layout (`config.json` and
//! `diffusion_pytorch_model.safetensors` with the checkpoint's names and layouts), so that
//! [`MgtTransformer::load_folder`] and the PyTorch reference load them.

use std::path::Path;

use editmgt_mgt::MgtTransformer;
use editmgt_mgt::model::WEIGHTS_STEM;

use crate::TrainError;
use crate::params::for_each_param;

/// Writes `model`'s base weights (float32) and configuration to the folder `dir`. Attached
/// LoRA adapters are not part of the base weights: merge them first
/// ([`MgtTransformer::merge_adapters`]) or save them with [`crate::lora::save_adapter`].
pub fn save_transformer(model: &MgtTransformer, dir: &Path) -> Result<(), TrainError> {
    std::fs::create_dir_all(dir).map_err(TrainError::io(dir, "model folder"))?;
    let mut tensors = Vec::new();
    let mut failed = None;
    for_each_param(model, |info, value| {
        if info.lora || failed.is_some() {
            return;
        }
        match value
            .without_autodiff()
            .into_data()
            .convert::<f32>()
            .try_to_vec::<f32>()
        {
            Ok(v) => tensors.push((info.name.clone(), info.shape.clone(), v)),
            Err(e) => failed = Some(format!("{}: {e:?}", info.name)),
        }
    });
    if let Some(reason) = failed {
        return Err(TrainError::format(dir, reason));
    }
    let file = dir.join(format!("{WEIGHTS_STEM}.safetensors"));
    crate::checkpoint::write_f32_safetensors(&file, &tensors, None)?;
    let config_path = dir.join("config.json");
    let json = serde_json::to_string_pretty(model.config())
        .map_err(|e| TrainError::format(&config_path, e.to_string()))?;
    std::fs::write(&config_path, json).map_err(TrainError::io(&config_path, "model configuration"))
}

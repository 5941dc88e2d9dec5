//! Checkpoints: trained weights (all of them, or the LoRA factors), AdamW moments, the EMA,
//! the step and the data position, in one safetensors file with a JSON header; LoRA runs also
//! write the adapter in peft's format next to it.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use burn::tensor::{Device, Tensor, TensorData};
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use serde::{Deserialize, Serialize};

use crate::TrainError;
use crate::config::TrainConfig;
use crate::lora::save_adapter;
use crate::optim::{AdamW, Ema, Moments};
use crate::trainer::Trainer;

/// The checkpoint's tensor file.
pub const STATE_FILE: &str = "training_state.safetensors";

/// Where the data stream stands, saved so that a resumed run sees the same batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct DataPosition {
    /// Completed passes over the data.
    pub epoch: u64,
    /// Examples consumed in the current pass.
    pub index: u64,
    /// The state of the masking / dropout generator.
    pub rng_state: u64,
}

/// The checkpoint's JSON header (safetensors metadata key `state`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckpointState {
    /// Optimizer steps done.
    pub step: u64,
    /// EMA updates done.
    pub ema_updates: u64,
    /// Data position.
    pub data: DataPosition,
    /// The run's settings.
    pub config: TrainConfig,
}

/// One tensor to write.
pub(crate) struct Entry {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub bytes: Vec<u8>,
}

impl Entry {
    /// A float32 tensor.
    pub fn f32(name: impl Into<String>, shape: Vec<usize>, values: &[f32]) -> Self {
        Self {
            name: name.into(),
            dtype: Dtype::F32,
            shape,
            bytes: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        }
    }

    /// An int64 tensor.
    pub fn i64(name: impl Into<String>, shape: Vec<usize>, values: &[i64]) -> Self {
        Self {
            name: name.into(),
            dtype: Dtype::I64,
            shape,
            bytes: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        }
    }
}

/// Writes `entries` (and a `metadata` map) to `path`.
pub(crate) fn write_safetensors(
    path: &Path,
    entries: &[Entry],
    metadata: Option<HashMap<String, String>>,
) -> Result<(), TrainError> {
    let views = entries
        .iter()
        .map(|e| {
            TensorView::new(e.dtype, e.shape.clone(), &e.bytes)
                .map(|v| (e.name.clone(), v))
                .map_err(|err| TrainError::format(path, format!("tensor `{}`: {err}", e.name)))
        })
        .collect::<Result<Vec<_>, _>>()?;
    safetensors::serialize_to_file(views, metadata, path)
        .map_err(|e| TrainError::format(path, e.to_string()))
}

/// Writes float32 tensors `(name, shape, values)`.
pub(crate) fn write_f32_safetensors(
    path: &Path,
    tensors: &[(String, Vec<usize>, Vec<f32>)],
    metadata: Option<HashMap<String, String>>,
) -> Result<(), TrainError> {
    let entries: Vec<Entry> = tensors
        .iter()
        .map(|(n, s, v)| Entry::f32(n.clone(), s.clone(), v))
        .collect();
    write_safetensors(path, &entries, metadata)
}

/// A float tensor view as f32 values (F32, F16 or BF16).
pub(crate) fn view_to_f32(
    path: &Path,
    name: &str,
    view: &TensorView<'_>,
) -> Result<Vec<f32>, TrainError> {
    let data = view.data();
    match view.dtype() {
        Dtype::F32 => Ok(data
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()),
        Dtype::F16 => Ok(data
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect()),
        Dtype::BF16 => Ok(data
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect()),
        other => Err(TrainError::Tensor {
            path: path.to_path_buf(),
            tensor: name.to_string(),
            reason: format!("is {other:?}, expected a float type"),
        }),
    }
}

/// An int tensor view as i64 values (I64, I32, U16, U8).
pub(crate) fn view_to_i64(
    path: &Path,
    name: &str,
    view: &TensorView<'_>,
) -> Result<Vec<i64>, TrainError> {
    let data = view.data();
    match view.dtype() {
        Dtype::I64 => Ok(data
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
            .collect()),
        Dtype::I32 => Ok(data
            .chunks_exact(4)
            .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as i64)
            .collect()),
        Dtype::U16 => Ok(data
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]) as i64)
            .collect()),
        Dtype::U8 => Ok(data.iter().map(|&v| v as i64).collect()),
        other => Err(TrainError::Tensor {
            path: path.to_path_buf(),
            tensor: name.to_string(),
            reason: format!("is {other:?}, expected an integer type"),
        }),
    }
}

fn values(t: Tensor<1>) -> Vec<f32> {
    t.without_autodiff()
        .into_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .unwrap_or_default()
}

/// Saves `trainer` (and `data`) to the folder `dir`.
pub fn save_checkpoint(
    trainer: &Trainer,
    data: DataPosition,
    dir: &Path,
) -> Result<(), TrainError> {
    std::fs::create_dir_all(dir).map_err(TrainError::io(dir, "checkpoint folder"))?;
    let mut entries = Vec::new();
    for (name, value) in trainer.trained_values() {
        let v = values(value);
        entries.push(Entry::f32(format!("param.{name}"), vec![v.len()], &v));
    }
    for (name, m) in &trainer.optimizer().moments {
        let a = values(m.exp_avg.clone());
        let b = values(m.exp_avg_sq.clone());
        entries.push(Entry::f32(
            format!("adam.exp_avg.{name}"),
            vec![a.len()],
            &a,
        ));
        entries.push(Entry::f32(
            format!("adam.exp_avg_sq.{name}"),
            vec![b.len()],
            &b,
        ));
    }
    let mut ema_updates = 0;
    if let Some(ema) = trainer.ema() {
        ema_updates = ema.updates;
        for (name, s) in &ema.shadow {
            let v = values(s.clone());
            entries.push(Entry::f32(format!("ema.{name}"), vec![v.len()], &v));
        }
    }
    let state = CheckpointState {
        step: trainer.step(),
        ema_updates,
        data,
        config: trainer.config().clone(),
    };
    let path = dir.join(STATE_FILE);
    let json =
        serde_json::to_string(&state).map_err(|e| TrainError::format(&path, e.to_string()))?;
    let metadata = HashMap::from([("state".to_string(), json)]);
    write_safetensors(&path, &entries, Some(metadata))?;
    if let Some(lora) = &trainer.config().lora {
        save_adapter(
            &trainer.inference_model(false),
            &crate::lora::adapter_config(lora),
            dir,
        )?;
    }
    Ok(())
}

/// Restores a checkpoint written by [`save_checkpoint`] into `trainer` (built with the same
/// model and settings); returns the data position to continue from.
pub fn load_checkpoint(trainer: &mut Trainer, dir: &Path) -> Result<DataPosition, TrainError> {
    let path = dir.join(STATE_FILE);
    let bytes = std::fs::read(&path).map_err(TrainError::io(&path, "checkpoint"))?;
    let (_, header) =
        SafeTensors::read_metadata(&bytes).map_err(|e| TrainError::format(&path, e.to_string()))?;
    let json = header
        .metadata()
        .as_ref()
        .and_then(|m| m.get("state"))
        .ok_or_else(|| TrainError::format(&path, "no `state` metadata"))?;
    let state: CheckpointState =
        serde_json::from_str(json).map_err(|e| TrainError::format(&path, e.to_string()))?;
    if state.config.lora.is_some() != trainer.config().lora.is_some() {
        return Err(TrainError::format(
            &path,
            "the checkpoint and the run differ in LoRA vs full fine-tuning",
        ));
    }
    let st =
        SafeTensors::deserialize(&bytes).map_err(|e| TrainError::format(&path, e.to_string()))?;
    let device: Device = trainer.devices()[0].clone();
    let tensor = |name: &str| -> Result<Tensor<1>, TrainError> {
        let view = st.tensor(name).map_err(|_| TrainError::Tensor {
            path: path.clone(),
            tensor: name.to_string(),
            reason: "is missing".into(),
        })?;
        let v = view_to_f32(&path, name, &view)?;
        let n = v.len();
        Ok(Tensor::from_data(TensorData::new(v, [n]), &device))
    };
    let mut values = BTreeMap::new();
    let mut optimizer = AdamW {
        moments: BTreeMap::new(),
        steps: state.step,
    };
    let mut ema = trainer.config().ema.as_ref().map(|_| Ema {
        shadow: BTreeMap::new(),
        updates: state.ema_updates,
    });
    for info in trainer.param_infos() {
        if !trainer.is_trained(info) {
            continue;
        }
        let value = tensor(&format!("param.{}", info.name))?;
        if value.dims()[0] != info.numel() {
            return Err(TrainError::Tensor {
                path: path.clone(),
                tensor: format!("param.{}", info.name),
                reason: format!("has {} values, the model {}", value.dims()[0], info.numel()),
            });
        }
        values.insert(info.name.clone(), value);
        if state.step > 0 {
            optimizer.moments.insert(
                info.name.clone(),
                Moments {
                    exp_avg: tensor(&format!("adam.exp_avg.{}", info.name))?,
                    exp_avg_sq: tensor(&format!("adam.exp_avg_sq.{}", info.name))?,
                },
            );
        }
        if let Some(ema) = ema.as_mut()
            && st.tensor(&format!("ema.{}", info.name)).is_ok()
        {
            ema.shadow
                .insert(info.name.clone(), tensor(&format!("ema.{}", info.name))?);
        }
    }
    trainer.restore(values, optimizer, ema);
    Ok(state.data)
}

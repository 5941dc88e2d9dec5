//! Prepared shards: what [`prepare`](super::prepare()) writes and training reads.
//!
//! A prepared folder holds `prepared.json` (the shard list and sizes), `shard-NNNNN.safetensors`
//! files with `target_tokens [N, H, W]` and `reference_tokens [N, H, W]` (I64),
//! `encoder_hidden_states [N, T, D]`, `pooled [N, P]` and `micro_conds [N, 5]` (F32), and
//! `empty_prompt.safetensors` (`encoder_hidden_states [1, T, D]`, `pooled [1, P]`: the empty
//! prompt's conditioning, for condition dropout).

use std::path::{Path, PathBuf};

use safetensors::SafeTensors;
use serde::{Deserialize, Serialize};

use crate::TrainError;
use crate::checkpoint::{Entry, view_to_f32, view_to_i64, write_safetensors};
use crate::objective::{EmptyPrompt, Example};

/// The index file of a prepared folder.
pub const INDEX_FILE: &str = "prepared.json";
/// The empty prompt's conditioning.
pub const EMPTY_PROMPT_FILE: &str = "empty_prompt.safetensors";

/// `prepared.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PreparedIndex {
    /// Shard file names, in order.
    pub shards: Vec<String>,
    /// Examples over all shards.
    pub examples: usize,
    /// Records skipped while preparing.
    pub skipped: usize,
    /// Token grid `[H, W]`.
    pub grid: [usize; 2],
    /// Text states `[T, D]`.
    pub text: [usize; 2],
    /// Pooled width.
    pub pooled: usize,
}

/// Writes `examples` as shard `name` in `dir`.
pub(crate) fn write_shard(dir: &Path, name: &str, examples: &[Example]) -> Result<(), TrainError> {
    let Some(first) = examples.first() else {
        return Ok(());
    };
    let n = examples.len();
    let [h, w] = first.grid;
    let [t, d] = first.states_shape;
    let p = first.pooled.len();
    let mut target = Vec::with_capacity(n * h * w);
    let mut reference = Vec::with_capacity(n * h * w);
    let mut states = Vec::with_capacity(n * t * d);
    let mut pooled = Vec::with_capacity(n * p);
    let mut micro = Vec::with_capacity(n * 5);
    for e in examples {
        target.extend_from_slice(&e.target);
        reference.extend_from_slice(&e.reference);
        states.extend_from_slice(&e.states);
        pooled.extend_from_slice(&e.pooled);
        micro.extend_from_slice(&e.micro_conds);
    }
    let entries = vec![
        Entry::i64("target_tokens", vec![n, h, w], &target),
        Entry::i64("reference_tokens", vec![n, h, w], &reference),
        Entry::f32("encoder_hidden_states", vec![n, t, d], &states),
        Entry::f32("pooled", vec![n, p], &pooled),
        Entry::f32("micro_conds", vec![n, 5], &micro),
    ];
    write_safetensors(&dir.join(name), &entries, None)
}

/// Writes the empty prompt's conditioning.
pub(crate) fn write_empty_prompt(
    dir: &Path,
    empty: &EmptyPrompt,
    text: [usize; 2],
) -> Result<(), TrainError> {
    let entries = vec![
        Entry::f32(
            "encoder_hidden_states",
            vec![1, text[0], text[1]],
            &empty.states,
        ),
        Entry::f32("pooled", vec![1, empty.pooled.len()], &empty.pooled),
    ];
    write_safetensors(&dir.join(EMPTY_PROMPT_FILE), &entries, None)
}

/// A prepared folder, read into memory.
#[derive(Debug, Clone)]
pub struct PreparedDataset {
    /// The folder.
    pub dir: PathBuf,
    /// The index.
    pub index: PreparedIndex,
    /// Every example.
    pub examples: Vec<Example>,
    /// The empty prompt's conditioning, if written.
    pub empty: Option<EmptyPrompt>,
}

impl PreparedDataset {
    /// Reads a prepared folder; a folder without examples is [`TrainError::EmptyDataset`].
    pub fn open(dir: &Path) -> Result<Self, TrainError> {
        let index_path = dir.join(INDEX_FILE);
        let text = std::fs::read_to_string(&index_path)
            .map_err(TrainError::io(&index_path, "prepared data index"))?;
        let index: PreparedIndex = serde_json::from_str(&text)
            .map_err(|e| TrainError::format(&index_path, e.to_string()))?;
        let mut examples = Vec::with_capacity(index.examples);
        for shard in &index.shards {
            read_shard(&dir.join(shard), &index, &mut examples)?;
        }
        if examples.is_empty() {
            return Err(TrainError::EmptyDataset {
                path: dir.to_path_buf(),
                skipped: index.skipped,
            });
        }
        let empty_path = dir.join(EMPTY_PROMPT_FILE);
        let empty = if empty_path.is_file() {
            let bytes =
                std::fs::read(&empty_path).map_err(TrainError::io(&empty_path, "empty prompt"))?;
            let st = SafeTensors::deserialize(&bytes)
                .map_err(|e| TrainError::format(&empty_path, e.to_string()))?;
            let get = |name: &str| {
                let view = st.tensor(name).map_err(|_| TrainError::Tensor {
                    path: empty_path.clone(),
                    tensor: name.into(),
                    reason: "is missing".into(),
                })?;
                view_to_f32(&empty_path, name, &view)
            };
            Some(EmptyPrompt {
                states: get("encoder_hidden_states")?,
                pooled: get("pooled")?,
            })
        } else {
            None
        };
        Ok(Self {
            dir: dir.to_path_buf(),
            index,
            examples,
            empty,
        })
    }
}

fn read_shard(
    path: &Path,
    index: &PreparedIndex,
    out: &mut Vec<Example>,
) -> Result<(), TrainError> {
    let bytes = std::fs::read(path).map_err(TrainError::io(path, "prepared shard"))?;
    let st =
        SafeTensors::deserialize(&bytes).map_err(|e| TrainError::format(path, e.to_string()))?;
    let [h, w] = index.grid;
    let [t, d] = index.text;
    let p = index.pooled;
    let view = |name: &str, per: usize| {
        let view = st.tensor(name).map_err(|_| TrainError::Tensor {
            path: path.to_path_buf(),
            tensor: name.into(),
            reason: "is missing".into(),
        })?;
        let n = view.shape().first().copied().unwrap_or(0);
        let count: usize = view.shape().iter().product();
        if count != n * per {
            return Err(TrainError::Tensor {
                path: path.to_path_buf(),
                tensor: name.into(),
                reason: format!(
                    "has shape {:?}, expected [N, ..] with {per} values per example",
                    view.shape()
                ),
            });
        }
        Ok((view, n))
    };
    let (tv, n) = view("target_tokens", h * w)?;
    let target = view_to_i64(path, "target_tokens", &tv)?;
    let (rv, rn) = view("reference_tokens", h * w)?;
    let reference = view_to_i64(path, "reference_tokens", &rv)?;
    let (sv, sn) = view("encoder_hidden_states", t * d)?;
    let states = view_to_f32(path, "encoder_hidden_states", &sv)?;
    let (pv, pn) = view("pooled", p)?;
    let pooled = view_to_f32(path, "pooled", &pv)?;
    let (mv, mn) = view("micro_conds", 5)?;
    let micro = view_to_f32(path, "micro_conds", &mv)?;
    if [rn, sn, pn, mn] != [n; 4] {
        return Err(TrainError::format(
            path,
            "the shard's tensors hold different numbers of examples",
        ));
    }
    for i in 0..n {
        let mut micro_conds = [0f32; 5];
        micro_conds.copy_from_slice(&micro[i * 5..i * 5 + 5]);
        out.push(Example {
            target: target[i * h * w..(i + 1) * h * w].to_vec(),
            reference: reference[i * h * w..(i + 1) * h * w].to_vec(),
            grid: [h, w],
            states: states[i * t * d..(i + 1) * t * d].to_vec(),
            states_shape: [t, d],
            pooled: pooled[i * p..(i + 1) * p].to_vec(),
            micro_conds,
        });
    }
    Ok(())
}

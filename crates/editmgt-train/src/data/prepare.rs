//! The `prepare` pass: VQ tokens of both images and the instruction's text conditioning, once
//! per record, written as shards (see [`shards`](super::shards)).

use std::path::{Path, PathBuf};

use burn::tensor::{Device, Int, Tensor};
use editmgt_core::FloatType;
use editmgt_text::TextEncoder;
use editmgt_vq::{VqModel, imaging};
use image::RgbImage;

use super::shards::{INDEX_FILE, PreparedIndex, write_empty_prompt, write_shard};
use super::{ImageSource, Record, Skipped};
use crate::TrainError;
use crate::objective::{EmptyPrompt, Example};

/// The aesthetic-score micro-condition the released pipeline passes (training uses the same
/// micro-conditions as inference: `[res, res, 0, 0, 6]`).
const AESTHETIC_SCORE: f32 = 6.0;

/// How to prepare.
#[derive(Debug, Clone, PartialEq)]
pub struct PrepareOptions {
    /// Square resolution images are resized to (1024 for the released model).
    pub resolution: u32,
    /// Examples per shard file.
    pub shard_size: usize,
    /// Records encoded together.
    pub batch: usize,
    /// Float type of the encoders.
    pub float: FloatType,
}

impl Default for PrepareOptions {
    fn default() -> Self {
        Self {
            resolution: 1024,
            shard_size: 256,
            batch: 4,
            float: FloatType::F32,
        }
    }
}

/// What a prepare pass did.
#[derive(Debug, Clone, PartialEq)]
pub struct PrepareReport {
    /// The prepared folder.
    pub dir: PathBuf,
    /// Examples written.
    pub examples: usize,
    /// Records skipped (with reasons), including those the reader skipped.
    pub skipped: Vec<Skipped>,
}

fn load(source: &ImageSource) -> Result<RgbImage, String> {
    match source {
        ImageSource::Path(p) => imaging::load_rgb(p).map_err(|e| e.to_string()),
        ImageSource::Bytes(b) => imaging::decode_rgb(b).map_err(|e| e.to_string()),
    }
}

fn rows_i64(t: Tensor<3, Int>) -> Result<Vec<i64>, TrainError> {
    t.into_data()
        .convert::<i64>()
        .try_to_vec::<i64>()
        .map_err(|e| TrainError::Batch(format!("reading tokens: {e:?}")))
}

fn rows_f32<const D: usize>(t: Tensor<D>) -> Result<Vec<f32>, TrainError> {
    t.into_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .map_err(|e| TrainError::Batch(format!("reading embeddings: {e:?}")))
}

/// Encodes `records` with the model in `model_dir` on `device` and writes the shards to `out`.
///
/// A record whose image cannot be read or decoded is skipped and reported through `warn` (and
/// in the report); `already_skipped` (from the reader) is carried into the report. No usable
/// record is [`TrainError::EmptyDataset`]. `progress` sees the records done so far.
#[allow(clippy::too_many_arguments)]
pub fn prepare(
    model_dir: &Path,
    records: &[Record],
    already_skipped: Vec<Skipped>,
    out: &Path,
    device: &Device,
    options: &PrepareOptions,
    warn: &mut dyn FnMut(&Skipped),
    progress: &mut dyn FnMut(usize, usize),
) -> Result<PrepareReport, TrainError> {
    if options.shard_size == 0 || options.batch == 0 || options.resolution == 0 {
        return Err(TrainError::Config {
            field: "prepare",
            value: format!("{options:?}"),
            reason: "resolution, shard size and batch must be positive".into(),
        });
    }
    std::fs::create_dir_all(out).map_err(TrainError::io(out, "prepared data folder"))?;
    let vq = VqModel::from_folder(model_dir.join("vqvae"), device, FloatType::F32)?;
    let text = TextEncoder::from_model_dir(model_dir, device, options.float)?;
    let res = options.resolution;
    let mut skipped = already_skipped;
    for s in &skipped {
        warn(s);
    }

    let empty = text.encode(&[""])?;
    let [_, t, d] = empty.encoder_hidden_states.dims();
    let empty = EmptyPrompt {
        states: rows_f32(empty.encoder_hidden_states)?,
        pooled: rows_f32(empty.pooled)?,
    };
    let pooled_width = empty.pooled.len();
    write_empty_prompt(out, &empty, [t, d])?;

    let mut pending: Vec<Example> = Vec::new();
    let mut shards = Vec::new();
    let mut written = 0usize;
    let mut grid = [0usize; 2];
    let mut done = 0usize;
    for chunk in records.chunks(options.batch) {
        let mut ok: Vec<(&Record, RgbImage, RgbImage)> = Vec::new();
        for record in chunk {
            let loaded = load(&record.source)
                .map_err(|e| format!("source image: {e}"))
                .and_then(|s| {
                    Ok((
                        s,
                        load(&record.target).map_err(|e| format!("target image: {e}"))?,
                    ))
                });
            match loaded {
                Ok((s, t)) => ok.push((
                    record,
                    imaging::resize(&s, res, res),
                    imaging::resize(&t, res, res),
                )),
                Err(reason) => {
                    let s = Skipped {
                        location: record.location.clone(),
                        reason,
                    };
                    warn(&s);
                    skipped.push(s);
                }
            }
        }
        done += chunk.len();
        if ok.is_empty() {
            progress(done, records.len());
            continue;
        }
        let n = ok.len();
        let sources: Vec<&RgbImage> = ok.iter().map(|o| &o.1).collect();
        let targets: Vec<&RgbImage> = ok.iter().map(|o| &o.2).collect();
        let src = vq.tokenize(imaging::to_tensor(&sources, device)?)?;
        let tgt = vq.tokenize(imaging::to_tensor(&targets, device)?)?;
        let [_, h, w] = src.dims();
        grid = [h, w];
        let src = rows_i64(src)?;
        let tgt = rows_i64(tgt)?;
        let prompts: Vec<&str> = ok.iter().map(|o| o.0.instruction.as_str()).collect();
        let emb = text.encode(&prompts)?;
        let states = rows_f32(emb.encoder_hidden_states)?;
        let pooled = rows_f32(emb.pooled)?;
        for i in 0..n {
            pending.push(Example {
                target: tgt[i * h * w..(i + 1) * h * w].to_vec(),
                reference: src[i * h * w..(i + 1) * h * w].to_vec(),
                grid,
                states: states[i * t * d..(i + 1) * t * d].to_vec(),
                states_shape: [t, d],
                pooled: pooled[i * pooled_width..(i + 1) * pooled_width].to_vec(),
                micro_conds: [res as f32, res as f32, 0.0, 0.0, AESTHETIC_SCORE],
            });
        }
        while pending.len() >= options.shard_size {
            let rest = pending.split_off(options.shard_size);
            let name = format!("shard-{:05}.safetensors", shards.len());
            write_shard(out, &name, &pending)?;
            written += pending.len();
            shards.push(name);
            pending = rest;
        }
        progress(done, records.len());
    }
    if !pending.is_empty() {
        let name = format!("shard-{:05}.safetensors", shards.len());
        write_shard(out, &name, &pending)?;
        written += pending.len();
        shards.push(name);
    }
    if written == 0 {
        return Err(TrainError::EmptyDataset {
            path: out.to_path_buf(),
            skipped: skipped.len(),
        });
    }
    let index = PreparedIndex {
        shards,
        examples: written,
        skipped: skipped.len(),
        grid,
        text: [t, d],
        pooled: pooled_width,
    };
    let path = out.join(INDEX_FILE);
    let json = serde_json::to_string_pretty(&index)
        .map_err(|e| TrainError::format(&path, e.to_string()))?;
    std::fs::write(&path, json).map_err(TrainError::io(&path, "prepared data index"))?;
    Ok(PrepareReport {
        dir: out.to_path_buf(),
        examples: written,
        skipped,
    })
}

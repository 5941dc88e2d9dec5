//! A streaming safetensors writer: the header is computed from the shapes, then each tensor's
//! values are generated chunk by chunk and written, so a file of any size needs a few chunks of
//! memory only.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde_json::{Map, Value, json};

use super::SynthError;
use super::rng::{CHUNK, Init};

/// The float type tensors are stored in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dtype {
    /// 32-bit IEEE float.
    F32,
    /// 16-bit IEEE float.
    F16,
    /// bfloat16.
    Bf16,
}

impl Dtype {
    /// Parses `f32`, `f16` or `bf16` (also `float32`, `float16`, `bfloat16`).
    pub fn parse(text: &str) -> Result<Self, String> {
        match text.trim().to_ascii_lowercase().as_str() {
            "f32" | "float32" => Ok(Self::F32),
            "f16" | "float16" | "half" => Ok(Self::F16),
            "bf16" | "bfloat16" => Ok(Self::Bf16),
            other => Err(format!(
                "unknown dtype `{other}`: expected f32, f16 or bf16"
            )),
        }
    }

    /// The short name (`f32`, `f16`, `bf16`).
    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::F16 => "f16",
            Self::Bf16 => "bf16",
        }
    }

    /// The name in a safetensors header (`F32`, `F16`, `BF16`).
    pub fn safetensors_name(self) -> &'static str {
        match self {
            Self::F32 => "F32",
            Self::F16 => "F16",
            Self::Bf16 => "BF16",
        }
    }

    /// The name in a transformers `config.json` (`torch_dtype`).
    pub fn torch_name(self) -> &'static str {
        match self {
            Self::F32 => "float32",
            Self::F16 => "float16",
            Self::Bf16 => "bfloat16",
        }
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            Self::F32 => 4,
            Self::F16 | Self::Bf16 => 2,
        }
    }

    /// `values` as little-endian bytes of this type.
    pub fn encode(self, values: &[f32]) -> Vec<u8> {
        let mut out = Vec::with_capacity(values.len() * self.size());
        match self {
            Self::F32 => values
                .iter()
                .for_each(|v| out.extend_from_slice(&v.to_le_bytes())),
            Self::F16 => values
                .iter()
                .for_each(|v| out.extend_from_slice(&half::f16::from_f32(*v).to_le_bytes())),
            Self::Bf16 => values
                .iter()
                .for_each(|v| out.extend_from_slice(&half::bf16::from_f32(*v).to_le_bytes())),
        }
        out
    }
}

/// One tensor to write: its name, shape, how its values are drawn and the seed of its stream.
#[derive(Debug, Clone)]
pub struct PlannedTensor {
    /// The checkpoint name.
    pub name: String,
    /// The dimensions.
    pub shape: Vec<usize>,
    /// How the values are drawn.
    pub init: Init,
    /// The seed of the tensor's random stream.
    pub seed: u64,
}

impl PlannedTensor {
    /// The number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// The number of bytes stored as `dtype`.
    pub fn bytes(&self, dtype: Dtype) -> u64 {
        (self.numel() * dtype.size()) as u64
    }
}

/// Reports progress while a component's files are written.
pub struct Progress {
    label: String,
    total: u64,
    done: u64,
    next_report: u64,
    started: Instant,
}

impl Progress {
    /// Bytes between two progress lines.
    const STEP: u64 = 1 << 30;

    /// Progress over `total` bytes, printed with `label`.
    pub fn new(label: &str, total: u64) -> Self {
        Self {
            label: label.to_string(),
            total,
            done: 0,
            next_report: Self::STEP,
            started: Instant::now(),
        }
    }

    fn advance(&mut self, bytes: u64) {
        self.done += bytes;
        if self.done >= self.next_report && self.done < self.total {
            println!(
                "  {}: {} of {} ({:.0}%, {:.0} s)",
                self.label,
                human_bytes(self.done),
                human_bytes(self.total),
                100.0 * self.done as f64 / self.total.max(1) as f64,
                self.started.elapsed().as_secs_f64()
            );
            self.next_report = self.done + Self::STEP;
        }
    }
}

/// A byte count for people: `1.23 GB`, `45.6 MB`, `789 B`.
pub fn human_bytes(bytes: u64) -> String {
    let b = bytes as f64;
    if b >= 1e9 {
        format!("{:.2} GB", b / 1e9)
    } else if b >= 1e6 {
        format!("{:.1} MB", b / 1e6)
    } else if b >= 1e3 {
        format!("{:.1} kB", b / 1e3)
    } else {
        format!("{bytes} B")
    }
}

/// The safetensors header of `tensors` laid out one after the other, padded with spaces to a
/// multiple of 8 bytes (as the reference writer does).
fn header(tensors: &[PlannedTensor], dtype: Dtype) -> Result<Vec<u8>, SynthError> {
    let mut map = Map::new();
    map.insert("__metadata__".into(), json!({ "format": "pt" }));
    let mut offset = 0u64;
    for tensor in tensors {
        let end = offset + tensor.bytes(dtype);
        let previous = map.insert(
            tensor.name.clone(),
            json!({
                "dtype": dtype.safetensors_name(),
                "shape": tensor.shape,
                "data_offsets": [offset, end],
            }),
        );
        if previous.is_some() {
            return Err(SynthError::new(format!(
                "tensor `{}` is listed twice",
                tensor.name
            )));
        }
        offset = end;
    }
    let mut bytes = serde_json::to_vec(&Value::Object(map))
        .map_err(|e| SynthError::new(format!("cannot encode a safetensors header: {e}")))?;
    while bytes.len() % 8 != 0 {
        bytes.push(b' ');
    }
    Ok(bytes)
}

/// Writes `tensors` to a safetensors file at `path`, generating each tensor's values as it goes
/// (chunks of one tensor on up to `threads` threads). Returns the file's size.
pub fn write_safetensors(
    path: &Path,
    tensors: &[PlannedTensor],
    dtype: Dtype,
    threads: usize,
    progress: &mut Progress,
) -> Result<u64, SynthError> {
    let io = |e: std::io::Error| SynthError::io(path, e);
    let header = header(tensors, dtype)?;
    let file = File::create(path).map_err(io)?;
    let mut out = BufWriter::with_capacity(8 << 20, file);
    out.write_all(&(header.len() as u64).to_le_bytes())
        .map_err(io)?;
    out.write_all(&header).map_err(io)?;
    let mut size = 8 + header.len() as u64;
    let threads = threads.max(1);
    for tensor in tensors {
        let numel = tensor.numel();
        let chunks = numel.div_ceil(CHUNK);
        let mut first = 0;
        while first < chunks {
            let last = (first + threads).min(chunks);
            let encoded: Vec<Vec<u8>> = std::thread::scope(|scope| {
                let handles: Vec<_> = (first..last)
                    .map(|index| {
                        let len = CHUNK.min(numel - index * CHUNK);
                        scope.spawn(move || {
                            dtype.encode(&tensor.init.chunk(tensor.seed, index as u64, len))
                        })
                    })
                    .collect();
                handles
                    .into_iter()
                    .map(|h| h.join().unwrap_or_default())
                    .collect()
            });
            for bytes in encoded {
                out.write_all(&bytes).map_err(io)?;
                size += bytes.len() as u64;
                progress.advance(bytes.len() as u64);
            }
            first = last;
        }
    }
    out.flush().map_err(io)?;
    let expected = 8 + header.len() as u64 + tensors.iter().map(|t| t.bytes(dtype)).sum::<u64>();
    if size != expected {
        return Err(SynthError::new(format!(
            "{}: wrote {size} bytes, expected {expected} (a generator thread failed)",
            path.display()
        )));
    }
    Ok(size)
}

/// Splits `tensors` (in order) into shards of at most `max_bytes` each (a tensor larger than
/// that gets a shard of its own).
pub fn plan_shards(
    tensors: Vec<PlannedTensor>,
    dtype: Dtype,
    max_bytes: u64,
) -> Vec<Vec<PlannedTensor>> {
    let mut shards: Vec<Vec<PlannedTensor>> = Vec::new();
    let mut current: Vec<PlannedTensor> = Vec::new();
    let mut current_bytes = 0u64;
    for tensor in tensors {
        let bytes = tensor.bytes(dtype);
        if !current.is_empty() && current_bytes + bytes > max_bytes {
            shards.push(std::mem::take(&mut current));
            current_bytes = 0;
        }
        current_bytes += bytes;
        current.push(tensor);
    }
    if !current.is_empty() || shards.is_empty() {
        shards.push(current);
    }
    shards
}

/// Writes one component's weights into `folder`: `<stem>.safetensors` when they fit in one
/// shard, otherwise `<stem>-0000i-of-0000n.safetensors` and `<stem>.safetensors.index.json`
/// (the Hugging Face layout). Returns the bytes written and the files.
pub fn write_weights(
    folder: &Path,
    stem: &str,
    tensors: Vec<PlannedTensor>,
    dtype: Dtype,
    max_shard_bytes: u64,
    threads: usize,
    progress: &mut Progress,
) -> Result<(u64, Vec<PathBuf>), SynthError> {
    let data_bytes: u64 = tensors.iter().map(|t| t.bytes(dtype)).sum();
    let shards = plan_shards(tensors, dtype, max_shard_bytes);
    if shards.len() == 1 {
        let path = folder.join(format!("{stem}.safetensors"));
        let size = write_safetensors(&path, &shards[0], dtype, threads, progress)?;
        return Ok((size, vec![path]));
    }
    let count = shards.len();
    let mut weight_map = Map::new();
    let mut files = Vec::with_capacity(count + 1);
    let mut written = 0;
    for (i, shard) in shards.iter().enumerate() {
        let name = format!("{stem}-{:05}-of-{count:05}.safetensors", i + 1);
        let path = folder.join(&name);
        written += write_safetensors(&path, shard, dtype, threads, progress)?;
        for tensor in shard {
            weight_map.insert(tensor.name.clone(), Value::String(name.clone()));
        }
        files.push(path);
    }
    let index = json!({
        "metadata": { "total_size": data_bytes },
        "weight_map": Value::Object(weight_map),
    });
    let path = folder.join(format!("{stem}.safetensors.index.json"));
    written += super::write_json(&path, &index)?;
    files.push(path);
    Ok((written, files))
}

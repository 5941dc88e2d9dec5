//! Locating and loading safetensors weights into Burn modules.
//!
//! Files are memory-mapped by `burn-store`; each tensor is read (and converted to the requested
//! [`FloatType`], and transposed for `Linear` layers) only when the parameter it belongs to is
//! set, so loading never holds a second full copy of the weights. Modules are built with lazy
//! parameters, so their random initialisation never runs for a parameter the file provides.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::tensor::TensorData;
use burn_store::burn_pack::Tensor as PackTensor;
use burn_store::{
    ApplyError, FloatCastAdapter, ModuleAdapter, ModuleSnapshot, ModuleStore, PyTorchToBurnAdapter,
    SafetensorsStore,
};
use serde::Deserialize;

use crate::shapes::parameter_table;
use crate::{FloatType, LoadError};

/// The safetensors files holding one component's weights: a single file, or the shards listed
/// in a `*.safetensors.index.json`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WeightFiles {
    files: Vec<PathBuf>,
}

#[derive(Deserialize)]
struct ShardIndex {
    weight_map: BTreeMap<String, String>,
}

impl WeightFiles {
    /// Finds `<stem>.safetensors`, or else `<stem>.safetensors.index.json` and its shards, in
    /// `folder` (e.g. stem `model` or `diffusion_pytorch_model`).
    pub fn discover(folder: &Path, stem: &str) -> Result<Self, LoadError> {
        if !folder.is_dir() {
            return Err(LoadError::MissingFolder {
                path: folder.to_path_buf(),
            });
        }
        let single = folder.join(format!("{stem}.safetensors"));
        if single.is_file() {
            return Ok(Self::single(single));
        }
        let index = folder.join(format!("{stem}.safetensors.index.json"));
        if index.is_file() {
            return Self::from_index(&index);
        }
        Err(LoadError::MissingFile {
            path: single,
            what: format!("weights (nor is there a sharded `{stem}.safetensors.index.json`)"),
        })
    }

    /// One safetensors file.
    pub fn single(path: impl Into<PathBuf>) -> Self {
        Self {
            files: vec![path.into()],
        }
    }

    /// The shards listed in a Hugging Face `*.safetensors.index.json` (its `weight_map`), in
    /// file-name order; every shard must exist.
    pub fn from_index(index: &Path) -> Result<Self, LoadError> {
        let parsed: ShardIndex = crate::config::read_json(index, "shard index")?;
        let folder = index.parent().unwrap_or(Path::new("."));
        let names: BTreeSet<&String> = parsed.weight_map.values().collect();
        let mut files = Vec::with_capacity(names.len());
        for name in names {
            let path = folder.join(name);
            if !path.is_file() {
                return Err(LoadError::MissingFile {
                    path,
                    what: format!("a weight shard listed in `{}`", index.display()),
                });
            }
            files.push(path);
        }
        if files.is_empty() {
            return Err(LoadError::Weights {
                path: index.to_path_buf(),
                message: "the shard index lists no files".into(),
            });
        }
        Ok(Self { files })
    }

    /// The files, in load order.
    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }

    /// The file named in error messages (the first shard).
    pub fn primary(&self) -> &Path {
        &self.files[0]
    }

    /// Names, dtypes and shapes of every tensor in the files (header only, nothing is read).
    pub fn tensor_infos(&self) -> Result<BTreeMap<String, (String, Vec<usize>)>, LoadError> {
        let mut out = BTreeMap::new();
        for tensor in self.open()? {
            out.insert(
                tensor.name.clone(),
                (format!("{:?}", tensor.dtype), tensor.shape.to_vec()),
            );
        }
        Ok(out)
    }

    /// Rows `rows` of the 2-d float tensor `name` (an embedding table, say) as an f32 matrix
    /// `[rows.len(), width]`, read straight from the file that holds it.
    ///
    /// Only the requested rows are read (with ordinary reads, not a mapping), so looking up a
    /// prompt's tokens in a 2.4 GB embedding table costs a few kilobytes of memory. Values are
    /// converted exactly from F32, F16 or BF16. Errors name the file and tensor: a tensor that is
    /// not there, not 2-d, not a float, or a row at or beyond its first dimension.
    pub fn read_rows(&self, name: &str, rows: &[u32]) -> Result<TensorData, LoadError> {
        let mut table = self.locate_table(name)?;
        let mut out = Vec::with_capacity(rows.len() * table.width);
        for &row in rows {
            let row = row as usize;
            if row >= table.count {
                return Err(LoadError::Weights {
                    path: table.path,
                    message: format!(
                        "row {row} of tensor `{name}` requested, but it has {} rows",
                        table.count
                    ),
                });
            }
            table.read_into(row..row + 1, &mut out)?;
        }
        Ok(TensorData::new(out, [rows.len(), table.width]))
    }

    /// Rows `[rows.start, rows.end)` of the 2-d float tensor `name` as an f32 matrix
    /// `[rows.len(), width]`, read in one pass from the file that holds it (see
    /// [`WeightFiles::read_rows`] for the conversions and errors).
    pub fn read_row_range(
        &self,
        name: &str,
        rows: std::ops::Range<usize>,
    ) -> Result<TensorData, LoadError> {
        let mut table = self.locate_table(name)?;
        let mut out = Vec::with_capacity(rows.len() * table.width);
        table.read_into(rows.clone(), &mut out)?;
        Ok(TensorData::new(out, [rows.len(), table.width]))
    }

    /// The shape `[rows, width]` of the 2-d float tensor `name`, from its file's header.
    pub fn table_shape(&self, name: &str) -> Result<[usize; 2], LoadError> {
        let table = self.locate_table(name)?;
        Ok([table.count, table.width])
    }

    /// Opens the file holding the 2-d float tensor `name` and checks its header.
    fn locate_table(&self, name: &str) -> Result<TableFile, LoadError> {
        use std::io::Read;
        for path in &self.files {
            let io = |source| LoadError::Io {
                path: path.clone(),
                source,
            };
            let corrupt = |reason: String| LoadError::CorruptWeights {
                path: path.clone(),
                reason,
            };
            let mut file = std::fs::File::open(path).map_err(io)?;
            let mut size = [0u8; 8];
            file.read_exact(&mut size).map_err(io)?;
            let header_len = usize::try_from(u64::from_le_bytes(size))
                .ok()
                .filter(|&n| n <= 100_000_000)
                .ok_or_else(|| corrupt("the header length is implausible".into()))?;
            let mut header = vec![0u8; header_len];
            file.read_exact(&mut header).map_err(io)?;
            let metadata: safetensors::tensor::Metadata =
                serde_json::from_slice(&header).map_err(|e| corrupt(e.to_string()))?;
            let Some(info) = metadata.info(name) else {
                continue;
            };
            let [count, width] = info.shape[..] else {
                return Err(LoadError::Weights {
                    path: path.clone(),
                    message: format!(
                        "tensor `{name}` has shape {:?}; rows can only be read from a 2-d tensor",
                        info.shape
                    ),
                });
            };
            let bytes = match info.dtype {
                safetensors::Dtype::F32 => 4,
                safetensors::Dtype::F16 | safetensors::Dtype::BF16 => 2,
                other => {
                    return Err(LoadError::DTypeMismatch {
                        path: path.clone(),
                        tensor: name.to_string(),
                        expected: "F32, F16 or BF16".into(),
                        found: format!("{other:?}"),
                    });
                }
            };
            if info.data_offsets.1 - info.data_offsets.0 != count * width * bytes {
                return Err(corrupt(format!(
                    "tensor `{name}`'s data does not match its shape"
                )));
            }
            return Ok(TableFile {
                path: path.clone(),
                name: name.to_string(),
                file,
                dtype: info.dtype,
                start: 8 + header_len as u64 + info.data_offsets.0 as u64,
                count,
                width,
                bytes,
            });
        }
        Err(LoadError::MissingTensors {
            path: self.primary().to_path_buf(),
            tensors: vec![name.to_string()],
        })
    }

    /// Opens every file (memory-mapped) and returns its tensors, unread.
    fn open(&self) -> Result<Vec<PackTensor>, LoadError> {
        let mut all = Vec::new();
        for path in &self.files {
            if !path.is_file() {
                return Err(LoadError::MissingFile {
                    path: path.clone(),
                    what: "weights".into(),
                });
            }
            let mut store = SafetensorsStore::from_file(path);
            let tensors = store
                .get_all_tensors()
                .map_err(|e| LoadError::CorruptWeights {
                    path: path.clone(),
                    reason: e.to_string(),
                })?;
            all.extend(tensors.values().cloned());
        }
        Ok(all)
    }
}

/// An open safetensors file and where one 2-d float tensor's rows lie in it.
struct TableFile {
    path: PathBuf,
    name: String,
    file: std::fs::File,
    dtype: safetensors::Dtype,
    /// Byte offset of row 0 in the file.
    start: u64,
    count: usize,
    width: usize,
    /// Bytes per value.
    bytes: usize,
}

impl TableFile {
    /// Appends rows `[rows.start, rows.end)` to `out` as f32 (a few MiB read at a time).
    fn read_into(
        &mut self,
        rows: std::ops::Range<usize>,
        out: &mut Vec<f32>,
    ) -> Result<(), LoadError> {
        use std::io::{Read, Seek, SeekFrom};
        if rows.end > self.count || rows.start > rows.end {
            return Err(LoadError::Weights {
                path: self.path.clone(),
                message: format!(
                    "rows {}..{} of tensor `{}` requested, but it has {} rows",
                    rows.start, rows.end, self.name, self.count
                ),
            });
        }
        let io = |source| LoadError::Io {
            path: self.path.clone(),
            source,
        };
        let row_bytes = self.width * self.bytes;
        self.file
            .seek(SeekFrom::Start(
                self.start + (rows.start * row_bytes) as u64,
            ))
            .map_err(io)?;
        let per_read = ((4 << 20) / row_bytes.max(1)).max(1);
        let mut raw = Vec::new();
        let mut row = rows.start;
        while row < rows.end {
            let n = per_read.min(rows.end - row);
            raw.resize(n * row_bytes, 0);
            self.file.read_exact(&mut raw).map_err(io)?;
            match self.dtype {
                safetensors::Dtype::F32 => out.extend(
                    raw.chunks_exact(4)
                        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
                ),
                safetensors::Dtype::F16 => out.extend(
                    raw.chunks_exact(2)
                        .map(|b| burn::tensor::f16::from_le_bytes([b[0], b[1]]).to_f32()),
                ),
                _ => out.extend(
                    raw.chunks_exact(2)
                        .map(|b| burn::tensor::bf16::from_le_bytes([b[0], b[1]]).to_f32()),
                ),
            }
            row += n;
        }
        Ok(())
    }
}

/// How checkpoint tensor names map to a module's parameter paths.
///
/// Most of our modules name their fields exactly as the reference does, so the two agree. Where
/// they cannot (an index into a heterogeneous `nn.Sequential`, say `ff.net.2`), a rule renames a
/// dotted fragment: `rename("ff.net.2", "ff.proj_out")` maps `blocks.0.ff.net.2.weight` to
/// `blocks.0.ff.proj_out.weight`. Fragments match whole dot-separated segments. `prefix` strips a
/// leading fragment the module does not have (`text_model.`). Norm parameter names
/// (`weight`/`bias` vs Burn's `gamma`/`beta`) and the `Linear` weight layout are handled by the
/// loader and need no rule.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyMap {
    rules: Vec<(String, String)>,
}

impl KeyMap {
    /// No renaming.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a rule mapping the checkpoint fragment `checkpoint` to the module fragment `module`.
    /// Either may be empty only for a leading prefix (see [`KeyMap::strip_prefix`]).
    pub fn rename(mut self, checkpoint: &str, module: &str) -> Self {
        self.rules
            .push((checkpoint.to_string(), module.to_string()));
        self
    }

    /// Adds a rule removing the leading fragment `prefix` (e.g. `text_model`) from checkpoint names.
    pub fn strip_prefix(self, prefix: &str) -> Self {
        self.rename(&format!("^{prefix}"), "^")
    }

    /// The module path of a checkpoint name.
    pub fn to_module(&self, checkpoint_name: &str) -> String {
        self.apply(checkpoint_name, false)
    }

    /// The checkpoint name of a module path.
    pub fn to_checkpoint(&self, module_path: &str) -> String {
        self.apply(module_path, true)
    }

    fn apply(&self, name: &str, reverse: bool) -> String {
        // Delimit with '^' at the start and '.' at both ends so fragments match whole segments.
        let mut text = format!("^.{name}.");
        let rules: Box<dyn Iterator<Item = &(String, String)>> = if reverse {
            Box::new(self.rules.iter().rev())
        } else {
            Box::new(self.rules.iter())
        };
        for (checkpoint, module) in rules {
            let (from, to) = if reverse {
                (module, checkpoint)
            } else {
                (checkpoint, module)
            };
            let (from, to) = (delimit(from), delimit(to));
            text = text.replace(&from, &to);
        }
        text.trim_start_matches("^.")
            .trim_start_matches('^')
            .trim_end_matches('.')
            .to_string()
    }
}

/// The part of a module a parameter path belongs to, for loading part by part: the path up to
/// its first numeric segment (`transformer_blocks.3`, `layers.12`), or its first segment.
fn part_of(path: &str) -> &str {
    let mut end = 0;
    for (index, segment) in path.split('.').enumerate() {
        end += segment.len() + usize::from(index > 0);
        if segment.parse::<usize>().is_ok() {
            return &path[..end];
        }
    }
    path.split('.').next().unwrap_or(path)
}

/// `a.b` -> `.a.b.`; `^a` -> `^.a.`; `^` -> `^.`
fn delimit(fragment: &str) -> String {
    match fragment.strip_prefix('^') {
        Some("") => "^.".to_string(),
        Some(rest) => format!("^.{rest}."),
        None => format!(".{fragment}."),
    }
}

/// Loads `files` into `module`, converting every float tensor to `dtype`.
///
/// Checkpoint names are mapped to module paths with `keys`; checkpoint tensors the module does
/// not have are ignored (they are never read). Every parameter of the module must be in the
/// checkpoint with the right shape, otherwise the error names the first offending tensor (shape
/// or dtype) or all missing ones.
pub fn load_module<M>(
    module: M,
    files: &WeightFiles,
    keys: &KeyMap,
    dtype: FloatType,
) -> Result<M, LoadError>
where
    M: Module + ModuleSnapshot,
{
    let mut module = module;
    let renamed = |tensors: Vec<PackTensor>| -> Vec<PackTensor> {
        tensors
            .into_iter()
            .map(|mut tensor| {
                tensor.name = keys.to_module(&tensor.name);
                tensor
            })
            .collect()
    };
    let file_shapes: BTreeMap<String, Vec<usize>> = renamed(files.open()?)
        .iter()
        .map(|t| (t.name.clone(), t.shape.to_vec()))
        .collect();

    // One part of the module at a time (a block, a layer), each from freshly mapped files that
    // are unmapped before the next: the file pages read stay resident only for one part, so
    // the peak is the converted weights plus one part's pages, not plus the whole file.
    let parts: BTreeSet<&str> = file_shapes.keys().map(|name| part_of(name)).collect();
    let mut errors = Vec::new();
    let mut missing: Option<Vec<(String, String)>> = None;
    for part in parts
        .iter()
        .copied()
        .map(Some)
        .chain(parts.is_empty().then_some(None))
    {
        let tensors: Vec<PackTensor> = renamed(files.open()?)
            .into_iter()
            .filter(|t| part.is_none_or(|part| part_of(&t.name) == part))
            .collect();
        let adapter: Box<dyn ModuleAdapter> =
            Box::new(PyTorchToBurnAdapter.chain(FloatCastAdapter::to(dtype.dtype())));
        let result = module.apply(tensors, None, Some(adapter), false);
        errors.extend(result.errors);
        // A parameter is missing when no part provided it.
        missing = Some(match missing {
            None => result.missing,
            Some(before) => {
                let before: BTreeSet<String> = before.into_iter().map(|(p, _)| p).collect();
                result
                    .missing
                    .into_iter()
                    .filter(|(p, _)| before.contains(p))
                    .collect()
            }
        });
    }
    let missing = missing.unwrap_or_default();

    let path = files.primary().to_path_buf();
    if !errors.is_empty() || !missing.is_empty() {
        // Report in checkpoint terms: names after reverse mapping, shapes in checkpoint layout.
        let table = parameter_table(&module, keys);
        let checkpoint_of = |module_path: &str| {
            table
                .iter()
                .find(|p| p.module_path == module_path)
                .map(|p| (p.checkpoint_name.clone(), p.shape.clone()))
                .unwrap_or_else(|| (keys.to_checkpoint(module_path), Vec::new()))
        };
        if let Some(error) = errors.first() {
            return Err(match error {
                ApplyError::ShapeMismatch { path: p, found, .. } => {
                    let (tensor, expected) = checkpoint_of(p);
                    let found = file_shapes
                        .get(&keys.to_module(&tensor))
                        .cloned()
                        .unwrap_or_else(|| found.to_vec());
                    LoadError::ShapeMismatch {
                        path,
                        tensor,
                        expected,
                        found,
                    }
                }
                ApplyError::DTypeMismatch {
                    path: p,
                    expected,
                    found,
                } => LoadError::DTypeMismatch {
                    path,
                    tensor: checkpoint_of(p).0,
                    expected: format!("{expected:?}"),
                    found: format!("{found:?}"),
                },
                other => LoadError::Weights {
                    path,
                    message: other.to_string(),
                },
            });
        }
        let tensors = missing.iter().map(|(p, _)| checkpoint_of(p).0).collect();
        return Err(LoadError::MissingTensors { path, tensors });
    }
    Ok(module)
}

#[cfg(test)]
mod tests {
    use super::part_of;

    #[test]
    fn parts_end_at_the_first_index() {
        assert_eq!(
            part_of("transformer_blocks.3.attn.to_q.weight"),
            "transformer_blocks.3"
        );
        assert_eq!(part_of("layers.12.mlp.up_proj.weight"), "layers.12");
        assert_eq!(
            part_of("encoder.down_blocks.0.resnets.1.conv1.weight"),
            "encoder.down_blocks.0"
        );
        assert_eq!(part_of("norm_out.linear.weight"), "norm_out");
        assert_eq!(part_of("bias"), "bias");
    }
}

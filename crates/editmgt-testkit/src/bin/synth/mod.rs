//! The synthetic checkpoint generator behind `synth-checkpoint`: the released folder layout of
//! EditMGT at the shapes of `fixtures/real-shapes/*.json`, filled with deterministic random
//! weights.

pub mod rng;
pub mod tokenizers;
pub mod writer;

#[cfg(test)]
mod tests;

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde_json::{Map, Value, json};

use rng::{init_for, tensor_seed};
use writer::{Dtype, PlannedTensor, Progress, human_bytes, write_weights};

/// The version of the generated values and layout, recorded in each `.complete` marker: a
/// folder written by another version is written again.
pub const GENERATOR_VERSION: u32 = 1;

/// The marker file written last in a complete component folder.
pub const MARKER: &str = ".complete";

/// An error of the generator, naming the file or tensor it concerns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SynthError(String);

impl SynthError {
    /// An error with this message.
    pub fn new(message: impl Into<String>) -> Self {
        Self(message.into())
    }

    /// An I/O error on `path`.
    pub fn io(path: &Path, error: std::io::Error) -> Self {
        Self(format!("{}: {error}", path.display()))
    }
}

impl fmt::Display for SynthError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for SynthError {}

/// The components of the released layout that hold weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Component {
    /// The transformer (`editmgt/`, with `scheduler/`).
    Editmgt,
    /// The VQ-VAE (`vqvae/`).
    Vqvae,
    /// The CLIP text encoder (`text_encoder/`, with `tokenizer/`).
    TextEncoder,
    /// The Gemma 2 encoder (`llm_encoder/`, with its tokenizer).
    LlmEncoder,
}

impl Component {
    /// Every component, in the order they are written.
    pub const ALL: [Component; 4] = [
        Component::Editmgt,
        Component::Vqvae,
        Component::TextEncoder,
        Component::LlmEncoder,
    ];

    /// The name (also the folder and the shapes file stem).
    pub fn name(self) -> &'static str {
        match self {
            Self::Editmgt => "editmgt",
            Self::Vqvae => "vqvae",
            Self::TextEncoder => "text_encoder",
            Self::LlmEncoder => "llm_encoder",
        }
    }

    /// Parses a component name.
    pub fn parse(text: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|c| c.name() == text.trim())
            .ok_or_else(|| {
                format!("unknown component `{text}`: expected editmgt, vqvae, text_encoder or llm_encoder")
            })
    }

    /// The weights' file stem.
    fn stem(self) -> &'static str {
        match self {
            Self::Editmgt | Self::Vqvae => "diffusion_pytorch_model",
            Self::TextEncoder | Self::LlmEncoder => "model",
        }
    }

    /// Whether norm weights multiply as `1 + w` (Gemma's RMSNorm).
    fn norm_is_offset(self) -> bool {
        self == Self::LlmEncoder
    }

    /// The `config.json` entries the released file has beside the shape configuration.
    fn config_header(self, dtype: Dtype) -> Value {
        match self {
            Self::Editmgt => json!({
                "_class_name": "Transformer2DModel",
                "_diffusers_version": "0.32.1",
            }),
            Self::Vqvae => json!({ "_class_name": "VQModel", "_diffusers_version": "0.32.1" }),
            Self::TextEncoder => json!({
                "architectures": ["CLIPTextModelWithProjection"],
                "attention_dropout": 0.0,
                "initializer_factor": 1.0,
                "initializer_range": 0.02,
                "model_type": "clip_text_model",
                "torch_dtype": dtype.torch_name(),
                "transformers_version": "4.47.1",
            }),
            Self::LlmEncoder => json!({
                "architectures": ["Gemma2ForCausalLM"],
                "attention_bias": false,
                "attention_dropout": 0.0,
                "cache_implementation": "hybrid",
                "initializer_range": 0.02,
                "model_type": "gemma2",
                "torch_dtype": dtype.torch_name(),
                "transformers_version": "4.47.1",
                "use_cache": true,
            }),
        }
    }
}

/// One component's released configuration and tensor list (a `real-shapes/<name>.json`).
#[derive(Debug, Clone)]
pub struct ComponentSpec {
    /// The released `config.json` (its shape entries).
    pub config: Map<String, Value>,
    /// Every tensor name and shape, in a stable order (names sorted with numbers compared as
    /// numbers, so `layers.2` comes before `layers.10`).
    pub tensors: Vec<(String, Vec<usize>)>,
}

/// The shapes files compiled into the binary (the repository's `fixtures/real-shapes`).
const BUILTIN_SHAPES: [(&str, &str); 4] = [
    (
        "editmgt",
        include_str!("../../../../../fixtures/real-shapes/editmgt.json"),
    ),
    (
        "vqvae",
        include_str!("../../../../../fixtures/real-shapes/vqvae.json"),
    ),
    (
        "text_encoder",
        include_str!("../../../../../fixtures/real-shapes/text_encoder.json"),
    ),
    (
        "llm_encoder",
        include_str!("../../../../../fixtures/real-shapes/llm_encoder.json"),
    ),
];

impl ComponentSpec {
    /// Reads `<dir>/<component>.json`, or the built-in copy of `fixtures/real-shapes` when `dir`
    /// is `None`.
    pub fn load(component: Component, dir: Option<&Path>) -> Result<Self, SynthError> {
        let name = component.name();
        match dir {
            Some(dir) => {
                let path = dir.join(format!("{name}.json"));
                let text = std::fs::read_to_string(&path).map_err(|e| SynthError::io(&path, e))?;
                Self::parse(&text, &path.display().to_string())
            }
            None => {
                let text = BUILTIN_SHAPES
                    .iter()
                    .find(|(n, _)| *n == name)
                    .map(|(_, text)| *text)
                    .unwrap_or("");
                Self::parse(text, &format!("built-in fixtures/real-shapes/{name}.json"))
            }
        }
    }

    /// Parses a shapes file: `{"config": {...}, "tensors": {name: shape} or [{"name", "shape"}]}`;
    /// `source` names the file in errors.
    pub fn parse(text: &str, source: &str) -> Result<Self, SynthError> {
        let bad = |what: String| SynthError::new(format!("{source}: {what}"));
        let raw: Value =
            serde_json::from_str(text).map_err(|e| bad(format!("not valid JSON: {e}")))?;
        let config = raw
            .get("config")
            .and_then(Value::as_object)
            .cloned()
            .ok_or_else(|| bad("no `config` object".into()))?;
        let shape = |name: &str, v: &Value| -> Result<Vec<usize>, SynthError> {
            let dims = v
                .as_array()
                .or_else(|| v.get("shape").and_then(Value::as_array))
                .ok_or_else(|| bad(format!("tensor `{name}` has no shape list")))?;
            dims.iter()
                .map(|d| {
                    d.as_u64().map(|d| d as usize).ok_or_else(|| {
                        bad(format!("tensor `{name}`: dimension {d} is not a count"))
                    })
                })
                .collect()
        };
        let mut tensors = match raw.get("tensors") {
            Some(Value::Object(map)) => map
                .iter()
                .map(|(name, v)| Ok((name.clone(), shape(name, v)?)))
                .collect::<Result<Vec<_>, SynthError>>()?,
            Some(Value::Array(items)) => items
                .iter()
                .map(|item| {
                    let name = item
                        .get("name")
                        .and_then(Value::as_str)
                        .ok_or_else(|| bad("a tensor entry has no `name`".into()))?;
                    Ok((name.to_string(), shape(name, item)?))
                })
                .collect::<Result<Vec<_>, SynthError>>()?,
            _ => return Err(bad("no `tensors` object or list".into())),
        };
        if tensors.is_empty() {
            return Err(bad("the tensor list is empty".into()));
        }
        tensors.sort_by_key(|a| natural_key(&a.0));
        if let Some(pair) = tensors.windows(2).find(|w| w[0].0 == w[1].0) {
            return Err(bad(format!("tensor `{}` is listed twice", pair[0].0)));
        }
        Ok(Self { config, tensors })
    }

    /// A configuration entry that must be a count.
    fn count(&self, key: &str, component: Component) -> Result<usize, SynthError> {
        self.config
            .get(key)
            .and_then(Value::as_u64)
            .map(|v| v as usize)
            .ok_or_else(|| {
                SynthError::new(format!(
                    "{}: the configuration has no count `{key}`",
                    component.name()
                ))
            })
    }
}

/// A sort key comparing runs of digits as numbers.
fn natural_key(name: &str) -> Vec<(u64, String)> {
    let mut key = Vec::new();
    let mut text = String::new();
    let mut digits = String::new();
    for c in name.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
        } else {
            if !digits.is_empty() {
                key.push((0, std::mem::take(&mut text)));
                key.push((digits.parse().unwrap_or(u64::MAX), String::new()));
                digits.clear();
            }
            text.push(c);
        }
    }
    key.push((0, text));
    if !digits.is_empty() {
        key.push((digits.parse().unwrap_or(u64::MAX), String::new()));
    }
    key
}

/// What to write and where.
#[derive(Debug, Clone)]
pub struct Options {
    /// The model folder to write.
    pub out: PathBuf,
    /// The float type of the weights.
    pub dtype: Dtype,
    /// The seed of every random value.
    pub seed: u64,
    /// The components to write.
    pub components: Vec<Component>,
    /// Where the shapes files are (`None`: the built-in `fixtures/real-shapes`).
    pub shapes: Option<PathBuf>,
    /// The largest weight file; bigger components are sharded.
    pub max_shard_bytes: u64,
    /// Threads generating values.
    pub threads: usize,
    /// Write components again even when their folder is complete.
    pub force: bool,
    /// Print progress lines.
    pub verbose: bool,
}

impl Options {
    /// The release's shard size (about 5 GB).
    pub const DEFAULT_MAX_SHARD_BYTES: u64 = 5_000_000_000;

    /// Every component into `out`, in `dtype`, from the built-in shapes, seed 0.
    pub fn new(out: impl Into<PathBuf>, dtype: Dtype) -> Self {
        Self {
            out: out.into(),
            dtype,
            seed: 0,
            components: Component::ALL.to_vec(),
            shapes: None,
            max_shard_bytes: Self::DEFAULT_MAX_SHARD_BYTES,
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            force: false,
            verbose: false,
        }
    }
}

/// What happened to one component.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComponentReport {
    /// The component.
    pub component: Component,
    /// Whether it was already complete and left as it was.
    pub cached: bool,
    /// The size of its files (weights, configs, tokenizer files).
    pub bytes: u64,
    /// The number of tensors.
    pub tensors: usize,
}

/// Writes every chosen component (skipping complete ones) and reports each.
pub fn run(options: &Options) -> Result<Vec<ComponentReport>, SynthError> {
    std::fs::create_dir_all(&options.out).map_err(|e| SynthError::io(&options.out, e))?;
    let mut reports = Vec::new();
    for &component in &options.components {
        let started = Instant::now();
        let report = write_component(component, options)?;
        if options.verbose {
            let what = if report.cached {
                "already complete"
            } else {
                "written"
            };
            println!(
                "{}: {what}, {} tensors, {} ({:.1} s)",
                component.name(),
                report.tensors,
                human_bytes(report.bytes),
                started.elapsed().as_secs_f64()
            );
        }
        reports.push(report);
    }
    Ok(reports)
}

/// The marker contents of a component written with these options.
fn marker(options: &Options, bytes: u64, tensors: usize) -> Value {
    json!({
        "generator_version": GENERATOR_VERSION,
        "dtype": options.dtype.name(),
        "seed": options.seed,
        "bytes": bytes,
        "tensors": tensors,
    })
}

/// The `(bytes, tensors)` a complete folder's marker records, when it matches the options.
fn cached(folder: &Path, options: &Options) -> Option<(u64, usize)> {
    if options.force {
        return None;
    }
    let text = std::fs::read_to_string(folder.join(MARKER)).ok()?;
    let found: Value = serde_json::from_str(&text).ok()?;
    let bytes = found.get("bytes")?.as_u64()?;
    let tensors = found.get("tensors")?.as_u64()? as usize;
    (found == marker(options, bytes, tensors)).then_some((bytes, tensors))
}

/// Removes the marker and every weight file a previous run may have left in `folder` (so that
/// a single file never shadows new shards, or the reverse).
fn clear_weights(folder: &Path) -> Result<(), SynthError> {
    let marker = folder.join(MARKER);
    if marker.exists() {
        std::fs::remove_file(&marker).map_err(|e| SynthError::io(&marker, e))?;
    }
    let entries = match std::fs::read_dir(folder) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(SynthError::io(folder, e)),
    };
    for entry in entries {
        let entry = entry.map_err(|e| SynthError::io(folder, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.ends_with(".safetensors") || name.ends_with(".safetensors.index.json") {
            let path = entry.path();
            std::fs::remove_file(&path).map_err(|e| SynthError::io(&path, e))?;
        }
    }
    Ok(())
}

/// Writes one component's folder (and its companion folder: `scheduler/` with the transformer,
/// `tokenizer/` with CLIP), or leaves it when complete.
fn write_component(component: Component, options: &Options) -> Result<ComponentReport, SynthError> {
    let folder = options.out.join(component.name());
    if let Some((bytes, tensors)) = cached(&folder, options) {
        return Ok(ComponentReport {
            component,
            cached: true,
            bytes,
            tensors,
        });
    }
    let spec = ComponentSpec::load(component, options.shapes.as_deref())?;
    clear_weights(&folder)?;
    std::fs::create_dir_all(&folder).map_err(|e| SynthError::io(&folder, e))?;

    let mut config = component
        .config_header(options.dtype)
        .as_object()
        .cloned()
        .unwrap_or_default();
    config.extend(spec.config.clone());
    let mut bytes = write_json(&folder.join("config.json"), &Value::Object(config))?;
    match component {
        Component::Editmgt => {
            // The mask token is the last id of the transformer's vocabulary (8255 released).
            let vocab = spec.count("vocab_size", component)?;
            let scheduler = json!({
                "_class_name": "Scheduler",
                "_diffusers_version": "0.32.1",
                "mask_token_id": vocab.saturating_sub(1),
                "masking_schedule": "cosine",
            });
            let dir = options.out.join("scheduler");
            std::fs::create_dir_all(&dir).map_err(|e| SynthError::io(&dir, e))?;
            bytes += write_json(&dir.join("scheduler_config.json"), &scheduler)?;
        }
        Component::TextEncoder => {
            let vocab = spec.count("vocab_size", component)?;
            bytes += tokenizers::write_clip(&options.out.join("tokenizer"), vocab)?;
        }
        Component::LlmEncoder => {
            let vocab = spec.count("vocab_size", component)?;
            bytes += tokenizers::write_gemma(&folder, vocab)?;
        }
        Component::Vqvae => {}
    }

    let planned: Vec<PlannedTensor> = spec
        .tensors
        .iter()
        .map(|(name, shape)| PlannedTensor {
            name: name.clone(),
            shape: shape.clone(),
            init: init_for(name, shape, component.norm_is_offset()),
            seed: tensor_seed(options.seed, component.name(), name),
        })
        .collect();
    let count = planned.len();
    let total: u64 = planned.iter().map(|t| t.bytes(options.dtype)).sum();
    if options.verbose {
        println!(
            "{}: writing {count} tensors, {} as {}",
            component.name(),
            human_bytes(total),
            options.dtype.name()
        );
    }
    let mut progress = Progress::new(component.name(), total);
    let (written, _files) = write_weights(
        &folder,
        component.stem(),
        planned,
        options.dtype,
        options.max_shard_bytes,
        options.threads,
        &mut progress,
    )?;
    bytes += written;
    write_json(&folder.join(MARKER), &marker(options, bytes, count))?;
    Ok(ComponentReport {
        component,
        cached: false,
        bytes,
        tensors: count,
    })
}

/// Writes `bytes` to `path`; returns the size.
pub fn write_bytes(path: &Path, bytes: &[u8]) -> Result<u64, SynthError> {
    std::fs::write(path, bytes).map_err(|e| SynthError::io(path, e))?;
    Ok(bytes.len() as u64)
}

/// Writes `value` as pretty JSON to `path`; returns the size.
pub fn write_json(path: &Path, value: &Value) -> Result<u64, SynthError> {
    let mut text = serde_json::to_string_pretty(value)
        .map_err(|e| SynthError::new(format!("{}: {e}", path.display())))?;
    text.push('\n');
    write_bytes(path, text.as_bytes())
}

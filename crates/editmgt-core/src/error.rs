use std::path::PathBuf;

/// Why a model component could not be loaded.
///
/// Every variant names what is at fault (the folder, the file, the tensor or the configuration
/// field) so that the message alone tells the user what to fix.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    /// The model folder (or a component's sub-folder) does not exist.
    #[error("model folder `{}` does not exist", path.display())]
    MissingFolder {
        /// The folder that was looked for.
        path: PathBuf,
    },
    /// A file the component needs is not in its folder.
    #[error("`{}` is missing ({what})", path.display())]
    MissingFile {
        /// The file that was looked for.
        path: PathBuf,
        /// What the file would have provided.
        what: String,
    },
    /// A file exists but could not be read.
    #[error("cannot read `{}`: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A JSON file (configuration, shard index) does not parse into what it should describe.
    #[error("cannot parse `{}`: {source}", path.display())]
    Json {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: serde_json::Error,
    },
    /// A configuration asks for something this implementation does not support.
    #[error("`{}`: unsupported `{field}` = {value}: {reason}", path.display())]
    Unsupported {
        /// The configuration file.
        path: PathBuf,
        /// The configuration field.
        field: String,
        /// The value found, as JSON.
        value: String,
        /// What is supported instead.
        reason: String,
    },
    /// A weight file is not a valid safetensors file (truncated, corrupt header, ...).
    #[error("`{}` is not a valid safetensors file: {reason}", path.display())]
    CorruptWeights {
        /// The weight file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A tensor in the checkpoint does not have the shape the configuration implies.
    #[error("`{}`: tensor `{tensor}` has shape {found:?}, expected {expected:?}", path.display())]
    ShapeMismatch {
        /// The weight file (or the first shard) the tensor came from.
        path: PathBuf,
        /// The tensor's name in the checkpoint.
        tensor: String,
        /// The shape the model expects.
        expected: Vec<usize>,
        /// The shape in the file.
        found: Vec<usize>,
    },
    /// A tensor in the checkpoint has a dtype the parameter cannot take (an integer weight, ...).
    #[error("`{}`: tensor `{tensor}` has dtype {found}, expected {expected}", path.display())]
    DTypeMismatch {
        /// The weight file.
        path: PathBuf,
        /// The tensor's name in the checkpoint.
        tensor: String,
        /// The dtype the parameter expects.
        expected: String,
        /// The dtype in the file.
        found: String,
    },
    /// Tensors the model needs are not in the checkpoint.
    #[error("`{}`: {} tensor(s) missing from the checkpoint: {}", path.display(), tensors.len(), preview(tensors))]
    MissingTensors {
        /// The weight file (or the first shard).
        path: PathBuf,
        /// Checkpoint names of the missing tensors.
        tensors: Vec<String>,
    },
    /// The requested float type cannot be used on the chosen device.
    #[error("float type {dtype} is not supported by device {device}")]
    UnsupportedFloatType {
        /// The requested float type.
        dtype: String,
        /// The device, as Debug text.
        device: String,
    },
    /// Any other loading failure reported by the storage layer.
    #[error("`{}`: {message}", path.display())]
    Weights {
        /// The weight file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
}

/// The first few names of a list, for error messages.
fn preview(names: &[String]) -> String {
    const SHOWN: usize = 8;
    let mut text = names
        .iter()
        .take(SHOWN)
        .map(|n| format!("`{n}`"))
        .collect::<Vec<_>>()
        .join(", ");
    if names.len() > SHOWN {
        text.push_str(&format!(", ... ({} more)", names.len() - SHOWN));
    }
    text
}

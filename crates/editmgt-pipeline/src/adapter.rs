//! Loading a LoRA adapter (peft format, e.g. written by `editmgt train`) into the editor's
//! transformer: applied on the fly with a scale, or merged into the weights.

use std::path::PathBuf;

use burn::tensor::Device;
use editmgt_mgt::{LoraStreams, MgtTransformer, PeftAdapter};

use crate::EditError;

/// A LoRA adapter for [`EditorOptions::lora`](crate::EditorOptions::lora).
#[derive(Debug, Clone)]
pub struct LoraOptions {
    /// The adapter folder (`adapter_config.json` and `adapter_model.safetensors`).
    pub dir: PathBuf,
    /// Multiplies the adapter's `alpha / r` (1: as trained).
    pub scale: f32,
    /// Which streams the adapter applies to. The reference pipeline applies adapters to every
    /// stream at inference ([`LoraStreams::All`], the default); [`LoraStreams::Reference`]
    /// applies them as edit training did.
    pub streams: LoraStreams,
    /// Fold the adapter into the weights once (only with [`LoraStreams::All`]): no cost per
    /// step.
    pub merge: bool,
}

impl LoraOptions {
    /// The adapter in `dir`, at scale 1, on every stream, unmerged.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            scale: 1.0,
            streams: LoraStreams::All,
            merge: false,
        }
    }
}

impl PartialEq for LoraOptions {
    fn eq(&self, other: &Self) -> bool {
        self.dir == other.dir
            && self.scale.to_bits() == other.scale.to_bits()
            && self.streams == other.streams
            && self.merge == other.merge
    }
}

impl Eq for LoraOptions {}

/// `mgt` with the adapter of `options` attached (or merged).
pub(crate) fn apply(
    mut mgt: MgtTransformer,
    options: Option<&LoraOptions>,
    device: &Device,
) -> Result<MgtTransformer, EditError> {
    let Some(options) = options else {
        return Ok(mgt);
    };
    if !options.scale.is_finite() {
        return Err(EditError::invalid(
            "lora.scale",
            options.scale,
            "a finite number",
        ));
    }
    let adapter = PeftAdapter::read(&options.dir)?;
    adapter.attach(&mut mgt, options.scale, device)?;
    mgt.set_lora_streams(options.streams);
    Ok(if options.merge {
        mgt.merge_adapters()?
    } else {
        mgt
    })
}

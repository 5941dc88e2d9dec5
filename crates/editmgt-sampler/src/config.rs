//! `scheduler/scheduler_config.json`.

use std::path::Path;

use editmgt_core::LoadError;
use editmgt_core::config::{Requirements, component_folder, read_json};
use serde::{Deserialize, Serialize};

use crate::MaskSchedule;

/// The scheduler's configuration as released (`scheduler/scheduler_config.json`):
///
/// ```json
/// { "_class_name": "Scheduler", "_diffusers_version": "0.32.1",
///   "mask_token_id": 8255, "masking_schedule": "cosine" }
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SchedulerConfig {
    /// The diffusers class name (informational).
    #[serde(
        rename = "_class_name",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub class_name: Option<String>,
    /// The diffusers version that wrote the file (informational).
    #[serde(
        rename = "_diffusers_version",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub diffusers_version: Option<String>,
    /// The token id that marks a masked position.
    pub mask_token_id: u32,
    /// The masking schedule name: `cosine` (default) or `linear`.
    #[serde(default = "default_schedule")]
    pub masking_schedule: String,
}

fn default_schedule() -> String {
    MaskSchedule::Cosine.name().to_string()
}

impl SchedulerConfig {
    /// The component folder in a model folder.
    pub const SUBFOLDER: &'static str = "scheduler";
    /// The file name in that folder.
    pub const FILE: &'static str = "scheduler_config.json";

    /// Reads `<model>/scheduler/scheduler_config.json`.
    pub fn from_model_dir(model: &Path) -> Result<Self, LoadError> {
        let folder = component_folder(model, Self::SUBFOLDER)?;
        Self::from_file(&folder.join(Self::FILE))
    }

    /// Reads a scheduler configuration file, refusing a masking schedule other than `cosine`
    /// or `linear` ([`LoadError::Unsupported`], naming the field).
    pub fn from_file(path: &Path) -> Result<Self, LoadError> {
        let config: Self = read_json(path, "the scheduler configuration")?;
        Requirements::new(path)
            .check(
                "masking_schedule",
                &config.masking_schedule,
                config.masking_schedule.parse::<MaskSchedule>().is_ok(),
                "only \"cosine\" and \"linear\" are supported",
            )
            .finish()?;
        Ok(config)
    }

    /// The masking schedule this configuration names.
    pub fn masking(&self) -> Result<MaskSchedule, crate::SamplerError> {
        self.masking_schedule.parse()
    }
}

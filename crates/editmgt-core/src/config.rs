//! Reading component configurations (`config.json`, `scheduler_config.json`, ...).

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

use crate::LoadError;

/// Reads and parses a JSON file into `T`.
///
/// A missing file is [`LoadError::MissingFile`] (with `what` saying what it would have provided),
/// an unreadable one [`LoadError::Io`], a malformed one [`LoadError::Json`].
pub fn read_json<T: DeserializeOwned>(path: &Path, what: &str) -> Result<T, LoadError> {
    let text = read_text(path, what)?;
    serde_json::from_str(&text).map_err(|source| LoadError::Json {
        path: path.to_path_buf(),
        source,
    })
}

/// Parses a configuration already in memory into `T`; a mismatch is [`LoadError::Json`] naming
/// `path` (the file the value came from).
pub fn from_json_value<T: DeserializeOwned>(
    value: serde_json::Value,
    path: &Path,
) -> Result<T, LoadError> {
    serde_json::from_value(value).map_err(|source| LoadError::Json {
        path: path.to_path_buf(),
        source,
    })
}

/// Reads a UTF-8 text file, with the same errors as [`read_json`].
pub fn read_text(path: &Path, what: &str) -> Result<String, LoadError> {
    if !path.exists() {
        return Err(LoadError::MissingFile {
            path: path.to_path_buf(),
            what: what.to_string(),
        });
    }
    std::fs::read_to_string(path).map_err(|source| LoadError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Checks that a component folder exists and returns it.
pub fn component_folder(model: &Path, subfolder: &str) -> Result<PathBuf, LoadError> {
    if !model.is_dir() {
        return Err(LoadError::MissingFolder {
            path: model.to_path_buf(),
        });
    }
    let folder = if subfolder.is_empty() {
        model.to_path_buf()
    } else {
        model.join(subfolder)
    };
    if !folder.is_dir() {
        return Err(LoadError::MissingFolder { path: folder });
    }
    Ok(folder)
}

/// Collects [`LoadError::Unsupported`] checks for one configuration file.
///
/// ```
/// # use editmgt_core::config::Requirements;
/// # use std::path::Path;
/// let mut req = Requirements::new(Path::new("vqvae/config.json"));
/// req.equal("norm_type", &"spatial", &"group");
/// assert!(req.finish().is_err());
/// ```
#[derive(Debug)]
pub struct Requirements<'a> {
    path: &'a Path,
    first: Option<LoadError>,
}

impl<'a> Requirements<'a> {
    /// Starts checking the configuration read from `path`.
    pub fn new(path: &'a Path) -> Self {
        Self { path, first: None }
    }

    /// Requires `found == supported` for `field`.
    pub fn equal<T: PartialEq + serde::Serialize>(
        &mut self,
        field: &str,
        found: &T,
        supported: &T,
    ) -> &mut Self {
        if found != supported {
            let expected = serde_json::to_string(supported).unwrap_or_default();
            self.fail(field, found, &format!("only {expected} is supported"));
        }
        self
    }

    /// Requires `ok` for `field`, otherwise records `reason`.
    pub fn check<T: serde::Serialize>(
        &mut self,
        field: &str,
        found: &T,
        ok: bool,
        reason: &str,
    ) -> &mut Self {
        if !ok {
            self.fail(field, found, reason);
        }
        self
    }

    fn fail<T: serde::Serialize>(&mut self, field: &str, found: &T, reason: &str) {
        if self.first.is_none() {
            self.first = Some(LoadError::Unsupported {
                path: self.path.to_path_buf(),
                field: field.to_string(),
                value: serde_json::to_string(found).unwrap_or_default(),
                reason: reason.to_string(),
            });
        }
    }

    /// The first failed requirement, if any.
    pub fn finish(&mut self) -> Result<(), LoadError> {
        match self.first.take() {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }
}

//! Checks that run before any work: outputs that cannot be written and model paths that do not
//! exist are reported before the model is loaded (minutes at real scale), not after the edit.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};

use image::ImageFormat;

/// Checks that an image can be written to `path`: its extension names a format this build
/// writes (PNG, JPEG or WebP), its folder exists and takes new files, and an existing file
/// there is a writable file (not a folder). Writes nothing that outlives the call.
pub fn image_output(path: &Path) -> Result<(), String> {
    let shown = path.display();
    let format = ImageFormat::from_path(path).map_err(|_| {
        format!("cannot write `{shown}`: the extension does not name an image format (use .png, .jpg or .webp)")
    })?;
    if !format.writing_enabled() {
        return Err(format!(
            "cannot write `{shown}`: writing {format:?} images is not supported (use .png, .jpg or .webp)"
        ));
    }
    writable_file(path)
}

/// Checks that `path` can be created or overwritten: its folder exists and takes new files, and
/// an existing file is writable (not a folder).
pub fn writable_file(path: &Path) -> Result<(), String> {
    let shown = path.display();
    if path.is_dir() {
        return Err(format!("cannot write `{shown}`: it is a folder"));
    }
    let folder = parent(path);
    if !folder.is_dir() {
        return Err(format!(
            "cannot write `{shown}`: the folder `{}` does not exist",
            folder.display()
        ));
    }
    if path.exists() {
        // Opening for writing without truncating leaves the file as it is.
        OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(|e| format!("cannot write `{shown}`: {e}"))?;
        return Ok(());
    }
    writable_folder(folder).map_err(|e| format!("cannot write `{shown}`: {e}"))
}

/// Checks that new files can be created in `folder` by creating and removing a probe file.
pub fn writable_folder(folder: &Path) -> Result<(), String> {
    let probe = folder.join(format!(".editmgt-write-check-{}", std::process::id()));
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)
        .map_err(|e| format!("folder `{}` does not take new files: {e}", folder.display()))?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

/// The folder a file path is in (`.` for a bare file name).
pub fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(folder) if !folder.as_os_str().is_empty() => folder,
        _ => Path::new("."),
    }
}

/// What `--model` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSource {
    /// A local folder that exists.
    Folder(PathBuf),
    /// A Hugging Face repository id (`owner/name`).
    Hub(String),
}

/// Decides whether `--model` is a folder or a hub id, and fails at once for a path that does
/// not exist. A value looks like a path when it starts with `/`, `./`, `../` or `~`, is `.` or
/// `..`, has more than one `/` (hub ids are `owner/name`), contains `\`, or its parent folder
/// exists here.
pub fn model_source(model: &str) -> Result<ModelSource, String> {
    let path = Path::new(model);
    if path.is_dir() {
        return Ok(ModelSource::Folder(path.to_path_buf()));
    }
    if path.exists() {
        return Err(format!(
            "model `{model}` is a file, not a model folder (the folder holds editmgt/, vqvae/, text_encoder/, ...)"
        ));
    }
    let looks_like_path = model.is_empty()
        || model.starts_with('/')
        || model.starts_with("./")
        || model.starts_with("../")
        || model.starts_with('~')
        || model == "."
        || model == ".."
        || model.contains('\\')
        || model.matches('/').count() > 1
        || path
            .parent()
            .is_some_and(|p| !p.as_os_str().is_empty() && p.is_dir());
    if looks_like_path {
        return Err(format!("no such model folder `{model}`"));
    }
    if !model.contains('/') {
        return Err(format!(
            "no such model folder `{model}` (and it is not a Hugging Face repository id, which has the form owner/name)"
        ));
    }
    Ok(ModelSource::Hub(model.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_values_that_look_like_paths_are_folders() {
        let tmp = tempfile::tempdir().unwrap();
        let existing = tmp.path().to_str().unwrap();
        assert_eq!(
            model_source(existing),
            Ok(ModelSource::Folder(tmp.path().to_path_buf()))
        );
        for missing in [
            "./EditMGT",
            "../EditMGT",
            "/no/such/EditMGT",
            "~/EditMGT",
            "models/weights/EditMGT",
            "",
            &format!("{existing}/EditMGT"),
        ] {
            let error = model_source(missing).unwrap_err();
            assert!(
                error.starts_with("no such model folder"),
                "{missing}: {error}"
            );
        }
        assert!(model_source("EditMGT").unwrap_err().contains("owner/name"));
        assert_eq!(
            model_source("WeiChow/EditMGT"),
            Ok(ModelSource::Hub("WeiChow/EditMGT".into()))
        );
    }

    #[test]
    fn outputs_are_checked_without_leaving_files() {
        let tmp = tempfile::tempdir().unwrap();
        assert!(image_output(&tmp.path().join("a.png")).is_ok());
        assert!(image_output(&tmp.path().join("a.webp")).is_ok());
        let error = image_output(&tmp.path().join("a.xyz")).unwrap_err();
        assert!(error.contains("a.xyz"), "{error}");
        let error = image_output(&tmp.path().join("missing/a.png")).unwrap_err();
        assert!(error.contains("does not exist"), "{error}");
        let folder = tmp.path().join("d.png");
        std::fs::create_dir(&folder).unwrap();
        assert!(image_output(&folder).unwrap_err().contains("is a folder"));
        // The probes left nothing behind.
        let left: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().collect();
        assert_eq!(left.len(), 1);
    }
}

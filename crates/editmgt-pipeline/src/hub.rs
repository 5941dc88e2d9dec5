//! Downloading a model from the Hugging Face Hub (Cargo feature `hub`).

use std::path::{Path, PathBuf};

use burn::tensor::Device;
use hf_hub::api::sync::ApiBuilder;

use crate::{EditError, Editor, EditorOptions};

/// The sub-folders of the released layout an [`Editor`] reads.
const COMPONENTS: [&str; 6] = [
    "editmgt/",
    "vqvae/",
    "text_encoder/",
    "tokenizer/",
    "llm_encoder/",
    "scheduler/",
];

/// Whether a repository file is one the editor needs (configs, tokenizer files, safetensors
/// weights; not PyTorch pickles or other formats).
fn needed(file: &str) -> bool {
    COMPONENTS.iter().any(|c| file.starts_with(c))
        && [".json", ".txt", ".safetensors"]
            .iter()
            .any(|ext| file.ends_with(ext))
}

impl Editor {
    /// Downloads (or finds in the Hugging Face cache) the files of a model repository, e.g.
    /// `"WeiChow/EditMGT"`, and loads it like [`Editor::from_folder`].
    ///
    /// Uses the standard cache (`$HF_HOME/hub`, by default `~/.cache/huggingface/hub`), the
    /// token of `$HF_TOKEN` or the cache's `token` file, and `$HF_ENDPOINT` when set. Only the
    /// files the editor reads are fetched (configs, tokenizers, safetensors weights).
    pub fn from_hub(
        repo_id: &str,
        device: &Device,
        options: EditorOptions,
    ) -> Result<Self, EditError> {
        let folder = download(repo_id)?;
        Self::from_folder(folder, device, options)
    }
}

/// Fetches the needed files of `repo_id` and returns the local snapshot folder.
pub(crate) fn download(repo_id: &str) -> Result<PathBuf, EditError> {
    let hub_error = |file: &str, reason: String| EditError::Hub {
        repo: repo_id.to_string(),
        file: file.to_string(),
        reason,
    };
    let mut builder = ApiBuilder::from_env().with_progress(true);
    if let Ok(token) = std::env::var("HF_TOKEN")
        && !token.is_empty()
    {
        builder = builder.with_token(Some(token));
    }
    let api = builder
        .build()
        .map_err(|e| hub_error("(client)", e.to_string()))?;
    let repo = api.model(repo_id.to_string());
    let info = repo
        .info()
        .map_err(|e| hub_error("(repository listing)", e.to_string()))?;
    let files: Vec<String> = info
        .siblings
        .into_iter()
        .map(|s| s.rfilename)
        .filter(|f| needed(f))
        .collect();
    let anchor = "scheduler/scheduler_config.json";
    if !files.iter().any(|f| f == anchor) {
        return Err(hub_error(
            anchor,
            "not in the repository: it does not have the EditMGT layout".into(),
        ));
    }
    let mut root: Option<PathBuf> = None;
    for file in &files {
        let path = repo.get(file).map_err(|e| hub_error(file, e.to_string()))?;
        if file == anchor {
            root = snapshot_root(&path, file);
        }
    }
    root.ok_or_else(|| hub_error(anchor, "cannot locate the downloaded snapshot".into()))
}

/// The folder `path` is `file` relative to.
fn snapshot_root(path: &Path, file: &str) -> Option<PathBuf> {
    let depth = Path::new(file).components().count();
    let mut root = path.to_path_buf();
    for _ in 0..depth {
        root = root.parent()?.to_path_buf();
    }
    Some(root)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_only_the_files_the_editor_reads() {
        assert!(needed("editmgt/diffusion_pytorch_model.safetensors"));
        assert!(needed("llm_encoder/model.safetensors.index.json"));
        assert!(needed("llm_encoder/model-00001-of-00002.safetensors"));
        assert!(needed("tokenizer/merges.txt"));
        assert!(!needed("editmgt/diffusion_pytorch_model.bin"));
        assert!(!needed("README.md"));
        assert!(!needed("assets/case_1.png"));
        assert_eq!(
            snapshot_root(
                Path::new("/c/snapshots/abc/scheduler/scheduler_config.json"),
                "scheduler/scheduler_config.json"
            ),
            Some(PathBuf::from("/c/snapshots/abc"))
        );
    }
}

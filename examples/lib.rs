//! Helpers shared by the examples: where the repository's tiny model is, and command-line
//! arguments with defaults.
//!
//! ```text
//! cargo run --release -p editmgt-examples --example edit     -- [MODEL] [IMAGE] [OUT]
//! cargo run --release -p editmgt-examples --example localize -- [MODEL] [IMAGE] [OUT]
//! cargo run --release -p editmgt-examples --example generate -- [MODEL] [OUT]
//! ```
//!
//! `MODEL` defaults to the repository's tiny fixture model (random weights: the images are
//! noise, the plumbing is real); point it at a local copy of `WeiChow/EditMGT` for real edits.

use std::path::PathBuf;

/// The repository root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The tiny fixture model (`fixtures/tiny`), in the released folder layout.
pub fn tiny_model() -> PathBuf {
    repo_root().join("fixtures/tiny")
}

/// The fixture source image (1024x1024).
pub fn sample_image() -> PathBuf {
    tiny_model().join("cases/source.png")
}

/// The `index`-th command-line argument (1-based), or `default`.
pub fn arg_or(index: usize, default: PathBuf) -> PathBuf {
    std::env::args_os()
        .nth(index)
        .map(PathBuf::from)
        .unwrap_or(default)
}

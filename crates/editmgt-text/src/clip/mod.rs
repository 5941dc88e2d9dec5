//! The CLIP text tower (transformers' `CLIPTextModelWithProjection`) and its tokenizer.

mod config;
mod model;
mod tokenizer;

pub use config::ClipTextConfig;
pub use model::{ClipOutput, ClipTextEncoder};
pub use tokenizer::ClipTokenizer;

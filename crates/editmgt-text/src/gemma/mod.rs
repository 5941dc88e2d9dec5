//! Gemma-2 as a text encoder (transformers' `Gemma2ForCausalLM`, `hidden_states[-2]`) and its
//! tokenizer.

mod config;
mod model;
mod rotary;
mod tokenizer;

pub use config::Gemma2Config;
pub use model::GemmaEncoder;
pub use tokenizer::{GemmaTokenizer, TokenSpan};

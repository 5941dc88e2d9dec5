//! EditMGT's text encoders on Burn: an instruction reaches the MGT as CLIP's pooled, projected
//! vector (`pooled [B, 1024]`) and Gemma-2-2B's token states from its second-to-last hidden
//! layer (`encoder_hidden_states [B, 256, 2304]`).
//!
//! - [`clip`]: [`ClipTokenizer`] (byte-level BPE, 77 tokens, built from `vocab.json` +
//!   `merges.txt` or from `tokenizer.json`) and [`ClipTextEncoder`]
//!   (`CLIPTextModelWithProjection`).
//! - [`gemma`]: [`GemmaTokenizer`] (`tokenizer.json`, `<bos>` first, left-padded to 256, with
//!   [`GemmaTokenizer::locate`] to find the rows of query words) and [`GemmaEncoder`]
//!   (Gemma-2, only the layers `hidden_states[-2]` needs).
//! - [`TextEncoder`]: both, `encode(prompts) -> TextEmbeddings`, with ways to free the weights
//!   after encoding.
//!
//! Weights load from single or sharded safetensors in f32, f16 or bf16 onto any Burn
//! [`Device`](burn::tensor::Device), held in the [`FloatType`](editmgt_core::FloatType) asked
//! for. In half precision only the matrix products run in half: activations travel in f32
//! between layers, and normalisation, activations, rotary embedding, attention softmax and
//! soft-capping are computed in f32 (Gemma-2's activations overflow f16 otherwise). Outputs are
//! always f32.
//!
//! ```no_run
//! use std::path::Path;
//! use burn::tensor::Device;
//! use editmgt_core::FloatType;
//! use editmgt_text::TextEncoder;
//!
//! let device = Device::flex();
//! let (embeddings, tokenizers) =
//!     TextEncoder::encode_once(Path::new("EditMGT"), &device, FloatType::BF16, &["", "make the sky blue"])?;
//! let rows = tokenizers.gemma.locate("make the sky blue", "sky")?;
//! # Ok::<(), editmgt_text::TextError>(())
//! ```

pub mod clip;
mod encoder;
mod error;
mod fixed_length;
pub mod gemma;
mod ops;
mod settings;
mod tokens;

pub use clip::{ClipTextEncoder, ClipTokenizer};
pub use encoder::{TextEmbeddings, TextEncoder, TextTokenizers};
pub use error::TextError;
pub use gemma::{GemmaEncoder, GemmaTokenizer};
pub use settings::PaddingSide;
pub use tokens::TokenIds;

//! EditMGT's masked generative transformer (~1.0 B parameters) on Burn, with reference
//! injection and attention capture.
//!
//! # What it computes
//!
//! The port of the reference's `Transformer2DModel` (repository `weichow23/EditMGT`,
//! `src/transformer.py`), for the released EditMGT checkpoint and plain Meissonic ones:
//!
//! 1. Text: `connector` (Linear, EditMGT only), `context_embedder`, RMSNorm.
//! 2. Conditioning: each micro-cond value's 256-wide sinusoidal embedding after `pooled` ->
//!    `cond_embed` = `c`; `temb = timestep_embedder(sin256(t * 1000)) + text_embedder(c)`;
//!    reference tokens use `t = 0` (`reference_temb`).
//! 3. Tokens: embedding, RMSNorm, 1x1 conv; RMSNorm and 2x2 stride-2 conv (64x64 -> 32x32);
//!    RMSNorm, `project_to_hidden`. Reference tokens take the same path, in the same pass.
//! 4. Rotary positions over three axes ([`rotary`]), interleaved pairs.
//! 5. Double-stream blocks ([`double_block`]), then single-stream blocks ([`single_block`]),
//!    each with one joint attention over `[text, image, reference]` ([`attention`]): image and
//!    reference share weights, AdaLN-Zero modulation differs (`temb` vs `reference_temb`), and
//!    `log(strength)` biases the logits between reference and non-reference tokens.
//! 6. The image tokens: RMSNorm, `project_from_hidden`, RMSNorm and 2x2 transposed conv
//!    (32x32 -> 64x64), the MLM head ([`head`]) -> logits `[B, codebook, 64, 64]`.
//!
//! Every RMSNorm runs in float32 (and so do the LayerNorm statistics, the rotation and the
//! captured softmax); weights may be float32, float16 or bfloat16 ([`FloatType`]).
//!
//! # Use
//!
//! ```no_run
//! use burn::tensor::{Device, Int, Tensor};
//! use editmgt_core::FloatType;
//! use editmgt_mgt::{CaptureRequest, MgtInput, MgtTransformer};
//!
//! # fn main() -> Result<(), editmgt_mgt::MgtError> {
//! let device = Device::flex();
//! let model = MgtTransformer::load("model".as_ref(), &device, FloatType::F32)?;
//! # let (tokens, reference): (Tensor<3, Int>, Tensor<3, Int>) = todo!();
//! # let (states, pooled, micro_conds): (Tensor<3>, Tensor<2>, Tensor<2>) = todo!();
//! // Once per image: positions for 256 text rows and a 64x64 token grid.
//! let rotary = model.rotary_table(&model.positions(256, 64, 64), &device);
//! // Every step: the guidance batch [negative, positive], capturing blocks 28..=36 for the
//! // conditional row only.
//! let out = model.forward(
//!     MgtInput::new(tokens, states, pooled, micro_conds, 35.0)
//!         .with_reference(reference, 1.1)
//!         .with_capture(CaptureRequest::blocks(28..=36).with_batch_rows([1]))
//!         .with_rotary(rotary.clone()),
//! )?;
//! let logits = out.logits; // [2, 8192, 64, 64], float32
//! let maps = out.capture(28); // [1, 256, 1024], averaged over heads
//! # Ok(()) }
//! ```
//!
//! # Known faults of the reference, done differently here
//!
//! - Capturing a double-stream block with `reference_strength != 1` crashes in the reference;
//!   here it works (the capture softmax covers `[text, image]` keys, where the strength bias
//!   is zero anyway).
//! - The reference recomputes a full `S x S` attention matrix per captured block; here only
//!   the text-query rows (optionally a subset of text and batch rows) against `[text, image]`
//!   keys are computed ([`capture`]).
//! - The reference keeps `reference_strength` on the model once set; here it is a per-call
//!   argument ([`MgtInput::reference_strength`]).
//!
//! Further differences that do not change results: image and reference tokens run through
//! each linear layer together; the strength bias and rotary table are built once per forward
//! (the table can be reused across forwards); the last single-stream block computes only the
//! image rows, the only ones read afterwards. Float16 streams are clipped to the finite range
//! after every block (the reference clips only some of them).

pub mod attention;
pub mod capture;
pub mod config;
pub mod double_block;
pub mod embeddings;
mod error;
pub mod head;
pub mod lora;
pub mod model;
pub mod norm;
pub mod peft;
pub mod rotary;
pub mod sampling;
pub mod single_block;

pub use capture::{CaptureRequest, CapturedAttention};
pub use config::{Connector, MgtConfig, TextEncoderArchitecture};
pub use editmgt_core::FloatType;
pub use error::MgtError;
pub use lora::{AttentionLora, LoraAdapter, LoraStreams};
pub use model::{MgtFeatures, MgtInput, MgtOutput, MgtTransformer};
pub use peft::{AdapterConfig, PeftAdapter};
pub use rotary::{Positions, RotaryTable};

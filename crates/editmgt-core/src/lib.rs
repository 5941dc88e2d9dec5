//! Shared plumbing of the editmgt-rs crates.
//!
//! Every component crate (`editmgt-vq`, `editmgt-text`, `editmgt-mgt`, ...) loads its part of a
//! Hugging Face model folder the same way: a serde configuration read from `config.json`, and
//! weights read from one safetensors file or from shards listed in a `*.safetensors.index.json`,
//! memory-mapped and applied to a lazily initialised Burn module through `burn-store`. This crate
//! holds that common path so the component crates only state *what* they load:
//!
//! - [`config`]: reading a JSON configuration into a serde struct, and refusing values a
//!   component does not implement ([`LoadError::Unsupported`]).
//! - [`weights`]: locating weight files ([`WeightFiles`]), loading them into a module in a chosen
//!   [`FloatType`] ([`load_module`]), the checkpoint-to-module name mapping ([`KeyMap`]).
//! - [`shapes`]: the checkpoint names and shapes a module expects, computed without
//!   materialising a single weight (used by the real-shape tests).
//! - [`LoadError`]: the typed error all of the above return, naming the file, tensor or field at
//!   fault.
//! - [`fused_attention`], [`direct_conv`], [`group_norm`], [`activation`], [`adaln`] and
//!   [`bf16_products`]: the attention, the convolution (also with a GroupNorm + SiLU applied to
//!   its input), the GroupNorm statistics, the tanh GELU, the blocks' modulated LayerNorm, gated
//!   residual and RMSNorm, and the linear layers (bf16 products on CPUs with AMX-BF16 or
//!   AVX512-BF16) the models call, with CPU kernels on Burn's `flex` backend (feature `flex`) and
//!   Burn's own ops on every other backend.

// First: its macro serves the kernel modules below.
#[cfg(feature = "flex")]
#[macro_use]
mod widest;

pub mod activation;
pub mod adaln;
pub mod bf16_products;
pub mod config;
pub mod direct_conv;
mod dtype;
mod error;
#[cfg(feature = "flex")]
mod flex_values;
pub mod fused_attention;
pub mod group_norm;
#[cfg(all(test, feature = "flex"))]
mod kernel_tests;
pub mod limits;
pub mod rng;
pub mod select;
pub mod shapes;
pub mod token_table;
#[cfg(feature = "flex")]
mod vector_math;
pub mod weights;

pub use dtype::FloatType;
pub use error::LoadError;
pub use weights::{KeyMap, WeightFiles, load_module};

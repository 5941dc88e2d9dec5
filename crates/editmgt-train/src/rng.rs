//! The portable random generator of training (masks, dropout, data order): the workspace's one
//! SplitMix64, so the same seed gives the same run on every platform.

pub use editmgt_core::rng::SplitMix64;

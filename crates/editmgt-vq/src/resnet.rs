//! The ResNet block shared by encoder and decoder (diffusers `ResnetBlock2D`, no time embedding).

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{GroupNorm, GroupNormConfig, PaddingConfig2d};
use burn::tensor::Device;

use crate::banded::{Bands, Cut, norm_silu_conv, pointwise};

/// GroupNorm epsilon used throughout the VQ model.
pub(crate) const NORM_EPS: f64 = 1e-6;

/// `x + conv2(silu(norm2(conv1(silu(norm1(x))))))`, with a 1x1 `conv_shortcut` on `x` when the
/// channel count changes.
#[derive(Module, Debug)]
pub(crate) struct ResnetBlock {
    norm1: GroupNorm,
    conv1: Conv2d,
    norm2: GroupNorm,
    conv2: Conv2d,
    conv_shortcut: Option<Conv2d>,
}

impl ResnetBlock {
    pub(crate) fn new(
        channels_in: usize,
        channels_out: usize,
        groups: usize,
        device: &Device,
    ) -> Self {
        Self {
            norm1: group_norm(groups, channels_in, device),
            conv1: conv3x3(channels_in, channels_out, device),
            norm2: group_norm(groups, channels_out, device),
            conv2: conv3x3(channels_out, channels_out, device),
            conv_shortcut: (channels_in != channels_out)
                .then(|| Conv2dConfig::new([channels_in, channels_out], [1, 1]).init(device)),
        }
    }

    /// `count` blocks taking `channels_in` to `channels_out` (the first block changes the
    /// width, the others keep it): the resnets of one encoder or decoder level.
    pub(crate) fn stack(
        channels_in: usize,
        channels_out: usize,
        count: usize,
        groups: usize,
        device: &Device,
    ) -> Vec<Self> {
        (0..count)
            .map(|i| {
                let from = if i == 0 { channels_in } else { channels_out };
                Self::new(from, channels_out, groups, device)
            })
            .collect()
    }

    pub(crate) fn forward(&self, x: Bands, cut: &Cut) -> Bands {
        let h = norm_silu_conv(&self.norm1, &self.conv1, &x, cut);
        let h = norm_silu_conv(&self.norm2, &self.conv2, &h, cut);
        let shortcut = match &self.conv_shortcut {
            Some(conv) => pointwise(conv, &x, cut),
            None => x,
        };
        shortcut.add(&h)
    }
}

/// GroupNorm with the model's epsilon.
pub(crate) fn group_norm(groups: usize, channels: usize, device: &Device) -> GroupNorm {
    GroupNormConfig::new(groups, channels)
        .with_epsilon(NORM_EPS)
        .init(device)
}

/// A 3x3 convolution with padding 1 and bias.
pub(crate) fn conv3x3(channels_in: usize, channels_out: usize, device: &Device) -> Conv2d {
    Conv2dConfig::new([channels_in, channels_out], [3, 3])
        .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
        .init(device)
}

//! The VQ encoder: image -> latent grid (diffusers `Encoder` with `DownEncoderBlock2D`s).

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{GroupNorm, PaddingConfig2d};
use burn::tensor::{Device, Tensor};

use crate::VqConfig;
use crate::banded::{Bands, Cut, conv3x3 as banded_conv3x3, downsample, norm_silu_conv};
use crate::resnet::{ResnetBlock, conv3x3, group_norm};

/// Stride-2 3x3 convolution that pads only the right and bottom by one (diffusers
/// `Downsample2D` with `padding = 0`).
#[derive(Module, Debug)]
struct Downsample {
    conv: Conv2d,
}

/// One resolution level: ResNet blocks, then (all but the last level) a downsample.
#[derive(Module, Debug)]
struct DownBlock {
    resnets: Vec<ResnetBlock>,
    downsamplers: Vec<Downsample>,
}

/// Two ResNet blocks at the lowest resolution (no attention in the released model).
#[derive(Module, Debug)]
pub(crate) struct MidBlock {
    resnets: Vec<ResnetBlock>,
}

impl MidBlock {
    pub(crate) fn new(channels: usize, groups: usize, device: &Device) -> Self {
        Self {
            resnets: (0..2)
                .map(|_| ResnetBlock::new(channels, channels, groups, device))
                .collect(),
        }
    }

    pub(crate) fn forward(&self, x: Bands, cut: &Cut) -> Bands {
        self.resnets
            .iter()
            .fold(x, |x, block| block.forward(x, cut))
    }
}

/// The encoder.
#[derive(Module, Debug)]
pub(crate) struct Encoder {
    conv_in: Conv2d,
    down_blocks: Vec<DownBlock>,
    mid_block: MidBlock,
    conv_norm_out: GroupNorm,
    conv_out: Conv2d,
}

impl Encoder {
    pub(crate) fn new(config: &VqConfig, device: &Device) -> Self {
        let widths = &config.block_out_channels;
        let groups = config.norm_num_groups;
        let last = widths.len() - 1;
        let mut channels = widths[0];
        let down_blocks = widths
            .iter()
            .enumerate()
            .map(|(level, &width)| {
                let resnets =
                    ResnetBlock::stack(channels, width, config.layers_per_block, groups, device);
                channels = width;
                let downsamplers = if level < last {
                    vec![Downsample {
                        conv: Conv2dConfig::new([width, width], [3, 3])
                            .with_stride([2, 2])
                            .with_padding(PaddingConfig2d::Explicit(0, 0, 1, 1))
                            .init(device),
                    }]
                } else {
                    Vec::new()
                };
                DownBlock {
                    resnets,
                    downsamplers,
                }
            })
            .collect();
        Self {
            conv_in: conv3x3(config.in_channels, widths[0], device),
            down_blocks,
            mid_block: MidBlock::new(widths[last], groups, device),
            conv_norm_out: group_norm(groups, widths[last], device),
            conv_out: conv3x3(widths[last], config.latent_channels, device),
        }
    }

    /// The latent grid of `image`, its activations stored as `cut` says.
    pub(crate) fn forward(&self, image: Tensor<4>, cut: &Cut) -> Tensor<4> {
        let mut x = banded_conv3x3(&self.conv_in, &Bands::whole(image), cut);
        for block in &self.down_blocks {
            for resnet in &block.resnets {
                x = resnet.forward(x, cut);
            }
            for down in &block.downsamplers {
                x = downsample(&down.conv, &x, cut);
            }
        }
        let x = self.mid_block.forward(x, cut);
        norm_silu_conv(&self.conv_norm_out, &self.conv_out, &x, cut).into_whole()
    }
}

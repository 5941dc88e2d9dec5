//! The VQ decoder: latent grid -> image (diffusers `Decoder` with `UpDecoderBlock2D`s).

use burn::module::Module;
use burn::nn::GroupNorm;
use burn::nn::conv::Conv2d;
use burn::tensor::{Device, Tensor};

use crate::VqConfig;
use crate::banded::{Bands, Cut, conv3x3 as banded_conv3x3, norm_silu_conv, upsample_conv};
use crate::encoder::MidBlock;
use crate::resnet::{ResnetBlock, conv3x3, group_norm};

/// Nearest-neighbour x2 upsampling followed by a 3x3 convolution (diffusers `Upsample2D`).
#[derive(Module, Debug)]
struct Upsample {
    conv: Conv2d,
}

impl Upsample {
    fn forward(&self, x: &Bands, cut: &Cut) -> Bands {
        upsample_conv(&self.conv, x, cut)
    }
}

/// One resolution level: `layers_per_block + 1` ResNet blocks, then (all but the last level) an
/// upsample.
#[derive(Module, Debug)]
struct UpBlock {
    resnets: Vec<ResnetBlock>,
    upsamplers: Vec<Upsample>,
}

/// The decoder.
#[derive(Module, Debug)]
pub(crate) struct Decoder {
    conv_in: Conv2d,
    mid_block: MidBlock,
    up_blocks: Vec<UpBlock>,
    conv_norm_out: GroupNorm,
    conv_out: Conv2d,
}

impl Decoder {
    pub(crate) fn new(config: &VqConfig, device: &Device) -> Self {
        let widths: Vec<usize> = config.block_out_channels.iter().rev().copied().collect();
        let groups = config.norm_num_groups;
        let last = widths.len() - 1;
        let mut channels = widths[0];
        let up_blocks = widths
            .iter()
            .enumerate()
            .map(|(level, &width)| {
                let resnets = ResnetBlock::stack(
                    channels,
                    width,
                    config.layers_per_block + 1,
                    groups,
                    device,
                );
                channels = width;
                let upsamplers = if level < last {
                    vec![Upsample {
                        conv: conv3x3(width, width, device),
                    }]
                } else {
                    Vec::new()
                };
                UpBlock {
                    resnets,
                    upsamplers,
                }
            })
            .collect();
        Self {
            conv_in: conv3x3(config.latent_channels, widths[0], device),
            mid_block: MidBlock::new(widths[0], groups, device),
            up_blocks,
            conv_norm_out: group_norm(groups, widths[last], device),
            conv_out: conv3x3(widths[last], config.out_channels, device),
        }
    }

    /// The image of `latents`, its activations stored as `cut` says.
    pub(crate) fn forward(&self, latents: Tensor<4>, cut: &Cut) -> Tensor<4> {
        let x = banded_conv3x3(&self.conv_in, &Bands::whole(latents), cut);
        let mut x = self.mid_block.forward(x, cut);
        for block in &self.up_blocks {
            for resnet in &block.resnets {
                x = resnet.forward(x, cut);
            }
            for up in &block.upsamplers {
                x = up.forward(&x, cut);
            }
        }
        norm_silu_conv(&self.conv_norm_out, &self.conv_out, &x, cut).into_whole()
    }
}

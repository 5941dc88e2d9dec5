use crate::accumulate::conv_forward;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::tensor::{DType, Device, Int, Tensor};
use editmgt_core::config::component_folder;
use editmgt_core::shapes::{ParamEntry, parameter_table};
use editmgt_core::{FloatType, KeyMap, WeightFiles, load_module};

use crate::banded::Cut;
use crate::decoder::Decoder;
use crate::encoder::Encoder;
use crate::quantizer::VectorQuantizer;
use crate::{VqConfig, VqError};

/// diffusers' `VQModel` as released with EditMGT: the image tokenizer and detokenizer.
///
/// Parameter paths equal the checkpoint's tensor names (`encoder.down_blocks.0.resnets.0.conv1`,
/// `quantize.embedding`, ...), so loading needs no renaming.
#[derive(Module, Debug)]
pub struct VqModel {
    encoder: Encoder,
    quant_conv: Conv2d,
    quantize: VectorQuantizer,
    post_quant_conv: Conv2d,
    decoder: Decoder,
    #[module(skip)]
    meta: Meta,
}

/// Everything about a [`VqModel`] that is not a weight.
#[derive(Debug, Clone, Default)]
struct Meta {
    factor: usize,
    in_channels: usize,
    codebook: usize,
    /// The bound set by [`VqModel::with_max_buffer_bytes`], if any.
    max_buffer_bytes: Option<u64>,
    /// The largest activation band stored so far, in bytes (shared by clones).
    largest_band: Arc<AtomicU64>,
}

impl VqModel {
    /// Builds the model for `config` with lazily initialised (unallocated) random weights.
    ///
    /// The configuration must have passed [`VqConfig::validate`]; use
    /// [`VqModel::from_folder`] to load a released model.
    pub fn new(config: &VqConfig, device: &Device) -> Self {
        let dim = config.embed_dim();
        Self {
            encoder: Encoder::new(config, device),
            quant_conv: Conv2dConfig::new([config.latent_channels, dim], [1, 1]).init(device),
            quantize: VectorQuantizer::new(config.num_vq_embeddings, dim, device),
            post_quant_conv: Conv2dConfig::new([dim, config.latent_channels], [1, 1]).init(device),
            decoder: Decoder::new(config, device),
            meta: Meta {
                factor: config.downsampling_factor(),
                in_channels: config.in_channels,
                codebook: config.num_vq_embeddings,
                max_buffer_bytes: None,
                largest_band: Arc::default(),
            },
        }
    }

    /// Loads `config.json` and `diffusion_pytorch_model.safetensors` (or its shards) from a
    /// `vqvae/` folder onto `device`, holding the weights as `dtype`.
    pub fn from_folder(
        folder: impl AsRef<Path>,
        device: &Device,
        dtype: FloatType,
    ) -> Result<Self, VqError> {
        let folder = component_folder(folder.as_ref(), "")?;
        dtype.check_device(device)?;
        let config = VqConfig::from_file(&folder.join("config.json"))?;
        let files = WeightFiles::discover(&folder, "diffusion_pytorch_model")?;
        Self::from_files(&config, &files, device, dtype)
    }

    /// Loads weights from explicit files for an already validated configuration.
    pub fn from_files(
        config: &VqConfig,
        files: &WeightFiles,
        device: &Device,
        dtype: FloatType,
    ) -> Result<Self, VqError> {
        Ok(load_module(
            Self::new(config, device),
            files,
            &KeyMap::new(),
            dtype,
        )?)
    }

    /// Checkpoint names and shapes of every parameter (nothing is materialised).
    pub fn parameter_table(&self) -> Vec<ParamEntry> {
        parameter_table(self, &KeyMap::new())
    }

    /// The float type the weights are held in.
    pub fn float_type(&self) -> FloatType {
        FloatType::from_dtype(self.post_quant_conv.weight.val().dtype()).unwrap_or_default()
    }

    /// The spatial downsampling factor (16 for the released model): an `H x W` image becomes an
    /// `H/f x W/f` token grid.
    pub fn downsampling_factor(&self) -> usize {
        self.meta.factor
    }

    /// The number of codebook entries (8192 for the released model).
    pub fn codebook_size(&self) -> usize {
        self.meta.codebook
    }

    /// Stores the activations of [`encode`](Self::encode) and [`decode`](Self::decode) in bands
    /// of rows of at most `bytes` each (at least one row per band, whatever the bound).
    ///
    /// Without it the bound is the device's, [`editmgt_core::limits::max_buffer_bytes`]: 128 MiB
    /// on GPU backends (the storage-buffer binding many adapters allow; a 128-channel activation
    /// at 1024x1024 is 512 MiB in f32), none on the CPU (one band), or
    /// `$EDITMGT_MAX_BUFFER_BYTES` when set. The results are the same up to float rounding.
    pub fn with_max_buffer_bytes(mut self, bytes: u64) -> Self {
        self.meta.max_buffer_bytes = Some(bytes);
        self
    }

    /// The largest activation band this model's encodes and decodes have stored so far, in bytes
    /// (0 before the first): at most the bound of
    /// [`with_max_buffer_bytes`](Self::with_max_buffer_bytes), unless one row is larger.
    pub fn largest_band_bytes(&self) -> u64 {
        self.meta.largest_band.load(Ordering::Relaxed)
    }

    /// How activations on `device` are cut into bands.
    fn cut(&self, device: &Device) -> Cut {
        let bytes = self
            .meta
            .max_buffer_bytes
            .unwrap_or_else(|| editmgt_core::limits::max_buffer_bytes(device));
        Cut::new(bytes, self.meta.largest_band.clone())
    }

    /// Encodes an image batch `[B, C, H, W]` with values in `[0, 1]` into latents
    /// `[B, embed_dim, H/f, W/f]` (after `quant_conv`).
    pub fn encode(&self, images: Tensor<4>) -> Result<Tensor<4>, VqError> {
        let meta = &self.meta;
        let [_, c, h, w] = images.dims();
        if c != meta.in_channels {
            return Err(VqError::InvalidShape {
                what: "images",
                expected: format!("[B, {}, H, W]", meta.in_channels),
                found: images.dims().to_vec(),
            });
        }
        if h == 0 || w == 0 || h % meta.factor != 0 || w % meta.factor != 0 {
            return Err(VqError::InvalidImageSize {
                height: h,
                width: w,
                factor: meta.factor,
            });
        }
        let cut = self.cut(&images.device());
        let images = images.cast(self.float_type().dtype());
        Ok(conv_forward(
            &self.quant_conv,
            self.encoder.forward(images, &cut),
        ))
    }

    /// The token grid `[B, H, W]` of latents `[B, C, H, W]`: the nearest codebook entry of each
    /// latent vector.
    pub fn quantize(&self, latents: Tensor<4>) -> Tensor<3, Int> {
        self.quantize.indices(latents)
    }

    /// The codebook vectors of a token grid, `[B, H, W]` -> `[B, C, H, W]` (the quantised latents).
    pub fn dequantize(&self, tokens: Tensor<3, Int>) -> Result<Tensor<4>, VqError> {
        self.check_tokens(&tokens)?;
        Ok(self.quantize.lookup(tokens))
    }

    /// Encodes and quantises: image batch `[B, C, H, W]` in `[0, 1]` -> token grid `[B, H/f, W/f]`.
    pub fn tokenize(&self, images: Tensor<4>) -> Result<Tensor<3, Int>, VqError> {
        Ok(self.quantize(self.encode(images)?))
    }

    /// Decodes a token grid `[B, h, w]` into images `[B, C, h*f, w*f]` (f32, not clipped).
    ///
    /// Every token must be a codebook index; replace mask tokens first (the reference decodes
    /// them as token 0).
    pub fn decode(&self, tokens: Tensor<3, Int>) -> Result<Tensor<4>, VqError> {
        let cut = self.cut(&tokens.device());
        let latents = self.dequantize(tokens)?;
        let image = self
            .decoder
            .forward(conv_forward(&self.post_quant_conv, latents), &cut);
        Ok(image.cast(DType::F32))
    }

    fn check_tokens(&self, tokens: &Tensor<3, Int>) -> Result<(), VqError> {
        let codebook = self.codebook_size();
        let [b, h, w] = tokens.dims();
        if b == 0 || h == 0 || w == 0 {
            return Err(VqError::InvalidShape {
                what: "tokens",
                expected: "a non-empty [B, H, W] grid".into(),
                found: tokens.dims().to_vec(),
            });
        }
        let min: i64 = read_scalar(tokens.clone().min())?;
        let max: i64 = read_scalar(tokens.clone().max())?;
        for token in [min, max] {
            if token < 0 || token as usize >= codebook {
                return Err(VqError::TokenOutOfRange { token, codebook });
            }
        }
        Ok(())
    }
}

fn read_scalar(t: Tensor<1, Int>) -> Result<i64, VqError> {
    t.try_into_scalar::<i64>()
        .map_err(|e| VqError::Readback(format!("{e:?}")))
}

//! Conditioning embeddings: sinusoidal timestep / micro-condition embeddings, `cond_embed` and
//! `time_text_embed`.
//!
//! Sinusoidal embeddings follow diffusers' `get_timestep_embedding` with `flip_sin_to_cos`
//! (cosines first), `downscale_freq_shift 0` and max period 10000, reproducing its float32
//! rounding: the frequencies and the products `value * frequency` are float32, the sine and
//! cosine of those products are exact.

use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::tensor::activation::silu;
use burn::tensor::{DType, Device, Tensor, TensorData};
use editmgt_core::bf16_products::linear;

/// The float32 frequencies of a `dim`-wide sinusoidal embedding (`dim / 2` of them).
pub(crate) fn sinusoid_frequencies(dim: usize) -> Vec<f32> {
    let half = dim / 2;
    let log_period = -(10_000f64.ln()) as f32;
    (0..half)
        .map(|k| {
            let exponent = (log_period * k as f32) / half as f32;
            torch_expf(exponent)
        })
        .collect()
}

/// `exp` of a float32 as PyTorch's CPU kernel returns it: the correctly rounded value, except
/// for the inputs in [`TORCH_EXPF_EXCEPTIONS`], where PyTorch's (1-ulp accurate, not correctly
/// rounded) `exp` lands on the other neighbour of a near-tie. Training embeds timesteps around
/// `1e6`, where one ulp of a frequency moves the sine's argument by ~0.05 rad, so the
/// difference shows in the logits (2e-4 relative) and the gradients (up to 3e-2).
fn torch_expf(x: f32) -> f32 {
    let rounded = (x as f64).exp() as f32;
    TORCH_EXPF_EXCEPTIONS
        .iter()
        .find(|(input, _)| *input == x.to_bits())
        .map_or(rounded, |(_, output)| f32::from_bits(*output))
}

/// `(input bits, output bits)` where PyTorch's float32 `exp` differs from the correctly rounded
/// result, among the inputs of the 256-wide sinusoidal embeddings: `exp(-0.86346942)` (the
/// 13th frequency, exact value 0.02 ulp below the midpoint) is returned rounded up. Found by
/// comparing with the reference's training-step logits (`cases/train.safetensors`).
const TORCH_EXPF_EXCEPTIONS: [(u32, u32); 1] = [(0xBF5D_0C55, 0x3ED7_E89B)];

/// The `dim`-wide embedding of one value, `[cos(v f_0) .. cos(v f_h), sin(v f_0) .. sin(v f_h)]`.
pub(crate) fn sinusoid_host(value: f32, dim: usize) -> Vec<f32> {
    let freqs = sinusoid_frequencies(dim);
    let args: Vec<f64> = freqs.iter().map(|f| (value * f) as f64).collect();
    let mut out: Vec<f32> = args.iter().map(|a| a.cos() as f32).collect();
    out.extend(args.iter().map(|a| a.sin() as f32));
    out.resize(dim, 0.0);
    out
}

/// Sinusoidal embeddings of every value of `values` (`[B, K]`, float32), concatenated per row:
/// `[B, K * dim]` (value-major, each `[cos.., sin..]`).
pub(crate) fn sinusoid_rows(values: Tensor<2>, dim: usize) -> Tensor<2> {
    let [batch, count] = values.dims();
    let device = values.device();
    let freqs = sinusoid_frequencies(dim);
    let half = freqs.len();
    let freqs = Tensor::<2>::from_data(TensorData::new(freqs, [1, half]), (&device, DType::F32));
    let args = values.cast(DType::F32).reshape([batch * count, 1]) * freqs;
    Tensor::cat(vec![args.clone().cos(), args.sin()], 1).reshape([batch, count * 2 * half])
}

/// Linear, SiLU, Linear: diffusers' `TimestepEmbedding` and `PixArtAlphaTextProjection`
/// (`act_fn="silu"`), which have the same parameters (`linear_1`, `linear_2`).
#[derive(Module, Debug)]
pub struct MlpEmbedding {
    /// First projection.
    pub linear_1: Linear,
    /// Second projection.
    pub linear_2: Linear,
}

impl MlpEmbedding {
    /// `d_in -> d_hidden -> d_out`, with or without biases.
    pub fn new(d_in: usize, d_hidden: usize, d_out: usize, bias: bool, device: &Device) -> Self {
        Self {
            linear_1: LinearConfig::new(d_in, d_hidden)
                .with_bias(bias)
                .init(device),
            linear_2: LinearConfig::new(d_hidden, d_out)
                .with_bias(bias)
                .init(device),
        }
    }

    /// Applies the embedding to `[.., d_in]`.
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        linear(&self.linear_2, silu(linear(&self.linear_1, x)))
    }
}

/// `time_text_embed`: `temb = timestep_embedder(sin256(t * 1000)) + text_embedder(c)`, where `c`
/// is `cond_embed`'s output (diffusers' `CombinedTimestepTextProjEmbeddings` with the pooled
/// width equal to the transformer width).
#[derive(Module, Debug)]
pub struct TimeTextEmbedding {
    /// Embeds the sinusoidal timestep (256 -> width).
    pub timestep_embedder: MlpEmbedding,
    /// Embeds the conditioning vector (width -> width).
    pub text_embedder: MlpEmbedding,
}

impl TimeTextEmbedding {
    /// The embedding for transformer width `dim`.
    pub fn new(dim: usize, device: &Device) -> Self {
        Self {
            timestep_embedder: MlpEmbedding::new(
                crate::config::TIMESTEP_EMBED_DIM,
                dim,
                dim,
                true,
                device,
            ),
            text_embedder: MlpEmbedding::new(dim, dim, dim, true, device),
        }
    }

    /// The timestep part for step index `t` (the reference multiplies it by 1000 first):
    /// `[1, dim]` in `dtype`.
    pub fn timestep(&self, t: f32, dtype: DType, device: &Device) -> Tensor<2> {
        let dim = crate::config::TIMESTEP_EMBED_DIM;
        let embedding = sinusoid_host(t * 1000.0, dim);
        let embedding =
            Tensor::<2>::from_data(TensorData::new(embedding, [1, dim]), (device, dtype));
        self.timestep_embedder.forward(embedding)
    }

    /// The timestep part for one step index per batch row: `[B, dim]` in `dtype`.
    pub fn timesteps(&self, steps: &[f32], dtype: DType, device: &Device) -> Tensor<2> {
        let dim = crate::config::TIMESTEP_EMBED_DIM;
        let rows: Vec<f32> = steps
            .iter()
            .flat_map(|t| sinusoid_host(t * 1000.0, dim))
            .collect();
        let embedding =
            Tensor::<2>::from_data(TensorData::new(rows, [steps.len(), dim]), (device, dtype));
        self.timestep_embedder.forward(embedding)
    }
}

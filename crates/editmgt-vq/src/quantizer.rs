//! Vector quantisation: nearest codebook entry per latent vector, and codebook lookup.

use burn::module::Module;
use burn::nn::{Embedding, EmbeddingConfig};
use burn::tensor::{Device, Int, Tensor};

/// The codebook (`quantize.embedding.weight`, `[num_vq_embeddings, embed_dim]`).
#[derive(Module, Debug)]
pub struct VectorQuantizer {
    embedding: Embedding,
}

/// Latent vectors quantised per chunk, bounding the `[rows, codebook]` distance matrix.
const ROWS_PER_CHUNK: usize = 4096;

impl VectorQuantizer {
    pub(crate) fn new(entries: usize, dim: usize, device: &Device) -> Self {
        Self {
            embedding: EmbeddingConfig::new(entries, dim).init(device),
        }
    }

    /// Number of codebook entries.
    pub fn len(&self) -> usize {
        self.embedding.weight.lazy_shape()[0]
    }

    /// Whether the codebook is empty (never, for a validated configuration).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The index of the nearest codebook row (squared Euclidean distance, ties to the lowest
    /// index) for every latent vector of `latents` `[B, C, H, W]` -> `[B, H, W]`.
    pub fn indices(&self, latents: Tensor<4>) -> Tensor<3, Int> {
        let [b, c, h, w] = latents.dims();
        let codebook = self.embedding.weight.val();
        // Distances are computed in f32 whatever the model's float type: ties between close
        // codebook entries must not be decided by half-precision rounding.
        let codebook = codebook.cast(burn::tensor::DType::F32);
        let code_norms = codebook.clone().powi_scalar(2).sum_dim(1).reshape([1, -1]);
        let codebook_t = codebook.transpose();
        let vectors = latents
            .cast(burn::tensor::DType::F32)
            .permute([0, 2, 3, 1])
            .reshape([b * h * w, c]);
        let rows = b * h * w;
        let mut parts = Vec::with_capacity(rows.div_ceil(ROWS_PER_CHUNK));
        let mut start = 0;
        while start < rows {
            let end = (start + ROWS_PER_CHUNK).min(rows);
            let z = vectors.clone().slice(start..end);
            // |z - e|^2 = |z|^2 - 2 z.e + |e|^2; |z|^2 is constant per row and cannot change the
            // argmin, so it is left out.
            let scores = code_norms.clone() - z.matmul(codebook_t.clone()) * 2.0;
            parts.push(scores.argmin(1).reshape([-1]));
            start = end;
        }
        Tensor::cat(parts, 0).reshape([b, h, w])
    }

    /// Codebook vectors of `indices` `[B, H, W]` as a latent grid `[B, C, H, W]`.
    pub fn lookup(&self, indices: Tensor<3, Int>) -> Tensor<4> {
        let [b, h, w] = indices.dims();
        let vectors = self
            .embedding
            .weight
            .val()
            .select(0, indices.reshape([b * h * w]));
        let c = vectors.dims()[1];
        vectors.reshape([b, h, w, c]).permute([0, 3, 1, 2])
    }
}

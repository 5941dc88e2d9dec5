//! Both encoders together: what the MGT receives for a batch of prompts.

use std::path::Path;

use burn::tensor::{Device, Tensor};
use editmgt_core::FloatType;
use editmgt_core::config::component_folder;

use crate::TextError;
use crate::clip::{ClipTextEncoder, ClipTokenizer};
use crate::gemma::{GemmaEncoder, GemmaTokenizer};

/// The text conditioning of a batch of prompts.
#[derive(Debug, Clone)]
pub struct TextEmbeddings {
    /// Gemma-2's `hidden_states[-2]`, `[batch, 256, hidden]` (2304 for the released model), f32.
    pub encoder_hidden_states: Tensor<3>,
    /// CLIP's pooled, projected vector, `[batch, projection]` (1024 for the released model),
    /// f32.
    pub pooled: Tensor<2>,
}

/// Both tokenizers, which stay useful after the encoders are dropped (e.g. for
/// [`GemmaTokenizer::locate`]).
#[derive(Debug, Clone)]
pub struct TextTokenizers {
    /// The CLIP tokenizer (`tokenizer/`).
    pub clip: ClipTokenizer,
    /// The Gemma tokenizer (`llm_encoder/`).
    pub gemma: GemmaTokenizer,
}

impl TextTokenizers {
    /// Loads `tokenizer/` and the tokenizer of `llm_encoder/` from a model folder.
    pub fn from_model_dir(model_dir: &Path) -> Result<Self, TextError> {
        Ok(Self {
            clip: ClipTokenizer::from_model_dir(model_dir)?,
            gemma: GemmaTokenizer::from_model_dir(model_dir)?,
        })
    }
}

/// EditMGT's text encoder: CLIP for the pooled vector, Gemma-2 for the token states.
///
/// Memory: the encoders are only needed once per edit. Either keep a `TextEncoder` and call
/// [`TextEncoder::encode`], then [`TextEncoder::into_tokenizers`] to free the weights; or use
/// [`TextEncoder::encode_once`], which loads CLIP alone and runs Gemma-2 one layer at a time,
/// so the peak is CLIP's weights rather than both encoders.
#[derive(Debug)]
pub struct TextEncoder {
    tokenizers: TextTokenizers,
    clip: ClipTextEncoder,
    gemma: GemmaEncoder,
}

impl TextEncoder {
    /// Loads `tokenizer/`, `text_encoder/` and `llm_encoder/` from a model folder, the weights
    /// held in `dtype` on `device`.
    pub fn from_model_dir(
        model_dir: &Path,
        device: &Device,
        dtype: FloatType,
    ) -> Result<Self, TextError> {
        dtype.check_device(device)?;
        let tokenizers = TextTokenizers::from_model_dir(model_dir)?;
        let clip = ClipTextEncoder::from_model_dir(model_dir, device, dtype)?;
        let gemma = GemmaEncoder::from_model_dir(model_dir, device, dtype)?;
        Ok(Self::from_parts(tokenizers, clip, gemma))
    }

    /// Assembles an encoder from loaded parts.
    pub fn from_parts(
        tokenizers: TextTokenizers,
        clip: ClipTextEncoder,
        gemma: GemmaEncoder,
    ) -> Self {
        Self {
            tokenizers,
            clip,
            gemma,
        }
    }

    /// Encodes a batch of prompts of any size (an empty prompt is valid; an empty batch is
    /// [`TextError::EmptyBatch`]).
    pub fn encode(&self, prompts: &[&str]) -> Result<TextEmbeddings, TextError> {
        Ok(TextEmbeddings {
            encoder_hidden_states: encode_gemma(&self.tokenizers.gemma, &self.gemma, prompts)?,
            pooled: encode_clip(&self.tokenizers.clip, &self.clip, prompts)?,
        })
    }

    /// Encodes `prompts` straight from a model folder with the least memory: CLIP is loaded,
    /// run and freed, then Gemma-2 runs one decoder layer at a time
    /// ([`GemmaEncoder::forward_streamed`]); returns the embeddings and the tokenizers. The
    /// peak is CLIP's weights (about 1.4 GB in f32 for the released model) instead of both
    /// encoders (11.5 GB).
    pub fn encode_once(
        model_dir: &Path,
        device: &Device,
        dtype: FloatType,
        prompts: &[&str],
    ) -> Result<(TextEmbeddings, TextTokenizers), TextError> {
        dtype.check_device(device)?;
        if prompts.is_empty() {
            return Err(TextError::EmptyBatch);
        }
        let tokenizers = TextTokenizers::from_model_dir(model_dir)?;
        let pooled = {
            let clip = ClipTextEncoder::from_model_dir(model_dir, device, dtype)?;
            encode_clip(&tokenizers.clip, &clip, prompts)?
        };
        let encoder_hidden_states = GemmaEncoder::forward_streamed(
            &component_folder(model_dir, "llm_encoder")?,
            device,
            dtype,
            &tokenizers.gemma.encode(prompts)?,
        )?;
        Ok((
            TextEmbeddings {
                encoder_hidden_states,
                pooled,
            },
            tokenizers,
        ))
    }

    /// The tokenizers.
    pub fn tokenizers(&self) -> &TextTokenizers {
        &self.tokenizers
    }

    /// The CLIP encoder.
    pub fn clip(&self) -> &ClipTextEncoder {
        &self.clip
    }

    /// The Gemma encoder.
    pub fn gemma(&self) -> &GemmaEncoder {
        &self.gemma
    }

    /// Drops both encoders (freeing their weights) and keeps the tokenizers.
    pub fn into_tokenizers(self) -> TextTokenizers {
        self.tokenizers
    }

    /// The parts, to drop or keep separately.
    pub fn into_parts(self) -> (TextTokenizers, ClipTextEncoder, GemmaEncoder) {
        (self.tokenizers, self.clip, self.gemma)
    }
}

fn encode_clip(
    tokenizer: &ClipTokenizer,
    clip: &ClipTextEncoder,
    prompts: &[&str],
) -> Result<Tensor<2>, TextError> {
    let ids = tokenizer.encode(prompts)?;
    Ok(clip.forward(&ids, false)?.text_embeds)
}

fn encode_gemma(
    tokenizer: &GemmaTokenizer,
    gemma: &GemmaEncoder,
    prompts: &[&str],
) -> Result<Tensor<3>, TextError> {
    let ids = tokenizer.encode(prompts)?;
    gemma.forward(&ids)
}

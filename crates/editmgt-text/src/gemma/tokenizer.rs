use std::path::Path;

use editmgt_core::config::component_folder;
use tokenizers::Tokenizer;
use tokenizers::processors::template::TemplateProcessing;

use crate::fixed_length::{
    encode_batch, encode_one, fix_length, read_tokenizer_json, special_token_id,
};
use crate::settings::{PaddingSide, TokenizerSettings};
use crate::{TextError, TokenIds};

/// One row of a tokenised prompt (see [`GemmaTokenizer::token_spans`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenSpan {
    /// The row in the padded sequence (the row of `encoder_hidden_states`).
    pub row: usize,
    /// The token id.
    pub id: u32,
    /// The token string (`▁` stands for a space; `<0x..>` for byte-fallback tokens).
    pub token: String,
    /// Byte range of the prompt the token covers (empty for `<bos>` and pads).
    pub bytes: std::ops::Range<usize>,
    /// Whether it is a special token (`<bos>`, `<pad>`, ...).
    pub special: bool,
}

/// The Gemma tokenizer (transformers' `GemmaTokenizerFast`) from `tokenizer.json` and
/// `tokenizer_config.json`: `<bos>` first (the config's `add_bos_token`, default true;
/// `add_eos_token` appends `<eos>`), truncated to 256 keeping the start, padded to 256 with
/// `<pad>` on the left, or on the side the config's `padding_side` names.
#[derive(Debug, Clone)]
pub struct GemmaTokenizer {
    tokenizer: Tokenizer,
    pad_id: u32,
    bos_id: Option<u32>,
    padding_side: PaddingSide,
    max_length: usize,
}

impl GemmaTokenizer {
    /// The sequence length EditMGT tokenises to.
    pub const MAX_LENGTH: usize = 256;

    /// Loads the tokenizer of `llm_encoder/` in a model folder.
    pub fn from_model_dir(model_dir: &Path) -> Result<Self, TextError> {
        let folder = component_folder(model_dir, "llm_encoder")?;
        Self::from_folder(&folder)
    }

    /// Builds the tokenizer from a folder with `tokenizer.json` (required) and optionally
    /// `tokenizer_config.json` / `special_tokens_map.json`.
    pub fn from_folder(folder: &Path) -> Result<Self, TextError> {
        component_folder(folder, "")?; // the folder must exist
        let settings = TokenizerSettings::read(folder)?;
        let json_path = folder.join("tokenizer.json");
        let mut tokenizer = read_tokenizer_json(&json_path, "Gemma tokenizer")?;
        let bad = |message: String| TextError::TokenizerFile {
            path: json_path.clone(),
            message,
        };
        let id_of = |tokenizer: &Tokenizer, role, token: &str| {
            special_token_id(tokenizer, folder, role, token)
        };

        let pad = settings.pad_token.clone().unwrap_or_else(|| "<pad>".into());
        let pad_id = id_of(&tokenizer, "pad", &pad)?;
        // The post-processor transformers rebuilds from add_bos_token / add_eos_token.
        let bos = settings.bos_token.clone().unwrap_or_else(|| "<bos>".into());
        let eos = settings.eos_token.clone().unwrap_or_else(|| "<eos>".into());
        let add_bos = settings.add_bos_token.unwrap_or(true);
        let add_eos = settings.add_eos_token.unwrap_or(false);
        let mut single = Vec::new();
        let mut specials = Vec::new();
        let mut bos_id = None;
        if add_bos {
            let id = id_of(&tokenizer, "bos", &bos)?;
            bos_id = Some(id);
            single.push(format!("{bos}:0"));
            specials.push((bos.clone(), id));
        }
        single.push("$A:0".to_string());
        if add_eos {
            let id = id_of(&tokenizer, "eos", &eos)?;
            single.push(format!("{eos}:0"));
            specials.push((eos.clone(), id));
        }
        let pair = {
            let mut pair = single.clone();
            pair.extend(
                single
                    .iter()
                    .map(|p| p.replace("$A", "$B").replace(":0", ":1")),
            );
            pair
        };
        let processor = TemplateProcessing::builder()
            .try_single(single.join(" "))
            .map_err(bad)?
            .try_pair(pair.join(" "))
            .map_err(bad)?
            .special_tokens(specials)
            .build()
            .map_err(|e| bad(e.to_string()))?;
        tokenizer.with_post_processor(Some(processor));

        let max_length = Self::MAX_LENGTH;
        let padding_side = settings.padding_side.unwrap_or(PaddingSide::Left);
        fix_length(
            &mut tokenizer,
            max_length,
            padding_side,
            pad,
            pad_id,
            &json_path,
        )?;
        Ok(Self {
            tokenizer,
            pad_id,
            bos_id,
            padding_side,
            max_length,
        })
    }

    /// Token ids `[prompts.len(), 256]` of a batch of prompts (an empty prompt is valid: pads
    /// and `<bos>`). Fails on an empty batch.
    pub fn encode(&self, prompts: &[&str]) -> Result<TokenIds, TextError> {
        encode_batch(&self.tokenizer, prompts)
    }

    /// Every row of one prompt's padded sequence with its token and the byte range of the
    /// prompt it covers.
    pub fn token_spans(&self, prompt: &str) -> Result<Vec<TokenSpan>, TextError> {
        let encoding = encode_one(&self.tokenizer, 0, prompt)?;
        Ok(encoding
            .get_ids()
            .iter()
            .zip(encoding.get_tokens())
            .zip(encoding.get_offsets())
            .zip(encoding.get_special_tokens_mask())
            .enumerate()
            .map(
                |(row, (((&id, token), &(start, end)), &special))| TokenSpan {
                    row,
                    id,
                    token: token.clone(),
                    bytes: if special == 1 { 0..0 } else { start..end },
                    special: special == 1,
                },
            )
            .collect())
    }

    /// The rows of `prompt`'s padded sequence that hold the words of `query`: the rows of
    /// `encoder_hidden_states` to average when localising by query words.
    ///
    /// Words are maximal runs of alphanumeric characters, compared case-insensitively; every
    /// occurrence of every query word in the prompt counts, and a row is returned when its token
    /// overlaps a matched word (a token spanning two words, e.g. `▁the▁cat▁`, counts for both).
    /// Rows are sorted and refer to the padded sequence (with left padding, after the pads).
    /// Words cut off by truncation have no rows. Empty when nothing matches.
    ///
    /// The reference looks the query up in the CLIP tokenisation and uses those positions as
    /// Gemma rows, which picks unrelated rows; this looks it up where the rows come from.
    pub fn locate(&self, prompt: &str, query: &str) -> Result<Vec<usize>, TextError> {
        let wanted: Vec<String> = words(query).map(|(_, w)| w.to_lowercase()).collect();
        let matched: Vec<std::ops::Range<usize>> = words(prompt)
            .filter(|(_, w)| {
                let w = w.to_lowercase();
                wanted.contains(&w)
            })
            .map(|(range, _)| range)
            .collect();
        if matched.is_empty() {
            return Ok(Vec::new());
        }
        Ok(self
            .token_spans(prompt)?
            .into_iter()
            .filter(|span| {
                !span.special
                    && matched
                        .iter()
                        .any(|m| span.bytes.start < m.end && m.start < span.bytes.end)
            })
            .map(|span| span.row)
            .collect())
    }

    /// The pad token's id.
    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }

    /// The `<bos>` id, when the tokenizer adds one.
    pub fn bos_id(&self) -> Option<u32> {
        self.bos_id
    }

    /// Which side pads go to.
    pub fn padding_side(&self) -> PaddingSide {
        self.padding_side
    }

    /// The row length (256).
    pub fn max_length(&self) -> usize {
        self.max_length
    }

    /// The underlying `tokenizers` tokenizer (configured with truncation and padding).
    pub fn inner(&self) -> &Tokenizer {
        &self.tokenizer
    }
}

/// Maximal runs of alphanumeric characters with their byte ranges.
fn words(text: &str) -> impl Iterator<Item = (std::ops::Range<usize>, &str)> {
    let mut out = Vec::new();
    let mut start = None;
    for (i, c) in text.char_indices() {
        match (c.is_alphanumeric(), start) {
            (true, None) => start = Some(i),
            (false, Some(s)) => {
                out.push((s..i, &text[s..i]));
                start = None;
            }
            _ => {}
        }
    }
    if let Some(s) = start {
        out.push((s..text.len(), &text[s..]));
    }
    out.into_iter()
}

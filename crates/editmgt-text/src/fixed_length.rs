//! What both tokenizers do with a `tokenizers::Tokenizer`: read it, look up special tokens, fix
//! every row to one length, and encode batches with errors that name the prompt.

use std::path::Path;

use editmgt_core::config::read_text;
use tokenizers::{
    Encoding, PaddingDirection, PaddingParams, PaddingStrategy, Tokenizer, TruncationDirection,
    TruncationParams, TruncationStrategy,
};

use crate::settings::PaddingSide;
use crate::{TextError, TokenIds};

/// Parses a `tokenizer.json` (`what` says whose, for a missing file).
pub(crate) fn read_tokenizer_json(path: &Path, what: &str) -> Result<Tokenizer, TextError> {
    let text = read_text(path, what)?;
    text.parse()
        .map_err(|e: tokenizers::Error| TextError::TokenizerFile {
            path: path.to_path_buf(),
            message: e.to_string(),
        })
}

/// The id of the special token `token` (its `role`: bos, eos, unk, pad) of the tokenizer read
/// from `folder`.
pub(crate) fn special_token_id(
    tokenizer: &Tokenizer,
    folder: &Path,
    role: &'static str,
    token: &str,
) -> Result<u32, TextError> {
    tokenizer
        .token_to_id(token)
        .ok_or_else(|| TextError::UnknownSpecialToken {
            path: folder.to_path_buf(),
            role,
            token: token.to_string(),
        })
}

/// Truncates every row to `max_length` (keeping its start) and pads it to `max_length` on
/// `side` with `pad` (`pad_id`). `path` names the tokenizer in errors.
pub(crate) fn fix_length(
    tokenizer: &mut Tokenizer,
    max_length: usize,
    side: PaddingSide,
    pad: String,
    pad_id: u32,
    path: &Path,
) -> Result<(), TextError> {
    tokenizer
        .with_truncation(Some(TruncationParams {
            direction: TruncationDirection::Right,
            max_length,
            strategy: TruncationStrategy::LongestFirst,
            stride: 0,
        }))
        .map_err(|e| TextError::TokenizerFile {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
    tokenizer.with_padding(Some(PaddingParams {
        strategy: PaddingStrategy::Fixed(max_length),
        direction: match side {
            PaddingSide::Left => PaddingDirection::Left,
            PaddingSide::Right => PaddingDirection::Right,
        },
        pad_to_multiple_of: None,
        pad_id,
        pad_type_id: 0,
        pad_token: pad,
    }));
    Ok(())
}

/// Encodes prompt number `index` of a batch.
pub(crate) fn encode_one(
    tokenizer: &Tokenizer,
    index: usize,
    prompt: &str,
) -> Result<Encoding, TextError> {
    tokenizer
        .encode(prompt, true)
        .map_err(|e| TextError::Tokenize {
            index,
            message: e.to_string(),
        })
}

/// The ids of a batch of prompts, one fixed-length row each; an empty batch is an error.
pub(crate) fn encode_batch(tokenizer: &Tokenizer, prompts: &[&str]) -> Result<TokenIds, TextError> {
    if prompts.is_empty() {
        return Err(TextError::EmptyBatch);
    }
    let rows = prompts
        .iter()
        .enumerate()
        .map(|(index, prompt)| Ok(encode_one(tokenizer, index, prompt)?.get_ids().to_vec()))
        .collect::<Result<Vec<_>, TextError>>()?;
    TokenIds::from_rows(rows)
}

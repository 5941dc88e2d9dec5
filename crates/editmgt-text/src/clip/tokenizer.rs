use std::collections::HashMap;
use std::path::Path;

use editmgt_core::config::{component_folder, read_json, read_text};
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{BPE, Merges, Vocab};
use tokenizers::normalizers::{Lowercase, NFC, Replace, Sequence as NormalizerSequence};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence as PreTokenizerSequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::processors::roberta::RobertaProcessing;
use tokenizers::{
    AddedToken, NormalizerWrapper, PreTokenizerWrapper, SplitDelimiterBehavior, Tokenizer,
};

use crate::fixed_length::{encode_batch, fix_length, read_tokenizer_json, special_token_id};
use crate::settings::{PaddingSide, TokenizerSettings};
use crate::{TextError, TokenIds};

/// CLIP's pre-tokenisation pattern (contractions, letter runs, single digits, other symbol runs);
/// what is not matched (whitespace) is dropped.
const CLIP_PATTERN: &str = r"'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+";

/// The merges CLIP uses: `merges.txt` is read up to `49152 - 256 - 2` merges, as the reference
/// `CLIPTokenizer` does.
const CLIP_MERGES: usize = 49152 - 256 - 2;

/// The CLIP tokenizer: NFC, whitespace runs collapsed, lower-cased, split on CLIP's pattern,
/// byte-level BPE with `</w>` word ends, `<|startoftext|> ... <|endoftext|>`, truncated to 77
/// keeping the end token, padded on the right to 77 with the folder's pad token.
///
/// Built from `tokenizer.json` when the folder has one, otherwise from `vocab.json` +
/// `merges.txt` (the released folder has no `tokenizer.json`). Special tokens come from
/// `special_tokens_map.json` over `tokenizer_config.json` (the released files name `!` or
/// `<|endoftext|>` as the pad token); like transformers, every named special token is matched
/// in the prompt text as a whole token, so with pad `!` a prompt's `!!!` becomes three pad ids.
#[derive(Debug, Clone)]
pub struct ClipTokenizer {
    tokenizer: Tokenizer,
    bos_id: u32,
    eos_id: u32,
    pad_id: u32,
    max_length: usize,
}

impl ClipTokenizer {
    /// The sequence length EditMGT tokenises to.
    pub const MAX_LENGTH: usize = 77;

    /// Loads `tokenizer/` of a model folder (see [`ClipTokenizer::from_folder`]).
    pub fn from_model_dir(model_dir: &Path) -> Result<Self, TextError> {
        let folder = component_folder(model_dir, "tokenizer")?;
        Self::from_folder(&folder)
    }

    /// Builds the tokenizer from a tokenizer folder.
    pub fn from_folder(folder: &Path) -> Result<Self, TextError> {
        component_folder(folder, "")?; // the folder must exist
        let settings = TokenizerSettings::read(folder)?;
        let bos = settings
            .bos_token
            .clone()
            .unwrap_or_else(|| "<|startoftext|>".into());
        let eos = settings
            .eos_token
            .clone()
            .unwrap_or_else(|| "<|endoftext|>".into());
        let unk = settings
            .unk_token
            .clone()
            .unwrap_or_else(|| "<|endoftext|>".into());
        let pad = settings
            .pad_token
            .clone()
            .unwrap_or_else(|| "<|endoftext|>".into());

        let json_path = folder.join("tokenizer.json");
        let mut tokenizer = if json_path.is_file() {
            read_tokenizer_json(&json_path, "CLIP tokenizer")?
        } else {
            build_from_vocab(folder, &bos, &eos, &unk)?
        };

        let id_of = |role, token: &str| special_token_id(&tokenizer, folder, role, token);
        let bos_id = id_of("bos", &bos)?;
        let eos_id = id_of("eos", &eos)?;
        id_of("unk", &unk)?;
        let pad_id = id_of("pad", &pad)?;
        // transformers registers the named special tokens as added tokens matched in the raw
        // text (this is what turns `!!!` into pad ids when the pad token is `!`).
        let specials: Vec<AddedToken> = [&bos, &eos, &unk, &pad]
            .into_iter()
            .map(|t| AddedToken::from(t.clone(), true))
            .collect();
        tokenizer
            .add_special_tokens(specials)
            .map_err(|e| TextError::TokenizerFile {
                path: folder.to_path_buf(),
                message: e.to_string(),
            })?;

        let max_length = Self::MAX_LENGTH;
        let side = settings.padding_side.unwrap_or(PaddingSide::Right);
        fix_length(&mut tokenizer, max_length, side, pad, pad_id, folder)?;
        Ok(Self {
            tokenizer,
            bos_id,
            eos_id,
            pad_id,
            max_length,
        })
    }

    /// Token ids `[prompts.len(), 77]` of a batch of prompts (an empty prompt is valid:
    /// start, end, pads). Fails on an empty batch.
    pub fn encode(&self, prompts: &[&str]) -> Result<TokenIds, TextError> {
        encode_batch(&self.tokenizer, prompts)
    }

    /// The token strings of one prompt's row (byte-level BPE symbols, e.g. `sky</w>`).
    pub fn tokens(&self, prompt: &str) -> Result<Vec<String>, TextError> {
        self.tokenizer
            .encode(prompt, true)
            .map(|e| e.get_tokens().to_vec())
            .map_err(|e| TextError::Tokenize {
                index: 0,
                message: e.to_string(),
            })
    }

    /// The start token's id.
    pub fn bos_id(&self) -> u32 {
        self.bos_id
    }

    /// The end token's id.
    pub fn eos_id(&self) -> u32 {
        self.eos_id
    }

    /// The pad token's id (0 for `!`, 49407 for `<|endoftext|>` in the released vocabulary).
    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }

    /// The row length (77).
    pub fn max_length(&self) -> usize {
        self.max_length
    }

    /// The underlying `tokenizers` tokenizer (configured with truncation and padding).
    pub fn inner(&self) -> &Tokenizer {
        &self.tokenizer
    }
}

/// The fast CLIP tokenizer transformers derives from `vocab.json` + `merges.txt`.
fn build_from_vocab(
    folder: &Path,
    bos: &str,
    eos: &str,
    unk: &str,
) -> Result<Tokenizer, TextError> {
    let vocab_path = folder.join("vocab.json");
    let merges_path = folder.join("merges.txt");
    let vocab: HashMap<String, u32> = read_json(&vocab_path, "CLIP vocabulary")?;
    let merges = parse_merges(&read_text(&merges_path, "CLIP BPE merges")?, &merges_path)?;
    let vocab: Vocab = vocab.into_iter().collect();
    let bad = |message: String| TextError::TokenizerFile {
        path: merges_path.clone(),
        message,
    };

    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .unk_token(unk.to_string())
        .continuing_subword_prefix(String::new())
        .end_of_word_suffix("</w>".to_string())
        .fuse_unk(false)
        .build()
        .map_err(|e| bad(e.to_string()))?;
    let mut tokenizer = Tokenizer::new(bpe);

    let whitespace = Replace::new(
        tokenizers::normalizers::replace::ReplacePattern::Regex(r"\s+".into()),
        " ",
    )
    .map_err(|e| bad(e.to_string()))?;
    let normalizer = NormalizerSequence::new(vec![
        NormalizerWrapper::NFC(NFC),
        NormalizerWrapper::Replace(whitespace),
        NormalizerWrapper::Lowercase(Lowercase),
    ]);
    tokenizer
        .with_normalizer(Some(normalizer))
        .map_err(|e| bad(e.to_string()))?;

    let split = Split::new(
        SplitPattern::Regex(CLIP_PATTERN.into()),
        SplitDelimiterBehavior::Removed,
        true,
    )
    .map_err(|e| bad(e.to_string()))?;
    tokenizer.with_pre_tokenizer(Some(PreTokenizerSequence::new(vec![
        PreTokenizerWrapper::Split(split),
        PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, true, true)),
    ])));
    tokenizer.with_decoder(Some(ByteLevelDecoder::default()));

    let id_of = |role, token: &str| special_token_id(&tokenizer, folder, role, token);
    let processor = RobertaProcessing::new(
        (eos.to_string(), id_of("eos", eos)?),
        (bos.to_string(), id_of("bos", bos)?),
    )
    .trim_offsets(false)
    .add_prefix_space(false);
    tokenizer.with_post_processor(Some(processor));
    Ok(tokenizer)
}

/// `merges.txt`: an optional `#version` line, then one `left right` pair per line.
fn parse_merges(text: &str, path: &Path) -> Result<Merges, TextError> {
    let mut merges = Vec::new();
    for (number, line) in text.lines().enumerate() {
        if line.starts_with("#version") || line.trim().is_empty() {
            continue;
        }
        let mut parts = line.split_whitespace();
        match (parts.next(), parts.next(), parts.next()) {
            (Some(a), Some(b), None) => merges.push((a.to_string(), b.to_string())),
            _ => {
                return Err(TextError::TokenizerFile {
                    path: path.to_path_buf(),
                    message: format!("line {} is not a `left right` merge", number + 1),
                });
            }
        }
        if merges.len() == CLIP_MERGES {
            break;
        }
    }
    Ok(merges)
}

//! The tokenizer files of the released layout.
//!
//! - `tokenizer/` (CLIP): the released 49408-entry vocabulary and its merges, copied from the
//!   repository's tiny model (which uses the real CLIP vocabulary) and compiled into the binary.
//! - `llm_encoder/tokenizer.json` (Gemma): a synthetic byte-fallback BPE with exactly the
//!   configuration's `vocab_size` entries (256000 at real scale): `<pad> <eos> <bos> <unk>`, the
//!   256 byte tokens `<0x00>`..`<0xFF>`, an alphabet of single characters, then pieces built by
//!   merges (every pair of characters, then longer pieces) until the vocabulary is full, so
//!   every id range of the embedding table can be reached. Its settings
//!   (`tokenizer_config.json`, `special_tokens_map.json`, `generation_config.json`) are the tiny
//!   model's, whose special tokens have the same ids.

use std::collections::HashSet;
use std::path::Path;

use serde_json::{Map, Value, json};

use super::{SynthError, write_bytes};

/// The CLIP tokenizer files (`tokenizer/`), from the tiny model.
const CLIP_FILES: [(&str, &[u8]); 4] = [
    (
        "vocab.json",
        include_bytes!("../../../../../fixtures/tiny/tokenizer/vocab.json"),
    ),
    (
        "merges.txt",
        include_bytes!("../../../../../fixtures/tiny/tokenizer/merges.txt"),
    ),
    (
        "special_tokens_map.json",
        include_bytes!("../../../../../fixtures/tiny/tokenizer/special_tokens_map.json"),
    ),
    (
        "tokenizer_config.json",
        include_bytes!("../../../../../fixtures/tiny/tokenizer/tokenizer_config.json"),
    ),
];

/// The size of the CLIP vocabulary written.
pub const CLIP_VOCAB: usize = 49408;

/// The Gemma tokenizer settings, from the tiny model (ids 0..260 are the same as written here).
const GEMMA_SETTINGS: [(&str, &[u8]); 3] = [
    (
        "tokenizer_config.json",
        include_bytes!("../../../../../fixtures/tiny/llm_encoder/tokenizer_config.json"),
    ),
    (
        "special_tokens_map.json",
        include_bytes!("../../../../../fixtures/tiny/llm_encoder/special_tokens_map.json"),
    ),
    (
        "generation_config.json",
        include_bytes!("../../../../../fixtures/tiny/llm_encoder/generation_config.json"),
    ),
];

/// Gemma's special tokens, ids 0 to 3.
const GEMMA_SPECIALS: [&str; 4] = ["<pad>", "<eos>", "<bos>", "<unk>"];

/// The single characters of the synthetic Gemma vocabulary (`▁` is Gemma's space).
const GEMMA_ALPHABET: &str =
    "▁abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,!?'-:;()\"/&%+=";

/// The fewest entries a synthetic Gemma vocabulary can have: specials, bytes and the alphabet.
pub fn gemma_min_vocab() -> usize {
    GEMMA_SPECIALS.len() + 256 + GEMMA_ALPHABET.chars().count()
}

/// Writes the CLIP tokenizer files into `folder` (`tokenizer/`). `vocab_size` is the text
/// encoder's; it must be the released 49408, the size of the vocabulary written.
pub fn write_clip(folder: &Path, vocab_size: usize) -> Result<u64, SynthError> {
    if vocab_size != CLIP_VOCAB {
        return Err(SynthError::new(format!(
            "text_encoder: vocab_size is {vocab_size}, but the CLIP tokenizer written is the \
             released {CLIP_VOCAB}-entry vocabulary"
        )));
    }
    create_dir(folder)?;
    let mut size = 0;
    for (name, bytes) in CLIP_FILES {
        size += write_bytes(&folder.join(name), bytes)?;
    }
    Ok(size)
}

/// Writes Gemma's `tokenizer.json` (a synthetic vocabulary of exactly `vocab_size` entries)
/// and its settings files into `folder` (`llm_encoder/`).
pub fn write_gemma(folder: &Path, vocab_size: usize) -> Result<u64, SynthError> {
    let tokenizer = gemma_tokenizer_json(vocab_size)?;
    create_dir(folder)?;
    let path = folder.join("tokenizer.json");
    let text = serde_json::to_vec(&tokenizer)
        .map_err(|e| SynthError::new(format!("{}: {e}", path.display())))?;
    let mut size = write_bytes(&path, &text)?;
    for (name, bytes) in GEMMA_SETTINGS {
        size += write_bytes(&folder.join(name), bytes)?;
    }
    Ok(size)
}

fn create_dir(folder: &Path) -> Result<(), SynthError> {
    std::fs::create_dir_all(folder).map_err(|e| SynthError::io(folder, e))
}

/// A BPE vocabulary: the tokens in id order and the merges in rank order.
pub type Bpe = (Vec<String>, Vec<(String, String)>);

/// The vocabulary (in id order) and merges of a synthetic Gemma BPE of `vocab_size` entries.
pub fn gemma_vocab(vocab_size: usize) -> Result<Bpe, SynthError> {
    if vocab_size < gemma_min_vocab() {
        return Err(SynthError::new(format!(
            "llm_encoder: vocab_size {vocab_size} is too small for a synthetic Gemma vocabulary \
             (at least {} entries: specials, 256 bytes and the alphabet)",
            gemma_min_vocab()
        )));
    }
    let mut tokens: Vec<String> = GEMMA_SPECIALS.iter().map(|s| s.to_string()).collect();
    tokens.extend((0..=255u8).map(|b| format!("<0x{b:02X}>")));
    let alphabet: Vec<String> = GEMMA_ALPHABET.chars().map(String::from).collect();
    tokens.extend(alphabet.iter().cloned());
    let mut seen: HashSet<String> = tokens.iter().cloned().collect();
    let mut merges = Vec::new();
    // Breadth first: every piece of the previous level extended by each character, so the left
    // part of every merge is itself a piece made by an earlier (lower-ranked) merge.
    let mut level: Vec<String> = alphabet.clone();
    'grow: while tokens.len() < vocab_size {
        let mut next = Vec::new();
        for left in &level {
            for right in &alphabet {
                if tokens.len() == vocab_size {
                    break 'grow;
                }
                let piece = format!("{left}{right}");
                if seen.insert(piece.clone()) {
                    merges.push((left.clone(), right.clone()));
                    tokens.push(piece.clone());
                    next.push(piece);
                }
            }
        }
        level = next;
    }
    Ok((tokens, merges))
}

/// The `tokenizer.json` of a synthetic Gemma BPE of `vocab_size` entries, configured as the
/// released one (and the tiny model's): spaces become `▁`, no pre-tokenizer, byte fallback,
/// `<bos>` prepended.
pub fn gemma_tokenizer_json(vocab_size: usize) -> Result<Value, SynthError> {
    let (tokens, merges) = gemma_vocab(vocab_size)?;
    let added: Vec<Value> = tokens
        .iter()
        .take(GEMMA_SPECIALS.len() + 256)
        .enumerate()
        .map(|(id, content)| {
            json!({
                "id": id, "content": content, "single_word": false, "lstrip": false,
                "rstrip": false, "normalized": false, "special": true,
            })
        })
        .collect();
    let vocab: Map<String, Value> = tokens
        .into_iter()
        .enumerate()
        .map(|(id, token)| (token, Value::from(id)))
        .collect();
    let merges: Vec<Value> = merges.into_iter().map(|(a, b)| json!([a, b])).collect();
    Ok(json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": { "type": "Replace", "pattern": { "String": " " }, "content": "▁" },
        "pre_tokenizer": null,
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [
                { "SpecialToken": { "id": "<bos>", "type_id": 0 } },
                { "Sequence": { "id": "A", "type_id": 0 } },
            ],
            "pair": [
                { "SpecialToken": { "id": "<bos>", "type_id": 0 } },
                { "Sequence": { "id": "A", "type_id": 0 } },
                { "SpecialToken": { "id": "<bos>", "type_id": 1 } },
                { "Sequence": { "id": "B", "type_id": 1 } },
            ],
            "special_tokens": {
                "<bos>": { "id": "<bos>", "ids": [2], "tokens": ["<bos>"] },
            },
        },
        "decoder": {
            "type": "Sequence",
            "decoders": [
                { "type": "Replace", "pattern": { "String": "▁" }, "content": " " },
                { "type": "ByteFallback" },
                { "type": "Fuse" },
            ],
        },
        "model": {
            "type": "BPE",
            "dropout": null,
            "unk_token": "<unk>",
            "continuing_subword_prefix": null,
            "end_of_word_suffix": null,
            "fuse_unk": true,
            "byte_fallback": true,
            "ignore_merges": false,
            "vocab": Value::Object(vocab),
            "merges": merges,
        },
    }))
}

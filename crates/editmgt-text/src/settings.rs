//! Tokenizer settings from a Hugging Face tokenizer folder: `tokenizer_config.json` and
//! `special_tokens_map.json` (both optional).

use std::path::Path;

use editmgt_core::LoadError;
use editmgt_core::config::read_json;
use serde_json::Value;

/// Which end of a row padding goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PaddingSide {
    /// Pads before the tokens (Gemma's default).
    Left,
    /// Pads after the tokens (CLIP).
    Right,
}

impl PaddingSide {
    /// `"left"` or `"right"`.
    pub fn as_str(self) -> &'static str {
        match self {
            PaddingSide::Left => "left",
            PaddingSide::Right => "right",
        }
    }
}

/// The settings of a tokenizer folder that the tokenizers use. Special tokens follow
/// transformers' precedence: `special_tokens_map.json` over `tokenizer_config.json`.
#[derive(Debug, Clone, Default)]
pub(crate) struct TokenizerSettings {
    pub bos_token: Option<String>,
    pub eos_token: Option<String>,
    pub unk_token: Option<String>,
    pub pad_token: Option<String>,
    pub add_bos_token: Option<bool>,
    pub add_eos_token: Option<bool>,
    pub padding_side: Option<PaddingSide>,
}

impl TokenizerSettings {
    /// Reads the folder's `tokenizer_config.json` and `special_tokens_map.json`; either may be
    /// absent, a malformed one is an error.
    pub fn read(folder: &Path) -> Result<Self, LoadError> {
        let mut settings = Self::default();
        let config_path = folder.join("tokenizer_config.json");
        if config_path.is_file() {
            let config: Value = read_json(&config_path, "tokenizer configuration")?;
            settings.apply_tokens(&config);
            settings.add_bos_token = config.get("add_bos_token").and_then(Value::as_bool);
            settings.add_eos_token = config.get("add_eos_token").and_then(Value::as_bool);
            if let Some(side) = config.get("padding_side").filter(|v| !v.is_null()) {
                settings.padding_side = Some(match side.as_str() {
                    Some("left") => PaddingSide::Left,
                    Some("right") => PaddingSide::Right,
                    _ => {
                        return Err(LoadError::Unsupported {
                            path: config_path,
                            field: "padding_side".into(),
                            value: side.to_string(),
                            reason: "expected \"left\" or \"right\"".into(),
                        });
                    }
                });
            }
        }
        let map_path = folder.join("special_tokens_map.json");
        if map_path.is_file() {
            let map: Value = read_json(&map_path, "special tokens map")?;
            settings.apply_tokens(&map);
        }
        Ok(settings)
    }

    fn apply_tokens(&mut self, json: &Value) {
        let slots = [
            ("bos_token", &mut self.bos_token),
            ("eos_token", &mut self.eos_token),
            ("unk_token", &mut self.unk_token),
            ("pad_token", &mut self.pad_token),
        ];
        for (key, slot) in slots {
            if let Some(token) = json.get(key).and_then(token_text) {
                *slot = Some(token);
            }
        }
    }
}

/// A special token given as a string or as an `AddedToken` object (`{"content": ...}`).
fn token_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Object(map) => map.get("content")?.as_str().map(str::to_string),
        _ => None,
    }
}

//! `tokenizer.json` through the `tokenizers` crate, plus what `tokenizer_config.json` and
//! `generation_config.json` say about special tokens, the chat template and stopping.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::error::{ModelError, Result};
use crate::template::ChatTemplate;

pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    path: PathBuf,
    chat_template: Option<ChatTemplate>,
    /// Special-token strings passed to the chat template (`bos_token`, `eos_token`, ...).
    special_tokens: serde_json::Map<String, Value>,
    eos_token_id: Option<u32>,
    pad_token_id: Option<u32>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("path", &self.path)
            .field("vocab_size", &self.vocab_size())
            .finish()
    }
}

/// A token's text from tokenizer_config.json: a plain string or an AddedToken object.
fn token_content(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content").and_then(Value::as_str).map(str::to_string),
        _ => None,
    }
}

fn read_json(path: &Path) -> Result<Option<Value>> {
    if !path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(path).map_err(|e| ModelError::io(path, e))?;
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|source| ModelError::Json {
            path: path.to_path_buf(),
            source,
        })
}

impl Tokenizer {
    /// Loads `tokenizer.json` and, when present, `tokenizer_config.json` and
    /// `chat_template.jinja` (which wins over the config's `chat_template`, as in transformers).
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let path = dir.join("tokenizer.json");
        if !path.is_file() {
            return Err(ModelError::Tokenizer {
                path,
                message: "file not found".into(),
            });
        }
        let inner = tokenizers::Tokenizer::from_file(&path).map_err(|e| ModelError::Tokenizer {
            path: path.clone(),
            message: e.to_string(),
        })?;
        let config = read_json(&dir.join("tokenizer_config.json"))?.unwrap_or(Value::Null);
        let mut special_tokens = serde_json::Map::new();
        for key in ["bos_token", "eos_token", "pad_token", "unk_token"] {
            if let Some(content) = config.get(key).and_then(token_content) {
                special_tokens.insert(key.into(), Value::String(content));
            }
        }
        let template_file = dir.join("chat_template.jinja");
        let template_source = if template_file.is_file() {
            Some(
                std::fs::read_to_string(&template_file)
                    .map_err(|e| ModelError::io(&template_file, e))?,
            )
        } else {
            match config.get("chat_template") {
                Some(Value::String(s)) => Some(s.clone()),
                // A list of named templates: take "default".
                Some(Value::Array(items)) => items
                    .iter()
                    .find(|t| t.get("name").and_then(Value::as_str) == Some("default"))
                    .and_then(|t| t.get("template"))
                    .and_then(Value::as_str)
                    .map(str::to_string),
                _ => None,
            }
        };
        let chat_template = template_source.map(|s| ChatTemplate::new(&s)).transpose()?;
        let id_of = |key: &str| {
            special_tokens
                .get(key)
                .and_then(Value::as_str)
                .and_then(|t| inner.token_to_id(t))
        };
        let eos_token_id = id_of("eos_token");
        let pad_token_id = id_of("pad_token");
        Ok(Self {
            inner,
            path,
            chat_template,
            special_tokens,
            eos_token_id,
            pad_token_id,
        })
    }

    /// Encodes text. `add_special_tokens` applies the tokenizer's post-processor (Qwen's adds
    /// nothing); special-token strings in the text are always recognised, as in transformers.
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, add_special_tokens)
            .map_err(|e| ModelError::Tokenize(e.to_string()))?;
        Ok(enc.get_ids().to_vec())
    }

    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        self.inner
            .decode(ids, skip_special_tokens)
            .map_err(|e| ModelError::Tokenize(e.to_string()))
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// Vocabulary size including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    pub fn eos_token_id(&self) -> Option<u32> {
        self.eos_token_id
    }

    /// The pad token, else the EOS token, else 0 (any id works under a padding mask).
    pub fn pad_token_id(&self) -> u32 {
        self.pad_token_id.or(self.eos_token_id).unwrap_or(0)
    }

    pub fn chat_template(&self) -> Result<&ChatTemplate> {
        self.chat_template
            .as_ref()
            .ok_or(ModelError::NoChatTemplate)
    }

    pub fn special_tokens(&self) -> &serde_json::Map<String, Value> {
        &self.special_tokens
    }

    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }

    /// Renders `messages` (OpenAI/transformers chat format) to the exact prompt text.
    pub fn apply_chat_template(
        &self,
        messages: &[Value],
        options: &crate::template::ChatOptions,
    ) -> Result<String> {
        self.chat_template()?
            .render(messages, options, &self.special_tokens)
    }
}

/// Stop tokens and default sampling settings from `generation_config.json`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GenerationConfig {
    pub eos_token_ids: Vec<u32>,
    pub do_sample: Option<bool>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub top_k: Option<usize>,
    pub min_p: Option<f64>,
    pub repetition_penalty: Option<f64>,
}

impl GenerationConfig {
    /// Token ids that end generation: generation_config.json's EOS ids and the tokenizer's EOS.
    pub fn stop_token_ids(&self, tokenizer: &Tokenizer) -> Vec<u32> {
        let mut ids = self.eos_token_ids.clone();
        if let Some(eos) = tokenizer.eos_token_id()
            && !ids.contains(&eos)
        {
            ids.push(eos);
        }
        ids
    }

    /// Reads `generation_config.json` if present; otherwise all defaults.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let Some(v) = read_json(&dir.join("generation_config.json"))? else {
            return Ok(Self::default());
        };
        let eos_token_ids = match v.get("eos_token_id") {
            Some(Value::Number(n)) => n.as_u64().map(|x| vec![x as u32]).unwrap_or_default(),
            Some(Value::Array(a)) => a
                .iter()
                .filter_map(Value::as_u64)
                .map(|x| x as u32)
                .collect(),
            _ => Vec::new(),
        };
        Ok(Self {
            eos_token_ids,
            do_sample: v.get("do_sample").and_then(Value::as_bool),
            temperature: v.get("temperature").and_then(Value::as_f64),
            top_p: v.get("top_p").and_then(Value::as_f64),
            top_k: v.get("top_k").and_then(Value::as_u64).map(|x| x as usize),
            min_p: v.get("min_p").and_then(Value::as_f64),
            repetition_penalty: v.get("repetition_penalty").and_then(Value::as_f64),
        })
    }
}

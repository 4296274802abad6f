//! One compression call end to end, as the released server answers it (specs/cprs.md §3):
//! the context capped at 2,048,000 tokens, windows, BIOE tags per window (the prefix's positions
//! dropped; a window whose labels fall short of its offsets is padded with `O`), windows
//! concatenated in order, the repair over the whole sequence, spans, cleaning; with the token
//! accounting the server reports (`usage.input_tokens = P·windows + N`) and the compression
//! ratio. [`reader_messages`] is the downstream prompt.

use serde::Serialize;
use serde_json::{Value, json};

use crate::model::Compressor;
use crate::postprocess::{Repair, Span, Tag, clean, repair, spans};
use crate::windows::{WindowError, build_windows, encode};

/// The request parameters (the released server's defaults).
#[derive(Debug, Clone)]
pub struct CompressOptions {
    /// Tokens per window, prefix included (fixed at 8192 upstream).
    pub window: usize,
    pub min_keyword_len: usize,
    pub complete_sentence: bool,
    pub split_with_sent: bool,
    pub repair: Repair,
    /// Windows per forward pass (upstream runs one at a time).
    pub batch: usize,
    /// Contexts are cut to this many tokens first.
    pub max_context_tokens: usize,
}

impl Default for CompressOptions {
    fn default() -> Self {
        Self {
            window: 8192,
            min_keyword_len: 4,
            complete_sentence: false,
            split_with_sent: true,
            repair: Repair::Released,
            batch: 1,
            max_context_tokens: 2_048_000,
        }
    }
}

impl Compressed {
    /// The kept texts, in order.
    pub fn texts(&self) -> Vec<&str> {
        self.spans.iter().map(|s| s.text.as_str()).collect()
    }
}

/// What a call kept, and what it cost.
#[derive(Debug, Clone, Serialize)]
pub struct Compressed {
    pub spans: Vec<Span>,
    pub windows: usize,
    pub prefix_tokens: usize,
    /// N: context tokens labelled.
    pub context_tokens: usize,
    /// Tokens of the kept text.
    pub kept_tokens: usize,
    /// context_tokens / kept_tokens (`None` when nothing was kept).
    pub ratio: Option<f64>,
    /// What the released server reports as `usage.input_tokens`: P·windows + N.
    pub input_tokens: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum CompressError {
    #[error("{0}")]
    Window(#[from] WindowError),
    #[error(transparent)]
    Model(#[from] qforge_model::ModelError),
    #[error("the context is empty")]
    EmptyContext,
}

/// Compresses `context` for `query` under `instruction`.
pub fn compress(
    compressor: &Compressor,
    instruction: &str,
    query: &str,
    context: &str,
    options: &CompressOptions,
) -> Result<Compressed, CompressError> {
    if context.trim().is_empty() {
        return Err(CompressError::EmptyContext);
    }
    let tok = &compressor.tokenizer;
    let capped;
    let context = {
        // A token covers at least one byte: a context of no more bytes than the cap is under it
        // without being tokenized here.
        let ids = if context.len() > options.max_context_tokens {
            encode(tok, context).0
        } else {
            Vec::new()
        };
        if ids.len() > options.max_context_tokens {
            let text = tok
                .decode(&ids[..options.max_context_tokens], false)
                .unwrap_or_default();
            // The released cut also drops the decoded text's last character.
            let mut chars: Vec<char> = text.chars().collect();
            chars.pop();
            capped = chars.into_iter().collect::<String>();
            capped.as_str()
        } else {
            context
        }
    };
    let (prefix_ids, windows) = build_windows(
        tok,
        instruction,
        query,
        context,
        options.window,
        options.split_with_sent,
    )?;
    let prefix_len = prefix_ids.len();
    let mut tags: Vec<Tag> = Vec::new();
    let mut offsets = Vec::new();
    for group in windows.chunks(options.batch.max(1)) {
        let inputs: Vec<Vec<u32>> = group
            .iter()
            .map(|w| prefix_ids.iter().chain(&w.ids).copied().collect())
            .collect();
        let refs: Vec<&[u32]> = inputs.iter().map(Vec::as_slice).collect();
        for (w, mut labels) in group.iter().zip(compressor.tags(&refs, prefix_len)?) {
            labels.resize(w.offsets.len(), Tag::O);
            tags.extend(labels);
            offsets.extend(w.offsets.iter().copied());
        }
    }
    repair(&mut tags, options.repair);
    let kept = clean(spans(
        &tags,
        &offsets,
        context,
        options.min_keyword_len,
        options.complete_sentence,
    ));
    let context_tokens: usize = windows.iter().map(|w| w.ids.len()).sum();
    let kept_tokens: usize = kept.iter().map(|s| encode(tok, &s.text).0.len()).sum();
    Ok(Compressed {
        windows: windows.len(),
        prefix_tokens: prefix_len,
        context_tokens,
        kept_tokens,
        ratio: (kept_tokens > 0).then(|| context_tokens as f64 / kept_tokens as f64),
        input_tokens: prefix_len * windows.len() + context_tokens,
        spans: kept,
    })
}

/// The downstream reader's prompt: the kept spans as the system message, the query as the user's.
pub fn reader_messages(kept: &[impl AsRef<str>], query: &str) -> Vec<Value> {
    let doc: Vec<&str> = kept.iter().map(AsRef::as_ref).collect();
    vec![
        json!({"role": "system", "content": format!("Doc content:\n\n{}", doc.join("\n"))}),
        json!({"role": "user", "content": query}),
    ]
}

//! One compression call end to end, as the released server answers it (QwenLong-CPRS, arXiv 2505.18092):
//! the context capped at 2,048,000 tokens, windows, BIOE tags per window (the prefix's positions
//! dropped; a window whose labels fall short of its offsets is padded with `O`), windows
//! concatenated in order, the repair over the whole sequence, spans, cleaning; with the token
//! accounting the server reports (`usage.input_tokens = P·windows + N`) and the compression
//! ratio. [`reader_messages`] is the downstream prompt.

use serde::Serialize;
use serde_json::{Value, json};

use crate::CompressError;
use crate::model::Compressor;
use crate::postprocess::{Repair, Span, Tag, clean, repair, spans};
use crate::windows::{build_windows, encode};

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
    /// Category mode: tag words (the prompt's, e.g. `needle`); each kept span gets the one the
    /// LM head favours, `outside` included as upstream. Empty: off (the released server).
    pub categories: Vec<String>,
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
            categories: Vec::new(),
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
    /// Category mode: per span, the tag with the highest mean probability over its tokens.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub categories: Option<Vec<SpanCategory>>,
}

/// A span's category in category mode.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SpanCategory {
    pub tag: String,
    pub probability: f32,
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
    let mut tag_words = options.categories.clone();
    let tag_ids = if tag_words.is_empty() {
        None
    } else {
        tag_words.push("outside".into());
        Some(
            tag_words
                .iter()
                .map(|w| {
                    tok.encode(w, false)?.first().copied().ok_or_else(|| {
                        qforge_model::ModelError::InvalidInput(format!("tag `{w}` has no tokens"))
                    })
                })
                .collect::<Result<Vec<u32>, _>>()?,
        )
    };
    let mut tags: Vec<Tag> = Vec::new();
    let mut probs: Vec<Vec<f32>> = Vec::new();
    let mut offsets = Vec::new();
    for group in windows.chunks(options.batch.max(1)) {
        let inputs: Vec<Vec<u32>> = group
            .iter()
            .map(|w| prefix_ids.iter().chain(&w.ids).copied().collect())
            .collect();
        let refs: Vec<&[u32]> = inputs.iter().map(Vec::as_slice).collect();
        let (labels, categories) = compressor.label(&refs, prefix_len, tag_ids.as_deref())?;
        for (i, (w, mut labels)) in group.iter().zip(labels).enumerate() {
            labels.resize(w.offsets.len(), Tag::O);
            tags.extend(labels);
            offsets.extend(w.offsets.iter().copied());
            if let Some(c) = &categories {
                probs.extend(c[i].iter().cloned());
                probs.resize(offsets.len(), vec![0.0; tag_words.len()]);
            }
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
    let categories = tag_ids.map(|_| {
        kept.iter()
            .map(|span| span_category(span, &offsets, &probs, &tag_words))
            .collect()
    });
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
        categories,
    })
}

/// The tag with the highest mean probability over the tokens that start inside `span`.
fn span_category(
    span: &Span,
    offsets: &[(usize, usize)],
    probs: &[Vec<f32>],
    words: &[String],
) -> SpanCategory {
    let mut mean = vec![0f32; words.len()];
    let mut n = 0;
    for (o, p) in offsets.iter().zip(probs) {
        if o.0 >= span.start && o.0 < span.end {
            n += 1;
            for (m, x) in mean.iter_mut().zip(p) {
                *m += x;
            }
        }
    }
    let (best, probability) = mean
        .iter()
        .map(|m| m / n.max(1) as f32)
        .enumerate()
        .fold((0, f32::MIN), |a, (i, m)| if m > a.1 { (i, m) } else { a });
    SpanCategory {
        tag: words[best].clone(),
        probability,
    }
}

/// The downstream reader's prompt: the kept spans as the system message, the query as the user's.
pub fn reader_messages(kept: &[impl AsRef<str>], query: &str) -> Vec<Value> {
    let doc: Vec<&str> = kept.iter().map(AsRef::as_ref).collect();
    vec![
        json!({"role": "system", "content": format!("Doc content:\n\n{}", doc.join("\n"))}),
        json!({"role": "user", "content": query}),
    ]
}

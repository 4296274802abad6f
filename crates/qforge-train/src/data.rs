//! JSONL datasets in TRL's formats, tokenised with the model's chat template.
//!
//! - SFT: `{"messages": [...]}` (every assistant turn is learned, the last message must be one;
//!   user and tool turns between them stay in context unlearned, as in multi-turn agent
//!   trajectories), or
//!   `{"prompt": ..., "completion": ...}` with plain strings or message lists.
//! - Preference: `{"prompt": ..., "chosen": ..., "rejected": ...}`, plain or conversational.
//! - Prompt-only (RL): `{"prompt": ...}` or `{"messages": [...]}`.
//!
//! Prompt tokens are masked from the loss; plain-text completions get the EOS token appended
//! (as TRL does). Sequences longer than `max_length` keep their start; an example whose prompt
//! fills the budget is dropped (counted). A malformed line is an error naming file and line, or
//! skipped and counted with `skip_malformed`.

use qforge_util::SplitMix;
use qforge_util::WithPath;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use qforge_model::{Batch, ChatOptions, Tokenizer};
use serde_json::Value;

use crate::error::{Result, TrainError};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DatasetKind {
    Sft,
    Preference,
    Prompt,
}

#[derive(Debug, Clone)]
pub struct DataOptions {
    pub max_length: usize,
    /// Truncation length of long-context sequences (`prompt_long`); 0: none.
    pub max_long_length: usize,
    pub skip_malformed: bool,
}

impl Default for DataOptions {
    fn default() -> Self {
        Self {
            max_length: 1024,
            max_long_length: 0,
            skip_malformed: false,
        }
    }
}

/// A tokenised training sequence: prompt then completion.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TokenSequence {
    pub ids: Vec<u32>,
    /// Tokens from here on are learned, except those in `unlearned`.
    pub prompt_len: usize,
    /// Spans of the completion kept in context but not learned: the user and tool turns
    /// between the assistant turns of a multi-turn conversation.
    pub unlearned: Vec<std::ops::Range<usize>>,
}

impl TokenSequence {
    pub fn new(ids: Vec<u32>, prompt_len: usize) -> Self {
        Self {
            ids,
            prompt_len,
            unlearned: Vec::new(),
        }
    }

    /// Whether token `j` is learned.
    pub fn learned(&self, j: usize) -> bool {
        j >= self.prompt_len && !self.unlearned.iter().any(|r| r.contains(&j))
    }

    /// Learned tokens.
    pub fn completion_len(&self) -> usize {
        (self.prompt_len..self.ids.len())
            .filter(|&j| self.learned(j))
            .count()
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Example {
    Sft(TokenSequence),
    Preference {
        chosen: TokenSequence,
        rejected: TokenSequence,
        /// The chosen completion after a long-context variant of the prompt (`prompt_long`),
        /// for short-to-long objectives (SoLoPO). Not truncated to `max_length`.
        long_chosen: Option<TokenSequence>,
    },
    /// Prompt ids plus the original messages (RL rollouts re-render them as needed).
    Prompt {
        ids: Vec<u32>,
        messages: Vec<Value>,
    },
}

impl Example {
    /// Length used for bucketing.
    pub fn len(&self) -> usize {
        match self {
            Example::Sft(s) => s.ids.len(),
            Example::Preference {
                chosen,
                rejected,
                long_chosen,
            } => chosen
                .ids
                .len()
                .max(rejected.ids.len())
                .max(long_chosen.as_ref().map_or(0, |l| l.ids.len())),
            Example::Prompt { ids, .. } => ids.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadStats {
    pub lines: usize,
    pub skipped_malformed: usize,
    pub dropped_too_long: usize,
    pub truncated: usize,
}

#[derive(Debug)]
pub struct Dataset {
    pub kind: DatasetKind,
    pub examples: Vec<Example>,
    pub stats: LoadStats,
    pub path: PathBuf,
}

fn malformed(path: &Path, line: usize, message: impl Into<String>) -> TrainError {
    qforge_util::RowError::new(path, line, message).into()
}

/// Renders and tokenises a conversation; returns the ids.
fn render(
    tok: &Tokenizer,
    messages: &[Value],
    generation_prompt: bool,
) -> std::result::Result<Vec<u32>, String> {
    let options = ChatOptions {
        add_generation_prompt: generation_prompt,
        ..ChatOptions::default()
    };
    let text = tok
        .apply_chat_template(messages, &options)
        .map_err(|e| e.to_string())?;
    tok.encode(&text, false).map_err(|e| e.to_string())
}

fn messages_of(v: &Value, field: &str) -> std::result::Result<Vec<Value>, String> {
    match v.get(field) {
        Some(Value::Array(m)) if !m.is_empty() => {
            for (i, msg) in m.iter().enumerate() {
                if msg.get("role").and_then(Value::as_str).is_none() {
                    return Err(format!("`{field}[{i}]` has no string `role`"));
                }
            }
            Ok(m.clone())
        }
        Some(Value::Array(_)) => Err(format!("`{field}` is empty")),
        _ => Err(format!("`{field}` must be a list of messages")),
    }
}

/// Prompt then completion. Plain strings: `encode(prompt)` + `encode(completion)` + EOS.
/// Conversations: the prompt rendered with the generation prompt, the completion the rest of
/// the full rendering.
fn prompt_completion(
    tok: &Tokenizer,
    prompt: &Value,
    completion: &Value,
    field: &str,
) -> std::result::Result<TokenSequence, String> {
    match (prompt, completion) {
        (Value::String(p), Value::String(c)) => {
            if c.is_empty() {
                return Err(format!("`{field}` is empty"));
            }
            let mut ids = tok.encode(p, false).map_err(|e| e.to_string())?;
            let prompt_len = ids.len();
            ids.extend(tok.encode(c, false).map_err(|e| e.to_string())?);
            ids.extend(tok.eos_token_id());
            Ok(TokenSequence::new(ids, prompt_len))
        }
        (Value::Array(p), Value::Array(c)) => {
            if c.is_empty() {
                return Err(format!("`{field}` is empty"));
            }
            let prompt_ids = render(tok, p, true)?;
            let full: Vec<Value> = p.iter().chain(c.iter()).cloned().collect();
            let ids = render(tok, &full, false)?;
            if !ids.starts_with(&prompt_ids) {
                return Err(format!(
                    "the chat template does not render the prompt as a prefix of prompt + `{field}`"
                ));
            }
            Ok(TokenSequence::new(ids, prompt_ids.len()))
        }
        _ => Err(format!(
            "`prompt` and `{field}` must both be strings or both be message lists"
        )),
    }
}

/// A `messages` conversation: every assistant turn is learned, from its first token through
/// the token that ends it (`<|im_end|>`, else EOS); the turns before the first one are the
/// prompt, and later user and tool turns (with the next assistant header) stay in context
/// unlearned. A turn starts where the conversation before it, rendered with the generation
/// prompt, ends (checked to be a prefix of the whole: Qwen3's template re-renders earlier turns
/// only in ways this survives).
fn conversation_sequence(
    tok: &Tokenizer,
    messages: &[Value],
) -> std::result::Result<TokenSequence, String> {
    let is_assistant = |m: &Value| m.get("role").and_then(Value::as_str) == Some("assistant");
    if !messages.last().is_some_and(is_assistant) {
        return Err("the last message must be an assistant turn to learn".into());
    }
    let ids = render(tok, messages, false)?;
    let turn_end: Vec<u32> = tok
        .token_to_id("<|im_end|>")
        .into_iter()
        .chain(tok.eos_token_id())
        .collect();
    let mut learned = Vec::new();
    for i in (0..messages.len()).filter(|&i| is_assistant(&messages[i])) {
        let header = render(tok, &messages[..i], true)?;
        if !ids.starts_with(&header) {
            return Err(format!(
                "the chat template does not render the conversation before message {i} as a \
                 prefix of the whole"
            ));
        }
        let start = header.len();
        let end = if i + 1 == messages.len() {
            ids.len()
        } else {
            1 + start
                + ids[start..]
                    .iter()
                    .position(|t| turn_end.contains(t))
                    .ok_or_else(|| format!("no end-of-turn token after message {i}"))?
        };
        learned.push(start..end);
    }
    let prompt_len = learned[0].start;
    let unlearned = learned
        .windows(2)
        .map(|w| w[0].end..w[1].start)
        .filter(|r| !r.is_empty())
        .collect();
    Ok(TokenSequence {
        ids,
        prompt_len,
        unlearned,
    })
}

fn sft_example(tok: &Tokenizer, v: &Value) -> std::result::Result<TokenSequence, String> {
    if v.get("messages").is_some() {
        return conversation_sequence(tok, &messages_of(v, "messages")?);
    }
    let (Some(p), Some(c)) = (v.get("prompt"), v.get("completion")) else {
        return Err("expected `messages`, or `prompt` and `completion`".into());
    };
    prompt_completion(tok, p, c, "completion")
}

fn preference_example(tok: &Tokenizer, v: &Value) -> std::result::Result<Example, String> {
    let (Some(p), Some(c), Some(r)) = (v.get("prompt"), v.get("chosen"), v.get("rejected")) else {
        return Err("expected `prompt`, `chosen` and `rejected`".into());
    };
    if c == r {
        return Err("`chosen` and `rejected` are identical".into());
    }
    let long_chosen = v
        .get("prompt_long")
        .map(|long| prompt_completion(tok, long, c, "chosen"))
        .transpose()?;
    Ok(Example::Preference {
        chosen: prompt_completion(tok, p, c, "chosen")?,
        rejected: prompt_completion(tok, p, r, "rejected")?,
        long_chosen,
    })
}

fn prompt_example(
    tok: &Tokenizer,
    v: &Value,
) -> std::result::Result<(Vec<u32>, Vec<Value>), String> {
    let messages = match v.get("prompt") {
        Some(Value::String(s)) => vec![serde_json::json!({"role": "user", "content": s})],
        Some(Value::Array(_)) => messages_of(v, "prompt")?,
        Some(_) => return Err("`prompt` must be a string or a list of messages".into()),
        None => messages_of(v, "messages")?,
    };
    Ok((render(tok, &messages, true)?, messages))
}

/// Truncates (keeping the start) and reports whether the example survives.
fn fit(seq: &mut TokenSequence, max_length: usize, stats: &mut LoadStats) -> bool {
    if seq.prompt_len >= max_length {
        return false;
    }
    if seq.ids.len() > max_length {
        seq.ids.truncate(max_length);
        stats.truncated += 1;
    }
    true
}

impl Dataset {
    pub fn load(
        path: &Path,
        kind: DatasetKind,
        tok: &Tokenizer,
        options: &DataOptions,
    ) -> Result<Self> {
        let text = std::fs::read_to_string(path).with_path(path)?;
        let mut stats = LoadStats::default();
        let mut examples = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line_no = i + 1;
            if line.trim().is_empty() {
                continue;
            }
            stats.lines += 1;
            let parsed: std::result::Result<Example, String> = serde_json::from_str::<Value>(line)
                .map_err(|e| format!("invalid JSON: {e}"))
                .and_then(|v| match kind {
                    DatasetKind::Sft => sft_example(tok, &v).map(Example::Sft),
                    DatasetKind::Preference => preference_example(tok, &v),
                    DatasetKind::Prompt => prompt_example(tok, &v)
                        .map(|(ids, messages)| Example::Prompt { ids, messages }),
                });
            let example = match parsed {
                Ok(e) => e,
                Err(message) if options.skip_malformed => {
                    tracing::warn!("{}:{line_no}: skipped: {message}", path.display());
                    stats.skipped_malformed += 1;
                    continue;
                }
                Err(message) => return Err(malformed(path, line_no, message)),
            };
            let keep = match example {
                Example::Sft(mut s) => {
                    fit(&mut s, options.max_length, &mut stats).then_some(Example::Sft(s))
                }
                Example::Preference {
                    mut chosen,
                    mut rejected,
                    mut long_chosen,
                } => {
                    let long_fits = match &mut long_chosen {
                        Some(l) if options.max_long_length > 0 => {
                            fit(l, options.max_long_length, &mut stats)
                        }
                        _ => true,
                    };
                    let keep = fit(&mut chosen, options.max_length, &mut stats)
                        && fit(&mut rejected, options.max_length, &mut stats)
                        && long_fits;
                    keep.then_some(Example::Preference {
                        chosen,
                        rejected,
                        long_chosen,
                    })
                }
                Example::Prompt { ids, messages } => {
                    (ids.len() < options.max_length).then_some(Example::Prompt { ids, messages })
                }
            };
            match keep {
                Some(e) => examples.push(e),
                None => stats.dropped_too_long += 1,
            }
        }
        if examples.is_empty() {
            return Err(malformed(path, 0, "no usable examples"));
        }
        Ok(Self {
            kind,
            examples,
            stats,
            path: path.to_path_buf(),
        })
    }

    /// Batches of example indices for `epoch`: a seeded shuffle, then length bucketing (sorting
    /// within windows of 50 batches) so padding stays small, then the batches shuffled again.
    /// Deterministic in (seed, epoch), which is what makes resumed runs repeat exactly.
    pub fn batches(&self, batch_size: usize, seed: u64, epoch: u64) -> Vec<Vec<usize>> {
        let mut rng = SplitMix(seed ^ epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let mut order: Vec<usize> = (0..self.examples.len()).collect();
        rng.shuffle(&mut order);
        let window = batch_size.max(1) * 50;
        for chunk in order.chunks_mut(window) {
            chunk.sort_by_key(|&i| self.examples[i].len());
        }
        let mut batches: Vec<Vec<usize>> = order
            .chunks(batch_size.max(1))
            .map(<[usize]>::to_vec)
            .collect();
        rng.shuffle(&mut batches);
        batches
    }
}

/// Right-padded sequences with their completion mask, ready for the model.
pub struct TrainBatch {
    pub batch: Batch,
    /// `[B, T]` f32: 1 on completion tokens.
    pub completion_mask: Tensor,
    /// Real length of each row.
    pub lengths: Vec<usize>,
}

impl TrainBatch {
    pub fn new(seqs: &[&TokenSequence], pad_id: u32, device: &Device) -> Result<Self> {
        let masks: Vec<Vec<bool>> = seqs
            .iter()
            .map(|s| (0..s.ids.len()).map(|j| s.learned(j)).collect())
            .collect();
        let rows: Vec<(&[u32], &[bool])> = seqs
            .iter()
            .zip(&masks)
            .map(|(s, m)| (s.ids.as_slice(), m.as_slice()))
            .collect();
        Self::with_loss_masks(&rows, pad_id, device)
    }

    /// Rows of ids, each with a per-token loss mask of the same length (true: learned). Multi-
    /// turn rollouts use it to leave tool responses out of the loss while keeping them in context.
    pub fn with_loss_masks(
        rows: &[(&[u32], &[bool])],
        pad_id: u32,
        device: &Device,
    ) -> Result<Self> {
        let ids: Vec<&[u32]> = rows.iter().map(|(ids, _)| *ids).collect();
        let batch = Batch::right_padded(&ids, pad_id, device)?;
        let (b, t) = batch.dims()?;
        let mut mask = vec![0f32; b * t];
        for (i, (ids, learned)) in rows.iter().enumerate() {
            if learned.len() != ids.len() {
                return Err(TrainError::Invalid(format!(
                    "row {i}: {} loss-mask entries for {} tokens",
                    learned.len(),
                    ids.len()
                )));
            }
            for (j, _) in learned.iter().enumerate().filter(|(_, l)| **l) {
                mask[i * t + j] = 1.0;
            }
        }
        Ok(Self {
            completion_mask: Tensor::from_vec(mask, (b, t), device)?,
            lengths: ids.iter().map(|r| r.len()).collect(),
            batch,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loss_masks_follow_each_row_and_must_match_its_length() {
        let rows: [(&[u32], &[bool]); 2] = [
            (&[1, 2, 3, 4], &[false, true, false, true]),
            (&[5, 6], &[true, true]),
        ];
        let tb = TrainBatch::with_loss_masks(&rows, 0, &Device::Cpu).unwrap();
        assert_eq!(
            tb.completion_mask.to_vec2::<f32>().unwrap(),
            [[0., 1., 0., 1.], [1., 1., 0., 0.]]
        );
        assert_eq!(tb.lengths, [4, 2]);
        let short: [(&[u32], &[bool]); 1] = [(&[1, 2], &[true])];
        let Err(err) = TrainBatch::with_loss_masks(&short, 0, &Device::Cpu) else {
            panic!("a short mask was accepted");
        };
        assert!(err.to_string().contains("row 0"), "{err}");
    }
}

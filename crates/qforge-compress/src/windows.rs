//! The compressor's input as released (QwenLong-CPRS, arXiv 2505.18092, steps 2–3; `src/api_utils/dataset.py`):
//! the prefix (instruction as system, query as user, then an open `context` turn), tokenized
//! apart from the context, and the context cut into windows that each fit `max_len` tokens with
//! the prefix. Two modes:
//! - token windows: the context tokenized once, sliced into chunks of `max_len − P` ids;
//! - sentence packing (when the context has CJK ideographs and `split_with_sent` is on): whole
//!   sentences packed greedily, a window closed when the next sentence would not fit.
//!
//! Offsets are character offsets into the whole context. The released quirks are kept (pinned by
//! `tools/fixtures/gen_cprs_windows.py`): an over-long first sentence yields an empty window
//! first; a window cut to fit is re-decoded, its offsets are not cut, and later offsets shift by
//! the decoded text's length.

use crate::CompressError;
use qforge_model::Tokenizer;

/// One window of context.
#[derive(Debug, Clone, PartialEq)]
pub struct Window {
    /// The window's context text (what the compressor reads after the prefix).
    pub text: String,
    /// Its token ids (fed to the model directly rather than re-encoding the text).
    pub ids: Vec<u32>,
    /// Character offsets of the window's tokens in the whole context.
    pub offsets: Vec<(usize, usize)>,
}

/// `<|im_start|>system\n{instruction}<|im_end|>\n<|im_start|>user\n{query}<|im_end|>\n<|im_start|>context\n`.
pub fn prefix(instruction: &str, query: &str) -> String {
    format!(
        "<|im_start|>system\n{instruction}<|im_end|>\n<|im_start|>user\n{query}<|im_end|>\n<|im_start|>context\n"
    )
}

/// Whether the text has a CJK unified ideograph (U+4E00–U+9FFF), the released test for sentence
/// packing.
pub fn has_cjk(text: &str) -> bool {
    text.trim()
        .chars()
        .any(|c| ('\u{4e00}'..='\u{9fff}').contains(&c))
}

/// Token ids and character offsets, no special tokens added.
pub fn encode(tok: &Tokenizer, text: &str) -> (Vec<u32>, Vec<(usize, usize)>) {
    match tok.inner().encode_char_offsets(text, false) {
        Ok(e) => (e.get_ids().to_vec(), e.get_offsets().to_vec()),
        Err(_) => (Vec::new(), Vec::new()),
    }
}

fn decode(tok: &Tokenizer, ids: &[u32]) -> String {
    tok.decode(ids, false).unwrap_or_default()
}

/// Token windows of `max_len − prefix_len` context tokens each.
pub fn token_windows(
    tok: &Tokenizer,
    context: &str,
    prefix_len: usize,
    max_len: usize,
) -> Vec<Window> {
    let (ids, offsets) = encode(tok, context);
    let chunk = max_len.saturating_sub(prefix_len).max(1);
    ids.chunks(chunk)
        .zip(offsets.chunks(chunk))
        .map(|(ids, offsets)| Window {
            text: decode(tok, ids),
            ids: ids.to_vec(),
            offsets: offsets.to_vec(),
        })
        .collect()
}

/// Sentence ends, in the order the released code tries them (ties go to the earlier entry).
const SENTENCE_MARKS: [&str; 10] = [".", "\n", "。”", "！”", "？”", "”", "。", "！", "？", "|"];

/// Characters up to the end of the next sentence of `chars` (a mark, then any spaces and
/// newlines), as the released search finds it: the earliest mark strictly before the last
/// character; none → the whole rest.
fn next_sentence_end(chars: &[char]) -> usize {
    let last = chars.len().saturating_sub(1);
    let mut best: Option<(usize, usize)> = None;
    for mark in SENTENCE_MARKS {
        let m: Vec<char> = mark.chars().collect();
        let found = chars.windows(m.len()).position(|w| w == m.as_slice());
        let at = found.unwrap_or(last);
        if at < best.map_or(last, |(i, _)| i) {
            best = Some((at, m.len()));
        }
    }
    match best {
        Some((at, len)) => {
            let mut end = at + len;
            while end < chars.len() && (chars[end] == '\n' || chars[end] == ' ') {
                end += 1;
            }
            end
        }
        None => chars.len(),
    }
}

/// Sentence packing.
pub fn sentence_windows(
    tok: &Tokenizer,
    context: &str,
    prefix_len: usize,
    max_len: usize,
) -> Vec<Window> {
    let all: Vec<char> = context.chars().collect();
    let mut out = Vec::new();
    let (mut window_len, mut consumed, mut previous_offset) = (prefix_len, 0usize, 0usize);
    let mut current = String::new();
    let mut rest: &[char] = &all;
    let shifted = |offsets: Vec<(usize, usize)>, by: usize| -> Vec<(usize, usize)> {
        offsets.into_iter().map(|(a, b)| (a + by, b + by)).collect()
    };
    while consumed < all.len() {
        let end = next_sentence_end(rest);
        let sentence: String = rest[..end].iter().collect();
        let sentence_tokens = encode(tok, &sentence).0.len();
        if window_len + sentence_tokens <= max_len {
            current.push_str(&sentence);
        } else {
            let (mut ids, offsets) = encode(tok, &current);
            let offsets = shifted(offsets, previous_offset);
            if ids.len() + prefix_len > max_len {
                ids.truncate(max_len.saturating_sub(prefix_len));
                current = decode(tok, &ids);
            }
            previous_offset += current.chars().count();
            out.push(Window {
                text: std::mem::replace(&mut current, sentence.clone()),
                ids,
                offsets,
            });
            window_len = prefix_len;
        }
        window_len += sentence_tokens;
        consumed += end;
        if consumed == all.len() {
            break;
        }
        rest = &rest[end..];
    }
    if !current.is_empty() {
        let (ids, offsets) = encode(tok, &current);
        out.push(Window {
            text: current,
            ids,
            offsets: shifted(offsets, previous_offset),
        });
    }
    out
}

/// The prefix's token ids and the windows, in the mode the released server picks.
pub fn build_windows(
    tok: &Tokenizer,
    instruction: &str,
    query: &str,
    context: &str,
    max_len: usize,
    split_with_sent: bool,
) -> Result<(Vec<u32>, Vec<Window>), CompressError> {
    let prefix_ids = encode(tok, &prefix(instruction, query)).0;
    let prefix_len = prefix_ids.len();
    if prefix_len >= max_len {
        return Err(CompressError::PrefixTooLong {
            prefix_tokens: prefix_len,
            window: max_len,
        });
    }
    let windows = if split_with_sent && has_cjk(context) {
        sentence_windows(tok, context, prefix_len, max_len)
    } else {
        token_windows(tok, context, prefix_len, max_len)
    };
    Ok((prefix_ids, windows))
}

//! From per-token BIOE labels to the kept text (QwenLong-CPRS, arXiv 2505.18092, steps 6–8), as the released
//! server does it: the repair pass that fills short gaps after a `B`, span extraction (a span
//! runs from any non-`O` tag until the next `O` or `B`; `E` does not close it) with
//! `min_keyword_len` and `complete_sentence`, and the final cleaning. Offsets are character
//! offsets into the context (Python's string indexing), pinned to the released functions by
//! `tools/fixtures/gen_cprs_post.py`.

use serde::Serialize;

/// A BIOE label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum Tag {
    B,
    I,
    O,
    E,
}

impl Tag {
    /// The cls_head's class order: 0 B, 1 I, 2 O, 3 E.
    pub fn from_class(class: usize) -> Option<Tag> {
        [Tag::B, Tag::I, Tag::O, Tag::E].get(class).copied()
    }

    pub fn from_char(c: char) -> Option<Tag> {
        match c {
            'B' => Some(Tag::B),
            'I' => Some(Tag::I),
            'O' => Some(Tag::O),
            'E' => Some(Tag::E),
            _ => None,
        }
    }
}

/// Gaps of `O` shorter than this (in positions, counted from one non-`O` to the next) are filled.
pub const REPAIR_GAP: usize = 20;

/// Which repair to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Repair {
    /// As released: the forward pass from each `B` only. (The released backward pass from each
    /// `E` never runs: it calls `list.rindex`, which does not exist, and a bare `except` breaks
    /// out of it.)
    #[default]
    Released,
    /// The forward pass, then the backward pass the released code meant: from each `E`, fill
    /// short gaps leftwards until a `B` or `E`.
    Fixed,
}

/// The released forward repair: from every `B`, walk right; each time the next non-`O` lies
/// fewer than [`REPAIR_GAP`] positions after the previous one, the `O`s between become `I`; stop
/// after reaching a `B` or `E`, or at a longer gap.
pub fn repair(tags: &mut [Tag], mode: Repair) {
    let n = tags.len();
    let mut from = 0;
    while let Some(b) = tags[from..]
        .iter()
        .position(|&t| t == Tag::B)
        .map(|i| i + from)
    {
        if b + 1 == n {
            break;
        }
        let (mut left, mut right) = (b, b + 1);
        while right < n {
            if tags[right] == Tag::O {
                right += 1;
                continue;
            }
            if right - left >= REPAIR_GAP {
                break;
            }
            tags[left + 1..right].fill(Tag::I);
            if matches!(tags[right], Tag::B | Tag::E) {
                break;
            }
            left = right;
            right += 1;
        }
        from = b + 1;
    }
    if mode == Repair::Fixed {
        let mut to = n;
        while let Some(e) = tags[..to].iter().rposition(|&t| t == Tag::E) {
            if e == 0 {
                break;
            }
            let (mut right, mut left) = (e, e as isize - 1);
            while left >= 0 {
                let l = left as usize;
                if tags[l] == Tag::O {
                    left -= 1;
                    continue;
                }
                if right - l >= REPAIR_GAP {
                    break;
                }
                tags[l + 1..right].fill(Tag::I);
                if matches!(tags[l], Tag::B | Tag::E) {
                    break;
                }
                right = l;
                left -= 1;
            }
            to = e;
        }
    }
}

/// A kept span: its text (trimmed) and character range in the context.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Span {
    pub text: String,
    pub start: usize,
    pub end: usize,
}

/// Characters that end a sentence for `complete_sentence`.
const SENTENCE_ENDS: &str = ".。：？！\"”?!\n";

/// Spans of the labelled tokens. `offsets[i]` is token i's (start, end) in characters of
/// `context`; a span covers characters from its first token's start to the next token's start
/// (the context's end after the last token) and is kept when it has **more than**
/// `min_keyword_len` tokens. With `complete_sentence` it grows to the sentence ends around it,
/// never back past the previous span's end.
pub fn spans(
    tags: &[Tag],
    offsets: &[(usize, usize)],
    context: &str,
    min_keyword_len: usize,
    complete_sentence: bool,
) -> Vec<Span> {
    let chars: Vec<char> = context.chars().collect();
    let is_end = |i: usize| SENTENCE_ENDS.contains(chars[i]);
    let mut out = Vec::new();
    let mut previous_end: isize = -1;
    let mut start = 0;
    while start < tags.len() {
        if tags[start] == Tag::O {
            start += 1;
            continue;
        }
        let mut end = start + 1;
        while end < tags.len() && !matches!(tags[end], Tag::O | Tag::B) {
            end += 1;
        }
        let mut char_start = offsets
            .get(start)
            .map_or(chars.len(), |o| o.0)
            .min(chars.len());
        let mut char_end = offsets
            .get(end)
            .map_or(chars.len(), |o| o.0)
            .min(chars.len());
        if end - start > min_keyword_len {
            if complete_sentence {
                while char_start > 0
                    && !is_end(char_start - 1)
                    && char_start as isize > previous_end
                {
                    char_start -= 1;
                }
                // `context[char_end - 1]` in Python: index -1 is the last character.
                while char_end < chars.len()
                    && char_end + 1 != chars.len()
                    && !is_end(char_end.checked_sub(1).unwrap_or(chars.len() - 1))
                {
                    char_end += 1;
                }
            }
            let text: String = chars[char_start..char_end.max(char_start)].iter().collect();
            out.push(Span {
                text: text.trim().to_string(),
                start: char_start,
                end: char_end,
            });
        }
        previous_end = char_end as isize;
        start = end;
    }
    out
}

/// The released cleaning: empty spans, and spans that are substrings of "（），。！", go.
pub fn clean(spans: Vec<Span>) -> Vec<Span> {
    spans
        .into_iter()
        .filter(|s| !s.text.trim().is_empty() && !"（），。！".contains(s.text.as_str()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tags(s: &str) -> Vec<Tag> {
        s.chars().filter_map(Tag::from_char).collect()
    }

    fn string(t: &[Tag]) -> String {
        t.iter().map(|t| format!("{t:?}")).collect()
    }

    #[test]
    fn the_fixed_backward_pass_fills_before_an_e() {
        let mut t = tags("IOOOE");
        repair(&mut t, Repair::Released);
        assert_eq!(string(&t), "IOOOE", "released: nothing starts at a B");
        repair(&mut t, Repair::Fixed);
        assert_eq!(string(&t), "IIIIE");
    }
}

//! Answer matching shared by recipes that score text against a gold answer (SoLoPO's pair
//! labelling, the RL rewards to come), following QwenLong-L1's `verl/utils/reward_score/docqa.py`
//! (commit 38d0806): SQuAD normalisation, exact match, sub-exact-match (either string contains
//! the other), token F1 with the yes/no/noanswer rule, and answer extraction after the last
//! `</think>` and the last "the answer is". Pinned by `tests/answers.rs` against fixtures from
//! that file (`tools/fixtures/gen_answers.py`).

use std::collections::HashMap;

/// Lower-case, drop ASCII punctuation, replace the words a/an/the (delimited like the regex
/// `\b(a|an|the)\b`) by a space, collapse whitespace.
pub fn normalize_answer(s: &str) -> String {
    let lower = s.to_lowercase();
    let no_punct: String = lower
        .chars()
        .filter(|c| !c.is_ascii_punctuation())
        .collect();
    let is_word = |c: char| c.is_alphanumeric() || c == '_';
    let mut out = String::with_capacity(no_punct.len());
    let mut word = String::new();
    let flush = |word: &mut String, out: &mut String| {
        if matches!(word.as_str(), "a" | "an" | "the") {
            out.push(' ');
        } else {
            out.push_str(word);
        }
        word.clear();
    };
    for c in no_punct.chars() {
        if is_word(c) {
            word.push(c);
        } else {
            flush(&mut word, &mut out);
            out.push(c);
        }
    }
    flush(&mut word, &mut out);
    out.split_whitespace().collect::<Vec<_>>().join(" ")
}

pub fn exact_match(prediction: &str, gold: &str) -> bool {
    normalize_answer(prediction) == normalize_answer(gold)
}

/// The normalised gold is in the normalised prediction, or the prediction in the gold.
pub fn sub_exact_match(prediction: &str, gold: &str) -> bool {
    let (p, g) = (normalize_answer(prediction), normalize_answer(gold));
    p.contains(&g) || g.contains(&p)
}

/// Token-level (F1, precision, recall) of normalised strings; a yes/no/noanswer on either side
/// scores only as an exact match.
pub fn token_f1(prediction: &str, gold: &str) -> (f64, f64, f64) {
    let (p, g) = (normalize_answer(prediction), normalize_answer(gold));
    let special = |s: &str| matches!(s, "yes" | "no" | "noanswer");
    if (special(&p) || special(&g)) && p != g {
        return (0.0, 0.0, 0.0);
    }
    let (pt, gt): (Vec<&str>, Vec<&str>) = (
        p.split_whitespace().collect(),
        g.split_whitespace().collect(),
    );
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for t in &gt {
        *counts.entry(t).or_default() += 1;
    }
    let mut same = 0usize;
    for t in &pt {
        if let Some(c) = counts.get_mut(t)
            && *c > 0
        {
            *c -= 1;
            same += 1;
        }
    }
    if same == 0 {
        return (0.0, 0.0, 0.0);
    }
    let precision = same as f64 / pt.len() as f64;
    let recall = same as f64 / gt.len() as f64;
    (
        2.0 * precision * recall / (precision + recall),
        precision,
        recall,
    )
}

/// The text after the last `</think>`, trimmed; `None` without a `</think>`.
pub fn after_thinking(response: &str) -> Option<&str> {
    response
        .rfind("</think>")
        .map(|i| response[i + "</think>".len()..].trim())
}

/// The answer after the last "the answer is" (asterisks removed, trimmed, trailing periods
/// dropped), or `None` when the phrase is absent.
pub fn parse_the_answer_is(response: &str) -> Option<String> {
    let text = response.replace('*', "");
    let at = text.rfind("the answer is")?;
    let ans = text[at + "the answer is".len()..]
        .trim()
        .replace("<｜Assistant｜>", "")
        .replace("<｜end▁of▁sentence｜>", "");
    Some(ans.trim().trim_matches('.').trim().to_string())
}

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

/// The length of DocMath's number pattern at the start of `s` (`=?≈?`?%?$?°?£?€?¥?-?[0-9.,]+`:
/// each symbol at most once, in that order, then digits, dots and commas), `None` without one.
pub fn docmath_number_len(s: &str) -> Option<usize> {
    let mut end = 0;
    let mut chars = s.char_indices().peekable();
    for symbol in ['=', '≈', '`', '%', '$', '°', '£', '€', '¥', '-'] {
        if let Some(&(i, c)) = chars.peek()
            && c == symbol
        {
            end = i + c.len_utf8();
            chars.next();
        }
    }
    let digits_from = end;
    while let Some(&(i, c)) = chars.peek() {
        if c.is_ascii_digit() || c == '.' || c == ',' {
            end = i + 1;
            chars.next();
        } else {
            break;
        }
    }
    (end > digits_from).then_some(end)
}

/// DocMath's answer: the number after the first (case-insensitive) "the answer is" that is
/// followed by one, with the optional symbols QwenLong-L1's regex allows before it
/// (`=≈`%$°£€¥`, in that order) and an optional minus; commas removed, trailing periods
/// dropped (`docmath.py`, `parse_model_answer`).
pub fn parse_docmath_answer(response: &str) -> Option<String> {
    let text = response.replace('*', "");
    let phrase = b"the answer is ";
    let bytes = text.as_bytes();
    let mut at = 0;
    while at + phrase.len() <= bytes.len() {
        if bytes[at..at + phrase.len()].eq_ignore_ascii_case(phrase) {
            let rest = &text[at + phrase.len()..];
            if let Some(end) = docmath_number_len(rest) {
                let found = rest[..end].replace(',', "");
                return Some(found.trim_end_matches('.').to_string());
            }
        }
        at += 1;
    }
    None
}

/// A DocMath answer as Python's `eval` reads it after `normalize` (for the strings
/// [`parse_docmath_answer`] returns): symbols and currency stripped, the part after `=`/`≈`,
/// then a Python number literal, or 0 when it is not one (e.g. `007`, `1.2.3`).
fn docmath_value(answer: &str) -> f64 {
    let mut s = answer.trim().trim_end_matches('.').to_string();
    for money in [
        "£", "€", "¥", "million", "billion", "thousand", "US", "USD", "RMB",
    ] {
        s = s.replace(money, "");
    }
    for sep in ['=', '≈'] {
        if let Some(i) = s.rfind(sep) {
            s = s[i + sep.len_utf8()..].trim().to_string();
        }
    }
    s.retain(|c| !matches!(c, '`' | '%' | '$' | '°'));
    let s = s.replace(',', "");
    let digits = s.strip_prefix('-').unwrap_or(&s);
    let (int_part, frac) = match digits.split_once('.') {
        Some((a, b)) => (a, Some(b)),
        None => (digits, None),
    };
    let all_digits = |t: &str| t.chars().all(|c| c.is_ascii_digit());
    let valid = match frac {
        // Python int literals forbid leading zeros ("007"), except zero itself ("00").
        None => {
            !int_part.is_empty()
                && all_digits(int_part)
                && (!int_part.starts_with('0') || int_part.chars().all(|c| c == '0'))
        }
        Some(f) => all_digits(int_part) && all_digits(f) && !(int_part.is_empty() && f.is_empty()),
    };
    if !valid {
        return 0.0;
    }
    s.parse::<f64>().unwrap_or(0.0)
}

/// DocMath's numeric equivalence (`compare_two_numbers`): equal up to a power-of-ten factor,
/// or one is the other ×100/×1000/×100000 within 0.15%, or equal after rounding up to 3
/// decimals, or within 0.15% of the gold. Signs are ignored by the first rules, as there.
pub fn docmath_equivalent(prediction: &str, gold: &str) -> bool {
    let (p, gt) = (docmath_value(prediction), docmath_value(gold));
    let within = |pred: f64, gt: f64| {
        let eps = gt.abs() * 0.0015;
        pred >= gt - eps && pred <= gt + eps
    };
    let round_up = |x: f64| (x * 1000.0).ceil() / 1000.0;
    let (v1, v2) = (gt.abs().max(p.abs()), gt.abs().min(p.abs()));
    if v1 != 0.0 && v2 != 0.0 {
        let d = v1.log10() - v2.log10();
        if d.trunc() == d {
            return true;
        }
    }
    if (v2 <= v1 / 50.0 && within(v2 * 100.0, v1))
        || (v2 <= v1 / 500.0 && within(v2 * 1000.0, v1))
        || (v2 <= v1 / 50000.0 && within(v2 * 100000.0, v1))
    {
        return true;
    }
    if round_up(v1) == round_up(v2) {
        return true;
    }
    within(p, gt)
}

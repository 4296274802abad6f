//! Rewards: a task carries its gold answers; a [`RewardFn`] scores a response against it.

use qforge_train::answers::{after_thinking, exact_match, parse_the_answer_is, sub_exact_match};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// One prompt with what its rewards need.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Task {
    pub messages: Vec<Value>,
    pub answers: Vec<String>,
}

impl Task {
    /// The task as a conversational SFT row (TRL's `messages`) answered with its first gold
    /// answer: warm-up data for the same tasks RL trains on.
    pub fn sft_row(&self) -> Value {
        let mut messages = self.messages.clone();
        let answer = self.answers.first().map_or("", String::as_str);
        messages.push(serde_json::json!({"role": "assistant", "content": answer}));
        serde_json::json!({ "messages": messages })
    }
}

pub trait RewardFn: Send + Sync {
    fn score(&self, task: &Task, response: &str) -> f64;

    /// Scores many responses; rewards that call out (judges) override it to work concurrently.
    fn score_batch(&self, items: &[(&Task, &str)]) -> Vec<f64> {
        items.iter().map(|(t, r)| self.score(t, r)).collect()
    }

    /// Calls that failed so far (a judge that was down); 0 for rule rewards.
    fn failures(&self) -> usize {
        0
    }
}

/// Where the answer is read from the response.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Extraction {
    /// The whole response (after a think block, if any).
    Whole,
    /// QwenLong-L1's DocQA rule: after the last `</think>` (none: reward 0), then after the
    /// last "the answer is".
    TheAnswerIs,
}

/// QwenLong-L1's DocQA prediction: after the last `</think>`, after the last "the answer is".
pub fn extract_the_answer_is(response: &str) -> Option<String> {
    extract(response, Extraction::TheAnswerIs)
}

fn extract(response: &str, how: Extraction) -> Option<String> {
    match how {
        Extraction::Whole => Some(after_thinking(response).unwrap_or(response).to_string()),
        Extraction::TheAnswerIs => after_thinking(response).and_then(parse_the_answer_is),
    }
}

/// 1 when the extracted answer sub-exact-matches some gold answer (QwenLong-L1's DocQA rule
/// reward), else 0.
#[derive(Debug, Clone, Copy)]
pub struct SubEm(pub Extraction);

impl RewardFn for SubEm {
    fn score(&self, task: &Task, response: &str) -> f64 {
        let Some(answer) = extract(response, self.0).filter(|a| !a.trim().is_empty()) else {
            return 0.0;
        };
        f64::from(u8::from(
            task.answers.iter().any(|g| sub_exact_match(&answer, g)),
        ))
    }
}

/// 1 when the extracted answer equals some gold answer after SQuAD normalisation.
#[derive(Debug, Clone, Copy)]
pub struct ExactMatch(pub Extraction);

impl RewardFn for ExactMatch {
    fn score(&self, task: &Task, response: &str) -> f64 {
        let Some(answer) = extract(response, self.0) else {
            return 0.0;
        };
        f64::from(u8::from(
            task.answers.iter().any(|g| exact_match(&answer, g)),
        ))
    }
}

/// The letter of "The correct answer is (X)" (or without parentheses), X in A-D, after
/// asterisks are removed (QwenLong-L1's `long.py`).
pub fn choice_letter(text: &str) -> Option<char> {
    let text = text.replace('*', "");
    let phrase = "The correct answer is ";
    let mut best: Option<char> = None;
    // The parenthesised form wins wherever it appears; then the bare letter.
    for parenthesised in [true, false] {
        let mut from = 0;
        while let Some(at) = text[from..].find(phrase) {
            let rest = &text[from + at + phrase.len()..];
            let mut chars = rest.chars();
            let letter = if parenthesised {
                match (chars.next(), chars.next(), chars.next()) {
                    (Some('('), Some(c @ 'A'..='D'), Some(')')) => Some(c),
                    _ => None,
                }
            } else {
                chars.next().filter(|c| ('A'..='D').contains(c))
            };
            if letter.is_some() {
                best = letter;
                break;
            }
            from += at + phrase.len();
        }
        if best.is_some() {
            break;
        }
    }
    best
}

/// Multiple choice: 1 when the response's letter (after the last `</think>`) equals the gold's.
#[derive(Debug, Clone, Copy)]
pub struct ChoiceMatch;

impl RewardFn for ChoiceMatch {
    fn score(&self, task: &Task, response: &str) -> f64 {
        let Some(pred) = after_thinking(response).and_then(choice_letter) else {
            return 0.0;
        };
        let gold = task.answers.iter().find_map(|a| {
            choice_letter(a).or_else(|| {
                let t = a.trim();
                (t.len() == 1)
                    .then(|| t.chars().next())
                    .flatten()
                    .filter(|c| ('A'..='D').contains(c))
            })
        });
        f64::from(u8::from(gold == Some(pred)))
    }
}

/// DocMath: 1 when the number after "the answer is" (after the last `</think>`) is
/// numerically equivalent to the gold (QwenLong-L1's `docmath.py` rules). A gold answer without
/// the phrase is read as the number itself.
#[derive(Debug, Clone, Copy)]
pub struct DocMath;

impl RewardFn for DocMath {
    fn score(&self, task: &Task, response: &str) -> f64 {
        use qforge_train::answers::{docmath_equivalent, parse_docmath_answer};
        let Some(pred) = after_thinking(response).and_then(parse_docmath_answer) else {
            return 0.0;
        };
        let hit = task.answers.iter().any(|g| {
            let gold = parse_docmath_answer(g).unwrap_or_else(|| g.trim().to_string());
            docmath_equivalent(&pred, &gold)
        });
        f64::from(u8::from(hit))
    }
}

/// The best of several rewards (QwenLong-L1 combines the rule reward and the judge by max).
pub struct MaxOf(pub Vec<std::sync::Arc<dyn RewardFn>>);

impl RewardFn for MaxOf {
    fn score(&self, task: &Task, response: &str) -> f64 {
        self.0
            .iter()
            .map(|r| r.score(task, response))
            .fold(f64::NEG_INFINITY, f64::max)
            .max(0.0)
    }
}

/// DAPO's soft overlong punishment for a response of `len` tokens: 0 up to
/// `max_len − buffer`, then falling linearly to `−factor` at `max_len` (and below beyond).
pub fn overlong_penalty(len: usize, max_len: usize, buffer: usize, factor: f64) -> f64 {
    let expected = max_len.saturating_sub(buffer) as f64;
    if buffer == 0 {
        return 0.0;
    }
    (-(len as f64 - expected) / buffer as f64 * factor).min(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(answer: &str) -> Task {
        Task {
            messages: Vec::new(),
            answers: vec![answer.into()],
        }
    }

    #[test]
    fn docqa_rule_reward_needs_the_think_block_and_the_answer_phrase() {
        let r = SubEm(Extraction::TheAnswerIs);
        let t = task("Paris");
        assert_eq!(
            r.score(&t, "<think>x</think> Therefore, the answer is Paris."),
            1.0
        );
        assert_eq!(
            r.score(&t, "Therefore, the answer is Paris."),
            0.0,
            "no </think>"
        );
        assert_eq!(
            r.score(&t, "<think>x</think> It is Paris."),
            0.0,
            "no answer phrase"
        );
        assert_eq!(r.score(&t, "<think>x</think> the answer is Lyon."), 0.0);
        assert_eq!(SubEm(Extraction::Whole).score(&t, "paris, France"), 1.0);
        assert_eq!(
            ExactMatch(Extraction::Whole).score(&t, "paris, France"),
            0.0
        );
        assert_eq!(
            ExactMatch(Extraction::Whole).score(&t, "<think></think> The Paris."),
            1.0
        );
    }

    #[test]
    fn multiple_choice_reads_the_official_phrases() {
        assert_eq!(choice_letter("The correct answer is (B)."), Some('B'));
        assert_eq!(choice_letter("**The correct answer is C**"), Some('C'));
        assert_eq!(choice_letter("The correct answer is E"), None);
        assert_eq!(
            choice_letter("the correct answer is (B)"),
            None,
            "case-sensitive, as long.py"
        );
        // The parenthesised form is searched first, anywhere in the text.
        assert_eq!(
            choice_letter("The correct answer is A. Or The correct answer is (D)"),
            Some('D')
        );
        let t = Task {
            messages: Vec::new(),
            answers: vec!["The correct answer is (B)".into()],
        };
        assert_eq!(
            ChoiceMatch.score(&t, "<think>..</think> The correct answer is (B)"),
            1.0
        );
        assert_eq!(
            ChoiceMatch.score(&t, "<think>..</think> The correct answer is (A)"),
            0.0
        );
        assert_eq!(
            ChoiceMatch.score(&t, "The correct answer is (B)"),
            0.0,
            "no </think>"
        );
        let t = Task {
            messages: Vec::new(),
            answers: vec!["B".into()],
        };
        assert_eq!(
            ChoiceMatch.score(&t, "<think></think>The correct answer is B"),
            1.0
        );
    }

    #[test]
    fn docmath_reward_reads_the_number_after_thinking() {
        let t = task("The answer is 1,234.5");
        assert_eq!(
            DocMath.score(&t, "<think>..</think> So the answer is $1234.50."),
            1.0
        );
        assert_eq!(
            DocMath.score(&t, "<think>..</think> the answer is 12.345"),
            1.0,
            "power of ten"
        );
        assert_eq!(
            DocMath.score(&t, "<think>..</think> the answer is 1300"),
            0.0
        );
        assert_eq!(
            DocMath.score(&t, "the answer is 1234.5"),
            0.0,
            "no </think>"
        );
        assert_eq!(
            DocMath.score(&task("0.25"), "<think></think>the answer is 25%"),
            1.0
        );
    }

    #[test]
    fn max_of_takes_the_best_reward() {
        let t = task("Paris");
        let r = MaxOf(vec![
            std::sync::Arc::new(ExactMatch(Extraction::Whole)),
            std::sync::Arc::new(SubEm(Extraction::Whole)),
        ]);
        assert_eq!(r.score(&t, "Paris, France"), 1.0);
        assert_eq!(r.score(&t, "Lyon"), 0.0);
    }

    #[test]
    fn overlong_penalty_is_dapos_linear_ramp() {
        // L_max 10000, buffer 1000: free up to 9000, −0.5 at 9500, −1 at 10000.
        assert_eq!(overlong_penalty(8000, 10_000, 1000, 1.0), 0.0);
        assert_eq!(overlong_penalty(9000, 10_000, 1000, 1.0), 0.0);
        assert!((overlong_penalty(9500, 10_000, 1000, 1.0) + 0.5).abs() < 1e-12);
        assert!((overlong_penalty(10_000, 10_000, 1000, 1.0) + 1.0).abs() < 1e-12);
        assert_eq!(overlong_penalty(5, 10, 0, 1.0), 0.0);
    }
}

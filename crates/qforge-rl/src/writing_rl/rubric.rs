//! A deterministic rubric judge that answers Writing-RL's pairwise judge prompt like an LLM
//! judge would (an explanation, then `[[A]]`, `[[B]]` or `[[C]]`), for runs without a judge
//! model: tests, the embedded default, and smoke runs. It reads the question and the two
//! answers out of the released template and scores each answer on
//! - length following: LongBench-Write's S_l (words counted as LongWriter counts them) against
//!   the word count the question asks for ("in 40 words", "a 40-word"; no target: full marks),
//! - terms: the share of the words listed after `Use the words:` (up to the line's end or a
//!   period) that the answer contains,
//! - repetition: distinct bigrams over bigrams (the judge template's "severe repetition loses"),
//!
//! weighted 0.5 / 0.3 / 0.2. Scores closer than 0.02 are a tie.

use async_trait::async_trait;
use qforge_engine::chat::{ChatDelta, ChatEvent, ChatRequest};
use qforge_engine::{BackendError, ChatBackend, ChatStream};

use super::eval::{count_words, length_score};

/// The word count a writing prompt asks for: the number before "words" (`40 words`,
/// `40-word`).
pub fn required_words(question: &str) -> Option<usize> {
    let tokens: Vec<&str> = question.split_whitespace().collect();
    tokens.iter().enumerate().find_map(|(i, t)| {
        let t = t.trim_matches(|c: char| !c.is_alphanumeric() && c != '-');
        if let Some(n) = t.strip_suffix("-word").or_else(|| t.strip_suffix("-words")) {
            return n.parse().ok();
        }
        let next = tokens.get(i + 1)?.to_ascii_lowercase();
        if next.starts_with("word") {
            return t.parse().ok();
        }
        None
    })
}

/// The words listed after `Use the words:`.
pub fn required_terms(question: &str) -> Vec<String> {
    let Some((_, rest)) = question.split_once("Use the words:") else {
        return Vec::new();
    };
    let line = rest.lines().next().unwrap_or_default();
    let line = line.split('.').next().unwrap_or_default();
    line.split(',')
        .map(|t| t.trim().to_lowercase())
        .filter(|t| !t.is_empty())
        .collect()
}

/// Distinct bigrams over bigrams (1 for fewer than two words).
pub fn distinct_bigrams(text: &str) -> f64 {
    let words: Vec<String> = text.split_whitespace().map(str::to_lowercase).collect();
    if words.len() < 2 {
        return 1.0;
    }
    let pairs: Vec<(&str, &str)> = words.windows(2).map(|w| (&*w[0], &*w[1])).collect();
    let distinct: std::collections::HashSet<_> = pairs.iter().collect();
    distinct.len() as f64 / pairs.len() as f64
}

/// The rubric's score of one answer to a question, in [0, 1].
pub fn rubric_score(question: &str, answer: &str) -> f64 {
    let words = count_words(answer);
    let length = required_words(question).map_or(1.0, |x| length_score(x, words) / 100.0);
    let terms = required_terms(question);
    let coverage = if terms.is_empty() {
        1.0
    } else {
        let lower = answer.to_lowercase();
        terms.iter().filter(|t| lower.contains(t.as_str())).count() as f64 / terms.len() as f64
    };
    0.5 * length + 0.3 * coverage + 0.2 * distinct_bigrams(answer)
}

/// Text between `start` and `end` markers.
fn between<'a>(text: &'a str, start: &str, end: &str) -> Option<&'a str> {
    let (_, rest) = text.split_once(start)?;
    Some(rest.split_once(end)?.0.trim_matches('\n'))
}

/// The rubric's reply to a rendered judge prompt, or `None` when it is not one.
pub fn rubric_reply(prompt: &str) -> Option<String> {
    let question = between(prompt, "[User Question]\n", "\n\n[The Start of Assistant A")?;
    let a = between(
        prompt,
        "[The Start of Assistant A's Answer]\n",
        "\n[The End of Assistant A's Answer]",
    )?;
    let b = between(
        prompt,
        "[The Start of Assistant B's Answer]\n",
        "\n[The End of Assistant B's Answer]",
    )?;
    let (sa, sb) = (rubric_score(question, a), rubric_score(question, b));
    let verdict = if (sa - sb).abs() < 0.02 {
        "[[C]]"
    } else if sa > sb {
        "[[A]]"
    } else {
        "[[B]]"
    };
    Some(format!(
        "Rubric (length 0.5, required words 0.3, distinct bigrams 0.2): Assistant A scores \
         {sa:.3}, Assistant B scores {sb:.3}. {verdict}"
    ))
}

/// The rubric as a chat model: replies to the judge prompt in the last user message; other
/// prompts get a reply without a verdict.
#[derive(Debug, Clone, Default)]
pub struct RubricJudge;

#[async_trait]
impl ChatBackend for RubricJudge {
    fn model_name(&self) -> &str {
        "writing-rubric-judge"
    }

    async fn chat_stream(&self, request: ChatRequest) -> Result<ChatStream, BackendError> {
        let prompt = request
            .messages
            .iter()
            .rev()
            .find(|m| m["role"] == "user")
            .and_then(|m| m["content"].as_str())
            .unwrap_or_default();
        let reply = rubric_reply(prompt)
            .unwrap_or_else(|| "This is not a pairwise comparison prompt.".to_string());
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        tx.send(Ok(ChatEvent::Delta(ChatDelta {
            content: Some(reply),
            finish_reason: Some("stop".into()),
            ..ChatDelta::default()
        })))
        .await
        .map_err(|_| BackendError::Unavailable("reply channel closed".into()))?;
        Ok(rx)
    }
}

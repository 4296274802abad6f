//! RFT cold-start data (WebSailor, arXiv 2507.02592): an expert's trajectories are kept
//! when the answer is judged right, the whole run fits the token cap (32k) and it made *more
//! than* the minimum number of tool calls (5); optionally each thought is rewritten short by a
//! second model from the rebuilt history, the action and its observation (the paper's
//! "short-CoT" reconstruction); the rows are written for SFT, where the loader learns the
//! assistant turns and leaves the `<tool_response>` turns out of the loss.

use qforge_engine::ChatBackend;
use qforge_engine::chat::ChatRequest;
use serde_json::{Value, json};

use super::runner::TrajectoryRow;

/// The paper's filters.
#[derive(Debug, Clone)]
pub struct RftFilter {
    /// Keep runs with strictly more tool calls than this.
    pub min_tool_calls: usize,
    /// Keep runs whose conversation is at most this many tokens.
    pub max_tokens: usize,
}

impl Default for RftFilter {
    fn default() -> Self {
        Self {
            min_tool_calls: 5,
            max_tokens: 32 * 1024,
        }
    }
}

/// Why a run was left out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Rejection {
    NoAnswer,
    Wrong,
    /// The judge gave no verdict.
    Unjudged,
    TooFewToolCalls,
    TooLong,
}

/// Whether a judged run qualifies; `count_tokens` measures its conversation.
pub fn check(
    row: &TrajectoryRow,
    correct: Option<bool>,
    filter: &RftFilter,
    count_tokens: &dyn Fn(&[Value]) -> usize,
) -> Result<(), Rejection> {
    let t = &row.trajectory;
    if t.answer.is_none() {
        return Err(Rejection::NoAnswer);
    }
    match correct {
        None => return Err(Rejection::Unjudged),
        Some(false) => return Err(Rejection::Wrong),
        Some(true) => {}
    }
    if t.tool_calls <= filter.min_tool_calls {
        return Err(Rejection::TooFewToolCalls);
    }
    if count_tokens(&t.messages) > filter.max_tokens {
        return Err(Rejection::TooLong);
    }
    Ok(())
}

/// Splits an assistant turn into its thought (inside `<think>`) and the rest (the action).
pub fn split_thought(turn: &str) -> (Option<&str>, &str) {
    match (turn.find("<think>"), turn.find("</think>")) {
        (Some(open), Some(close)) if open < close => (
            Some(turn[open + "<think>".len()..close].trim()),
            turn[close + "</think>".len()..].trim_start(),
        ),
        _ => (None, turn.trim_start()),
    }
}

fn rewrite_prompt(history: &str, action: &str, observation: Option<&str>) -> String {
    format!(
        "Below is a web research session so far, then the step the researcher took next{}.\n\n\
         ## Session so far\n{history}\n\n## Next step\n{action}\n\n{}\
         Write the researcher's reasoning for taking this step, as they would think it just \
         before acting: one to three short sentences, first person, no preamble. Reply with \
         the reasoning only.",
        if observation.is_some() {
            " and what it returned"
        } else {
            ""
        },
        observation.map_or(String::new(), |o| format!("## What it returned\n{o}\n\n"))
    )
}

/// Rewrites the thought of every assistant turn short, with `backend`, from the history
/// rebuilt so far (question, rewritten turns, observations), the turn's action and the
/// observation that followed. A thought the model leaves empty or writes longer than
/// `max_chars` is asked again (3 tries), then the original is kept; returns the new messages
/// and how many thoughts kept their original.
pub async fn rewrite_thoughts(
    backend: &dyn ChatBackend,
    messages: &[Value],
    max_chars: usize,
) -> (Vec<Value>, usize) {
    let mut out: Vec<Value> = Vec::with_capacity(messages.len());
    let mut kept_original = 0;
    for (i, m) in messages.iter().enumerate() {
        let content = m["content"].as_str().unwrap_or("");
        if m["role"] != "assistant" {
            out.push(m.clone());
            continue;
        }
        let (thought, action) = split_thought(content);
        let observation = messages
            .get(i + 1)
            .filter(|n| n["role"] != "assistant")
            .and_then(|n| n["content"].as_str());
        let history: String = out
            .iter()
            .skip(1) // the system prompt
            .map(|h| {
                format!(
                    "[{}]\n{}",
                    h["role"].as_str().unwrap_or(""),
                    h["content"].as_str().unwrap_or("")
                )
            })
            .collect::<Vec<_>>()
            .join("\n\n");
        let request = ChatRequest {
            messages: vec![json!({"role": "user",
                "content": rewrite_prompt(&history, action, observation)})],
            temperature: Some(0.7),
            ..ChatRequest::default()
        };
        let mut short = None;
        for _ in 0..3 {
            let Ok(reply) = backend.chat(request.clone()).await else {
                continue;
            };
            let text = reply.text();
            let text = split_thought(&text)
                .0
                .unwrap_or(text.trim())
                .trim()
                .to_string();
            if !text.is_empty() && text.chars().count() <= max_chars {
                short = Some(text);
                break;
            }
        }
        let thought = match short {
            Some(s) => s,
            None => {
                kept_original += 1;
                thought.unwrap_or("").to_string()
            }
        };
        out.push(
            json!({"role": "assistant", "content": format!("<think>{thought}</think>\n{action}")}),
        );
    }
    (out, kept_original)
}

/// An SFT row from a conversation.
pub fn sft_row(messages: Vec<Value>) -> Value {
    json!({ "messages": messages })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thoughts_split_from_actions() {
        assert_eq!(
            split_thought("<think> look it up </think>\n<tool_call>{}</tool_call>"),
            (Some("look it up"), "<tool_call>{}</tool_call>")
        );
        assert_eq!(
            split_thought("<answer>x</answer>"),
            (None, "<answer>x</answer>")
        );
        assert_eq!(
            split_thought("</think>odd<think>"),
            (None, "</think>odd<think>")
        );
    }
}

//! Multi-turn tool rollouts (WebSailor, arXiv 2507.02592, verl's multi-turn
//! rollout): the policy writes a turn, an environment answers it, the answer goes back into the
//! context as a user turn in `<tool_response>` tags, and the policy goes on, until the
//! environment ends the episode or a budget runs out. Only the policy's own tokens are learned;
//! the environment's are context (their loss mask is false).

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::reward::Task;

/// What answers the policy's turns during a rollout (a search engine, a key-value store, a
/// phone simulator). Called from the rollout loop; must be cheap or do its own caching.
pub trait ToolEnv: Send + Sync {
    /// Strings that end an assistant turn so that the environment can answer it (besides the
    /// end-of-turn token), e.g. `</tool_call>`.
    fn stop_strings(&self) -> Vec<String>;

    /// The observation for the latest of the episode's assistant turns (`turns`, oldest first),
    /// or `None` when the episode is over (the turn gave an answer instead of a tool call).
    fn observe(&self, task: &Task, turns: &[String]) -> Option<String>;
}

/// Budgets of a multi-turn rollout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ToolConfig {
    /// Assistant turns per episode at most.
    pub max_turns: usize,
    /// An observation is cut to this many tokens (verl's `max_tool_response_length`).
    pub max_observation_tokens: usize,
    /// Response tokens per episode at most, generated and observation together (the context
    /// budget); an episode that reaches it ends.
    pub max_response_tokens: usize,
}

impl Default for ToolConfig {
    fn default() -> Self {
        Self {
            max_turns: 8,
            max_observation_tokens: 1024,
            max_response_tokens: 8192,
        }
    }
}

/// The text that follows an assistant turn which an environment answered, in the ChatML of
/// Qwen2.5/Qwen3: close the turn (unless its end-of-turn token already did), the observation as
/// a user turn wrapped in `<tool_response>` (how both templates render the `tool` role, and how
/// WebSailor returns results), and open the next assistant turn.
pub fn observation_text(observation: &str, turn_closed: bool) -> String {
    let close = if turn_closed { "\n" } else { "<|im_end|>\n" };
    format!(
        "{close}<|im_start|>user\n<tool_response>\n{observation}\n</tool_response><|im_end|>\n<|im_start|>assistant\n"
    )
}

/// A tool call as the model wrote it (arguments as JSON values; the OpenAI wire type with
/// arguments as text is `qforge_engine::chat::ToolCall`).
#[derive(Debug, Clone, PartialEq)]
pub struct ToolInvocation {
    pub name: String,
    pub arguments: Value,
}

/// The first `<tool_call>…</tool_call>` of a turn (only the first counts, as in WebSailor's
/// loop). `None`: the turn has no tool call; `Some(Err)`: it has one that is not JSON with a
/// string `name` (the message says what is wrong, for the tool response).
pub fn first_tool_call(turn: &str) -> Option<std::result::Result<ToolInvocation, String>> {
    let start = turn.find("<tool_call>")? + "<tool_call>".len();
    let body = match turn[start..].find("</tool_call>") {
        Some(end) => &turn[start..start + end],
        None => &turn[start..],
    };
    Some(
        qforge_engine::chat::parse_tool_call_body(body).map(|(name, arguments)| ToolInvocation {
            name,
            arguments: arguments.unwrap_or(Value::Null),
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn only_the_first_tool_call_counts_and_bad_json_is_explained() {
        let turn = r#"<think>look up</think><tool_call>{"name": "lookup", "arguments": {"key": "7"}}</tool_call><tool_call>{"name": "other"}</tool_call>"#;
        assert_eq!(
            first_tool_call(turn).unwrap().unwrap(),
            ToolInvocation {
                name: "lookup".into(),
                arguments: json!({"key": "7"})
            }
        );
        assert!(first_tool_call("<answer>7</answer>").is_none());
        let bad = first_tool_call("<tool_call>{name: lookup}</tool_call>").unwrap();
        assert!(bad.unwrap_err().contains("not valid JSON"));
        let nameless = first_tool_call(r#"<tool_call>{"arguments": {}}</tool_call>"#).unwrap();
        assert!(nameless.unwrap_err().contains("`name`"));
        // A turn cut at the stop string `</tool_call>` still parses.
        let cut = first_tool_call(r#"<tool_call>{"name": "lookup", "arguments": {}}"#).unwrap();
        assert_eq!(cut.unwrap().name, "lookup");
    }

    #[test]
    fn observations_close_the_turn_only_when_the_model_did_not() {
        let open = observation_text("x", false);
        assert!(open.starts_with("<|im_end|>\n<|im_start|>user\n<tool_response>\nx\n"));
        assert!(open.ends_with("<|im_start|>assistant\n"));
        assert!(observation_text("x", true).starts_with("\n<|im_start|>user"));
    }
}

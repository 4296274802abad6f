//! WebSailor's RL stage on the RL core (WebSailor, arXiv 2507.02592): GRPO with DUPO's
//! duplicate-filling (`qforge_rl::grpo`, `GroupFilter::Dupo`) over multi-turn rollouts whose
//! tool turns run the agent's own tools. [`WebSailorEnv`] is the `ToolEnv` (observations come back
//! as `<tool_response>` user turns, masked out of the loss by the RL core); [`WebSailorReward`] is
//! Eq. 5, R = 0.1·R_format + 0.9·R_answer, with R_answer from the evaluation judge. A rollout
//! counts as correct (for DUPO's filter, Eq. 3) on its answer alone: set `correct_threshold` to
//! [`CORRECT_THRESHOLD`], so the format term can never make an all-wrong group look informative.

use std::sync::Arc;

use qforge_rl::reward::{RewardFn, Task};
use qforge_rl::tools::{ToolEnv, first_tool_call};

use super::agent::{AgentConfig, Tool, call_tool, opening_messages};
use super::eval::Judge;

/// Rewards at or above this have a right answer (0.9 of the 1.0 a perfect rollout gets).
pub const CORRECT_THRESHOLD: f64 = 0.9;

/// A training task: the agent's opening prompt (system prompt, tools, question) and the gold
/// answer.
pub fn task(question: &str, answer: &str, tools: &[Arc<dyn Tool>], config: &AgentConfig) -> Task {
    Task {
        messages: opening_messages(question, tools, config),
        answers: vec![answer.to_string()],
    }
}

/// The agent's tools as an RL environment.
pub struct WebSailorEnv {
    tools: Vec<Arc<dyn Tool>>,
    runtime: tokio::runtime::Runtime,
}

impl WebSailorEnv {
    pub fn new(tools: Vec<Arc<dyn Tool>>) -> std::io::Result<Self> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        Ok(Self { tools, runtime })
    }
}

impl ToolEnv for WebSailorEnv {
    /// A turn ends at its tool call (the released loop stops at the `<tool_response>` the model
    /// would write next; stopping at the call's end gives the same turn and saves the tokens).
    fn stop_strings(&self) -> Vec<String> {
        vec!["</tool_call>".into()]
    }

    /// The tool's answer to the latest turn's call; `None` (the episode is over) after an
    /// `<answer>`, or after a turn with neither call nor answer.
    fn observe(&self, _task: &Task, turns: &[String]) -> Option<String> {
        let turn = turns.last()?;
        if turn.contains("<answer>") {
            return None;
        }
        let parsed = first_tool_call(turn)?;
        Some(self.runtime.block_on(call_tool(&self.tools, parsed)))
    }
}

/// R_format: the final turn thinks, then answers (`<think>…</think>` before `<answer>…</answer>`).
pub fn format_ok(turn: &str) -> bool {
    let (Some(think_end), Some(open), Some(close)) = (
        turn.find("</think>"),
        turn.find("<answer>"),
        turn.find("</answer>"),
    ) else {
        return false;
    };
    turn.trim_start().starts_with("<think>") && think_end < open && open < close
}

/// The text inside the final turn's `<answer>` tags.
pub fn answer_of(turn: &str) -> Option<&str> {
    let start = turn.find("<answer>")? + "<answer>".len();
    let end = turn[start..].find("</answer>")? + start;
    Some(turn[start..end].trim())
}

/// Eq. 5 on the episode's last turn; R_answer asks `judge` about the answer against the task's
/// gold answers (any of them).
pub struct WebSailorReward {
    judge: Judge,
    runtime: tokio::runtime::Runtime,
    failures: std::sync::atomic::AtomicUsize,
}

impl WebSailorReward {
    pub fn new(judge: Judge) -> std::io::Result<Self> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        Ok(Self {
            judge,
            runtime,
            failures: Default::default(),
        })
    }
}

impl RewardFn for WebSailorReward {
    fn score(&self, task: &Task, response: &str) -> f64 {
        let format = if format_ok(response) { 1.0 } else { 0.0 };
        let question = task
            .messages
            .last()
            .and_then(|m| m["content"].as_str())
            .and_then(|c| c.rsplit("User: ").next())
            .unwrap_or("");
        let answer = answer_of(response);
        let mut right = false;
        for gold in &task.answers {
            match self
                .runtime
                .block_on(self.judge.judge(question, gold, answer))
            {
                Some(true) => {
                    right = true;
                    break;
                }
                Some(false) => {}
                None => {
                    self.failures
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
        }
        0.1 * format + 0.9 * if right { 1.0 } else { 0.0 }
    }

    fn failures(&self) -> usize {
        self.failures.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// Tasks from question rows (`{"question", "answer"}`), for `GrpoTrainer::new`.
pub fn tasks(
    questions: &[super::runner::Question],
    tools: &[Arc<dyn Tool>],
    config: &AgentConfig,
) -> Vec<Task> {
    questions
        .iter()
        .filter_map(|q| Some(task(&q.question, q.answer.as_deref()?, tools, config)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_format_term_needs_a_thought_before_the_answer() {
        assert!(format_ok("<think>Kyoto.</think>\n<answer>Kyoto</answer>"));
        assert!(!format_ok("<answer>Kyoto</answer>"));
        assert!(!format_ok("<answer>Kyoto</answer><think>late</think>"));
        assert!(!format_ok("<think>x</think> no answer"));
        assert_eq!(
            answer_of("<think>x</think><answer> Kyoto </answer>"),
            Some("Kyoto")
        );
        assert_eq!(answer_of("<answer>open"), None);
    }
}

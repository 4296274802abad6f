//! MUSEG (arXiv 2505.20715; released at `THUNLP-MT/MUSEG`, commit 889565e): timestamp-aware
//! multi-segment grounding RL for video LLMs (Qwen2.5-VL), trained with GRPO in two phases.
//!
//! - [`reward`]: the format reward (with and without the timestamp check) and segment matching
//!   (global F1 + local ordered GIoU) exactly as `src/train.py` computes them.
//! - [`python_text`]: the Python `float()`, `str.split()` and `str(float)` behaviours the
//!   rewards depend on.
//! - [`eval`]: `src/eval_grounding.py`'s extraction and metrics (mIoU, R@IoU, multi-segment F1).
//! - [`data`]: the training (`stage_{1,2}.jsonl`) and evaluation (`charades_sta.json`,
//!   `thumos14.json`) files.
//! - [`video`]: qwen-vl-utils' frame sampling and pixel budget; frame directories as videos.
//! - [`colour_time`]: ColourTime, a synthetic video grounding task with known segments.
//! - [`trainer`]: the phased recipe on the GRPO trainer with video rollouts.
//!
//! The released run (`scripts/train_stage_{1,2}.sh`): G = 8 at temperature 0.9 (trl's
//! default), lr 1.5e-6, β = 0.04 with the k3 KL to the starting checkpoint, one update per
//! rollout batch (no ratio clipping), advantages `(r − mean) / (std + 1e-4)` with torch's
//! unbiased std, loss averaged per sequence over its completion tokens then over the batch,
//! 14 prompts a step; phase 1 rewards `format` + `segment_matching` with the cite-timestamps
//! prompt on `stage_1.jsonl` (400 steps), phase 2 `format_n_timestamp` + `segment_matching`
//! with the plain prompt on `stage_2.jsonl` (500 steps) from the phase-1 policy.

pub mod colour_time;
pub mod data;
pub mod eval;
pub mod python_text;
pub mod reward;
pub mod trainer;
pub mod video;

use serde::{Deserialize, Serialize};

use crate::reward::{RewardFn, Task};
pub use reward::{RewardColumn, Segment};

/// The question templates of `src/train.py` (`QUESTION_TEMPLATES`); `{}` is the dataset's
/// question.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QuestionTemplate {
    /// Phase 1 and evaluation: the reasoning must cite timestamps.
    FrameSelectionThinking,
    /// Phase 2: the same without the timestamp sentence.
    FrameSelectionThinkingNTimestamp,
}

const TIMESTAMP_SENTENCE: &str = "The reasoning process must REFER TO SPECIFIC TIMESTAMPS TO TELL WHERE YOU GET THE INFORMATION FROM THE VIDEO. ";
const OUTPUT_INSTRUCTIONS: &str = "Then summarize your reasoning process above and output selected segments like \"<answer>X.XX-X.XX</answer>\", where \"X\" denotes arabic numbers. If there are multiple segments, separate them with spaces like \"<answer>X.XX-X.XX X.XX-X.XX</answer>\". Your output format should be like \"<think>...</think><answer>...</answer>\".";

impl QuestionTemplate {
    /// The user text for `question`.
    pub fn render(self, question: &str) -> String {
        let ts = match self {
            Self::FrameSelectionThinking => TIMESTAMP_SENTENCE,
            Self::FrameSelectionThinkingNTimestamp => "",
        };
        format!(
            "{question} First, output reasoning process in <think> </think> tags. {ts}{OUTPUT_INSTRUCTIONS}"
        )
    }
}

/// A task's segments as its `answers`: one `start-end` string per segment (Rust's float
/// formatting round-trips exactly).
pub fn segments_as_answers(segments: &[Segment]) -> Vec<String> {
    segments.iter().map(|[s, e]| format!("{s}-{e}")).collect()
}

/// The segments stored by [`segments_as_answers`].
pub fn answers_as_segments(answers: &[String]) -> Vec<Segment> {
    answers
        .iter()
        .filter_map(|a| {
            let (s, e) = a.split_once('-')?;
            Some([s.parse().ok()?, e.parse().ok()?])
        })
        .collect()
}

/// The GRPO reward: the sum of the phase's reward columns, unweighted (trl sums its reward
/// functions), read against the task's segments.
#[derive(Debug, Clone, PartialEq)]
pub struct MusegReward {
    pub columns: Vec<RewardColumn>,
}

impl RewardFn for MusegReward {
    fn score(&self, task: &Task, response: &str) -> f64 {
        let solution = answers_as_segments(&task.answers);
        self.columns
            .iter()
            .map(|c| c.score(response, &solution))
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_are_the_released_wording() {
        let q = QuestionTemplate::FrameSelectionThinking.render("Q?");
        assert!(q.starts_with("Q? First, output reasoning process in <think> </think> tags. The reasoning process must REFER"));
        assert!(q.ends_with(
            "Your output format should be like \"<think>...</think><answer>...</answer>\"."
        ));
        let plain = QuestionTemplate::FrameSelectionThinkingNTimestamp.render("Q?");
        assert_eq!(plain, q.replace(TIMESTAMP_SENTENCE, ""));
    }

    #[test]
    fn segments_round_trip_through_answers() {
        let s = vec![[0.1, 2.5], [12.0, 30.4]];
        assert_eq!(answers_as_segments(&segments_as_answers(&s)), s);
    }
}

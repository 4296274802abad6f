//! MUSEG's rewards exactly as `src/train.py` computes them (THUNLP-MT/MUSEG@889565e): the
//! format reward with its timestamp check, and segment matching = global (F1 of the merged
//! prediction's overlap) + local (mean (1 + GIoU) / 2 of predictions paired in output order).
//! Every quirk is kept, because the scores are the training signal: a failed parse scores 0.2,
//! a timestamp is looked up as a regex of Python's `str(float)`, a dummy pair scores ~1e-9.

use std::sync::LazyLock;

use regex::Regex;
use serde::{Deserialize, Serialize};

use super::python_text::{py_float, py_float_repr, py_split, py_strip};

/// A time segment in seconds, `[start, end]`.
pub type Segment = [f64; 2];

/// `^\s*<think>(.*?)</think>\s*<answer>(.*?)</answer>\s*$` with DOTALL; Python's `\s` also
/// matches `\x1c`–`\x1f`.
static FORMAT: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?s)\A[\s\x1c-\x1f]*<think>(.*?)</think>[\s\x1c-\x1f]*<answer>(.*?)</answer>[\s\x1c-\x1f]*\z")
        .expect("a valid pattern")
});

/// The reward columns MUSEG's scripts name (`--reward_funcs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RewardColumn {
    /// `format`: the format reward with the timestamp check (phase 1).
    Format,
    /// `format_n_timestamp` ("n" = no): the format reward without it (phase 2).
    FormatNTimestamp,
    /// `segment_matching`: global + local, in [0, 2].
    SegmentMatching,
}

impl RewardColumn {
    pub fn score(self, completion: &str, solution: &[Segment]) -> f64 {
        match self {
            Self::Format => format_reward(completion, true),
            Self::FormatNTimestamp => format_reward(completion, false),
            Self::SegmentMatching => segment_matching(completion, solution),
        }
    }
}

/// `_reward_format`: 0 unless each tag occurs once and the whole text is think-then-answer;
/// then 0.2 if an answer item does not parse as `float-float`; then (timestamp check on) 0.6
/// if some answer value's `str()` matches the think text fewer than 1 or more than 10 times;
/// else 1.
pub fn format_reward(completion: &str, include_timestamp_reward: bool) -> f64 {
    if ["<think>", "</think>", "<answer>", "</answer>"]
        .iter()
        .any(|tag| completion.matches(tag).count() != 1)
    {
        return 0.0;
    }
    let Some(caps) = FORMAT.captures(completion) else {
        return 0.0;
    };
    let (thinking, answer) = (&caps[1], &caps[2]);
    let mut timestamps = Vec::new();
    for item in py_split(py_strip(answer)) {
        let mut parts = item.split('-');
        match (
            parts.next().and_then(py_float),
            parts.next().and_then(py_float),
        ) {
            (Some(a), Some(b)) => timestamps.extend([a, b]),
            _ => return 0.2,
        }
    }
    if include_timestamp_reward {
        for t in timestamps {
            // `re.findall(str(t), thinking, re.DOTALL)`: the repr is a pattern ('.' is any
            // character, '+' of "1e+16" a quantifier).
            let count = Regex::new(&format!("(?s){}", py_float_repr(t)))
                .map_or(0, |re| re.find_iter(thinking).count());
            if !(1..=10).contains(&count) {
                return 0.6;
            }
        }
    }
    1.0
}

/// The text between the single `<answer>` and `</answer>` (the first pair when each occurs
/// once), or `None` when either tag is missing or repeated.
pub fn single_answer(completion: &str) -> Option<&str> {
    if completion.matches("<answer>").count() != 1 || completion.matches("</answer>").count() != 1 {
        return None;
    }
    let start = completion.find("<answer>")? + "<answer>".len();
    let end = completion[start..].find("</answer>")?;
    Some(&completion[start..start + end])
}

/// The segments of an answer as the matching rewards parse them: every item `float-float`
/// with both values non-negative and start < end, else `None` (both rewards 0). NaN fails the
/// comparisons as in Python.
pub fn parse_segments(completion: &str) -> Option<Vec<Segment>> {
    let answer = single_answer(completion)?;
    let mut segments = Vec::new();
    for item in py_split(py_strip(answer)) {
        let mut parts = item.split('-');
        let start = py_float(parts.next()?)?;
        let end = py_float(parts.next()?)?;
        if !(start >= 0.0 && end >= 0.0 && start < end) {
            return None;
        }
        segments.push([start, end]);
    }
    Some(segments)
}

/// Sorted by start, overlapping or touching segments merged (`prev.end >= next.start`).
pub fn merge_segments(mut segments: Vec<Segment>) -> Vec<Segment> {
    // Python's sort is stable; so is this one.
    segments.sort_by(|a, b| a[0].total_cmp(&b[0]));
    let mut merged: Vec<Segment> = Vec::with_capacity(segments.len());
    for s in segments {
        match merged.last_mut() {
            Some(prev) if prev[1] >= s[0] => {
                prev[0] = prev[0].min(s[0]);
                prev[1] = prev[1].max(s[1]);
            }
            _ => merged.push(s),
        }
    }
    merged
}

/// The global reward r_G: F1 of the overlap between all ground-truth segments and the merged
/// predictions (`2PR / (P + R + 1e-6)`, P and R over lengths + 1e-6).
pub fn global_matching(completion: &str, solution: &[Segment]) -> f64 {
    let Some(predicted) = parse_segments(completion) else {
        return 0.0;
    };
    let predicted = merge_segments(predicted);
    let length = |s: &[Segment]| s.iter().map(|x| x[1] - x[0]).sum::<f64>();
    let mut overlap = 0.0;
    for gt in solution {
        for p in &predicted {
            overlap += (p[1].min(gt[1]) - p[0].max(gt[0])).max(0.0);
        }
    }
    let precision = overlap / (length(&predicted) + 1e-6);
    let recall = overlap / (length(solution) + 1e-6);
    2.0 * precision * recall / (precision + recall + 1e-6)
}

/// The dummy segment the shorter list is padded with.
const DUMMY: Segment = [1e9, 1e9 + 1.0];

/// The local reward r_L: predictions in output order paired with the ground truth in
/// annotation order (the shorter padded with a far-away dummy), mean of (1 + GIoU) / 2.
pub fn local_matching(completion: &str, solution: &[Segment]) -> f64 {
    let Some(mut predicted) = parse_segments(completion) else {
        return 0.0;
    };
    let mut gts = solution.to_vec();
    let n = gts.len().max(predicted.len());
    gts.resize(n, DUMMY);
    predicted.resize(n, DUMMY);
    if n == 0 {
        // Python divides 0 by 0 here and the except branch scores 0.
        return 0.0;
    }
    let scores: f64 = gts
        .iter()
        .zip(&predicted)
        .map(|(g, p)| {
            let intersection = (g[1].min(p[1]) - g[0].max(p[0])).max(0.0);
            let union = g[1] - g[0] + p[1] - p[0] - intersection;
            let enclosure = g[1].max(p[1]) - g[0].min(p[0]);
            (1.0 + intersection / union - (enclosure - union) / enclosure) / 2.0
        })
        .sum();
    scores / n as f64
}

/// `segment_matching` = r_G + r_L.
pub fn segment_matching(completion: &str, solution: &[Segment]) -> f64 {
    global_matching(completion, solution) + local_matching(completion, solution)
}

/// Intersection over union of two segments (0 for an empty union).
pub fn iou(a: Segment, b: Segment) -> f64 {
    let inter = (a[1].min(b[1]) - a[0].max(b[0])).max(0.0);
    let union = (a[1] - a[0]) + (b[1] - b[0]) - inter;
    if union > 0.0 { inter / union } else { 0.0 }
}

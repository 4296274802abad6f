//! MUSEG's data files: the RL training sets (`data/train/stage_{1,2}.jsonl`: `idx`, `problem`,
//! `solution` as `[[start, end], ...]` seconds, `video`, `task` (`tvg`/`tal`), optional
//! `duration`) and the grounding evaluation sets (`data/eval/grounding/*.json`: an array of
//! `video`, `question`, `groundtruth`). A bad row is an error naming the file and line/index.

use std::path::Path;

use qforge_util::{RowError, WithPath};
use serde_json::Value;

use super::reward::Segment;
use crate::error::{Result, RlError};

/// One RL prompt.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainRecord {
    pub idx: u64,
    pub problem: String,
    pub solution: Vec<Segment>,
    /// The video, relative to the video root.
    pub video: String,
    pub task: String,
    pub duration: Option<f64>,
}

/// One evaluation query.
#[derive(Debug, Clone, PartialEq)]
pub struct EvalRecord {
    pub video: String,
    pub question: String,
    pub groundtruth: Vec<Segment>,
}

/// `[[s, e], ...]` with finite numbers, else the reason.
fn segments(value: &Value, field: &str) -> std::result::Result<Vec<Segment>, String> {
    let items = value
        .as_array()
        .filter(|a| !a.is_empty())
        .ok_or_else(|| format!("`{field}` must be a non-empty list of [start, end] pairs"))?;
    items
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let pair = s.as_array().filter(|p| p.len() == 2);
            let nums = pair.and_then(|p| Some([p[0].as_f64()?, p[1].as_f64()?]));
            nums.filter(|n| n.iter().all(|x| x.is_finite()))
                .ok_or_else(|| format!("`{field}`[{i}] is not a [start, end] pair of numbers: {s}"))
        })
        .collect()
}

/// Reads a training JSONL file (`stage_1.jsonl`, `stage_2.jsonl`, or a ColourTime export).
pub fn load_train(path: &Path) -> Result<Vec<TrainRecord>> {
    let rows = qforge_util::read_jsonl(path).map_err(|e| RlError::file(path, e))?;
    let mut out = Vec::with_capacity(rows.len());
    for (line, row) in rows {
        let bad = |m: String| RlError::from(RowError::new(path, line, m));
        let text = |field: &str| {
            row[field]
                .as_str()
                .filter(|s| !s.trim().is_empty())
                .map(str::to_string)
                .ok_or_else(|| bad(format!("no `{field}` text")))
        };
        out.push(TrainRecord {
            idx: row["idx"].as_u64().unwrap_or((line - 1) as u64),
            problem: text("problem")?,
            solution: segments(&row["solution"], "solution").map_err(bad)?,
            video: text("video")?,
            task: row["task"].as_str().unwrap_or("tvg").to_string(),
            duration: row["duration"].as_f64(),
        });
    }
    if out.is_empty() {
        return Err(RlError::file(path, "no training rows"));
    }
    Ok(out)
}

/// Reads a grounding evaluation file (a JSON array, `charades_sta.json`, `thumos14.json`).
pub fn load_eval(path: &Path) -> Result<Vec<EvalRecord>> {
    let text = std::fs::read_to_string(path).with_path(path)?;
    let value: Value = serde_json::from_str(&text).map_err(|e| RlError::file(path, e))?;
    let items = value
        .as_array()
        .ok_or_else(|| RlError::file(path, "expected a JSON array of queries"))?;
    items
        .iter()
        .enumerate()
        .map(|(i, row)| {
            let bad = |m: String| RlError::file(path, format!("query {i}: {m}"));
            let text = |field: &str| {
                row[field]
                    .as_str()
                    .map(str::to_string)
                    .ok_or_else(|| bad(format!("no `{field}` text")))
            };
            Ok(EvalRecord {
                video: text("video")?,
                question: text("question")?,
                groundtruth: segments(&row["groundtruth"], "groundtruth").map_err(bad)?,
            })
        })
        .collect()
}

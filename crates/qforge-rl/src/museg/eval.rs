//! MUSEG's grounding evaluation as `src/eval_grounding.py` scores it: the answer text (inside
//! the single `<answer>` pair), numbers paired into segments (an odd count or a reversed pair
//! empties the prediction), then for single-segment grounding (`tvg`, Charades-STA) mIoU of the
//! first segments and recall at IoU {0.1, 0.3, 0.5, 0.7}; for multi-segment localisation
//! (`tal`, THUMOS) F1 of the IoU-matched segments per threshold, averaged. IoUs are computed in
//! f32 as the reference's torch tensors are, so threshold hits agree exactly.

use std::sync::LazyLock;

use regex::Regex;
use serde::{Deserialize, Serialize};

use super::python_text::{py_float, py_strip};
use super::reward::Segment;

/// The IoU thresholds of the reference's report.
pub const THRESHOLDS: [f64; 4] = [0.1, 0.3, 0.5, 0.7];

static NUMBER: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"\d+\.*\d*").expect("valid"));

/// Which metrics a set reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EvalKind {
    /// Temporal video grounding (one segment): mIoU and R@IoU.
    Tvg,
    /// Temporal action localisation (several segments): F1 per IoU threshold.
    Tal,
}

impl std::str::FromStr for EvalKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "tvg" => Ok(Self::Tvg),
            "tal" => Ok(Self::Tal),
            other => Err(format!("unknown eval kind `{other}` (tvg or tal)")),
        }
    }
}

/// What the evaluation script stores as a row's output: the text inside the one `<answer>`
/// pair, stripped (greedy up to the last `</answer>`, as `re.search('<answer>(.*)</answer>')`),
/// or "" when either tag is missing or repeated.
pub fn answer_text(generation: &str) -> String {
    if generation.matches("<answer>").count() != 1 || generation.matches("</answer>").count() != 1 {
        return String::new();
    }
    let (Some(open), Some(close)) = (generation.find("<answer>"), generation.rfind("</answer>"))
    else {
        return String::new();
    };
    let start = open + "<answer>".len();
    if close < start {
        return String::new();
    }
    py_strip(&generation[start..close]).to_string()
}

/// The predicted segments of an output: every number (`\d+\.*\d*`) paired in order; an odd
/// count, a number `float()` rejects (`1..5`) or a pair with start >= end gives none.
pub fn predicted_segments(output: &str) -> Vec<Segment> {
    let numbers: Option<Vec<f64>> = NUMBER
        .find_iter(output)
        .map(|m| py_float(m.as_str()))
        .collect();
    let Some(numbers) = numbers.filter(|n| n.len() % 2 == 0) else {
        return Vec::new();
    };
    let segments: Vec<Segment> = numbers.chunks(2).map(|p| [p[0], p[1]]).collect();
    if segments.iter().any(|s| !(s[0] < s[1])) {
        return Vec::new();
    }
    segments
}

/// nncore's `temporal_iou` of two segments in f32 (torch's default dtype).
fn iou_f32(a: Segment, b: Segment) -> f32 {
    let (a0, a1, b0, b1) = (a[0] as f32, a[1] as f32, b[0] as f32, b[1] as f32);
    let overlap = (a1.min(b1) - a0.max(b0)).max(0.0);
    let union = (a1 - a0) + (b1 - b0) - overlap;
    overlap / union
}

/// The report of `eval()`: `tot`, then mIoU and per-threshold hit rates (`tvg`) or
/// per-threshold F1 (`tal`), with their means, keyed as the reference keys them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GroundingStats {
    pub tot: usize,
    pub kind: EvalKind,
    /// `tvg`: mIoU of the first ground-truth and first predicted segment (0 for no prediction).
    pub m_iou: Option<f64>,
    /// Per threshold of [`THRESHOLDS`]: hit rate (`tvg`, R@1 IoU) or mean F1 (`tal`).
    pub per_threshold: Vec<f64>,
    /// The mean over thresholds (`mean_f1_single` / `mean_f1_multi`).
    pub mean: f64,
}

impl GroundingStats {
    /// The stat dictionary in the reference's keys (`m_iou`, `f1_single_0.3`, ...).
    pub fn to_reference_json(&self) -> serde_json::Value {
        let mut map = serde_json::Map::new();
        map.insert("tot".into(), self.tot.into());
        let prefix = match self.kind {
            EvalKind::Tvg => "f1_single",
            EvalKind::Tal => "f1_multi",
        };
        if let Some(m) = self.m_iou {
            map.insert("m_iou".into(), m.into());
        }
        for (thr, v) in THRESHOLDS.iter().zip(&self.per_threshold) {
            map.insert(format!("{prefix}_{thr}"), (*v).into());
        }
        map.insert(format!("mean_{prefix}"), self.mean.into());
        serde_json::Value::Object(map)
    }
}

/// Scores (ground truth, output) rows as `eval(data_raw, eval_type)` does.
pub fn grounding_stats(rows: &[(Vec<Segment>, String)], kind: EvalKind) -> GroundingStats {
    let n = THRESHOLDS.len();
    let (mut m_iou, mut single, mut multi) = (0f64, vec![0f64; n], vec![0f64; n]);
    for (gts, output) in rows {
        let predicted = predicted_segments(output);
        if predicted.is_empty() || gts.is_empty() {
            continue;
        }
        let first = iou_f32(gts[0], predicted[0]);
        m_iou += f64::from(first);
        let matrix: Vec<Vec<f32>> = gts
            .iter()
            .map(|g| predicted.iter().map(|p| iou_f32(*g, *p)).collect())
            .collect();
        let best = matrix
            .iter()
            .flatten()
            .copied()
            .fold(f32::NEG_INFINITY, f32::max);
        for (i, &thr) in THRESHOLDS.iter().enumerate() {
            single[i] += f64::from(u8::from(f64::from(first) >= thr));
            // Tensor-to-scalar comparisons run in the tensor's f32, `.item()` ones in f64.
            let thr32 = thr as f32;
            if best < thr32 {
                continue;
            }
            let hit = |x: f32| x >= thr32;
            let recall = matrix
                .iter()
                .filter(|row| hit(row.iter().copied().fold(f32::NEG_INFINITY, f32::max)))
                .count() as f32
                / gts.len() as f32;
            let precision = (0..predicted.len())
                .filter(|&j| {
                    hit(matrix
                        .iter()
                        .map(|row| row[j])
                        .fold(f32::NEG_INFINITY, f32::max))
                })
                .count() as f32
                / predicted.len() as f32;
            if precision > 0.0 && recall > 0.0 {
                let (p, r) = (f64::from(precision), f64::from(recall));
                multi[i] += 2.0 * p * r / (p + r);
            }
        }
    }
    let tot = rows.len();
    let denom = tot.max(1) as f64;
    let (m_iou, sums) = match kind {
        EvalKind::Tvg => (Some(m_iou / denom), single),
        EvalKind::Tal => (None, multi),
    };
    let per_threshold: Vec<f64> = sums.iter().map(|s| s / denom).collect();
    let mean = sums.iter().sum::<f64>() / denom / n as f64;
    GroundingStats {
        tot,
        kind,
        m_iou,
        per_threshold,
        mean,
    }
}

/// One scored query of a run (a line of `samples.jsonl`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalSample {
    pub index: usize,
    pub video: String,
    pub groundtruth: Vec<Segment>,
    /// The model's whole generation (absent when predictions came already extracted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<String>,
    /// The answer text the metrics read (the script's `result.output`).
    pub output: String,
}

/// A prediction for one query: a whole generation (its answer is extracted) or the answer text
/// itself (as the official script stores it).
#[derive(Debug, Clone, PartialEq)]
pub enum Prediction {
    Generation(String),
    Output(String),
}

/// Reads predictions: JSONL rows with `generation` or `output`, or the official script's output
/// file (the query array with `result.output` on each, its stat dictionary last).
pub fn load_predictions(path: &std::path::Path) -> crate::Result<Vec<Prediction>> {
    use crate::error::RlError;
    let text = std::fs::read_to_string(path).map_err(|e| RlError::file(path, e))?;
    let pick = |row: &serde_json::Value, at: String| -> crate::Result<Prediction> {
        if let Some(g) = row.get("generation").and_then(|v| v.as_str()) {
            return Ok(Prediction::Generation(g.to_string()));
        }
        let output = row
            .get("output")
            .or_else(|| row.get("result").and_then(|r| r.get("output")))
            .and_then(|v| v.as_str());
        output
            .map(|o| Prediction::Output(o.to_string()))
            .ok_or_else(|| RlError::file(path, format!("{at}: no `generation` or `output` text")))
    };
    if text.trim_start().starts_with('[') {
        let rows: Vec<serde_json::Value> =
            serde_json::from_str(&text).map_err(|e| RlError::file(path, e))?;
        rows.iter()
            .enumerate()
            // The official file ends with the stat dictionary, which has no `video`.
            .filter(|(_, r)| r.get("video").is_some() || r.get("generation").is_some())
            .map(|(i, r)| pick(r, format!("entry {i}")))
            .collect()
    } else {
        qforge_util::read_jsonl(path)
            .map_err(|e| RlError::file(path, e))?
            .iter()
            .map(|(line, r)| pick(r, format!("line {line}")))
            .collect()
    }
}

/// The report of `qforge eval museg`.
#[derive(Debug, Clone, Serialize)]
pub struct GroundingReport {
    pub data: String,
    pub stats: GroundingStats,
    /// The stat dictionary in the official script's keys.
    pub reference: serde_json::Value,
    /// Queries whose output gave no segments.
    pub unanswered: usize,
}

/// Scores `records` with predictions from `predict` (called with batches of `(index, record)`),
/// appending each scored query to `samples` (JSONL); a rerun resumes after the last line
/// written.
pub fn evaluate(
    records: &[super::data::EvalRecord],
    kind: EvalKind,
    data_name: &str,
    samples: &std::path::Path,
    batch: usize,
    mut predict: impl FnMut(&[(usize, &super::data::EvalRecord)]) -> crate::Result<Vec<Prediction>>,
    mut on_progress: impl FnMut(usize),
) -> crate::Result<GroundingReport> {
    use crate::error::RlError;
    use std::io::Write;
    let mut done: Vec<EvalSample> = if samples.is_file() {
        qforge_util::read_jsonl(samples)
            .map_err(|e| RlError::file(samples, e))?
            .into_iter()
            .map(|(line, v)| {
                serde_json::from_value(v)
                    .map_err(|e| RlError::file(samples, format!("line {line}: {e}")))
            })
            .collect::<crate::Result<_>>()?
    } else {
        Vec::new()
    };
    if done.len() > records.len() {
        return Err(RlError::file(
            samples,
            format!(
                "{} samples for {} queries: another run's file",
                done.len(),
                records.len()
            ),
        ));
    }
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(samples)
        .map_err(|e| RlError::file(samples, e))?;
    on_progress(done.len());
    let todo: Vec<(usize, &super::data::EvalRecord)> =
        records.iter().enumerate().skip(done.len()).collect();
    for chunk in todo.chunks(batch.max(1)) {
        let predictions = predict(chunk)?;
        if predictions.len() != chunk.len() {
            return Err(RlError::Invalid(format!(
                "{} predictions for {} queries",
                predictions.len(),
                chunk.len()
            )));
        }
        for ((index, record), p) in chunk.iter().zip(predictions) {
            let (generation, output) = match p {
                Prediction::Generation(g) => {
                    let o = answer_text(&g);
                    (Some(g), o)
                }
                Prediction::Output(o) => (None, o),
            };
            let sample = EvalSample {
                index: *index,
                video: record.video.clone(),
                groundtruth: record.groundtruth.clone(),
                generation,
                output,
            };
            // One line per query, flushed: a killed run loses at most the batch in flight.
            writeln!(
                file,
                "{}",
                serde_json::to_string(&sample).expect("serialisable")
            )
            .and_then(|_| file.flush())
            .map_err(|e| RlError::file(samples, e))?;
            done.push(sample);
        }
        on_progress(done.len());
    }
    let rows: Vec<(Vec<Segment>, String)> = done
        .iter()
        .map(|s| (s.groundtruth.clone(), s.output.clone()))
        .collect();
    let stats = grounding_stats(&rows, kind);
    let unanswered = rows
        .iter()
        .filter(|(_, o)| predicted_segments(o).is_empty())
        .count();
    Ok(GroundingReport {
        data: data_name.to_string(),
        reference: stats.to_reference_json(),
        stats,
        unanswered,
    })
}

/// `tvg` when every query has one segment (Charades-STA), else `tal` (THUMOS), as the
/// official scripts pair them.
pub fn infer_kind(records: &[super::data::EvalRecord]) -> EvalKind {
    if records.iter().all(|r| r.groundtruth.len() == 1) {
        EvalKind::Tvg
    } else {
        EvalKind::Tal
    }
}

//! Writing evaluation (`qforge eval writing`) on LongBench-Write and WritingBench files: the
//! policy writes one response per prompt, LongBench-Write's length score S_l is computed where
//! the row gives the required length, and a pairwise judge compares each response with a
//! baseline model's (win / tie / loss, both orders by default).
//!
//! Length is counted as LongWriter's `pred.py` counts it (CJK characters plus
//! whole ASCII-letter words), and S_l is `eval_length.py`'s score; an empty response, where
//! the Python divides by zero, scores 0.

use std::path::Path;

use qforge_util::RowError;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Result, RlError};

/// LongWriter's `count_words`: CJK ideographs (U+4E00–U+9FFF) plus `\b[a-zA-Z]+\b` matches,
/// i.e. maximal runs of word characters that are all ASCII letters.
pub fn count_words(text: &str) -> usize {
    let is_word = |c: char| c.is_alphanumeric() || c == '_';
    let cjk = text
        .chars()
        .filter(|c| ('\u{4e00}'..='\u{9fff}').contains(c))
        .count();
    let mut english = 0;
    let mut run_all_ascii = true;
    let mut in_run = false;
    for c in text.chars().chain(std::iter::once(' ')) {
        if is_word(c) {
            if !in_run {
                in_run = true;
                run_all_ascii = true;
            }
            run_all_ascii &= c.is_ascii_alphabetic();
        } else if in_run {
            in_run = false;
            english += usize::from(run_all_ascii);
        }
    }
    cjk + english
}

/// LongBench-Write's length score S_l (0–100) of an output of `produced` units for a
/// required `required`.
pub fn length_score(required: usize, produced: usize) -> f64 {
    let (x, y) = (required as f64, produced as f64);
    if y == 0.0 || x == 0.0 {
        return 0.0;
    }
    if y > x {
        100.0 * (1.0 - (y / x - 1.0) / 3.0).max(0.0)
    } else {
        100.0 * (1.0 - (x / y - 1.0) / 2.0).max(0.0)
    }
}

/// One evaluation prompt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WritingItem {
    pub id: String,
    pub prompt: String,
    /// The genre (LongBench-Write `type`) or domain (WritingBench `domain1`).
    pub kind: String,
    /// The required length (LongBench-Write `length`).
    pub required_length: Option<usize>,
    /// Judging dimensions (WritingBench's checklist), for the criteria judge template.
    pub criteria: Option<String>,
}

/// Reads LongBench-Write rows (`prompt`, `type`, `length`) or WritingBench rows (`index`,
/// `domain1`, `query`, `checklist`); a row that is neither is an error naming its line.
pub fn load_items(path: &Path) -> Result<Vec<WritingItem>> {
    let rows = qforge_util::read_jsonl(path).map_err(|e| RlError::file(path, e))?;
    let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("row");
    rows.into_iter()
        .map(|(line, row)| {
            let bad = |m: &str| RowError::new(path, line, m);
            if let Some(prompt) = row["prompt"].as_str() {
                return Ok(WritingItem {
                    id: format!("{stem}-{line}"),
                    prompt: prompt.to_string(),
                    kind: row["type"].as_str().unwrap_or_default().to_string(),
                    required_length: Some(
                        row["length"]
                            .as_u64()
                            .filter(|&n| n > 0)
                            .ok_or_else(|| bad("`length` must be a positive integer"))?
                            as usize,
                    ),
                    criteria: None,
                });
            }
            if let Some(query) = row["query"].as_str() {
                let criteria = row["checklist"].as_array().map(|list| {
                    list.iter()
                        .map(|c| {
                            format!(
                                "{}: {}",
                                c["name"].as_str().unwrap_or_default(),
                                c["criteria_description"].as_str().unwrap_or_default()
                            )
                        })
                        .collect::<Vec<_>>()
                        .join("\n")
                });
                let id = match &row["index"] {
                    Value::Null => format!("{stem}-{line}"),
                    v => format!("{stem}-{v}"),
                };
                return Ok(WritingItem {
                    id,
                    prompt: query.to_string(),
                    kind: row["domain1"].as_str().unwrap_or_default().to_string(),
                    required_length: None,
                    criteria: criteria.filter(|c| !c.is_empty()),
                });
            }
            Err(bad("neither a LongBench-Write row (`prompt`, `length`) nor a WritingBench row (`query`)").into())
        })
        .collect()
}

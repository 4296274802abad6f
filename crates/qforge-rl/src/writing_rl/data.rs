//! Writing prompts with their reference ladders, and margin-aware selection.
//!
//! A prompt file is JSONL, one object per prompt: `id` (string or integer), `prompt`,
//! `references` (a list ordered from weakest to strongest; the release's `target`, whose
//! string form, one reference, is accepted too) and optional `criteria` text.

use std::path::Path;

use qforge_util::RowError;
use serde::Serialize;
use serde_json::Value;

use crate::error::{Result, RlError};

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WritingPrompt {
    pub id: String,
    pub prompt: String,
    /// Weakest first.
    pub references: Vec<String>,
    pub criteria: Option<String>,
}

impl WritingPrompt {
    /// The strongest reference, which margin selection judges against.
    pub fn best_reference(&self) -> &str {
        self.references
            .last()
            .expect("loaded prompts have references")
    }
}

/// Reads a prompt file; a row without an id, a prompt or any reference is an error naming it.
pub fn load_prompts(path: &Path) -> Result<Vec<WritingPrompt>> {
    let rows = qforge_util::read_jsonl(path).map_err(|e| RlError::file(path, e))?;
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::with_capacity(rows.len());
    for (line, row) in rows {
        let bad = |m: String| RowError::new(path, line, m);
        let id = match &row["id"] {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            _ => return Err(bad("no `id` (string or integer)".into()).into()),
        };
        let prompt = row["prompt"]
            .as_str()
            .filter(|p| !p.trim().is_empty())
            .ok_or_else(|| bad(format!("prompt `{id}`: no `prompt` text")))?
            .to_string();
        let refs = match (&row["references"], &row["target"]) {
            (Value::Array(a), _) | (Value::Null, Value::Array(a)) => a
                .iter()
                .map(|r| r.as_str().map(str::to_string))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| bad(format!("prompt `{id}`: a reference is not a string")))?,
            (Value::String(s), _) | (Value::Null, Value::String(s)) => vec![s.clone()],
            _ => Vec::new(),
        };
        if refs.is_empty() || refs.iter().any(|r| r.trim().is_empty()) {
            return Err(bad(format!(
                "prompt `{id}`: references missing or empty (`references`: weakest to strongest)"
            ))
            .into());
        }
        if !seen.insert(id.clone()) {
            return Err(bad(format!("prompt id `{id}` appears twice")).into());
        }
        let criteria = row["criteria"]
            .as_str()
            .filter(|c| !c.trim().is_empty())
            .map(str::to_string);
        out.push(WritingPrompt {
            id,
            prompt,
            references: refs,
            criteria,
        });
    }
    Ok(out)
}

/// A prompt's learning margin: the tie value minus the policy's mean score against the best
/// reference, so a prompt the policy ties or beats on average has margin ≤ 0.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct MarginScore {
    pub id: String,
    pub margin: f64,
    /// The policy samples' scores against the best reference.
    pub scores: Vec<f64>,
}

pub fn margin(scores: &[f64], tie: f64) -> f64 {
    tie - scores.iter().sum::<f64>() / scores.len().max(1) as f64
}

/// Margin-aware selection: drops margins ≤ 0, ranks the rest by margin (largest first; equal
/// margins keep file order) and keeps `share` of all candidates (rounded up), at most the
/// positive ones.
pub fn select_by_margin(mut scored: Vec<MarginScore>, share: f64) -> Vec<MarginScore> {
    let quota = (share.clamp(0.0, 1.0) * scored.len() as f64).ceil() as usize;
    scored.retain(|s| s.margin > 0.0);
    scored.sort_by(|a, b| b.margin.total_cmp(&a.margin));
    scored.truncate(quota);
    scored
}

/// Topics for [`length_following_prompts`].
pub const TOPICS: [&str; 24] = [
    "rain", "snow", "wind", "sun", "moon", "stars", "river", "ocean", "forest", "desert",
    "mountain", "city", "village", "garden", "bread", "music", "winter", "summer", "spring",
    "autumn", "trains", "ships", "birds", "bees",
];

const LADDER_WORDS: [&str; 16] = [
    "the", "quiet", "light", "falls", "over", "open", "fields", "and", "every", "small", "thing",
    "wakes", "as", "morning", "comes", "home",
];

/// A synthetic length-following task (for the rubric judge): "Write about TOPIC in `target`
/// words." with references of `ladder` distinct words each (weakest first; at most 16).
pub fn length_following_prompts(
    topics: &[&str],
    target: usize,
    ladder: &[usize],
) -> Vec<WritingPrompt> {
    topics
        .iter()
        .enumerate()
        .map(|(i, t)| WritingPrompt {
            id: format!("{t}-{i}"),
            prompt: format!("Write about {t} in {target} words."),
            references: ladder
                .iter()
                .map(|&n| LADDER_WORDS[..n.min(LADDER_WORDS.len())].join(" "))
                .collect(),
            criteria: None,
        })
        .collect()
}

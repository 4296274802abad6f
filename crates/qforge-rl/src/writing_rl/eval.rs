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

/// Generation settings (LongWriter's `pred.py`: temperature 0.5, up to 32768 new tokens).
#[derive(Debug, Clone, PartialEq)]
pub struct WritingEvalSettings {
    pub temperature: f32,
    pub top_p: f32,
    pub max_new_tokens: usize,
    /// Prompts longer than this many tokens keep their first and last halves (0: no cap).
    pub max_input_tokens: usize,
    pub seed: u64,
}

impl Default for WritingEvalSettings {
    fn default() -> Self {
        Self {
            temperature: 0.5,
            top_p: 1.0,
            max_new_tokens: 32768,
            max_input_tokens: 0,
            seed: 42,
        }
    }
}

/// One item's result, as written to the samples file (one line per item, so a rerun resumes).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WritingSample {
    pub id: String,
    pub kind: String,
    pub response: String,
    /// LongWriter's count of the response.
    pub words: usize,
    pub required_length: Option<usize>,
    /// S_l (0–100) where the item names a length.
    pub length_score: Option<f64>,
    pub baseline: Option<String>,
    /// The judge's comparison of the response (as "response") with the baseline's.
    pub judgement: Option<super::judge::Judgement>,
}

/// Means over a set of items.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct WritingSummary {
    pub kind: String,
    pub items: usize,
    /// Mean S_l over the items that name a length (None: none does).
    pub length_score: Option<f64>,
    pub judged: usize,
    pub win_rate: Option<f64>,
    pub tie_rate: Option<f64>,
    pub loss_rate: Option<f64>,
    /// Mean judge score against the baseline (the judge's win/tie/loss values).
    pub judge_score: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct WritingReport {
    pub overall: WritingSummary,
    /// Per genre / domain, in first-seen order.
    pub kinds: Vec<WritingSummary>,
}

pub fn summarize(kind: &str, samples: &[&WritingSample]) -> WritingSummary {
    let lengths: Vec<f64> = samples.iter().filter_map(|s| s.length_score).collect();
    let judged: Vec<&super::judge::Judgement> = samples
        .iter()
        .filter_map(|s| s.judgement.as_ref())
        .collect();
    let share = |o: super::judge::Outcome| {
        (!judged.is_empty())
            .then(|| judged.iter().filter(|j| j.outcome == o).count() as f64 / judged.len() as f64)
    };
    let mean = |xs: &[f64]| (!xs.is_empty()).then(|| xs.iter().sum::<f64>() / xs.len() as f64);
    WritingSummary {
        kind: kind.to_string(),
        items: samples.len(),
        length_score: mean(&lengths),
        judged: judged.len(),
        win_rate: share(super::judge::Outcome::Win),
        tie_rate: share(super::judge::Outcome::Tie),
        loss_rate: share(super::judge::Outcome::Loss),
        judge_score: mean(&judged.iter().map(|j| j.score).collect::<Vec<_>>()),
    }
}

/// Runs the evaluation: for every item not yet in `samples_file`, the model's response (and
/// the baseline's, when given, each prompted through its own chat template), the length score, and the judge's comparison with the
/// baseline (when both are given); appends each item's line; summarises all of them.
#[allow(clippy::too_many_arguments)]
pub fn run(
    items: &[WritingItem],
    tokenizer: &qforge_model::Tokenizer,
    sampler: &crate::sampler::Sampler,
    baseline: Option<&crate::sampler::Sampler>,
    judge: Option<&super::judge::PairwiseJudge>,
    settings: &WritingEvalSettings,
    samples_file: &Path,
    mut on_item: impl FnMut(usize, usize),
) -> Result<WritingReport> {
    let mut done = crate::sampler::SamplesLog::open(samples_file, |s: &WritingSample| &s.id)?;
    let runtime = crate::sampler::client_runtime()?;
    for (n, item) in items.iter().enumerate() {
        if done.get(&item.id).is_some() {
            on_item(n + 1, items.len());
            continue;
        }
        let prompt_ids = |tokenizer: &qforge_model::Tokenizer| -> Result<Vec<u32>> {
            let messages = vec![serde_json::json!({"role": "user", "content": item.prompt})];
            let text = tokenizer
                .apply_chat_template(&messages, &qforge_model::ChatOptions::generation())?;
            let ids = tokenizer.encode(&text, false)?;
            Ok(
                if settings.max_input_tokens > 0 && ids.len() > settings.max_input_tokens {
                    crate::curriculum::middle_truncate(&ids, settings.max_input_tokens)
                } else {
                    ids
                },
            )
        };
        let ids = prompt_ids(tokenizer)?;
        let params = crate::sampler::SampleParams {
            n: 1,
            temperature: settings.temperature,
            top_p: settings.top_p,
            max_new_tokens: settings.max_new_tokens,
            seed: settings.seed ^ ((n as u64) << 16),
        };
        let response =
            super::judge::extract_passage(&sampler.sample(&runtime, &ids, params)?.remove(0));
        let baseline_response = match baseline {
            Some(b) => {
                // The baseline reads the prompt with its own tokenizer (a server: the model's).
                let ids = match b.tokenizer() {
                    Some(t) => prompt_ids(t)?,
                    None => ids.clone(),
                };
                Some(super::judge::extract_passage(
                    &b.sample(&runtime, &ids, params)?.remove(0),
                ))
            }
            None => None,
        };
        let judgement = match (judge, &baseline_response) {
            (Some(judge), Some(base)) => Some(
                judge
                    .judge(&[super::judge::Comparison {
                        prompt: item.prompt.clone(),
                        response: response.clone(),
                        reference: base.clone(),
                        criteria: item.criteria.clone(),
                    }])?
                    .remove(0),
            ),
            _ => None,
        };
        let words = count_words(&response);
        let sample = WritingSample {
            id: item.id.clone(),
            kind: item.kind.clone(),
            length_score: item.required_length.map(|x| length_score(x, words)),
            words,
            required_length: item.required_length,
            response,
            baseline: baseline_response,
            judgement,
        };
        done.append(&item.id, sample)?;
        on_item(n + 1, items.len());
    }
    let ordered: Vec<&WritingSample> = items.iter().filter_map(|i| done.get(&i.id)).collect();
    let mut kinds: Vec<String> = Vec::new();
    for s in &ordered {
        if !kinds.contains(&s.kind) {
            kinds.push(s.kind.clone());
        }
    }
    Ok(WritingReport {
        overall: summarize("overall", &ordered),
        kinds: kinds
            .iter()
            .map(|k| {
                let of_kind: Vec<&WritingSample> =
                    ordered.iter().copied().filter(|s| &s.kind == k).collect();
                summarize(k, &of_kind)
            })
            .collect(),
    })
}

//! Document clusters: the paragraphs one questioner prompt samples from and the responder reads
//! in full. SPELL's released data are rows of `question_id`, `paragraphs`, `data_source`; here a
//! JSONL of `{id, paragraphs[], source?}` (the released names are accepted too), a builder
//! that groups a flat corpus by source or by size, and loaders for the long-context files
//! (L-Eval documents, lost-in-the-middle passages and key-value records, plain text).

use std::path::Path;

use qforge_util::RowError;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{Result, RlError};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DocumentCluster {
    #[serde(alias = "question_id")]
    pub id: String,
    pub paragraphs: Vec<String>,
    /// Where the paragraphs came from (`data_source`), when known.
    #[serde(
        default,
        alias = "data_source",
        skip_serializing_if = "Option::is_none"
    )]
    pub source: Option<String>,
}

impl DocumentCluster {
    /// The cluster as the responder reads it (paragraphs joined by newlines).
    pub fn text(&self) -> String {
        self.paragraphs.join("\n")
    }
}

/// One paragraph of a flat corpus.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Paragraph {
    pub text: String,
    #[serde(default)]
    pub source: Option<String>,
}

/// How a flat corpus becomes clusters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grouping {
    /// One cluster per source (in order of first appearance).
    BySource,
    /// Consecutive runs of this many paragraphs.
    BySize(usize),
}

/// Groups paragraphs into clusters with ids `"{source or 'corpus'}-{k}"`.
pub fn group_paragraphs(paragraphs: &[Paragraph], grouping: Grouping) -> Vec<DocumentCluster> {
    let name = |s: &Option<String>| s.clone().unwrap_or_else(|| "corpus".into());
    match grouping {
        Grouping::BySource => {
            let mut out: Vec<DocumentCluster> = Vec::new();
            for p in paragraphs.iter().filter(|p| !p.text.trim().is_empty()) {
                match out.iter_mut().find(|c| c.source == p.source) {
                    Some(c) => c.paragraphs.push(p.text.clone()),
                    None => out.push(DocumentCluster {
                        id: format!("{}-{}", name(&p.source), out.len()),
                        paragraphs: vec![p.text.clone()],
                        source: p.source.clone(),
                    }),
                }
            }
            out
        }
        Grouping::BySize(n) => paragraphs
            .iter()
            .filter(|p| !p.text.trim().is_empty())
            .collect::<Vec<_>>()
            .chunks(n.max(1))
            .enumerate()
            .map(|(k, chunk)| DocumentCluster {
                id: format!("{}-{k}", name(&chunk[0].source)),
                paragraphs: chunk.iter().map(|p| p.text.clone()).collect(),
                source: chunk[0].source.clone(),
            })
            .collect(),
    }
}

/// Paragraphs of a long text: blank-line separated blocks, else lines.
pub fn split_paragraphs(text: &str) -> Vec<String> {
    let blocks: Vec<String> = text
        .split("\n\n")
        .map(str::trim)
        .filter(|b| !b.is_empty())
        .map(str::to_string)
        .collect();
    if blocks.len() > 1 {
        return blocks;
    }
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

/// Reads clusters from a file: JSONL (gzip allowed) of `{id, paragraphs}` rows, L-Eval rows
/// (`input` split into paragraphs), lost-in-the-middle rows (`ctxs` passages or
/// `ordered_kv_records`), or a `.txt` file (one cluster of its paragraphs). A row without
/// paragraphs is an error naming its line.
pub fn load_clusters(path: &Path) -> Result<Vec<DocumentCluster>> {
    let stem = path
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("cluster")
        .trim_end_matches(".jsonl")
        .to_string();
    if path.extension().and_then(|e| e.to_str()) == Some("txt") {
        let paragraphs = split_paragraphs(&crate::tasks::read_text(path)?);
        if paragraphs.is_empty() {
            return Err(RlError::file(path, "no paragraphs"));
        }
        return Ok(vec![DocumentCluster {
            id: stem.clone(),
            paragraphs,
            source: Some(stem),
        }]);
    }
    let mut out = Vec::new();
    for (line, v) in crate::tasks::json_rows(path)? {
        let bad = |m: &str| RlError::from(RowError::new(path, line, m));
        let id = v
            .get("id")
            .or_else(|| v.get("question_id"))
            .map(|x| x.as_str().map_or_else(|| x.to_string(), str::to_string))
            .unwrap_or_else(|| format!("{stem}-{line}"));
        let source = v
            .get("source")
            .or_else(|| v.get("data_source"))
            .and_then(Value::as_str)
            .map(str::to_string)
            .or_else(|| Some(stem.clone()));
        let paragraphs: Vec<String> = if let Some(ps) = v.get("paragraphs") {
            let ps = ps
                .as_array()
                .ok_or_else(|| bad("`paragraphs` is not a list"))?;
            ps.iter()
                .map(|p| {
                    p.as_str()
                        .map(str::to_string)
                        .ok_or_else(|| bad("a paragraph is not a string"))
                })
                .collect::<Result<_>>()?
        } else if let Some(input) = v.get("input").and_then(Value::as_str) {
            split_paragraphs(input)
        } else if let Some(ctxs) = v.get("ctxs").and_then(Value::as_array) {
            ctxs.iter()
                .map(|c| {
                    format!(
                        "(Title: {}) {}",
                        c["title"].as_str().unwrap_or(""),
                        c["text"].as_str().unwrap_or("")
                    )
                })
                .collect()
        } else if let Some(records) = v.get("ordered_kv_records").and_then(Value::as_array) {
            records.iter().map(crate::tasks::kv_record_line).collect()
        } else {
            return Err(bad(
                "no `paragraphs`, `input`, `ctxs` or `ordered_kv_records`",
            ));
        };
        let paragraphs: Vec<String> = paragraphs
            .into_iter()
            .filter(|p| !p.trim().is_empty())
            .collect();
        if paragraphs.is_empty() {
            return Err(bad("the cluster has no paragraphs"));
        }
        out.push(DocumentCluster {
            id,
            paragraphs,
            source,
        });
    }
    if out.is_empty() {
        return Err(RlError::file(path, "no clusters"));
    }
    Ok(out)
}

/// Token accounting against the prompt cap: (clusters that fit, ids of those over `max_tokens`
/// as the responder would read them), counting with `count_tokens`.
pub fn fit_to_prompt_cap(
    clusters: Vec<DocumentCluster>,
    max_tokens: usize,
    count_tokens: &dyn Fn(&str) -> Result<usize>,
) -> Result<(Vec<DocumentCluster>, Vec<String>)> {
    let mut fit = Vec::new();
    let mut over = Vec::new();
    for c in clusters {
        if max_tokens > 0 && count_tokens(&c.text())? > max_tokens {
            over.push(c.id);
        } else {
            fit.push(c);
        }
    }
    Ok((fit, over))
}

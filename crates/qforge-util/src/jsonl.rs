//! JSON Lines: one JSON value a line, blank lines skipped, a bad line named by its number.

use std::path::{Path, PathBuf};

use crate::fs::{IoError, WithPath, write_atomic};

#[derive(Debug, thiserror::Error)]
pub enum JsonlError {
    #[error(transparent)]
    Io(#[from] IoError),
    #[error("{}:{line}: invalid JSON: {source}", path.display())]
    Line {
        path: PathBuf,
        line: usize,
        #[source]
        source: serde_json::Error,
    },
}

/// A row of a data file is unusable: names the file and the 1-based line. Every crate's error
/// enum wraps it (`Data(#[from] RowError)`).
#[derive(Debug, thiserror::Error)]
#[error("{}:{line}: {message}", path.display())]
pub struct RowError {
    pub path: PathBuf,
    pub line: usize,
    pub message: String,
}

impl RowError {
    pub fn new(path: &Path, line: usize, message: impl Into<String>) -> Self {
        Self {
            path: path.to_path_buf(),
            line,
            message: message.into(),
        }
    }
}

/// The values of a JSONL file with their 1-based line numbers (for messages about a row).
pub fn read_jsonl(path: &Path) -> Result<Vec<(usize, serde_json::Value)>, JsonlError> {
    let text = std::fs::read_to_string(path).with_path(path)?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l)
                .map(|v| (i + 1, v))
                .map_err(|source| JsonlError::Line {
                    path: path.to_path_buf(),
                    line: i + 1,
                    source,
                })
        })
        .collect()
}

/// Writes the values one a line with [`write_atomic`].
pub fn write_jsonl_atomic(path: &Path, rows: &[serde_json::Value]) -> Result<(), IoError> {
    let text: String = rows.iter().map(|r| format!("{r}\n")).collect();
    write_atomic(path, text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_line_is_named_by_number_and_blank_lines_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rows.jsonl");
        std::fs::write(&path, "{\"a\":1}\n\n{\"a\":2}\n{oops\n").unwrap();
        let err = read_jsonl(&path).unwrap_err().to_string();
        assert!(err.contains("rows.jsonl:4: invalid JSON"), "{err}");
        write_jsonl_atomic(&path, &[serde_json::json!({"a": 1}), serde_json::json!(2)]).unwrap();
        let rows = read_jsonl(&path).unwrap();
        assert_eq!(
            rows,
            vec![(1, serde_json::json!({"a": 1})), (2, serde_json::json!(2))]
        );
    }
}

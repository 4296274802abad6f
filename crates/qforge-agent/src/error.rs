use std::path::PathBuf;

use thiserror::Error;

#[derive(Debug, Error)]
pub enum AgentError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A data row is unusable; names the file and line.
    #[error("{path}:{line}: {message}")]
    Data {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error(transparent)]
    Backend(#[from] qforge_engine::BackendError),
    #[error("{0}")]
    Invalid(String),
}

pub type Result<T> = std::result::Result<T, AgentError>;

/// Maps an I/O error to one naming `path`.
pub fn io(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> AgentError + '_ {
    move |source| AgentError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// JSON values of a JSONL file, one per non-blank line; a bad line is an error naming it.
pub fn read_jsonl(path: &std::path::Path) -> Result<Vec<(usize, serde_json::Value)>> {
    let text = std::fs::read_to_string(path).map_err(io(path))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l)
                .map(|v| (i + 1, v))
                .map_err(|e| AgentError::Data {
                    path: path.to_path_buf(),
                    line: i + 1,
                    message: format!("invalid JSON: {e}"),
                })
        })
        .collect()
}

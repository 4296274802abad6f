use thiserror::Error;

#[derive(Debug, Error)]
pub enum AgentError {
    #[error(transparent)]
    Io(#[from] qforge_util::IoError),
    #[error(transparent)]
    Settings(#[from] qforge_util::settings::SettingsError),
    /// A data row is unusable; names the file and line.
    #[error(transparent)]
    Data(#[from] qforge_util::RowError),
    #[error(transparent)]
    Backend(#[from] qforge_engine::BackendError),
    #[error("{0}")]
    Invalid(String),
}

pub type Result<T> = std::result::Result<T, AgentError>;

/// JSON values of a JSONL file with their line numbers; a bad line is an error naming it.
pub fn read_jsonl(path: &std::path::Path) -> Result<Vec<(usize, serde_json::Value)>> {
    qforge_util::read_jsonl(path).map_err(|e| match e {
        qforge_util::JsonlError::Io(e) => AgentError::Io(e),
        qforge_util::JsonlError::Line { path, line, source } => {
            qforge_util::RowError::new(&path, line, format!("invalid JSON: {source}")).into()
        }
    })
}

//! The one error type of the RL crate: what the trainer, the model, the rollout engine or a
//! rollout server reported, kept as the source, and what is wrong with a recipe or task file.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum RlError {
    #[error(transparent)]
    Train(#[from] qforge_train::TrainError),
    #[error(transparent)]
    Model(#[from] qforge_model::ModelError),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error(transparent)]
    Io(#[from] qforge_util::IoError),
    #[error(transparent)]
    Settings(#[from] qforge_util::settings::SettingsError),
    /// The embedded engine failed while generating rollouts.
    #[error("{context}: {source}")]
    Engine {
        context: &'static str,
        #[source]
        source: qforge_engine::EngineError,
    },
    /// A rollout server or judge (any OpenAI-compatible backend) failed.
    #[error("{context}: {source}")]
    Backend {
        context: &'static str,
        #[source]
        source: qforge_engine::BackendError,
    },
    /// A file's content is unusable (not JSON, not UTF-8, bad gzip); names the file.
    #[error("{}: {message}", path.display())]
    File { path: PathBuf, message: String },
    /// A task row is unusable; names the file and line.
    #[error(transparent)]
    Data(#[from] qforge_util::RowError),
    /// The async runtime for remote rollouts or a judge could not start.
    #[error("starting {what}: {source}")]
    Runtime {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// A setting or combination of settings that cannot run.
    #[error("{0}")]
    Invalid(String),
}

pub type Result<T, E = RlError> = std::result::Result<T, E>;

impl RlError {
    pub fn file(path: &std::path::Path, message: impl std::fmt::Display) -> Self {
        Self::File {
            path: path.to_path_buf(),
            message: message.to_string(),
        }
    }
}

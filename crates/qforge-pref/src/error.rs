use thiserror::Error;

#[derive(Debug, Error)]
pub enum PrefError {
    #[error(transparent)]
    Train(#[from] qforge_train::TrainError),
    #[error(transparent)]
    Model(#[from] qforge_model::ModelError),
    #[error(transparent)]
    Engine(#[from] qforge_engine::EngineError),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error(transparent)]
    Io(#[from] qforge_util::IoError),
    #[error(transparent)]
    Jsonl(#[from] qforge_util::JsonlError),
    #[error(transparent)]
    Settings(#[from] qforge_util::settings::SettingsError),
    /// A data row is unusable; names the file and line.
    #[error(transparent)]
    Data(#[from] qforge_util::RowError),
    #[error("invalid setting: {0}")]
    Invalid(String),
}

impl From<PrefError> for qforge_train::TrainError {
    fn from(e: PrefError) -> Self {
        match e {
            PrefError::Train(t) => t,
            other => qforge_train::TrainError::Objective(Box::new(other)),
        }
    }
}

pub type Result<T> = std::result::Result<T, PrefError>;

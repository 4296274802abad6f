#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("{0}")]
    Invalid(String),

    #[error(transparent)]
    Data(#[from] qforge_util::RowError),

    #[error(transparent)]
    Io(#[from] qforge_util::IoError),

    #[error(transparent)]
    Settings(#[from] qforge_util::settings::SettingsError),

    #[error("the gradient norm is not finite ({0}); the step was not applied")]
    NonFiniteGradient(f64),

    #[error(transparent)]
    Candle(#[from] candle_core::Error),

    #[error(transparent)]
    Model(#[from] qforge_model::ModelError),

    /// An error of a recipe's own objective (e.g. SoLoPO's settings), kept as the source.
    #[error(transparent)]
    Objective(Box<dyn std::error::Error + Send + Sync>),
}

pub type Result<T, E = TrainError> = std::result::Result<T, E>;

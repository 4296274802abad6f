#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("{0}")]
    Invalid(String),

    #[error("{}:{line}: {message}", path.display())]
    Data {
        path: std::path::PathBuf,
        line: usize,
        message: String,
    },

    #[error("{}: {source}", path.display())]
    Io {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("the gradient norm is not finite ({0}); the step was not applied")]
    NonFiniteGradient(f64),

    #[error(transparent)]
    Candle(#[from] candle_core::Error),

    #[error(transparent)]
    Model(#[from] qforge_model::ModelError),
}

pub type Result<T, E = TrainError> = std::result::Result<T, E>;

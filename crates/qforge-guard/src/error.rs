use thiserror::Error;

#[derive(Debug, Error)]
pub enum GuardError {
    #[error(transparent)]
    Model(#[from] qforge_model::ModelError),
    #[error(transparent)]
    Engine(#[from] qforge_engine::EngineError),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// A guard checkpoint's config.json lacks a field the guard needs (e.g. a label map).
    #[error("{path}: config.json has no `{field}` ({why})")]
    MissingConfig {
        path: String,
        field: String,
        why: &'static str,
    },
    #[error("{path}: config.json `{field}`: {reason}")]
    InvalidConfig {
        path: String,
        field: String,
        reason: String,
    },
    /// The Gen model's output does not follow the `Safety:`/`Categories:`/`Refusal:` grammar.
    #[error("unparsable guard output ({reason}): {output:?}")]
    Unparsable { output: String, reason: String },
    #[error("stream session {0} is closed")]
    SessionClosed(u64),
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// The conversation does not fit the guard's context.
    #[error("too long: {0}")]
    TooLong(String),
}

pub type Result<T> = std::result::Result<T, GuardError>;

impl GuardError {
    /// Whether the request was at fault (a server answers 400) rather than the guard (500).
    pub fn is_bad_input(&self) -> bool {
        match self {
            Self::Model(e) => e.is_bad_input(),
            Self::Engine(e) => e.is_bad_input(),
            Self::InvalidInput(_) | Self::TooLong(_) | Self::Unparsable { .. } => true,
            Self::Candle(_)
            | Self::MissingConfig { .. }
            | Self::InvalidConfig { .. }
            | Self::SessionClosed(_) => false,
        }
    }
}

use qforge_model::ModelError;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Model(#[from] ModelError),

    #[error(transparent)]
    Candle(#[from] candle_core::Error),

    #[error("invalid sampling parameter: {0}")]
    InvalidParameter(String),

    #[error("request {index}: the prompt is empty")]
    EmptyPrompt { index: usize },

    #[error("request {index}: the prompt has {len} tokens, the model's context is {max}")]
    PromptTooLong {
        index: usize,
        len: usize,
        max: usize,
    },

    #[error("the model produced NaN logits")]
    NonFiniteLogits,
}

impl EngineError {
    /// Whether the request was at fault (400) rather than the engine (500).
    pub fn is_bad_input(&self) -> bool {
        match self {
            Self::Model(e) => e.is_bad_input(),
            Self::InvalidParameter(_) | Self::EmptyPrompt { .. } | Self::PromptTooLong { .. } => {
                true
            }
            Self::Candle(_) | Self::NonFiniteLogits => false,
        }
    }
}

pub type Result<T, E = EngineError> = std::result::Result<T, E>;

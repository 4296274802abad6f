//! One error type for the model crate. Every variant names the offending item
//! (file, field, tensor key, token) so a user can fix the input without a debugger.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(transparent)]
    Io(#[from] qforge_util::IoError),

    #[error("{path}: invalid JSON: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },

    #[error("config: missing field `{field}`")]
    MissingField { field: String },

    #[error("config: field `{field}` {message}")]
    InvalidField { field: String, message: String },

    #[error("config: unknown model_type `{0}` (supported: qwen2, qwen3, qwen2_5_vl)")]
    UnknownModelType(String),

    #[error("image `{name}`: {message}")]
    BadImage { name: String, message: String },

    #[error("image of {height} x {width} pixels: both sides must be at least {factor}")]
    ImageTooSmall {
        height: usize,
        width: usize,
        factor: usize,
    },

    #[error("image aspect ratio {ratio:.1} is over 200")]
    ImageAspectRatio { ratio: f64 },

    #[error("config: unsupported rope_scaling type `{0}` (supported: default, linear, yarn)")]
    UnsupportedRopeScaling(String),

    #[error("{path}: not a valid safetensors file: {message}")]
    Safetensors { path: PathBuf, message: String },

    #[error("missing tensor `{key}` (expected shape {expected:?})")]
    MissingTensor { key: String, expected: Vec<usize> },

    #[error("checkpoint is missing {} tensors: {}", .0.len(), describe_missing(.0))]
    MissingTensors(Vec<(String, Vec<usize>)>),

    #[error("tensor `{key}` has shape {actual:?}, expected {expected:?}")]
    ShapeMismatch {
        key: String,
        expected: Vec<usize>,
        actual: Vec<usize>,
    },

    #[error("checkpoint has {} unexpected tensors: {}", .0.len(), .0.join(", "))]
    UnexpectedTensors(Vec<String>),

    #[error("shard index {path}: tensor `{key}` points to missing shard `{shard}`")]
    MissingShard {
        path: PathBuf,
        key: String,
        shard: String,
    },

    #[error(
        "model `{0}` not found: not a local directory and not in the Hugging Face cache \
         (looked in $HF_HUB_CACHE, $HF_HOME/hub, ~/.cache/huggingface/hub)"
    )]
    ModelNotFound(String),

    #[error("{dir}: no weights found (expected model.safetensors or model.safetensors.index.json)")]
    NoWeights { dir: PathBuf },

    #[error("tokenizer {path}: {message}")]
    Tokenizer { path: PathBuf, message: String },

    #[error("tokenizer: {0}")]
    Tokenize(String),

    #[error("chat template: {0}")]
    Template(String),

    #[error(
        "the model has no chat template (tokenizer_config.json has no `chat_template`, no chat_template.jinja)"
    )]
    NoChatTemplate,

    #[error("input: {0}")]
    InvalidInput(String),

    #[error("sequence of {len} tokens does not fit the context of {max} positions")]
    ContextOverflow { len: usize, max: usize },

    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

fn describe_missing(missing: &[(String, Vec<usize>)]) -> String {
    let shown: Vec<String> = missing
        .iter()
        .take(8)
        .map(|(k, s)| format!("`{k}` {s:?}"))
        .collect();
    let more = missing.len().saturating_sub(shown.len());
    if more > 0 {
        format!("{} and {more} more", shown.join(", "))
    } else {
        shown.join(", ")
    }
}

pub type Result<T, E = ModelError> = std::result::Result<T, E>;

impl ModelError {
    /// Whether the input was at fault (a server answers 400) rather than the model or the
    /// machine (500).
    pub fn is_bad_input(&self) -> bool {
        matches!(
            self,
            Self::Tokenize(_)
                | Self::Template(_)
                | Self::InvalidInput(_)
                | Self::ContextOverflow { .. }
                | Self::BadImage { .. }
                | Self::ImageTooSmall { .. }
                | Self::ImageAspectRatio { .. }
        )
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io(qforge_util::IoError::new(path, source))
    }
}

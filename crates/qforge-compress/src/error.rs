//! The one error type of the compression crate: compressing, synthesising data and training.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum CompressError {
    /// The instruction and query leave no room for context in a window (the released code
    /// silently returns nothing, or fails, here).
    #[error(
        "the instruction and query take {prefix_tokens} tokens, leaving no room in a \
         {window}-token window: shorten them or use a larger window"
    )]
    PrefixTooLong { prefix_tokens: usize, window: usize },
    #[error("the context is empty")]
    EmptyContext,
    #[error("{0}: no .txt files with text")]
    EmptyHaystack(PathBuf),
    #[error("unknown synthetic task `{0}` (niah_single, niah_multikey, kv, vt, qa)")]
    UnknownTask(String),
    /// A training sample is unusable; names the file and line.
    #[error("{} line {line}: {message}", path.display())]
    BadSample {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("{0}")]
    Invalid(String),
    /// Evaluating one sample failed.
    #[error("compressing a {task} sample: {source}")]
    Sample {
        task: String,
        #[source]
        source: Box<CompressError>,
    },
    /// The downstream reader failed.
    #[error("asking the reader: {0}")]
    Reader(#[source] qforge_engine::BackendError),
    #[error("starting the reader's runtime: {0}")]
    Runtime(#[source] std::io::Error),
    #[error(transparent)]
    Io(#[from] qforge_util::IoError),
    #[error(transparent)]
    Settings(#[from] qforge_util::settings::SettingsError),
    #[error(transparent)]
    Model(#[from] qforge_model::ModelError),
    #[error(transparent)]
    Train(#[from] qforge_train::TrainError),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

impl CompressError {
    /// Whether the request was at fault (a server answers 400) rather than the model (500).
    pub fn is_bad_input(&self) -> bool {
        match self {
            Self::PrefixTooLong { .. } | Self::EmptyContext => true,
            Self::Model(e) => e.is_bad_input(),
            _ => false,
        }
    }
}

pub type Result<T, E = CompressError> = std::result::Result<T, E>;

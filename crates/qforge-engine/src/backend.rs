//! The one interface through which anything in qforge calls a language model: judges,
//! verifiers, agents, rollouts and the server itself. Two implementations: the embedded engine
//! ([`crate::embedded::EmbeddedBackend`]) and any OpenAI-compatible server
//! ([`crate::remote::RemoteBackend`]: vLLM, SGLang, qforge serve, commercial APIs).

use async_trait::async_trait;
use tokio::sync::mpsc;

use crate::chat::{ChatEvent, ChatRequest, ChatResponse, collect_response, random_id};

#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum BackendError {
    /// The request is wrong (HTTP 400); `param` names the field when known.
    #[error("invalid request: {message}")]
    InvalidRequest {
        message: String,
        param: Option<String>,
    },
    /// The prompt (plus max_tokens) does not fit the model's context (HTTP 400).
    #[error("{0}")]
    ContextLength(String),
    /// Too many requests in flight (HTTP 429); worth retrying later.
    #[error("busy: {0}")]
    Busy(String),
    /// The backend cannot be reached or failed in transit; worth retrying.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// A remote server answered with an error status.
    #[error("HTTP {status}: {message}")]
    Http { status: u16, message: String },
    /// Generation failed inside the backend.
    #[error("internal error: {0}")]
    Internal(String),
}

impl BackendError {
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Busy(_) | Self::Unavailable(_) => true,
            Self::Http { status, .. } => *status == 429 || *status >= 500,
            _ => false,
        }
    }
}

/// Streamed events; dropping the receiver cancels the generation.
pub type ChatStream = mpsc::Receiver<Result<ChatEvent, BackendError>>;

#[async_trait]
pub trait ChatBackend: Send + Sync {
    /// The model name requests are served under.
    fn model_name(&self) -> &str;

    /// Starts a chat completion and streams its events (deltas per choice, then usage).
    async fn chat_stream(&self, request: ChatRequest) -> Result<ChatStream, BackendError>;

    /// A whole chat completion.
    async fn chat(&self, request: ChatRequest) -> Result<ChatResponse, BackendError> {
        let n = request.n;
        let mut stream = self.chat_stream(request).await?;
        let mut events = Vec::new();
        while let Some(e) = stream.recv().await {
            events.push(e?);
        }
        Ok(collect_response(
            random_id("chatcmpl-"),
            self.model_name().to_string(),
            n,
            events,
        ))
    }
}

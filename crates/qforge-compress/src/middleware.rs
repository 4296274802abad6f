//! The chat-completions middleware: a [`ChatBackend`] that compresses the long context of a
//! request with the compressor before forwarding it to any other `ChatBackend` (the embedded
//! engine, vLLM or a commercial API through `RemoteBackend`).
//!
//! Which text is the context, in order:
//! 1. a message with role `context` (the released compressor's convention);
//! 2. else the longest `system` or `user` message, other than the last user message, of at least
//!    `min_tokens` tokens;
//! 3. else the last user message itself when it is that long: its last paragraph (after the
//!    final blank line) is the question and the text before it the context.
//!
//! The query is the last user message (or that last paragraph). The context message becomes
//! the released downstream form, a system message `"Doc content:\n\n" + spans joined by "\n"`,
//! in its place; everything else in the request is forwarded unchanged. Requests without such a
//! context pass through untouched.

use std::sync::Arc;

use async_trait::async_trait;
use qforge_engine::{BackendError, ChatBackend, ChatRequest, ChatStream};
use serde_json::{Value, json};

use crate::CompressError;
use crate::model::Compressor;
use crate::pipeline::{CompressOptions, Compressed, compress};
use crate::synthetic::QA_INSTRUCTION;
use crate::windows::encode;

#[derive(Debug, Clone)]
pub struct MiddlewareConfig {
    /// The compression instruction (the system prompt of the compressor).
    pub instruction: String,
    /// Messages shorter than this many tokens are never compressed.
    pub min_tokens: usize,
    pub options: CompressOptions,
}

impl Default for MiddlewareConfig {
    fn default() -> Self {
        Self {
            instruction: QA_INSTRUCTION.to_string(),
            min_tokens: 4096,
            options: CompressOptions::default(),
        }
    }
}

pub struct CompressingBackend {
    upstream: Arc<dyn ChatBackend>,
    compressor: Arc<Compressor>,
    config: MiddlewareConfig,
}

/// Where the context sits in a request.
#[derive(Debug, Clone, PartialEq)]
enum ContextSite {
    /// The whole message at this index.
    Message(usize),
    /// The last user message at this index, split into context and question.
    Split {
        index: usize,
        context: String,
        question: String,
    },
}

fn text_of(message: &Value) -> Option<&str> {
    message["content"].as_str()
}

/// The message a request's compression produced, with what it kept.
pub struct Rewritten {
    pub request: ChatRequest,
    pub compressed: Option<Compressed>,
}

impl CompressingBackend {
    pub fn new(
        upstream: Arc<dyn ChatBackend>,
        compressor: Arc<Compressor>,
        config: MiddlewareConfig,
    ) -> Self {
        Self {
            upstream,
            compressor,
            config,
        }
    }

    fn long_enough(&self, text: &str) -> bool {
        // A token covers at least one byte: shorter byte strings need no tokenizing.
        text.len() >= self.config.min_tokens
            && encode(&self.compressor.tokenizer, text).0.len() >= self.config.min_tokens
    }

    fn find_context(&self, messages: &[Value]) -> Option<ContextSite> {
        if let Some(i) = messages.iter().position(|m| m["role"] == "context") {
            return Some(ContextSite::Message(i));
        }
        let last_user = messages.iter().rposition(|m| m["role"] == "user");
        let longest = messages
            .iter()
            .enumerate()
            .filter(|(i, m)| {
                Some(*i) != last_user && (m["role"] == "system" || m["role"] == "user")
            })
            .filter_map(|(i, m)| text_of(m).map(|t| (i, t)))
            .max_by_key(|(_, t)| t.len());
        if let Some((i, t)) = longest
            && self.long_enough(t)
        {
            return Some(ContextSite::Message(i));
        }
        let index = last_user?;
        let text = text_of(&messages[index])?;
        if !self.long_enough(text) {
            return None;
        }
        let (context, question) = match text.trim_end().rsplit_once("\n\n") {
            Some((c, q)) if !c.trim().is_empty() => (c.to_string(), q.trim().to_string()),
            _ => (text.to_string(), String::new()),
        };
        Some(ContextSite::Split {
            index,
            context,
            question,
        })
    }

    /// The request as it will be forwarded, and what the compressor kept (`None` when the
    /// request has no long context).
    pub async fn rewrite(&self, mut request: ChatRequest) -> Result<Rewritten, BackendError> {
        let Some(site) = self.find_context(&request.messages) else {
            return Ok(Rewritten {
                request,
                compressed: None,
            });
        };
        let messages = &request.messages;
        let (context, query) = match &site {
            ContextSite::Message(i) => {
                let query = messages
                    .iter()
                    .rev()
                    .find(|m| m["role"] == "user")
                    .and_then(text_of)
                    .unwrap_or_default()
                    .to_string();
                (
                    text_of(&messages[*i]).unwrap_or_default().to_string(),
                    query,
                )
            }
            ContextSite::Split {
                context, question, ..
            } => (context.clone(), question.clone()),
        };
        let compressor = self.compressor.clone();
        let (instruction, options) = (self.config.instruction.clone(), self.config.options.clone());
        let out = tokio::task::spawn_blocking(move || {
            compress(&compressor, &instruction, &query, &context, &options)
        })
        .await
        .map_err(|e| BackendError::Internal(format!("compression task: {e}")))?
        .map_err(|e| match e {
            CompressError::Model(e) => BackendError::Internal(format!("compressor: {e}")),
            other => BackendError::InvalidRequest {
                message: format!("cannot compress the context: {other}"),
                param: Some("messages".into()),
            },
        })?;
        let doc = json!({
            "role": "system",
            "content": format!("Doc content:\n\n{}", out.texts().join("\n")),
        });
        match site {
            ContextSite::Message(i) => request.messages[i] = doc,
            ContextSite::Split {
                index, question, ..
            } => {
                request.messages[index] = json!({"role": "user", "content": question});
                request.messages.insert(index, doc);
            }
        }
        tracing::info!(
            "compressed a {}-token context to {} tokens ({} spans)",
            out.context_tokens,
            out.kept_tokens,
            out.spans.len()
        );
        Ok(Rewritten {
            request,
            compressed: Some(out),
        })
    }

    /// Rewrites and forwards a request; returns the upstream's reply and what was kept.
    pub async fn chat_stream_compressed(
        &self,
        request: ChatRequest,
    ) -> Result<(ChatStream, Option<Compressed>), BackendError> {
        let rewritten = self.rewrite(request).await?;
        let stream = self.upstream.chat_stream(rewritten.request).await?;
        Ok((stream, rewritten.compressed))
    }
}

#[async_trait]
impl ChatBackend for CompressingBackend {
    fn model_name(&self) -> &str {
        self.upstream.model_name()
    }

    async fn chat_stream(&self, request: ChatRequest) -> Result<ChatStream, BackendError> {
        Ok(self.chat_stream_compressed(request).await?.0)
    }
}

/// The `x-qforge-compress` header value of a rewrite: context and kept tokens and the ratio, or
/// `none` when nothing was compressed.
pub fn header_value(compressed: Option<&Compressed>) -> String {
    match compressed {
        None => "none".into(),
        Some(c) => format!(
            "context_tokens={}; kept_tokens={}; ratio={}",
            c.context_tokens,
            c.kept_tokens,
            c.ratio.map_or("inf".into(), |r| format!("{r:.2}"))
        ),
    }
}

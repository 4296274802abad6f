//! A guarded chat backend: moderates the prompt (Gen, or the Stream guard's query heads), then
//! streams an upstream's reply through a Stream guard session and ends it with
//! `finish_reason: "content_filter"` once flagged. Any OpenAI-compatible upstream works through
//! [`ChatBackend`]; `qforge guard proxy` serves this over HTTP.
//!
//! Release rule: text is sent only for tokens the guard has already judged, and the newest
//! `hold_back` judged tokens are always kept back. A flag at token i needs tokens i−1 and i to
//! be non-Safe, so with `hold_back ≥ 1` neither token of the flagging pair (nor anything after)
//! ever reaches the client.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use qforge_engine::chat::{ChatDelta, ChatEvent, ChatRequest};
use qforge_engine::{BackendError, ChatBackend, ChatStream};
use serde::Serialize;
use tokio::sync::mpsc;

use crate::generative::GenGuard;
use crate::labels::{Category, Policy, Safety};
use crate::stream::{Debounce, StreamGuard, StreamSession};

/// What happens to a flagged prompt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PromptAction {
    /// Answer with the refusal text and `finish_reason: "content_filter"`; upstream is not called.
    #[default]
    Block,
    /// Forward anyway; the verdict travels in the `x-qforge-guard-prompt` header.
    Pass,
}

#[derive(Debug, Clone)]
pub struct ProxyConfig {
    pub policy: Policy,
    pub prompt_action: PromptAction,
    /// Judged tokens kept unsent (see the module docs).
    pub hold_back: usize,
    pub debounce: Debounce,
    pub refusal: String,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        Self {
            policy: Policy::Strict,
            prompt_action: PromptAction::Block,
            hold_back: 2,
            debounce: Debounce::Paper,
            refusal: "I'm sorry, but I can't help with that request.".into(),
        }
    }
}

/// The prompt's verdict.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PromptCheck {
    pub flagged: bool,
    pub safety: Safety,
    pub categories: Vec<Category>,
    /// `gen`, `stream`, or `gen-unparsable` (then the Stream query heads decided).
    pub source: &'static str,
}

impl PromptCheck {
    /// The `x-qforge-guard-prompt` header value, e.g. `unsafe; categories=Violent; source=gen`.
    pub fn header(&self) -> String {
        let cats: Vec<&str> = self.categories.iter().map(|c| c.as_str()).collect();
        format!(
            "{}; categories={}; source={}",
            self.safety.as_str().to_ascii_lowercase(),
            if cats.is_empty() {
                "None".to_string()
            } else {
                cats.join(",")
            },
            self.source
        )
    }
}

pub struct GuardedBackend {
    upstream: Arc<dyn ChatBackend>,
    stream_guard: Arc<StreamGuard>,
    gen_guard: Option<Arc<GenGuard>>,
    config: ProxyConfig,
}

fn internal(e: impl std::fmt::Display) -> BackendError {
    BackendError::Internal(format!("guard: {e}"))
}

impl GuardedBackend {
    pub fn new(
        upstream: Arc<dyn ChatBackend>,
        stream_guard: Arc<StreamGuard>,
        gen_guard: Option<Arc<GenGuard>>,
        config: ProxyConfig,
    ) -> Self {
        Self {
            upstream,
            stream_guard,
            gen_guard,
            config,
        }
    }

    pub fn config(&self) -> &ProxyConfig {
        &self.config
    }

    /// Moderates the conversation's last user turn.
    pub async fn check_prompt(&self, request: &ChatRequest) -> Result<PromptCheck, BackendError> {
        let messages = request.messages.clone();
        let policy = self.config.policy;
        let gen_guard = self.gen_guard.clone();
        let stream_guard = self.stream_guard.clone();
        tokio::task::spawn_blocking(move || -> Result<PromptCheck, BackendError> {
            let mut source = "stream";
            if let Some(g) = gen_guard {
                let outcome = g
                    .moderate(std::slice::from_ref(&messages))
                    .map_err(internal)?;
                if let Some(v) = outcome[0].verdict() {
                    return Ok(PromptCheck {
                        flagged: v.is_flagged(policy),
                        safety: v.safety,
                        categories: v.categories.clone(),
                        source: "gen",
                    });
                }
                source = "gen-unparsable";
            }
            let (_, q) = stream_guard
                .open_messages(&messages, Debounce::Paper)
                .map_err(internal)?;
            Ok(PromptCheck {
                flagged: q.is_flagged(policy),
                safety: q.risk,
                categories: if q.risk == Safety::Safe {
                    Vec::new()
                } else {
                    vec![q.category]
                },
                source,
            })
        })
        .await
        .map_err(internal)?
    }

    /// The refusal answer of a blocked prompt, as a stream.
    pub fn refusal_stream(&self, n: usize) -> ChatStream {
        let (tx, rx) = mpsc::channel(n.max(1));
        for index in 0..n.max(1) {
            let _ = tx.try_send(Ok(ChatEvent::Delta(ChatDelta {
                index,
                content: Some(self.config.refusal.clone()),
                finish_reason: Some("content_filter".into()),
                ..ChatDelta::default()
            })));
        }
        rx
    }

    /// Streams the upstream reply through the Stream guard (no prompt check).
    pub async fn stream_moderated(&self, request: ChatRequest) -> Result<ChatStream, BackendError> {
        let messages = request.messages.clone();
        let n = request.n.max(1);
        let guard = self.stream_guard.clone();
        let debounce = self.config.debounce;
        // One session per choice, opened on the prompt before asking upstream.
        let sessions = tokio::task::spawn_blocking(move || {
            (0..n)
                .map(|_| guard.open_messages(&messages, debounce).map(|(s, _)| s))
                .collect::<Result<Vec<_>, _>>()
        })
        .await
        .map_err(internal)?
        .map_err(internal)?;
        let mut upstream = self.upstream.chat_stream(request).await?;
        let (tx, rx) = mpsc::channel(64);
        let hold_back = self.config.hold_back;
        tokio::spawn(async move {
            let mut choices: BTreeMap<usize, Choice> = sessions
                .into_iter()
                .enumerate()
                .map(|(i, s)| (i, Choice::new(s)))
                .collect();
            while let Some(event) = upstream.recv().await {
                let delta = match event {
                    Ok(ChatEvent::Delta(d)) => d,
                    Ok(usage) => {
                        if tx.send(Ok(usage)).await.is_err() {
                            return;
                        }
                        continue;
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                };
                let Some(choice) = choices.remove(&delta.index) else {
                    continue; // this choice was already cut off
                };
                let index = delta.index;
                let step = tokio::task::spawn_blocking(move || {
                    let mut choice = choice;
                    let out = choice.feed(&delta, hold_back);
                    (choice, out)
                })
                .await;
                let (choice, out) = match step {
                    Ok(r) => r,
                    Err(e) => {
                        let _ = tx.send(Err(internal(e))).await;
                        return;
                    }
                };
                let finished = match out {
                    Ok(out) => {
                        let done = out.iter().any(|d| d.finish_reason.is_some());
                        for d in out {
                            if tx.send(Ok(ChatEvent::Delta(d))).await.is_err() {
                                return; // client gone: dropping `upstream` cancels it
                            }
                        }
                        done
                    }
                    Err(e) => {
                        let _ = tx.send(Err(internal(e))).await;
                        return;
                    }
                };
                if !finished {
                    choices.insert(index, choice);
                }
            }
            if !choices.is_empty() {
                let _ = tx
                    .send(Err(BackendError::Unavailable(
                        "the upstream closed the stream before finishing".into(),
                    )))
                    .await;
            }
        });
        Ok(rx)
    }
}

/// One choice's moderation state: its session and what text was sent.
struct Choice {
    session: StreamSession,
    /// Everything the upstream sent (content and reasoning, in order).
    received: String,
    /// Bytes of `received` already released.
    sent: usize,
    start: usize,
}

impl Choice {
    fn new(session: StreamSession) -> Self {
        let start = session.scoring_start().unwrap_or(session.ids().len());
        Self {
            session,
            received: String::new(),
            sent: 0,
            start,
        }
    }

    /// Text of the first `tokens` judged reply tokens, when it is a prefix of what was
    /// received (a token boundary inside a UTF-8 character waits for the next token).
    fn judged_text(&self, tokens: usize) -> crate::Result<Option<usize>> {
        let ids = &self.session.ids()[self.start..];
        let text = self
            .session
            .tokenizer()
            .decode(&ids[..tokens.min(ids.len())], false)?;
        Ok(self.received.starts_with(&text).then_some(text.len()))
    }

    fn release(&mut self, upto: usize, index: usize) -> Option<ChatDelta> {
        (upto > self.sent).then(|| {
            let text = self.received[self.sent..upto].to_string();
            self.sent = upto;
            ChatDelta {
                index,
                content: Some(text),
                ..ChatDelta::default()
            }
        })
    }

    fn feed(&mut self, delta: &ChatDelta, hold_back: usize) -> crate::Result<Vec<ChatDelta>> {
        let index = delta.index;
        let mut out = Vec::new();
        for text in [&delta.reasoning_content, &delta.content]
            .into_iter()
            .flatten()
        {
            self.received.push_str(text);
            self.session.push_text(text)?;
        }
        let finishing = delta.finish_reason.is_some();
        if finishing {
            self.session.flush_text()?;
        }
        let judged = self.session.ids().len() - self.start;
        if let Some(flag) = self.session.flag().cloned() {
            // Nothing from the flagging pair on: at most up to the pair's first token.
            let keep = (flag.position - self.start)
                .saturating_sub(1)
                .min(judged.saturating_sub(hold_back));
            if let Some(upto) = self.judged_text(keep)?
                && let Some(d) = self.release(upto, index)
            {
                out.push(d);
            }
            out.push(ChatDelta {
                index,
                finish_reason: Some("content_filter".into()),
                ..ChatDelta::default()
            });
            return Ok(out);
        }
        let releasable = if finishing {
            judged
        } else {
            judged.saturating_sub(hold_back)
        };
        // At the end every token has been judged: all of the text goes.
        let upto = if finishing {
            Some(self.received.len())
        } else {
            self.judged_text(releasable)?
        };
        if let Some(upto) = upto {
            out.extend(self.release(upto, index));
        }
        if !delta.tool_calls.is_empty() || finishing {
            out.push(ChatDelta {
                index,
                tool_calls: delta.tool_calls.clone(),
                finish_reason: delta.finish_reason.clone(),
                ..ChatDelta::default()
            });
        }
        Ok(out)
    }
}

#[async_trait]
impl ChatBackend for GuardedBackend {
    fn model_name(&self) -> &str {
        self.upstream.model_name()
    }

    async fn chat_stream(&self, request: ChatRequest) -> Result<ChatStream, BackendError> {
        let check = self.check_prompt(&request).await?;
        if check.flagged && self.config.prompt_action == PromptAction::Block {
            return Ok(self.refusal_stream(request.n));
        }
        self.stream_moderated(request).await
    }
}

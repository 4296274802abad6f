//! A guarded chat backend: moderates the prompt (Gen, or the Stream guard's query heads), then
//! streams an upstream's reply through a Stream guard session and ends it with
//! `finish_reason: "content_filter"` once flagged. Any OpenAI-compatible upstream works through
//! [`ChatBackend`]; `qforge guard proxy` serves this over HTTP.
//!
//! The prompt check moderates the conversation's last user turn, also when the request ends
//! with a tool result or a system message (agent loops): the messages after that turn are not
//! the user's query. A conversation with no user turn has no prompt to check.
//!
//! The guard sees the reply as the model wrote it: a thinking trace as `<think>\n…` (scored
//! from inside the think block, the thinking-mode protocol of eval/eval_stream.py), the answer
//! after `</think>\n\n` (after the empty think block when there is no trace), and tool calls
//! in Qwen's `<tool_call>\n{"name": …, "arguments": …}\n</tool_call>` form. The client gets
//! each part back on its own channel: `reasoning_content`, `content`, and tool calls, which are
//! held until every token of their arguments has been judged.
//!
//! Release rule: text is sent only for tokens the guard has already judged, and the newest
//! `hold_back` judged tokens are always kept back. A flag at token i needs tokens i−1 and i to
//! be non-Safe, so with `hold_back ≥ 1` neither token of the flagging pair (nor anything after)
//! ever reaches the client, on either channel.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use qforge_engine::chat::{ChatDelta, ChatEvent, ChatRequest, ToolCall};
use qforge_engine::{BackendError, ChatBackend, ChatStream};
use serde::Serialize;
use tokio::sync::mpsc;

use crate::error::GuardError;
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

/// A guard error as the client should see it: what the request got wrong is a 400 (too long
/// for the guard's context: `context_length_exceeded`), everything else the server's fault.
fn to_backend(e: GuardError) -> BackendError {
    match e {
        GuardError::TooLong(m) => BackendError::ContextLength(format!("guard: {m}")),
        e @ (GuardError::Engine(qforge_engine::EngineError::PromptTooLong { .. })
        | GuardError::Model(qforge_model::ModelError::ContextOverflow { .. })) => {
            BackendError::ContextLength(format!("guard: {e}"))
        }
        GuardError::InvalidInput(m) => BackendError::InvalidRequest {
            message: format!("guard: {m}"),
            param: Some("messages".into()),
        },
        e => internal(e),
    }
}

/// The conversation up to and including its last user message (the prompt to moderate), or
/// `None` when no message is from the user.
pub fn through_last_user_turn(messages: &[serde_json::Value]) -> Option<&[serde_json::Value]> {
    let last = messages.iter().rposition(|m| m["role"] == "user")?;
    Some(&messages[..=last])
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

    /// Moderates the conversation's last user turn (see the module docs).
    pub async fn check_prompt(&self, request: &ChatRequest) -> Result<PromptCheck, BackendError> {
        let Some(messages) = through_last_user_turn(&request.messages) else {
            return Ok(PromptCheck {
                flagged: false,
                safety: Safety::Safe,
                categories: Vec::new(),
                source: "none",
            });
        };
        let messages = messages.to_vec();
        let policy = self.config.policy;
        let gen_guard = self.gen_guard.clone();
        let stream_guard = self.stream_guard.clone();
        tokio::task::spawn_blocking(move || -> Result<PromptCheck, BackendError> {
            let mut source = "stream";
            if let Some(g) = gen_guard {
                let outcome = g
                    .moderate(std::slice::from_ref(&messages))
                    .map_err(to_backend)?;
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
                .map_err(to_backend)?;
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
                .map(|_| guard.open_reply(&messages, debounce).map(|(s, _)| s))
                .collect::<Result<Vec<_>, _>>()
        })
        .await
        .map_err(internal)?
        .map_err(to_backend)?;
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

/// Where a piece of the text fed to the guard goes back to the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Channel {
    Reasoning,
    Content,
    /// Think-block tags and tool calls: judged, never sent as text.
    Framing,
}

/// A delta carrying `text` on `channel` (none for framing, which is never sent as text).
fn text_delta(index: usize, channel: Channel, text: String) -> Option<ChatDelta> {
    let mut d = ChatDelta {
        index,
        ..ChatDelta::default()
    };
    match channel {
        Channel::Reasoning => d.reasoning_content = Some(text),
        Channel::Content => d.content = Some(text),
        Channel::Framing => return None,
    }
    Some(d)
}

/// How far the reply has got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Nothing received yet.
    Start,
    Reasoning,
    /// Content (or tool calls) after the think block.
    Answer,
}

/// One choice's moderation state: its session and what text was sent.
struct Choice {
    session: StreamSession,
    phase: Phase,
    /// Text fed to the session from its scoring start on, and the channel of each part (the
    /// end offset in `fed` of consecutive runs).
    fed: String,
    runs: Vec<(usize, Channel)>,
    /// Bytes of `fed` already released.
    sent: usize,
    /// Whether any content text came (the `\n` before a tool call).
    has_content: bool,
    /// Tool calls judged with the rest, sent once all of the reply was judged unflagged.
    held_tools: Vec<ToolCall>,
    /// Leading newlines of a channel's first text: fed to the guard as part of the framing
    /// (`<think>\n`, `</think>\n\n`), so they are released straight away.
    immediate: Vec<ChatDelta>,
}

impl Choice {
    fn new(session: StreamSession) -> Self {
        Self {
            session,
            phase: Phase::Start,
            fed: String::new(),
            runs: Vec::new(),
            sent: 0,
            has_content: false,
            held_tools: Vec::new(),
            immediate: Vec::new(),
        }
    }

    /// Feeds text the client will see on `channel` (`None`: framing before the scoring start).
    fn feed_text(&mut self, text: &str, channel: Option<Channel>) -> crate::Result<()> {
        if text.is_empty() {
            return Ok(());
        }
        self.session.push_text(text)?;
        if let Some(channel) = channel {
            self.fed.push_str(text);
            match self.runs.last_mut() {
                Some((end, c)) if *c == channel => *end = self.fed.len(),
                _ => self.runs.push((self.fed.len(), channel)),
            }
        }
        Ok(())
    }

    /// Splits off a first text's leading newlines, which the framing before it stands for.
    fn lead<'a>(&mut self, text: &'a str, index: usize, channel: Channel) -> &'a str {
        let body = text.trim_start_matches('\n');
        let newlines = &text[..text.len() - body.len()];
        if !newlines.is_empty() {
            self.immediate
                .extend(text_delta(index, channel, newlines.into()));
        }
        body
    }

    fn reasoning(&mut self, text: &str, index: usize) -> crate::Result<()> {
        match self.phase {
            Phase::Start => {
                let body = self.lead(text, index, Channel::Reasoning);
                self.phase = Phase::Reasoning;
                self.feed_text("<think>\n", None)?;
                self.feed_text(body, Some(Channel::Reasoning))
            }
            // Reasoning after the answer began is not how Qwen3 writes; it is judged in place.
            Phase::Reasoning | Phase::Answer => self.feed_text(text, Some(Channel::Reasoning)),
        }
    }

    /// Closes the think block (or writes the empty one) before answer text or a tool call.
    /// `first` is the answer's first text, whose leading newlines the closing tags stand for.
    fn open_answer<'a>(&mut self, first: &'a str, index: usize) -> crate::Result<&'a str> {
        let (closing, channel) = match self.phase {
            Phase::Start => ("<think>\n\n</think>\n\n", None),
            Phase::Reasoning => ("\n</think>\n\n", Some(Channel::Framing)),
            Phase::Answer => return Ok(first),
        };
        let body = self.lead(first, index, Channel::Content);
        self.feed_text(closing, channel)?;
        self.phase = Phase::Answer;
        Ok(body)
    }

    fn content(&mut self, text: &str, index: usize) -> crate::Result<()> {
        if text.is_empty() {
            return Ok(());
        }
        let body = self.open_answer(text, index)?;
        self.has_content = true;
        self.feed_text(body, Some(Channel::Content))
    }

    /// A tool call as Qwen3's chat template writes it after the content.
    fn tool_call(&mut self, call: &ToolCall, index: usize) -> crate::Result<()> {
        self.open_answer("", index)?;
        let separator = if self.has_content || !self.held_tools.is_empty() {
            "\n"
        } else {
            ""
        };
        let text = format!(
            "{separator}<tool_call>\n{{\"name\": {}, \"arguments\": {}}}\n</tool_call>",
            serde_json::Value::String(call.name.clone()),
            call.arguments
        );
        self.held_tools.push(call.clone());
        self.feed_text(&text, Some(Channel::Framing))
    }

    /// Bytes of `fed` covered by the first `tokens` judged tokens, when their text is a prefix
    /// of what was fed (a token boundary inside a UTF-8 character waits for the next token).
    fn judged_text(&self, tokens: usize) -> crate::Result<Option<usize>> {
        let Some(start) = self.session.scoring_start() else {
            return Ok(None);
        };
        let ids = &self.session.ids()[start..];
        let text = self
            .session
            .tokenizer()
            .decode(&ids[..tokens.min(ids.len())], false)?;
        Ok(self.fed.starts_with(&text).then_some(text.len()))
    }

    /// Deltas for `fed[sent..upto]`, one per channel run (framing is never sent).
    fn release(&mut self, upto: usize, index: usize) -> Vec<ChatDelta> {
        let mut out = std::mem::take(&mut self.immediate);
        let mut from = self.sent;
        for &(end, channel) in &self.runs {
            if end <= from {
                continue;
            }
            if from >= upto {
                break;
            }
            let piece = self.fed[from..end.min(upto)].to_string();
            from = end.min(upto);
            out.extend(text_delta(index, channel, piece));
        }
        self.sent = self.sent.max(upto);
        out
    }

    fn feed(&mut self, delta: &ChatDelta, hold_back: usize) -> crate::Result<Vec<ChatDelta>> {
        let index = delta.index;
        if let Some(text) = &delta.reasoning_content {
            self.reasoning(text, index)?;
        }
        if let Some(text) = &delta.content {
            self.content(text, index)?;
        }
        for call in &delta.tool_calls {
            self.tool_call(call, index)?;
        }
        let finishing = delta.finish_reason.is_some();
        if finishing {
            self.session.flush_text()?;
        }
        let start = self.session.scoring_start();
        let judged = start.map_or(0, |s| self.session.ids().len() - s);
        let mut out = Vec::new();
        if let Some(flag) = self.session.flag().cloned() {
            // Nothing from the flagging pair on: at most up to the pair's first token.
            let keep = (flag.position - start.unwrap_or(flag.position))
                .saturating_sub(1)
                .min(judged.saturating_sub(hold_back));
            self.immediate.clear();
            if let Some(upto) = self.judged_text(keep)? {
                out.extend(self.release(upto, index));
            }
            out.push(ChatDelta {
                index,
                finish_reason: Some("content_filter".into()),
                ..ChatDelta::default()
            });
            return Ok(out);
        }
        // At the end every token has been judged: all of the text goes, then the tool calls.
        let upto = if finishing {
            Some(self.fed.len())
        } else {
            self.judged_text(judged.saturating_sub(hold_back))?
        };
        if let Some(upto) = upto {
            out.extend(self.release(upto, index));
        }
        if finishing {
            out.push(ChatDelta {
                index,
                tool_calls: std::mem::take(&mut self.held_tools),
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

//! [`ChatBackend`] on any OpenAI-compatible server (vLLM, SGLang, qforge serve, commercial APIs):
//! bearer auth, timeouts, retries with exponential backoff (connection errors, 429, 5xx), and
//! server-sent-event streaming.

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;
use serde_json::{Map, Value};
use tokio::sync::mpsc;

use crate::backend::{BackendError, ChatBackend, ChatStream};
use crate::chat::{ChatDelta, ChatEvent, ChatRequest, ChatResponse, TokenLogprob, ToolCall, Usage};

#[derive(Debug, Clone)]
pub struct RemoteConfig {
    /// Base URL including `/v1`, e.g. `http://127.0.0.1:8000/v1`.
    pub base_url: String,
    pub model: String,
    pub api_key: Option<String>,
    /// Whole-request timeout for non-streaming calls; connect timeout for streams.
    pub timeout: Duration,
    /// Extra attempts after a retryable failure.
    pub retries: usize,
    /// First backoff; doubles each retry.
    pub backoff: Duration,
}

impl RemoteConfig {
    pub fn new(base_url: impl Into<String>, model: impl Into<String>) -> Self {
        Self {
            base_url: base_url.into().trim_end_matches('/').to_string(),
            model: model.into(),
            api_key: None,
            timeout: Duration::from_secs(600),
            retries: 3,
            backoff: Duration::from_millis(250),
        }
    }
}

#[derive(Clone)]
pub struct RemoteBackend {
    config: RemoteConfig,
    client: reqwest::Client,
}

fn unavailable(e: reqwest::Error) -> BackendError {
    BackendError::Unavailable(e.to_string())
}

/// OpenAI error body -> message.
fn error_message(body: &str) -> String {
    serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
        .unwrap_or_else(|| body.chars().take(500).collect())
}

impl RemoteBackend {
    pub fn new(config: RemoteConfig) -> Result<Self, BackendError> {
        let client = reqwest::Client::builder()
            .connect_timeout(config.timeout.min(Duration::from_secs(30)))
            .build()
            .map_err(unavailable)?;
        Ok(Self { config, client })
    }

    pub fn config(&self) -> &RemoteConfig {
        &self.config
    }

    /// POSTs JSON, retrying connection failures, 429 and 5xx with exponential backoff.
    async fn post(
        &self,
        path: &str,
        body: &Value,
        stream: bool,
    ) -> Result<reqwest::Response, BackendError> {
        let url = format!("{}{path}", self.config.base_url);
        let mut attempt = 0;
        loop {
            let mut req = self.client.post(&url).json(body);
            if !stream {
                req = req.timeout(self.config.timeout);
            }
            if let Some(key) = &self.config.api_key {
                req = req.bearer_auth(key);
            }
            let err = match req.send().await {
                Err(e) => unavailable(e),
                Ok(resp) if resp.status().is_success() => return Ok(resp),
                Ok(resp) => {
                    let status = resp.status().as_u16();
                    let text = resp.text().await.unwrap_or_default();
                    let message = error_message(&text);
                    match status {
                        400 if message.contains("context length") => {
                            BackendError::ContextLength(message)
                        }
                        400 | 422 => BackendError::InvalidRequest {
                            message,
                            param: None,
                        },
                        _ => BackendError::Http { status, message },
                    }
                }
            };
            if !err.is_retryable() || attempt >= self.config.retries {
                return Err(err);
            }
            tokio::time::sleep(self.config.backoff * 2u32.saturating_pow(attempt as u32)).await;
            attempt += 1;
        }
    }

    /// POSTs `body` to a route beside `/v1` (SGLang's and vLLM's non-OpenAI routes live at the
    /// root): the status and the body text.
    async fn post_beside_v1(
        &self,
        route: &str,
        body: &Value,
    ) -> Result<(u16, String), BackendError> {
        let root = self
            .config
            .base_url
            .strip_suffix("/v1")
            .unwrap_or(&self.config.base_url);
        let mut req = self
            .client
            .post(format!("{root}/{route}"))
            .json(body)
            .timeout(self.config.timeout);
        if let Some(key) = &self.config.api_key {
            req = req.bearer_auth(key);
        }
        let resp = req.send().await.map_err(unavailable)?;
        let status = resp.status().as_u16();
        Ok((status, resp.text().await.unwrap_or_default()))
    }

    /// Asks the server to replace its weights with the checkpoint in `dir` (SGLang's
    /// `POST /update_weights_from_disk`, which `qforge serve --allow-weight-reload` implements;
    /// the route sits beside `/v1`, not under it).
    pub async fn update_weights_from_disk(
        &self,
        dir: &std::path::Path,
    ) -> Result<String, BackendError> {
        let (status, text) = self
            .post_beside_v1(
                "update_weights_from_disk",
                &serde_json::json!({"model_path": dir}),
            )
            .await?;
        let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        if status == 200 && v["success"].as_bool() != Some(false) {
            return Ok(v["message"].as_str().unwrap_or("").to_string());
        }
        Err(BackendError::Http {
            status,
            message: v["message"]
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| error_message(&text)),
        })
    }

    /// A reward model's score of one conversation through vLLM's pooling API (`POST /pooling`
    /// beside `/v1`, as `qforge serve --reward-model` and `vllm serve <reward model>` answer it).
    /// An empty model name leaves `model` out (the server's only model answers).
    pub async fn reward_score(&self, messages: &[Value]) -> Result<f32, BackendError> {
        let body = if self.config.model.is_empty() {
            serde_json::json!({"messages": messages})
        } else {
            serde_json::json!({"model": self.config.model, "messages": messages})
        };
        let (status, text) = self.post_beside_v1("pooling", &body).await?;
        if status != 200 {
            return Err(BackendError::Http {
                status,
                message: error_message(&text),
            });
        }
        let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        // `data[0].data` is `[score]` for a one-label classifier head, or a bare number.
        let data = &v["data"][0]["data"];
        data.as_f64()
            .or_else(|| data[0].as_f64())
            .map(|x| x as f32)
            .ok_or_else(|| {
                BackendError::Internal(format!("no score in the pooling response: {text}"))
            })
    }

    /// Raw text completions of a token-id prompt (`POST /v1/completions` with `prompt` as ids,
    /// which vLLM, SGLang and `qforge serve` accept): each choice's text exactly as generated,
    /// with no reasoning or tool parsing in between, and its finish reason, in choice order.
    /// `sampling` holds the other body fields (`n`, `temperature`, `max_tokens`, `seed`, ...).
    pub async fn complete_ids(
        &self,
        prompt: &[u32],
        sampling: &Map<String, Value>,
    ) -> Result<Vec<(String, String)>, BackendError> {
        let mut body = Value::Object(sampling.clone());
        body["prompt"] = serde_json::json!(prompt);
        if !self.config.model.is_empty() {
            body["model"] = Value::String(self.config.model.clone());
        }
        let resp = self.post("/completions", &body, false).await?;
        let v: Value = resp.json().await.map_err(unavailable)?;
        let mut choices: Vec<(u64, String, String)> = v["choices"]
            .as_array()
            .ok_or_else(|| BackendError::Internal(format!("no choices in the completion: {v}")))?
            .iter()
            .map(|c| {
                (
                    c["index"].as_u64().unwrap_or(0),
                    c["text"].as_str().unwrap_or_default().to_string(),
                    c["finish_reason"].as_str().unwrap_or("stop").to_string(),
                )
            })
            .collect();
        choices.sort_by_key(|c| c.0);
        Ok(choices.into_iter().map(|(_, t, f)| (t, f)).collect())
    }

    /// Model ids the server lists at `/models`.
    pub async fn list_models(&self) -> Result<Vec<String>, BackendError> {
        let mut req = self
            .client
            .get(format!("{}/models", self.config.base_url))
            .timeout(self.config.timeout);
        if let Some(key) = &self.config.api_key {
            req = req.bearer_auth(key);
        }
        let v: Value = req
            .send()
            .await
            .map_err(unavailable)?
            .json()
            .await
            .map_err(unavailable)?;
        Ok(v["data"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|m| m["id"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default())
    }
}

/// Accumulates streamed tool-call fragments (vLLM streams arguments in pieces) per choice.
#[derive(Default)]
struct ToolCallAssembler {
    partial: BTreeMap<(usize, usize), ToolCall>,
}

impl ToolCallAssembler {
    fn add(&mut self, choice: usize, fragment: &Value) {
        let index = fragment["index"].as_u64().unwrap_or(0) as usize;
        let call = self
            .partial
            .entry((choice, index))
            .or_insert_with(|| ToolCall {
                id: String::new(),
                name: String::new(),
                arguments: String::new(),
            });
        if let Some(id) = fragment["id"].as_str() {
            call.id = id.to_string();
        }
        if let Some(name) = fragment["function"]["name"].as_str() {
            call.name.push_str(name);
        }
        if let Some(args) = fragment["function"]["arguments"].as_str() {
            call.arguments.push_str(args);
        }
    }

    fn take(&mut self, choice: usize) -> Vec<ToolCall> {
        let keys: Vec<_> = self
            .partial
            .keys()
            .filter(|(c, _)| *c == choice)
            .copied()
            .collect();
        keys.into_iter()
            .filter_map(|k| self.partial.remove(&k))
            .collect()
    }
}

/// One SSE chunk -> events.
fn chunk_events(chunk: &Value, tools: &mut ToolCallAssembler) -> Vec<ChatEvent> {
    let mut events = Vec::new();
    for c in chunk["choices"].as_array().into_iter().flatten() {
        let index = c["index"].as_u64().unwrap_or(0) as usize;
        let d = &c["delta"];
        for fragment in d["tool_calls"].as_array().into_iter().flatten() {
            tools.add(index, fragment);
        }
        let finish_reason = c["finish_reason"].as_str().map(str::to_string);
        let delta = ChatDelta {
            index,
            content: d["content"]
                .as_str()
                .filter(|s| !s.is_empty())
                .map(str::to_string),
            reasoning_content: d["reasoning_content"]
                .as_str()
                .or(d["reasoning"].as_str())
                .filter(|s| !s.is_empty())
                .map(str::to_string),
            tool_calls: if finish_reason.is_some() {
                tools.take(index)
            } else {
                Vec::new()
            },
            logprobs: c["logprobs"]["content"]
                .as_array()
                .map(|a| a.iter().map(TokenLogprob::from_openai).collect()),
            finish_reason,
        };
        if delta
            != (ChatDelta {
                index,
                ..ChatDelta::default()
            })
        {
            events.push(ChatEvent::Delta(delta));
        }
    }
    if chunk["usage"].is_object() {
        events.push(ChatEvent::Usage(Usage {
            prompt_tokens: chunk["usage"]["prompt_tokens"].as_u64().unwrap_or(0) as usize,
            completion_tokens: chunk["usage"]["completion_tokens"].as_u64().unwrap_or(0) as usize,
        }));
    }
    events
}

#[async_trait]
impl ChatBackend for RemoteBackend {
    fn model_name(&self) -> &str {
        &self.config.model
    }

    async fn chat(&self, request: ChatRequest) -> Result<ChatResponse, BackendError> {
        let body = request.to_openai(&self.config.model, false);
        let resp = self.post("/chat/completions", &body, false).await?;
        let v: Value = resp.json().await.map_err(unavailable)?;
        ChatResponse::from_openai(&v)
            .ok_or_else(|| BackendError::Internal(format!("unexpected response: {v}")))
    }

    async fn chat_stream(&self, request: ChatRequest) -> Result<ChatStream, BackendError> {
        let body = request.to_openai(&self.config.model, true);
        let resp = self.post("/chat/completions", &body, true).await?;
        let (tx, rx) = mpsc::channel(256);
        tokio::spawn(async move {
            let mut bytes = resp.bytes_stream();
            let mut pending = String::new();
            let mut tools = ToolCallAssembler::default();
            while let Some(piece) = bytes.next().await {
                let piece = match piece {
                    Ok(p) => p,
                    Err(e) => {
                        let _ = tx
                            .send(Err(BackendError::Unavailable(format!("stream broke: {e}"))))
                            .await;
                        return;
                    }
                };
                pending.push_str(&String::from_utf8_lossy(&piece));
                while let Some(end) = pending.find('\n') {
                    let line = pending[..end].trim_end_matches('\r').to_string();
                    pending.drain(..=end);
                    let Some(data) = line.strip_prefix("data:") else {
                        continue;
                    };
                    let data = data.trim();
                    if data == "[DONE]" {
                        return;
                    }
                    let event = match serde_json::from_str::<Value>(data) {
                        Ok(v) if v.get("error").is_some() => {
                            Err(BackendError::Internal(error_message(data)))
                        }
                        Ok(v) => Ok(chunk_events(&v, &mut tools)),
                        Err(e) => Err(BackendError::Internal(format!(
                            "bad stream chunk ({e}): {data}"
                        ))),
                    };
                    match event {
                        Ok(events) => {
                            for e in events {
                                if tx.send(Ok(e)).await.is_err() {
                                    return; // consumer gone: dropping the response closes the connection
                                }
                            }
                        }
                        Err(e) => {
                            let _ = tx.send(Err(e)).await;
                            return;
                        }
                    }
                }
            }
            let _ = tx
                .send(Err(BackendError::Unavailable(
                    "stream ended without [DONE]".into(),
                )))
                .await;
        });
        Ok(rx)
    }
}

//! qforge-serve: an OpenAI-compatible HTTP server over the embedded engine.
//!
//! Routes: `POST /v1/chat/completions` (SSE streaming or whole), `POST /v1/completions`,
//! `GET /v1/models`, `GET /health`, `GET /metrics` (Prometheus text), and with a guard model
//! `POST /v1/moderations` and `POST /v1/guard/moderate` ([`guard`], which also has the guarded
//! chat proxy). Errors use OpenAI's body
//! shape. Requests go through [`EmbeddedBackend`], whose scheduler batches them continuously;
//! a client that disconnects cancels its sequences.

// Helpers return `Result<_, Response>` so handlers can `?`-style early-return an error page; the
// error path is cold, so the size of axum's Response does not matter.
#![allow(clippy::result_large_err)]

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::stream;
use qforge_engine::SamplingFields;
use qforge_engine::chat::{
    ChatDelta, ChatEvent, ChatRequest, TokenLogprob, Usage, collect_response, parse_sampling,
    random_id, unix_now,
};
use qforge_engine::{BackendError, ChatBackend, ChatStream, EmbeddedBackend, Metrics};
use serde_json::{Value, json};

pub mod admission;
pub mod compress;
pub mod guard;
pub mod pooling;
pub mod proxy;

#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Bearer token required on `/v1/*` when set.
    pub api_key: Option<String>,
    /// Largest request body in bytes (413 beyond).
    pub max_body_bytes: usize,
    /// Longest prompt in tokens (400 beyond); the model's context bounds it anyway.
    pub max_prompt_tokens: Option<usize>,
    /// Accept `POST /update_weights_from_disk` (SGLang's request shape): an RL trainer pushes
    /// its new policy by writing a checkpoint and naming its directory.
    pub allow_weight_reload: bool,
    /// Queue and item limits of the model routes outside the chat scheduler.
    pub admission: admission::AdmissionConfig,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            api_key: None,
            max_body_bytes: 16 << 20,
            max_prompt_tokens: None,
            allow_weight_reload: false,
            admission: admission::AdmissionConfig::default(),
        }
    }
}

#[derive(Clone)]
pub struct AppState {
    backend: EmbeddedBackend,
    metrics: Arc<Metrics>,
    config: Arc<ServerConfig>,
    http_status: Arc<Mutex<BTreeMap<u16, u64>>>,
    admission: admission::Admission,
    moderation: Option<guard::ModerationState>,
    reward: Option<pooling::RewardState>,
    compressor: Option<compress::CompressState>,
}

impl AppState {
    pub fn new(backend: EmbeddedBackend, config: ServerConfig) -> Self {
        let metrics = backend.scheduler().metrics().clone();
        Self {
            backend,
            metrics,
            admission: admission::Admission::new(config.admission),
            config: Arc::new(config),
            http_status: Arc::default(),
            moderation: None,
            reward: None,
            compressor: None,
        }
    }

    /// The checkpoint in `dir` served as `name` on the embedded engine with default scheduling.
    pub fn for_checkpoint(
        name: &str,
        dir: &std::path::Path,
        config: ServerConfig,
    ) -> qforge_model::Result<Self> {
        let ck = qforge_model::Checkpoint::load_dir(
            dir,
            candle_core::DType::F32,
            &candle_core::Device::Cpu,
        )?;
        let mut engine = qforge_engine::Engine::new(ck.model, Arc::new(ck.tokenizer));
        if let Some(vision) = ck.vision {
            engine = engine.with_vision(vision);
        }
        let scheduler = qforge_engine::Scheduler::spawn(
            engine,
            qforge_engine::SchedulerConfig::default(),
            Arc::new(Metrics::default()),
        );
        let backend = EmbeddedBackend::new(name.to_string(), scheduler, ck.generation);
        Ok(Self::new(backend, config))
    }

    /// Adds `POST /v1/moderations` and `POST /v1/guard/moderate`, answered by a Qwen3Guard-Gen.
    pub fn with_moderation(mut self, moderation: guard::ModerationState) -> Self {
        self.moderation = Some(moderation);
        self
    }

    /// Adds `POST /pooling` (vLLM's reward-model API), answered by a Bradley-Terry reward model;
    /// with weight reload on, `/update_weights_from_disk` given a reward checkpoint replaces it.
    pub fn with_reward_model(mut self, reward: pooling::RewardState) -> Self {
        self.reward = Some(reward);
        self
    }

    /// Serves a QwenLong-CPRS compressor on `POST /v1/compress`.
    pub fn with_compressor(mut self, compressor: compress::CompressState) -> Self {
        self.compressor = Some(compressor);
        self
    }
}

/// An OpenAI-shaped error response.
pub fn api_error(
    status: StatusCode,
    message: impl Into<String>,
    param: Option<&str>,
    code: Option<&str>,
) -> Response {
    let kind = match status.as_u16() {
        401 => "authentication_error",
        404 => "not_found_error",
        429 => "rate_limit_error",
        s if s >= 500 => "server_error",
        _ => "invalid_request_error",
    };
    let body =
        json!({"error": {"message": message.into(), "type": kind, "param": param, "code": code}});
    (status, Json(body)).into_response()
}

pub(crate) fn backend_error(e: BackendError) -> Response {
    match &e {
        BackendError::InvalidRequest { message, param } => api_error(
            StatusCode::BAD_REQUEST,
            message.clone(),
            param.as_deref(),
            None,
        ),
        BackendError::ContextLength(m) => api_error(
            StatusCode::BAD_REQUEST,
            m.clone(),
            Some("messages"),
            Some("context_length_exceeded"),
        ),
        BackendError::Busy(m) => api_error(StatusCode::TOO_MANY_REQUESTS, m.clone(), None, None),
        BackendError::Unavailable(m) => {
            api_error(StatusCode::SERVICE_UNAVAILABLE, m.clone(), None, None)
        }
        BackendError::Http { status, message } => api_error(
            StatusCode::from_u16(*status).unwrap_or(StatusCode::BAD_GATEWAY),
            message.clone(),
            None,
            None,
        ),
        BackendError::Internal(m) => {
            api_error(StatusCode::INTERNAL_SERVER_ERROR, m.clone(), None, None)
        }
    }
}

pub fn router(state: AppState) -> Router {
    let api = Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/completions", post(completions))
        .route("/v1/models", get(models))
        .route("/v1/moderations", post(moderations))
        .route("/v1/guard/moderate", post(guard_moderate))
        .route("/update_weights_from_disk", post(update_weights_from_disk))
        .route("/pooling", post(pooling))
        .route("/v1/compress", post(compress_route))
        .route("/qwen_long_compress_server", post(released_compress_route))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            require_api_key,
        ));
    Router::new()
        .merge(api)
        .route("/health", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/metrics", get(metrics))
        .fallback(|| async { api_error(StatusCode::NOT_FOUND, "no such route", None, None) })
        .layer(middleware::from_fn_with_state(state.clone(), count_status))
        .layer(DefaultBodyLimit::max(state.config.max_body_bytes))
        .with_state(state)
}

/// Serves `state` on a free loopback port from its own thread and runtime until the process
/// exits; returns the `/v1` base URL. For tests, examples and tools that need a real server
/// beside them.
pub fn spawn_on_loopback(state: AppState) -> std::io::Result<String> {
    let runtime = tokio::runtime::Runtime::new()?;
    let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
    let url = format!("http://{}/v1", listener.local_addr()?);
    std::thread::Builder::new()
        .name("qforge-serve".into())
        .spawn(move || runtime.block_on(serve(listener, state, std::future::pending())))?;
    Ok(url)
}

/// Serves until `shutdown` resolves, then finishes in-flight requests.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
}

async fn require_api_key(
    State(state): State<AppState>,
    headers: HeaderMap,
    request: Request,
    next: Next,
) -> Response {
    match check_api_key(&state.config, &headers) {
        Ok(()) => next.run(request).await,
        Err(r) => r,
    }
}

/// `Authorization: Bearer KEY` when the server has a key.
pub(crate) fn check_api_key(config: &ServerConfig, headers: &HeaderMap) -> Result<(), Response> {
    if let Some(key) = &config.api_key {
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if given != Some(key.as_str()) {
            return Err(api_error(
                StatusCode::UNAUTHORIZED,
                "invalid or missing API key",
                None,
                Some("invalid_api_key"),
            ));
        }
    }
    Ok(())
}

/// `{"model_path": DIR}` → the served model's weights are replaced in place from the
/// checkpoint in DIR (same architecture). Requests in flight may see the new weights from their
/// next token on; RL trainers call this between rollout phases.
async fn update_weights_from_disk(
    State(state): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    if !state.config.allow_weight_reload {
        return api_error(
            StatusCode::FORBIDDEN,
            "weight reload is off (start the server with --allow-weight-reload)",
            None,
            None,
        );
    }
    let v = match parse_body(&state.config, state.backend.model_name(), body) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let Some(path) = v["model_path"].as_str().map(std::path::PathBuf::from) else {
        return api_error(
            StatusCode::BAD_REQUEST,
            "`model_path` is required",
            Some("model_path"),
            None,
        );
    };
    if let Some(r) = &state.reward
        && pooling::is_reward_checkpoint(&path)
    {
        return pooling::reload(r, path).await;
    }
    let model = state.backend.scheduler().engine().model().clone();
    let shown = path.display().to_string();
    match tokio::task::spawn_blocking(move || model.reload_weights(&path)).await {
        Ok(Ok(n)) => {
            Json(json!({"success": true, "message": format!("loaded {n} tensors from {shown}")}))
                .into_response()
        }
        Ok(Err(e)) => (
            StatusCode::BAD_REQUEST,
            Json(json!({"success": false, "message": format!("{shown}: {e}")})),
        )
            .into_response(),
        Err(e) => api_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string(), None, None),
    }
}

async fn compress_route(
    State(state): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    match &state.compressor {
        Some(c) => compress::handle(&state.config, &state.admission, c, body).await,
        None => no_compressor(),
    }
}

/// 404 for a route whose model this server was not started with.
fn not_loaded(what: &str, flag: &str) -> Response {
    api_error(
        StatusCode::NOT_FOUND,
        &format!("this server has no {what} (start it with {flag})"),
        None,
        None,
    )
}

fn no_compressor() -> Response {
    not_loaded("compressor", "--compressor")
}

async fn released_compress_route(
    State(state): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    match &state.compressor {
        Some(c) => compress::handle_released(&state.config, &state.admission, c, body).await,
        None => no_compressor(),
    }
}

async fn pooling(State(state): State<AppState>, body: Result<Bytes, BytesRejection>) -> Response {
    match &state.reward {
        Some(r) => pooling::pooling(&state.config, &state.admission, r, body).await,
        None => not_loaded("reward model", "--reward-model"),
    }
}

fn no_guard() -> Response {
    not_loaded("guard model", "--guard-model")
}

async fn moderations(
    State(state): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    match &state.moderation {
        Some(m) => guard::moderations(&state.config, &state.admission, m, body).await,
        None => no_guard(),
    }
}

async fn guard_moderate(
    State(state): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    match &state.moderation {
        Some(m) => guard::native_moderate(&state.config, &state.admission, m, body).await,
        None => no_guard(),
    }
}

async fn count_status(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    *state
        .http_status
        .lock()
        .expect("not poisoned")
        .entry(response.status().as_u16())
        .or_default() += 1;
    response
}

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let mut text = state.metrics.render();
    text.push_str("# HELP qforge_http_responses_total HTTP responses by status code.\n# TYPE qforge_http_responses_total counter\n");
    for (code, n) in state.http_status.lock().expect("not poisoned").iter() {
        text.push_str(&format!(
            "qforge_http_responses_total{{code=\"{code}\"}} {n}\n"
        ));
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text)
}

async fn models(State(state): State<AppState>) -> Json<Value> {
    Json(json!({"object": "list", "data": [{
        "id": state.backend.model_name(), "object": "model", "created": unix_now(), "owned_by": "qforge",
        "max_model_len": state.backend.max_context(),
    }]}))
}

/// Body -> JSON object, with OpenAI errors for oversized bodies, bad UTF-8 and bad JSON.
pub(crate) fn parse_body(
    config: &ServerConfig,
    served_model: &str,
    body: Result<Bytes, BytesRejection>,
) -> Result<Value, Response> {
    let body = body.map_err(|rejection| {
        let status = rejection.status();
        let message = if status == StatusCode::PAYLOAD_TOO_LARGE {
            format!(
                "the request body is larger than {} bytes",
                config.max_body_bytes
            )
        } else {
            rejection.body_text()
        };
        api_error(status, message, None, None)
    })?;
    let text = std::str::from_utf8(&body).map_err(|e| {
        api_error(
            StatusCode::BAD_REQUEST,
            format!("the request body is not valid UTF-8: {e}"),
            None,
            None,
        )
    })?;
    let value: Value = serde_json::from_str(text).map_err(|e| {
        api_error(
            StatusCode::BAD_REQUEST,
            format!("the request body is not valid JSON: {e}"),
            None,
            None,
        )
    })?;
    if !value.is_object() {
        return Err(api_error(
            StatusCode::BAD_REQUEST,
            "the request body must be a JSON object",
            None,
            None,
        ));
    }
    match value.get("model") {
        None | Some(Value::Null) => {}
        Some(Value::String(m)) if m == served_model => {}
        Some(Value::String(m)) => {
            return Err(api_error(
                StatusCode::NOT_FOUND,
                format!("The model `{m}` does not exist; this server serves `{served_model}`"),
                Some("model"),
                Some("model_not_found"),
            ));
        }
        Some(_) => {
            return Err(api_error(
                StatusCode::BAD_REQUEST,
                "`model` must be a string",
                Some("model"),
                None,
            ));
        }
    }
    Ok(value)
}

/// The body as a JSON object plus its `stream` and `stream_options.include_usage` flags.
pub(crate) fn parse_request(
    config: &ServerConfig,
    served_model: &str,
    body: Result<Bytes, BytesRejection>,
) -> Result<(Value, bool, bool), Response> {
    let v = parse_body(config, served_model, body)?;
    let (stream, include_usage) = stream_flags(&v)?;
    Ok((v, stream, include_usage))
}

fn stream_flags(v: &Value) -> Result<(bool, bool), Response> {
    let stream = match v.get("stream") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => {
            return Err(api_error(
                StatusCode::BAD_REQUEST,
                "`stream` must be true or false",
                Some("stream"),
                None,
            ));
        }
    };
    let include_usage = v["stream_options"]["include_usage"]
        .as_bool()
        .unwrap_or(false);
    Ok((stream, include_usage))
}

fn check_prompt_len(state: &AppState, len: usize) -> Result<(), Response> {
    match state.config.max_prompt_tokens {
        Some(max) if len > max => Err(api_error(
            StatusCode::BAD_REQUEST,
            format!("the prompt has {len} tokens; this server accepts at most {max}"),
            Some("messages"),
            Some("context_length_exceeded"),
        )),
        _ => Ok(()),
    }
}

async fn chat_completions(
    State(state): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let (v, stream, include_usage) =
        match parse_request(&state.config, state.backend.model_name(), body) {
            Ok(parsed) => parsed,
            Err(r) => return r,
        };
    let request = match ChatRequest::from_openai(&v) {
        Ok(r) => r,
        Err(e) => return api_error(StatusCode::BAD_REQUEST, e.message, Some(&e.param), None),
    };
    match state.backend.chat_prompt(&request) {
        Ok(prompt) => {
            if let Err(r) = check_prompt_len(&state, prompt.len()) {
                return r;
            }
        }
        Err(e) => return backend_error(e),
    }
    let n = request.n;
    let events = match state.backend.chat_stream(request).await {
        Ok(rx) => rx,
        Err(e) => return backend_error(e),
    };
    chat_response(
        events,
        state.backend.model_name().to_string(),
        n,
        stream,
        include_usage,
    )
    .await
}

/// A chat completion from its event stream: whole, or as `chat.completion.chunk` SSE.
pub(crate) async fn chat_response(
    events: ChatStream,
    model: String,
    n: usize,
    stream: bool,
    include_usage: bool,
) -> Response {
    let id = random_id("chatcmpl-");
    if !stream {
        return match collect(events).await {
            Ok(all) => Json(collect_response(id, model, n, all).to_openai()).into_response(),
            Err(e) => backend_error(e),
        };
    }
    let created = unix_now();
    let chunk = move |choices: Value, usage: Option<Usage>| {
        let mut c = json!({"id": id, "object": "chat.completion.chunk", "created": created, "model": model, "choices": choices});
        if let Some(u) = usage {
            c["usage"] = u.to_openai();
        }
        c
    };
    // The first chunk of every choice carries the role, as OpenAI's do.
    let opening: Vec<Value> = (0..n)
        .map(|i| chunk(json!([{"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": null, "finish_reason": null}]), None))
        .collect();
    // Tool calls are numbered per choice across the whole stream: clients merge fragments by
    // `index`, so a second call in a later delta must not restart at 0.
    let tool_calls_sent: Mutex<BTreeMap<usize, usize>> = Mutex::default();
    sse(opening, events, include_usage, move |event| match event {
        ChatEvent::Delta(d) => {
            let first_tool_index = {
                let mut sent = tool_calls_sent.lock().unwrap_or_else(|e| e.into_inner());
                let count = sent.entry(d.index).or_default();
                let first = *count;
                *count += d.tool_calls.len();
                first
            };
            Some(chunk(json!([chat_delta_json(&d, first_tool_index)]), None))
        }
        ChatEvent::Usage(u) => Some(chunk(json!([]), Some(u))),
    })
}

/// One choice's delta; its tool calls are numbered from `first_tool_index`.
fn chat_delta_json(d: &ChatDelta, first_tool_index: usize) -> Value {
    let mut delta = serde_json::Map::new();
    if let Some(c) = &d.content {
        delta.insert("content".into(), json!(c));
    }
    if let Some(r) = &d.reasoning_content {
        delta.insert("reasoning_content".into(), json!(r));
    }
    if !d.tool_calls.is_empty() {
        delta.insert(
            "tool_calls".into(),
            Value::Array(
                d.tool_calls
                    .iter()
                    .enumerate()
                    .map(|(i, t)| t.to_openai(first_tool_index + i))
                    .collect(),
            ),
        );
    }
    json!({
        "index": d.index,
        "delta": delta,
        "logprobs": d.logprobs.as_ref().map(|l| json!({"content": l.iter().map(TokenLogprob::to_openai).collect::<Vec<_>>()})),
        "finish_reason": d.finish_reason,
    })
}

async fn collect(mut events: ChatStream) -> Result<Vec<ChatEvent>, BackendError> {
    let mut all = Vec::new();
    while let Some(e) = events.recv().await {
        all.push(e?);
    }
    Ok(all)
}

type ToChunk = Arc<dyn Fn(ChatEvent) -> Option<Value> + Send + Sync>;

/// Server-sent events: `opening` chunks, then one chunk per event (usage only if asked),
/// then `[DONE]`. An error mid-stream becomes an OpenAI error object, then the stream ends.
/// Dropping the response (client gone) drops `events`, which cancels generation.
fn sse(
    opening: Vec<Value>,
    events: ChatStream,
    include_usage: bool,
    to_chunk: impl Fn(ChatEvent) -> Option<Value> + Send + Sync + 'static,
) -> Response {
    let to_chunk: ToChunk = Arc::new(to_chunk);
    let head = stream::iter(
        opening
            .into_iter()
            .map(|c| Event::default().data(c.to_string())),
    );
    let body = stream::unfold(Some((events, to_chunk)), move |state| async move {
        let (mut events, to_chunk) = state?;
        loop {
            match events.recv().await {
                None => return Some((Event::default().data("[DONE]"), None)),
                Some(Err(e)) => {
                    let err = json!({"error": {"message": e.to_string(), "type": "server_error"}});
                    return Some((Event::default().data(err.to_string()), None));
                }
                Some(Ok(ChatEvent::Usage(_))) if !include_usage => continue,
                Some(Ok(event)) => {
                    if let Some(c) = to_chunk(event) {
                        return Some((
                            Event::default().data(c.to_string()),
                            Some((events, to_chunk)),
                        ));
                    }
                }
            }
        }
    });
    let all = futures_util::StreamExt::map(
        futures_util::StreamExt::chain(head, body),
        Ok::<_, Infallible>,
    );
    Sse::new(all)
        .keep_alive(KeepAlive::default())
        .into_response()
}

/// `prompt` of `/v1/completions`: a string, a list of token ids, or a list of strings.
fn completion_prompts(state: &AppState, v: &Value) -> Result<Vec<Vec<u32>>, Response> {
    let bad = |m: &str| api_error(StatusCode::BAD_REQUEST, m, Some("prompt"), None);
    let encode =
        |text: &str| {
            state.backend.tokenizer().encode(text, true).map_err(|e| {
                api_error(StatusCode::BAD_REQUEST, e.to_string(), Some("prompt"), None)
            })
        };
    let prompts = match v.get("prompt") {
        Some(Value::String(s)) => vec![encode(s)?],
        Some(Value::Array(items)) if !items.is_empty() && items.iter().all(Value::is_string) => {
            items
                .iter()
                .map(|i| encode(i.as_str().expect("checked")))
                .collect::<Result<_, _>>()?
        }
        Some(Value::Array(items)) if !items.is_empty() && items.iter().all(Value::is_u64) => {
            vec![
                items
                    .iter()
                    .map(|i| i.as_u64().expect("checked") as u32)
                    .collect(),
            ]
        }
        None => return Err(bad("`prompt` is required")),
        _ => {
            return Err(bad(
                "`prompt` must be a string, a list of strings or a list of token ids",
            ));
        }
    };
    if prompts.iter().any(Vec::is_empty) {
        return Err(bad("the prompt is empty"));
    }
    for p in &prompts {
        check_prompt_len(state, p.len())?;
    }
    Ok(prompts)
}

fn legacy_logprobs(l: &[TokenLogprob], offset: &mut usize) -> Value {
    let mut text_offset = Vec::with_capacity(l.len());
    for t in l {
        text_offset.push(*offset);
        *offset += t.token.len();
    }
    json!({
        "tokens": l.iter().map(|t| &t.token).collect::<Vec<_>>(),
        "token_logprobs": l.iter().map(|t| t.logprob).collect::<Vec<_>>(),
        "top_logprobs": l.iter().map(|t| t.top_logprobs.iter().map(|x| (x.token.clone(), json!(x.logprob))).collect::<serde_json::Map<_, _>>()).collect::<Vec<_>>(),
        "text_offset": text_offset,
    })
}

async fn completions(
    State(state): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let (v, stream, include_usage) =
        match parse_request(&state.config, state.backend.model_name(), body) {
            Ok(parsed) => parsed,
            Err(r) => return r,
        };
    if v.get("echo").and_then(Value::as_bool) == Some(true) {
        return api_error(
            StatusCode::BAD_REQUEST,
            "`echo` is not supported",
            Some("echo"),
            None,
        );
    }
    let mut fields = ChatRequest::default();
    if let Err(e) = parse_sampling(&v, &mut fields) {
        return api_error(StatusCode::BAD_REQUEST, e.message, Some(&e.param), None);
    }
    let top_logprobs = match v.get("logprobs") {
        None | Some(Value::Null) => None,
        Some(x) => match x.as_u64() {
            Some(k) if k <= 20 => Some(k as usize),
            _ => {
                return api_error(
                    StatusCode::BAD_REQUEST,
                    "`logprobs` must be an integer from 0 to 20",
                    Some("logprobs"),
                    None,
                );
            }
        },
    };
    let prompts = match completion_prompts(&state, &v) {
        Ok(p) => p,
        Err(r) => return r,
    };
    // OpenAI's default for completions is 16 tokens.
    let max_tokens = fields.max_tokens.or(Some(16));
    let n = fields.n;
    let sampling = SamplingFields::from(&fields);
    let mut streams = Vec::with_capacity(prompts.len());
    for prompt in prompts {
        match state.backend.complete_stream(
            prompt,
            &sampling,
            max_tokens,
            &fields.stop,
            n,
            top_logprobs,
        ) {
            Ok(s) => streams.push(s),
            Err(e) => return backend_error(e),
        }
    }
    // Several prompts: choice index = prompt * n + i (OpenAI's order).
    let choices_total = streams.len() * n;
    let events = merge_prompt_streams(streams, n);
    let id = random_id("cmpl-");
    let model = state.backend.model_name().to_string();
    let created = unix_now();
    if !stream {
        let all = match collect(events).await {
            Ok(a) => a,
            Err(e) => return backend_error(e),
        };
        let response = collect_response(id.clone(), model.clone(), choices_total, all);
        let choices: Vec<Value> = response
            .choices
            .iter()
            .map(|c| {
                json!({"index": c.index, "text": c.message.content.clone().unwrap_or_default(),
                       "logprobs": c.logprobs.as_ref().map(|l| legacy_logprobs(l, &mut 0)),
                       "finish_reason": c.finish_reason})
            })
            .collect();
        return Json(
            json!({"id": id, "object": "text_completion", "created": created, "model": model,
                           "choices": choices, "usage": response.usage.to_openai()}),
        )
        .into_response();
    }
    let offsets = Arc::new(Mutex::new(vec![0usize; choices_total]));
    sse(Vec::new(), events, include_usage, move |event| {
        let mut c =
            json!({"id": id, "object": "text_completion", "created": created, "model": model});
        match event {
            ChatEvent::Delta(d) => {
                let mut offsets = offsets.lock().expect("not poisoned");
                let logprobs = d
                    .logprobs
                    .as_ref()
                    .map(|l| legacy_logprobs(l, &mut offsets[d.index]));
                c["choices"] = json!([{"index": d.index, "text": d.content.unwrap_or_default(), "logprobs": logprobs, "finish_reason": d.finish_reason}]);
            }
            ChatEvent::Usage(u) => {
                c["choices"] = json!([]);
                c["usage"] = u.to_openai();
            }
        }
        Some(c)
    })
}

/// Merges one stream per prompt into one, renumbering choices and summing usage.
fn merge_prompt_streams(streams: Vec<ChatStream>, n: usize) -> ChatStream {
    if streams.len() == 1 {
        return streams.into_iter().next().expect("one stream");
    }
    let (tx, rx) = tokio::sync::mpsc::channel(256);
    tokio::spawn(async move {
        let mut usage = Usage::default();
        for (p, mut s) in streams.into_iter().enumerate() {
            while let Some(e) = s.recv().await {
                let e = match e {
                    Ok(ChatEvent::Usage(u)) => {
                        usage.prompt_tokens += u.prompt_tokens;
                        usage.completion_tokens += u.completion_tokens;
                        continue;
                    }
                    Ok(ChatEvent::Delta(mut d)) => {
                        d.index += p * n;
                        Ok(ChatEvent::Delta(d))
                    }
                    Err(e) => Err(e),
                };
                if tx.send(e).await.is_err() {
                    return;
                }
            }
        }
        let _ = tx.send(Ok(ChatEvent::Usage(usage))).await;
    });
    rx
}

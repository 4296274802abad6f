//! QwenLong-CPRS over HTTP, in two shapes:
//!
//! - `POST /qwen_long_compress_server`: the released server (`src/api_utils/run_api.py`) as
//!   its client `examples/infer.py` calls it. The request envelope is
//!   `{"header": {"request_id"}, "payload": {"input": {"messages"}, "parameters"}}`; the answer
//!   is that same envelope with `payload.output.text`, `payload.usage.input_tokens` and
//!   `header.status_code` / `status_name` / `status_message` / `finished` filled in. As
//!   released, errors come back in the envelope with HTTP 200: `SchemaError` (440) for a wrong
//!   envelope or message list, `InvalidInputError` (400) for bad parameters or input,
//!   `BackendError` (500) for a failure of the model, each with `payload.output =
//!   {"is_match": false}` and `payload.usage` of -1; a body that is not a JSON object gets
//!   HTTP 400 with an envelope of its own. `chunk_size` (which infer.py sends) is ignored there
//!   too.
//! - `POST /v1/compress`: the same request flattened (`messages`, `parameters`), answering
//!   `{"text": [...]}` (or `[text, start, end]` triples) and `usage.input_tokens = P·windows + N`,
//!   plus our `compression` accounting, with OpenAI-shaped errors.
//!
//! Parameters (both shapes): `min_keyword_len`, `complete_sentence`, `split_with_sent`,
//! `return_offset`, `batch_size`, and our `fixed_repair`. Windows are the released 8192 tokens,
//! or the compressor's context when that is shorter (a small compressor would otherwise reject
//! every long request).

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use qforge_compress::model::Compressor;
use qforge_compress::pipeline::{CompressOptions, compress};
use qforge_compress::postprocess::Repair;
use serde_json::{Value, json};

use crate::admission::{Admission, Refusal};
use crate::{ServerConfig, api_error, parse_body};

/// The served compressor.
#[derive(Clone)]
pub struct CompressState {
    name: String,
    compressor: Arc<Compressor>,
    /// Tokens per window: the released 8192, or the compressor's context when shorter.
    window: usize,
}

impl CompressState {
    pub fn new(name: String, compressor: Compressor) -> Self {
        let window = CompressOptions::default()
            .window
            .min(compressor.model.config().max_position_embeddings);
        Self {
            name,
            compressor: Arc::new(compressor),
            window,
        }
    }
}

/// Why a compression request failed: the request's fault (naming the field) or the server's.
/// Each route renders it in its own shape.
enum Failure {
    BadRequest {
        message: String,
        param: String,
    },
    /// The admission gate turned it away (busy: 429; too many items: 400).
    Refused(Refusal),
    Server(String),
}

impl From<Refusal> for Failure {
    fn from(r: Refusal) -> Self {
        Failure::Refused(r)
    }
}

impl Failure {
    fn bad(message: impl Into<String>, param: &str) -> Self {
        Failure::BadRequest {
            message: message.into(),
            param: param.into(),
        }
    }

    fn message(&self) -> &str {
        match self {
            Failure::BadRequest { message, .. } | Failure::Server(message) => message,
            Failure::Refused(r) => &r.message,
        }
    }

    /// The OpenAI-shaped error of `/v1/compress`.
    fn openai(&self) -> Response {
        match self {
            Failure::BadRequest { message, param } => {
                api_error(StatusCode::BAD_REQUEST, message, Some(param), None)
            }
            Failure::Refused(r) => r.openai(),
            Failure::Server(message) => {
                api_error(StatusCode::INTERNAL_SERVER_ERROR, message, None, None)
            }
        }
    }
}

/// (instruction, query, context) from the three messages, roles checked (each of them: the
/// released check only fails when all three are wrong).
fn request_parts(v: &Value) -> Result<(String, String, String), Failure> {
    let messages = v["messages"]
        .as_array()
        .filter(|m| m.len() == 3)
        .ok_or_else(|| {
            Failure::bad(
                "`messages` must be three messages: system, user, context",
                "messages",
            )
        })?;
    let mut parts = Vec::new();
    for (m, role) in messages.iter().zip(["system", "user", "context"]) {
        if m["role"] != role {
            return Err(Failure::bad(
                format!(
                    "message roles must be system, user, context (got `{}` for {role})",
                    m["role"]
                ),
                "messages",
            ));
        }
        let content = m["content"].as_str().ok_or_else(|| {
            Failure::bad(
                format!("the {role} message's content must be a string"),
                "messages",
            )
        })?;
        parts.push(content.to_string());
    }
    let context = parts.pop().expect("three");
    let query = parts.pop().expect("two");
    Ok((parts.pop().expect("one"), query, context))
}

fn options(p: &Value, window: usize) -> Result<(CompressOptions, bool), Failure> {
    let flag = |name: &str, default: bool| match &p[name] {
        Value::Null => Ok(default),
        Value::Bool(b) => Ok(*b),
        _ => Err(Failure::bad(
            format!("`{name}` must be true or false"),
            name,
        )),
    };
    let count = |name: &str, default: usize| match &p[name] {
        Value::Null => Ok(default),
        v => v
            .as_u64()
            .map(|n| n as usize)
            .ok_or_else(|| Failure::bad(format!("`{name}` must be a non-negative integer"), name)),
    };
    Ok((
        CompressOptions {
            window,
            min_keyword_len: count("min_keyword_len", 4)?,
            complete_sentence: flag("complete_sentence", false)?,
            split_with_sent: flag("split_with_sent", true)?,
            batch: count("batch_size", 1)?.max(1),
            repair: if flag("fixed_repair", false)? {
                Repair::Fixed
            } else {
                Repair::Released
            },
            ..CompressOptions::default()
        },
        flag("return_offset", false)?,
    ))
}

/// Runs the pipeline off the async runtime once the gate admits it (input it refuses is the
/// request's fault, anything else the server's).
async fn run(
    admission: &Admission,
    state: &CompressState,
    (instruction, query, context): (String, String, String),
    options: CompressOptions,
) -> Result<qforge_compress::pipeline::Compressed, Failure> {
    let _slot = admission.admit(options.batch, "batch_size").await?;
    let compressor = state.compressor.clone();
    match tokio::task::spawn_blocking(move || {
        compress(&compressor, &instruction, &query, &context, &options)
    })
    .await
    {
        Ok(Ok(out)) => Ok(out),
        Ok(Err(e)) if e.is_bad_input() => Err(Failure::bad(e.to_string(), "messages")),
        Ok(Err(e)) => Err(Failure::Server(e.to_string())),
        Err(e) => Err(Failure::Server(e.to_string())),
    }
}

fn span_values(out: &qforge_compress::pipeline::Compressed, return_offset: bool) -> Vec<Value> {
    out.spans
        .iter()
        .map(|s| {
            if return_offset {
                json!([s.text, s.start, s.end])
            } else {
                json!(s.text)
            }
        })
        .collect()
}

/// The message of an OpenAI-shaped error response (a body `parse_body` refused, for the
/// released envelope).
async fn error_message(r: Response) -> String {
    let bytes = axum::body::to_bytes(r.into_body(), 1 << 20)
        .await
        .unwrap_or_default();
    serde_json::from_slice::<Value>(&bytes)
        .ok()
        .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
        .unwrap_or_else(|| String::from_utf8_lossy(&bytes).into_owned())
}

/// `POST /v1/compress`.
pub async fn handle(
    config: &ServerConfig,
    admission: &Admission,
    state: &CompressState,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let v = match parse_body(config, &state.name, body) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let compressed = async {
        let parts = request_parts(&v)?;
        let (options, return_offset) = options(&v["parameters"], state.window)?;
        Ok::<_, Failure>((run(admission, state, parts, options).await?, return_offset))
    };
    match compressed.await {
        Ok((out, return_offset)) => Json(json!({
            "model": state.name,
            "text": span_values(&out, return_offset),
            "usage": {"input_tokens": out.input_tokens},
            "compression": {"windows": out.windows, "context_tokens": out.context_tokens,
                            "kept_tokens": out.kept_tokens, "ratio": out.ratio},
        }))
        .into_response(),
        Err(failure) => failure.openai(),
    }
}

/// The released envelope with an error status (run_api.py's `except` branch).
fn released_error(mut data: Value, code: u16, name: &str, message: &str) -> Response {
    if !data.is_object() {
        data = json!({});
    }
    if !data["header"].is_object() {
        data["header"] = json!({});
    }
    if !data["payload"].is_object() {
        data["payload"] = json!({});
    }
    data["header"]["status_code"] = json!(code);
    data["header"]["status_name"] = json!(name);
    data["header"]["status_message"] = json!(message);
    data["payload"]["output"] = json!({"is_match": false});
    data["payload"]["usage"] = json!({"input_tokens": -1, "output_tokens": -1});
    Json(data).into_response()
}

/// `POST /qwen_long_compress_server`: the released route and envelope (see the module docs).
pub async fn handle_released(
    config: &ServerConfig,
    admission: &Admission,
    state: &CompressState,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let mut data = match parse_body(config, &state.name, body) {
        Ok(v) => v,
        Err(r) => {
            let status = r.status();
            let message = error_message(r).await;
            let mut r = released_error(json!({}), 400, "InvalidInputError", &message);
            *r.status_mut() = status;
            return r;
        }
    };
    if !data["header"]["request_id"].is_string() {
        return released_error(
            data,
            440,
            "SchemaError",
            "`header.request_id` must be a string",
        );
    }
    let parts = match request_parts(&data["payload"]["input"]) {
        Ok(p) => p,
        Err(f) => {
            let message = format!("payload.input: {}", f.message());
            return released_error(data, 440, "SchemaError", &message);
        }
    };
    let parameters = match &data["payload"]["parameters"] {
        Value::Null => json!({}),
        p @ Value::Object(_) => p.clone(),
        _ => {
            return released_error(
                data,
                440,
                "SchemaError",
                "`payload.parameters` must be an object",
            );
        }
    };
    let (options, return_offset) = match options(&parameters, state.window) {
        Ok(o) => o,
        Err(f) => {
            let message = format!("payload.parameters: {}", f.message());
            return released_error(data, 400, "InvalidInputError", &message);
        }
    };
    match run(admission, state, parts, options).await {
        Ok(out) => {
            data["payload"]["output"] = json!({"text": span_values(&out, return_offset)});
            data["payload"]["usage"] = json!({"input_tokens": out.input_tokens});
            data["header"]["status_code"] = json!(200);
            data["header"]["status_name"] = json!("Success");
            data["header"]["status_message"] = json!("Success");
            data["header"]["finished"] = json!(true);
            Json(data).into_response()
        }
        Err(f @ Failure::BadRequest { .. }) => {
            released_error(data, 400, "InvalidInputError", f.message())
        }
        // Not a released status: the released server has no queue to be full.
        Err(Failure::Refused(r)) if r.status == StatusCode::TOO_MANY_REQUESTS => {
            released_error(data, 429, "TooManyRequests", &r.message)
        }
        Err(Failure::Refused(r)) => released_error(data, 400, "InvalidInputError", &r.message),
        Err(f @ Failure::Server(_)) => released_error(data, 500, "BackendError", f.message()),
    }
}

/// `qforge compress proxy`: long contexts compressed before the upstream sees them; the
/// accounting goes in `x-qforge-compress`.
#[async_trait::async_trait]
impl crate::proxy::ProxyBackend for qforge_compress::middleware::CompressingBackend {
    fn model_name(&self) -> &str {
        qforge_engine::ChatBackend::model_name(self)
    }

    fn owned_by(&self) -> &str {
        "qforge-compress-proxy"
    }

    async fn proxy(
        &self,
        request: qforge_engine::ChatRequest,
    ) -> Result<(qforge_engine::ChatStream, Vec<(&'static str, String)>), qforge_engine::BackendError>
    {
        let (stream, compressed) = self.chat_stream_compressed(request).await?;
        Ok((
            stream,
            vec![(
                "x-qforge-compress",
                qforge_compress::middleware::header_value(compressed.as_ref()),
            )],
        ))
    }
}

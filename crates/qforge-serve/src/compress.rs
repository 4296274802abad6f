//! `POST /v1/compress`: QwenLong-CPRS over HTTP in the released server's request shape
//! (`messages` = system instruction, user query, `context`; `parameters` with
//! `min_keyword_len`, `complete_sentence`, `split_with_sent`, `return_offset`, `batch_size`),
//! answering `{"text": [...]}` (or `[text, start, end]` triples) and
//! `usage.input_tokens = P·windows + N`, plus our `compression` accounting.

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

use crate::{ServerConfig, api_error, parse_body};

/// The served compressor.
#[derive(Clone)]
pub struct CompressState {
    name: String,
    compressor: Arc<Compressor>,
}

impl CompressState {
    pub fn new(name: String, compressor: Compressor) -> Self {
        Self {
            name,
            compressor: Arc::new(compressor),
        }
    }
}

fn bad(message: &str, param: &str) -> Response {
    api_error(StatusCode::BAD_REQUEST, message, Some(param), None)
}

/// (instruction, query, context) from the three messages, roles checked (each of them: the
/// released check only fails when all three are wrong).
fn request_parts(v: &Value) -> Result<(String, String, String), Response> {
    let messages = v["messages"]
        .as_array()
        .filter(|m| m.len() == 3)
        .ok_or_else(|| {
            bad(
                "`messages` must be three messages: system, user, context",
                "messages",
            )
        })?;
    let mut parts = Vec::new();
    for (m, role) in messages.iter().zip(["system", "user", "context"]) {
        if m["role"] != role {
            return Err(bad(
                &format!(
                    "message roles must be system, user, context (got `{}` for {role})",
                    m["role"]
                ),
                "messages",
            ));
        }
        let content = m["content"].as_str().ok_or_else(|| {
            bad(
                &format!("the {role} message's content must be a string"),
                "messages",
            )
        })?;
        parts.push(content.to_string());
    }
    let context = parts.pop().expect("three");
    let query = parts.pop().expect("two");
    Ok((parts.pop().expect("one"), query, context))
}

fn options(p: &Value) -> Result<(CompressOptions, bool), Response> {
    let flag = |name: &str, default: bool| match &p[name] {
        Value::Null => Ok(default),
        Value::Bool(b) => Ok(*b),
        _ => Err(bad(&format!("`{name}` must be true or false"), name)),
    };
    let count = |name: &str, default: usize| match &p[name] {
        Value::Null => Ok(default),
        v => v
            .as_u64()
            .map(|n| n as usize)
            .ok_or_else(|| bad(&format!("`{name}` must be a non-negative integer"), name)),
    };
    Ok((
        CompressOptions {
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

/// `POST /v1/compress`.
pub async fn handle(
    config: &ServerConfig,
    state: &CompressState,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let v = match parse_body(config, &state.name, body) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let (instruction, query, context) = match request_parts(&v) {
        Ok(p) => p,
        Err(r) => return r,
    };
    let (options, return_offset) = match options(&v["parameters"]) {
        Ok(o) => o,
        Err(r) => return r,
    };
    let compressor = state.compressor.clone();
    let result = tokio::task::spawn_blocking(move || {
        compress(&compressor, &instruction, &query, &context, &options)
    })
    .await;
    match result {
        Ok(Ok(out)) => {
            let text: Vec<Value> = out
                .spans
                .iter()
                .map(|s| {
                    if return_offset {
                        json!([s.text, s.start, s.end])
                    } else {
                        json!(s.text)
                    }
                })
                .collect();
            Json(json!({
                "model": state.name,
                "text": text,
                "usage": {"input_tokens": out.input_tokens},
                "compression": {"windows": out.windows, "context_tokens": out.context_tokens,
                                "kept_tokens": out.kept_tokens, "ratio": out.ratio},
            }))
            .into_response()
        }
        Ok(Err(e)) => api_error(
            StatusCode::BAD_REQUEST,
            e.to_string(),
            Some("messages"),
            None,
        ),
        Err(e) => api_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string(), None, None),
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

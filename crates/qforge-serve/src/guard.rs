//! Qwen3Guard over HTTP: the moderation endpoints (`POST /v1/moderations` in OpenAI's shape,
//! `POST /v1/guard/moderate` with the native verdicts) and the guarded chat proxy.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use qforge_engine::chat::{ChatRequest, random_id, unix_now};
use qforge_engine::{BackendError, ChatBackend, ChatStream};
use qforge_guard::proxy::{GuardedBackend, PromptAction};
use qforge_guard::{Category, GenGuard, GenOutcome, Policy, SafetyProbs};
use serde_json::{Value, json};

use crate::admission::Admission;
use crate::proxy::ProxyBackend;
use crate::{ServerConfig, api_error, parse_body};

/// OpenAI moderation categories, in the order OpenAI lists them.
pub const OPENAI_CATEGORIES: [&str; 13] = [
    "harassment",
    "harassment/threatening",
    "hate",
    "hate/threatening",
    "illicit",
    "illicit/violent",
    "self-harm",
    "self-harm/intent",
    "self-harm/instructions",
    "sexual",
    "sexual/minors",
    "violence",
    "violence/graphic",
];

/// The OpenAI categories a Qwen3Guard category stands for. PII, politically sensitive topics,
/// copyright and jailbreaks have no OpenAI counterpart: they show only in `qwen3guard`.
pub fn openai_categories(c: Category) -> &'static [&'static str] {
    match c {
        Category::Violent => &["violence"],
        Category::NonViolentIllegalActs => &["illicit"],
        Category::SexualContent => &["sexual"],
        Category::SuicideSelfHarm => &["self-harm"],
        Category::UnethicalActs => &["hate", "harassment"],
        Category::Pii
        | Category::PoliticallySensitive
        | Category::CopyrightViolation
        | Category::Jailbreak => &[],
    }
}

/// One moderation result in OpenAI's shape, with the native verdict under `qwen3guard`.
pub fn openai_result(outcome: &GenOutcome, probs: &SafetyProbs, policy: Policy) -> Value {
    let verdict = outcome.verdict();
    // Unparsable output is not silently safe: the fast-path severity decides then.
    let flagged = match verdict {
        Some(v) => v.is_flagged(policy),
        None => probs.argmax().is_flagged(policy),
    };
    let harmful = probs.unsafe_
        + if policy == Policy::Strict {
            probs.controversial
        } else {
            0.0
        };
    let mut categories = serde_json::Map::new();
    let mut scores = serde_json::Map::new();
    for key in OPENAI_CATEGORIES {
        let hit = verdict.is_some_and(|v| {
            v.categories
                .iter()
                .any(|c| openai_categories(*c).contains(&key))
        });
        categories.insert(key.into(), json!(flagged && hit));
        scores.insert(key.into(), json!(if hit { harmful } else { 0.0 }));
    }
    json!({
        "flagged": flagged,
        "categories": categories,
        "category_scores": scores,
        "qwen3guard": {"outcome": outcome, "probabilities": probs},
    })
}

/// The moderation half of [`crate::AppState`].
#[derive(Clone)]
pub struct ModerationState {
    pub guard: Arc<GenGuard>,
    pub model: String,
    pub policy: Policy,
}

/// Runs the guard on `conversations` once the gate admits the job: input the guard refuses is
/// a 400, anything else a 500.
async fn run_guard(
    admission: &Admission,
    state: &ModerationState,
    conversations: Vec<Vec<Value>>,
    param: &str,
) -> Result<(Vec<GenOutcome>, Vec<SafetyProbs>), Response> {
    let _slot = admission
        .admit(conversations.len(), param)
        .await
        .map_err(|r| r.openai())?;
    let guard = state.guard.clone();
    tokio::task::spawn_blocking(move || {
        let outcomes = guard.moderate(&conversations)?;
        let probs = guard.safety_probs(&conversations)?;
        Ok::<_, qforge_guard::GuardError>((outcomes, probs))
    })
    .await
    .map_err(|e| api_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string(), None, None))?
    .map_err(|e| {
        let status = if e.is_bad_input() {
            StatusCode::BAD_REQUEST
        } else {
            StatusCode::INTERNAL_SERVER_ERROR
        };
        api_error(status, e.to_string(), None, None)
    })
}

/// `POST /v1/moderations`: `input` is a string or a list of strings (each a user prompt).
pub(crate) async fn moderations(
    config: &ServerConfig,
    admission: &Admission,
    state: &ModerationState,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let v = match parse_body(config, &state.model, body) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let inputs: Vec<String> = match &v["input"] {
        Value::String(s) => vec![s.clone()],
        Value::Array(a) if !a.is_empty() && a.iter().all(Value::is_string) => a
            .iter()
            .map(|s| s.as_str().unwrap_or_default().to_string())
            .collect(),
        _ => {
            return api_error(
                StatusCode::BAD_REQUEST,
                "`input` must be a string or a non-empty list of strings (images are not supported)",
                Some("input"),
                None,
            );
        }
    };
    let conversations = inputs
        .iter()
        .map(|text| vec![json!({"role": "user", "content": text})])
        .collect();
    let (outcomes, probs) = match run_guard(admission, state, conversations, "input").await {
        Ok(r) => r,
        Err(r) => return r,
    };
    let results: Vec<Value> = outcomes
        .iter()
        .zip(&probs)
        .map(|(o, p)| openai_result(o, p, state.policy))
        .collect();
    Json(json!({"id": random_id("modr-"), "model": state.model, "results": results}))
        .into_response()
}

/// `POST /v1/guard/moderate`: `{"messages": [...]}` or `{"conversations": [[...], ...]}`; the
/// last message's role picks prompt or response moderation.
pub(crate) async fn native_moderate(
    config: &ServerConfig,
    admission: &Admission,
    state: &ModerationState,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let v = match parse_body(config, &state.model, body) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let conversations: Vec<Vec<Value>> = match (&v["messages"], &v["conversations"]) {
        (Value::Array(m), Value::Null) if !m.is_empty() => vec![m.clone()],
        (Value::Null, Value::Array(c))
            if !c.is_empty()
                && c.iter()
                    .all(|m| m.as_array().is_some_and(|m| !m.is_empty())) =>
        {
            c.iter()
                .map(|m| m.as_array().cloned().unwrap_or_default())
                .collect()
        }
        _ => {
            return api_error(
                StatusCode::BAD_REQUEST,
                "give `messages` (a non-empty list) or `conversations` (a list of them)",
                Some("messages"),
                None,
            );
        }
    };
    let (outcomes, probs) = match run_guard(admission, state, conversations, "conversations").await
    {
        Ok(r) => r,
        Err(r) => return r,
    };
    let results: Vec<Value> = outcomes
        .iter()
        .zip(&probs)
        .map(|(o, p)| {
            json!({
                "outcome": o,
                "probabilities": p,
                "flagged": {
                    "strict": o.verdict().map_or(p.argmax().is_flagged(Policy::Strict), |v| v.is_flagged(Policy::Strict)),
                    "loose": o.verdict().map_or(p.argmax().is_flagged(Policy::Loose), |v| v.is_flagged(Policy::Loose)),
                },
            })
        })
        .collect();
    Json(json!({"model": state.model, "created": unix_now(), "results": results})).into_response()
}

/// `qforge guard proxy`: prompts moderated (blocked or passed), replies streamed through the
/// stream guard; the prompt verdict goes in `x-qforge-guard-prompt`.
#[async_trait::async_trait]
impl ProxyBackend for GuardedBackend {
    fn model_name(&self) -> &str {
        ChatBackend::model_name(self)
    }

    fn owned_by(&self) -> &str {
        "qforge-guard-proxy"
    }

    async fn proxy(
        &self,
        request: ChatRequest,
    ) -> Result<(ChatStream, Vec<(&'static str, String)>), BackendError> {
        let check = self.check_prompt(&request).await?;
        let events = if check.flagged && self.config().prompt_action == PromptAction::Block {
            self.refusal_stream(request.n)
        } else {
            self.stream_moderated(request).await?
        };
        Ok((events, vec![("x-qforge-guard-prompt", check.header())]))
    }
}

//! A Bradley-Terry reward model over HTTP, in vLLM's pooling shape (`POST /pooling`, as
//! `vllm serve <reward model>` answers it): a conversation (`messages`, rendered with the reward
//! model's own chat template) or already-rendered text (`input`, one string or a list) in, one
//! score per input out (`data[i].data = [score]`). Trainers that retrain the reward model push
//! it through `/update_weights_from_disk` like a policy.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use candle_core::{DType, Device};
use qforge_engine::chat::{random_id, unix_now};
use qforge_model::RewardModel;
use serde_json::{Value, json};

use crate::admission::Admission;
use crate::{ServerConfig, api_error, parse_body};

/// The served reward model; replaced whole on reload.
#[derive(Clone)]
pub struct RewardState {
    name: String,
    model: Arc<RwLock<Arc<RewardModel>>>,
}

impl RewardState {
    pub fn load(name: String, dir: &Path) -> qforge_model::Result<Self> {
        let model = RewardModel::load(dir, DType::F32, &Device::Cpu)?;
        Ok(Self {
            name,
            model: Arc::new(RwLock::new(Arc::new(model))),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    fn current(&self) -> Arc<RewardModel> {
        self.model.read().expect("reward model lock").clone()
    }

    /// Loads the reward model in `dir` in place of the served one (after checking it loads).
    pub fn reload(&self, dir: &Path) -> qforge_model::Result<()> {
        let model = RewardModel::load(dir, DType::F32, &Device::Cpu)?;
        *self.model.write().expect("reward model lock") = Arc::new(model);
        Ok(())
    }
}

/// Whether `dir` holds a reward model (a `score` head) rather than a causal LM.
pub fn is_reward_checkpoint(dir: &Path) -> bool {
    qforge_model::weights::WeightStore::open_dir(dir).is_ok_and(|s| s.contains("score.weight"))
}

enum Inputs {
    Conversation(Vec<Value>),
    Texts(Vec<String>),
}

fn inputs(v: &Value) -> Result<Inputs, Response> {
    let bad = |m: &str, param: &str| api_error(StatusCode::BAD_REQUEST, m, Some(param), None);
    if let Some(m) = v.get("messages") {
        let messages = m
            .as_array()
            .filter(|a| !a.is_empty())
            .ok_or_else(|| bad("`messages` must be a non-empty array", "messages"))?;
        return Ok(Inputs::Conversation(messages.clone()));
    }
    match v.get("input") {
        Some(Value::String(s)) => Ok(Inputs::Texts(vec![s.clone()])),
        Some(Value::Array(a)) if !a.is_empty() => a
            .iter()
            .map(|x| x.as_str().map(str::to_string))
            .collect::<Option<Vec<_>>>()
            .map(Inputs::Texts)
            .ok_or_else(|| bad("`input` must be a string or a list of strings", "input")),
        _ => Err(bad(
            "give `messages` (one conversation) or `input` (text or a list of texts)",
            "input",
        )),
    }
}

/// `POST /pooling`.
pub async fn pooling(
    config: &ServerConfig,
    admission: &Admission,
    state: &RewardState,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let v = match parse_body(config, &state.name, body) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let inputs = match inputs(&v) {
        Ok(i) => i,
        Err(r) => return r,
    };
    let count = match &inputs {
        Inputs::Conversation(_) => 1,
        Inputs::Texts(texts) => texts.len(),
    };
    let _slot = match admission.admit(count, "input").await {
        Ok(slot) => slot,
        Err(r) => return r.openai(),
    };
    let model = state.current();
    let scored = tokio::task::spawn_blocking(move || {
        let tok = model.tokenizer().clone();
        let seqs = match inputs {
            Inputs::Conversation(messages) => {
                let text = tok.apply_chat_template(&messages, &Default::default())?;
                vec![tok.encode(&text, false)?]
            }
            Inputs::Texts(texts) => texts
                .iter()
                .map(|t| tok.encode(t, false))
                .collect::<qforge_model::Result<_>>()?,
        };
        let tokens: usize = seqs.iter().map(Vec::len).sum();
        Ok::<_, qforge_model::ModelError>((model.score_ids(&seqs, 8)?, tokens))
    })
    .await;
    match scored {
        Ok(Ok((scores, tokens))) => Json(json!({
            "id": random_id("pool-"),
            "object": "list",
            "created": unix_now(),
            "model": state.name,
            "data": scores.iter().enumerate()
                .map(|(i, s)| json!({"index": i, "object": "pooling", "data": [s]}))
                .collect::<Vec<_>>(),
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens, "completion_tokens": 0},
        }))
        .into_response(),
        Ok(Err(e)) => api_error(StatusCode::BAD_REQUEST, e.to_string(), None, None),
        Err(e) => api_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string(), None, None),
    }
}

/// Reloads the reward model from `path` for `/update_weights_from_disk`.
pub async fn reload(state: &RewardState, path: PathBuf) -> Response {
    let shown = path.display().to_string();
    let state = state.clone();
    match tokio::task::spawn_blocking(move || state.reload(&path)).await {
        Ok(Ok(())) => Json(
            json!({"success": true, "message": format!("loaded the reward model from {shown}")}),
        )
        .into_response(),
        Ok(Err(e)) => (
            StatusCode::BAD_REQUEST,
            Json(json!({"success": false, "message": format!("{shown}: {e}")})),
        )
            .into_response(),
        Err(e) => api_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string(), None, None),
    }
}

//! OpenAI-compatible chat proxies: `POST /v1/chat/completions`, `GET /v1/models` and
//! `GET /health` in front of a [`ProxyBackend`], which may rewrite the request, answer itself,
//! and add response headers (the guard proxy's verdict, the compression middleware's ratio).

use std::future::Future;
use std::sync::Arc;

use async_trait::async_trait;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Json, Router};
use qforge_engine::chat::{ChatRequest, unix_now};
use qforge_engine::{BackendError, ChatStream};
use serde_json::json;

use crate::{ServerConfig, api_error, backend_error, chat_response, check_api_key, parse_request};

/// What a proxy does with one chat request.
#[async_trait]
pub trait ProxyBackend: Send + Sync {
    /// The model name clients see.
    fn model_name(&self) -> &str;
    /// Who owns the model in `/v1/models`.
    fn owned_by(&self) -> &str;
    /// The reply's events and the headers to add to the response.
    async fn proxy(
        &self,
        request: ChatRequest,
    ) -> Result<(ChatStream, Vec<(&'static str, String)>), BackendError>;
}

#[derive(Clone)]
pub struct ProxyState {
    pub backend: Arc<dyn ProxyBackend>,
    pub config: Arc<ServerConfig>,
}

pub fn proxy_router(state: ProxyState) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(proxy_chat))
        .route(
            "/v1/models",
            get(|State(s): State<ProxyState>| async move {
                Json(json!({"object": "list", "data": [{
                    "id": s.backend.model_name(), "object": "model", "created": unix_now(),
                    "owned_by": s.backend.owned_by()}]}))
            }),
        )
        .route("/health", get(|| async { Json(json!({"status": "ok"})) }))
        .fallback(|| async { api_error(StatusCode::NOT_FOUND, "no such route", None, None) })
        .layer(axum::extract::DefaultBodyLimit::max(
            state.config.max_body_bytes,
        ))
        .with_state(state)
}

pub async fn serve_proxy(
    listener: tokio::net::TcpListener,
    state: ProxyState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, proxy_router(state))
        .with_graceful_shutdown(shutdown)
        .await
}

/// Serves a proxy on a loopback port in the background; returns its base URL (`…/v1`).
pub async fn spawn_proxy_on_loopback(state: ProxyState) -> std::io::Result<String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/v1", listener.local_addr()?);
    tokio::spawn(async move {
        let _ = axum::serve(listener, proxy_router(state)).await;
    });
    Ok(url)
}

async fn proxy_chat(
    State(state): State<ProxyState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    if let Err(r) = check_api_key(&state.config, &headers) {
        return r;
    }
    let model = state.backend.model_name().to_string();
    let (v, stream, include_usage) = match parse_request(&state.config, &model, body) {
        Ok(p) => p,
        Err(r) => return r,
    };
    let request = match ChatRequest::from_openai(&v) {
        Ok(r) => r,
        Err(e) => return api_error(StatusCode::BAD_REQUEST, e.message, Some(&e.param), None),
    };
    let n = request.n;
    let (events, extra) = match state.backend.proxy(request).await {
        Ok(r) => r,
        Err(e) => return backend_error(e),
    };
    let mut response = chat_response(events, model, n, stream, include_usage).await;
    for (name, value) in extra {
        if let Ok(v) = HeaderValue::from_str(&value) {
            response
                .headers_mut()
                .insert(HeaderName::from_static(name), v);
        }
    }
    response
}

/// Any [`qforge_engine::ChatBackend`] served as is (a judge or simulator over HTTP).
pub struct ChatProxy(pub Arc<dyn qforge_engine::ChatBackend>);

#[async_trait]
impl ProxyBackend for ChatProxy {
    fn model_name(&self) -> &str {
        self.0.model_name()
    }

    fn owned_by(&self) -> &str {
        "qforge"
    }

    async fn proxy(
        &self,
        request: ChatRequest,
    ) -> Result<(ChatStream, Vec<(&'static str, String)>), BackendError> {
        Ok((self.0.chat_stream(request).await?, Vec::new()))
    }
}

//! The chat-completions middleware on loopback: a compressing proxy in front of a real
//! OpenAI-compatible server (the embedded engine serving the tiny model), with the trained tiny
//! compressor (tools/fixtures/gen_cprs_trained.sh). The long context reaches the upstream as
//! the kept needle; short requests pass through untouched; a context too long for the upstream
//! fits once compressed.

use std::path::PathBuf;
use std::sync::Arc;

use qforge_compress::middleware::{CompressingBackend, MiddlewareConfig};
use qforge_compress::model::Compressor;
use qforge_compress::synthetic::{NIAH_INSTRUCTION, NOISE};
use qforge_engine::{ChatRequest, RemoteBackend, RemoteConfig};
use qforge_serve::proxy::{ProxyState, spawn_proxy_on_loopback};
use serde_json::{Value, json};

fn root() -> PathBuf {
    qforge_testkit::repo_root()
}

const NEEDLE: &str = "One of the special magic numbers for quiet-lantern is: 4072913.";
const QUESTION: &str =
    "What is the special magic number for quiet-lantern mentioned in the provided text?";

/// `lines` noise lines with the needle after `at` of them.
fn haystack(lines: usize, at: usize) -> String {
    let mut parts = vec![NOISE; lines];
    parts.insert(at, NEEDLE);
    parts.join(" ")
}

struct Servers {
    upstream: String,
    proxy: String,
    backend: Arc<CompressingBackend>,
}

async fn servers() -> Servers {
    let model = root().join("tools/fixtures/model/qwen3_tied_gqa");
    let upstream = tokio::task::spawn_blocking(move || {
        let state =
            qforge_serve::AppState::for_checkpoint("tiny", &model, Default::default()).unwrap();
        qforge_serve::spawn_on_loopback(state).unwrap()
    })
    .await
    .unwrap();
    let compressor = Compressor::load(
        &root().join("tools/fixtures/cprs/needle_compressor"),
        candle_core::DType::F32,
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let remote = RemoteBackend::new(RemoteConfig::new(&upstream, "tiny")).unwrap();
    let backend = Arc::new(CompressingBackend::new(
        Arc::new(remote),
        Arc::new(compressor),
        MiddlewareConfig {
            instruction: NIAH_INSTRUCTION.into(),
            min_tokens: 300,
            options: qforge_compress::pipeline::CompressOptions {
                window: 512,
                batch: 2,
                ..Default::default()
            },
        },
    ));
    let proxy = spawn_proxy_on_loopback(ProxyState {
        backend: backend.clone(),
        config: Arc::new(Default::default()),
    })
    .await
    .unwrap();
    Servers {
        upstream,
        proxy,
        backend,
    }
}

async fn chat(url: &str, messages: Value) -> (u16, Option<String>, Value) {
    let r = reqwest::Client::new()
        .post(format!("{url}/chat/completions"))
        .json(&json!({"model": "tiny", "messages": messages, "max_tokens": 4, "temperature": 0}))
        .send()
        .await
        .unwrap();
    let header = r
        .headers()
        .get("x-qforge-compress")
        .map(|h| h.to_str().unwrap().to_string());
    (r.status().as_u16(), header, r.json().await.unwrap())
}

fn ratio(header: &str) -> f64 {
    header
        .split("ratio=")
        .nth(1)
        .unwrap()
        .parse()
        .unwrap_or(f64::INFINITY)
}

#[tokio::test]
async fn a_long_user_message_reaches_the_upstream_as_the_kept_needle() {
    let s = servers().await;
    let messages = json!([
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": format!("{}\n\n{QUESTION}", haystack(10, 4))}
    ]);
    let rewritten = s
        .backend
        .rewrite(ChatRequest::from_openai(&json!({"messages": messages})).unwrap())
        .await
        .unwrap();
    assert_eq!(
        rewritten.request.messages,
        vec![
            json!({"role": "system", "content": "Answer briefly."}),
            json!({"role": "system", "content": format!("Doc content:\n\n{NEEDLE}")}),
            json!({"role": "user", "content": QUESTION}),
        ]
    );
    let (status, header, proxied) = chat(&s.proxy, messages.clone()).await;
    assert_eq!(status, 200, "{proxied}");
    let header = header.unwrap();
    assert!(ratio(&header) > 10.0, "{header}");
    let (direct_status, _, direct) = chat(&s.upstream, messages).await;
    assert_eq!(direct_status, 200, "{direct}");
    let (short, long) = (
        proxied["usage"]["prompt_tokens"].as_u64().unwrap(),
        direct["usage"]["prompt_tokens"].as_u64().unwrap(),
    );
    assert!(
        short * 3 < long,
        "{short} prompt tokens through the proxy, {long} direct"
    );
}

#[tokio::test]
async fn a_context_role_message_is_compressed_and_short_requests_pass_through() {
    let s = servers().await;
    let rewritten = s
        .backend
        .rewrite(
            ChatRequest::from_openai(&json!({"messages": [
                {"role": "context", "content": haystack(8, 7)},
                {"role": "user", "content": QUESTION}
            ]}))
            .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(
        rewritten.request.messages[0],
        json!({"role": "system", "content": format!("Doc content:\n\n{NEEDLE}")})
    );
    assert_eq!(rewritten.request.messages[1]["content"], QUESTION);

    let short = json!([{"role": "user", "content": "Hello there."}]);
    let (status, header, proxied) = chat(&s.proxy, short.clone()).await;
    assert_eq!(status, 200);
    assert_eq!(header.as_deref(), Some("none"));
    let (_, _, direct) = chat(&s.upstream, short).await;
    assert_eq!(proxied["usage"], direct["usage"], "forwarded unchanged");
    assert_eq!(
        proxied["choices"][0]["message"]["content"],
        direct["choices"][0]["message"]["content"]
    );
}

#[tokio::test]
async fn a_context_too_long_for_the_upstream_fits_once_compressed() {
    let s = servers().await;
    let messages = json!([
        {"role": "user", "content": format!("{}\n\n{QUESTION}", haystack(40, 25))}
    ]);
    let (status, _, body) = chat(&s.upstream, messages.clone()).await;
    assert_eq!(
        status, 400,
        "the 1024-token upstream refuses it directly: {body}"
    );
    let (status, header, body) = chat(&s.proxy, messages).await;
    assert_eq!(status, 200, "{body}");
    assert!(ratio(&header.unwrap()) > 10.0);
}

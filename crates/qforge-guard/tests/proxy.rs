//! The guarded backend over a real upstream (the tiny model on the embedded engine) and a
//! guard wired to flag chosen tokens (`fixtures::token_trigger_guard`): nothing from the
//! flagging pair on reaches the client, the reply ends with `content_filter`, flagged prompts
//! are refused, and an upstream that drops mid-stream is a clear error.

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use candle_core::{DType, Device};
use qforge_engine::chat::{ChatDelta, ChatEvent, ChatRequest};
use qforge_engine::{
    BackendError, ChatBackend, ChatStream, EmbeddedBackend, Engine, Metrics, Scheduler,
    SchedulerConfig,
};
use qforge_guard::fixtures::token_trigger_guard;
use qforge_guard::proxy::{GuardedBackend, ProxyConfig};
use qforge_guard::{Debounce, StreamGuard};
use qforge_model::Checkpoint;
use serde_json::json;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tools/fixtures")
}

fn upstream() -> Arc<dyn ChatBackend> {
    let ck = Checkpoint::load_dir(
        &fixtures().join("model/qwen3_tied_gqa"),
        DType::F32,
        &Device::Cpu,
    )
    .unwrap();
    let engine = Engine::new(ck.model, Arc::new(ck.tokenizer));
    let scheduler = Scheduler::spawn(
        engine,
        SchedulerConfig::default(),
        Arc::new(Metrics::default()),
    );
    Arc::new(EmbeddedBackend::new(
        "tiny".into(),
        scheduler,
        ck.generation,
    ))
}

fn request() -> ChatRequest {
    ChatRequest::from_openai(&json!({
        "messages": [{"role": "user", "content": "Tell me about the quick brown fox."}],
        "temperature": 0, "max_tokens": 40
    }))
    .unwrap()
}

async fn collect(mut events: ChatStream) -> (String, Option<String>, Option<BackendError>) {
    let (mut text, mut finish) = (String::new(), None);
    while let Some(e) = events.recv().await {
        match e {
            Ok(ChatEvent::Delta(d)) => {
                text.push_str(d.content.as_deref().unwrap_or(""));
                if d.finish_reason.is_some() {
                    finish = d.finish_reason;
                }
            }
            Ok(ChatEvent::Usage(_)) => {}
            Err(e) => return (text, finish, Some(e)),
        }
    }
    (text, finish, None)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_from_the_flagging_pair_on_reaches_the_client() {
    let upstream = upstream();
    let full = upstream.chat(request()).await.unwrap();
    let reply = full.choices[0].message.content.clone().unwrap();
    let src = fixtures().join("guard/stream_tiny");
    let tok = qforge_model::Tokenizer::from_dir(&src).unwrap();
    let ids = tok.encode(&reply, false).unwrap();
    assert!(ids.len() > 8, "reply too short: {reply:?}");
    // Two tokens that do not occur before their own position (the random model repeats itself).
    let k = (3..ids.len() - 1)
        .find(|&k| !ids[..k].contains(&ids[k]) && !ids[..k].contains(&ids[k + 1]))
        .expect("two fresh consecutive tokens in the reply");
    let chosen = [ids[k], ids[k + 1]];
    // The first consecutive pair of chosen tokens: the paper's rule flags its second token.
    let j = (1..ids.len())
        .find(|&j| chosen.contains(&ids[j - 1]) && chosen.contains(&ids[j]))
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    token_trigger_guard(&src, dir.path(), &chosen, false).unwrap();
    let guard = Arc::new(StreamGuard::load(dir.path(), DType::F32, &Device::Cpu).unwrap());

    let before_pair = tok.decode(&ids[..j - 1], false).unwrap();
    assert_eq!(j, k + 1);
    for hold_back in [1, 2, 5] {
        let guarded = GuardedBackend::new(
            upstream.clone(),
            guard.clone(),
            None,
            ProxyConfig {
                hold_back,
                ..ProxyConfig::default()
            },
        );
        let (text, finish, err) = collect(guarded.chat_stream(request()).await.unwrap()).await;
        assert!(err.is_none(), "{err:?}");
        assert_eq!(
            finish.as_deref(),
            Some("content_filter"),
            "hold_back {hold_back}"
        );
        assert!(
            before_pair.starts_with(&text),
            "hold_back {hold_back}: sent {text:?}, but only {before_pair:?} precedes the pair"
        );
        if hold_back <= 2 {
            assert_eq!(text, before_pair, "hold_back {hold_back}");
        }
    }

    // A guard that flags nothing passes the reply through unchanged.
    let quiet = tempfile::tempdir().unwrap();
    token_trigger_guard(&src, quiet.path(), &[], false).unwrap();
    let guard = Arc::new(StreamGuard::load(quiet.path(), DType::F32, &Device::Cpu).unwrap());
    let guarded = GuardedBackend::new(upstream.clone(), guard, None, ProxyConfig::default());
    let (text, finish, _) = collect(guarded.chat_stream(request()).await.unwrap()).await;
    assert_eq!(text, reply);
    assert_eq!(finish, Some(full.choices[0].finish_reason.clone()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flagged_prompt_is_refused_without_calling_upstream() {
    let src = fixtures().join("guard/stream_tiny");
    let tok = qforge_model::Tokenizer::from_dir(&src).unwrap();
    let im_end = tok.token_to_id("<|im_end|>").unwrap();
    let dir = tempfile::tempdir().unwrap();
    token_trigger_guard(&src, dir.path(), &[im_end], true).unwrap();
    let guard = Arc::new(StreamGuard::load(dir.path(), DType::F32, &Device::Cpu).unwrap());
    let config = ProxyConfig::default();
    let refusal = config.refusal.clone();
    let guarded = GuardedBackend::new(Arc::new(Unreachable), guard, None, config);
    let check = guarded.check_prompt(&request()).await.unwrap();
    assert!(check.flagged && check.source == "stream", "{check:?}");
    let (text, finish, err) = collect(guarded.chat_stream(request()).await.unwrap()).await;
    assert!(err.is_none());
    assert_eq!((text, finish.as_deref()), (refusal, Some("content_filter")));
}

/// An upstream that must never be called.
struct Unreachable;

#[async_trait]
impl ChatBackend for Unreachable {
    fn model_name(&self) -> &str {
        "unreachable"
    }
    async fn chat_stream(&self, _: ChatRequest) -> Result<ChatStream, BackendError> {
        panic!("a blocked prompt reached the upstream")
    }
}

/// An upstream that sends a few words, then its connection dies (the sender is dropped without
/// a finish reason) — what a crashed vLLM looks like through `RemoteBackend`.
struct DropsMidStream;

#[async_trait]
impl ChatBackend for DropsMidStream {
    fn model_name(&self) -> &str {
        "drops"
    }
    async fn chat_stream(&self, _: ChatRequest) -> Result<ChatStream, BackendError> {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        for word in ["The quick", " brown fox"] {
            tx.send(Ok(ChatEvent::Delta(ChatDelta {
                content: Some(word.into()),
                ..ChatDelta::default()
            })))
            .await
            .unwrap();
        }
        Ok(rx)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_dropping_mid_stream_is_a_clear_error() {
    let src = fixtures().join("guard/stream_tiny");
    let dir = tempfile::tempdir().unwrap();
    token_trigger_guard(&src, dir.path(), &[], false).unwrap();
    let guard = Arc::new(StreamGuard::load(dir.path(), DType::F32, &Device::Cpu).unwrap());
    let guarded = GuardedBackend::new(
        Arc::new(DropsMidStream),
        guard,
        None,
        ProxyConfig {
            debounce: Debounce::Paper,
            ..ProxyConfig::default()
        },
    );
    let (_, finish, err) = collect(guarded.chat_stream(request()).await.unwrap()).await;
    assert_eq!(finish, None);
    assert!(
        matches!(&err, Some(BackendError::Unavailable(m)) if m.contains("before finishing")),
        "{err:?}"
    );
}

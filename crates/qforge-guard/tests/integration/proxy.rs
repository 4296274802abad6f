//! The guarded backend over a real upstream (the tiny model on the embedded engine) and a
//! guard wired to flag chosen tokens (`fixtures::token_trigger_guard`): nothing from the
//! flagging pair on reaches the client, the reply ends with `content_filter`, flagged prompts
//! are refused, and an upstream that drops mid-stream is a clear error.

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use candle_core::{DType, Device};
use qforge_engine::chat::{ChatDelta, ChatEvent, ChatRequest, ToolCall};
use qforge_engine::{
    BackendError, ChatBackend, ChatStream, EmbeddedBackend, Engine, Metrics, Scheduler,
    SchedulerConfig,
};
use qforge_guard::proxy::{GuardedBackend, ProxyConfig};
use qforge_guard::{Debounce, StreamGuard};
use qforge_model::Checkpoint;
use qforge_testkit::guard::token_trigger_guard;
use serde_json::json;

fn fixtures() -> PathBuf {
    qforge_testkit::fixtures_dir()
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
        "temperature": 0, "max_tokens": 40,
        "chat_template_kwargs": {"enable_thinking": false}
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

/// A guard whose query heads flag every prompt (they read the user turn's `<|im_end|>`).
fn prompt_flagging_guard() -> (tempfile::TempDir, Arc<StreamGuard>) {
    let src = fixtures().join("guard/stream_tiny");
    let tok = qforge_model::Tokenizer::from_dir(&src).unwrap();
    let im_end = tok.token_to_id("<|im_end|>").unwrap();
    let dir = tempfile::tempdir().unwrap();
    token_trigger_guard(&src, dir.path(), &[im_end], true).unwrap();
    let guard = Arc::new(StreamGuard::load(dir.path(), DType::F32, &Device::Cpu).unwrap());
    (dir, guard)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flagged_prompt_is_refused_without_calling_upstream() {
    let (_dir, guard) = prompt_flagging_guard();
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

/// A vLLM-style upstream with its reasoning parser on: a thinking trace in
/// `reasoning_content` (starting with the newline after `<think>`, as vLLM sends it), then the
/// answer in `content` (starting with the `\n\n` after `</think>`), then a tool call, each in
/// several deltas.
struct ReasoningUpstream;

const REASONING: [&str; 3] = ["\nThe user asks", " about the weather VWK in", " Paris."];
const CONTENT: [&str; 2] = ["\n\nLet me look", " it up."];
const ARGUMENTS: &str = r#"{"city": "Paris XQZ"}"#;

#[async_trait]
impl ChatBackend for ReasoningUpstream {
    fn model_name(&self) -> &str {
        "thinker"
    }
    async fn chat_stream(&self, _: ChatRequest) -> Result<ChatStream, BackendError> {
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        for r in REASONING {
            tx.send(Ok(ChatEvent::Delta(ChatDelta {
                reasoning_content: Some(r.into()),
                ..ChatDelta::default()
            })))
            .await
            .unwrap();
        }
        for c in CONTENT {
            tx.send(Ok(ChatEvent::Delta(ChatDelta {
                content: Some(c.into()),
                ..ChatDelta::default()
            })))
            .await
            .unwrap();
        }
        tx.send(Ok(ChatEvent::Delta(ChatDelta {
            tool_calls: vec![ToolCall {
                id: "call_1".into(),
                name: "weather".into(),
                arguments: ARGUMENTS.into(),
            }],
            finish_reason: Some("tool_calls".into()),
            ..ChatDelta::default()
        })))
        .await
        .unwrap();
        Ok(rx)
    }
}

#[derive(Debug, Default)]
struct Channels {
    reasoning: String,
    content: String,
    tools: Vec<ToolCall>,
    finish: Option<String>,
}

async fn channels(mut events: ChatStream) -> Channels {
    let mut c = Channels::default();
    while let Some(e) = events.recv().await {
        let Ok(ChatEvent::Delta(d)) = e else {
            assert!(e.is_ok(), "{e:?}");
            continue;
        };
        c.reasoning += d.reasoning_content.as_deref().unwrap_or("");
        c.content += d.content.as_deref().unwrap_or("");
        c.tools.extend(d.tool_calls);
        c.finish = d.finish_reason.or(c.finish);
    }
    c
}

/// A guard flagging the tokens of `trigger` (as the tiny tokenizer splits it on its own).
fn trigger_guard(trigger: &str) -> (tempfile::TempDir, Arc<StreamGuard>) {
    let src = fixtures().join("guard/stream_tiny");
    let tok = qforge_model::Tokenizer::from_dir(&src).unwrap();
    let ids = if trigger.is_empty() {
        Vec::new()
    } else {
        tok.encode(trigger, false).unwrap()
    };
    let dir = tempfile::tempdir().unwrap();
    token_trigger_guard(&src, dir.path(), &ids, false).unwrap();
    let guard = Arc::new(StreamGuard::load(dir.path(), DType::F32, &Device::Cpu).unwrap());
    (dir, guard)
}

/// The guarded scripted thinker.
fn guarded_thinker(guard: Arc<StreamGuard>, hold_back: usize) -> GuardedBackend {
    GuardedBackend::new(
        Arc::new(ReasoningUpstream),
        guard,
        None,
        ProxyConfig {
            hold_back,
            ..ProxyConfig::default()
        },
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reasoning_stays_reasoning_and_tool_calls_pass_once_judged() {
    let (_dir, guard) = trigger_guard("");
    let guarded = guarded_thinker(guard, ProxyConfig::default().hold_back);
    let got = channels(guarded.chat_stream(request()).await.unwrap()).await;
    assert_eq!(got.reasoning, REASONING.concat());
    assert_eq!(got.content, CONTENT.concat());
    assert_eq!(got.tools.len(), 1);
    assert_eq!(got.tools[0].arguments, ARGUMENTS);
    assert_eq!(got.finish.as_deref(), Some("tool_calls"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flag_in_the_thinking_trace_cuts_both_channels() {
    let (_dir, guard) = trigger_guard(" VWK");
    for hold_back in [1, 2, 4] {
        let guarded = guarded_thinker(guard.clone(), hold_back);
        let got = channels(guarded.chat_stream(request()).await.unwrap()).await;
        let trace = REASONING.concat();
        let before = &trace[..trace.find(" VWK").unwrap()];
        assert!(
            before.starts_with(&got.reasoning) && !got.reasoning.contains("VWK"),
            "hold_back {hold_back}: {got:?}"
        );
        assert!(got.reasoning.len() > 5, "hold_back {hold_back}: {got:?}");
        assert_eq!((got.content.as_str(), got.tools.len()), ("", 0), "{got:?}");
        assert_eq!(got.finish.as_deref(), Some("content_filter"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tool_call_arguments_are_judged_before_they_are_sent() {
    let (_dir, guard) = trigger_guard(" XQZ");
    let guarded = guarded_thinker(guard, ProxyConfig::default().hold_back);
    let got = channels(guarded.chat_stream(request()).await.unwrap()).await;
    assert_eq!(got.reasoning, REASONING.concat());
    assert!(CONTENT.concat().starts_with(&got.content), "{got:?}");
    assert!(
        got.tools.is_empty(),
        "a flagged tool call was sent: {got:?}"
    );
    assert_eq!(got.finish.as_deref(), Some("content_filter"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_turns_moderate_the_last_user_turn() {
    let (_dir, guard) = prompt_flagging_guard();
    let guarded = GuardedBackend::new(Arc::new(Unreachable), guard, None, ProxyConfig::default());
    let agent = ChatRequest::from_openai(&json!({
        "messages": [
            {"role": "system", "content": "You are a weather bot."},
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": "", "tool_calls": [{"id": "call_1", "type": "function",
                "function": {"name": "weather", "arguments": "{\"city\": \"Paris\"}"}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}
        ]
    }))
    .unwrap();
    let check = guarded.check_prompt(&agent).await.unwrap();
    assert!(check.flagged && check.source == "stream", "{check:?}");
    let system_only = ChatRequest::from_openai(&json!({
        "messages": [{"role": "system", "content": "Say hello."}]
    }))
    .unwrap();
    let check = guarded.check_prompt(&system_only).await.unwrap();
    assert!(!check.flagged && check.source == "none", "{check:?}");
}

/// An upstream whose reply is far longer than a short-context guard: the sentence, `times`
/// times, then `tail`, in word-sized deltas.
struct LongReply {
    times: usize,
    tail: &'static str,
}

const SENTENCE: &str = "the quick brown fox jumps over the lazy dog. ";

#[async_trait]
impl ChatBackend for LongReply {
    fn model_name(&self) -> &str {
        "long"
    }
    async fn chat_stream(&self, _: ChatRequest) -> Result<ChatStream, BackendError> {
        let (tx, rx) = tokio::sync::mpsc::channel(1024);
        let text = SENTENCE.repeat(self.times) + self.tail;
        for word in text.split_inclusive(' ') {
            tx.send(Ok(ChatEvent::Delta(ChatDelta {
                content: Some(word.into()),
                ..ChatDelta::default()
            })))
            .await
            .unwrap();
        }
        tx.send(Ok(ChatEvent::Delta(ChatDelta {
            finish_reason: Some("stop".into()),
            ..ChatDelta::default()
        })))
        .await
        .unwrap();
        Ok(rx)
    }
}

/// `trigger_guard` with its context cut to `max_positions`.
fn short_trigger_guard(
    trigger: &str,
    max_positions: usize,
) -> (tempfile::TempDir, Arc<StreamGuard>) {
    let (dir, _) = trigger_guard(trigger);
    let path = dir.path().join("config.json");
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    config["max_position_embeddings"] = max_positions.into();
    std::fs::write(&path, config.to_string()).unwrap();
    let guard = Arc::new(StreamGuard::load(dir.path(), DType::F32, &Device::Cpu).unwrap());
    (dir, guard)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_longer_than_the_guard_context_keep_being_judged() {
    // 12 sentences are several times the guard's 128 positions.
    let (_dir, quiet) = short_trigger_guard("", 128);
    let upstream = Arc::new(LongReply {
        times: 12,
        tail: "The end.",
    });
    let guarded = GuardedBackend::new(upstream.clone(), quiet, None, ProxyConfig::default());
    let got = channels(guarded.chat_stream(request()).await.unwrap()).await;
    assert_eq!(got.content, SENTENCE.repeat(12) + "The end.");
    assert_eq!(got.finish.as_deref(), Some("stop"));

    // A flag far past the first window still cuts the reply before the flagging pair.
    let (_dir, guard) = short_trigger_guard(" XQZ", 128);
    let upstream = Arc::new(LongReply {
        times: 12,
        tail: "And then XQZ came.",
    });
    let guarded = GuardedBackend::new(upstream, guard, None, ProxyConfig::default());
    let got = channels(guarded.chat_stream(request()).await.unwrap()).await;
    assert!(got.content.starts_with(&SENTENCE.repeat(12)), "{got:?}");
    assert!(!got.content.contains("XQZ"), "{got:?}");
    assert_eq!(got.finish.as_deref(), Some("content_filter"));

    // A prompt longer than the guard's context is the request's fault, not a server error.
    let (_dir, guard) = short_trigger_guard("", 128);
    let guarded = GuardedBackend::new(Arc::new(Unreachable), guard, None, ProxyConfig::default());
    let long = ChatRequest::from_openai(&json!({
        "messages": [{"role": "user", "content": SENTENCE.repeat(20)}]
    }))
    .unwrap();
    let err = guarded.check_prompt(&long).await.unwrap_err();
    assert!(matches!(err, BackendError::ContextLength(_)), "{err:?}");
}

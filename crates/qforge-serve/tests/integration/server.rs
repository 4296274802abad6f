//! The real server on a loopback port with a tiny fixture checkpoint, driven over HTTP.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use candle_core::{DType, Device};
use qforge_engine::chat::ChatRequest;
use qforge_engine::{
    ChatBackend, ChatEvent, EmbeddedBackend, Engine, GenerationRequest, Metrics, RemoteBackend,
    RemoteConfig, Scheduler, SchedulerConfig,
};
use qforge_model::Checkpoint;
use qforge_serve::admission::AdmissionConfig;
use qforge_serve::{AppState, ServerConfig};
use serde_json::{Value, json};
use tokio::sync::oneshot;

const MODEL: &str = "tiny";

fn fixture() -> PathBuf {
    qforge_testkit::tiny_model()
}

fn backend(scheduler: SchedulerConfig) -> EmbeddedBackend {
    let ck = Checkpoint::load_dir(&fixture(), DType::F32, &Device::Cpu).unwrap();
    let engine = Engine::new(ck.model, Arc::new(ck.tokenizer));
    EmbeddedBackend::new(
        MODEL.into(),
        Scheduler::spawn(engine, scheduler, Arc::new(Metrics::default())),
        ck.generation,
    )
}

struct Server {
    url: String,
    backend: EmbeddedBackend,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Server {
    async fn start(config: ServerConfig, scheduler: SchedulerConfig) -> Self {
        Self::start_with(config, scheduler, |state| state).await
    }

    /// A server whose state `add` extends (a guard, a compressor).
    async fn start_with(
        config: ServerConfig,
        scheduler: SchedulerConfig,
        add: impl FnOnce(AppState) -> AppState,
    ) -> Self {
        let backend = backend(scheduler);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = oneshot::channel::<()>();
        let state = add(AppState::new(backend.clone(), config));
        let task = tokio::spawn(qforge_serve::serve(listener, state, async {
            let _ = stopped.await;
        }));
        Self {
            url,
            backend,
            stop: Some(stop),
            task,
        }
    }

    async fn default() -> Self {
        Self::start(ServerConfig::default(), SchedulerConfig::default()).await
    }

    fn remote(&self) -> RemoteBackend {
        RemoteBackend::new(RemoteConfig::new(format!("{}/v1", self.url), MODEL)).unwrap()
    }

    async fn post(&self, path: &str, body: impl Into<reqwest::Body>) -> (u16, Value) {
        let resp = reqwest::Client::new()
            .post(format!("{}{path}", self.url))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// `name` once the scheduler has caught up: a reply can reach the client a moment before
    /// the scheduler thread retires its sequence, so a gauge read right after may lag by one.
    async fn settled_metric(&self, name: &str, want: f64) -> f64 {
        for _ in 0..100 {
            if self.metric(name).await == want {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.metric(name).await
    }

    async fn metric(&self, name: &str) -> f64 {
        let text = reqwest::get(format!("{}/metrics", self.url))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .find_map(|l| {
                l.strip_prefix(name)
                    .and_then(|rest| rest.strip_prefix(' '))
                    .map(|v| v.parse().unwrap())
            })
            .unwrap_or_else(|| panic!("metric {name} missing"))
    }

    async fn shutdown(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.task.await.unwrap().unwrap();
    }
}

/// A greedy request with thinking off, so the whole reply is `content` (the fixture's template
/// is Qwen3's; with thinking on, the reply is reasoning until `</think>`).
fn greedy(text: &str, max_tokens: usize) -> ChatRequest {
    let mut request = ChatRequest {
        temperature: Some(0.0),
        max_tokens: Some(max_tokens),
        ..ChatRequest::user(text)
    };
    request
        .chat_template_kwargs
        .insert("enable_thinking".into(), false.into());
    request
}

/// What the engine generates directly for the same chat prompt.
fn direct(backend: &EmbeddedBackend, request: &ChatRequest) -> String {
    let prompt = backend.chat_prompt(request).unwrap();
    let engine = backend.scheduler().engine();
    let mut r = GenerationRequest::new(prompt, request.max_tokens.unwrap());
    r.stop.stop_token_ids = vec![backend.tokenizer().eos_token_id().unwrap()];
    engine.generate(vec![r], |_| {}).unwrap().remove(0).text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_backend_against_our_server_equals_direct_generation() {
    let server = Server::default().await;
    let remote = server.remote();
    assert_eq!(remote.list_models().await.unwrap(), vec![MODEL.to_string()]);
    for prompt in ["Hello there", "What's the capital of France?"] {
        let request = greedy(prompt, 12);
        let expected = direct(&server.backend, &request);
        let whole = remote.chat(request.clone()).await.unwrap();
        assert_eq!(
            whole.choices[0].message.content.as_deref().unwrap_or(""),
            expected
        );
        assert_eq!(whole.usage.completion_tokens, 12);
        let mut stream = remote.chat_stream(request).await.unwrap();
        let (mut text, mut usage, mut finish) = (String::new(), None, None);
        while let Some(event) = stream.recv().await {
            match event.unwrap() {
                ChatEvent::Delta(d) => {
                    text += d.content.as_deref().unwrap_or("");
                    finish = d.finish_reason.or(finish);
                }
                ChatEvent::Usage(u) => usage = Some(u),
            }
        }
        assert_eq!(text, expected);
        assert_eq!(finish.as_deref(), Some("length"));
        assert_eq!(usage.unwrap().completion_tokens, 12);
    }
    server.shutdown().await;
}

/// With thinking on (the template's default) the reply is split as vLLM's qwen3 reasoning
/// parser splits it: reasoning up to the first `</think>`, content after it; all reasoning when
/// the block is never closed. Whole and streamed alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thinking_replies_are_split_as_vllm_splits_them_whole_and_streamed() {
    let server = Server::default().await;
    let remote = server.remote();
    let mut closed = 0;
    for prompt in [
        "Hello there",
        "What's the weather like in Zürich today?",
        "hi",
    ] {
        let request = ChatRequest {
            temperature: Some(0.0),
            max_tokens: Some(12),
            ..ChatRequest::user(prompt)
        };
        let text = direct(&server.backend, &request);
        let (reasoning, content) = match text.split_once("</think>") {
            Some((r, c)) => {
                closed += 1;
                (r.to_string(), c.to_string())
            }
            None => (text.clone(), String::new()),
        };
        let nonempty = |s: String| (!s.is_empty()).then_some(s);
        let whole = remote.chat(request.clone()).await.unwrap();
        let m = &whole.choices[0].message;
        assert_eq!(
            (m.reasoning_content.clone(), m.content.clone()),
            (nonempty(reasoning.clone()), nonempty(content.clone())),
            "{text:?}"
        );
        let mut stream = remote.chat_stream(request).await.unwrap();
        let (mut r, mut c) = (String::new(), String::new());
        while let Some(event) = stream.recv().await {
            if let ChatEvent::Delta(d) = event.unwrap() {
                r += d.reasoning_content.as_deref().unwrap_or("");
                c += d.content.as_deref().unwrap_or("");
            }
        }
        assert_eq!((r, c), (reasoning, content));
    }
    assert!(
        closed > 0,
        "no reply closed its think block: the split went untested"
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_streams_with_disconnects_complete_and_free_their_slots() {
    let server = Server::start(
        ServerConfig::default(),
        SchedulerConfig {
            max_seqs: 8,
            ..SchedulerConfig::default()
        },
    )
    .await;
    let prompts: Vec<String> = (0..32).map(|i| format!("client {i} says hello")).collect();
    let expected: Vec<String> = prompts
        .iter()
        .map(|p| direct(&server.backend, &greedy(p, 16)))
        .collect();
    let mut tasks = Vec::new();
    for (i, prompt) in prompts.iter().enumerate() {
        let remote = server.remote();
        // Clients that will hang up ask for long answers, so they are still running then.
        let request = greedy(prompt, if i % 4 == 0 { 200 } else { 16 });
        tasks.push(tokio::spawn(async move {
            let mut stream = remote.chat_stream(request).await.unwrap();
            let mut text = String::new();
            let mut deltas = 0;
            while let Some(event) = stream.recv().await {
                if let ChatEvent::Delta(d) = event.unwrap() {
                    text += d.content.as_deref().unwrap_or("");
                    deltas += 1;
                    // Every fourth client hangs up after two tokens.
                    if i % 4 == 0 && deltas == 2 {
                        return None;
                    }
                }
            }
            Some(text)
        }));
    }
    for (i, task) in tasks.into_iter().enumerate() {
        match task.await.unwrap() {
            Some(text) => assert_eq!(text, expected[i], "client {i}"),
            None => assert_eq!(i % 4, 0),
        }
    }
    // Cancelled sequences leave the batch; nothing stays reserved.
    assert_eq!(
        server.settled_metric("qforge_running_sequences", 0.0).await,
        0.0
    );
    assert_eq!(server.metric("qforge_queue_depth").await, 0.0);
    assert_eq!(
        server.settled_metric("qforge_kv_reserved_bytes", 0.0).await,
        0.0
    );
    // A client that hangs up is cancelled unless its sequence already ended (it is short).
    let cancelled = server.metric("qforge_requests_cancelled_total").await;
    let finished = server.metric("qforge_requests_finished_total").await;
    assert!(cancelled >= 1.0, "no cancellation recorded");
    assert_eq!(cancelled + finished, 32.0);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_openai_errors_and_the_server_keeps_serving() {
    let server = Server::start(
        ServerConfig {
            max_body_bytes: 16 * 1024,
            ..ServerConfig::default()
        },
        SchedulerConfig::default(),
    )
    .await;
    let long = "word ".repeat(1500);
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        (
            "malformed JSON",
            b"{\"messages\": [".to_vec(),
            400,
            "not valid JSON",
        ),
        ("not an object", b"[1, 2]".to_vec(), 400, "JSON object"),
        (
            "invalid UTF-8",
            b"{\"messages\": \"\xff\xfe\"}".to_vec(),
            400,
            "UTF-8",
        ),
        (
            "wrong type",
            json!({"messages": [{"role": "user", "content": "x"}], "temperature": "hot"})
                .to_string()
                .into_bytes(),
            400,
            "temperature",
        ),
        (
            "empty messages",
            json!({"messages": []}).to_string().into_bytes(),
            400,
            "must not be empty",
        ),
        (
            "unknown model",
            json!({"model": "gpt-9", "messages": [{"role": "user", "content": "x"}]})
                .to_string()
                .into_bytes(),
            404,
            "gpt-9",
        ),
        (
            "oversized body",
            json!({"messages": [{"role": "user", "content": "x".repeat(20_000)}]})
                .to_string()
                .into_bytes(),
            413,
            "larger than",
        ),
        (
            "prompt over the context",
            json!({"messages": [{"role": "user", "content": long}]})
                .to_string()
                .into_bytes(),
            400,
            "maximum context length",
        ),
        (
            "max_tokens over the context",
            json!({"messages": [{"role": "user", "content": "x"}], "max_tokens": 100000})
                .to_string()
                .into_bytes(),
            400,
            "maximum context length",
        ),
        (
            "bad top_p",
            json!({"messages": [{"role": "user", "content": "x"}], "top_p": 0})
                .to_string()
                .into_bytes(),
            400,
            "top_p",
        ),
    ];
    for (name, body, status, needle) in cases {
        let (got, v) = server.post("/v1/chat/completions", body).await;
        assert_eq!(got, status, "{name}: {v}");
        let message = v["error"]["message"]
            .as_str()
            .unwrap_or_else(|| panic!("{name}: not an OpenAI error: {v}"));
        assert!(message.contains(needle), "{name}: {message}");
        assert!(v["error"]["type"].is_string(), "{name}");
    }
    let (status, v) = server
        .post("/v1/completions", json!({"prompt": []}).to_string())
        .await;
    assert_eq!(status, 400, "{v}");
    let (status, v) = server.post("/v1/nope", "{}").await;
    assert_eq!(status, 404, "{v}");
    // Still serving.
    let (status, v) = server
        .post("/v1/chat/completions", greedy_body("still there?"))
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        server.settled_metric("qforge_running_sequences", 0.0).await,
        0.0
    );
    server.shutdown().await;
}

fn greedy_body(text: &str) -> String {
    json!({"model": MODEL, "messages": [{"role": "user", "content": text}], "max_tokens": 4, "temperature": 0}).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_key_is_required_when_set() {
    let server = Server::start(
        ServerConfig {
            api_key: Some("s3cret".into()),
            ..ServerConfig::default()
        },
        SchedulerConfig::default(),
    )
    .await;
    let (status, v) = server.post("/v1/chat/completions", greedy_body("hi")).await;
    assert_eq!(status, 401, "{v}");
    assert_eq!(v["error"]["code"], "invalid_api_key");
    let mut config = RemoteConfig::new(format!("{}/v1", server.url), MODEL);
    config.api_key = Some("s3cret".into());
    let remote = RemoteBackend::new(config).unwrap();
    assert!(remote.chat(greedy("hi", 3)).await.is_ok());
    // Health and metrics stay open for probes.
    assert_eq!(
        reqwest::get(format!("{}/health", server.url))
            .await
            .unwrap()
            .status(),
        200
    );
    server.shutdown().await;
}

/// With one running slot and one queue place, a third request is refused with 429 while the
/// first runs and the second waits. (Eight requests fired at once used to decide this by timing,
/// and the scheduler's drained channel let all eight in.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_answers_429() {
    let server = Server::start(
        ServerConfig::default(),
        SchedulerConfig {
            max_seqs: 1,
            max_queue: 1,
            ..SchedulerConfig::default()
        },
    )
    .await;
    // Holds the only running slot: greedy decoding of this prompt meets no stop token.
    let long = 900;
    let mut running = server
        .remote()
        .chat_stream(greedy("long answer please", long))
        .await
        .unwrap();
    assert!(matches!(
        running.recv().await.unwrap().unwrap(),
        ChatEvent::Delta(_)
    ));
    let waiting = {
        let (url, body) = (server.url.clone(), greedy_body("wait"));
        tokio::spawn(async move {
            reqwest::Client::new()
                .post(format!("{url}/v1/chat/completions"))
                .body(body)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        })
    };
    while server.metric("qforge_queue_depth").await < 1.0 {
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    let (status, v) = server
        .post("/v1/chat/completions", greedy_body("refused"))
        .await;
    assert_eq!(status, 429, "{v}");
    assert_eq!(v["error"]["type"], "rate_limit_error", "{v}");
    // The first request was still decoding when the third was refused, and both admitted ones
    // complete.
    let mut usage = None;
    while let Some(event) = running.recv().await {
        if let ChatEvent::Usage(u) = event.unwrap() {
            usage = Some(u);
        }
    }
    assert_eq!(usage.unwrap().completion_tokens, long);
    assert_eq!(waiting.await.unwrap(), 200);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_in_flight_streams_finish() {
    let server = Server::default().await;
    let remote = server.remote();
    let mut stream = remote
        .chat_stream(greedy("long answer please", 40))
        .await
        .unwrap();
    let first = stream.recv().await.unwrap().unwrap();
    assert!(matches!(first, ChatEvent::Delta(_)));
    let stopper = tokio::spawn(server.shutdown());
    let mut tokens = 1;
    let mut usage = None;
    while let Some(event) = stream.recv().await {
        match event.unwrap() {
            ChatEvent::Delta(d) if d.logprobs.is_none() => tokens += 1,
            ChatEvent::Usage(u) => usage = Some(u),
            _ => {}
        }
    }
    stopper.await.unwrap();
    assert_eq!(usage.unwrap().completion_tokens, 40);
    assert!(tokens >= 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completions_endpoint_generates_and_streams() {
    let server = Server::default().await;
    let (status, v) = server
        .post("/v1/completions", json!({"prompt": ["Hello", "It's a"], "max_tokens": 5, "temperature": 0, "logprobs": 2}).to_string())
        .await;
    assert_eq!(status, 200, "{v}");
    let choices = v["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 2);
    assert_eq!(choices[1]["index"], 1);
    assert_eq!(
        choices[0]["logprobs"]["tokens"].as_array().unwrap().len(),
        5
    );
    assert_eq!(v["usage"]["completion_tokens"], 10);
    // The same prompt streamed gives the same text.
    let resp = reqwest::Client::new()
        .post(format!("{}/v1/completions", server.url))
        .body(
            json!({"prompt": "Hello", "max_tokens": 5, "temperature": 0, "stream": true})
                .to_string(),
        )
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let streamed: String = resp
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .map(|d| {
            serde_json::from_str::<Value>(d).unwrap()["choices"][0]["text"]
                .as_str()
                .unwrap_or("")
                .to_string()
        })
        .collect();
    assert_eq!(streamed, choices[0]["text"].as_str().unwrap());
    server.shutdown().await;
}

/// The fixture with its embeddings and final norm perturbed (same shapes, other outputs).
fn perturbed_checkpoint(dir: &std::path::Path) {
    for f in std::fs::read_dir(fixture()).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, dir.join(f.file_name().unwrap())).unwrap();
    }
    let path = dir.join("model.safetensors");
    let mut w = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
    for key in ["model.embed_tokens.weight", "model.norm.weight"] {
        let t = w[key].clone();
        let flipped = t.flip(&[0]).unwrap().contiguous().unwrap();
        w.insert(key.to_string(), flipped);
    }
    candle_core::safetensors::save(&w, &path).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weights_reload_in_place_from_disk_and_bad_checkpoints_change_nothing() {
    let server = Server::start(
        ServerConfig {
            allow_weight_reload: true,
            ..ServerConfig::default()
        },
        SchedulerConfig::default(),
    )
    .await;
    let remote = server.remote();
    // Long enough for the prefix cache to keep blocks of it: after the reload they must not
    // be reused (they hold keys and values of the old weights).
    let long = "Hello there, tell me everything about the quick brown fox. ".repeat(5);
    let request = greedy(&long, 12);
    let before = remote.chat(request.clone()).await.unwrap().choices[0]
        .message
        .content
        .clone();

    // A checkpoint of another shape is refused and the served weights stay as they were.
    let other = qforge_testkit::fixture("model/qwen3_untied_mqa_yarn");
    let err = remote
        .update_weights_from_disk(&other)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("400") && err.contains("shape"), "{err}");
    let same = remote.chat(request.clone()).await.unwrap().choices[0]
        .message
        .content
        .clone();
    assert_eq!(same, before);

    // New weights of the same shape: the server now answers like that checkpoint does.
    let dir = tempfile::tempdir().unwrap();
    perturbed_checkpoint(dir.path());
    let msg = remote.update_weights_from_disk(dir.path()).await.unwrap();
    assert!(msg.contains("loaded"), "{msg}");
    let after = remote.chat(request.clone()).await.unwrap().choices[0]
        .message
        .content
        .clone();
    let ck = Checkpoint::load_dir(dir.path(), DType::F32, &Device::Cpu).unwrap();
    let fresh = EmbeddedBackend::new(
        MODEL.into(),
        Scheduler::spawn(
            Engine::new(ck.model, Arc::new(ck.tokenizer)),
            SchedulerConfig::default(),
            Arc::new(Metrics::default()),
        ),
        ck.generation,
    );
    assert_eq!(after.as_deref(), Some(direct(&fresh, &request).as_str()));
    assert_ne!(after, before, "the perturbed weights answer differently");
    server.shutdown().await;

    // Off by default: 403.
    let locked = Server::default().await;
    let err = locked
        .remote()
        .update_weights_from_disk(dir.path())
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("403"), "{err}");
    locked.shutdown().await;
}

/// A backend whose reply is two tool calls in two deltas, as the embedded parser emits them
/// when the model writes two `<tool_call>` blocks.
struct TwoToolCalls;

#[async_trait::async_trait]
impl qforge_serve::proxy::ProxyBackend for TwoToolCalls {
    fn model_name(&self) -> &str {
        MODEL
    }
    fn owned_by(&self) -> &str {
        "test"
    }
    async fn proxy(
        &self,
        _: ChatRequest,
    ) -> Result<(qforge_engine::ChatStream, Vec<(&'static str, String)>), qforge_engine::BackendError>
    {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        for (name, city, finish) in [
            ("weather", "Paris", None),
            ("time", "Rome", Some("tool_calls")),
        ] {
            tx.send(Ok(ChatEvent::Delta(qforge_engine::chat::ChatDelta {
                tool_calls: vec![qforge_engine::chat::ToolCall {
                    id: format!("call_{name}"),
                    name: name.into(),
                    arguments: format!("{{\"city\": \"{city}\"}}"),
                }],
                finish_reason: finish.map(str::to_string),
                ..Default::default()
            })))
            .await
            .unwrap();
        }
        Ok((rx, Vec::new()))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_tool_calls_in_separate_deltas_keep_distinct_stream_indices() {
    let url = qforge_serve::proxy::spawn_proxy_on_loopback(qforge_serve::proxy::ProxyState {
        backend: Arc::new(TwoToolCalls),
        config: Arc::new(ServerConfig::default()),
    })
    .await
    .unwrap();
    // On the wire: the second call is index 1, not a second index 0.
    let body = reqwest::Client::new()
        .post(format!("{url}/chat/completions"))
        .json(&json!({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": true}))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let indices: Vec<u64> = body
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .flat_map(|d| {
            let v: Value = serde_json::from_str(d).unwrap();
            v["choices"][0]["delta"]["tool_calls"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .map(|t| t["index"].as_u64().unwrap())
        .collect();
    assert_eq!(indices, [0, 1], "{body}");
    // A client that merges fragments by index (ours, as OpenAI's) gets both calls.
    let remote = RemoteBackend::new(RemoteConfig::new(url, MODEL)).unwrap();
    let mut stream = remote.chat_stream(greedy("hi", 4)).await.unwrap();
    let mut calls = Vec::new();
    while let Some(event) = stream.recv().await {
        if let ChatEvent::Delta(d) = event.unwrap() {
            calls.extend(d.tool_calls);
        }
    }
    let got: Vec<(&str, &str)> = calls
        .iter()
        .map(|c| (c.name.as_str(), c.arguments.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            ("weather", "{\"city\": \"Paris\"}"),
            ("time", "{\"city\": \"Rome\"}")
        ]
    );
}

/// The model routes outside the chat scheduler have its admission control: more inputs than
/// the server takes is a 400 naming the field, a flood of moderation requests gets 429s while
/// the server keeps answering, and chat keeps working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_routes_refuse_oversized_lists_and_floods_and_keep_serving() {
    let fixtures = fixture().join("../..");
    let guard = qforge_guard::GenGuard::load(
        &fixtures.join("guard/gen_tiny_trained"),
        DType::F32,
        &Device::Cpu,
    )
    .unwrap();
    let compressor = qforge_compress::model::Compressor::load(
        &fixtures.join("cprs/tiny_compressor"),
        DType::F32,
        &Device::Cpu,
    )
    .unwrap();
    let config = ServerConfig {
        admission: AdmissionConfig {
            running: 1,
            waiting: 1,
            max_items: 4,
        },
        ..ServerConfig::default()
    };
    let server = Server::start_with(config, SchedulerConfig::default(), |state| {
        state
            .with_moderation(qforge_serve::guard::ModerationState {
                guard: Arc::new(guard),
                model: "guard".into(),
                policy: qforge_guard::Policy::Strict,
            })
            .with_compressor(qforge_serve::compress::CompressState::new(
                "cprs".into(),
                compressor,
            ))
    })
    .await;
    let five = vec!["How do I bake bread?"; 5];
    let four = vec!["How do I bake bread?"; 4];
    let (status, body) = server
        .post("/v1/moderations", json!({"input": five}).to_string())
        .await;
    assert_eq!(
        (status, body["error"]["param"].as_str()),
        (400, Some("input")),
        "{body}"
    );
    let conversation = json!([{"role": "user", "content": "hi"}]);
    let (status, body) = server
        .post(
            "/v1/guard/moderate",
            json!({"conversations": vec![conversation; 5]}).to_string(),
        )
        .await;
    assert_eq!(
        (status, body["error"]["param"].as_str()),
        (400, Some("conversations")),
        "{body}"
    );
    let (status, body) = server
        .post(
            "/v1/compress",
            json!({"messages": [{"role": "system", "content": "keep"}, {"role": "user", "content": "q"},
                                {"role": "context", "content": "The magic number is 7."}],
                   "parameters": {"batch_size": 5}})
            .to_string(),
        )
        .await;
    assert_eq!(
        (status, body["error"]["param"].as_str()),
        (400, Some("batch_size")),
        "{body}"
    );

    let flood: Vec<_> = (0..24)
        .map(|_| {
            let (url, body) = (server.url.clone(), json!({"input": four}).to_string());
            tokio::spawn(async move {
                let resp = reqwest::Client::new()
                    .post(format!("{url}/v1/moderations"))
                    .body(body)
                    .send()
                    .await
                    .unwrap();
                let status = resp.status().as_u16();
                (status, resp.json::<Value>().await.unwrap())
            })
        })
        .collect();
    let mut statuses = Vec::new();
    for request in flood {
        let (status, body) = request.await.unwrap();
        match status {
            200 => assert_eq!(body["results"].as_array().unwrap().len(), 4),
            429 => assert_eq!(body["error"]["code"], "rate_limit_exceeded", "{body}"),
            other => panic!("{other}: {body}"),
        }
        statuses.push(status);
    }
    assert!(
        statuses.contains(&429) && statuses.contains(&200),
        "{statuses:?}"
    );
    let (status, _) = server
        .post("/v1/moderations", json!({"input": four}).to_string())
        .await;
    assert_eq!(
        status, 200,
        "the server answers again once the flood is over"
    );
    assert!(server.remote().chat(greedy("hi", 3)).await.is_ok());
    server.shutdown().await;
}

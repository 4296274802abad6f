//! `qforge bench serve`: the real server on loopback, driven by concurrent streaming clients
//! (the remote `ChatBackend`, i.e. real HTTP + SSE), against direct engine generation measured
//! in the same run.

use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use candle_core::Device;
use qforge_engine::chat::ChatRequest;
use qforge_engine::{
    ChatBackend, ChatEvent, EmbeddedBackend, Engine, GenerationRequest, Metrics, RemoteBackend,
    RemoteConfig, Scheduler, SchedulerConfig,
};
use qforge_model::{GenerationConfig, Model, ModelConfig};
use qforge_serve::{AppState, ServerConfig};

use crate::bench::{ServeArgs, bench_tokenizer, qwen3_0_6b};

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn request(i: usize, max_tokens: usize) -> ChatRequest {
    ChatRequest {
        temperature: Some(0.0),
        max_tokens: Some(max_tokens),
        // Random weights emit ids the bench tokenizer has no text for; logprobs make every
        // token a visible chunk so time per output token can be measured.
        logprobs: true,
        ..ChatRequest::user(format!(
            "Stream number {i}: tell me a long story about the sea."
        ))
    }
}

/// A request of the shared-prefix workload: the long `system` prompt, then its own question.
fn shared_prefix_request(system: &str, i: usize) -> ChatRequest {
    let mut r = request(i, 4);
    r.messages
        .insert(0, serde_json::json!({"role": "system", "content": system}));
    r
}

/// Wall time of `requests` sent together, and their times to the first token (sorted).
async fn shared_prefix_round(
    remote: &RemoteBackend,
    system: &str,
    requests: usize,
) -> Result<(f64, Vec<f64>)> {
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..requests {
        let (remote, request) = (remote.clone(), shared_prefix_request(system, i + 1));
        tasks.push(tokio::spawn(async move {
            let sent = Instant::now();
            let mut events = remote.chat_stream(request).await?;
            let mut first = None;
            while let Some(e) = events.recv().await {
                if let ChatEvent::Delta(_) = e? {
                    first.get_or_insert_with(|| sent.elapsed().as_secs_f64());
                }
            }
            Ok::<_, qforge_engine::BackendError>(first.unwrap_or(f64::NAN))
        }));
    }
    let mut ttft = Vec::new();
    for t in tasks {
        ttft.push(t.await.context("client task")??);
    }
    ttft.sort_by(f64::total_cmp);
    Ok((started.elapsed().as_secs_f64(), ttft))
}

/// A server for `backend` on a loopback port: its URL, and what stops it.
async fn spawn_server(
    backend: EmbeddedBackend,
) -> Result<(
    String,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<std::io::Result<()>>,
)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/v1", listener.local_addr()?);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let state = AppState::new(backend, ServerConfig::default());
    let server = tokio::spawn(qforge_serve::serve(listener, state, async {
        let _ = stopped.await;
    }));
    Ok((url, stop, server))
}

/// The shared-prefix workload on two servers over the same weights, prefix cache on and off:
/// one request fills the cache, then `requests` share its system prompt.
async fn shared_prefix(engine: &Engine, args: &ServeArgs) -> Result<()> {
    let tokenizer = engine.tokenizer().clone();
    let mut system = String::new();
    while tokenizer.encode(&system, false)?.len() < args.shared_prefix_tokens {
        system.push_str("You are a careful assistant who answers questions about the sea. ");
    }
    let system_tokens = tokenizer.encode(&system, false)?.len();
    let mut results = Vec::new();
    for cache_bytes in [SchedulerConfig::default().prefix_cache_bytes, 0] {
        let metrics = Arc::new(Metrics::default());
        let scheduler = Scheduler::spawn(
            engine.clone(),
            SchedulerConfig {
                max_seqs: args.shared_prefix_requests.max(1),
                prefix_cache_bytes: cache_bytes,
                ..SchedulerConfig::default()
            },
            metrics.clone(),
        );
        let backend = EmbeddedBackend::new("bench".into(), scheduler, GenerationConfig::default());
        let (url, stop, server) = spawn_server(backend).await?;
        let remote = RemoteBackend::new(RemoteConfig::new(url, "bench"))?;
        shared_prefix_round(&remote, &system, 1).await?;
        let (wall, ttft) =
            shared_prefix_round(&remote, &system, args.shared_prefix_requests).await?;
        let get = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
        let hit_rate = get(&metrics.prefix_cache_hits) as f64
            / get(&metrics.prefix_cache_queries).max(1) as f64;
        results.push((wall, ttft, hit_rate));
        let _ = stop.send(());
        server.await??;
    }
    let (on, off) = (&results[0], &results[1]);
    for (name, (wall, ttft, hit_rate)) in [("on ", on), ("off", off)] {
        println!(
            "shared prefix ({system_tokens}-token system prompt, {} requests together, 4 tokens each), prefix cache {name}: {wall:.2} s, time to first token p50 {:.0} ms, p99 {:.0} ms, hit rate {:.2}",
            args.shared_prefix_requests,
            percentile(ttft, 0.5) * 1e3,
            percentile(ttft, 0.99) * 1e3,
            hit_rate,
        );
    }
    println!(
        "prefix cache speed-up on the shared-prefix workload: {:.2}x (wall time off / on)",
        off.0 / on.0
    );
    Ok(())
}

struct Round {
    wall_s: f64,
    tokens: usize,
    tpot: Vec<f64>,
}

async fn round(remote: &RemoteBackend, streams: usize, max_tokens: usize) -> Result<Round> {
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..streams {
        let remote = remote.clone();
        tasks.push(tokio::spawn(async move {
            let mut events = remote.chat_stream(request(i, max_tokens)).await?;
            let (mut last, mut gaps, mut tokens) = (None::<Instant>, Vec::new(), 0);
            while let Some(e) = events.recv().await {
                match e? {
                    ChatEvent::Delta(_) => {
                        let now = Instant::now();
                        if let Some(t) = last {
                            gaps.push((now - t).as_secs_f64());
                        }
                        last = Some(now);
                    }
                    ChatEvent::Usage(u) => tokens = u.completion_tokens,
                }
            }
            Ok::<_, qforge_engine::BackendError>((tokens, gaps))
        }));
    }
    let mut tpot = Vec::new();
    let mut tokens = 0;
    for t in tasks {
        let (n, gaps) = t.await.context("client task")??;
        tokens += n;
        tpot.extend(gaps);
    }
    tpot.sort_by(f64::total_cmp);
    Ok(Round {
        wall_s: started.elapsed().as_secs_f64(),
        tokens,
        tpot,
    })
}

pub fn run(args: ServeArgs) -> Result<()> {
    let config = match &args.config {
        Some(p) => ModelConfig::from_file(p)?,
        None => ModelConfig::from_json(qwen3_0_6b())?,
    };
    let dtype = qforge_util::parse_dtype(&args.dtype)
        .with_context(|| format!("unknown dtype {}", args.dtype))?;
    eprintln!("generating random weights...");
    let model = Model::random(config.clone(), dtype, &Device::Cpu, 1234)?;
    let engine = Engine::new(model, Arc::new(bench_tokenizer()?));
    let max_streams = args.streams.iter().copied().max().unwrap_or(1);
    let scheduler = Scheduler::spawn(
        engine.clone(),
        SchedulerConfig {
            max_seqs: max_streams,
            // Off here, so that the overhead against direct generation compares like with like;
            // the shared-prefix workload measures the cache.
            prefix_cache_bytes: 0,
            ..SchedulerConfig::default()
        },
        Arc::new(Metrics::default()),
    );
    let backend = EmbeddedBackend::new("bench".into(), scheduler, GenerationConfig::default());
    println!(
        "model: {} shape, {:.0}M parameters, {} random weights; {} tokens per request, greedy",
        config.model_type(),
        config.num_parameters() as f64 / 1e6,
        args.dtype,
        args.max_tokens
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let (url, stop, server) = spawn_server(backend.clone()).await?;
        let remote = RemoteBackend::new(RemoteConfig::new(url, "bench"))?;

        // Direct engine generation of the same single request, same prompt and length.
        let prompt = backend.chat_prompt(&request(0, args.max_tokens))?;
        let direct = |engine: &Engine| -> Result<(f64, usize)> {
            let t = Instant::now();
            let out = engine.generate(vec![GenerationRequest::new(prompt.clone(), args.max_tokens)], |_| {})?;
            Ok((t.elapsed().as_secs_f64(), out[0].tokens.len()))
        };
        round(&remote, 1, 2).await?; // warm-up
        let mut one_stream = f64::MAX;
        let mut direct_best = f64::MAX;
        for _ in 0..2 {
            let (d, _) = direct(&engine)?;
            direct_best = direct_best.min(d);
            let r = round(&remote, 1, args.max_tokens).await?;
            one_stream = one_stream.min(r.wall_s);
        }
        let mut base_tps = None;
        for &streams in &args.streams {
            let r = round(&remote, streams, args.max_tokens).await?;
            let tps = r.tokens as f64 / r.wall_s;
            let base = *base_tps.get_or_insert(tps);
            println!(
                "serve {streams:>2} streams: {tps:.1} output tok/s aggregate ({:.2}x {} stream), time per output token p50 {:.1} ms, p99 {:.1} ms",
                tps / base,
                args.streams[0],
                percentile(&r.tpot, 0.5) * 1e3,
                percentile(&r.tpot, 0.99) * 1e3,
            );
        }
        println!(
            "server overhead at 1 stream: {:+.1}% (request through HTTP+SSE {:.3}s vs direct engine generation {:.3}s, best of 2)",
            (one_stream / direct_best - 1.0) * 100.0,
            one_stream,
            direct_best
        );
        let _ = stop.send(());
        server.await??;
        if args.shared_prefix_tokens > 0 {
            shared_prefix(&engine, &args).await?;
        }
        Ok(())
    })
}

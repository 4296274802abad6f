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
    let dtype = qforge_model::parse_dtype(&args.dtype)
        .with_context(|| format!("unknown dtype {}", args.dtype))?;
    eprintln!("generating random weights...");
    let model = Model::random(config.clone(), dtype, &Device::Cpu, 1234)?;
    let engine = Engine::new(model, Arc::new(bench_tokenizer()?));
    let max_streams = args.streams.iter().copied().max().unwrap_or(1);
    let scheduler = Scheduler::spawn(
        engine.clone(),
        SchedulerConfig {
            max_seqs: max_streams,
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
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}/v1", listener.local_addr()?);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let state = AppState::new(backend.clone(), ServerConfig::default());
        let server = tokio::spawn(qforge_serve::serve(listener, state, async {
            let _ = stopped.await;
        }));
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
        Ok(())
    })
}

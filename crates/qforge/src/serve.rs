//! `qforge serve`: the OpenAI-compatible server on the embedded engine.

use std::sync::Arc;

use anyhow::{Context, Result};
use qforge_engine::vision::ImageSources;
use qforge_engine::{EmbeddedBackend, Engine, Metrics, Scheduler, SchedulerConfig};
use qforge_serve::{AppState, ServerConfig};

use crate::common::ModelArgs;

#[derive(clap::Args, Debug)]
#[command(
    after_help = "Endpoints: POST /v1/chat/completions, POST /v1/completions, GET /v1/models,\n\
    GET /health, GET /metrics (Prometheus); with --guard-model also POST /v1/moderations and\n\
    POST /v1/guard/moderate; with --reward-model also POST /pooling (vLLM's reward API).\n\nExamples:\n  \
    qforge serve                                  # built-in demo model on 127.0.0.1:8000\n  \
    qforge serve -m Qwen/Qwen3-0.6B --port 9000 --api-key secret\n  \
    curl localhost:8000/v1/chat/completions -d '{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}'"
)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,

    /// Address to bind. The default is loopback only; use 0.0.0.0 to accept remote clients.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,

    #[arg(long, default_value_t = 8000)]
    port: u16,

    /// Require `Authorization: Bearer KEY` on /v1/* routes.
    #[arg(long, env = "QFORGE_API_KEY", hide_env_values = true)]
    api_key: Option<String>,

    /// Name clients use in `model` (default: the model argument, or "qforge-demo").
    #[arg(long)]
    served_model_name: Option<String>,

    /// Sequences decoded together at most.
    #[arg(long, default_value_t = 32)]
    max_seqs: usize,

    /// Requests allowed to wait; beyond, the server answers 429.
    #[arg(long, default_value_t = 256)]
    max_queue: usize,

    /// KV-cache memory reserved by running sequences at most, in MiB.
    #[arg(long, default_value_t = 4096)]
    max_kv_mib: usize,

    /// Keys and values of repeated prompt prefixes kept for reuse, in MiB (0: no prefix cache).
    /// Hit rate in /metrics (qforge_prefix_cache_hit_rate).
    #[arg(long, default_value_t = 1024)]
    prefix_cache_mib: usize,

    /// Largest request body, in MiB (413 beyond).
    #[arg(long, default_value_t = 16)]
    max_body_mib: usize,

    /// Longest prompt in tokens (400 beyond; default: the model's context).
    #[arg(long)]
    max_prompt_tokens: Option<usize>,

    /// Keep reasoning in `content` instead of moving it to `reasoning_content`. The parser
    /// (vLLM's qwen3 rules) applies only where the template thinks: the prompt opens a think
    /// block, or the template has Qwen3's enable_thinking switch and the request leaves it on.
    #[arg(long)]
    no_reasoning_parser: bool,

    /// Moderation, compression and pooling jobs that may wait for the model; beyond, 429.
    #[arg(long, default_value_t = 16)]
    max_model_jobs_queued: usize,

    /// Inputs one moderation, pooling or compression-batch request may carry (400 beyond).
    #[arg(long, default_value_t = 64)]
    max_items_per_request: usize,

    /// Accept POST /update_weights_from_disk {"model_path": DIR} (SGLang's shape): replaces the
    /// served weights in place, for RL trainers pushing a new policy.
    #[arg(long)]
    allow_weight_reload: bool,

    /// A Qwen3Guard-Gen checkpoint answering POST /v1/moderations (OpenAI shape) and
    /// POST /v1/guard/moderate (native verdicts).
    #[arg(long)]
    guard_model: Option<String>,

    /// A Bradley-Terry reward model (`qforge train rm`, or a one-label sequence classifier)
    /// answering POST /pooling in vLLM's shape ({"messages": [...]} or {"input": text}); with
    /// --allow-weight-reload, /update_weights_from_disk given a reward checkpoint replaces it.
    #[arg(long)]
    reward_model: Option<std::path::PathBuf>,

    /// A QwenLong-CPRS compressor checkpoint answering POST /qwen_long_compress_server (the
    /// released server's route and envelope, as its examples/infer.py calls it) and
    /// POST /v1/compress (the same request flattened: messages system/user/context, parameters
    /// min_keyword_len, complete_sentence, split_with_sent, return_offset, batch_size). Loaded
    /// with --dtype and --device, like the served model.
    #[arg(long)]
    compressor: Option<std::path::PathBuf>,

    /// Vision-language models: image parts may name files under this directory (a path
    /// relative to it, or file://). Without it only data URLs are read; remote URLs never are.
    #[arg(long)]
    allowed_local_media_path: Option<std::path::PathBuf>,

    /// How the moderation endpoints read Controversial: strict (unsafe) or loose (safe).
    #[arg(long, value_enum, default_value = "strict")]
    guard_policy: crate::guard::PolicyArg,
}

pub fn run(args: Args) -> Result<()> {
    let ck = args.model.load()?;
    let name = args
        .served_model_name
        .clone()
        .or_else(|| args.model.model.clone())
        .unwrap_or_else(|| "qforge-demo".to_string());
    let mut engine = Engine::new(ck.model, Arc::new(ck.tokenizer));
    if let Some(vision) = ck.vision {
        engine = engine.with_vision(vision);
    }
    let scheduler = Scheduler::spawn(
        engine,
        SchedulerConfig {
            max_seqs: args.max_seqs.max(1),
            max_queue: args.max_queue.max(1),
            max_kv_bytes: args.max_kv_mib.saturating_mul(1 << 20),
            prefix_cache_bytes: args.prefix_cache_mib.saturating_mul(1 << 20),
        },
        Arc::new(Metrics::default()),
    );
    let mut backend = EmbeddedBackend::new(name.clone(), scheduler, ck.generation)
        .with_image_sources(ImageSources {
            local_root: args.allowed_local_media_path.clone(),
        });
    backend.parse_reasoning = !args.no_reasoning_parser;
    let mut state = AppState::new(
        backend,
        ServerConfig {
            api_key: args.api_key.clone(),
            max_body_bytes: args.max_body_mib.saturating_mul(1 << 20),
            max_prompt_tokens: args.max_prompt_tokens,
            allow_weight_reload: args.allow_weight_reload,
            admission: qforge_serve::admission::AdmissionConfig {
                running: 1,
                waiting: args.max_model_jobs_queued,
                max_items: args.max_items_per_request.max(1),
            },
        },
    );
    if let Some(guard_model) = &args.guard_model {
        let guard_args = ModelArgs {
            model: Some(guard_model.clone()),
            adapter: None,
            ..args.model.clone()
        };
        let dir = guard_args.dir()?;
        let guard = qforge_guard::GenGuard::load(
            &dir,
            guard_args.dtype()?,
            &qforge_util::parse_device(&guard_args.device)?,
        )
        .with_context(|| format!("loading the guard model from {}", dir.display()))?;
        state = state.with_moderation(qforge_serve::guard::ModerationState {
            guard: Arc::new(guard),
            model: guard_model.clone(),
            policy: args.guard_policy.into(),
        });
    }
    if let Some(dir) = &args.compressor {
        let compressor = qforge_compress::model::Compressor::load(
            dir,
            args.model.dtype()?,
            &qforge_util::parse_device(&args.model.device)?,
        )
        .with_context(|| format!("loading the compressor from {}", dir.display()))?;
        state = state.with_compressor(qforge_serve::compress::CompressState::new(
            dir.display().to_string(),
            compressor,
        ));
    }
    if let Some(dir) = &args.reward_model {
        let name = dir.display().to_string();
        let reward = qforge_serve::pooling::RewardState::load(name, dir)
            .with_context(|| format!("loading the reward model from {}", dir.display()))?;
        state = state.with_reward_model(reward);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let addr = format!("{}:{}", args.host, args.port);
        let listener = tokio::net::TcpListener::bind(&addr)
            .await
            .with_context(|| format!("binding {addr}"))?;
        eprintln!(
            "serving `{name}` on http://{}/v1{}",
            listener.local_addr()?,
            if args.api_key.is_some() {
                " (API key required)"
            } else {
                ""
            }
        );
        qforge_serve::serve(listener, state, shutdown_signal()).await?;
        eprintln!("shut down");
        Ok(())
    })
}

/// Ctrl-C or SIGTERM: stop accepting, let in-flight requests finish.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            s.recv().await;
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    eprintln!("shutting down: finishing in-flight requests");
}

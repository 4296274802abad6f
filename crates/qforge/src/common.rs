//! Options and helpers shared by the subcommands.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use candle_core::DType;
use qforge_model::{ChatOptions, Checkpoint};
use serde_json::Value;

/// Sets thread defaults before candle starts its pools.
pub fn init_runtime() {
    // candle's element-wise pool spins beside rayon's gemm pool; on small machines two
    // pools oversubscribe the cores (measured with `qforge bench train`). Users can still override it.
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        // SAFETY: called first thing in main, before any other thread exists.
        unsafe { std::env::set_var("CANDLE_NUM_THREADS", "1") };
    }
    // Keep freed memory for 10 s before purging it, and purge with MADV_FREE (a "reset")
    // rather than a decommit: training and decode allocate the same large temporaries every
    // step, and a decommitted page costs a kernel page-zeroing when touched again (40% of a
    // training step's profile with the defaults; with a 2 s delay and decommits still 2,300
    // page faults per step of `qforge bench train --shapes small`, with 2 s resets ~700, with
    // 10 s resets none). The kernel takes reset pages back under memory pressure, so unlike
    // never purging (-1, which pushed the 0.6B training bench past 24 GiB) memory stays
    // bounded: that bench peaks at 12 GiB, like PyTorch.
    // Options of mimalloc v2 (the linked one): 15 = purge_delay (ms), 5 = purge_decommits.
    // SAFETY: plain option setters of the linked allocator, before any allocation-heavy work.
    unsafe {
        libmimalloc_sys::mi_option_set(15, 10_000);
        libmimalloc_sys::mi_option_set(5, 0);
    }
    let filter = tracing_subscriber::EnvFilter::try_from_env("QFORGE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Where a proxy listens, and the key it asks of clients.
#[derive(clap::Args, Debug, Clone)]
pub struct ListenArgs {
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    #[arg(long, default_value_t = 8001)]
    pub port: u16,
    /// Require `Authorization: Bearer KEY` from clients.
    #[arg(long, env = "QFORGE_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
}

impl ListenArgs {
    pub async fn bind(&self) -> Result<tokio::net::TcpListener> {
        let addr = format!("{}:{}", self.host, self.port);
        tokio::net::TcpListener::bind(&addr)
            .await
            .with_context(|| format!("binding {addr}"))
    }

    pub fn server_config(&self) -> qforge_serve::ServerConfig {
        qforge_serve::ServerConfig {
            api_key: self.api_key.clone(),
            ..qforge_serve::ServerConfig::default()
        }
    }
}

/// A client of the OpenAI-compatible server at `url` for `model` (default: the first model it
/// lists).
pub async fn connect_upstream(
    url: &str,
    model: Option<&str>,
    api_key: Option<String>,
) -> Result<qforge_engine::RemoteBackend> {
    let mut remote = qforge_engine::RemoteConfig::new(url, model.unwrap_or_default());
    remote.api_key = api_key;
    if model.is_none() {
        let models = qforge_engine::RemoteBackend::new(remote.clone())?
            .list_models()
            .await
            .with_context(|| format!("asking {url} for its models"))?;
        remote.model = models
            .first()
            .with_context(|| format!("{url} lists no models"))?
            .clone();
    }
    Ok(qforge_engine::RemoteBackend::new(remote)?)
}

/// A conversation file's prompt: rendered and tokenized; for a vision-language model its image
/// parts (data URLs, or paths relative to the file) are processed and their placeholders
/// expanded. Images for a text-only model are an error naming the file.
pub fn conversation_prompt(
    tokenizer: &qforge_model::Tokenizer,
    vision: Option<&qforge_model::vl::Vision>,
    messages: &[Value],
    options: &ChatOptions,
    path: &Path,
) -> Result<(Vec<u32>, Option<qforge_model::vl::VisualInputs>)> {
    use qforge_engine::vision::{ImageSources, has_visual_parts, visual_chat_prompt};
    match (vision, has_visual_parts(messages)) {
        (Some(vision), true) => {
            let root = path
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            let sources = ImageSources {
                local_root: Some(root.to_path_buf()),
            };
            let (ids, inputs) = visual_chat_prompt(tokenizer, vision, messages, options, &sources)
                .with_context(|| path.display().to_string())?;
            Ok((ids, Some(inputs)))
        }
        (None, true) => bail!(
            "{}: the conversation has images, but the model is text-only",
            path.display()
        ),
        (_, false) => {
            let text = tokenizer.apply_chat_template(messages, options)?;
            Ok((tokenizer.encode(&text, false)?, None))
        }
    }
}

/// A checkpoint served in-process as a chat backend, with its tokenizer and context length.
pub fn in_process_backend(
    model: &ModelArgs,
    name: &str,
) -> Result<(
    qforge_engine::EmbeddedBackend,
    std::sync::Arc<qforge_model::Tokenizer>,
    usize,
)> {
    use std::sync::Arc;
    let ck = model.load()?;
    let tokenizer = Arc::new(ck.tokenizer);
    let context = ck.model.config().max_position_embeddings;
    let mut engine = qforge_engine::Engine::new(ck.model, tokenizer.clone());
    if let Some(vision) = ck.vision {
        // A vision-language checkpoint takes image parts in its chat requests.
        engine = engine.with_vision(vision);
    }
    let scheduler = qforge_engine::Scheduler::spawn(
        engine,
        qforge_engine::SchedulerConfig::default(),
        Arc::new(qforge_engine::Metrics::default()),
    );
    Ok((
        qforge_engine::EmbeddedBackend::new(name.into(), scheduler, ck.generation),
        tokenizer,
        context,
    ))
}

#[derive(clap::Args, Debug, Clone)]
pub struct ModelArgs {
    /// Checkpoint: a local directory in Hugging Face layout, or a Hugging Face id (ORG/NAME,
    /// optionally @REVISION) already in the local HF cache. Default: the built-in tiny demo
    /// model (random weights, no download).
    #[arg(long, short = 'm')]
    pub model: Option<String>,

    /// Weight and compute dtype: f32, f16 or bf16 (bf16 matmul is ~10x slower on CPU).
    #[arg(long, default_value = "f32")]
    pub dtype: String,

    /// A LoRA adapter directory (PEFT layout) applied on top of the model.
    #[arg(long)]
    pub adapter: Option<PathBuf>,

    /// cpu, cuda or cuda:N (CUDA needs a build with `--features cuda`).
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

impl ModelArgs {
    pub fn dtype(&self) -> Result<DType> {
        qforge_util::parse_dtype(&self.dtype)
            .with_context(|| format!("unknown --dtype `{}` (use f32, f16 or bf16)", self.dtype))
    }

    pub fn load(&self) -> Result<Checkpoint> {
        let dir = self.dir()?;
        let device = qforge_util::parse_device(&self.device)
            .with_context(|| format!("--device `{}`", self.device))?;
        let mut ck = Checkpoint::load_dir(&dir, self.dtype()?, &device)
            .with_context(|| format!("loading model from {}", dir.display()))?;
        if let Some(adapter) = &self.adapter {
            let lora = qforge_model::load_adapter(&mut ck.model, adapter)
                .with_context(|| format!("loading the LoRA adapter in {}", adapter.display()))?;
            eprintln!(
                "applied LoRA adapter (r={}, alpha={}) from {}",
                lora.r,
                lora.alpha,
                adapter.display()
            );
        }
        Ok(ck)
    }

    /// The checkpoint directory: the argument, the HF cache, a download (feature `hub`), or
    /// the built-in demo model.
    pub fn dir(&self) -> Result<PathBuf> {
        let Some(model) = &self.model else {
            eprintln!(
                "note: using the built-in tiny demo model (random weights); pass -m for a real checkpoint"
            );
            return crate::demo::demo_model_dir();
        };
        match qforge_model::resolve_model_dir(model) {
            Ok(dir) => Ok(dir),
            Err(qforge_model::ModelError::ModelNotFound(_)) if hub::can_download(model) => {
                hub::download(model)
            }
            Err(e) => Err(e.into()),
        }
    }
}

#[cfg(feature = "hub")]
mod hub {
    use std::path::PathBuf;

    use anyhow::{Context, Result};
    use hf_hub::api::sync::ApiBuilder;
    use hf_hub::{Repo, RepoType};

    pub fn can_download(model: &str) -> bool {
        let offline = std::env::var("HF_HUB_OFFLINE")
            .is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
        !offline && model.contains('/') && !std::path::Path::new(model).exists()
    }

    /// Fetches config, tokenizer files and weights into the HF cache; returns the snapshot.
    pub fn download(model: &str) -> Result<PathBuf> {
        let (id, revision) = model.split_once('@').unwrap_or((model, "main"));
        let api = ApiBuilder::from_env()
            .with_progress(true)
            .build()
            .context("Hugging Face hub client")?;
        let repo = api.repo(Repo::with_revision(
            id.to_string(),
            RepoType::Model,
            revision.to_string(),
        ));
        let config = repo
            .get("config.json")
            .with_context(|| format!("downloading {model}: config.json"))?;
        for optional in [
            "tokenizer.json",
            "tokenizer_config.json",
            "generation_config.json",
            "chat_template.jinja",
        ] {
            let _ = repo.get(optional);
        }
        match repo.get(qforge_model::weights::INDEX_FILE) {
            Ok(index) => {
                let text = std::fs::read_to_string(&index)?;
                let value: serde_json::Value = serde_json::from_str(&text)?;
                let mut shards: Vec<&str> = value["weight_map"]
                    .as_object()
                    .map(|m| m.values().filter_map(|v| v.as_str()).collect())
                    .unwrap_or_default();
                shards.sort_unstable();
                shards.dedup();
                for shard in shards {
                    repo.get(shard)
                        .with_context(|| format!("downloading {model}: {shard}"))?;
                }
            }
            Err(_) => {
                repo.get(qforge_model::weights::SINGLE_FILE)
                    .with_context(|| format!("downloading {model}: model.safetensors"))?;
            }
        }
        Ok(config.parent().expect("a file has a parent").to_path_buf())
    }
}

#[cfg(not(feature = "hub"))]
mod hub {
    use std::path::PathBuf;

    pub fn can_download(_: &str) -> bool {
        false
    }

    pub fn download(_: &str) -> anyhow::Result<PathBuf> {
        unreachable!("can_download is false without the `hub` feature")
    }
}

/// A conversation file: a JSON array of messages, or an object with `messages` (and
/// optionally `tools`). `-` reads standard input.
pub fn read_conversation(path: &str) -> Result<(Vec<Value>, Option<Vec<Value>>)> {
    let text = read_input(path)?;
    let value: Value =
        serde_json::from_str(&text).with_context(|| format!("{path}: invalid JSON"))?;
    let (messages, tools) = match value {
        Value::Array(m) => (m, None),
        Value::Object(mut o) => {
            let messages = match o.remove("messages") {
                Some(Value::Array(m)) => m,
                _ => bail!(
                    "{path}: expected a JSON array of messages or an object with a `messages` array"
                ),
            };
            let tools = match o.remove("tools") {
                Some(Value::Array(t)) => Some(t),
                None | Some(Value::Null) => None,
                Some(_) => bail!("{path}: `tools` must be an array"),
            };
            (messages, tools)
        }
        _ => {
            bail!("{path}: expected a JSON array of messages or an object with a `messages` array")
        }
    };
    for (i, m) in messages.iter().enumerate() {
        if m.get("role").and_then(Value::as_str).is_none() {
            bail!("{path}: message {i} has no string `role`");
        }
    }
    Ok((messages, tools))
}

pub fn read_tools(path: &str) -> Result<Vec<Value>> {
    let text = read_input(path)?;
    match serde_json::from_str(&text).with_context(|| format!("{path}: invalid JSON"))? {
        Value::Array(t) => Ok(t),
        _ => bail!("{path}: tools must be a JSON array"),
    }
}

fn read_input(path: &str) -> Result<String> {
    if path == "-" {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)
            .context("reading standard input")?;
        Ok(s)
    } else {
        std::fs::read_to_string(Path::new(path)).with_context(|| format!("reading {path}"))
    }
}

#[derive(clap::Args, Debug, Clone)]
pub struct TemplateArgs {
    /// Tools (JSON array of OpenAI function schemas) passed to the chat template.
    #[arg(long)]
    pub tools: Option<String>,

    /// Do not append the assistant header that asks the model to answer.
    #[arg(long)]
    pub no_generation_prompt: bool,

    /// Qwen3 thinking switch passed to the template (`false` pre-fills an empty think block).
    #[arg(long)]
    pub enable_thinking: Option<bool>,
}

impl TemplateArgs {
    pub fn options(&self, file_tools: Option<Vec<Value>>) -> Result<ChatOptions> {
        let tools = match &self.tools {
            Some(p) => Some(read_tools(p)?),
            None => file_tools,
        };
        let mut options = ChatOptions {
            add_generation_prompt: !self.no_generation_prompt,
            tools,
            ..ChatOptions::default()
        };
        if let Some(t) = self.enable_thinking {
            options = options.with_enable_thinking(t);
        }
        Ok(options)
    }
}

/// A progress bar `LABEL [=====>    ] pos/len MSG ETA` for long work.
pub fn progress_bar(len: u64, label: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(len);
    bar.set_style(
        indicatif::ProgressStyle::with_template(&format!(
            "{label} [{{bar:30}}] {{pos}}/{{len}} {{msg}} ETA {{eta}}"
        ))
        .expect("valid template")
        .progress_chars("=> "),
    );
    bar
}

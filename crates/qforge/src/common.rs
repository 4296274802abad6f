//! Options and helpers shared by the subcommands.

use std::path::Path;

use anyhow::{Context, Result, bail};
use candle_core::{DType, Device};
use qforge_model::{ChatOptions, Checkpoint};
use serde_json::Value;

/// Sets thread defaults before candle starts its pools.
pub fn init_runtime() {
    // candle's element-wise pool spins beside rayon's gemm pool; on small machines two
    // pools oversubscribe the cores (specs/train_perf.md). Users can still override it.
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        // SAFETY: called first thing in main, before any other thread exists.
        unsafe { std::env::set_var("CANDLE_NUM_THREADS", "1") };
    }
    let filter = tracing_subscriber::EnvFilter::try_from_env("QFORGE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
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
}

impl ModelArgs {
    pub fn dtype(&self) -> Result<DType> {
        qforge_model::parse_dtype(&self.dtype)
            .with_context(|| format!("unknown --dtype `{}` (use f32, f16 or bf16)", self.dtype))
    }

    pub fn load(&self) -> Result<Checkpoint> {
        let dtype = self.dtype()?;
        let device = Device::Cpu;
        match &self.model {
            Some(m) => {
                Checkpoint::load(m, dtype, &device).with_context(|| format!("loading model `{m}`"))
            }
            None => {
                let dir = crate::demo::demo_model_dir()?;
                eprintln!(
                    "note: using the built-in tiny demo model (random weights); pass --model for a real checkpoint"
                );
                Ok(Checkpoint::load_dir(&dir, dtype, &device)?)
            }
        }
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

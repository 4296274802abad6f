//! `qforge compress`: QwenLong-CPRS on one context (prints the kept spans and the ratio);
//! `qforge compress eval|data|proxy`: synthetic evaluation, training data, and the
//! chat-completions middleware in front of any OpenAI-compatible server or an in-process model.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use qforge_compress::model::Compressor;
use qforge_compress::pipeline::{CompressOptions, compress};
use qforge_compress::postprocess::Repair;

#[derive(clap::Args, Debug)]
#[command(
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true,
    after_help = "The model is a QwenLong-CPRS checkpoint directory (Qwen2 backbone with \
    `cls_head`; e.g. Tongyi-Zhiwen/QwenLong-CPRS-7B downloaded, or `qforge train cprs` output). \
    Example:\n  qforge compress \
    --model ./QwenLong-CPRS-7B --instruction \"You are an expert for information extraction...\" \
    --query \"What is the magic number?\" --context haystack.txt --batch 4"
)]
pub struct Args {
    #[command(subcommand)]
    command: Option<CompressCommand>,
    /// Compressor checkpoint directory.
    #[arg(long, required = true)]
    model: Option<PathBuf>,
    /// The compression instruction (system prompt).
    #[arg(long, required = true)]
    instruction: Option<String>,
    /// The user's question the context is compressed for.
    #[arg(long, required = true)]
    query: Option<String>,
    /// A UTF-8 text file.
    #[arg(long, required = true)]
    context: Option<PathBuf>,
    #[command(flatten)]
    options: OptionArgs,
    /// One JSON object (spans with offsets and the accounting) instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Subcommand, Debug)]
pub enum CompressCommand {
    /// RULER-style synthetic tasks generated on the fly: span recall of the gold facts, answer
    /// recall, compression ratio and throughput per task; with a reader, its accuracy on the
    /// compressed and on the full context.
    Eval(EvalArgs),
    /// Writes synthetic training samples (JSONL for `qforge train cprs --set data=FILE`).
    Data(DataArgs),
    /// An OpenAI-compatible chat proxy that compresses each request's long context before
    /// forwarding it (to --upstream, or to a model run in-process).
    Proxy(ProxyArgs),
}

/// Pipeline settings shared by the commands.
#[derive(clap::Args, Debug, Clone)]
pub struct OptionArgs {
    /// Tokens per window, prefix included (released: 8192).
    #[arg(long, default_value_t = 8192)]
    window: usize,
    /// Keep spans of more than this many tokens (released server: 4).
    #[arg(long, default_value_t = 4)]
    min_keyword_len: usize,
    /// Widen spans to whole sentences.
    #[arg(long)]
    complete_sentence: bool,
    /// Token windows even for CJK text (off: whole sentences are packed, as released).
    #[arg(long)]
    no_split_with_sent: bool,
    /// Windows per forward pass.
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Also run the backward repair pass the released code never runs.
    #[arg(long)]
    fixed_repair: bool,
    /// Category mode: tag words of the instruction (comma-separated, e.g. `needle,fact`); each
    /// kept span is labelled with the one the LM head favours (or `outside`).
    #[arg(long, value_delimiter = ',')]
    categories: Vec<String>,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Weight and compute dtype of the compressor: f32, f16 or bf16 (bf16 on GPUs; on CPU f16
    /// halves memory, bf16 matmul is ~10x slower there).
    #[arg(long, default_value = "f32")]
    dtype: String,
}

impl OptionArgs {
    fn options(&self) -> CompressOptions {
        CompressOptions {
            window: self.window,
            min_keyword_len: self.min_keyword_len,
            complete_sentence: self.complete_sentence,
            split_with_sent: !self.no_split_with_sent,
            repair: if self.fixed_repair {
                Repair::Fixed
            } else {
                Repair::Released
            },
            batch: self.batch,
            categories: self.categories.clone(),
            ..CompressOptions::default()
        }
    }

    fn load(&self, dir: &std::path::Path) -> Result<Compressor> {
        let device = qforge_util::parse_device(&self.device)
            .with_context(|| format!("--device `{}`", self.device))?;
        let dtype = qforge_util::parse_dtype(&self.dtype)
            .with_context(|| format!("unknown --dtype `{}` (use f32, f16 or bf16)", self.dtype))?;
        Compressor::load(dir, dtype, &device)
            .with_context(|| format!("loading the compressor in {}", dir.display()))
    }
}

pub fn run(args: Args) -> Result<()> {
    match args.command {
        Some(CompressCommand::Eval(a)) => return eval(a),
        Some(CompressCommand::Data(a)) => return data(a),
        Some(CompressCommand::Proxy(a)) => return proxy(a),
        None => {}
    }
    let (Some(model), Some(instruction), Some(query), Some(context_path)) =
        (args.model, args.instruction, args.query, args.context)
    else {
        anyhow::bail!("qforge compress needs --model, --instruction, --query and --context");
    };
    let bytes = std::fs::read(&context_path)
        .with_context(|| format!("reading {}", context_path.display()))?;
    let context = String::from_utf8(bytes).map_err(|e| {
        anyhow::anyhow!(
            "{} is not UTF-8 (byte {})",
            context_path.display(),
            e.utf8_error().valid_up_to()
        )
    })?;
    let compressor = args.options.load(&model)?;
    let options = args.options.options();
    let started = std::time::Instant::now();
    let out = compress(&compressor, &instruction, &query, &context, &options)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        for (i, s) in out.spans.iter().enumerate() {
            match &out.categories {
                Some(c) => println!("[{} {:.2}] {}", c[i].tag, c[i].probability, s.text),
                None => println!("{}", s.text),
            }
        }
    }
    eprintln!(
        "{} context tokens in {} windows -> {} kept tokens in {} spans ({}); {:.0} context tokens/s",
        out.context_tokens,
        out.windows,
        out.kept_tokens,
        out.spans.len(),
        out.ratio
            .map_or("nothing kept".to_string(), |r| format!("{r:.1}x")),
        out.context_tokens as f64 / started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Where synthetic samples come from.
#[derive(clap::Args, Debug, Clone)]
pub struct SynthArgs {
    /// Tasks (repeatable): niah_single, niah_multikey, kv, vt, qa.
    #[arg(long = "task", default_values_t = ["niah_single".to_string(), "niah_multikey".into(), "vt".into(), "kv".into()])]
    tasks: Vec<String>,
    /// Samples per task.
    #[arg(long, default_value_t = 20)]
    samples: usize,
    /// Context length in tokens of the compressor's tokenizer.
    #[arg(long, default_value_t = 4096)]
    tokens: usize,
    /// `noise` (RULER's repeated line) or a directory of .txt essays, e.g.
    /// ../shared/data/longctx/PaulGrahamEssays.
    #[arg(long, default_value = "noise")]
    haystack: String,
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

impl SynthArgs {
    fn samples(
        &self,
        tok: &qforge_model::Tokenizer,
    ) -> Result<Vec<qforge_compress::synthetic::Sample>> {
        let spec = qforge_compress::synthetic::SampleSpec {
            tasks: self.tasks.clone(),
            samples: self.samples,
            tokens: self.tokens,
            haystack: self.haystack.clone(),
            seed: self.seed,
        };
        Ok(spec.generate(tok)?)
    }
}

#[derive(clap::Args, Debug)]
#[command(
    after_help = "Example:\n  qforge compress eval --model runs/cprs/final --tokens 8192 \
    --haystack ../shared/data/longctx/PaulGrahamEssays --reader-url http://127.0.0.1:8000/v1"
)]
pub struct EvalArgs {
    /// Compressor checkpoint directory.
    #[arg(long)]
    model: PathBuf,
    #[command(flatten)]
    synth: SynthArgs,
    #[command(flatten)]
    options: OptionArgs,
    /// Downstream mode: an OpenAI-compatible reader (e.g. vLLM, `qforge serve`).
    #[arg(long)]
    reader_url: Option<String>,
    /// Model name sent to --reader-url; or, without --reader-url, a checkpoint run in-process
    /// as the reader.
    #[arg(long)]
    reader_model: Option<String>,
    /// Environment variable holding --reader-url's API key.
    #[arg(long, default_value = "OPENAI_API_KEY")]
    reader_key_env: String,
    /// Reader answer length.
    #[arg(long, default_value_t = 64)]
    reader_max_tokens: usize,
    /// Also write the report (summary per task and per sample) here as JSON.
    #[arg(long)]
    out: Option<PathBuf>,
}

fn reader(args: &EvalArgs) -> Result<Option<Arc<dyn qforge_engine::ChatBackend>>> {
    Ok(match (&args.reader_url, &args.reader_model) {
        (Some(url), model) => {
            let mut config = qforge_engine::RemoteConfig::new(
                url,
                model.clone().unwrap_or_else(|| "default".into()),
            );
            config.api_key = std::env::var(&args.reader_key_env).ok();
            Some(Arc::new(qforge_engine::RemoteBackend::new(config)?))
        }
        (None, Some(model)) => {
            let model_args = crate::common::ModelArgs {
                model: Some(model.clone()),
                dtype: "f32".into(),
                adapter: None,
                device: args.options.device.clone(),
            };
            Some(Arc::new(
                crate::common::in_process_backend(&model_args, "reader")?.0,
            ))
        }
        (None, None) => None,
    })
}

fn eval(args: EvalArgs) -> Result<()> {
    use qforge_compress::eval::Reader;
    let compressor = args.options.load(&args.model)?;
    let options = args.options.options();
    let samples = args.synth.samples(&compressor.tokenizer)?;
    let reader = reader(&args)?;
    let bar = crate::common::progress_bar(samples.len() as u64, "  eval");
    let report = qforge_compress::eval::run(
        &compressor,
        &samples,
        &options,
        reader.as_deref().map(|backend| Reader {
            backend,
            max_tokens: args.reader_max_tokens,
        }),
        |score| {
            bar.set_message(format!("{} recall {:.2}", score.task, score.fact_recall));
            bar.inc(1);
        },
    )?;
    bar.finish_and_clear();
    println!(
        "{:<14} {:>7} {:>11} {:>13} {:>9} {:>13}{}",
        "task",
        "samples",
        "fact_recall",
        "answer_recall",
        "ratio",
        "ctx tok/s",
        if reader.is_some() {
            "  reader(compressed)  reader(full)"
        } else {
            ""
        }
    );
    for (task, s, read) in &report.rows() {
        println!(
            "{:<14} {:>7} {:>11.3} {:>13.3} {:>9} {:>13.0}{}",
            task,
            s.samples,
            s.fact_recall,
            s.answer_recall,
            s.ratio.map_or("-".into(), |r| format!("{r:.1}x")),
            s.tokens_per_s,
            read.map_or(String::new(), |r| format!(
                "  {:>18.3}  {:>12.3}",
                r.compressed, r.full
            ))
        );
    }
    if let Some(path) = &args.out {
        qforge_util::write_json_atomic(path, &report.to_json())?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

#[derive(clap::Args, Debug)]
#[command(
    after_help = "Example:\n  qforge compress data --tokenizer ./Qwen2-0.5B --task niah_single \
    --task vt --samples 500 --tokens 8192 --out cprs_train.jsonl"
)]
pub struct DataArgs {
    /// A directory holding tokenizer.json (sizes contexts in its tokens).
    #[arg(long)]
    tokenizer: PathBuf,
    #[command(flatten)]
    synth: SynthArgs,
    /// Output JSONL.
    #[arg(long)]
    out: PathBuf,
}

fn data(args: DataArgs) -> Result<()> {
    let tok = qforge_model::Tokenizer::from_dir(&args.tokenizer)
        .with_context(|| format!("loading the tokenizer in {}", args.tokenizer.display()))?;
    let samples = args.synth.samples(&tok)?;
    let mut text = String::new();
    for s in &samples {
        text.push_str(&serde_json::to_string(s)?);
        text.push('\n');
    }
    qforge_util::write_atomic(&args.out, text.as_bytes())?;
    eprintln!("wrote {} samples to {}", samples.len(), args.out.display());
    Ok(())
}

#[derive(clap::Args, Debug)]
#[command(
    after_help = "The context of a request is a message with role `context`, else the longest system or\n\
    user message (other than the last user message) of at least --min-tokens tokens, else the last\n\
    user message itself when that long (its last paragraph is then the question). It becomes the system\n\
    message \"Doc content:\\n\\n\" + the kept spans; the reply carries `x-qforge-compress` with the\n\
    accounting.\n\nExamples:\n  \
    qforge compress proxy --model ./QwenLong-CPRS-7B --upstream http://127.0.0.1:8000/v1 --port 8001\n  \
    qforge compress proxy --model runs/cprs/final -m Qwen/Qwen3-0.6B"
)]
pub struct ProxyArgs {
    /// Compressor checkpoint directory.
    #[arg(long)]
    model: PathBuf,
    /// The OpenAI-compatible server to forward to (vLLM, SGLang, `qforge serve`, a commercial
    /// API). Without it, -m runs in-process.
    #[arg(long)]
    upstream: Option<String>,
    /// Model name sent to --upstream (default: the first it lists).
    #[arg(long)]
    upstream_model: Option<String>,
    #[arg(long, env = "QFORGE_UPSTREAM_API_KEY", hide_env_values = true)]
    upstream_api_key: Option<String>,
    /// In-process model (without --upstream): a checkpoint directory or HF id; default the
    /// built-in demo model.
    #[arg(short = 'm', long = "local-model")]
    local_model: Option<String>,
    /// The compression instruction (default: the released supporting-facts prompt).
    #[arg(long)]
    instruction: Option<String>,
    /// Contexts shorter than this many tokens are forwarded as they are.
    #[arg(long, default_value_t = 4096)]
    min_tokens: usize,
    #[command(flatten)]
    options: OptionArgs,
    #[command(flatten)]
    listen: crate::common::ListenArgs,
}

fn proxy(args: ProxyArgs) -> Result<()> {
    use qforge_compress::middleware::{CompressingBackend, MiddlewareConfig};
    let compressor = Arc::new(args.options.load(&args.model)?);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let (upstream, target): (Arc<dyn qforge_engine::ChatBackend>, String) = match &args.upstream
        {
            Some(url) => (
                Arc::new(
                    crate::common::connect_upstream(
                        url,
                        args.upstream_model.as_deref(),
                        args.upstream_api_key.clone(),
                    )
                    .await?,
                ),
                url.clone(),
            ),
            None => {
                let model_args = crate::common::ModelArgs {
                    model: args.local_model.clone(),
                    dtype: "f32".into(),
                    adapter: None,
                    device: args.options.device.clone(),
                };
                let name = args
                    .local_model
                    .clone()
                    .unwrap_or_else(|| "qforge-demo".into());
                let backend = crate::common::in_process_backend(&model_args, &name)?.0;
                (Arc::new(backend), format!("{name} (in-process)"))
            }
        };
        let backend = CompressingBackend::new(
            upstream,
            compressor,
            MiddlewareConfig {
                instruction: args
                    .instruction
                    .clone()
                    .unwrap_or_else(|| qforge_compress::synthetic::QA_INSTRUCTION.into()),
                min_tokens: args.min_tokens,
                options: args.options.options(),
            },
        );
        let listener = args.listen.bind().await?;
        eprintln!(
            "compressing proxy on http://{}/v1 -> {target}",
            listener.local_addr()?
        );
        let state = qforge_serve::proxy::ProxyState {
            backend: Arc::new(backend),
            config: Arc::new(args.listen.server_config()),
        };
        qforge_serve::proxy::serve_proxy(listener, state, crate::serve::shutdown_signal()).await?;
        Ok(())
    })
}

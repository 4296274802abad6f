//! `qforge guard moderate|stream|eval|proxy`: Qwen3Guard from the command line.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use qforge_guard::datasets;
use qforge_guard::eval::{Guard, ModerationReport, evaluate};
use qforge_guard::proxy::{GuardedBackend, PromptAction, ProxyConfig};
use qforge_guard::{Debounce, GenGuard, Mode, Policy, StreamGuard};
use qforge_serve::proxy::ProxyState;
use serde_json::{Value, json};

use crate::common::{ModelArgs, read_conversation};

#[derive(clap::Subcommand, Debug)]
pub enum GuardCommand {
    /// Moderate one prompt or conversation with Qwen3Guard-Gen (the last message's role picks
    /// prompt or response moderation).
    Moderate(ModerateArgs),
    /// Per-token verdicts of Qwen3Guard-Stream over a conversation, as if it were streamed.
    Stream(StreamArgs),
    /// Precision/recall/F1 (strict and loose) of a guard on a labelled set; JSON + PNG report.
    Eval(EvalArgs),
    /// An OpenAI-compatible chat proxy that moderates prompts and streams replies through
    /// Qwen3Guard-Stream, cutting them off with finish_reason "content_filter".
    Proxy(ProxyArgs),
}

#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:\n  \
    qforge guard moderate -m Qwen/Qwen3Guard-Gen-0.6B --prompt 'How do I pick a lock?'\n  \
    qforge guard moderate -m ./gen --messages chat.json --fast")]
pub struct ModerateArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// A user prompt (prompt moderation).
    #[arg(long, short = 'p', conflicts_with = "messages")]
    prompt: Option<String>,
    /// A conversation file (JSON list of messages); ending with an assistant message moderates
    /// that response.
    #[arg(long)]
    messages: Option<String>,
    /// Also read the severity probabilities from the logits after `Safety:` (one prefill).
    #[arg(long)]
    fast: bool,
    /// strict: Controversial counts as unsafe; loose: as safe.
    #[arg(long, value_enum, default_value = "strict")]
    policy: PolicyArg,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy)]
pub enum PolicyArg {
    Strict,
    Loose,
}

impl From<PolicyArg> for Policy {
    fn from(p: PolicyArg) -> Self {
        match p {
            PolicyArg::Strict => Policy::Strict,
            PolicyArg::Loose => Policy::Loose,
        }
    }
}

#[derive(clap::ValueEnum, Debug, Clone, Copy)]
pub enum DebounceArg {
    /// Two consecutive non-Safe tokens (the paper).
    Paper,
    /// Two consecutive Unsafe, else two consecutive Controversial (eval/eval_stream.py).
    EvalScript,
}

impl From<DebounceArg> for Debounce {
    fn from(d: DebounceArg) -> Self {
        match d {
            DebounceArg::Paper => Debounce::Paper,
            DebounceArg::EvalScript => Debounce::EvalScript,
        }
    }
}

fn conversation(prompt: &Option<String>, messages: &Option<String>) -> Result<Vec<Value>> {
    match (prompt, messages) {
        (Some(p), None) => Ok(vec![json!({"role": "user", "content": p})]),
        (None, Some(path)) => Ok(read_conversation(path)?.0),
        _ => bail!("give --prompt TEXT or --messages FILE"),
    }
}

fn require_model(model: &ModelArgs) -> Result<PathBuf> {
    if model.model.is_none() {
        bail!("--model is required: a Qwen3Guard checkpoint directory or cached Hugging Face id");
    }
    model.dir()
}

fn device(model: &ModelArgs) -> Result<candle_core::Device> {
    qforge_util::parse_device(&model.device).with_context(|| format!("--device `{}`", model.device))
}

fn moderate(args: ModerateArgs) -> Result<()> {
    let messages = conversation(&args.prompt, &args.messages)?;
    let dir = require_model(&args.model)?;
    let guard = GenGuard::load(&dir, args.model.dtype()?, &device(&args.model)?)
        .with_context(|| format!("loading the Gen guard from {}", dir.display()))?;
    let convs = vec![messages];
    let outcome = guard.moderate(&convs)?.remove(0);
    let policy: Policy = args.policy.into();
    let mut report = json!({"outcome": outcome});
    if let Some(v) = outcome.verdict() {
        report["flagged"] = json!(v.is_flagged(policy));
    }
    if args.fast {
        report["probabilities"] = json!(guard.safety_probs(&convs)?[0]);
    }
    println!("{}", serde_json::to_string_pretty(&report)?);
    if outcome.verdict().is_none() {
        eprintln!("warning: the guard's output does not follow the Safety/Categories grammar");
    }
    Ok(())
}

#[derive(clap::Args, Debug)]
#[command(
    after_help = "Prints one line per reply token: position, token, risk, P(unsafe), \
    P(controversial), category; a '!' marks the flag.\n\nExample:\n  \
    qforge guard stream -m Qwen/Qwen3Guard-Stream-0.6B --prompt 'Hi' --response 'Hello there!'"
)]
pub struct StreamArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// The user turn (with --response), or use --messages.
    #[arg(long, short = 'p', conflicts_with = "messages", requires = "response")]
    prompt: Option<String>,
    /// The assistant reply to moderate token by token.
    #[arg(long)]
    response: Option<String>,
    /// A conversation file ending with the assistant reply.
    #[arg(long)]
    messages: Option<String>,
    #[arg(long, value_enum, default_value = "paper")]
    debounce: DebounceArg,
    /// Print JSON lines instead of a table.
    #[arg(long)]
    json: bool,
}

fn stream(args: StreamArgs) -> Result<()> {
    let mut messages = conversation(&args.prompt, &args.messages)?;
    if let Some(r) = &args.response {
        messages.push(json!({"role": "assistant", "content": r}));
    }
    let Some(reply) = messages
        .last()
        .filter(|m| m["role"] == "assistant")
        .and_then(|m| m["content"].as_str())
        .map(str::to_string)
    else {
        bail!("the conversation must end with the assistant reply to moderate");
    };
    let dir = require_model(&args.model)?;
    let guard = Arc::new(
        StreamGuard::load(&dir, args.model.dtype()?, &device(&args.model)?)
            .with_context(|| format!("loading the Stream guard from {}", dir.display()))?,
    );
    let prompt = &messages[..messages.len() - 1];
    let (mut session, query) = guard.open_messages(prompt, args.debounce.into())?;
    let tok = guard.tokenizer().clone();
    if args.json {
        println!("{}", json!({"prompt": query}));
    } else {
        println!(
            "prompt: {} (P unsafe {:.2}, controversial {:.2}), category {}",
            query.risk.as_str(),
            query.risk_probs[1],
            query.risk_probs[2],
            query.category.as_str()
        );
    }
    let ids = tok.encode(&reply, false)?;
    for &id in &ids {
        let verdicts = session.push(&[id])?;
        for v in verdicts {
            let flagged = session.flag().is_some_and(|f| f.position == v.position);
            if args.json {
                println!("{}", json!({"verdict": v, "flag": flagged}));
            } else {
                println!(
                    "{:>5} {:<16} {:<13} {:.2} {:.2} {}{}",
                    v.position,
                    format!("{:?}", tok.decode(&[v.token], false)?),
                    v.risk.as_str(),
                    v.risk_probs[1],
                    v.risk_probs[2],
                    v.category.as_str(),
                    if flagged { "  !" } else { "" }
                );
            }
        }
    }
    let summary = json!({"flag": session.flag(), "final_flag": session.final_flag()});
    if args.json {
        println!("{summary}");
    } else {
        match session.flag() {
            Some(f) => println!(
                "flagged at token {} ({}, {})",
                f.position,
                f.risk.as_str(),
                f.category.as_str()
            ),
            None => println!("not flagged"),
        }
    }
    session.close();
    Ok(())
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq)]
pub enum TaskArg {
    Prompt,
    Response,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq)]
pub enum GuardKind {
    Gen,
    Stream,
}

#[derive(clap::Args, Debug)]
#[command(
    after_help = "Datasets: the OpenAI moderation set (samples-1680.jsonl.gz), \
    SimpleSafetyTests, XSTest (v1/v2 prompt CSV, and model-completion CSV with refusal labels), \
    ToxicChat (JUDGE-BENCH JSON), HarmBench behaviours (CSV) and its classifier validation set \
    (JSON, responses with human votes), WildGuardTest rows, and JSON lines in the \
    Qwen3GuardTest layout (message/label/unsafe_start_index/unsafe_end_index/refusal). The \
    format is recognised from the file.\n\nScoring follows eval/eval_gen.py and \
    eval/eval_stream.py: gold positives are `Unsafe` items, unparsable Gen output counts as not \
    unsafe (and is reported), latency is measured over gold-Unsafe items with spans. With \
    --debounce eval-script (Stream) and --predictions, the official scripts' figures are \
    reproduced from their own output files.\n\nExamples:\n  \
    qforge guard eval -m Qwen/Qwen3Guard-Gen-0.6B --dataset ../shared/data/guard/xstest_prompts.csv --task prompt\n  \
    qforge guard eval --predictions result_stream.jsonl --task response --debounce eval-script"
)]
pub struct EvalArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[arg(long, required_unless_present = "predictions")]
    dataset: Option<PathBuf>,
    #[arg(long, value_enum)]
    task: TaskArg,
    /// gen: Qwen3Guard-Gen (decoded verdicts); stream: Qwen3Guard-Stream (query heads for
    /// prompts, debounced per-token verdicts for responses).
    #[arg(long, value_enum, default_value = "gen")]
    mode: GuardKind,
    /// Evaluate only the first N examples.
    #[arg(long)]
    limit: Option<usize>,
    /// How a Stream response's token verdicts become one prediction: the paper's rule, or
    /// eval/eval_stream.py's (reproduces its F1 and latency figures).
    #[arg(long, value_enum, default_value = "paper")]
    debounce: DebounceArg,
    /// Score a predictions file written by the official scripts (eval_gen.py's
    /// `guard_predict`, eval_stream.py's `pred_risk_levels` + `split_idx_eval`) instead of
    /// running a model; --dataset and --model are then not needed.
    #[arg(long, conflicts_with = "dataset")]
    predictions: Option<PathBuf>,
    #[arg(long, default_value_t = 8)]
    batch_size: usize,
    /// Where report.json and report.png go.
    #[arg(long, default_value = "runs/guard-eval")]
    out: PathBuf,
}

fn eval(args: EvalArgs) -> Result<()> {
    let task = match args.task {
        TaskArg::Prompt => Mode::Prompt,
        TaskArg::Response => Mode::Response,
    };
    let debounce: Debounce = args.debounce.into();
    let (report, source) = if let Some(path) = &args.predictions {
        let items = qforge_guard::eval::load_predictions(path, task)?;
        let guard = match &items[0].1 {
            qforge_guard::eval::Prediction::Gen(_) => "gen",
            _ => "stream",
        };
        eprintln!("{}: {} predictions", path.display(), items.len());
        (
            qforge_guard::eval::score(task, guard, &items, debounce),
            json!({"predictions": path}),
        )
    } else {
        let dataset = args
            .dataset
            .as_ref()
            .context("--dataset (or --predictions) is required")?;
        let (format, mut examples) = datasets::load(dataset)?;
        if let Some(n) = args.limit {
            examples.truncate(n);
        }
        eprintln!(
            "{}: {} examples ({format:?})",
            dataset.display(),
            examples.len()
        );
        let dir = require_model(&args.model)?;
        let (dtype, dev) = (args.model.dtype()?, device(&args.model)?);
        let guard = match args.mode {
            GuardKind::Gen => Guard::Gen(Box::new(GenGuard::load(&dir, dtype, &dev)?)),
            GuardKind::Stream => Guard::Stream(Arc::new(StreamGuard::load(&dir, dtype, &dev)?)),
        };
        let bar = crate::common::progress_bar(examples.len() as u64, "guard eval");
        let report = evaluate(
            &guard,
            &examples,
            task,
            args.batch_size,
            debounce,
            |done, _| bar.set_position(done as u64),
        )?;
        bar.finish_and_clear();
        (
            report,
            json!({"dataset": dataset, "format": format, "model": dir}),
        )
    };
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let json_path = args.out.join("report.json");
    let mut full = source;
    full["report"] = serde_json::to_value(&report)?;
    std::fs::write(&json_path, serde_json::to_string_pretty(&full)?)?;
    let png = args.out.join("report.png");
    chart(&report, &png)?;
    print_report(&report);
    eprintln!("wrote {} and {}", json_path.display(), png.display());
    Ok(())
}

fn chart(report: &ModerationReport, path: &std::path::Path) -> Result<()> {
    let mut bars = vec![
        ("P strict".to_string(), report.strict.precision),
        ("R strict".to_string(), report.strict.recall),
        ("F1 strict".to_string(), report.strict.f1),
        ("P loose".to_string(), report.loose.precision),
        ("R loose".to_string(), report.loose.recall),
        ("F1 loose".to_string(), report.loose.f1),
    ];
    if let (Some(latency), Some(t)) = (&report.latency, &report.timeliness) {
        let n = t.items.max(1) as f64;
        bars.extend(qforge_guard::metrics::LatencyBin::ALL.iter().map(|b| {
            let count = latency.get(b.label()).copied().unwrap_or(0);
            (b.label().to_string(), count as f64 / n)
        }));
    }
    Ok(qforge_train::plot::bar_chart(
        path,
        "Qwen3Guard evaluation",
        &bars,
    )?)
}

fn print_report(r: &ModerationReport) {
    println!(
        "{} guard, {:?} task, {} examples{}",
        r.guard,
        r.task,
        r.examples,
        if r.unparsable > 0 {
            format!(
                " ({} unparsable outputs, counted as not unsafe)",
                r.unparsable
            )
        } else {
            String::new()
        }
    );
    if !r.skipped_too_long.is_empty() {
        println!(
            "  {} examples longer than the guard's context were skipped (ids in report.json)",
            r.skipped_too_long.len()
        );
    }
    for (name, s) in [("strict", &r.strict), ("loose", &r.loose)] {
        println!(
            "  {name:<6} P {:.3}  R {:.3}  F1 {:.3}  acc {:.3}",
            s.precision, s.recall, s.f1, s.accuracy
        );
    }
    if let Some(s) = &r.refusal {
        println!("  refusal F1 {:.3}", s.f1);
    }
    if let Some(l) = &r.latency {
        let bins: Vec<String> = qforge_guard::metrics::LatencyBin::ALL
            .iter()
            .map(|b| format!("{}: {}", b.label(), l.get(b.label()).copied().unwrap_or(0)))
            .collect();
        println!("  first flag vs unsafe span: {}", bins.join(", "));
    }
    if let Some(t) = &r.timeliness {
        println!(
            "  {} unsafe items with spans: exact hit {:.4}, within the first 128 tokens {:.4}",
            t.items, t.exact_hit, t.first_128
        );
    }
}

#[derive(clap::Args, Debug)]
#[command(after_help = "Example (qforge serve on :8000 as the upstream):\n  \
    qforge guard proxy --upstream http://127.0.0.1:8000/v1 --stream-model ./stream --port 8001")]
pub struct ProxyArgs {
    /// The upstream's base URL including /v1 (qforge serve, vLLM, SGLang, ...).
    #[arg(long)]
    upstream: String,
    /// Model name to request upstream (default: the first one it lists).
    #[arg(long)]
    upstream_model: Option<String>,
    #[arg(long, env = "QFORGE_UPSTREAM_API_KEY", hide_env_values = true)]
    upstream_api_key: Option<String>,
    /// Qwen3Guard-Stream checkpoint (replies, and prompts when there is no --gen-model).
    #[arg(long)]
    stream_model: String,
    /// Qwen3Guard-Gen checkpoint for prompt moderation (optional).
    #[arg(long)]
    gen_model: Option<String>,
    #[arg(long, default_value = "f32")]
    dtype: String,
    #[arg(long, default_value = "cpu")]
    device: String,
    #[arg(long, value_enum, default_value = "strict")]
    policy: PolicyArg,
    /// A flagged prompt is answered with a refusal (block) or forwarded with the verdict in
    /// the x-qforge-guard-prompt header (pass).
    #[arg(long, value_enum, default_value = "block")]
    prompt_action: PromptActionArg,
    /// Judged tokens always held back from the client (>= 1 keeps both tokens of a flagging
    /// pair from it).
    #[arg(long, default_value_t = 2)]
    hold_back: usize,
    #[command(flatten)]
    listen: crate::common::ListenArgs,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy)]
pub enum PromptActionArg {
    Block,
    Pass,
}

fn load_dir(model: &str) -> Result<PathBuf> {
    ModelArgs {
        model: Some(model.to_string()),
        dtype: "f32".into(),
        adapter: None,
        device: "cpu".into(),
    }
    .dir()
}

fn proxy(args: ProxyArgs) -> Result<()> {
    let dtype = qforge_util::parse_dtype(&args.dtype)
        .with_context(|| format!("unknown --dtype `{}`", args.dtype))?;
    let dev = qforge_util::parse_device(&args.device)?;
    let stream_guard = Arc::new(StreamGuard::load(
        &load_dir(&args.stream_model)?,
        dtype,
        &dev,
    )?);
    let gen_guard = match &args.gen_model {
        Some(m) => Some(Arc::new(GenGuard::load(&load_dir(m)?, dtype, &dev)?)),
        None => None,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let upstream = crate::common::connect_upstream(
            &args.upstream,
            args.upstream_model.as_deref(),
            args.upstream_api_key.clone(),
        )
        .await?;
        let backend = GuardedBackend::new(
            Arc::new(upstream),
            stream_guard,
            gen_guard,
            ProxyConfig {
                policy: args.policy.into(),
                prompt_action: match args.prompt_action {
                    PromptActionArg::Block => PromptAction::Block,
                    PromptActionArg::Pass => PromptAction::Pass,
                },
                hold_back: args.hold_back,
                ..ProxyConfig::default()
            },
        );
        let listener = args.listen.bind().await?;
        eprintln!(
            "guard proxy on http://{}/v1 -> {}",
            listener.local_addr()?,
            args.upstream
        );
        let state = ProxyState {
            backend: Arc::new(backend),
            config: Arc::new(args.listen.server_config()),
        };
        qforge_serve::proxy::serve_proxy(listener, state, crate::serve::shutdown_signal()).await?;
        Ok(())
    })
}

pub fn run(command: GuardCommand) -> Result<()> {
    match command {
        GuardCommand::Moderate(a) => moderate(a),
        GuardCommand::Stream(a) => stream(a),
        GuardCommand::Eval(a) => eval(a),
        GuardCommand::Proxy(a) => proxy(a),
    }
}

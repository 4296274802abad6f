//! `qforge eval longqa`: SPELL's long-context QA evaluation (pass@1 over k samples and pass@k
//! with max(cover-EM, judge) scoring) on long-context files; `qforge eval writing`: Writing-RL's
//! writing evaluation (LongBench-Write's length score, a pairwise judge against a baseline);
//! `qforge eval museg`: MUSEG's video grounding evaluation (mIoU, R@IoU, multi-segment F1).

use std::path::PathBuf;

use anyhow::{Context, Result};
use qforge_rl::spell::eval::{LongQaSettings, Sampler, load_items, run};
use qforge_rl::spell::prompts::PromptSet;

use crate::common::ModelArgs;

#[derive(clap::Subcommand, Debug)]
pub enum EvalCommand {
    /// Long-document QA as SPELL evaluates it: k samples per question (temperature 0.7, top-p
    /// 0.95) with the responder prompts, middle truncation to an input cap, each sample scored
    /// max(cover-EM / numeric / letter match, LLM judge); prints pass@1 and pass@k per task.
    #[command(
        after_help = "Data: JSONL rows {id, task (docmath_qa | doc_general_qa | doc_mc), context or paragraphs,\n\
        question, answer}, L-Eval files (multidoc_qa, financial_qa, scientific_qa; quality as multiple\n\
        choice) or lost-in-the-middle files (kv-retrieval, nq-open), gzip allowed.\n\
        Writes OUT/samples.jsonl (one line per question; a rerun resumes after the last one) and\n\
        OUT/report.json.\n\nExample:\n  \
        qforge eval longqa -m Qwen/Qwen2.5-7B-Instruct --data ../shared/data/longctx/multidoc_qa.jsonl \\\n    \
        --samples 8 --max-input-tokens 16384 --judge-url http://127.0.0.1:8001/v1 --out runs/longqa"
    )]
    Longqa(LongQaArgs),
    /// Long-form writing as Writing-RL evaluates it: one response per prompt on LongBench-Write
    /// and WritingBench files, LongBench-Write's length score S_l, and a pairwise judge of each
    /// response against a baseline model's (both orders by default); report JSON + PNG.
    #[command(
        after_help = "Data: LongBench-Write rows {prompt, type, length} (S_l needs `length`) or WritingBench rows\n\
        {index, domain1, query, checklist} (the checklist becomes the judge's criteria).\n\
        Writes OUT/samples.jsonl (one line per prompt; a rerun resumes after the last one),\n\
        OUT/report.json and OUT/report.png. The judge runs only with --baseline (or --baseline-url);\n\
        without --judge-url it is the built-in rubric judge (length, required words, repetition).\n\nExample:\n  \
        qforge eval writing -m runs/writing_rl/policy --baseline Qwen/Qwen2.5-7B-Instruct \\\n    \
        --data ../shared/data/writing/longbench_write_en.jsonl --judge-url http://127.0.0.1:8001/v1 \\\n    \
        --judge-model judge --out runs/eval_writing"
    )]
    Writing(WritingArgs),
    /// Video temporal grounding as MUSEG evaluates it (`eval_grounding.py`): greedy answers with
    /// the timestamp prompt, then mIoU and R@IoU 0.1/0.3/0.5/0.7 (single segment, Charades-STA)
    /// or F1 of IoU-matched segments per threshold (multi-segment, THUMOS); report JSON + PNG.
    #[command(
        after_help = "Data: a grounding file (a JSON array of {video, question, groundtruth: [[start, end], ...]},\n\
        e.g. ../shared/data/museg/charades_sta.json or thumos14.json), or --colour-time N generated clips.\n\
        Predictions come from -m MODEL (a Qwen2.5-VL; videos are frame directories under --video-root,\n\
        extracted at --video-fps, sampled with min_pixels 16*28*28 and total_pixels 3584*28*28) or from\n\
        --predictions (JSONL rows {generation} or {output}, or the official script's output JSON).\n\
        Writes OUT/samples.jsonl (a rerun resumes after the last line), OUT/report.json (with the\n\
        official stat keys) and OUT/report.png.\n\nExamples:\n  \
        qforge eval museg -m runs/museg/phase-2/policy --data ../shared/data/museg/charades_sta.json \\\n    \
        --video-root videos --video-fps 4 --out runs/eval_charades\n  \
        qforge eval museg --data ../shared/data/museg/thumos14.json --predictions eval_thumos14.json"
    )]
    Museg(MusegArgs),
}

#[derive(clap::Args, Debug)]
pub struct MusegArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Grounding queries (JSON array); see --colour-time for generated ones.
    #[arg(long, required_unless_present = "colour_time")]
    data: Option<PathBuf>,
    /// Evaluate on N held-out ColourTime clips (seeds from --seed) instead of --data.
    #[arg(long, conflicts_with_all = ["data", "predictions"])]
    colour_time: Option<usize>,
    /// tvg (one segment: mIoU, R@IoU) or tal (several: F1); default: tvg when every query
    /// has one ground-truth segment.
    #[arg(long)]
    kind: Option<String>,
    /// Score these predictions instead of running a model.
    #[arg(long)]
    predictions: Option<PathBuf>,
    /// Where the queries' `video` paths resolve (frame directories).
    #[arg(long, default_value = "videos")]
    video_root: PathBuf,
    /// The rate the frame directories were extracted at.
    #[arg(long, default_value_t = 2.0)]
    video_fps: f64,
    #[arg(long, default_value_t = 512)]
    max_new_tokens: usize,
    /// Queries generated together.
    #[arg(long, default_value_t = 10)]
    batch: usize,
    /// Only the first N queries.
    #[arg(long)]
    limit: Option<usize>,
    #[arg(long, default_value_t = 1_000_000)]
    seed: u64,
    #[arg(long, default_value = "runs/eval_museg")]
    out: PathBuf,
}

#[derive(clap::Args, Debug)]
pub struct WritingArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Prompt files (repeatable).
    #[arg(long, required = true)]
    data: Vec<PathBuf>,
    /// The baseline model the judge compares against (a local directory or cached HF id).
    #[arg(long)]
    baseline: Option<String>,
    /// Sample the baseline from this OpenAI-compatible server instead (raw completions of the
    /// same prompt ids; the model's tokenizer is used); --baseline-model names it there.
    #[arg(long)]
    baseline_url: Option<String>,
    #[arg(long, default_value = "")]
    baseline_model: String,
    /// The judge: an OpenAI-compatible server (default: the built-in rubric judge).
    #[arg(long)]
    judge_url: Option<String>,
    #[arg(long, default_value = "judge")]
    judge_model: String,
    /// Which slot the evaluated response takes: both (default; bias-controlled),
    /// position-advantage (first) or position-disadvantage (second).
    #[arg(long, default_value = "both")]
    judge_position: String,
    #[arg(long, default_value_t = 32768)]
    max_new_tokens: usize,
    /// Prompts longer than this many tokens keep their first and last halves (0: no cap).
    #[arg(long, default_value_t = 0)]
    max_input_tokens: usize,
    #[arg(long, default_value_t = 0.5)]
    temperature: f32,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Evaluate at most this many prompts (the first ones).
    #[arg(long)]
    limit: Option<usize>,
    /// Output directory.
    #[arg(long, default_value = "runs/eval_writing")]
    out: PathBuf,
}

#[derive(clap::Args, Debug)]
pub struct LongQaArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Question files (repeatable).
    #[arg(long, required = true)]
    data: Vec<PathBuf>,
    /// Samples per question (k).
    #[arg(long, default_value_t = 8)]
    samples: usize,
    /// Prompts longer than this many tokens keep their first and last halves.
    #[arg(long, default_value_t = 16384)]
    max_input_tokens: usize,
    #[arg(long, default_value_t = 20000)]
    max_new_tokens: usize,
    #[arg(long, default_value_t = 0.7)]
    temperature: f32,
    #[arg(long, default_value_t = 0.95)]
    top_p: f32,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Evaluate at most this many questions (the first ones).
    #[arg(long)]
    limit: Option<usize>,
    /// Sample from this OpenAI-compatible server (raw completions of the same prompt ids)
    /// instead of the embedded engine; -m then only gives the tokenizer.
    #[arg(long)]
    url: Option<String>,
    /// The judge: an OpenAI-compatible server asked where the rule score is below 1.
    #[arg(long)]
    judge_url: Option<String>,
    #[arg(long, default_value = "")]
    judge_model: String,
    /// Replacement prompt templates (see `qforge train spell --help`).
    #[arg(long)]
    prompts_dir: Option<PathBuf>,
    /// Output directory.
    #[arg(long, default_value = "runs/longqa")]
    out: PathBuf,
}

/// A client for the OpenAI-compatible server a flag names.
fn remote(url: &str, model: &str, flag: &str) -> Result<qforge_engine::RemoteBackend> {
    qforge_engine::RemoteBackend::new(qforge_engine::RemoteConfig::new(url, model))
        .with_context(|| flag.to_string())
}

/// `OUT/report.json`, written atomically.
fn write_report(out: &std::path::Path, report: &impl serde::Serialize) -> Result<()> {
    Ok(qforge_util::write_json_atomic(
        &out.join("report.json"),
        &serde_json::to_value(report).expect("serialisable"),
    )?)
}

pub fn run_command(cmd: EvalCommand) -> Result<()> {
    match cmd {
        EvalCommand::Longqa(a) => longqa(a),
        EvalCommand::Writing(a) => writing(a),
        EvalCommand::Museg(a) => museg(a),
    }
}

fn museg(args: MusegArgs) -> Result<()> {
    use qforge_rl::museg::data::load_eval;
    use qforge_rl::museg::eval::{EvalKind, evaluate, infer_kind, load_predictions};
    use qforge_rl::museg::trainer::{FrameDirMedia, colour_time_queries, predict_embedded};
    use qforge_rl::museg::video::VideoSampling;
    use qforge_rl::visual::MediaSource;
    let engine = match &args.predictions {
        Some(_) => None,
        None => {
            let engine = qforge_engine::Engine::from_checkpoint(args.model.load()?);
            if engine.vision().is_none() {
                anyhow::bail!(
                    "{} is a text-only model: MUSEG evaluation needs a vision-language checkpoint \
                     (or --predictions)",
                    args.model.dir()?.display()
                );
            }
            Some(engine)
        }
    };
    let (mut records, media, name): (_, Option<Box<dyn MediaSource>>, String) =
        match (args.colour_time, &args.data) {
            (Some(n), _) => {
                let engine = engine.as_ref().expect("--colour-time runs a model");
                let processor = &engine.vision().expect("checked").processor;
                let config = qforge_rl::museg::colour_time::ColourTimeConfig::default();
                let (records, media) = colour_time_queries(&config, n, args.seed, processor)?;
                (records, Some(Box::new(media)), format!("colour_time x{n}"))
            }
            (None, Some(path)) => {
                let records = load_eval(path)?;
                let media = engine.as_ref().map(|e| {
                    Box::new(FrameDirMedia {
                        root: args.video_root.clone(),
                        video_fps: args.video_fps,
                        // eval_grounding.py's FRAME_ARGS: no max_frames (qwen-vl-utils' 768).
                        sampling: VideoSampling {
                            max_frames: 768,
                            ..VideoSampling::default()
                        },
                        processor: e.vision().expect("checked").processor.clone(),
                        videos: records.iter().map(|r| r.video.clone()).collect(),
                    }) as Box<dyn MediaSource>
                });
                (records, media, path.display().to_string())
            }
            (None, None) => anyhow::bail!("give --data FILE or --colour-time N"),
        };
    if let Some(n) = args.limit {
        records.truncate(n);
    }
    let kind: EvalKind = match &args.kind {
        Some(k) => k.parse().map_err(anyhow::Error::msg)?,
        None => infer_kind(&records),
    };
    let file_predictions = match &args.predictions {
        Some(p) => {
            let preds = load_predictions(p)?;
            if preds.len() < records.len() {
                anyhow::bail!(
                    "{}: {} predictions for {} queries",
                    p.display(),
                    preds.len(),
                    records.len()
                );
            }
            Some(preds)
        }
        None => None,
    };
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let bar = crate::common::progress_bar(records.len() as u64, "museg eval");
    let report = evaluate(
        &records,
        kind,
        &name,
        &args.out.join("samples.jsonl"),
        args.batch,
        |chunk| match (&file_predictions, &engine, &media) {
            (Some(preds), _, _) => Ok(chunk.iter().map(|(i, _)| preds[*i].clone()).collect()),
            (None, Some(engine), Some(media)) => {
                predict_embedded(engine, media.as_ref(), chunk, args.max_new_tokens)
            }
            _ => unreachable!("a model or predictions"),
        },
        |done| bar.set_position(done as u64),
    )?;
    bar.finish_and_clear();
    write_report(&args.out, &report)?;
    let label = match kind {
        EvalKind::Tvg => "R@IoU",
        EvalKind::Tal => "F1@IoU",
    };
    let mut bars: Vec<(String, f64)> = qforge_rl::museg::eval::THRESHOLDS
        .iter()
        .zip(&report.stats.per_threshold)
        .map(|(t, v)| (format!("{label} {t}"), v * 100.0))
        .collect();
    if let Some(m) = report.stats.m_iou {
        bars.insert(0, ("mIoU".into(), m * 100.0));
    }
    qforge_train::plot::bar_chart(&args.out.join("report.png"), "MUSEG grounding", &bars)?;
    eprintln!(
        "{} queries ({kind:?}), {} without segments: {}",
        report.stats.tot,
        report.unanswered,
        bars.iter()
            .map(|(k, v)| format!("{k} {v:.1}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "{}",
        serde_json::to_string(&report.reference).expect("serialisable")
    );
    Ok(())
}

fn longqa(args: LongQaArgs) -> Result<()> {
    let mut items = Vec::new();
    for f in &args.data {
        items.extend(load_items(f)?);
    }
    if let Some(n) = args.limit {
        items.truncate(n);
    }
    let prompts = match &args.prompts_dir {
        Some(d) => PromptSet::from_dir(d)?,
        None => PromptSet::released(),
    };
    let (tokenizer, sampler) = match &args.url {
        Some(url) => {
            let dir = args.model.dir()?;
            let tokenizer = std::sync::Arc::new(qforge_model::Tokenizer::from_dir(&dir)?);
            let remote = remote(url, &args.model.model.clone().unwrap_or_default(), "--url")?;
            (tokenizer, Sampler::Remote(remote))
        }
        None => {
            let engine = qforge_engine::Engine::from_checkpoint(args.model.load()?);
            (engine.tokenizer().clone(), Sampler::Embedded(engine))
        }
    };
    let judge = match &args.judge_url {
        Some(url) => Some(
            std::sync::Arc::new(remote(url, &args.judge_model, "--judge-url")?)
                as std::sync::Arc<dyn qforge_engine::ChatBackend>,
        ),
        None => None,
    };
    let settings = LongQaSettings {
        samples: args.samples.max(1),
        temperature: args.temperature,
        top_p: args.top_p,
        max_new_tokens: args.max_new_tokens,
        max_input_tokens: args.max_input_tokens,
        seed: args.seed,
    };
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let bar = crate::common::progress_bar(items.len() as u64, "longqa");
    let report = run(
        &items,
        &prompts,
        &tokenizer,
        &sampler,
        judge,
        &settings,
        &args.out.join("samples.jsonl"),
        |done, _| bar.set_position(done as u64),
    )?;
    bar.finish_and_clear();
    write_report(&args.out, &report)?;
    eprintln!(
        "{} questions, {} samples each, input cap {} ({} prompts truncated)",
        report.overall.questions, report.samples, report.max_input_tokens, report.truncated_prompts
    );
    for m in report.tasks.iter().chain(std::iter::once(&report.overall)) {
        let pass_k = m
            .pass_at_k
            .last()
            .map(|p| format!(" pass@{} {:.1}", report.samples, p * 100.0))
            .unwrap_or_default();
        eprintln!(
            "{:>15}: {:>4} questions  pass@1 {:.1}{pass_k}  (rule {:.1}, judge calls {})",
            m.task,
            m.questions,
            m.pass_at_1 * 100.0,
            m.rule_mean * 100.0,
            m.judge_calls
        );
    }
    println!("{}", serde_json::to_string(&report).expect("serialisable"));
    Ok(())
}

fn writing(args: WritingArgs) -> Result<()> {
    use qforge_rl::sampler::Sampler;
    use qforge_rl::writing_rl::eval::{WritingEvalSettings, load_items, run};
    use qforge_rl::writing_rl::judge::{JudgeSettings, Position};
    let mut items = Vec::new();
    for f in &args.data {
        items.extend(load_items(f)?);
    }
    if let Some(n) = args.limit {
        items.truncate(n);
    }
    let engine = qforge_engine::Engine::from_checkpoint(args.model.load()?);
    let tokenizer = engine.tokenizer().clone();
    let sampler = Sampler::Embedded(engine);
    let baseline = match (&args.baseline, &args.baseline_url) {
        (Some(_), Some(_)) => anyhow::bail!("give --baseline or --baseline-url, not both"),
        (Some(model), None) => {
            let baseline_args = ModelArgs {
                model: Some(model.clone()),
                dtype: args.model.dtype.clone(),
                adapter: None,
                device: args.model.device.clone(),
            };
            Some(Sampler::Embedded(qforge_engine::Engine::from_checkpoint(
                baseline_args.load().context("--baseline")?,
            )))
        }
        (None, Some(url)) => Some(Sampler::Remote(remote(
            url,
            &args.baseline_model,
            "--baseline-url",
        )?)),
        (None, None) => None,
    };
    let position: Position = serde_json::from_value(serde_json::json!(args.judge_position))
        .with_context(|| {
            format!(
                "--judge-position `{}`: both, position-advantage or position-disadvantage",
                args.judge_position
            )
        })?;
    let judge = match &baseline {
        Some(_) => Some(qforge_rl::writing_rl::trainer::judge_for(&JudgeSettings {
            url: args.judge_url.clone().unwrap_or_default(),
            model: args.judge_model.clone(),
            position,
            ..JudgeSettings::default()
        })?),
        None => None,
    };
    let settings = WritingEvalSettings {
        temperature: args.temperature,
        max_new_tokens: args.max_new_tokens,
        max_input_tokens: args.max_input_tokens,
        seed: args.seed,
        ..WritingEvalSettings::default()
    };
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let bar = crate::common::progress_bar(items.len() as u64, "writing");
    let report = run(
        &items,
        &tokenizer,
        &sampler,
        baseline.as_ref(),
        judge.as_ref(),
        &settings,
        &args.out.join("samples.jsonl"),
        |done, _| bar.set_position(done as u64),
    )?;
    bar.finish_and_clear();
    write_report(&args.out, &report)?;
    let bars: Vec<(String, f64)> = report
        .kinds
        .iter()
        .chain(std::iter::once(&report.overall))
        .filter_map(|k| match (k.win_rate, k.length_score) {
            (Some(w), _) => Some((format!("{} (win %)", k.kind), w * 100.0)),
            (None, Some(l)) => Some((format!("{} (S_l)", k.kind), l)),
            _ => None,
        })
        .collect();
    if !bars.is_empty() {
        qforge_train::plot::bar_chart(&args.out.join("report.png"), "Writing evaluation", &bars)?;
    }
    let pct = |x: Option<f64>| x.map_or("-".to_string(), |v| format!("{:.1}", v * 100.0));
    for k in report.kinds.iter().chain(std::iter::once(&report.overall)) {
        eprintln!(
            "{:>32}: {:>4} prompts  S_l {}  win {} tie {} loss {} (judged {})",
            k.kind,
            k.items,
            k.length_score
                .map_or("-".to_string(), |l| format!("{l:.1}")),
            pct(k.win_rate),
            pct(k.tie_rate),
            pct(k.loss_rate),
            k.judged
        );
    }
    println!("{}", serde_json::to_string(&report).expect("serialisable"));
    Ok(())
}

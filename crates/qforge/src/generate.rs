//! `qforge generate`: chat or raw-prompt generation with streaming output.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use qforge_engine::{Engine, GenerationRequest, SamplingFields, SamplingParams};
use qforge_model::GenerationConfig;
use qforge_model::vl::{RgbImage, Vision, VisualInputs, processor};
use serde_json::{Value, json};

use crate::common::{ModelArgs, TemplateArgs, conversation_prompt, read_conversation};

#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:\n  \
    qforge generate --prompt 'Name three primes.'\n  \
    qforge generate -m Qwen/Qwen3-0.6B --prompt 'Hi' --enable-thinking false\n  \
    qforge generate -m ./ckpt --messages chat.json --temperature 0.7 --seed 1\n  \
    qforge generate -m ./ckpt --raw --prompt 'Once upon a time' --prompt 'The answer is' --json\n  \
    qforge generate -m ./qwen2.5-vl --image shot.png --prompt 'What is on the screen?'\n  \
    qforge generate -m ./qwen2.5-vl --video frames/ --fps 2 --prompt 'When does the door open?'\n\n\
    Vision-language checkpoints (Qwen2.5-VL) also read images named in --messages image parts\n\
    (a data URL, or a path relative to the messages file).")]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,

    /// A user message (rendered with the chat template unless --raw). Repeat to generate for
    /// several prompts in one batch.
    #[arg(long, short = 'p', conflicts_with = "messages")]
    prompt: Vec<String>,

    /// A conversation file (JSON array of messages, or {"messages": [...], "tools": [...]}); `-`
    /// for standard input.
    #[arg(long)]
    messages: Option<String>,

    /// A system message placed before --prompt.
    #[arg(long, requires = "prompt")]
    system: Option<String>,

    /// Feed --prompt to the model as-is, without the chat template.
    #[arg(long, requires = "prompt", conflicts_with_all = ["image", "video"])]
    raw: bool,

    /// An image (PNG or JPEG) shown with each --prompt, before its text (vision-language
    /// models; repeatable).
    #[arg(long, requires = "prompt")]
    image: Vec<PathBuf>,

    /// A video as a directory of frame images, in file-name order, shown with each --prompt
    /// after the images (repeatable).
    #[arg(long, requires = "prompt")]
    video: Vec<PathBuf>,

    /// Frames per second the --video frames were sampled at (the model's clock: a temporal
    /// patch of 2 frames lasts 2 / fps seconds).
    #[arg(long, default_value_t = 2.0)]
    fps: f32,

    #[command(flatten)]
    template: TemplateArgs,

    /// Maximum number of new tokens.
    #[arg(long, default_value_t = 256)]
    max_new_tokens: usize,

    /// Sampling temperature; 0 is greedy. Default: the model's generation_config.json, else greedy.
    #[arg(long)]
    temperature: Option<f32>,
    /// Keep only the k most likely tokens (0: off).
    #[arg(long)]
    top_k: Option<usize>,
    /// Nucleus sampling: keep the smallest set of tokens with this total probability (1: off).
    #[arg(long)]
    top_p: Option<f32>,
    /// Drop tokens less likely than min_p times the most likely one (0: off).
    #[arg(long)]
    min_p: Option<f32>,
    /// Penalise tokens already present (1: off; transformers' rule).
    #[arg(long)]
    repetition_penalty: Option<f32>,
    /// Ignore generation_config.json and decode greedily.
    #[arg(long, conflicts_with = "temperature")]
    greedy: bool,
    /// Random seed for sampling (prompt i uses seed + i).
    #[arg(long, default_value_t = 0)]
    seed: u64,

    /// Stop when the output contains this string (repeatable); it is not printed.
    #[arg(long)]
    stop: Vec<String>,

    /// Print one JSON object per prompt (text, tokens with log-probabilities, finish reason)
    /// instead of streaming text.
    #[arg(long)]
    json: bool,

    /// With --json: alternatives reported per token.
    #[arg(long, default_value_t = 0)]
    top_logprobs: usize,
}

/// Flags win, then the checkpoint's generation_config.json, else greedy.
fn sampling(args: &Args, generation: &GenerationConfig) -> SamplingParams {
    let fields = SamplingFields {
        temperature: if args.greedy {
            Some(0.0)
        } else {
            args.temperature
        },
        top_p: args.top_p,
        top_k: args.top_k,
        min_p: args.min_p,
        repetition_penalty: args.repetition_penalty,
        seed: Some(args.seed),
        ..SamplingFields::default()
    };
    fields.resolve(generation, 0.0)
}

/// `--image` and `--video` inputs, processed once for every prompt.
fn cli_visual_inputs(args: &Args, vision: &Vision) -> Result<VisualInputs> {
    if !(args.fps > 0.0) {
        bail!("--fps must be positive, got {}", args.fps);
    }
    let images = args
        .image
        .iter()
        .map(|p| {
            let image = RgbImage::open(p)?;
            Ok(vision.process_image(&image)?)
        })
        .collect::<Result<Vec<_>>>()?;
    let spg = vision.processor.temporal_patch_size as f32 / args.fps;
    let videos = args
        .video
        .iter()
        .map(|dir| {
            let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
                .with_context(|| format!("--video {}", dir.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_file())
                .collect();
            paths.sort();
            if paths.is_empty() {
                bail!(
                    "--video {}: no frame images in the directory",
                    dir.display()
                );
            }
            let frames = paths
                .iter()
                .map(|p| RgbImage::open(p))
                .collect::<std::result::Result<Vec<_>, _>>()?;
            Ok((processor::process_video(&vision.processor, &frames)?, spg))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(VisualInputs { images, videos })
}

pub fn run(args: Args) -> Result<()> {
    if args.prompt.is_empty() && args.messages.is_none() {
        bail!("give --prompt TEXT or --messages FILE");
    }
    let ck = args.model.load()?;
    let vision = ck.vision.clone();
    let tokenizer = Arc::new(ck.tokenizer);
    let mut prompts: Vec<Vec<u32>> = Vec::new();
    let mut visuals: Vec<Option<Arc<VisualInputs>>> = Vec::new();
    let shown = !args.image.is_empty() || !args.video.is_empty();
    let cli_visual = match (&vision, shown) {
        (Some(v), true) => Some(Arc::new(cli_visual_inputs(&args, v)?)),
        (None, true) => bail!(
            "--image and --video need a vision-language model; {} is text-only",
            ck.dir.display()
        ),
        (_, false) => None,
    };
    if let Some(path) = &args.messages {
        let (messages, tools) = read_conversation(path)?;
        let options = args.template.options(tools)?;
        let (ids, inputs) = conversation_prompt(
            &tokenizer,
            vision.as_ref(),
            &messages,
            &options,
            Path::new(path),
        )?;
        prompts.push(ids);
        visuals.push(inputs.map(Arc::new));
    }
    for p in &args.prompt {
        if p.is_empty() {
            bail!("--prompt is empty");
        }
        let text = if args.raw {
            p.clone()
        } else {
            let mut messages = Vec::new();
            if let Some(s) = &args.system {
                messages.push(json!({"role": "system", "content": s}));
            }
            let content = if shown {
                // Images, then videos, then the text: the layout of Qwen's own examples.
                let mut parts: Vec<Value> = args
                    .image
                    .iter()
                    .map(|_| json!({"type": "image"}))
                    .collect();
                parts.extend(args.video.iter().map(|_| json!({"type": "video"})));
                parts.push(json!({"type": "text", "text": p}));
                Value::Array(parts)
            } else {
                json!(p)
            };
            messages.push(json!({"role": "user", "content": content}));
            tokenizer.apply_chat_template(&messages, &args.template.options(None)?)?
        };
        let ids = tokenizer.encode(&text, false)?;
        match (&vision, &cli_visual) {
            (Some(vision), Some(inputs)) => prompts.push(vision.expand(&ids, inputs)?),
            _ => prompts.push(ids),
        }
        visuals.push(cli_visual.clone());
    }
    let base = sampling(&args, &ck.generation);
    let stop_ids = ck.generation.stop_token_ids(&tokenizer);
    let requests: Vec<GenerationRequest> = prompts
        .iter()
        .enumerate()
        .map(|(i, ids)| {
            let mut r = GenerationRequest::new(ids.clone(), args.max_new_tokens);
            r.sampling = SamplingParams {
                seed: Some(args.seed + i as u64),
                ..base.clone()
            };
            r.stop.stop_token_ids = stop_ids.clone();
            r.stop.stop_strings = args.stop.clone();
            r.top_logprobs = args.top_logprobs;
            r.visual = visuals[i].clone();
            r
        })
        .collect();
    let engine = Engine::new(ck.model, tokenizer.clone());
    let engine = match vision {
        Some(v) => engine.with_vision(v),
        None => engine,
    };
    let stream = prompts.len() == 1 && !args.json;
    let started = Instant::now();
    let mut stdout = std::io::stdout().lock();
    let outputs = engine.generate(requests, |event| {
        if stream && !event.text.is_empty() {
            let _ = stdout.write_all(event.text.as_bytes());
            let _ = stdout.flush();
        }
    })?;
    let elapsed = started.elapsed().as_secs_f64();
    let generated: usize = outputs.iter().map(|o| o.tokens.len()).sum();
    if stream {
        writeln!(stdout)?;
    } else {
        for (i, out) in outputs.iter().enumerate() {
            if args.json {
                let tokens: Vec<Value> = out
                    .tokens
                    .iter()
                    .map(|t| {
                        json!({
                            "id": t.id,
                            "token": tokenizer.id_to_token(t.id),
                            "logprob": t.logprob,
                            "top_logprobs": t.top_logprobs.iter().map(|(id, lp)| json!({"id": id, "token": tokenizer.id_to_token(*id), "logprob": lp})).collect::<Vec<_>>(),
                        })
                    })
                    .collect();
                let obj = json!({
                    "index": i,
                    "prompt_tokens": out.prompt_tokens,
                    "text": out.text,
                    "finish_reason": out.finish_reason.openai(),
                    "stop": out.finish_reason,
                    "tokens": tokens,
                });
                writeln!(stdout, "{obj}")?;
            } else {
                writeln!(stdout, "=== {i} ===\n{}", out.text)?;
            }
        }
    }
    eprintln!(
        "[{} prompt(s), {} prompt tokens, {generated} generated in {elapsed:.2}s ({:.1} tok/s), finish: {}]",
        outputs.len(),
        outputs.iter().map(|o| o.prompt_tokens).sum::<usize>(),
        generated as f64 / elapsed.max(1e-9),
        outputs
            .iter()
            .map(|o| o.finish_reason.openai())
            .collect::<Vec<_>>()
            .join(","),
    );
    Ok(())
}

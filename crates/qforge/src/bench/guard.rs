//! `qforge bench guard-stream`: per-token moderation latency of Qwen3Guard-Stream (KV-cached
//! session) against (a) re-running the whole prefix for each token, as the official helper
//! does, and (b) a plain decode step of the same backbone; plus Gen fast-path verdicts per
//! second at batch 1 and 8. Random weights in the Qwen3Guard-Stream-0.6B shape.

use std::sync::Arc;
use std::time::Instant;

use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use qforge_guard::{Debounce, GenGuard, StreamGuard, StreamLabels};
use qforge_model::{Batch, Checkpoint, GenerationConfig, Model, ModelConfig};
use serde_json::json;

#[derive(clap::Args, Debug, Clone)]
pub struct GuardStreamArgs {
    /// Reply tokens pushed one at a time (latencies are taken over all of them).
    #[arg(long, default_value_t = 512)]
    tokens: usize,
    /// Full-prefix re-runs timed at the last position (baseline a).
    #[arg(long, default_value_t = 3)]
    rerun_samples: usize,
    /// Model shape: a config.json (default: Qwen3Guard-Stream-0.6B: Qwen3-0.6B's backbone,
    /// guard_inner_size 512). Weights are random.
    #[arg(long)]
    config: Option<std::path::PathBuf>,
    /// Prompt length of the Gen fast-path measurement.
    #[arg(long, default_value_t = 256)]
    gen_prompt_tokens: usize,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i]
}

pub fn run(args: GuardStreamArgs) -> Result<()> {
    let config = match &args.config {
        Some(p) => ModelConfig::from_file(p)?,
        None => ModelConfig::from_json(crate::bench::qwen3_0_6b())?,
    };
    let dev = Device::Cpu;
    let tokenizer = crate::bench::bench_tokenizer()?;
    let model = Model::random(config.clone(), DType::F32, &dev, 11)?;
    let hidden = config.hidden_size;
    let labels = StreamLabels::official(512);
    let heads = |key: String, shape: &[usize]| -> qforge_guard::Result<Tensor> {
        Ok(if key.contains("layernorm") {
            Tensor::ones(shape, DType::F32, &dev)?
        } else {
            (Tensor::randn(0f32, 1.0, shape, &dev)? / (hidden as f64).sqrt())?
        })
    };
    let guard = Arc::new(StreamGuard::from_parts(model, tokenizer, &heads, labels)?);
    eprintln!(
        "[guard-stream] {:.0}M-parameter backbone, {} reply tokens",
        config.num_parameters() as f64 / 1e6,
        args.tokens
    );
    // A conversation whose reply is random ids of the bench vocabulary.
    let tok = guard.tokenizer();
    let prompt = vec![json!({"role": "user", "content": "Write me a long story about a fox."})];
    let vocab = tok.vocab_size() as u32;
    let reply: Vec<u32> = (0..args.tokens as u32)
        .map(|i| 100 + (i * 7919) % (vocab.min(300) - 100))
        .collect();

    // Ours: one cached step per token.
    let (mut session, _) = guard.open_messages(&prompt, Debounce::Paper)?;
    let context = session.ids().len();
    let mut ours = Vec::with_capacity(reply.len());
    for &t in &reply {
        let start = Instant::now();
        session.push(&[t])?;
        ours.push(start.elapsed().as_secs_f64());
    }
    let all_ids = session.ids().to_vec();
    session.close();
    // The last steps, at the context baselines (a) and (b) are timed at.
    let mut tail = ours[ours.len() - ours.len().min(16)..].to_vec();
    tail.sort_by(f64::total_cmp);
    let tail_p50 = percentile(&tail, 0.5);
    ours.sort_by(f64::total_cmp);
    let (p50, p99) = (percentile(&ours, 0.5), percentile(&ours, 0.99));

    // (a) The whole prefix again for the last token.
    let mut rerun = f64::MAX;
    for _ in 0..args.rerun_samples.max(1) {
        let start = Instant::now();
        guard.full_sequence(&all_ids)?;
        rerun = rerun.min(start.elapsed().as_secs_f64());
    }

    // (b) A plain decode step of the backbone at the same context (logits over the vocab).
    let model = guard.model();
    let mut cache = model.new_cache();
    let batch = Batch::left_padded(&[&all_ids[..all_ids.len() - 16]], &[0], 0, &dev)?;
    model.forward(&batch, Some(&mut [&mut cache]))?;
    let mut decode = Vec::new();
    for &t in &all_ids[all_ids.len() - 16..] {
        let start = Instant::now();
        let b = Batch::left_padded(&[&[t]], &[cache.len()], 0, &dev)?;
        let h = model.forward(&b, Some(&mut [&mut cache]))?;
        model.last_logits(&h)?;
        decode.push(start.elapsed().as_secs_f64());
    }
    decode.sort_by(f64::total_cmp);
    let decode_p50 = percentile(&decode, 0.5);
    println!(
        "guard-stream: per-token p50 {:.1} ms, p99 {:.1} ms over {} tokens (context {} -> {})",
        p50 * 1e3,
        p99 * 1e3,
        reply.len(),
        context,
        all_ids.len()
    );
    println!(
        "  ours at the last 16 positions: p50 {:.1} ms",
        tail_p50 * 1e3
    );
    println!(
        "  (a) full-prefix re-run at {} tokens: {:.0} ms/token -> ours {:.1}x faster",
        all_ids.len(),
        rerun * 1e3,
        rerun / tail_p50
    );
    println!(
        "  (b) plain decode step (lm_head included) at the same context: {:.1} ms -> ours/decode {:.2}x",
        decode_p50 * 1e3,
        tail_p50 / decode_p50
    );

    // Gen fast path: verdict probabilities from one prefill.
    let gen_model = Model::random(config, DType::F32, &dev, 12)?;
    let gen_guard = GenGuard::new(Checkpoint {
        dir: std::path::PathBuf::new(),
        model: gen_model,
        tokenizer: crate::bench::bench_tokenizer()?,
        generation: GenerationConfig::default(),
        vision: None,
    })?;
    let words: Vec<String> = (0..args.gen_prompt_tokens / 2)
        .map(|i| format!("w{i}"))
        .collect();
    let conversation = vec![json!({"role": "user", "content": words.join(" ")})];
    let prompt_len = gen_guard.prompt_ids(&conversation)?.1.len() + 2;
    for batch in [1usize, 8] {
        let convs = vec![conversation.clone(); batch];
        gen_guard.safety_probs(&convs)?; // warm-up
        let start = Instant::now();
        gen_guard.safety_probs(&convs)?;
        let secs = start.elapsed().as_secs_f64();
        println!(
            "gen fast path: batch {batch} x {prompt_len} tokens: {:.2} verdicts/s ({:.0} ms per batch)",
            batch as f64 / secs,
            secs * 1e3
        );
    }
    Ok(())
}

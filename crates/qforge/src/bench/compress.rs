//! `qforge bench compress`: the QwenLong-CPRS compressor's forward on CPU (Qwen2-0.5B shape by
//! default, random weights, the top quarter of layers bidirectional): context tokens per second
//! per window size and windows per batch, against one window at a time (the released server's
//! behaviour, measured in the same run); and peak resident memory while a long context streams
//! through window by window (it should not grow with the context).

use std::time::Instant;

use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use qforge_compress::model::Compressor;
use qforge_model::{Model, ModelConfig};
use serde_json::json;

#[derive(clap::Args, Debug, Clone)]
pub struct CompressArgs {
    /// Window sizes in tokens (prefix included).
    #[arg(long, value_delimiter = ',', default_value = "2048,8192")]
    windows: Vec<usize>,
    /// Windows per forward pass.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4")]
    batch: Vec<usize>,
    /// Context lengths (tokens) for the memory measurement.
    #[arg(long, value_delimiter = ',', default_value = "32768,262144")]
    contexts: Vec<usize>,
    /// Window used for the memory measurement.
    #[arg(long, default_value_t = 2048)]
    memory_window: usize,
    /// Fewer layers than Qwen2-0.5B's 24 (for a quick run; the per-layer cost is the same).
    #[arg(long)]
    layers: Option<usize>,
}

fn qwen2_0_5b(layers: usize) -> serde_json::Value {
    json!({
        "model_type": "qwen2", "vocab_size": 151936, "hidden_size": 896, "intermediate_size": 4864,
        "num_hidden_layers": layers, "num_attention_heads": 14, "num_key_value_heads": 2,
        "max_position_embeddings": 32768, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0,
        "tie_word_embeddings": true, "attention_bias": true, "hidden_act": "silu"
    })
}

fn random_windows(n: usize, len: usize, seed: u64) -> Vec<Vec<u32>> {
    let mut rng = qforge_util::SplitMix(seed);
    (0..n)
        .map(|_| (0..len).map(|_| 10 + rng.below(150_000) as u32).collect())
        .collect()
}

pub fn run(args: CompressArgs) -> Result<()> {
    let layers = args.layers.unwrap_or(24);
    let config = ModelConfig::from_json(qwen2_0_5b(layers))?;
    let dev = Device::Cpu;
    eprintln!("[compress] generating random weights ({layers} layers)...");
    let model = Model::random(config, DType::F32, &dev, 21)?;
    // The released model makes its top quarter bidirectional (7 of 28).
    let bidirectional = (layers / 4).max(1).min(layers);
    let cls_weight = (Tensor::randn(0f32, 1.0, (4, 896), &dev)? * 0.05)?;
    let cls_bias = Tensor::zeros(4, DType::F32, &dev)?;
    let compressor = Compressor::from_parts(
        model,
        std::sync::Arc::new(crate::bench::bench_tokenizer()?),
        cls_weight,
        cls_bias,
        layers - bidirectional,
    )?;
    println!(
        "compressor: Qwen2-0.5B shape, {layers} layers ({} bidirectional), random weights, f32, {} threads",
        bidirectional,
        candle_core::utils::get_num_threads()
    );
    // Warm-up (allocator, thread pool) before anything is timed.
    let warm = random_windows(1, 128, 0);
    compressor.tags(&[warm[0].as_slice()], 0)?;
    let mut results = Vec::new();
    for &window in &args.windows {
        let mut one_window = None;
        for &b in &args.batch {
            let windows = random_windows(b, window, window as u64 + b as u64);
            let refs: Vec<&[u32]> = windows.iter().map(Vec::as_slice).collect();
            // One untimed pass at this shape, then the mean of two.
            compressor.tags(&refs, 0)?;
            let started = Instant::now();
            for _ in 0..2 {
                std::hint::black_box(compressor.tags(&refs, 0)?);
            }
            let seconds = started.elapsed().as_secs_f64() / 2.0;
            let tokens_per_s = (b * window) as f64 / seconds;
            let base = *one_window.get_or_insert(tokens_per_s);
            println!(
                "window {window:>5}, batch {b}: {tokens_per_s:>8.0} context tokens/s ({seconds:.2} s per pass), {:.2}x one window at a time",
                tokens_per_s / base
            );
            results.push(
                json!({"window": window, "batch": b, "tokens_per_s": tokens_per_s,
                                "ratio_vs_one_window": tokens_per_s / base}),
            );
        }
    }
    let mut memory = Vec::new();
    for &context in &args.contexts {
        // The throughput runs' freed memory goes back to the OS first, so the peak is this run's.
        crate::bench::train::release_memory();
        crate::bench::train::peak_rss_mib(true);
        let windows = context.div_ceil(args.memory_window);
        let started = Instant::now();
        for w in 0..windows {
            let ids = random_windows(1, args.memory_window, w as u64).remove(0);
            std::hint::black_box(compressor.tags(&[ids.as_slice()], 0)?);
        }
        let peak = crate::bench::train::peak_rss_mib(false).unwrap_or(f64::NAN);
        println!(
            "context {context:>7} tokens ({windows} windows of {}): peak RSS {peak:.0} MiB, {:.0} tokens/s",
            args.memory_window,
            context as f64 / started.elapsed().as_secs_f64()
        );
        memory.push(json!({"context": context, "peak_rss_mib": peak}));
    }
    println!(
        "{}",
        json!({"bench": "compress", "layers": layers, "throughput": results, "memory": memory})
    );
    Ok(())
}

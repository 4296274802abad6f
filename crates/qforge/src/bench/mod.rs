//! `qforge bench`: throughput with ratios against baselines measured in the same run
//! (this class of machine is noisy; absolute numbers mean little on their own).

pub mod agent;
pub mod compress;
pub mod guard;
pub mod judge;
pub mod rl;
pub mod search;
pub mod serve;
pub mod solopo;
pub mod train;
pub mod vlm;

use std::collections::HashMap;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use candle_core::{DType, Device, IndexOp, Tensor};
use candle_transformers::models::qwen3 as baseline;
use qforge_engine::{Engine, GenerationRequest, Sequence};
use qforge_model::{Batch, Model, ModelConfig};
use serde_json::{Value, json};

#[derive(clap::Subcommand, Debug)]
pub enum BenchCommand {
    /// Decode tokens/s (batch 1 and 8) against candle-transformers' qwen3 and against the
    /// memory-bandwidth ceiling.
    Decode(Args),
    /// Prefill tokens/s against candle-transformers' qwen3.
    Prefill(Args),
    /// `qforge serve` throughput and time per output token at several concurrent streams,
    /// its overhead against direct engine generation, and requests sharing a long system
    /// prompt with the prefix cache on against off.
    Serve(ServeArgs),
    /// Training throughput (forward + backward + AdamW) against PyTorch on the same config.
    Train(crate::bench::train::TrainArgs),
    /// Qwen3Guard-Stream per-token latency (KV-cached) against re-running the prefix and a
    /// plain decode step; Gen fast-path verdicts/s.
    GuardStream(crate::bench::guard::GuardStreamArgs),
    /// SoLo-DPO against plain long-context DPO: time and peak memory of a training step.
    Solopo(crate::bench::solopo::SolopoArgs),
    /// One GRPO step: rollout and train tokens/s and their time shares; DUPO against DAPO's
    /// dynamic sampling per useful group.
    RlStep(crate::bench::rl::RlStepArgs),
    /// Writing-RL's pairwise judge client against a loopback `qforge serve`: judge calls/s at
    /// several concurrency limits, against the first.
    Judge(crate::bench::judge::JudgeArgs),
    /// The offline search backend (BM25 index) on a 10k-document corpus: build time,
    /// queries/s and p99 latency, against a linear scan.
    Search(crate::bench::search::SearchArgs),
    /// The WebSailor loop's cost per turn with the model's time excluded, against the same tool
    /// calls made directly.
    Agent(crate::bench::agent::AgentArgs),
    /// The QwenLong-CPRS compressor's forward: context tokens/s by window and batch against one
    /// window at a time; peak memory as the context grows.
    Compress(crate::bench::compress::CompressArgs),
    /// Qwen2.5-VL's image path (processor + vision tower): ms per image at 448 x 448 and
    /// 1024 x 1024 and video frames/s, against transformers on CPU in the same run.
    Vlm(crate::bench::vlm::VlmArgs),
}

#[derive(clap::Args, Debug, Clone)]
pub struct ServeArgs {
    /// Concurrent streams to measure (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "1,4,16")]
    pub streams: Vec<usize>,
    /// Tokens generated per request.
    #[arg(long, default_value_t = 32)]
    pub max_tokens: usize,
    /// Weight dtype.
    #[arg(long, default_value = "f32")]
    pub dtype: String,
    /// Model shape: a config.json (default: Qwen3-0.6B's shape). Weights are random.
    #[arg(long)]
    pub config: Option<std::path::PathBuf>,
    /// Shared-prefix workload: requests sharing one system prompt of this many tokens, against
    /// a server with its prefix cache off, in the same run (0 skips it).
    #[arg(long, default_value_t = 1024)]
    pub shared_prefix_tokens: usize,
    /// Requests of the shared-prefix workload (sent together, after one that fills the cache).
    #[arg(long, default_value_t = 16)]
    pub shared_prefix_requests: usize,
}

#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Dtypes to measure (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "f32,f16")]
    dtypes: Vec<String>,
    /// Batch sizes to measure (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "1,8")]
    batch: Vec<usize>,
    /// Prompt length in tokens.
    #[arg(long, default_value_t = 128)]
    prompt_len: usize,
    /// Decode steps timed per measurement.
    #[arg(long, default_value_t = 16)]
    steps: usize,
    /// Measurements per engine (alternating; the best is kept).
    #[arg(long, default_value_t = 2)]
    repeats: usize,
    /// Model shape: a config.json (default: Qwen3-0.6B's shape). Weights are random.
    #[arg(long)]
    config: Option<std::path::PathBuf>,
    /// Skip the candle-transformers baseline.
    #[arg(long)]
    no_baseline: bool,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

/// Qwen3-0.6B's published shape (weights are random).
pub fn qwen3_0_6b() -> Value {
    json!({
        "model_type": "qwen3", "vocab_size": 151936, "hidden_size": 1024, "intermediate_size": 3072,
        "num_hidden_layers": 28, "num_attention_heads": 16, "num_key_value_heads": 8, "head_dim": 128,
        "max_position_embeddings": 40960, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0,
        "tie_word_embeddings": true, "attention_bias": false, "hidden_act": "silu"
    })
}

fn baseline_config(c: &ModelConfig) -> baseline::Config {
    baseline::Config {
        vocab_size: c.vocab_size,
        hidden_size: c.hidden_size,
        intermediate_size: c.intermediate_size,
        num_hidden_layers: c.num_hidden_layers,
        num_attention_heads: c.num_attention_heads,
        head_dim: c.head_dim,
        attention_bias: c.o_bias,
        num_key_value_heads: c.num_key_value_heads,
        max_position_embeddings: c.max_position_embeddings,
        sliding_window: None,
        max_window_layers: c.num_hidden_layers,
        tie_word_embeddings: c.tie_word_embeddings,
        rope_theta: c.rope_theta,
        rms_norm_eps: c.rms_norm_eps,
        use_sliding_window: false,
        hidden_act: candle_nn::Activation::Silu,
    }
}

/// Best-of-5 memory bandwidth in bytes per second, with 1 and 2 threads: `copy` counts bytes
/// copied (memcpy), `read` bytes summed (the traffic pattern of decode, which only reads weights).
pub struct Bandwidth {
    pub copy: f64,
    pub read: f64,
}

pub fn measure_bandwidth() -> Bandwidth {
    const BYTES: usize = 256 << 20;
    let src = vec![1u8; BYTES];
    let mut dst = vec![0u8; BYTES];
    let words: Vec<u64> = vec![1; BYTES / 8];
    let (mut copy, mut read) = (0f64, 0f64);
    for threads in [1usize, 2] {
        for _ in 0..5 {
            let t = Instant::now();
            std::thread::scope(|s| {
                for (d, c) in dst
                    .chunks_mut(BYTES / threads)
                    .zip(src.chunks(BYTES / threads))
                {
                    s.spawn(move || d.copy_from_slice(c));
                }
            });
            copy = copy.max(BYTES as f64 / t.elapsed().as_secs_f64());
            let t = Instant::now();
            let total: u64 = std::thread::scope(|s| {
                let handles: Vec<_> = words
                    .chunks(words.len() / threads)
                    .map(|c| s.spawn(move || c.iter().fold(0u64, |a, &b| a.wrapping_add(b))))
                    .collect();
                handles.into_iter().map(|h| h.join().unwrap_or(0)).sum()
            });
            std::hint::black_box(total);
            read = read.max(BYTES as f64 / t.elapsed().as_secs_f64());
        }
    }
    std::hint::black_box(&dst);
    Bandwidth { copy, read }
}

fn prompts(batch: usize, len: usize, vocab: usize) -> Vec<Vec<u32>> {
    (0..batch)
        .map(|b| {
            (0..len)
                .map(|i| ((b * 7919 + i * 104_729 + 13) % (vocab - 1000)) as u32 + 500)
                .collect()
        })
        .collect()
}

struct Measured {
    prefill_s: f64,
    decode_s: f64,
}

fn run_qforge(
    engine: &Engine,
    prompts: &[Vec<u32>],
    steps: usize,
    decode: bool,
) -> Result<Measured> {
    if !decode {
        let model = engine.model();
        let refs: Vec<&[u32]> = prompts.iter().map(Vec::as_slice).collect();
        let batch = Batch::left_padded(&refs, &vec![0; refs.len()], 0, model.device())?;
        let mut caches: Vec<_> = prompts.iter().map(|_| model.new_cache()).collect();
        let mut cache_refs: Vec<_> = caches.iter_mut().collect();
        let t = Instant::now();
        let hidden = model.forward(&batch, Some(&mut cache_refs))?;
        let logits = model.last_logits(&hidden)?;
        std::hint::black_box(logits.to_vec2::<f32>()?);
        return Ok(Measured {
            prefill_s: t.elapsed().as_secs_f64(),
            decode_s: 0.0,
        });
    }
    let mut seqs: Vec<Sequence> = prompts
        .iter()
        .enumerate()
        .map(|(i, p)| engine.start(i, GenerationRequest::new(p.clone(), steps + 1)))
        .collect::<qforge_engine::Result<_>>()?;
    let mut refs: Vec<&mut Sequence> = seqs.iter_mut().collect();
    let t = Instant::now();
    engine.step(&mut refs)?; // prefill, first token, first decode forward
    let prefill_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    for _ in 0..steps - 1 {
        engine.step(&mut refs)?;
    }
    // `step` feeds the sampled token of the previous step: steps-1 calls run steps-1 decode
    // forwards plus the one inside the first call, which we do not time.
    let decode_s = t.elapsed().as_secs_f64() * steps as f64 / (steps - 1) as f64;
    Ok(Measured {
        prefill_s,
        decode_s,
    })
}

fn run_baseline(
    model: &mut baseline::ModelForCausalLM,
    prompts: &[Vec<u32>],
    steps: usize,
    decode: bool,
) -> Result<Measured> {
    model.clear_kv_cache();
    let dev = Device::Cpu;
    let flat: Vec<u32> = prompts.iter().flatten().copied().collect();
    let input = Tensor::from_vec(flat, (prompts.len(), prompts[0].len()), &dev)?;
    let t = Instant::now();
    let logits = model.forward(&input, 0)?;
    let mut next = logits.i((.., 0, ..))?.to_dtype(DType::F32)?.argmax(1)?;
    let prefill_s = t.elapsed().as_secs_f64();
    if !decode {
        return Ok(Measured {
            prefill_s,
            decode_s: 0.0,
        });
    }
    let t = Instant::now();
    for offset in prompts[0].len()..prompts[0].len() + steps {
        let logits = model.forward(&next.unsqueeze(1)?, offset)?;
        next = logits.i((.., 0, ..))?.to_dtype(DType::F32)?.argmax(1)?;
        std::hint::black_box(next.to_vec1::<u32>()?);
    }
    Ok(Measured {
        prefill_s,
        decode_s: t.elapsed().as_secs_f64(),
    })
}

/// The machine every figure was measured on: CPU model, cores, transparent huge pages.
pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let thp = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled")
        .ok()
        .and_then(|s| {
            let (_, rest) = s.split_once('[')?;
            Some(rest.split(']').next()?.to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    format!("machine: {cpu}, {cores} cores, transparent huge pages {thp}")
}

pub fn run(cmd: BenchCommand) -> Result<()> {
    println!("{}", machine());
    let (args, decode) = match cmd {
        BenchCommand::Decode(a) => (a, true),
        BenchCommand::Prefill(a) => (a, false),
        BenchCommand::Serve(a) => return crate::bench::serve::run(a),
        BenchCommand::Train(a) => return crate::bench::train::run(a),
        BenchCommand::GuardStream(a) => return crate::bench::guard::run(a),
        BenchCommand::Solopo(a) => return crate::bench::solopo::run(a),
        BenchCommand::RlStep(a) => return crate::bench::rl::run(a),
        BenchCommand::Search(a) => return crate::bench::search::run(a),
        BenchCommand::Agent(a) => return crate::bench::agent::run_bench(a),
        BenchCommand::Compress(a) => return crate::bench::compress::run(a),
        BenchCommand::Judge(a) => return crate::bench::judge::run(a),
        BenchCommand::Vlm(a) => return crate::bench::vlm::run(a),
    };
    if args.steps < 2 || args.repeats == 0 || args.prompt_len == 0 || args.batch.contains(&0) {
        bail!("--steps must be >= 2, --repeats and --prompt-len >= 1, batch sizes >= 1");
    }
    let config = match &args.config {
        Some(p) => ModelConfig::from_file(p)?,
        None => ModelConfig::from_json(qwen3_0_6b())?,
    };
    let device = Device::Cpu;
    let bandwidth = if decode {
        Some(measure_bandwidth())
    } else {
        None
    };
    if let Some(b) = &bandwidth {
        println!(
            "measured bandwidth: copy {:.1} GB/s, read {:.1} GB/s",
            b.copy / 1e9,
            b.read / 1e9
        );
    }
    println!(
        "model: {} shape, {:.0}M parameters, random weights; prompt {} tokens{}",
        config.model_type(),
        config.num_parameters() as f64 / 1e6,
        args.prompt_len,
        if decode {
            format!(", {} decode steps", args.steps)
        } else {
            String::new()
        },
    );
    let mut results = Vec::new();
    for dtype_name in &args.dtypes {
        let dtype = qforge_util::parse_dtype(dtype_name)
            .with_context(|| format!("unknown dtype {dtype_name}"))?;
        eprintln!("[{dtype_name}] generating random weights...");
        let tensors: HashMap<String, Tensor> =
            qforge_model::random_tensors(&config, dtype, &device, 1234)?;
        let weight_bytes: usize = tensors
            .iter()
            .filter(|(k, _)| {
                k.as_str() != "model.embed_tokens.weight" || config.tie_word_embeddings
            })
            .map(|(_, t)| t.elem_count() * dtype.size_in_bytes())
            .sum();
        let model = Model::from_tensors(config.clone(), tensors.clone())?;
        let tokenizer = bench_tokenizer()?;
        let engine = Engine::new(model, std::sync::Arc::new(tokenizer));
        let mut theirs =
            if args.no_baseline || config.architecture != qforge_model::Architecture::Qwen3 {
                None
            } else {
                let vb = candle_nn::VarBuilder::from_tensors(tensors, dtype, &device);
                Some(baseline::ModelForCausalLM::new(
                    &baseline_config(&config),
                    vb,
                )?)
            };
        for &batch in &args.batch {
            let prompts = prompts(batch, args.prompt_len, config.vocab_size);
            let (mut ours_best, mut theirs_best): (Option<Measured>, Option<Measured>) =
                (None, None);
            for _ in 0..args.repeats {
                let m = run_qforge(&engine, &prompts, args.steps, decode)?;
                ours_best = Some(best(ours_best, m, decode));
                if let Some(t) = theirs.as_mut() {
                    let m = run_baseline(t, &prompts, args.steps, decode)?;
                    theirs_best = Some(best(theirs_best, m, decode));
                }
            }
            let ours = ours_best.expect("repeats >= 1");
            let tokens = if decode {
                (batch * args.steps) as f64
            } else {
                (batch * args.prompt_len) as f64
            };
            let secs = |m: &Measured| if decode { m.decode_s } else { m.prefill_s };
            let ours_tps = tokens / secs(&ours);
            let theirs_tps = theirs_best.as_ref().map(|m| tokens / secs(m));
            let mut line = format!(
                "{} {dtype_name} batch {batch}: qforge {ours_tps:.1} tok/s",
                if decode { "decode" } else { "prefill" }
            );
            let mut entry = json!({"bench": if decode {"decode"} else {"prefill"}, "dtype": dtype_name, "batch": batch, "qforge_tok_s": ours_tps});
            if let Some(t) = theirs_tps {
                line += &format!(
                    " | candle-transformers qwen3 {t:.1} tok/s | ratio {:.2}x",
                    ours_tps / t
                );
                entry["candle_transformers_tok_s"] = json!(t);
                entry["ratio_vs_candle_transformers"] = json!(ours_tps / t);
            }
            if let Some(bw) = &bandwidth {
                let per_stream = ours_tps / batch as f64;
                let gb = weight_bytes as f64 / 1e9;
                let (copy_ceiling, read_ceiling) =
                    (bw.copy / weight_bytes as f64, bw.read / weight_bytes as f64);
                line += &format!(
                    " | per stream {:.2} of the copy-bandwidth ceiling ({copy_ceiling:.1} tok/s), {:.2} of the read-bandwidth ceiling ({read_ceiling:.1} tok/s; {gb:.2} GB of weights/token)",
                    per_stream / copy_ceiling,
                    per_stream / read_ceiling,
                );
                entry["copy_ceiling_tok_s"] = json!(copy_ceiling);
                entry["read_ceiling_tok_s"] = json!(read_ceiling);
                entry["fraction_of_copy_ceiling_per_stream"] = json!(per_stream / copy_ceiling);
                entry["fraction_of_read_ceiling_per_stream"] = json!(per_stream / read_ceiling);
            }
            println!("{line}");
            results.push(entry);
        }
        if decode {
            let batch1 = results
                .iter()
                .find(|r| r["dtype"] == dtype_name.as_str() && r["batch"] == 1);
            for r in results
                .iter()
                .filter(|r| r["dtype"] == dtype_name.as_str() && r["batch"] != 1)
            {
                if let Some(b1) = batch1 {
                    let factor = r["qforge_tok_s"].as_f64().unwrap_or(0.0)
                        / b1["qforge_tok_s"].as_f64().unwrap_or(1.0);
                    println!(
                        "decode {dtype_name}: batch {} aggregate = {factor:.2}x batch 1",
                        r["batch"]
                    );
                }
            }
        }
    }
    if let Some(path) = &args.json {
        let report = json!({
            "copy_bandwidth_bytes_per_s": bandwidth.as_ref().map(|b| b.copy),
            "read_bandwidth_bytes_per_s": bandwidth.as_ref().map(|b| b.read),
            "results": results,
        });
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

fn best(prev: Option<Measured>, m: Measured, decode: bool) -> Measured {
    match prev {
        Some(p)
            if (decode && p.decode_s <= m.decode_s) || (!decode && p.prefill_s <= m.prefill_s) =>
        {
            p
        }
        _ => m,
    }
}

/// The engine needs a tokenizer for detokenization; the demo one is enough for random ids.
pub fn bench_tokenizer() -> Result<qforge_model::Tokenizer> {
    Ok(qforge_model::Tokenizer::from_dir(
        &crate::demo::demo_model_dir()?,
    )?)
}

//! `qforge bench train`: forward + backward + AdamW tokens/s and peak memory, against PyTorch
//! (tools/bench/train_torch.py, run when a Python with torch and transformers is available)
//! on the same config, batch and sequence length, in the same run.

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor};
use qforge_model::{Batch, Model, ModelConfig};
use qforge_train::losses;
use qforge_train::optim::{AdamW, AdamWConfig};
use serde_json::{Value, json};

#[derive(clap::Args, Debug, Clone)]
pub struct TrainArgs {
    /// Shapes: `small` (~16M parameters) and/or `0.6b` (Qwen3-0.6B).
    #[arg(long, value_delimiter = ',', default_value = "small,0.6b")]
    shapes: Vec<String>,
    /// Timed steps (after 2 warm-up steps; 1 for 0.6b).
    #[arg(long, default_value_t = 5)]
    steps: usize,
    /// Python with torch + transformers for the baseline (default: $QFORGE_TORCH_PYTHON, else
    /// python3). Without one the baseline is skipped and the run says so.
    #[arg(long)]
    python: Option<String>,
}

pub(crate) fn shape(name: &str) -> Result<(Value, usize, usize)> {
    Ok(match name {
        // ~16M parameters, trained at batch 8 x 256 tokens (the probe size of the training-speed measurements).
        "small" => (
            json!({"model_type": "qwen3", "vocab_size": 32000, "hidden_size": 256, "intermediate_size": 1024,
                   "num_hidden_layers": 8, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 64,
                   "max_position_embeddings": 4096, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0,
                   "tie_word_embeddings": true, "hidden_act": "silu", "attention_bias": false}),
            8,
            256,
        ),
        "0.6b" => (crate::bench::qwen3_0_6b(), 1, 128),
        other => anyhow::bail!("unknown shape `{other}` (small, 0.6b)"),
    })
}

/// Peak resident memory (VmHWM) in MiB; `reset` clears it first (Linux).
pub(crate) fn peak_rss_mib(reset: bool) -> Option<f64> {
    if reset {
        let _ = std::fs::write("/proc/self/clear_refs", "5");
    }
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

fn run_qforge(
    config: &ModelConfig,
    batch: usize,
    seq: usize,
    warmup: usize,
    steps: usize,
) -> Result<(f64, Option<f64>)> {
    peak_rss_mib(true);
    let (model, vars) =
        Model::random(config.clone(), DType::F32, &Device::Cpu, 0)?.into_trainable()?;
    let mut opt = AdamW::new(
        vars,
        AdamWConfig {
            weight_decay: 0.01,
            ..AdamWConfig::default()
        },
    )?;
    let vocab = config.vocab_size as u32;
    let rows: Vec<Vec<u32>> = (0..batch)
        .map(|b| {
            (0..seq)
                .map(|i| 500 + ((b * 7919 + i * 104_729) as u32 % (vocab - 1000)))
                .collect()
        })
        .collect();
    let refs: Vec<&[u32]> = rows.iter().map(Vec::as_slice).collect();
    let input = Batch::right_padded(&refs, 0, &Device::Cpu)?;
    let mask = Tensor::ones((batch, seq), DType::F32, &Device::Cpu)?;
    let mut best = f64::MAX;
    for step in 0..warmup + steps {
        let t = Instant::now();
        let logits = model.logits(&model.forward(&input, None)?)?;
        let loss = losses::sft_loss(&logits, &input.input_ids, &mask)?;
        let grads = loss.backward()?;
        opt.step(&grads, 1e-4)?;
        if step >= warmup {
            best = best.min(t.elapsed().as_secs_f64());
        }
    }
    Ok(((batch * seq) as f64 / best, peak_rss_mib(false)))
}

fn run_torch(
    python: &str,
    config: &Value,
    batch: usize,
    seq: usize,
    warmup: usize,
    steps: usize,
) -> Result<Option<Value>> {
    let ok = Command::new(python)
        .args(["-c", "import torch, transformers"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        return Ok(None);
    }
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tools/bench/train_torch.py");
    let cfg = std::env::temp_dir().join(format!("qforge-bench-train-{}.json", std::process::id()));
    std::fs::write(&cfg, config.to_string())?;
    let out = Command::new(python)
        .arg(&script)
        .args(["--config", cfg.to_str().unwrap_or_default()])
        .args([
            "--batch",
            &batch.to_string(),
            "--seq",
            &seq.to_string(),
            "--steps",
            &steps.to_string(),
            "--warmup",
            &warmup.to_string(),
        ])
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    let _ = std::fs::remove_file(&cfg);
    if !out.status.success() {
        anyhow::bail!(
            "PyTorch baseline failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let line = String::from_utf8_lossy(&out.stdout);
    Ok(Some(serde_json::from_str(
        line.trim().lines().last().unwrap_or("{}"),
    )?))
}

/// Hands memory kept by the allocator back to the OS (decommitted, not just reset), so the PyTorch process that runs next has
/// the machine's memory (qforge keeps freed memory for a while, see common.rs).
pub(crate) fn release_memory() {
    // SAFETY: option setter and collection of the linked allocator.
    unsafe {
        libmimalloc_sys::mi_option_set(15, 0);
        libmimalloc_sys::mi_option_set(5, 1);
        libmimalloc_sys::mi_collect(true);
        libmimalloc_sys::mi_option_set(5, 0);
        libmimalloc_sys::mi_option_set(15, 10_000);
    }
}

pub fn run(args: TrainArgs) -> Result<()> {
    let python = args
        .python
        .clone()
        .or_else(|| std::env::var("QFORGE_TORCH_PYTHON").ok())
        .unwrap_or_else(|| "python3".into());
    for name in &args.shapes {
        let (cfg_json, batch, seq) = shape(name)?;
        let config = ModelConfig::from_json(cfg_json.clone())?;
        let (warmup, steps) = if name == "0.6b" {
            (1, args.steps.min(2))
        } else {
            (2, args.steps)
        };
        eprintln!(
            "[{name}] {:.1}M parameters, batch {batch} x {seq} tokens, {warmup} warm-up + {steps} timed steps",
            config.num_parameters() as f64 / 1e6
        );
        let (ours, peak) = run_qforge(&config, batch, seq, warmup, steps)?;
        release_memory();
        let peak = peak
            .map(|p| format!("{p:.0} MiB"))
            .unwrap_or_else(|| "n/a".into());
        let mut line = format!("train {name}: qforge {ours:.0} tok/s (peak RSS {peak})");
        match run_torch(&python, &cfg_json, batch, seq, warmup, steps)? {
            Some(t) => {
                let theirs = t["tok_s"].as_f64().unwrap_or(f64::NAN);
                line += &format!(
                    " | PyTorch {} {theirs:.0} tok/s (peak RSS {:.0} MiB) | ratio {:.2}x",
                    t["torch"].as_str().unwrap_or("?"),
                    t["peak_rss_mb"].as_f64().unwrap_or(f64::NAN),
                    ours / theirs
                );
            }
            None => {
                line += &format!(
                    " | PyTorch baseline skipped: `{python}` cannot import torch and transformers"
                )
            }
        }
        println!("{line}");
    }
    Ok(())
}

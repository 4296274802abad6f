//! `qforge quickstart`: the whole post-training loop on this machine in about a minute.
//! Builds a tiny Qwen3 (or takes `--model`), teaches it to copy digit strings with SFT, then
//! sharpens it with DPO against near-miss answers, evaluating before and after each
//! stage, and saves a Hugging Face checkpoint it generates from. Every step runs the real code.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use candle_core::{DType, Device};
use qforge_engine::Engine;
use qforge_model::{Checkpoint, Model, ModelConfig};
use qforge_train::synthetic::{copy_eval, copy_sft, near_miss_preferences, write_jsonl};
use qforge_train::trainer::{Objective, TrainConfig, Trainer};
use serde_json::json;

use crate::train::{plot_run, run_with_progress};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Where everything goes (data, checkpoints, metrics, curves).
    #[arg(long, default_value = "runs/quickstart")]
    out: PathBuf,
    /// Start from this checkpoint instead of a fresh tiny model.
    #[arg(long, short = 'm')]
    model: Option<String>,
    /// SFT steps.
    #[arg(long, default_value_t = 1500)]
    sft_steps: u64,
    /// DPO steps.
    #[arg(long, default_value_t = 100)]
    dpo_steps: u64,
    #[arg(long, default_value_t = 7)]
    seed: u64,
}

fn tiny_config() -> Result<ModelConfig> {
    Ok(ModelConfig::from_json(json!({
        "architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "vocab_size": 384, "hidden_size": 128,
        "intermediate_size": 256, "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2,
        "head_dim": 32, "max_position_embeddings": 1024, "rms_norm_eps": 1e-6, "rope_theta": 10000.0,
        "tie_word_embeddings": true, "hidden_act": "silu", "attention_bias": false
    }))?)
}

/// Greedy generations for `prompts` from the checkpoint in `dir` (raw prompts, no template).
fn generate(dir: &Path, prompts: &[String], max_new: usize) -> Result<Vec<String>> {
    let ck = Checkpoint::load_dir(dir, DType::F32, &Device::Cpu)?;
    let engine = Engine::from_checkpoint(ck);
    let requests = prompts
        .iter()
        .map(|p| Ok(engine.request(engine.tokenizer().encode(p, false)?, max_new)))
        .collect::<Result<Vec<_>>>()?;
    Ok(engine
        .generate(requests, |_| {})?
        .into_iter()
        .map(|o| o.text)
        .collect())
}

fn exact_match(outputs: &[String], expected: &[String]) -> f64 {
    let hits = outputs
        .iter()
        .zip(expected)
        .filter(|(o, e)| o.trim() == e.as_str())
        .count();
    hits as f64 / expected.len().max(1) as f64
}

pub fn run(args: Args) -> Result<()> {
    let out = &args.out;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let base = match &args.model {
        Some(m) => crate::common::ModelArgs {
            model: Some(m.clone()),
            dtype: "f32".into(),
            adapter: None,
            device: "cpu".into(),
        }
        .dir()?,
        None => {
            let dir = out.join("base");
            let model = Model::random(tiny_config()?, DType::F32, &Device::Cpu, args.seed)?;
            model.save_pretrained(&dir, usize::MAX)?;
            qforge_model::copy_tokenizer_files(&crate::demo::demo_model_dir()?, &dir)?;
            eprintln!(
                "[1/5] built a tiny Qwen3 ({} parameters) in {}",
                model.config().num_parameters(),
                dir.display()
            );
            dir
        }
    };
    let data = out.join("data");
    std::fs::create_dir_all(&data)?;
    write_jsonl(&data.join("sft_train.jsonl"), &copy_sft(2048, args.seed))?;
    write_jsonl(&data.join("sft_eval.jsonl"), &copy_sft(64, args.seed + 1))?;
    write_jsonl(
        &data.join("dpo_train.jsonl"),
        &near_miss_preferences(1024, args.seed + 2),
    )?;
    write_jsonl(
        &data.join("dpo_eval.jsonl"),
        &near_miss_preferences(64, args.seed + 3),
    )?;
    let eval = copy_eval(64, args.seed + 4);
    let prompts: Vec<String> = eval.iter().map(|(p, _)| p.clone()).collect();
    let plain: Vec<String> = eval.iter().map(|(_, e)| e.clone()).collect();
    eprintln!(
        "[2/5] wrote the synthetic copy task to {} (2048 SFT examples, 1024 preference pairs)",
        data.display()
    );

    let before = generate(&base, &prompts, 16)?;
    eprintln!(
        "      before training: exact match {:.0}%   e.g. {:?} -> {:?}",
        100.0 * exact_match(&before, &plain),
        prompts[0].trim(),
        before[0]
    );

    let sft = TrainConfig {
        model: base.clone(),
        data: data.join("sft_train.jsonl"),
        eval_data: Some(data.join("sft_eval.jsonl")),
        output_dir: out.join("sft"),
        max_length: 64,
        batch_size: 16,
        lr: 3e-3,
        schedule: "cosine".into(),
        warmup_steps: 20,
        max_steps: Some(args.sft_steps),
        eval_steps: (args.sft_steps / 4).max(1),
        seed: args.seed,
        ..TrainConfig::default()
    };
    let mut trainer = Trainer::new(sft, Objective::Sft)?;
    eprintln!("[3/5] SFT: {} steps", trainer.total_steps());
    let (steps, evals) = run_with_progress(&mut trainer, "sft")?;
    let sft_dir = out.join("sft/final");
    trainer.save_model(&sft_dir)?;
    plot_run(
        &out.join("sft/curves.png"),
        "SFT on the copy task",
        &steps,
        &evals,
    )?;
    drop(trainer);
    let after_sft = generate(&sft_dir, &prompts, 16)?;
    eprintln!(
        "      after SFT: exact match {:.0}%   e.g. {:?} -> {:?}",
        100.0 * exact_match(&after_sft, &plain),
        prompts[0].trim(),
        after_sft[0]
    );

    let dpo = TrainConfig {
        model: sft_dir.clone(),
        data: data.join("dpo_train.jsonl"),
        eval_data: Some(data.join("dpo_eval.jsonl")),
        output_dir: out.join("dpo"),
        max_length: 64,
        batch_size: 16,
        lr: 5e-4,
        beta: 0.1,
        // RPO's NLL term keeps the chosen answers likely while DPO pushes the near misses down.
        rpo_alpha: 1.0,
        schedule: "cosine".into(),
        warmup_steps: 5,
        max_steps: Some(args.dpo_steps),
        eval_steps: (args.dpo_steps / 4).max(1),
        seed: args.seed,
        ..TrainConfig::default()
    };
    let mut trainer = Trainer::new(dpo, Objective::Dpo)?;
    let dpo_before = trainer.evaluate()?;
    eprintln!(
        "[4/5] DPO against near-miss copies: {} steps (held-out loss {:.3} at the start)",
        trainer.total_steps(),
        dpo_before.loss
    );
    let (steps, evals) = run_with_progress(&mut trainer, "dpo")?;
    let final_dir = out.join("final");
    trainer.save_model(&final_dir)?;
    plot_run(
        &out.join("dpo/curves.png"),
        "DPO against near-miss copies",
        &steps,
        &evals,
    )?;
    drop(trainer);
    let after_dpo = generate(&final_dir, &prompts, 16)?;
    let dpo_acc = evals.last().and_then(|e| e.accuracy).unwrap_or(f64::NAN);
    eprintln!(
        "      after DPO: held-out preference accuracy {:.0}%, exact match {:.0}% (was {:.0}% after SFT)",
        100.0 * dpo_acc,
        100.0 * exact_match(&after_dpo, &plain),
        100.0 * exact_match(&after_sft, &plain)
    );
    eprintln!(
        "[5/5] saved the final model (Hugging Face layout) to {}",
        final_dir.display()
    );
    let sample = "copy: 3 1 4 1 5\n";
    let text = generate(&final_dir, &[sample.to_string()], 24)?.remove(0);
    println!("{}{}", sample, text);
    eprintln!(
        "next: qforge generate -m {} --raw --prompt $'copy: 2 7 1 8\\n'   (curves: {}/sft/curves.png, {}/dpo/curves.png)",
        final_dir.display(),
        out.display(),
        out.display()
    );
    Ok(())
}

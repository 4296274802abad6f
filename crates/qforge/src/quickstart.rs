//! `qforge quickstart`: the whole post-training loop on this machine in about a minute.
//! Builds a tiny Qwen3 (or takes `--model`), teaches it to copy digit strings with SFT, then
//! runs DPO on preference pairs whose rejected answers are the SFT model's own mistakes (a
//! synthetic near miss where it is already right), evaluating before and after each stage, and
//! saves a Hugging Face checkpoint it generates from. Every step runs the real code; the exact
//! match of each stage goes to `summary.json`.

use std::path::PathBuf;

use anyhow::{Context, Result};
use candle_core::{DType, Device};
use qforge_model::Model;
use qforge_pref::quickstart::{
    dpo_config, exact_match, greedy, load_engine, own_mistake_pairs, sft_config, sft_dir,
    tiny_config,
};
use qforge_train::copy_task::{copy_eval, copy_sft};
use qforge_train::trainer::{Objective, Trainer};
use qforge_util::write_jsonl_atomic;
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
    write_jsonl_atomic(&data.join("sft_train.jsonl"), &copy_sft(2048, args.seed))?;
    write_jsonl_atomic(&data.join("sft_eval.jsonl"), &copy_sft(64, args.seed + 1))?;
    let eval = copy_eval(256, args.seed + 4);
    let prompts: Vec<String> = eval.iter().map(|(p, _)| p.clone()).collect();
    let plain: Vec<String> = eval.iter().map(|(_, e)| e.clone()).collect();
    eprintln!(
        "[2/5] wrote the synthetic copy task to {} (2048 SFT examples)",
        data.display()
    );

    let before = greedy(&load_engine(&base)?, &prompts, 16)?;
    eprintln!(
        "      before training: exact match {:.0}%   e.g. {:?} -> {:?}",
        100.0 * exact_match(&before, &plain),
        prompts[0].trim(),
        before[0]
    );

    let sft = sft_config(&base, &data, out, args.sft_steps, args.seed);
    let mut trainer = Trainer::new(sft, Objective::Sft)?;
    eprintln!("[3/5] SFT: {} steps", trainer.total_steps());
    let (steps, evals) = run_with_progress(&mut trainer, "sft")?;
    let sft_dir = sft_dir(out);
    trainer.save_model(&sft_dir)?;
    plot_run(
        &out.join("sft/curves.png"),
        "SFT on the copy task",
        &steps,
        &evals,
    )?;
    drop(trainer);
    let sft_engine = load_engine(&sft_dir)?;
    let after_sft = greedy(&sft_engine, &prompts, 16)?;
    eprintln!(
        "      after SFT: exact match {:.0}%   e.g. {:?} -> {:?}",
        100.0 * exact_match(&after_sft, &plain),
        prompts[0].trim(),
        after_sft[0]
    );
    let (pairs, own) = own_mistake_pairs(&sft_engine, 1024, args.seed + 2)?;
    write_jsonl_atomic(&data.join("dpo_train.jsonl"), &pairs)?;
    write_jsonl_atomic(
        &data.join("dpo_eval.jsonl"),
        &own_mistake_pairs(&sft_engine, 64, args.seed + 3)?.0,
    )?;

    let dpo = dpo_config(&sft_dir, &data, out, args.dpo_steps, args.seed);
    let mut trainer = Trainer::new(dpo, Objective::Dpo)?;
    let dpo_before = trainer.evaluate()?;
    eprintln!(
        "[4/5] DPO: {} steps on 1024 pairs, {own} of them against the SFT model's own wrong answers (held-out loss {:.3} at the start)",
        trainer.total_steps(),
        dpo_before.loss
    );
    let (steps, evals) = run_with_progress(&mut trainer, "dpo")?;
    let final_dir = out.join("final");
    trainer.save_model(&final_dir)?;
    plot_run(
        &out.join("dpo/curves.png"),
        "DPO against the model's own mistakes",
        &steps,
        &evals,
    )?;
    drop(trainer);
    let final_engine = load_engine(&final_dir)?;
    let after_dpo = greedy(&final_engine, &prompts, 16)?;
    let dpo_acc = evals.last().and_then(|e| e.accuracy).unwrap_or(f64::NAN);
    let (em_before, em_sft, em_dpo) = (
        exact_match(&before, &plain),
        exact_match(&after_sft, &plain),
        exact_match(&after_dpo, &plain),
    );
    eprintln!(
        "      after DPO: held-out preference accuracy {:.0}%, exact match {:.0}% (was {:.0}% after SFT)",
        100.0 * dpo_acc,
        100.0 * em_dpo,
        100.0 * em_sft
    );
    qforge_util::write_json_atomic(
        &out.join("summary.json"),
        &json!({
            "seed": args.seed, "sft_steps": args.sft_steps, "dpo_steps": args.dpo_steps,
            "eval_prompts": plain.len(), "dpo_pairs_own_mistakes": own,
            "exact_match": {"base": em_before, "sft": em_sft, "dpo": em_dpo},
            "dpo_preference_accuracy": dpo_acc,
        }),
    )?;
    eprintln!(
        "[5/5] saved the final model (Hugging Face layout) to {}",
        final_dir.display()
    );
    let sample = "copy: 3 1 4 1 5\n";
    let text = greedy(&final_engine, &[sample.to_string()], 24)?.remove(0);
    println!("{}{}", sample, text);
    eprintln!(
        "next: qforge generate -m {} --raw --prompt $'copy: 2 7 1 8\\n'   (curves: {}/sft/curves.png, {}/dpo/curves.png)",
        final_dir.display(),
        out.display(),
        out.display()
    );
    Ok(())
}

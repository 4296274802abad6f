//! Learning is demonstrated, not assumed: tiny models on the synthetic copy task, fixed seeds.

use std::path::{Path, PathBuf};

use qforge_train::copy_task::{copy_preferences, copy_sft};
use qforge_train::data::{DataOptions, Dataset, DatasetKind};
use qforge_train::trainer::{Objective, TrainConfig, Trainer, apply_overrides};
use qforge_util::write_jsonl_atomic;

fn base_model() -> PathBuf {
    qforge_testkit::tiny_model()
}

fn config(dir: &Path, train: &str, eval: &str) -> TrainConfig {
    TrainConfig {
        model: base_model(),
        data: dir.join(train),
        eval_data: Some(dir.join(eval)),
        output_dir: dir.join("out"),
        max_length: 64,
        batch_size: 16,
        schedule: "constant".into(),
        seed: 3,
        ..TrainConfig::default()
    }
}

#[test]
fn sft_drives_held_out_loss_down_on_the_copy_task() {
    let dir = tempfile::tempdir().unwrap();
    write_jsonl_atomic(&dir.path().join("train.jsonl"), &copy_sft(512, 1)).unwrap();
    write_jsonl_atomic(&dir.path().join("eval.jsonl"), &copy_sft(64, 2)).unwrap();
    let cfg = TrainConfig {
        lr: 3e-3,
        max_steps: Some(120),
        ..config(dir.path(), "train.jsonl", "eval.jsonl")
    };
    let mut trainer = Trainer::new(cfg, Objective::Sft).unwrap();
    let before = trainer.evaluate().unwrap().loss;
    let mut evals = Vec::new();
    trainer.train(|_| {}, |e| evals.push(e.clone())).unwrap();
    let after = evals.last().unwrap().loss;
    assert!(
        before > 3.0,
        "random model should be far from the task: {before}"
    );
    assert!(after < 1.2, "held-out loss {before:.3} -> {after:.3}");
    // The final checkpoint is a loadable HF-layout model.
    let ckpt = dir.path().join("out/checkpoint-120");
    qforge_model::Checkpoint::load_dir(&ckpt, candle_core::DType::F32, &candle_core::Device::Cpu)
        .unwrap();
}

#[test]
fn dpo_raises_held_out_preference_accuracy_above_90_percent() {
    let dir = tempfile::tempdir().unwrap();
    write_jsonl_atomic(&dir.path().join("train.jsonl"), &copy_preferences(256, 4)).unwrap();
    write_jsonl_atomic(&dir.path().join("eval.jsonl"), &copy_preferences(64, 5)).unwrap();
    let cfg = TrainConfig {
        lr: 3e-3,
        beta: 0.1,
        max_steps: Some(100),
        ..config(dir.path(), "train.jsonl", "eval.jsonl")
    };
    let mut trainer = Trainer::new(cfg, Objective::Dpo).unwrap();
    let before = trainer.evaluate().unwrap();
    assert!(
        (before.loss - std::f64::consts::LN_2).abs() < 1e-4,
        "policy = reference starts at ln 2: {}",
        before.loss
    );
    let mut evals = Vec::new();
    trainer.train(|_| {}, |e| evals.push(e.clone())).unwrap();
    let after = evals.last().unwrap();
    assert!(
        after.accuracy.unwrap() > 0.9,
        "held-out accuracy {:?} -> {:?}",
        before.accuracy,
        after.accuracy
    );
    assert!(after.loss < before.loss);
}

#[test]
fn reward_model_reaches_90_percent_pairwise_accuracy() {
    let dir = tempfile::tempdir().unwrap();
    write_jsonl_atomic(&dir.path().join("train.jsonl"), &copy_preferences(1024, 6)).unwrap();
    write_jsonl_atomic(&dir.path().join("eval.jsonl"), &copy_preferences(64, 7)).unwrap();
    let cfg = TrainConfig {
        lr: 2e-3,
        max_steps: Some(200),
        ..config(dir.path(), "train.jsonl", "eval.jsonl")
    };
    let mut trainer = Trainer::new(cfg, Objective::Rm).unwrap();
    let mut evals = Vec::new();
    trainer.train(|_| {}, |e| evals.push(e.clone())).unwrap();
    let acc = evals.last().unwrap().accuracy.unwrap();
    assert!(acc > 0.9, "held-out pairwise accuracy {acc}");
    // Saved in the Qwen*ForSequenceClassification layout with the score head.
    let ckpt = dir.path().join("out/checkpoint-200");
    let store = qforge_model::WeightStore::open_dir(&ckpt).unwrap();
    assert_eq!(store.shape("score.weight"), Some(vec![1, 48]));
}

#[test]
fn a_killed_run_resumes_with_the_same_loss_sequence() {
    let dir = tempfile::tempdir().unwrap();
    write_jsonl_atomic(&dir.path().join("train.jsonl"), &copy_sft(96, 8)).unwrap();
    write_jsonl_atomic(&dir.path().join("eval.jsonl"), &copy_sft(8, 9)).unwrap();
    let base = TrainConfig {
        lr: 1e-3,
        max_steps: Some(9),
        save_steps: 3,
        schedule: "cosine".into(),
        warmup_steps: 2,
        grad_accum: 2,
        batch_size: 8,
        weight_decay: 0.01,
        ..config(dir.path(), "train.jsonl", "eval.jsonl")
    };
    let full: Vec<f64> = Trainer::new(
        TrainConfig {
            output_dir: dir.path().join("full"),
            ..base.clone()
        },
        Objective::Sft,
    )
    .unwrap()
    .train(|_| {}, |_| {})
    .unwrap()
    .iter()
    .map(|r| r.loss)
    .collect();
    let killed_dir = dir.path().join("killed");
    let cfg = TrainConfig {
        output_dir: killed_dir.clone(),
        ..base
    };
    // "Kill" after step 5: the newest checkpoint on disk is step 3 (more than one epoch of
    // batches has gone by, so the data cursor crosses an epoch boundary too).
    Trainer::new(cfg.clone(), Objective::Sft)
        .unwrap()
        .train_until(Some(5), |_| {}, |_| {})
        .unwrap();
    let mut resumed = Trainer::new(cfg, Objective::Sft).unwrap();
    assert_eq!(resumed.step(), 3);
    let rest: Vec<f64> = resumed
        .train(|_| {}, |_| {})
        .unwrap()
        .iter()
        .map(|r| r.loss)
        .collect();
    assert_eq!(rest.len(), 6);
    for (i, (a, b)) in rest.iter().zip(&full[3..]).enumerate() {
        assert!(
            (a - b).abs() < 1e-6,
            "step {}: resumed {a} vs uninterrupted {b}",
            i + 4
        );
    }
    // Only the newest `save_total_limit` (2) checkpoints are kept, and no temporary ones.
    let names: Vec<String> = std::fs::read_dir(&killed_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        names.contains(&"checkpoint-9".to_string()) && names.contains(&"checkpoint-6".to_string()),
        "{names:?}"
    );
    assert!(
        !names
            .iter()
            .any(|n| n.contains("tmp") || n == "checkpoint-3"),
        "{names:?}"
    );
}

#[test]
fn malformed_lines_name_file_and_line_or_are_skipped_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.jsonl");
    std::fs::write(
        &path,
        "{\"prompt\": \"a\", \"completion\": \"b\"}\n{not json}\n{\"prompt\": \"a\"}\n\n{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}]}\n{\"prompt\": \"p\", \"chosen\": \"same\", \"rejected\": \"same\"}\n",
    )
    .unwrap();
    let tok = qforge_model::Tokenizer::from_dir(&base_model()).unwrap();
    let err = Dataset::load(&path, DatasetKind::Sft, &tok, &DataOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("bad.jsonl:2") && err.contains("invalid JSON"),
        "{err}"
    );
    let ds = Dataset::load(
        &path,
        DatasetKind::Sft,
        &tok,
        &DataOptions {
            skip_malformed: true,
            ..DataOptions::default()
        },
    )
    .unwrap();
    assert_eq!(ds.examples.len(), 1);
    assert_eq!(ds.stats.skipped_malformed, 4);
    let err = Dataset::load(
        &path,
        DatasetKind::Preference,
        &tok,
        &DataOptions {
            skip_malformed: true,
            ..DataOptions::default()
        },
    )
    .unwrap_err();
    assert!(err.to_string().contains("no usable examples"), "{err}");
    std::fs::write(
        &path,
        "{\"prompt\": \"p\", \"chosen\": \"same\", \"rejected\": \"same\"}\n",
    )
    .unwrap();
    let err = Dataset::load(
        &path,
        DatasetKind::Preference,
        &tok,
        &DataOptions::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("bad.jsonl:1") && err.contains("identical"),
        "{err}"
    );
}

#[test]
fn conversational_sft_masks_the_prompt_and_truncation_keeps_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("chat.jsonl");
    std::fs::write(
        &path,
        "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}, {\"role\": \"assistant\", \"content\": \"hello there\"}]}\n",
    )
    .unwrap();
    let tok = qforge_model::Tokenizer::from_dir(&base_model()).unwrap();
    let ds = Dataset::load(&path, DatasetKind::Sft, &tok, &DataOptions::default()).unwrap();
    let qforge_train::data::Example::Sft(seq) = &ds.examples[0] else {
        panic!()
    };
    let prompt = tok.decode(&seq.ids[..seq.prompt_len], false).unwrap();
    let completion = tok.decode(&seq.ids[seq.prompt_len..], false).unwrap();
    assert_eq!(
        prompt,
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    );
    assert_eq!(completion, "<think>\n\n</think>\n\nhello there<|im_end|>\n");
    let short = Dataset::load(
        &path,
        DatasetKind::Sft,
        &tok,
        &DataOptions {
            max_length: seq.prompt_len + 2,
            ..DataOptions::default()
        },
    )
    .unwrap();
    assert_eq!(short.stats.truncated, 1);
    let qforge_train::data::Example::Sft(cut) = &short.examples[0] else {
        panic!()
    };
    assert_eq!(&cut.ids[..], &seq.ids[..seq.prompt_len + 2]);
    let none = Dataset::load(
        &path,
        DatasetKind::Sft,
        &tok,
        &DataOptions {
            max_length: seq.prompt_len,
            ..DataOptions::default()
        },
    );
    assert!(
        none.is_err(),
        "an example whose prompt fills the budget is dropped"
    );
}

#[test]
fn overrides_are_checked() {
    let cfg = TrainConfig::default();
    let c = apply_overrides(
        &cfg,
        &[
            "lr=0.5".into(),
            "schedule=linear".into(),
            "max_steps=7".into(),
        ],
    )
    .unwrap();
    assert_eq!(
        (c.lr, c.schedule.as_str(), c.max_steps),
        (0.5, "linear", Some(7))
    );
    assert!(apply_overrides(&cfg, &["nope=1".into()]).is_err());
    assert!(apply_overrides(&cfg, &["lr=fast".into()]).is_err());
}

#[test]
fn lora_sft_learns_saves_peft_adapters_and_resumes_exactly() {
    let dir = tempfile::tempdir().unwrap();
    write_jsonl_atomic(&dir.path().join("train.jsonl"), &copy_sft(256, 10)).unwrap();
    write_jsonl_atomic(&dir.path().join("eval.jsonl"), &copy_sft(32, 11)).unwrap();
    let cfg = TrainConfig {
        lr: 1e-2,
        lora_r: 8,
        lora_alpha: 16.0,
        max_steps: Some(40),
        save_steps: 20,
        ..config(dir.path(), "train.jsonl", "eval.jsonl")
    };
    let mut trainer = Trainer::new(cfg.clone(), Objective::Sft).unwrap();
    let before = trainer.evaluate().unwrap().loss;
    let full: Vec<f64> = trainer
        .train(|_| {}, |_| {})
        .unwrap()
        .iter()
        .map(|r| r.loss)
        .collect();
    let after = trainer.evaluate().unwrap().loss;
    assert!(
        after < before - 1.0,
        "LoRA SFT: held-out loss {before:.3} -> {after:.3}"
    );
    let ckpt = dir.path().join("out/checkpoint-40");
    assert!(
        ckpt.join("adapter_config.json").is_file()
            && ckpt.join("adapter_model.safetensors").is_file()
    );
    assert!(
        !ckpt.join("model.safetensors").exists(),
        "a LoRA checkpoint holds only the adapter"
    );
    // Base + saved adapter reproduces the trained model.
    let mut reloaded = qforge_model::Model::load(
        &base_model(),
        candle_core::DType::F32,
        &candle_core::Device::Cpu,
        &[],
    )
    .unwrap();
    qforge_model::load_adapter(&mut reloaded, &ckpt).unwrap();
    let b =
        qforge_model::Batch::right_padded(&[&[5, 6, 7, 8]], 0, &candle_core::Device::Cpu).unwrap();
    let want = trainer
        .model()
        .logits(&trainer.model().forward(&b, None).unwrap())
        .unwrap();
    let got = reloaded
        .logits(&reloaded.forward(&b, None).unwrap())
        .unwrap();
    let diff: f32 = (want - got)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar()
        .unwrap();
    assert!(diff < 1e-5, "{diff}");
    // Kill after step 30 (newest checkpoint: 20) and resume.
    let killed = TrainConfig {
        output_dir: dir.path().join("killed"),
        ..cfg
    };
    Trainer::new(killed.clone(), Objective::Sft)
        .unwrap()
        .train_until(Some(30), |_| {}, |_| {})
        .unwrap();
    let mut resumed = Trainer::new(killed, Objective::Sft).unwrap();
    assert_eq!(resumed.step(), 20);
    let rest: Vec<f64> = resumed
        .train(|_| {}, |_| {})
        .unwrap()
        .iter()
        .map(|r| r.loss)
        .collect();
    for (i, (a, b)) in rest.iter().zip(&full[20..]).enumerate() {
        assert!((a - b).abs() < 1e-6, "step {}: {a} vs {b}", i + 21);
    }
}

#[test]
fn gradient_checkpointing_trains_identically_for_every_objective() {
    let dir = tempfile::tempdir().unwrap();
    write_jsonl_atomic(&dir.path().join("sft.jsonl"), &copy_sft(64, 12)).unwrap();
    write_jsonl_atomic(&dir.path().join("pref.jsonl"), &copy_preferences(64, 13)).unwrap();
    for (objective, data) in [
        (Objective::Sft, "sft.jsonl"),
        (Objective::Dpo, "pref.jsonl"),
        (Objective::Rm, "pref.jsonl"),
    ] {
        let run = |checkpointing: bool| -> Vec<f64> {
            let cfg = TrainConfig {
                lr: 1e-3,
                max_steps: Some(4),
                gradient_checkpointing: checkpointing,
                output_dir: dir.path().join(format!("{objective:?}-{checkpointing}")),
                ..config(dir.path(), data, data)
            };
            Trainer::new(cfg, objective)
                .unwrap()
                .train(|_| {}, |_| {})
                .unwrap()
                .iter()
                .map(|r| r.loss)
                .collect()
        };
        let (plain, recomputed) = (run(false), run(true));
        for (a, b) in plain.iter().zip(&recomputed) {
            assert!(
                (a - b).abs() < 1e-5,
                "{objective:?}: {plain:?} vs {recomputed:?}"
            );
        }
    }
}

/// The bf16 path (meant for CUDA) runs on CPU too: every objective, and LoRA, trains with bf16
/// compute, f32 master weights in the optimiser, and saves bf16 checkpoints.
#[test]
fn bf16_training_keeps_f32_master_weights_and_learns() {
    let dir = tempfile::tempdir().unwrap();
    write_jsonl_atomic(&dir.path().join("sft.jsonl"), &copy_sft(256, 21)).unwrap();
    write_jsonl_atomic(&dir.path().join("pref.jsonl"), &copy_preferences(32, 22)).unwrap();
    for (objective, data, lora_r) in [
        (Objective::Sft, "sft.jsonl", 0),
        (Objective::Sft, "sft.jsonl", 4),
        (Objective::Dpo, "pref.jsonl", 0),
        (Objective::Rm, "pref.jsonl", 0),
    ] {
        let steps = if objective == Objective::Sft && lora_r == 0 {
            40
        } else {
            3
        };
        let out = dir.path().join(format!("{objective:?}-{lora_r}"));
        let cfg = TrainConfig {
            lr: 3e-3,
            max_steps: Some(steps),
            dtype: "bf16".into(),
            lora_r,
            output_dir: out.clone(),
            ..config(dir.path(), data, data)
        };
        let losses: Vec<f64> = Trainer::new(cfg, objective)
            .unwrap()
            .train(|_| {}, |_| {})
            .unwrap()
            .iter()
            .map(|r| r.loss)
            .collect();
        assert!(
            losses.iter().all(|l| l.is_finite()),
            "{objective:?}: {losses:?}"
        );
        let ckpt = out.join(format!("checkpoint-{steps}"));
        let opt = candle_core::safetensors::load(
            ckpt.join("optimizer.safetensors"),
            &candle_core::Device::Cpu,
        )
        .unwrap();
        let masters: Vec<_> = opt
            .iter()
            .filter(|(k, _)| k.starts_with("master."))
            .collect();
        assert_eq!(
            masters.is_empty(),
            lora_r > 0,
            "{objective:?}: f32 master weights exactly for the bf16 parameters"
        );
        assert!(
            masters
                .iter()
                .all(|(_, t)| t.dtype() == candle_core::DType::F32)
        );
        // LoRA adapters stay f32 on a bf16 base, as PEFT keeps them (autocast_adapter_dtype).
        let (weights, dtype) = if lora_r > 0 {
            ("adapter_model.safetensors", candle_core::DType::F32)
        } else {
            ("model.safetensors", candle_core::DType::BF16)
        };
        let saved =
            candle_core::safetensors::load(ckpt.join(weights), &candle_core::Device::Cpu).unwrap();
        assert!(
            saved.values().all(|t| t.dtype() == dtype),
            "{objective:?}: checkpoint not in {dtype:?}: {:?}",
            saved
                .iter()
                .map(|(k, t)| (k, t.dtype()))
                .collect::<Vec<_>>()
        );
        if objective == Objective::Sft && lora_r == 0 {
            let (first, last) = (losses[0], losses[losses.len() - 1]);
            assert!(last < 0.6 * first, "bf16 SFT did not learn: {losses:?}");
        }
    }
}

#[test]
fn multi_turn_sft_learns_every_assistant_turn_and_masks_tool_responses() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent.jsonl");
    let row = serde_json::json!({"messages": [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "capital of France?"},
        {"role": "assistant", "content": "<think>look it up</think>\n<tool_call>{\"name\": \"search\"}</tool_call>"},
        {"role": "user", "content": "<tool_response>\nParis is the capital.\n</tool_response>"},
        {"role": "assistant", "content": "<answer>Paris</answer>"}
    ]});
    std::fs::write(&path, format!("{row}\n")).unwrap();
    let tok = qforge_model::Tokenizer::from_dir(&base_model()).unwrap();
    let ds = Dataset::load(&path, DatasetKind::Sft, &tok, &DataOptions::default()).unwrap();
    let qforge_train::data::Example::Sft(seq) = &ds.examples[0] else {
        panic!()
    };
    // Learned runs of tokens, decoded: exactly the two assistant turns.
    let mut runs: Vec<String> = Vec::new();
    let mut current = Vec::new();
    for (j, &id) in seq.ids.iter().enumerate() {
        if seq.learned(j) {
            current.push(id);
        } else if !current.is_empty() {
            runs.push(tok.decode(&std::mem::take(&mut current), false).unwrap());
        }
    }
    runs.push(tok.decode(&current, false).unwrap());
    assert_eq!(runs.len(), 2, "{runs:?}");
    assert!(
        runs[0].contains("<tool_call>") && runs[0].ends_with("<|im_end|>"),
        "{runs:?}"
    );
    assert!(
        runs[1].ends_with("<answer>Paris</answer><|im_end|>\n"),
        "{runs:?}"
    );
    assert!(!runs.iter().any(|r| r.contains("Paris is the capital")));
    let unlearned = tok
        .decode(&seq.ids[seq.unlearned[0].clone()], false)
        .unwrap();
    assert!(
        unlearned.contains("<tool_response>") && unlearned.ends_with("<|im_start|>assistant\n"),
        "{unlearned}"
    );
    assert_eq!(
        seq.completion_len(),
        seq.ids.len() - seq.prompt_len - seq.unlearned[0].len()
    );
}

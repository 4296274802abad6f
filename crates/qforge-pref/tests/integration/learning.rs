//! SoLoPO through the shared trainer on a synthetic key-value task: short contexts hold the
//! queried fact, long ones the same fact among 8 distractor facts. From one SFT warm-up,
//! short-only DPO (alpha 0) and SoLo-DPO (alpha 3) train for equal steps; SoLo-RA must shrink
//! the held-out short-to-long reward gap of the chosen answer (the quantity it optimises), and
//! the long-context preference accuracy is printed.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType, Device};
use qforge_model::Model;
use qforge_pref::{Penalty, SoloAlgorithm, SoloPo};
use qforge_train::data::{DataOptions, Dataset, DatasetKind};
use qforge_train::trainer::{TrainConfig, Trainer, reference_logps};
use qforge_util::SplitMix;
use qforge_util::write_jsonl_atomic;
use serde_json::{Value, json};

fn base_model() -> PathBuf {
    qforge_testkit::tiny_model()
}

fn num(rng: &mut SplitMix) -> String {
    (0..3)
        .map(|_| char::from(b'0' + rng.below(10) as u8))
        .collect()
}

/// Rows with short and long prompts; `long_as_prompt` writes the long context as `prompt` (for
/// scoring the long-context preference).
fn kv_rows(n: usize, distractors: usize, seed: u64, long_as_prompt: bool) -> Vec<Value> {
    let mut rng = SplitMix(seed);
    (0..n)
        .map(|_| {
            let (k, v) = (num(&mut rng), num(&mut rng));
            let mut wrong = num(&mut rng);
            while wrong == v {
                wrong = num(&mut rng);
            }
            let mut facts: Vec<String> = (0..distractors)
                .map(|_| format!("{}={}", num(&mut rng), num(&mut rng)))
                .collect();
            let at = rng.below(facts.len() + 1);
            facts.insert(at, format!("{k}={v}"));
            let short = format!("{k}={v} ? {k}=");
            let long = format!("{} ? {k}=", facts.join(" "));
            if long_as_prompt {
                json!({"prompt": long, "chosen": v, "rejected": wrong})
            } else {
                json!({"prompt": short, "prompt_long": long, "chosen": v, "rejected": wrong})
            }
        })
        .collect()
}

/// On held-out rows: the mean SoLo-RA gap `β|Δr_short − Δr_long|` of the chosen response, and
/// the long-context preference accuracy (log p(chosen) > log p(rejected) with the long prompt).
fn held_out(start: &Path, trained: &Path, data: &Path, long_data: &Path, beta: f32) -> (f64, f64) {
    let tok = qforge_model::Tokenizer::from_dir(&base_model()).unwrap();
    let load = |p: &Path| {
        Dataset::load(p, DatasetKind::Preference, &tok, &DataOptions::default()).unwrap()
    };
    let (set, long_set) = (load(data), load(long_data));
    let pad = tok.pad_token_id();
    let score = |dir: &Path, set: &Dataset| {
        let m = Model::load(dir, DType::F32, &Device::Cpu, &[]).unwrap();
        reference_logps(&m, set, pad, &Device::Cpu).unwrap()
    };
    let (after, before) = (score(trained, &set), score(start, &set));
    let gap = after
        .iter()
        .zip(&before)
        .map(|(a, b)| {
            let short = a.chosen - b.chosen;
            let long = a.long_chosen.unwrap() - b.long_chosen.unwrap();
            (beta * (short - long)).abs() as f64
        })
        .sum::<f64>()
        / after.len() as f64;
    let long = score(trained, &long_set);
    let accuracy = long.iter().filter(|a| a.chosen > a.rejected).count() as f64 / long.len() as f64;
    (gap, accuracy)
}

/// SFT rows answering from short contexts (the warm-up every variant starts from).
fn sft_rows(n: usize, seed: u64) -> Vec<Value> {
    kv_rows(n, 8, seed, false)
        .into_iter()
        .map(|r| json!({"prompt": r["prompt"], "completion": r["chosen"]}))
        .collect()
}

#[test]
fn solo_ra_shrinks_the_short_to_long_reward_gap_that_short_only_dpo_leaves() {
    let dir = tempfile::tempdir().unwrap();
    // Warm-up: SFT answering from short contexts only (long-context retrieval stays weak).
    write_jsonl_atomic(&dir.path().join("sft.jsonl"), &sft_rows(2048, 9)).unwrap();
    let mut sft = Trainer::new(
        TrainConfig {
            model: base_model(),
            data: dir.path().join("sft.jsonl"),
            output_dir: dir.path().join("sft"),
            max_length: 64,
            batch_size: 32,
            lr: 3e-3,
            schedule: "constant".into(),
            max_steps: Some(120),
            seed: 4,
            ..TrainConfig::default()
        },
        qforge_train::trainer::Objective::Sft,
    )
    .unwrap();
    sft.train(|_| {}, |_| {}).unwrap();
    let warm = dir.path().join("warm");
    sft.save_model(&warm).unwrap();

    write_jsonl_atomic(&dir.path().join("train.jsonl"), &kv_rows(256, 8, 1, false)).unwrap();
    write_jsonl_atomic(&dir.path().join("held.jsonl"), &kv_rows(128, 8, 2, false)).unwrap();
    write_jsonl_atomic(
        &dir.path().join("held_long.jsonl"),
        &kv_rows(128, 8, 2, true),
    )
    .unwrap();
    let beta = 0.1;
    let run = |alpha: f64| {
        let out = dir.path().join(format!("out-{alpha}"));
        let config = TrainConfig {
            model: warm.clone(),
            data: dir.path().join("train.jsonl"),
            output_dir: out.clone(),
            max_length: 64,
            batch_size: 16,
            lr: 2e-3,
            schedule: "constant".into(),
            max_steps: Some(60),
            seed: 5,
            ..TrainConfig::default()
        };
        let objective = SoloPo {
            algorithm: SoloAlgorithm::Dpo { beta },
            alpha,
            penalty: Penalty::Abs,
            anchor_short: false,
        };
        let reports = Trainer::new_pairwise(config, Arc::new(objective))
            .unwrap()
            .train(|_| {}, |_| {})
            .unwrap();
        assert!(reports.iter().all(|r| r.loss.is_finite() && !r.skipped));
        assert!(
            reports.last().unwrap().accuracy.unwrap() > 0.9,
            "short-context DPO learns"
        );
        held_out(
            &warm,
            &out.join("checkpoint-60"),
            &dir.path().join("held.jsonl"),
            &dir.path().join("held_long.jsonl"),
            beta as f32,
        )
    };
    let (gap_short_only, acc_short_only) = run(0.0);
    let (gap_solo, acc_solo) = run(3.0);
    eprintln!(
        "held-out SoLo-RA gap: short-only DPO {gap_short_only:.3}, SoLo-DPO {gap_solo:.3}; \
         long-context accuracy {acc_short_only:.3} vs {acc_solo:.3}"
    );
    assert!(
        gap_solo < 0.5 * gap_short_only,
        "SoLo-RA should shrink the gap: {gap_solo} vs {gap_short_only}"
    );
}

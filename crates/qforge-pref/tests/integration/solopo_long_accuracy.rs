//! SoLoPO's claim at toy scale (SoLoPO, arXiv 2505.11166): from one SFT warm-up, SoLo-DPO trained on
//! short contexts gains more greedy exact match on long contexts than short-only DPO at equal
//! steps. The task is `kv_needle_pairs`: a fact `c=456` among 2 (short) or 24 (long) filler
//! words. (The `solopo_kv` example runs the same comparison with more variants and seeds.)

use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType, Device};
use qforge_engine::Engine;
use qforge_model::Checkpoint;
use qforge_pref::solopo_data::{chosen_exact_match, kv_needle_pairs};
use qforge_pref::{Penalty, SoloAlgorithm, SoloPo};
use qforge_train::trainer::{Objective, TrainConfig, Trainer};
use qforge_util::write_jsonl_atomic;
use serde_json::{Value, json};

fn base_model() -> PathBuf {
    qforge_testkit::tiny_model()
}

fn long_exact_match(dir: &Path, rows: &[Value]) -> f64 {
    let ck = Checkpoint::load_dir(dir, DType::F32, &Device::Cpu).unwrap();
    let engine = Engine::from_checkpoint(ck);
    chosen_exact_match(&engine, rows, "prompt_long").unwrap()
}

#[test]
fn solo_dpo_gains_more_long_context_accuracy_than_short_only_dpo() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // Warm-up: mostly short contexts, every 8th example long.
    let sft: Vec<Value> = kv_needle_pairs(4096, 2, 24, 9)
        .into_iter()
        .enumerate()
        .map(|(i, r)| {
            let field = if i % 8 == 0 { "prompt_long" } else { "prompt" };
            json!({"prompt": r[field], "completion": r["chosen"]})
        })
        .collect();
    write_jsonl_atomic(&d.join("sft.jsonl"), &sft).unwrap();
    let mut t = Trainer::new(
        TrainConfig {
            model: base_model(),
            data: d.join("sft.jsonl"),
            output_dir: d.join("sft"),
            max_length: 64,
            batch_size: 32,
            lr: 3e-3,
            schedule: "constant".into(),
            max_steps: Some(120),
            seed: 4,
            ..TrainConfig::default()
        },
        Objective::Sft,
    )
    .unwrap();
    t.train(|_| {}, |_| {}).unwrap();
    let warm = d.join("warm");
    t.save_model(&warm).unwrap();
    write_jsonl_atomic(&d.join("train.jsonl"), &kv_needle_pairs(512, 2, 24, 1)).unwrap();
    let held = kv_needle_pairs(256, 2, 24, 2);
    let warm_em = long_exact_match(&warm, &held);
    let steps = 120;
    let mut long_em = Vec::new();
    for alpha in [0.0, 1.0] {
        let out = d.join(format!("dpo-{alpha}"));
        let config = TrainConfig {
            model: warm.clone(),
            data: d.join("train.jsonl"),
            output_dir: out.clone(),
            max_length: 64,
            batch_size: 16,
            lr: 3e-4,
            schedule: "constant".into(),
            max_steps: Some(steps),
            seed: 5,
            ..TrainConfig::default()
        };
        let objective = SoloPo {
            algorithm: SoloAlgorithm::Dpo { beta: 0.1 },
            alpha,
            penalty: Penalty::Abs,
            anchor_short: false,
        };
        Trainer::new_pairwise(config, Arc::new(objective))
            .unwrap()
            .train(|_| {}, |_| {})
            .unwrap();
        long_em.push(long_exact_match(
            &out.join(format!("checkpoint-{steps}")),
            &held,
        ));
    }
    let (short_only, solo) = (long_em[0], long_em[1]);
    eprintln!(
        "long-context EM: warm-up {warm_em:.3}, short-only DPO {short_only:.3}, SoLo-DPO {solo:.3}"
    );
    assert!(
        solo - warm_em > short_only - warm_em + 0.02,
        "warm-up {warm_em:.3}, short-only {short_only:.3}, SoLo {solo:.3}"
    );
}

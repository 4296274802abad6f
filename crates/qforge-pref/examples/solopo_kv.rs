//! SoLoPO against short-only DPO on a synthetic key-value task (SoLoPO, arXiv 2505.11166):
//!
//!     cargo run --release -p qforge-pref --example solopo_kv [-- STEPS [LONG_EVERY [SFT_STEPS [DISTRACTORS]]]]
//!
//! A tiny Qwen3 (the test fixture) is SFT'd to answer `c=` from a short context holding the
//! fact `c=456` among 2 one-letter filler words (every `LONG_EVERY`-th SFT example uses the long
//! context instead). From that one checkpoint, equal steps of (a) short-only DPO, (b) SoLo-DPO
//! with α = 1 and (c) α = 3, and (d) α = 3 with the short reward anchored, train on
//! short-context pairs (chosen = the value, rejected = a near miss with one digit changed); (b)
//! to (d) also see the chosen answer after the long context (the fact among `DISTRACTORS`
//! filler words, default 24). Printed: greedy exact match on held-out long and short contexts.
//! Environment: `SEED` (data and trainer seeds), `LR` (DPO learning rate, default 3e-4),
//! `SHORT` (filler words in the short context, default 2).

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

/// Greedy exact match of the value after `field`'s prompt.
fn exact_match(dir: &Path, rows: &[Value], field: &str) -> f64 {
    let ck = Checkpoint::load_dir(dir, DType::F32, &Device::Cpu).unwrap();
    let engine = Engine::from_checkpoint(ck);
    chosen_exact_match(&engine, rows, field).unwrap()
}

fn main() {
    let steps: u64 = std::env::args()
        .nth(1)
        .map_or(120, |s| s.parse().expect("STEPS"));
    let sft_steps: u64 = std::env::args()
        .nth(3)
        .map_or(120, |s| s.parse().expect("SFT_STEPS"));
    let distractors: usize = std::env::args()
        .nth(4)
        .map_or(24, |s| s.parse().expect("DISTRACTORS"));
    let seed: u64 = std::env::var("SEED").map_or(0, |v| v.parse().expect("SEED"));
    let short: usize = std::env::var("SHORT").map_or(2, |v| v.parse().expect("SHORT"));
    let kv_rows =
        |n: usize, distractors: usize, seed: u64| kv_needle_pairs(n, short, distractors, seed);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let base = base_model();
    // Mostly short contexts, with every `long_every`-th SFT example long, so the warm-up model
    // retrieves from long contexts only some of the time.
    let long_every: usize = std::env::args()
        .nth(2)
        .map_or(8, |s| s.parse().expect("LONG_EVERY"));
    let sft: Vec<Value> = kv_rows(4096, distractors, 9 ^ seed)
        .into_iter()
        .enumerate()
        .map(|(i, r)| {
            let field = if long_every > 0 && i % long_every == 0 {
                "prompt_long"
            } else {
                "prompt"
            };
            json!({"prompt": r[field], "completion": r["chosen"]})
        })
        .collect();
    write_jsonl_atomic(&d.join("sft.jsonl"), &sft).unwrap();
    let mut t = Trainer::new(
        TrainConfig {
            model: base.clone(),
            data: d.join("sft.jsonl"),
            output_dir: d.join("sft"),
            max_length: 64,
            batch_size: 32,
            lr: 3e-3,
            schedule: "constant".into(),
            max_steps: Some(sft_steps),
            seed: 4 ^ seed,
            ..TrainConfig::default()
        },
        Objective::Sft,
    )
    .unwrap();
    t.train(|_| {}, |_| {}).unwrap();
    let warm = d.join("warm");
    t.save_model(&warm).unwrap();
    write_jsonl_atomic(&d.join("train.jsonl"), &kv_rows(512, distractors, 1 ^ seed)).unwrap();
    let held = kv_rows(256, distractors, 2 ^ seed);
    println!("{:<22} {:>10} {:>10}", "model", "long EM", "short EM");
    println!(
        "{:<22} {:>10.3} {:>10.3}",
        "SFT warm-up",
        exact_match(&warm, &held, "prompt_long"),
        exact_match(&warm, &held, "prompt")
    );
    for (name, alpha, anchor_short) in [
        ("short-only DPO", 0.0, false),
        ("SoLo-DPO alpha=1", 1.0, false),
        ("SoLo-DPO alpha=3", 3.0, false),
        ("SoLo-DPO a=3 anchored", 3.0, true),
    ] {
        let out = d.join(format!("dpo-{alpha}-{anchor_short}"));
        let config = TrainConfig {
            model: warm.clone(),
            data: d.join("train.jsonl"),
            output_dir: out.clone(),
            max_length: 64,
            batch_size: 16,
            lr: std::env::var("LR").map_or(3e-4, |v| v.parse().expect("LR")),
            schedule: "constant".into(),
            max_steps: Some(steps),
            seed: 5 ^ seed,
            ..TrainConfig::default()
        };
        let objective = SoloPo {
            algorithm: SoloAlgorithm::Dpo { beta: 0.1 },
            alpha,
            penalty: Penalty::Abs,
            anchor_short,
        };
        Trainer::new_pairwise(config, Arc::new(objective))
            .unwrap()
            .train(|_| {}, |_| {})
            .unwrap();
        let ck = out.join(format!("checkpoint-{steps}"));
        println!(
            "{:<22} {:>10.3} {:>10.3}",
            name,
            exact_match(&ck, &held, "prompt_long"),
            exact_match(&ck, &held, "prompt")
        );
    }
}

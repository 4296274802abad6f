//! SoLoPO against short-only DPO on a synthetic key-value task (specs/pref.md §4.4):
//!
//!     cargo run --release -p qforge-pref --example solopo_kv [-- STEPS [LONG_EVERY [SFT_STEPS [DISTRACTORS]]]]
//!
//! A tiny Qwen3 (the test fixture) is SFT'd to answer `k=?` from a short context holding the
//! fact. From that one checkpoint, equal steps of (a) short-only DPO, (b) SoLo-DPO with α = 1 and
//! (c) α = 3 train on short-context pairs (chosen = the right value, rejected = a wrong one); (b)
//! and (c) also see the chosen answer after the long context (the fact among 8 distractors).
//! Printed: greedy exact match on held-out long and short contexts, and the short-to-long reward
//! gap SoLo-RA optimises.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType, Device};
use qforge_engine::{Engine, GenerationRequest};
use qforge_model::Checkpoint;
use qforge_pref::{Penalty, SoloAlgorithm, SoloPo};
use qforge_train::data::SplitMix;
use qforge_train::synthetic::write_jsonl;
use qforge_train::trainer::{Objective, TrainConfig, Trainer};
use serde_json::{Value, json};

fn base_model() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tools/fixtures/model/qwen3_tied_gqa")
}

fn num(rng: &mut SplitMix) -> String {
    (0..3)
        .map(|_| char::from(b'0' + rng.below(10) as u8))
        .collect()
}

fn kv_rows(n: usize, distractors: usize, seed: u64) -> Vec<Value> {
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
            json!({"prompt": format!("{k}={v} ? {k}="), "prompt_long": format!("{} ? {k}=", facts.join(" ")),
                   "chosen": v, "rejected": wrong})
        })
        .collect()
}

/// Greedy exact match of the value after `field`'s prompt.
fn exact_match(dir: &Path, rows: &[Value], field: &str) -> f64 {
    let ck = Checkpoint::load_dir(dir, DType::F32, &Device::Cpu).unwrap();
    let engine = Engine::new(ck.model, Arc::new(ck.tokenizer));
    let tok = engine.tokenizer().clone();
    let requests = rows
        .iter()
        .map(|r| GenerationRequest::new(tok.encode(r[field].as_str().unwrap(), false).unwrap(), 4))
        .collect();
    let outs = engine.generate(requests, |_| {}).unwrap();
    let hits = outs
        .iter()
        .zip(rows)
        .filter(|(o, r)| o.text.trim().starts_with(r["chosen"].as_str().unwrap()))
        .count();
    hits as f64 / rows.len() as f64
}

fn main() {
    let steps: u64 = std::env::args()
        .nth(1)
        .map_or(60, |s| s.parse().expect("STEPS"));
    let sft_steps: u64 = std::env::args()
        .nth(3)
        .map_or(120, |s| s.parse().expect("SFT_STEPS"));
    let distractors: usize = std::env::args()
        .nth(4)
        .map_or(4, |s| s.parse().expect("DISTRACTORS"));
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let base = base_model();
    // Mostly short contexts, with every `long_every`-th SFT example long, so the warm-up model
    // retrieves from long contexts only some of the time.
    let long_every: usize = std::env::args()
        .nth(2)
        .map_or(8, |s| s.parse().expect("LONG_EVERY"));
    let sft: Vec<Value> = kv_rows(4096, distractors, 9)
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
    write_jsonl(&d.join("sft.jsonl"), &sft).unwrap();
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
            seed: 4,
            ..TrainConfig::default()
        },
        Objective::Sft,
    )
    .unwrap();
    t.train(|_| {}, |_| {}).unwrap();
    let warm = d.join("warm");
    t.save_model(&warm).unwrap();
    write_jsonl(&d.join("train.jsonl"), &kv_rows(512, distractors, 1)).unwrap();
    let held = kv_rows(256, distractors, 2);
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
            lr: 2e-3,
            schedule: "constant".into(),
            max_steps: Some(steps),
            seed: 5,
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

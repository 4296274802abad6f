//! GRPO learns: a tiny Qwen3, briefly SFT'd on short needle-in-a-haystack prompts, improves its
//! held-out exact match on longer haystacks under GRPO with fixed seeds (no KL, token-mean,
//! DAPO's clip-higher).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType, Device};
use qforge_engine::Engine;
use qforge_model::{ChatOptions, Checkpoint};
use qforge_rl::grpo::{GroupFilter, GrpoConfig, GrpoTrainer};
use qforge_rl::reward::{ExactMatch, Extraction, RewardFn, Task};
use qforge_rl::tasks::needle_compact;
use qforge_train::synthetic::write_jsonl;
use qforge_train::trainer::{Objective, TrainConfig, Trainer};
use serde_json::{Value, json};

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tools/fixtures/model/qwen3_tied_gqa")
}

/// Mean greedy exact match on `held`.
fn greedy_accuracy(dir: &Path, held: &[Task]) -> f64 {
    let ck = Checkpoint::load_dir(dir, DType::F32, &Device::Cpu).unwrap();
    let stop = ck.stop_token_ids();
    let engine = Engine::new(ck.model, Arc::new(ck.tokenizer)).with_stop_token_ids(stop);
    let tok = engine.tokenizer().clone();
    let requests = held
        .iter()
        .map(|t| {
            let text = tok
                .apply_chat_template(&t.messages, &ChatOptions::generation())
                .unwrap();
            engine.request(tok.encode(&text, false).unwrap(), 12)
        })
        .collect();
    let outs = engine.generate(requests, |_| {}).unwrap();
    let reward = ExactMatch(Extraction::Whole);
    outs.iter()
        .zip(held)
        .map(|(o, t)| reward.score(t, &o.text))
        .sum::<f64>()
        / held.len() as f64
}

#[test]
fn grpo_raises_the_held_out_accuracy_of_a_short_haystack_retriever_on_long_ones() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let sft: Vec<Value> = [4, 8]
        .into_iter()
        .flat_map(|words| needle_compact(2048, words, words as u64))
        .map(|t| {
            json!({"messages": [t.messages[0].clone(),
                                {"role": "assistant", "content": t.answers[0]}]})
        })
        .collect();
    write_jsonl(&d.join("sft.jsonl"), &sft).unwrap();
    let mut t = Trainer::new(
        TrainConfig {
            model: fixture(),
            data: d.join("sft.jsonl"),
            output_dir: d.join("sft"),
            max_length: 96,
            batch_size: 32,
            lr: 3e-3,
            schedule: "constant".into(),
            max_steps: Some(150),
            seed: 1,
            ..TrainConfig::default()
        },
        Objective::Sft,
    )
    .unwrap();
    t.train(|_| {}, |_| {}).unwrap();
    let warm = d.join("warm");
    t.save_model(&warm).unwrap();

    let held = needle_compact(128, 24, 99);
    let before = greedy_accuracy(&warm, &held);
    let mut grpo = GrpoTrainer::new(
        GrpoConfig {
            model: warm.clone(),
            output_dir: d.join("grpo"),
            group_size: 8,
            prompts_per_step: 16,
            max_new_tokens: 12,
            temperature: 1.0,
            lr: 1e-3,
            max_steps: 30,
            filter: GroupFilter::None,
            seed: 3,
            ..GrpoConfig::default()
        },
        needle_compact(512, 24, 7),
        Arc::new(ExactMatch(Extraction::Whole)),
    )
    .unwrap();
    let reports = grpo.train(|_| {}).unwrap();
    let after = greedy_accuracy(&d.join("grpo/policy"), &held);
    eprintln!("held-out greedy exact match on 24-word haystacks {before:.3} -> {after:.3}");
    // On-policy (1 mini-batch, 1 epoch): the ratio is exactly 1, nothing is clipped.
    assert!(
        reports
            .iter()
            .filter(|r| !r.skipped)
            .all(|r| r.clip_fraction == 0.0)
    );
    assert!(after > before + 0.2, "{before:.3} -> {after:.3}");
}

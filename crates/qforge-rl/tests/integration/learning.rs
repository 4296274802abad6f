//! GRPO learns: a tiny Qwen3, briefly SFT'd on short needle-in-a-haystack prompts, improves its
//! held-out exact match on longer haystacks under GRPO with fixed seeds (no KL, token-mean,
//! DAPO's clip-higher).

use std::path::PathBuf;
use std::sync::Arc;

use qforge_rl::grpo::{GroupFilter, GrpoConfig, GrpoTrainer};
use qforge_rl::reward::{ExactMatch, Extraction};
use qforge_rl::tasks::{greedy_score, needle_compact};
use qforge_train::trainer::{Objective, TrainConfig, Trainer};
use qforge_util::write_jsonl_atomic;
use serde_json::Value;

fn fixture() -> PathBuf {
    qforge_testkit::tiny_model()
}

#[test]
fn grpo_raises_the_held_out_accuracy_of_a_short_haystack_retriever_on_long_ones() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let sft: Vec<Value> = [4, 8]
        .into_iter()
        .flat_map(|words| needle_compact(2048, words, words as u64))
        .map(|t| t.sft_row())
        .collect();
    write_jsonl_atomic(&d.join("sft.jsonl"), &sft).unwrap();
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
    let before = greedy_score(&warm, &held, &ExactMatch(Extraction::Whole), 12).unwrap();
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
    let after = greedy_score(
        &d.join("grpo/policy"),
        &held,
        &ExactMatch(Extraction::Whole),
        12,
    )
    .unwrap();
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

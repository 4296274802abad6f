//! GRPO learns: a tiny Qwen3, briefly SFT'd to copy digit strings, improves its held-out copy
//! reward under GRPO with fixed seeds (no KL, token-mean, DAPO's clip-higher).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType, Device};
use qforge_engine::{Engine, GenerationRequest};
use qforge_model::{ChatOptions, Checkpoint};
use qforge_rl::grpo::{GroupFilter, GrpoConfig, GrpoTrainer};
use qforge_rl::reward::{RewardFn, Task};
use qforge_train::synthetic::{copy_sft, write_jsonl};
use qforge_train::trainer::{Objective, TrainConfig, Trainer};
use serde_json::{Value, json};

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tools/fixtures/model/qwen3_tied_gqa")
}

/// Fraction of digits copied at their position, minus 0.25 per missing or extra one.
struct CopyReward;

impl RewardFn for CopyReward {
    fn score(&self, task: &Task, response: &str) -> f64 {
        let response = qforge_train::answers::after_thinking(response).unwrap_or(response);
        let r: Vec<&str> = response.split_whitespace().collect();
        let g: Vec<&str> = task.answers[0].split_whitespace().collect();
        let hits = r.iter().zip(&g).filter(|(a, b)| a == b).count() as f64;
        (hits / g.len() as f64 - 0.25 * (r.len() as f64 - g.len() as f64).abs()).max(0.0)
    }
}

fn tasks(n: usize, seed: u64) -> Vec<Task> {
    copy_sft(n, seed)
        .into_iter()
        .map(|r| Task {
            messages: vec![json!({"role": "user", "content": r["prompt"]})],
            answers: vec![r["completion"].as_str().unwrap().to_string()],
        })
        .collect()
}

/// Mean greedy reward on `held`.
fn greedy_reward(dir: &Path, held: &[Task]) -> f64 {
    let ck = Checkpoint::load_dir(dir, DType::F32, &Device::Cpu).unwrap();
    let engine = Engine::new(ck.model, Arc::new(ck.tokenizer));
    let tok = engine.tokenizer().clone();
    let requests = held
        .iter()
        .map(|t| {
            let text = tok
                .apply_chat_template(&t.messages, &ChatOptions::generation())
                .unwrap();
            GenerationRequest::new(tok.encode(&text, false).unwrap(), 16)
        })
        .collect();
    let outs = engine.generate(requests, |_| {}).unwrap();
    outs.iter()
        .zip(held)
        .map(|(o, t)| CopyReward.score(t, &o.text))
        .sum::<f64>()
        / held.len() as f64
}

#[test]
fn grpo_raises_the_held_out_reward_of_a_half_trained_copier() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let sft: Vec<Value> = copy_sft(1024, 1)
        .into_iter()
        .map(|r| {
            json!({"messages": [{"role": "user", "content": r["prompt"]},
                                     {"role": "assistant", "content": r["completion"]}]})
        })
        .collect();
    write_jsonl(&d.join("sft.jsonl"), &sft).unwrap();
    let sft_steps = 80;
    let mut t = Trainer::new(
        TrainConfig {
            model: fixture(),
            data: d.join("sft.jsonl"),
            output_dir: d.join("sft"),
            max_length: 96,
            batch_size: 16,
            lr: 3e-3,
            schedule: "constant".into(),
            max_steps: Some(sft_steps),
            seed: 1,
            ..TrainConfig::default()
        },
        Objective::Sft,
    )
    .unwrap();
    t.train(|_| {}, |_| {}).unwrap();
    let warm = d.join("warm");
    t.save_model(&warm).unwrap();

    let held = tasks(64, 99);
    let before = greedy_reward(&warm, &held);
    let steps = 60;
    let mut grpo = GrpoTrainer::new(
        GrpoConfig {
            model: warm.clone(),
            output_dir: d.join("grpo"),
            group_size: 8,
            prompts_per_step: 16,
            max_new_tokens: 16,
            temperature: 0.7,
            lr: 1e-3,
            max_steps: steps,
            filter: GroupFilter::None,
            correct_threshold: 1.0,
            seed: 3,
            ..GrpoConfig::default()
        },
        tasks(512, 7),
        Arc::new(CopyReward),
    )
    .unwrap();
    let reports = grpo.train(|_| {}).unwrap();
    let after = greedy_reward(&d.join("grpo/policy"), &held);
    eprintln!("held-out greedy copy reward {before:.3} -> {after:.3}");
    // On-policy (1 mini-batch, 1 epoch): the ratio is exactly 1, nothing is clipped.
    assert!(
        reports
            .iter()
            .filter(|r| !r.skipped)
            .all(|r| r.clip_fraction == 0.0)
    );
    assert!(after > before + 0.1, "{before:.3} -> {after:.3}");
}

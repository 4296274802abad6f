//! Mutual-Taught on the synthetic copy task (specs/pref.md §4.3):
//!
//!     cargo run --release -p qforge-pref --example mutual_taught_copy [-- SFT_STEPS RM_STEPS DPO_STEPS DPO_LR]
//!
//! The policy is the tiny fixture model after a short SFT on copying digits (it makes the
//! mistakes of a half-trained copier). The base reward model is fitted to a *different*
//! distribution of mistakes (a digit replaced by `x`, which the policy never writes), so it
//! starts off-distribution. Two Mutual-Taught iterations then run; after each, printed:
//! the policy's true reward (mean fraction of digits copied right, greedy, held-out prompts)
//! and the reward model's accuracy against the truth on pairs of the current policy's samples.
//! Environment: `BIAS=length` fits the base RM to near misses that are never longer than the
//! right answer (a spurious length preference), `BIAS=none` to all near misses, `BIAS=verbose`
//! to near misses plus "a trailing `ok` beats none" while the policy's SFT answers trail 0-3
//! `ok`s (which the true reward punishes); `TEMP` sets the
//! E-step sampling temperature (default 1.0). Runs are kept in `runs/mutual_taught_copy/`.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use qforge_engine::{Engine, SamplingParams};
use qforge_model::{ChatOptions, Checkpoint};
use qforge_pref::mutual_taught::{MutualTaughtConfig, run};
use qforge_train::reward::RewardModel;
use qforge_train::synthetic::{copy_preferences, copy_sft, near_miss_preferences, write_jsonl};
use qforge_train::trainer::{Objective, TrainConfig, Trainer};
use serde_json::{Value, json};

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tools/fixtures/model/qwen3_tied_gqa")
}

fn arg(i: usize, default: f64) -> f64 {
    std::env::args()
        .nth(i)
        .map_or(default, |s| s.parse().expect("number"))
}

/// Fraction of gold digits reproduced at their position, minus 0.25 per extra or missing one.
fn true_reward(response: &str, gold: &str) -> f64 {
    // The Qwen3 template has the model open with an empty think block.
    let response = qforge_train::answers::after_thinking(response).unwrap_or(response);
    let (r, g): (Vec<&str>, Vec<&str>) = (
        response.split_whitespace().collect(),
        gold.split_whitespace().collect(),
    );
    let hits = r.iter().zip(&g).filter(|(a, b)| a == b).count() as f64;
    (hits / g.len() as f64 - 0.25 * (r.len() as f64 - g.len() as f64).abs()).max(0.0)
}

fn user(prompt: &str) -> Vec<Value> {
    vec![json!({"role": "user", "content": prompt})]
}

fn generate(
    dir: &Path,
    prompts: &[String],
    samples: usize,
    temperature: f32,
    seed: u64,
) -> Vec<Vec<String>> {
    let ck = Checkpoint::load_dir(dir, DType::F32, &Device::Cpu).unwrap();
    let engine = Engine::from_checkpoint(ck);
    let tok = engine.tokenizer().clone();
    prompts
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let text = tok
                .apply_chat_template(&user(p), &ChatOptions::generation())
                .unwrap();
            let ids = tok.encode(&text, false).unwrap();
            let requests = (0..samples)
                .map(|k| {
                    let mut r = engine.request(ids.clone(), 16);
                    r.sampling = SamplingParams {
                        temperature,
                        seed: Some(seed ^ ((i as u64) << 8) ^ k as u64),
                        ..SamplingParams::default()
                    };
                    r
                })
                .collect();
            engine
                .generate(requests, |_| {})
                .unwrap()
                .into_iter()
                .map(|o| o.text.trim().to_string())
                .collect()
        })
        .collect()
}

/// (policy's greedy true reward, RM accuracy on pairs of the policy's samples).
fn measure(policy: &Path, rm: &Path, held: &[(String, String)]) -> (f64, f64) {
    let prompts: Vec<String> = held.iter().map(|(p, _)| p.clone()).collect();
    let greedy = generate(policy, &prompts, 1, 0.0, 0);
    let reward = greedy
        .iter()
        .zip(held)
        .map(|(r, (_, g))| true_reward(&r[0], g))
        .sum::<f64>()
        / held.len() as f64;
    let samples = generate(policy, &prompts, 2, 1.0, 99);
    let rm = RewardModel::load(rm, DType::F32, &Device::Cpu).unwrap();
    let (mut right, mut total) = (0, 0);
    for ((p, g), s) in held.iter().zip(&samples) {
        let (a, b) = (true_reward(&s[0], g), true_reward(&s[1], g));
        if a == b {
            continue;
        }
        let convs: Vec<Vec<Value>> = s
            .iter()
            .map(|r| {
                vec![
                    json!({"role": "user", "content": p}),
                    json!({"role": "assistant", "content": r}),
                ]
            })
            .collect();
        let scores = rm.score_conversations(&convs, 8).unwrap();
        total += 1;
        if (scores[0] > scores[1]) == (a > b) {
            right += 1;
        }
    }
    (reward, right as f64 / total.max(1) as f64)
}

fn main() {
    let sft_steps = arg(1, 40.0) as u64;
    let rm_steps = arg(2, 40.0) as u64;
    let dpo_steps = arg(3, 30.0) as u64;
    let dpo_lr = arg(4, 2e-4);
    // Kept for inspection: every iteration's samples, pairs, selection and models.
    let d = Path::new("runs/mutual_taught_copy");
    if d.exists() {
        std::fs::remove_dir_all(d).unwrap();
    }
    std::fs::create_dir_all(d).unwrap();
    let verbose = std::env::var("BIAS").is_ok_and(|b| b == "verbose");
    // `ok` words after the copy: the verbosity the true reward punishes (0.25 each).
    let tail = |i: usize| " ok".repeat(i % 4);
    // Policy warm-up: conversational copy SFT, stopped early; with BIAS=verbose three quarters
    // of the answers trail 1-3 `ok`s, so the policy's samples vary in verbosity.
    let sft: Vec<Value> = copy_sft(1024, 1)
        .into_iter()
        .enumerate()
        .map(|(i, r)| {
            let answer = format!(
                "{}{}",
                r["completion"].as_str().unwrap(),
                if verbose { tail(i) } else { String::new() }
            );
            json!({"messages": [{"role": "user", "content": r["prompt"]}, {"role": "assistant", "content": answer}]})
        })
        .collect();
    write_jsonl(&d.join("sft.jsonl"), &sft).unwrap();
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
    let policy = d.join("policy0");
    t.save_model(&policy).unwrap();
    // Base RM: Bradley-Terry on x-corrupted pairs (not the policy's kind of mistake), or with
    // BIAS=length on near misses whose rejected answer is never longer than the chosen one
    // (changed or dropped digits, never a repeated one), a spurious "longer is better".
    let base_pairs = match std::env::var("BIAS").as_deref() {
        Ok("length") => near_miss_preferences(1024, 2)
            .into_iter()
            .filter(|r| {
                r["rejected"].as_str().unwrap().len() <= r["chosen"].as_str().unwrap().len()
            })
            .collect(),
        // An unbiased base RM, for comparison.
        Ok("none") => near_miss_preferences(1024, 2),
        // Right over near misses, and (spuriously) a trailing `ok` over none.
        Ok("verbose") => near_miss_preferences(1024, 2)
            .into_iter()
            .enumerate()
            .map(|(i, mut r)| {
                if i % 2 == 0 {
                    let right = r["chosen"].as_str().unwrap().to_string();
                    r["chosen"] = json!(format!("{right}{}", tail(1 + i % 3)));
                    r["rejected"] = json!(right);
                }
                r
            })
            .collect(),
        _ => copy_preferences(512, 2),
    };
    let rm_rows: Vec<Value> = base_pairs
        .into_iter()
        .map(|r| {
            json!({"prompt": user(r["prompt"].as_str().unwrap()),
            "chosen": [{"role": "assistant", "content": r["chosen"]}],
            "rejected": [{"role": "assistant", "content": r["rejected"]}]})
        })
        .collect();
    write_jsonl(&d.join("rm.jsonl"), &rm_rows).unwrap();
    let mut t = Trainer::new(
        TrainConfig {
            model: policy.clone(),
            data: d.join("rm.jsonl"),
            output_dir: d.join("rm0"),
            max_length: 96,
            batch_size: 16,
            lr: 1e-3,
            schedule: "constant".into(),
            max_steps: Some(rm_steps),
            seed: 2,
            ..TrainConfig::default()
        },
        Objective::Rm,
    )
    .unwrap();
    t.train(|_| {}, |_| {}).unwrap();
    let rm0 = d.join("rm-base");
    t.save_model(&rm0).unwrap();

    let prompts = |name: &str, n: usize, seed: u64| {
        let rows: Vec<Value> = copy_sft(n, seed)
            .into_iter()
            .map(|r| json!({"prompt": r["prompt"]}))
            .collect();
        write_jsonl(&d.join(name), &rows).unwrap();
        d.join(name)
    };
    let held: Vec<(String, String)> = copy_sft(64, 77)
        .into_iter()
        .map(|r| {
            (
                r["prompt"].as_str().unwrap().to_string(),
                r["completion"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let config = MutualTaughtConfig {
        policy: policy.clone(),
        reward_model: rm0.clone(),
        policy_prompts: vec![prompts("p1.jsonl", 96, 11), prompts("p2.jsonl", 96, 12)],
        rm_prompts: prompts("rmp.jsonl", 96, 13),
        selection_prompts: prompts("sel.jsonl", 48, 14),
        output_dir: d.join("mt"),
        iterations: 2,
        samples: 5,
        temperature: std::env::var("TEMP").map_or(1.0, |t| t.parse().expect("TEMP")),
        max_new_tokens: 16,
        win_rate_threshold: 0.0,
        dpo: TrainConfig {
            max_steps: Some(dpo_steps),
            save_steps: (dpo_steps / 3).max(1),
            batch_size: 8,
            lr: dpo_lr,
            beta: 0.1,
            max_length: 96,
            schedule: "constant".into(),
            ..TrainConfig::default()
        },
        rm: TrainConfig {
            max_steps: Some(rm_steps),
            batch_size: 16,
            lr: 1e-3,
            max_length: 96,
            schedule: "constant".into(),
            ..TrainConfig::default()
        },
        ..MutualTaughtConfig::default()
    };
    println!(
        "{:<12} {:>18} {:>22}",
        "", "policy true reward", "RM accuracy (on-policy)"
    );
    let (r, a) = measure(&policy, &rm0, &held);
    println!("{:<12} {:>18.3} {:>22.3}", "start", r, a);
    let results = run(&config, |t, s| eprintln!("iteration {t}: {s}")).unwrap();
    for res in &results {
        let rm = res
            .reward_model_out
            .clone()
            .unwrap_or(res.reward_model_in.clone());
        let (r, a) = measure(&res.policy_out, &rm, &held);
        println!(
            "{:<12} {:>18.3} {:>22.3}   (win rate {:.2}, M-step kept {} dropped {})",
            format!("iteration {}", res.iteration),
            r,
            a,
            res.best_win_rate,
            res.m_step_pairs_kept,
            res.m_step_pairs_dropped
        );
    }
}

//! A synthetic preference task on which Mutual-Taught's two claims can be checked with tiny
//! models on a CPU (Mutual-Taught, arXiv 2506.06292): the reward model gets *more accurate* and the policy
//! *better in truth*, iteration after iteration, starting from a deliberately biased reward model.
//!
//! The task: copy 3-6 digits (`copy: 4 0 7\n` → `4 0 7`). Answers may trail filler words
//! (`4 0 7 ok ok`), which the true reward punishes (verbosity), and the policy's SFT data
//! trails 0-3 of them uniformly, so its samples vary in verbosity as well as in correctness.
//! The base reward model is fitted to right-over-near-miss pairs in which the right answer is
//! never the terser one, plus a share of pairs that prefer *more* filler outright: it learns
//! correctness and, spuriously, verbosity (the length bias of real reward models). Mutual-Taught
//! should then (E-step) teach the policy short right answers, because its pair rule takes the
//! *shortest* response above the mean, and (M-step) teach the reward model that the new, terser
//! policy beats the old one.
//!
//! [`run_demo`] trains the warm-up policy and the base reward model, runs the recipe and
//! measures every iteration; `examples/mutual_taught_verbosity.rs` prints it and
//! `tests/mutual_taught_demo.rs` checks it.

use qforge_util::WithPath;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use qforge_engine::{Engine, SamplingParams};
use qforge_model::RewardModel;
use qforge_model::{ChatOptions, Checkpoint};
use qforge_train::copy_task::{copy_preferences, copy_sft};
use qforge_train::trainer::{Objective, TrainConfig, Trainer};
use qforge_util::SplitMix;
use qforge_util::write_jsonl_atomic;
use serde_json::{Value, json};

use crate::error::Result;
use crate::mutual_taught::{MutualTaughtConfig, run};

/// The filler word; each one trailing an answer costs [`FILLER_PENALTY`].
pub const FILLER: &str = "ok";
pub const FILLER_PENALTY: f64 = 0.2;

fn filler(n: usize) -> String {
    format!(" {FILLER}").repeat(n)
}

/// Splits an answer into its digit words and the number of trailing filler words.
fn parse(response: &str) -> (Vec<&str>, usize) {
    // The Qwen3 template has the model open with an empty think block.
    let response = qforge_train::answers::after_thinking(response).unwrap_or(response);
    let mut words: Vec<&str> = response.split_whitespace().collect();
    let mut fillers = 0;
    while words.last() == Some(&FILLER) {
        words.pop();
        fillers += 1;
    }
    (words, fillers)
}

/// The true reward: the fraction of gold digits reproduced at their position, minus 0.25 per
/// extra or missing digit (floored at 0), minus [`FILLER_PENALTY`] per trailing filler word.
pub fn true_reward(response: &str, gold: &str) -> f64 {
    let (words, fillers) = parse(response);
    let gold: Vec<&str> = gold.split_whitespace().collect();
    let hits = words.iter().zip(&gold).filter(|(a, b)| a == b).count() as f64;
    let copy = (hits / gold.len() as f64 - 0.25 * words.len().abs_diff(gold.len()) as f64).max(0.0);
    copy - FILLER_PENALTY * fillers as f64
}

fn user(prompt: &str) -> Vec<Value> {
    vec![json!({"role": "user", "content": prompt})]
}

/// Chat SFT rows: copies trailing 0-3 filler words uniformly, every other one with a digit
/// replaced by `x` (so the warm-up policy makes mistakes a tiny reward model can see).
pub fn sft_rows(n: usize, seed: u64) -> Vec<Value> {
    copy_preferences(n, seed)
        .into_iter()
        .enumerate()
        .map(|(i, r)| {
            let copy = if i % 2 == 0 {
                &r["chosen"]
            } else {
                &r["rejected"]
            };
            let answer = format!("{}{}", copy.as_str().unwrap_or(""), filler(i / 2 % 4));
            json!({"messages": [{"role": "user", "content": r["prompt"]},
                                {"role": "assistant", "content": answer}]})
        })
        .collect()
}

/// The biased base reward model's pairs: one in `verbose_every` prefers more filler on a right
/// answer outright; the others prefer a right answer over one with an `x` for a digit, each
/// trailing independent filler.
pub fn biased_rm_rows(n: usize, seed: u64, verbose_every: usize) -> Vec<Value> {
    let mut rng = SplitMix(seed ^ 0x5eed);
    copy_preferences(n, seed)
        .into_iter()
        .enumerate()
        .map(|(i, r)| {
            let right = r["chosen"].as_str().unwrap_or("").to_string();
            let (chosen, rejected) = if i % verbose_every == 0 {
                let fewer = rng.below(3);
                let more = fewer + 1 + rng.below(3 - fewer);
                (right.clone() + &filler(more), right + &filler(fewer))
            } else {
                (
                    right + &filler(rng.below(4)),
                    r["rejected"].as_str().unwrap_or("").to_string() + &filler(rng.below(4)),
                )
            };
            json!({"prompt": user(r["prompt"].as_str().unwrap_or("")),
                   "chosen": [{"role": "assistant", "content": chosen}],
                   "rejected": [{"role": "assistant", "content": rejected}]})
        })
        .collect()
}

/// A held-out pair with its true order.
#[derive(Debug, Clone)]
pub struct JudgedPair {
    pub prompt: String,
    pub better: String,
    pub worse: String,
    /// Both answers right, differing only in filler (the bias); otherwise a right answer and one
    /// with an `x` for a digit, with independent filler.
    pub verbosity_only: bool,
}

/// Held-out pairs for the reward model's accuracy, half verbosity-only, ordered by
/// [`true_reward`] (pairs it ties are skipped).
pub fn held_out_pairs(n: usize, seed: u64) -> Vec<JudgedPair> {
    let mut rng = SplitMix(seed ^ 0xacc);
    copy_preferences(n, seed)
        .into_iter()
        .enumerate()
        .filter_map(|(i, r)| {
            let prompt = r["prompt"].as_str()?.to_string();
            let right = r["chosen"].as_str()?;
            let gold = right;
            let verbosity_only = i % 2 == 0;
            let (a, b) = (rng.below(4), rng.below(4));
            let first = right.to_string() + &filler(a);
            let second = if verbosity_only {
                right
            } else {
                r["rejected"].as_str()?
            }
            .to_string()
                + &filler(b);
            let (ra, rb) = (true_reward(&first, gold), true_reward(&second, gold));
            if (ra - rb).abs() < 1e-9 {
                return None;
            }
            let (better, worse) = if ra > rb {
                (first, second)
            } else {
                (second, first)
            };
            Some(JudgedPair {
                prompt,
                better,
                worse,
                verbosity_only,
            })
        })
        .collect()
}

/// Samples `samples` responses per prompt (chat template, end-of-turn stop), seeded per prompt.
pub fn sample(
    policy: &Path,
    prompts: &[String],
    samples: usize,
    temperature: f32,
    seed: u64,
) -> Result<Vec<Vec<String>>> {
    let engine = Engine::from_checkpoint(Checkpoint::load_dir(policy, DType::F32, &Device::Cpu)?);
    let tok = engine.tokenizer().clone();
    let mut requests = Vec::new();
    for (i, p) in prompts.iter().enumerate() {
        let ids = tok.encode(
            &tok.apply_chat_template(&user(p), &ChatOptions::generation())?,
            false,
        )?;
        for k in 0..samples {
            let mut r = engine.request(ids.clone(), 24);
            r.sampling = SamplingParams {
                temperature,
                seed: Some(seed ^ ((i as u64) << 8) ^ k as u64),
                ..SamplingParams::default()
            };
            requests.push(r);
        }
    }
    let texts: Vec<String> = engine
        .generate(requests, |_| {})?
        .into_iter()
        .map(|o| o.text.trim().to_string())
        .collect();
    Ok(texts.chunks(samples).map(<[String]>::to_vec).collect())
}

/// (accuracy on all pairs, on the verbosity-only pairs, on the correctness pairs).
pub fn reward_model_accuracy(rm: &Path, pairs: &[JudgedPair]) -> Result<(f64, f64, f64)> {
    let rm = RewardModel::load(rm, DType::F32, &Device::Cpu)?;
    let conv = |p: &str, r: &str| {
        vec![
            json!({"role": "user", "content": p}),
            json!({"role": "assistant", "content": r}),
        ]
    };
    let convs: Vec<Vec<Value>> = pairs
        .iter()
        .flat_map(|p| [conv(&p.prompt, &p.better), conv(&p.prompt, &p.worse)])
        .collect();
    let scores = rm.score_conversations(&convs, 32)?;
    let right: Vec<(bool, bool)> = pairs
        .iter()
        .zip(scores.chunks(2))
        .map(|(p, s)| (p.verbosity_only, s[0] > s[1]))
        .collect();
    let rate = |keep: &dyn Fn(bool) -> bool| {
        let kept: Vec<bool> = right
            .iter()
            .filter(|(v, _)| keep(*v))
            .map(|(_, r)| *r)
            .collect();
        kept.iter().filter(|r| **r).count() as f64 / kept.len().max(1) as f64
    };
    Ok((rate(&|_| true), rate(&|v| v), rate(&|v| !v)))
}

/// Sizes and learning rates of one demonstration.
#[derive(Debug, Clone)]
pub struct DemoSettings {
    pub output_dir: PathBuf,
    /// The tiny checkpoint every model starts from.
    pub model: PathBuf,
    pub sft_steps: u64,
    pub rm_steps: u64,
    pub dpo_steps: u64,
    pub dpo_lr: f64,
    pub rm_lr: f64,
    /// One base-RM pair in this many prefers more filler outright.
    pub verbose_every: usize,
    /// Prompts per E-step split and in checkpoint selection.
    pub prompts: usize,
    /// Prompts of the M-step.
    pub rm_prompts: usize,
    pub temperature: f32,
    pub seed: u64,
    /// Also run iterative DPO with the base reward model fixed (no M-step), from the same start.
    pub fixed_rm_baseline: bool,
}

/// One row of the demonstration: where a policy and reward model stand.
#[derive(Debug, Clone)]
pub struct DemoRow {
    pub label: String,
    /// Mean true reward of the policy's samples on held-out prompts.
    pub true_reward: f64,
    /// Win rate of those samples against the warm-up policy's (same prompts, ties half).
    pub win_rate_vs_start: f64,
    pub rm_accuracy: f64,
    pub rm_accuracy_verbosity: f64,
    pub rm_accuracy_correctness: f64,
    /// Mean trailing filler words per sample.
    pub filler_mean: f64,
}

/// Trains the warm-up policy and the biased base RM, runs two Mutual-Taught iterations (and,
/// if asked, the fixed-RM baseline), and measures the start and each iteration on held-out
/// prompts and pairs. Returns the rows of Mutual-Taught, then those of the baseline.
pub fn run_demo(
    s: &DemoSettings,
    mut progress: impl FnMut(&str),
) -> Result<(Vec<DemoRow>, Vec<DemoRow>)> {
    let d = &s.output_dir;
    let write = |path: PathBuf, rows: &[Value]| write_jsonl_atomic(&path, rows);
    std::fs::create_dir_all(d).with_path(d)?;
    let train = |data: &str, out: &str, model: &Path, steps: u64, lr: f64, obj: Objective| {
        let mut t = Trainer::new(
            TrainConfig {
                model: model.to_path_buf(),
                data: d.join(data),
                output_dir: d.join(format!("{out}-run")),
                max_length: 96,
                batch_size: 16,
                lr,
                schedule: "constant".into(),
                max_steps: Some(steps),
                seed: s.seed,
                ..TrainConfig::default()
            },
            obj,
        )?;
        t.train(|_| {}, |_| {})?;
        t.save_model(&d.join(out))?;
        Ok::<_, crate::PrefError>(d.join(out))
    };
    write(d.join("sft.jsonl"), &sft_rows(1024, s.seed))?;
    progress("warm-up SFT");
    let policy0 = train(
        "sft.jsonl",
        "policy0",
        &s.model,
        s.sft_steps,
        3e-3,
        Objective::Sft,
    )?;
    write(
        d.join("rm.jsonl"),
        &biased_rm_rows(1024, s.seed + 1, s.verbose_every),
    )?;
    progress("base reward model");
    let rm0 = train(
        "rm.jsonl",
        "rm-base",
        &policy0,
        s.rm_steps,
        s.rm_lr,
        Objective::Rm,
    )?;

    let prompt_file = |name: &str, seed: u64| -> Result<PathBuf> {
        let n = if name == "rmp.jsonl" {
            s.rm_prompts
        } else {
            s.prompts
        };
        let rows: Vec<Value> = copy_sft(n, seed)
            .into_iter()
            .map(|r| json!({"prompt": r["prompt"]}))
            .collect();
        write(d.join(name), &rows)?;
        Ok(d.join(name))
    };
    let config = MutualTaughtConfig {
        policy: policy0.clone(),
        reward_model: rm0.clone(),
        policy_prompts: vec![
            prompt_file("p1.jsonl", s.seed + 11)?,
            prompt_file("p2.jsonl", s.seed + 12)?,
        ],
        rm_prompts: prompt_file("rmp.jsonl", s.seed + 13)?,
        selection_prompts: prompt_file("sel.jsonl", s.seed + 14)?,
        output_dir: d.join("mt"),
        iterations: 2,
        samples: 5,
        temperature: s.temperature,
        max_new_tokens: 24,
        win_rate_threshold: 0.0,
        seed: s.seed,
        dpo: TrainConfig {
            max_steps: Some(s.dpo_steps),
            save_steps: (s.dpo_steps / 3).max(1),
            batch_size: 8,
            lr: s.dpo_lr,
            beta: 0.1,
            max_length: 96,
            schedule: "constant".into(),
            ..TrainConfig::default()
        },
        rm: TrainConfig {
            max_steps: Some(s.rm_steps),
            batch_size: 16,
            lr: s.rm_lr,
            max_length: 96,
            schedule: "constant".into(),
            ..TrainConfig::default()
        },
        ..MutualTaughtConfig::default()
    };

    let held: Vec<(String, String)> = copy_sft(64, s.seed + 77)
        .into_iter()
        .map(|r| {
            (
                r["prompt"].as_str().unwrap_or("").into(),
                r["completion"].as_str().unwrap_or("").into(),
            )
        })
        .collect();
    let prompts: Vec<String> = held.iter().map(|(p, _)| p.clone()).collect();
    let pairs = held_out_pairs(512, s.seed + 78);
    let rewards_of = |policy: &Path| -> Result<(Vec<f64>, f64)> {
        let samples = sample(policy, &prompts, 4, 1.0, s.seed + 99)?;
        let (mut rewards, mut fillers) = (Vec::new(), 0usize);
        for (group, (_, gold)) in samples.iter().zip(&held) {
            for r in group {
                rewards.push(true_reward(r, gold));
                fillers += parse(r).1;
            }
        }
        let n = rewards.len() as f64;
        Ok((rewards, fillers as f64 / n))
    };
    let (start_rewards, start_filler) = rewards_of(&policy0)?;
    let row = |label: String, policy: &Path, rm: &Path| -> Result<DemoRow> {
        let (rewards, filler_mean) = if policy == policy0 {
            (start_rewards.clone(), start_filler)
        } else {
            rewards_of(policy)?
        };
        let wins: f64 = rewards
            .iter()
            .zip(&start_rewards)
            .map(|(a, b)| {
                if (a - b).abs() < 1e-9 {
                    0.5
                } else if a > b {
                    1.0
                } else {
                    0.0
                }
            })
            .sum();
        let (acc, acc_v, acc_c) = reward_model_accuracy(rm, &pairs)?;
        Ok(DemoRow {
            label,
            true_reward: rewards.iter().sum::<f64>() / rewards.len() as f64,
            win_rate_vs_start: wins / rewards.len() as f64,
            rm_accuracy: acc,
            rm_accuracy_verbosity: acc_v,
            rm_accuracy_correctness: acc_c,
            filler_mean,
        })
    };
    let start = row("start".into(), &policy0, &rm0)?;
    let mut runs = Vec::new();
    for (name, update_reward_model) in [("mt", true), ("fixed-rm", false)] {
        if !update_reward_model && !s.fixed_rm_baseline {
            runs.push(Vec::new());
            continue;
        }
        let config = MutualTaughtConfig {
            output_dir: d.join(name),
            update_reward_model,
            ..config.clone()
        };
        let mut rows = vec![start.clone()];
        for result in run(&config, |t, stage| {
            progress(&format!("{name} iteration {t}: {stage}"))
        })? {
            let rm = result
                .reward_model_out
                .clone()
                .unwrap_or(result.reward_model_in.clone());
            rows.push(row(
                format!("iteration {}", result.iteration),
                &result.policy_out,
                &rm,
            )?);
        }
        runs.push(rows);
    }
    let fixed = runs.pop().unwrap_or_default();
    Ok((runs.pop().unwrap_or_default(), fixed))
}

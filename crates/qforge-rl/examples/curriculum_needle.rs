//! QwenLong-L1's phased curriculum with retrospective sampling against direct training, at equal
//! RL steps, on a synthetic needle-in-a-haystack task (QwenLong-L1, arXiv 2505.17667):
//!
//!     cargo run --release -p qforge-rl --example curriculum_needle [-- STEPS_PER_PHASE [SFT_STEPS [SEED]]]
//!
//! A tiny random Qwen3 (0.8M parameters) is warmed up with SFT on short haystacks (4 or 8
//! one-letter filler words around a 3-digit needle, `q 417 x c ?` → `417`). From that
//! checkpoint, (a) the curriculum trains GRPO in four phases whose input caps admit haystacks of
//! up to 8, 16, 24 and 32 words, later phases mixing in the hard prompts of earlier ones; (b)
//! direct training runs the same four phases' steps with every prompt at the longest cap from
//! the start and no retrospective sampling. Both use the same task pool (4 to 32 words), reward
//! (exact match), seeds and settings. After each phase the policy is scored greedily on held-out
//! 32-word haystacks (the longest phase) and 8-word ones. Writes
//! `runs/curriculum_needle/{curves.png,results.json}`.

use qforge_train::plot;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use qforge_model::ChatOptions;
use qforge_rl::curriculum::{Phase, RetrospectiveConfig};
use qforge_rl::grpo::{GroupFilter, GrpoConfig};
use qforge_rl::qwenlong_l1::{QwenLongL1Config, run};
use qforge_rl::reward::{ExactMatch, Extraction, RewardFn, Task};
use qforge_rl::tasks::{greedy_score, needle_compact};
use qforge_train::trainer::{Objective, TrainConfig, Trainer};
use qforge_util::write_jsonl_atomic;
use serde_json::json;

/// Greedy exact match of `dir`'s policy on `tasks`.
fn accuracy(dir: &Path, tasks: &[Task]) -> f64 {
    greedy_score(dir, tasks, &ExactMatch(Extraction::Whole), 12).unwrap()
}

fn main() {
    let arg = |i: usize, default: u64| {
        std::env::args()
            .nth(i)
            .map_or(default, |s| s.parse().expect("a number"))
    };
    let (steps, sft_steps, seed) = (arg(1, 40), arg(2, 600), arg(3, 1));
    // Haystack sizes in units of 4 filler words.
    let make = |n: usize, size: usize, seed: u64| needle_compact(n, size * 4, seed);
    let out = PathBuf::from("runs/curriculum_needle");
    std::fs::create_dir_all(&out).unwrap();

    // Warm-up SFT on short contexts: the format and short retrieval.
    let warm = out.join("warmup");
    if !warm.join("config.json").is_file() {
        let rows: Vec<_> = (1..=2)
            .flat_map(|p| make(4096, p, seed ^ (100 + p as u64)))
            .map(|t| t.sft_row())
            .collect();
        write_jsonl_atomic(&out.join("sft.jsonl"), &rows).unwrap();
        let mut t = Trainer::new(
            TrainConfig {
                model: qforge_testkit::retrieval_model(&out.join("base"), seed),
                data: out.join("sft.jsonl"),
                output_dir: out.join("sft"),
                max_length: 128,
                batch_size: 32,
                lr: 3e-4,
                schedule: "constant".into(),
                max_steps: Some(sft_steps),
                seed,
                ..TrainConfig::default()
            },
            Objective::Sft,
        )
        .unwrap();
        t.train(|_| {}, |_| {}).unwrap();
        t.save_model(&warm).unwrap();
    }

    // The pool: 4 to 32 words, 256 tasks each; caps from the templated prompt lengths.
    let pool: Vec<Task> = (1..=8)
        .flat_map(|p| make(256, p, seed ^ (200 + p as u64)))
        .collect();
    let tok = qforge_model::Tokenizer::from_dir(&warm).unwrap();
    let len = |t: &Task| {
        let text = tok
            .apply_chat_template(&t.messages, &ChatOptions::generation())
            .unwrap();
        tok.encode(&text, false).unwrap().len()
    };
    let cap = |size: usize| pool[..256 * size].iter().map(len).max().unwrap();
    let long = make(256, 8, seed ^ 999);
    let short = make(256, 2, seed ^ 998);

    let grpo = GrpoConfig {
        group_size: 8,
        prompts_per_step: 16,
        max_new_tokens: 12,
        temperature: 1.0,
        lr: 1e-4,
        filter: GroupFilter::Dapo,
        max_rounds: 3,
        seed,
        ..GrpoConfig::default()
    };
    let arms = [
        ("curriculum", [2, 4, 6, 8].map(cap), 0.2),
        ("direct", [8, 8, 8, 8].map(cap), 0.0),
    ];
    let reward: Arc<dyn RewardFn> = Arc::new(ExactMatch(Extraction::Whole));
    let warm_scores = (accuracy(&warm, &long), accuracy(&warm, &short));
    println!(
        "warm-up: 32-word {:.3}, 8-word {:.3}",
        warm_scores.0, warm_scores.1
    );
    let mut results = serde_json::Map::new();
    let mut series = Vec::new();
    for (name, caps, mix_ratio) in arms {
        let cfg = QwenLongL1Config {
            model: warm.clone(),
            output_dir: out.join(name),
            sft_data: None,
            phases: caps
                .iter()
                .map(|&c| Phase {
                    max_input_tokens: c,
                    steps,
                })
                .collect(),
            retrospective: RetrospectiveConfig {
                mix_ratio,
                ..RetrospectiveConfig::default()
            },
            grpo: grpo.clone(),
            ..QwenLongL1Config::default()
        };
        let started = std::time::Instant::now();
        let phases = run(&cfg, &pool, reward.clone(), |_, _| {}).unwrap();
        let mut curve = vec![(0.0, warm_scores.0)];
        let mut rows = vec![json!({"steps": 0, "long": warm_scores.0, "short": warm_scores.1})];
        for p in &phases {
            let (l, s) = (accuracy(&p.policy, &long), accuracy(&p.policy, &short));
            let at = (p.phase as u64 * steps) as f64;
            println!(
                "{name:>10} phase {} (cap {:>3} tokens, {} tasks + {} retrospective): 32-word {l:.3}, 8-word {s:.3}",
                p.phase, p.max_input_tokens, p.tasks, p.retrospective_tasks
            );
            curve.push((at, l));
            rows.push(json!({"steps": at, "cap": p.max_input_tokens, "long": l, "short": s}));
        }
        println!("{name:>10}: {:.0} s", started.elapsed().as_secs_f64());
        results.insert(name.into(), json!(rows));
        series.push((name, curve));
    }
    let series: Vec<plot::Series> = series
        .into_iter()
        .map(|(name, points)| plot::Series { name, points })
        .collect();
    plot::line_chart(
        &out.join("curves.png"),
        "held-out 32-word haystack accuracy (greedy exact match)",
        "GRPO steps",
        &series,
    )
    .unwrap();
    std::fs::write(
        out.join("results.json"),
        serde_json::to_string_pretty(&results).unwrap(),
    )
    .unwrap();
    println!("wrote {}", out.join("curves.png").display());
}

//! Writing-RL on a length-following task: a tiny random Qwen3 is asked to "Write about TOPIC in
//! N words." and the rubric judge ([`RubricJudge`]: LongBench-Write's length score, distinct
//! bigrams) compares its response with a ladder of references of rising quality. Prints the
//! held-out win rate against a fixed reference and the mean length score before and after, and
//! each step's win rate, ladder rung and value loss.
//!
//!     cargo run --release -p qforge-rl --example writing_rl_length [-- STEPS [SEED [ppo|grpo [TOKENS]]]]
//!
//! With 100 steps (AMD EPYC, 2 cores, about 30 s a seed), seeds 301–304 moved the held-out win
//! rate against the 4-word reference from 0.59–0.69 to 0.97–1.00 and the length score from
//! 46–50 to 88–93; the test `ppo_raises_the_held_out_win_rate_…` asserts this on seeds 4–6.

use qforge_rl::writing_rl::data::{TOPICS, length_following_prompts};
use qforge_rl::writing_rl::{Algorithm, WritingRlConfig, WritingRlTrainer, trainer::judge_for};

/// Reference lengths (words) for a 10-word target: the top rung is good but beatable.
const LADDER: [usize; 4] = [2, 4, 6, 8];

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let steps: u64 = args.get(1).map_or(40, |s| s.parse().unwrap());
    let seed: u64 = args.get(2).map_or(1, |s| s.parse().unwrap());
    let algorithm = match args.get(3).map(String::as_str) {
        Some("grpo") => Algorithm::Grpo,
        _ => Algorithm::Ppo,
    };
    let tokens: usize = args.get(4).map_or(24, |s| s.parse().unwrap());
    let dir = tempfile::tempdir().unwrap();
    let mut config = WritingRlConfig {
        model: qforge_testkit::tiny_model(),
        output_dir: dir.path().join("run"),
        max_steps: steps,
        save_steps: 0,
        seed,
        ..WritingRlConfig::default()
    };
    config.prompts = dir.path().join("unused.jsonl");
    config.grpo.prompts_per_step = 16;
    config.grpo.group_size = 4;
    config.grpo.max_new_tokens = tokens;
    config.grpo.lr = 1e-3;
    config.grpo.lr_warmup_ratio = 0.0;
    config.grpo.mini_batches = 1;
    config.critic.lr = 1e-3;
    config.critic.lr_warmup_ratio = 0.0;
    config.writing_rl.algorithm = algorithm;
    config.writing_rl.select = false;
    let train = length_following_prompts(&TOPICS[..16], 10, &LADDER);
    let held = length_following_prompts(&TOPICS[16..], 10, &LADDER);
    let judge = judge_for(&config.judge).unwrap();
    let mut t = WritingRlTrainer::new(config, train, judge).unwrap();
    let before = t.evaluate(&held, 8, 1).unwrap();
    let started = std::time::Instant::now();
    let reports = t
        .train(|r| {
            eprintln!(
                "step {:>3}: reward {:.3} win {:.2} tie {:.2} rung {:.2} top {:.2} value loss {:.4} tokens {:.1}",
                r.step,
                r.reward_mean,
                r.win_rate,
                r.tie_rate,
                r.ladder_rung_mean,
                r.ladder_top_fraction,
                r.value_loss,
                r.response_tokens_mean
            )
        })
        .unwrap();
    let after = t.evaluate(&held, 8, 1).unwrap();
    let n = reports.len().min(10);
    let first: f64 = reports[..n].iter().map(|r| r.value_loss).sum::<f64>() / n as f64;
    let last: f64 = reports[reports.len() - n..]
        .iter()
        .map(|r| r.value_loss)
        .sum::<f64>()
        / n as f64;
    println!(
        "seed {seed} {algorithm:?}: held-out win rate vs rung 1 {:.3} -> {:.3}, length score {:.1} -> {:.1}, \
         final mean rung {:.2}, value loss first/last {n} steps {first:.4} -> {last:.4} ({:.0} s)",
        before.win_rate,
        after.win_rate,
        before.length_score_mean,
        after.length_score_mean,
        reports.last().unwrap().ladder_rung_mean,
        started.elapsed().as_secs_f64()
    );
}

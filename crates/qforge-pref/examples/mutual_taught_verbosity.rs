//! Mutual-Taught on the verbose-copy task (`qforge_pref::verbose_copy`): a policy whose answers
//! trail filler words, a base reward model that (spuriously) likes them, two iterations.
//!
//!     cargo run --release -p qforge-pref --example mutual_taught_verbosity [-- SEED]
//!
//! Prints, for the start and after each iteration: the policy's mean true reward and win rate
//! against the warm-up policy (4 samples on each of 64 held-out prompts, temperature 1), its
//! mean filler words, and the reward model's accuracy on 512 held-out pairs (all, the
//! verbosity-only half, the correctness half).
//! The same is printed for iterative DPO scored by the fixed base reward model, from the same
//! start (the paper's "w/o RM update" ablation). Knobs: `SFT`, `RM`, `DPO` (steps),
//! `DPO_LR`, `RM_LR`, `VERBOSE_EVERY`, `PROMPTS`, `RM_PROMPTS`, `TEMP`. The run is kept in
//! `runs/mutual_taught_verbosity/` for inspection.

use std::path::Path;

use qforge_pref::verbose_copy::{DemoSettings, run_demo};

fn env<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).map_or(default, |v| v.parse().ok().expect(name))
}

fn main() {
    let seed: u64 = std::env::args()
        .nth(1)
        .map_or(1, |s| s.parse().expect("seed"));
    let d = Path::new("runs/mutual_taught_verbosity");
    if d.exists() {
        std::fs::remove_dir_all(d).unwrap();
    }
    let settings = DemoSettings {
        output_dir: d.to_path_buf(),
        model: qforge_testkit::tiny_model(),
        sft_steps: env("SFT", 200),
        rm_steps: env("RM", 120),
        dpo_steps: env("DPO", 30),
        dpo_lr: env("DPO_LR", 1e-4),
        rm_lr: env("RM_LR", 1e-3),
        verbose_every: env("VERBOSE_EVERY", 6),
        prompts: env("PROMPTS", 96),
        rm_prompts: env("RM_PROMPTS", 288),
        temperature: env("TEMP", 1.0),
        seed,
        fixed_rm_baseline: true,
    };
    let (mutual_taught, fixed_rm) = run_demo(&settings, |s| eprintln!("{s}")).unwrap();
    for (name, rows) in [
        ("Mutual-Taught", mutual_taught),
        ("fixed reward model (no M-step)", fixed_rm),
    ] {
        println!("{name}");
        println!(
            "{:<12} {:>11} {:>10} {:>7} {:>8} {:>10} {:>12}",
            "", "true reward", "win vs π0", "filler", "RM acc", "verbosity", "correctness"
        );
        for r in rows {
            println!(
                "{:<12} {:>11.3} {:>10.3} {:>7.2} {:>8.3} {:>10.3} {:>12.3}",
                r.label,
                r.true_reward,
                r.win_rate_vs_start,
                r.filler_mean,
                r.rm_accuracy,
                r.rm_accuracy_verbosity,
                r.rm_accuracy_correctness
            );
        }
    }
}

//! Mutual-Taught's claim on a synthetic task (`qforge_pref::verbose_copy`), from a deliberately
//! biased reward model (it likes trailing filler words, which the true reward punishes): over
//! two iterations the reward model's held-out accuracy and the policy's true-reward win rate
//! against its start both rise, and the policy ends better in truth than iterative DPO with the
//! reward model held fixed. The example `mutual_taught_verbosity` reports this over 4 seeds.

use std::path::PathBuf;

use qforge_pref::verbose_copy::{DemoSettings, run_demo};

#[test]
fn the_reward_model_and_the_policy_both_improve_from_a_biased_start() {
    let dir = tempfile::tempdir().unwrap();
    let settings = DemoSettings {
        output_dir: dir.path().to_path_buf(),
        model: PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../tools/fixtures/model/qwen3_tied_gqa"),
        sft_steps: 200,
        rm_steps: 120,
        dpo_steps: 30,
        dpo_lr: 2e-4,
        rm_lr: 1e-3,
        verbose_every: 6,
        prompts: 96,
        rm_prompts: 288,
        temperature: 1.0,
        seed: 1,
        fixed_rm_baseline: true,
    };
    let (mutual, fixed) = run_demo(&settings, |_| {}).unwrap();
    for r in mutual.iter().chain(&fixed) {
        eprintln!("{r:?}");
    }
    let (start, last) = (&mutual[0], &mutual[2]);
    // The base reward model prefers filler: it orders verbosity-only pairs wrongly.
    assert!(start.rm_accuracy_verbosity < 0.1, "{start:?}");
    for r in &mutual[1..] {
        assert!(r.rm_accuracy > start.rm_accuracy + 0.1, "{r:?}");
        assert!(r.win_rate_vs_start > 0.55, "{r:?}");
        assert!(r.true_reward > start.true_reward, "{r:?}");
    }
    assert!(last.rm_accuracy >= mutual[1].rm_accuracy, "{mutual:?}");
    assert!(last.filler_mean < start.filler_mean, "{last:?}");
    // Scored by the biased reward model throughout, iterative DPO falls back.
    assert!(last.true_reward > fixed[2].true_reward + 0.1, "{fixed:?}");
}

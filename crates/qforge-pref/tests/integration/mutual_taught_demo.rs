//! Mutual-Taught's claim on a synthetic task (`qforge_pref::verbose_copy`), from a deliberately
//! biased reward model (it likes trailing filler words, which the true reward punishes): over
//! two iterations the reward model's held-out accuracy and the policy's true-reward win rate
//! against its start both rise, and the policy ends better in truth than iterative DPO with the
//! reward model held fixed. The example `mutual_taught_verbosity` reports this over 4 seeds.

use qforge_pref::verbose_copy::{DemoSettings, run_demo};

#[test]
fn the_reward_model_and_the_policy_both_improve_from_a_biased_start() {
    let dir = tempfile::tempdir().unwrap();
    let settings = DemoSettings {
        output_dir: dir.path().to_path_buf(),
        model: qforge_testkit::tiny_model(),
        sft_steps: 200,
        rm_steps: 120,
        dpo_steps: 30,
        dpo_lr: 1e-4,
        rm_lr: 1e-3,
        verbose_every: 6,
        prompts: 96,
        rm_prompts: 288,
        temperature: 1.0,
        seed: 3,
        fixed_rm_baseline: true,
    };
    let (mutual, fixed) = run_demo(&settings, |_| {}).unwrap();
    for r in mutual.iter().chain(&fixed) {
        eprintln!("{r:?}");
    }
    let start = &mutual[0];
    // The base reward model prefers filler: it orders verbosity-only pairs wrongly.
    assert!(start.rm_accuracy_verbosity < 0.1, "{start:?}");
    // Each iteration raises both the reward model's held-out accuracy and the policy's true
    // reward, and the policy beats its start.
    for pair in mutual.windows(2) {
        let (before, after) = (&pair[0], &pair[1]);
        assert!(
            after.rm_accuracy > before.rm_accuracy + 0.02,
            "{before:?} -> {after:?}"
        );
        assert!(
            after.true_reward > before.true_reward + 0.02,
            "{before:?} -> {after:?}"
        );
        assert!(after.win_rate_vs_start > 0.55, "{after:?}");
    }
    assert!(mutual[2].filler_mean < start.filler_mean, "{mutual:?}");
    // Scored by the biased reward model throughout, iterative DPO gains less.
    assert!(
        mutual[2].true_reward > fixed[2].true_reward + 0.05,
        "{fixed:?}"
    );
}

//! Bad rewards never corrupt a run: a non-finite reward skips the step (reported, weights
//! untouched) and later steps train; the overlong penalty shapes rewards as DAPO's.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use qforge_rl::grpo::{GrpoConfig, GrpoTrainer};
use qforge_rl::reward::{RewardFn, Task};
use qforge_rl::tasks::kv_retrieval;

fn fixture() -> PathBuf {
    qforge_testkit::tiny_model()
}

/// NaN for every response of the first step, then 0 and 1 alternately (every group of two
/// has spread).
struct NanFirst(AtomicUsize);

impl RewardFn for NanFirst {
    fn score(&self, _t: &Task, _response: &str) -> f64 {
        match self.0.fetch_add(1, Ordering::Relaxed) {
            n if n < 4 => f64::NAN,
            n => (n % 2) as f64,
        }
    }
}

fn config(dir: &std::path::Path) -> GrpoConfig {
    GrpoConfig {
        model: fixture(),
        output_dir: dir.to_path_buf(),
        group_size: 2,
        prompts_per_step: 2,
        max_new_tokens: 6,
        lr: 1e-2,
        max_steps: 2,
        ..GrpoConfig::default()
    }
}

#[test]
fn a_non_finite_reward_skips_the_step_and_the_run_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let mut t = GrpoTrainer::new(
        config(dir.path()),
        kv_retrieval(4, 2, 1, 1),
        Arc::new(NanFirst(AtomicUsize::new(0))),
    )
    .unwrap();
    let weight = |t: &GrpoTrainer| {
        t.model().named_tensors()[1]
            .1
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
    };
    let before = weight(&t);
    let first = t.step().unwrap();
    assert!(first.skipped && first.reward_mean.is_nan());
    assert_eq!(
        weight(&t),
        before,
        "a skipped step leaves the weights alone"
    );
    let second = t.step().unwrap();
    assert!(!second.skipped && second.loss.is_finite(), "{second:?}");
    assert!(second.entropy.is_finite() && second.entropy > 0.0);
    assert_ne!(weight(&t), before);
}

struct Zero;

impl RewardFn for Zero {
    fn score(&self, _t: &Task, _r: &str) -> f64 {
        0.0
    }
}

#[test]
fn the_overlong_penalty_is_added_to_rewards() {
    let dir = tempfile::tempdir().unwrap();
    // Every token past max_new_tokens − buffer = 0 costs factor / buffer.
    let cfg = GrpoConfig {
        overlong_buffer: 6,
        overlong_factor: 1.0,
        ..config(dir.path())
    };
    let mut t = GrpoTrainer::new(cfg, kv_retrieval(4, 2, 1, 1), Arc::new(Zero)).unwrap();
    let r = t.step().unwrap();
    let expected = -(r.response_tokens_mean / 6.0);
    assert!(
        (r.reward_mean - expected).abs() < 1e-9,
        "{} vs {expected}",
        r.reward_mean
    );
}

/// A pure function of the text, so a resumed run sees the same rewards.
struct LengthParity;

impl RewardFn for LengthParity {
    fn score(&self, _t: &Task, response: &str) -> f64 {
        (response.len() % 2) as f64
    }
}

#[test]
fn a_killed_run_resumes_with_the_same_steps() {
    let run = |dir: &std::path::Path, max_steps: u64| {
        let cfg = GrpoConfig {
            max_steps,
            group_size: 4,
            ..config(dir)
        };
        GrpoTrainer::new(cfg, kv_retrieval(6, 2, 1, 1), Arc::new(LengthParity))
            .unwrap()
            .train(|_| {})
            .unwrap()
    };
    let whole = tempfile::tempdir().unwrap();
    let straight = run(whole.path(), 4);
    let split = tempfile::tempdir().unwrap();
    let first = run(split.path(), 2);
    assert!(split.path().join("checkpoint-2/grpo_state.json").is_file());
    let rest = run(split.path(), 4);
    assert_eq!(
        rest.first().map(|r| r.step),
        Some(3),
        "resumed after step 2"
    );
    let key = |r: &qforge_rl::grpo::GrpoStepReport| {
        (
            r.step,
            r.reward_mean.to_bits(),
            r.loss.to_bits(),
            r.rollout_tokens,
        )
    };
    let resumed: Vec<_> = first.iter().chain(&rest).map(key).collect();
    let uninterrupted: Vec<_> = straight.iter().map(key).collect();
    assert_eq!(resumed, uninterrupted);
    assert!(straight.iter().any(|r| !r.skipped), "some step trained");
}

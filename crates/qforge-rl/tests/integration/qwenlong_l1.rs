//! The QwenLong-L1 recipe end to end on the tiny model and synthetic retrieval tasks: phases
//! take the tasks that fit their cap, later phases mix in hard earlier tasks, prompts longer
//! than every cap are middle-truncated and counted, and a rerun resumes from finished phases.

use std::sync::Arc;

use qforge_rl::curriculum::{Phase, RetrospectiveConfig};
use qforge_rl::grpo::GrpoConfig;
use qforge_rl::qwenlong_l1::{QwenLongL1Config, run};
use qforge_rl::reward::{Extraction, SubEm};
use qforge_rl::tasks::kv_retrieval;

#[test]
fn phases_retrospective_sampling_truncation_and_resume() {
    let dir = tempfile::tempdir().unwrap();
    let model = qforge_testkit::tiny_model();
    // Three haystack sizes: short, medium, and longer than every cap.
    let mut tasks = kv_retrieval(6, 2, 1, 1);
    tasks.extend(kv_retrieval(6, 8, 1, 2));
    tasks.extend(kv_retrieval(2, 30, 1, 3));
    let config = QwenLongL1Config {
        model,
        output_dir: dir.path().join("run"),
        phases: vec![
            Phase {
                max_input_tokens: 260,
                steps: 2,
            },
            Phase {
                max_input_tokens: 480,
                steps: 2,
            },
        ],
        retrospective: RetrospectiveConfig {
            threshold: 0.5,
            top_q: None,
            mix_ratio: 0.5,
        },
        grpo: GrpoConfig {
            group_size: 4,
            prompts_per_step: 4,
            max_new_tokens: 6,
            temperature: 1.0,
            lr: 1e-4,
            ..GrpoConfig::default()
        },
        ..QwenLongL1Config::default()
    };
    let reward = Arc::new(SubEm(Extraction::Whole));
    let mut steps = Vec::new();
    let results = run(&config, &tasks, reward.clone(), |phase, r| {
        steps.push((phase, r.step))
    })
    .unwrap();
    assert_eq!(results.len(), 2);
    assert_eq!(steps, vec![(1, 1), (1, 2), (2, 1), (2, 2)]);
    let (p1, p2) = (&results[0], &results[1]);
    assert!(p1.tasks > 0 && p1.retrospective_tasks == 0);
    // The random model solves nothing: every phase-1 task is hard and may come back.
    assert!(p2.retrospective_tasks > 0, "{p2:?}");
    assert!(
        p2.truncated_prompts > 0,
        "the 30-fact haystacks exceed every cap: {p2:?}"
    );
    for k in 1..=2 {
        let phase = dir.path().join(format!("run/phase-{k}"));
        assert!(phase.join("policy/model.safetensors").is_file());
        assert!(phase.join("difficulty.json").is_file() && phase.join("metrics.jsonl").is_file());
    }
    // Rerun: both phases are read back, nothing trains.
    let mut again = Vec::new();
    let resumed = run(&config, &tasks, reward, |phase, r| {
        again.push((phase, r.step))
    })
    .unwrap();
    assert!(again.is_empty());
    assert_eq!(resumed[1].policy, p2.policy);
}

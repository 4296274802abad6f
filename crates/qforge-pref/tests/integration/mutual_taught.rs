//! Mutual-Taught's loop end to end on tiny models: two iterations write every artifact, the
//! stop rule keeps the old policy, a rerun resumes from what is on disk, and a reward model with
//! another vocabulary is refused.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use qforge_pref::mutual_taught::{MutualTaughtConfig, check_same_tokenizer, run};
use qforge_train::copy_task::copy_preferences;
use qforge_train::trainer::{Objective, TrainConfig, Trainer};
use qforge_util::write_jsonl_atomic;
use serde_json::json;

fn base_model() -> PathBuf {
    qforge_testkit::tiny_model()
}

/// A tiny base reward model: the fixture with a score head fitted for a few steps.
fn base_rm(dir: &Path) -> PathBuf {
    fitted_rm(dir, 2)
}

fn fitted_rm(dir: &Path, steps: u64) -> PathBuf {
    write_jsonl_atomic(&dir.join("rm_seed.jsonl"), &copy_preferences(16, 3)).unwrap();
    let mut t = Trainer::new(
        TrainConfig {
            model: base_model(),
            data: dir.join("rm_seed.jsonl"),
            output_dir: dir.join("rm_seed"),
            max_steps: Some(steps),
            batch_size: 8,
            lr: 1e-3,
            ..TrainConfig::default()
        },
        Objective::Rm,
    )
    .unwrap();
    t.train(|_| {}, |_| {}).unwrap();
    let out = dir.join("base_rm");
    t.save_model(&out).unwrap();
    out
}

fn prompts(path: &Path, n: usize, offset: usize) {
    let rows: Vec<_> = (0..n)
        .map(|i| json!({"prompt": format!("Copy {}", 1000 + offset + i)}))
        .collect();
    write_jsonl_atomic(path, &rows).unwrap();
}

fn config(dir: &Path, rm: PathBuf, iterations: usize, threshold: f64) -> MutualTaughtConfig {
    for (name, offset) in [
        ("p1.jsonl", 0),
        ("p2.jsonl", 50),
        ("rm_p.jsonl", 100),
        ("sel.jsonl", 200),
    ] {
        prompts(&dir.join(name), 4, offset);
    }
    MutualTaughtConfig {
        policy: base_model(),
        reward_model: rm,
        policy_prompts: vec![dir.join("p1.jsonl"), dir.join("p2.jsonl")],
        rm_prompts: dir.join("rm_p.jsonl"),
        selection_prompts: dir.join("sel.jsonl"),
        output_dir: dir.join("mt"),
        iterations,
        samples: 3,
        max_new_tokens: 6,
        win_rate_threshold: threshold,
        dpo: TrainConfig {
            max_steps: Some(4),
            save_steps: 2,
            batch_size: 2,
            lr: 1e-3,
            beta: 0.1,
            ..TrainConfig::default()
        },
        rm: TrainConfig {
            max_steps: Some(2),
            batch_size: 4,
            lr: 1e-3,
            ..TrainConfig::default()
        },
        ..MutualTaughtConfig::default()
    }
}

fn mtime(p: &Path) -> SystemTime {
    std::fs::metadata(p).unwrap().modified().unwrap()
}

#[test]
fn two_iterations_write_every_artifact_and_a_rerun_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let rm = base_rm(dir.path());
    // One iteration first, then ask for two: iteration 1 is read back, not recomputed.
    let first = run(&config(dir.path(), rm.clone(), 1, 0.0), |_, _| {}).unwrap();
    assert_eq!(first.len(), 1);
    let it1 = dir.path().join("mt/iter-1");
    for f in [
        "samples.jsonl",
        "e_step_pairs.jsonl",
        "dpo_pairs.jsonl",
        "selection.json",
        "m_step_pairs.jsonl",
        "rm_pairs.jsonl",
        "done.json",
    ] {
        assert!(it1.join(f).is_file(), "{f}");
    }
    assert!(it1.join("dpo/checkpoint-2").is_dir() && it1.join("dpo/checkpoint-4").is_dir());
    assert!(it1.join("rm/final/model.safetensors").is_file());
    let r1 = &first[0];
    assert!(!r1.stopped && r1.e_step_pairs > 0);
    assert_eq!(r1.m_step_pairs_kept + r1.m_step_pairs_dropped, 4);
    assert_eq!(r1.policy_out, r1.best_checkpoint.clone().unwrap());
    let selection: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(it1.join("selection.json")).unwrap())
            .unwrap();
    assert_eq!(selection["candidates"].as_array().unwrap().len(), 2);

    let stamp = mtime(&it1.join("samples.jsonl"));
    let both = run(&config(dir.path(), rm.clone(), 2, 0.0), |_, _| {}).unwrap();
    assert_eq!(both.len(), 2);
    assert_eq!(
        mtime(&it1.join("samples.jsonl")),
        stamp,
        "iteration 1 was recomputed"
    );
    // Iteration 2 starts from iteration 1's outputs, and refits from the *base* RM.
    assert_eq!(both[1].policy_in, both[0].policy_out);
    assert_eq!(
        both[1].reward_model_in,
        both[0].reward_model_out.clone().unwrap()
    );
    assert!(dir.path().join("mt/iter-2/done.json").is_file());

    // A run killed after sampling resumes there: the samples are kept, selection redone.
    std::fs::remove_file(dir.path().join("mt/iter-2/done.json")).unwrap();
    std::fs::remove_file(dir.path().join("mt/iter-2/selection.json")).unwrap();
    let stamp2 = mtime(&dir.path().join("mt/iter-2/samples.jsonl"));
    let again = run(&config(dir.path(), rm, 2, 0.0), |_, _| {}).unwrap();
    assert_eq!(mtime(&dir.path().join("mt/iter-2/samples.jsonl")), stamp2);
    assert_eq!(again[1].best_win_rate, both[1].best_win_rate);
}

#[test]
fn the_stop_rule_keeps_the_previous_policy() {
    let dir = tempfile::tempdir().unwrap();
    let rm = base_rm(dir.path());
    // No checkpoint can win more than 100% of the time.
    let results = run(&config(dir.path(), rm, 2, 1.01), |_, _| {}).unwrap();
    assert_eq!(results.len(), 1);
    assert!(results[0].stopped);
    assert_eq!(results[0].policy_out, base_model());
    assert!(results[0].reward_model_out.is_none());
    assert!(!dir.path().join("mt/iter-2").exists());
}

#[test]
fn a_reward_model_with_another_vocabulary_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let other = dir.path().join("other");
    std::fs::create_dir_all(&other).unwrap();
    for f in ["tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(base_model().join(f), other.join(f)).unwrap();
    }
    let path = other.join("tokenizer.json");
    let mut tok: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let vocab = tok["model"]["vocab"].as_object_mut().unwrap();
    let (k, v) = vocab
        .iter()
        .next()
        .map(|(k, v)| (k.clone(), v.clone()))
        .unwrap();
    vocab.remove(&k);
    vocab.insert(format!("{k}_renamed"), v);
    std::fs::write(&path, tok.to_string()).unwrap();
    let a = qforge_model::Tokenizer::from_dir(&base_model()).unwrap();
    let b = qforge_model::Tokenizer::from_dir(&other).unwrap();
    let err = check_same_tokenizer(&a, &b).unwrap_err().to_string();
    assert!(err.contains("tokenizer differs"), "{err}");
    assert!(check_same_tokenizer(&a, &a).is_ok());
}

/// `qforge serve` on loopback with `rm` as its reward model (weight reload on); its base URL.
fn reward_server(rm: &Path) -> String {
    let config = qforge_serve::ServerConfig {
        allow_weight_reload: true,
        ..qforge_serve::ServerConfig::default()
    };
    let reward = qforge_serve::pooling::RewardState::load("rm".into(), rm).unwrap();
    let state = qforge_serve::AppState::for_checkpoint("tiny", &base_model(), config)
        .unwrap()
        .with_reward_model(reward);
    qforge_serve::spawn_on_loopback(state).unwrap()
}

fn sample_scores(dir: &Path, iteration: usize) -> Vec<f64> {
    std::fs::read_to_string(dir.join(format!("mt/iter-{iteration}/samples.jsonl")))
        .unwrap()
        .lines()
        .flat_map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["scores"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| s.as_f64().unwrap())
                .collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn scoring_through_a_reward_server_matches_local_scoring() {
    let (local, remote) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let rm = base_rm(local.path());
    let here = run(&config(local.path(), rm.clone(), 2, 0.0), |_, _| {}).unwrap();
    // The server starts with another reward model: the run must push the one it needs.
    let url = reward_server(&fitted_rm(remote.path(), 6));
    let served = run(
        &MutualTaughtConfig {
            reward_server: Some(url),
            ..config(remote.path(), rm, 2, 0.0)
        },
        |_, _| {},
    )
    .unwrap();
    assert_eq!(served.len(), 2);
    // Iteration 2 is scored by iteration 1's retrained reward model, pushed to the server.
    for t in [1, 2] {
        let (a, b) = (
            sample_scores(local.path(), t),
            sample_scores(remote.path(), t),
        );
        assert_eq!(a.len(), b.len());
        assert!(
            a.iter().zip(&b).all(|(x, y)| (x - y).abs() < 1e-4),
            "iteration {t}: {a:?} vs {b:?}"
        );
    }
    for (h, s) in here.iter().zip(&served) {
        assert_eq!(h.m_step_pairs_kept, s.m_step_pairs_kept);
        assert_eq!(h.best_win_rate, s.best_win_rate);
    }
}

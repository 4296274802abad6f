//! `qforge serve --reward-model`: `POST /pooling` in vLLM's shape scores like the reward model
//! loaded locally, and `/update_weights_from_disk` given a reward checkpoint swaps it.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use qforge_engine::{RemoteBackend, RemoteConfig};
use qforge_model::RewardModel;
use qforge_serve::pooling::RewardState;
use qforge_serve::{AppState, ServerConfig};
use qforge_train::copy_task::copy_preferences;
use qforge_train::trainer::{Objective, TrainConfig, Trainer};
use qforge_util::write_jsonl_atomic;
use serde_json::{Value, json};

fn fixture() -> PathBuf {
    qforge_testkit::tiny_model()
}

/// A tiny Bradley-Terry reward model after `steps` steps on the copy preferences.
fn reward_model(dir: &Path, steps: u64) -> PathBuf {
    let rows: Vec<Value> = copy_preferences(64, 2)
        .into_iter()
        .map(|r| {
            json!({"prompt": [{"role": "user", "content": r["prompt"]}],
                   "chosen": [{"role": "assistant", "content": r["chosen"]}],
                   "rejected": [{"role": "assistant", "content": r["rejected"]}]})
        })
        .collect();
    write_jsonl_atomic(&dir.join("rm.jsonl"), &rows).unwrap();
    let mut t = Trainer::new(
        TrainConfig {
            model: fixture(),
            data: dir.join("rm.jsonl"),
            output_dir: dir.join(format!("rm-run-{steps}")),
            max_length: 64,
            batch_size: 8,
            lr: 5e-3,
            max_steps: Some(steps),
            ..TrainConfig::default()
        },
        Objective::Rm,
    )
    .unwrap();
    t.train(|_| {}, |_| {}).unwrap();
    let out = dir.join(format!("rm-{steps}"));
    t.save_model(&out).unwrap();
    out
}

/// The fixture as chat model, `reward` (if any) as reward model; the root URL (no `/v1`).
fn start_server(reward: Option<&Path>) -> String {
    let config = ServerConfig {
        allow_weight_reload: true,
        ..ServerConfig::default()
    };
    let mut state = AppState::for_checkpoint("tiny", &fixture(), config).unwrap();
    if let Some(dir) = reward {
        state = state.with_reward_model(RewardState::load("rm".into(), dir).unwrap());
    }
    let url = qforge_serve::spawn_on_loopback(state).unwrap();
    url.strip_suffix("/v1").unwrap().to_string()
}

/// POSTs `body` to `/pooling`: the status and the body text.
fn post_pooling(root: &str, body: Value) -> (u16, String) {
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let r = reqwest::Client::new()
            .post(format!("{root}/pooling"))
            .json(&body)
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    })
}

fn conversations() -> Vec<Vec<Value>> {
    ["1 2 3", "1 x 3", "9 9"]
        .iter()
        .map(|a| {
            vec![
                json!({"role": "user", "content": "copy: 1 2 3\n"}),
                json!({"role": "assistant", "content": a}),
            ]
        })
        .collect()
}

#[test]
fn pooling_scores_like_the_local_reward_model_and_reload_swaps_it() {
    let dir = tempfile::tempdir().unwrap();
    let (first, second) = (reward_model(dir.path(), 2), reward_model(dir.path(), 6));
    let root = start_server(Some(&first));
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let client = RemoteBackend::new(RemoteConfig::new(format!("{root}/v1"), "rm")).unwrap();
    let remote = |client: &RemoteBackend| -> Vec<f32> {
        runtime.block_on(async {
            let mut out = Vec::new();
            for c in conversations() {
                out.push(client.reward_score(&c).await.unwrap());
            }
            out
        })
    };
    let local = |dir: &Path| {
        RewardModel::load(dir, DType::F32, &Device::Cpu)
            .unwrap()
            .score_conversations(&conversations(), 8)
            .unwrap()
    };
    let close = |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-4);
    let (served, expected) = (remote(&client), local(&first));
    assert!(close(&served, &expected), "{served:?} vs {expected:?}");

    // Rendered text in `input`, several at once, in vLLM's response shape.
    let rm = RewardModel::load(&first, DType::F32, &Device::Cpu).unwrap();
    let texts = ["copy: 1 2\n1 2", "copy: 1 2\n2 1"];
    let (status, body) = post_pooling(&root, json!({"input": texts}));
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["object"], "list");
    let ids: Vec<Vec<u32>> = texts
        .iter()
        .map(|t| rm.tokenizer().encode(t, false).unwrap())
        .collect();
    let want = rm.score_ids(&ids, 8).unwrap();
    for (i, w) in want.iter().enumerate() {
        assert_eq!(v["data"][i]["index"], i);
        let got = v["data"][i]["data"][0].as_f64().unwrap() as f32;
        assert!((got - w).abs() < 1e-4, "{got} vs {w}");
    }

    // A trainer pushes a retrained reward model; the server then scores like it.
    runtime
        .block_on(client.update_weights_from_disk(&second))
        .unwrap();
    let (served, expected) = (remote(&client), local(&second));
    assert!(close(&served, &expected), "{served:?} vs {expected:?}");
    assert!(
        !close(&served, &local(&first)),
        "the reload changed nothing"
    );

    // Bad input and a wrong model name are clear 4xx errors.
    let (status, body) = post_pooling(&root, json!({}));
    assert_eq!(status, 400);
    assert!(body.contains("`messages`"), "{body}");
    let (status, _) = post_pooling(&root, json!({"model": "other", "input": "x"}));
    assert_eq!(status, 404);
}

#[test]
fn a_server_without_a_reward_model_says_how_to_add_one() {
    let root = start_server(None);
    let (status, body) = post_pooling(&root, json!({"input": "x"}));
    assert_eq!(status, 404);
    assert!(body.contains("--reward-model"), "{body}");
}

//! GRPO with rollouts from a real `qforge serve` on loopback: the trainer pushes its policy
//! through `/update_weights_from_disk` before each step's rollouts, and the server then answers
//! like that policy.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType, Device};
use qforge_engine::chat::ChatRequest;
use qforge_engine::{Engine, GenerationRequest, RemoteBackend, RemoteConfig};
use qforge_model::Checkpoint;
use qforge_rl::grpo::{GrpoConfig, GrpoTrainer};
use qforge_rl::reward::{RewardFn, Task};
use qforge_rl::tasks::kv_retrieval;
use qforge_serve::{AppState, ServerConfig};
use serde_json::json;

fn fixture() -> PathBuf {
    qforge_testkit::tiny_model()
}

fn start_server(allow_weight_reload: bool) -> String {
    let config = ServerConfig {
        allow_weight_reload,
        ..ServerConfig::default()
    };
    let state = AppState::for_checkpoint("tiny", &fixture(), config).unwrap();
    qforge_serve::spawn_on_loopback(state).unwrap()
}

/// A reward with spread on any model's output (the random fixture solves no real task), so
/// every step has informative groups and updates the policy.
struct Parity;

impl RewardFn for Parity {
    fn score(&self, _task: &Task, response: &str) -> f64 {
        (response.len() % 2) as f64
    }
}

fn remote(url: &str) -> RemoteBackend {
    RemoteBackend::new(RemoteConfig::new(url, "tiny")).unwrap()
}

fn trainer(dir: &Path, url: &str) -> GrpoTrainer {
    GrpoTrainer::new(
        GrpoConfig {
            model: fixture(),
            output_dir: dir.to_path_buf(),
            group_size: 2,
            prompts_per_step: 2,
            max_new_tokens: 6,
            lr: 5e-2,
            max_steps: 2,
            ..GrpoConfig::default()
        },
        kv_retrieval(4, 2, 1, 1),
        Arc::new(Parity),
    )
    .unwrap()
    .with_remote_rollouts(remote(url))
    .unwrap()
}

/// The chat prompt ids of `request` and the local checkpoint's greedy text for them.
fn local_greedy(dir: &Path, request: &ChatRequest) -> (Vec<u32>, String) {
    let ck = Checkpoint::load_dir(dir, DType::F32, &Device::Cpu).unwrap();
    let messages = request.messages.clone();
    let text = ck
        .tokenizer
        .apply_chat_template(&messages, &qforge_model::ChatOptions::generation())
        .unwrap();
    let ids = ck.tokenizer.encode(&text, false).unwrap();
    let eos = ck.tokenizer.eos_token_id().unwrap();
    let engine = Engine::new(ck.model, Arc::new(ck.tokenizer));
    let mut r = GenerationRequest::new(ids.clone(), 8);
    r.stop.stop_token_ids = vec![eos];
    (
        ids,
        engine.generate(vec![r], |_| {}).unwrap().remove(0).text,
    )
}

#[test]
fn remote_rollouts_push_the_policy_before_each_step() {
    let url = start_server(true);
    let dir = tempfile::tempdir().unwrap();
    let mut t = trainer(dir.path(), &url);
    let reports = t.train(|_| {}).unwrap();
    assert_eq!(reports.len(), 2);
    assert!(reports.iter().all(|r| r.rollout_tokens > 0));
    // The server holds the policy pushed before step 2's rollouts (after step 1's update).
    let pushed = dir.path().join("rollout-policy");
    assert!(pushed.join("model.safetensors").is_file());
    let request = ChatRequest {
        temperature: Some(0.0),
        max_tokens: Some(8),
        ..ChatRequest::user("Hello there")
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (prompt, expected) = local_greedy(&pushed, &request);
    let sampling = json!({"temperature": 0, "max_tokens": 8});
    let served = rt
        .block_on(remote(&url).complete_ids(&prompt, sampling.as_object().unwrap()))
        .unwrap();
    assert_eq!(served[0].0, expected);
    // ...and that policy is the trained one, not the starting weights.
    let load = |p: &Path| {
        candle_core::safetensors::load(p.join("model.safetensors"), &Device::Cpu).unwrap()
    };
    let (new, old) = (load(&pushed), load(&fixture()));
    let key = "model.layers.0.mlp.up_proj.weight";
    let diff = (&new[key] - &old[key])
        .unwrap()
        .abs()
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(diff > 0.0, "the pushed policy equals the starting weights");
}

#[test]
fn a_server_without_weight_reload_is_a_clear_error() {
    let url = start_server(false);
    let dir = tempfile::tempdir().unwrap();
    let err = trainer(dir.path(), &url).step().err().unwrap().to_string();
    assert!(
        err.contains("pushing weights") && err.contains("403"),
        "{err}"
    );
}

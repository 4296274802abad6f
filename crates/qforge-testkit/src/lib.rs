//! What qforge's tests share (rust-analyzer's `test-utils`): where the committed fixtures are,
//! the tiny checkpoints every crate tests with, and guard checkpoints wired for a test. A
//! dev-dependency only; nothing here ships in a library's API.

pub mod guard;

use std::path::PathBuf;

/// The repository root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `tools/fixtures`: committed fixtures, each made by a pinned generator script next to it.
pub fn fixtures_dir() -> PathBuf {
    repo_root().join("tools/fixtures")
}

/// A file or directory under `tools/fixtures`.
pub fn fixture(relative: &str) -> PathBuf {
    fixtures_dir().join(relative)
}

/// The tiny Qwen3 checkpoint (tied embeddings, grouped-query attention) most tests run.
pub fn tiny_model() -> PathBuf {
    fixture("model/qwen3_tied_gqa")
}

/// `examples/recipes`.
pub fn recipes_dir() -> PathBuf {
    repo_root().join("examples/recipes")
}

/// A random 0.8M-parameter Qwen3 (4 layers, 128 wide) with the tiny fixture's tokenizer and chat
/// template, written to `dir` unless it is already there: the smallest shape that learns
/// retrieval (the 48-wide fixture cannot), for the RL examples.
pub fn retrieval_model(dir: &std::path::Path, seed: u64) -> PathBuf {
    if !dir.join("config.json").is_file() {
        let config = qforge_model::ModelConfig::from_json(serde_json::json!({
            "architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "vocab_size": 384,
            "hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 4,
            "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 32,
            "max_position_embeddings": 1024, "rms_norm_eps": 1e-6, "rope_theta": 10000.0,
            "tie_word_embeddings": true, "hidden_act": "silu", "attention_bias": false
        }))
        .expect("a valid config");
        qforge_model::Model::random(
            config,
            candle_core::DType::F32,
            &candle_core::Device::Cpu,
            seed,
        )
        .expect("random weights")
        .save_pretrained(dir, usize::MAX)
        .expect("writable directory");
        qforge_model::copy_tokenizer_files(&tiny_model(), dir).expect("tokenizer files");
    }
    dir.to_path_buf()
}

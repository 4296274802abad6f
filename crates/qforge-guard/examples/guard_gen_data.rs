//! Builds what tools/fixtures/gen_guard_trained.sh trains: a small random Qwen3 with the test
//! tokenizer and the compact Gen-structured moderation template (`OUT/base`), and SFT rows
//! (`OUT/train.jsonl`: the moderation prompt the template renders, then the verdict) for the
//! training half of `fixtures::moderation_task`.
//!
//!     cargo run --release -p qforge-guard --example guard_gen_data -- runs/guard_gen_tiny

use std::io::Write;
use std::path::PathBuf;

use candle_core::{DType, Device};
use qforge_model::{ChatOptions, Model, ModelConfig, Tokenizer};
use qforge_testkit::guard::{gen_guard_checkpoint, moderation_task};
use serde_json::json;

/// The task's words as whole tokens (ids 369.., inside the fixture's 384-row embedding). The test tokenizer is nearly character-level, so a word spans several tokens; a
/// small model learns to spot one token anywhere in a 1,000-token moderation prompt much sooner
/// than a spelling (Qwen's real vocabulary has ` bomb`, ` kill` and the like as tokens too).
fn add_task_words(path: &std::path::Path) -> Result<(), Box<dyn std::error::Error>> {
    let mut tokenizer: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path)?)?;
    let added = tokenizer["added_tokens"]
        .as_array_mut()
        .ok_or("tokenizer.json has no added_tokens")?;
    let mut id = added
        .iter()
        .filter_map(|t| t["id"].as_u64())
        .max()
        .ok_or("no added token ids")?;
    for word in qforge_testkit::guard::TASK_WORDS {
        id += 1;
        added.push(
            json!({"id": id, "content": word, "single_word": false, "lstrip": false,
                          "rstrip": false, "normalized": false, "special": false}),
        );
    }
    std::fs::write(path, serde_json::to_string(&tokenizer)?)?;
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = PathBuf::from(std::env::args().nth(1).ok_or("usage: guard_gen_data OUT")?);
    let fixtures = qforge_testkit::fixtures_dir();
    let random = out.join("random");
    let config = ModelConfig::from_json(json!({
        "architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "vocab_size": 384,
        "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 3,
        "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
        "max_position_embeddings": 1024, "rms_norm_eps": 1e-6, "rope_theta": 10000.0,
        "tie_word_embeddings": true, "hidden_act": "silu", "attention_bias": false,
        "eos_token_id": [362, 360], "pad_token_id": 360
    }))?;
    let model = Model::random(config, DType::F32, &Device::Cpu, 20261207)?;
    model.save_pretrained(&random, usize::MAX)?;
    qforge_model::copy_tokenizer_files(&fixtures.join("model/qwen3_tied_gqa"), &random)?;
    add_task_words(&random.join("tokenizer.json"))?;
    let base = out.join("base");
    gen_guard_checkpoint(
        &random,
        &fixtures.join("templates/qwen3guard_gen_compact.jinja"),
        &base,
        1024,
    )?;
    let tok = Tokenizer::from_dir(&base)?;
    let mut rows = std::fs::File::create(out.join("train.jsonl"))?;
    let cases = moderation_task(false);
    for case in &cases {
        let prompt = tok.apply_chat_template(&case.messages, &ChatOptions::default())?;
        writeln!(
            rows,
            "{}",
            json!({"prompt": prompt, "completion": case.verdict})
        )?;
    }
    eprintln!(
        "wrote {} rows to {} and the base model to {}",
        cases.len(),
        out.join("train.jsonl").display(),
        base.display()
    );
    Ok(())
}

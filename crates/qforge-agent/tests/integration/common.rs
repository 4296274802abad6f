//! A `ScriptedModelSimulator`: a stand-in for a chat model (policy, summary, judge or rewrite
//! model) that replies from a fixed script, one reply per call (then empty replies), and keeps
//! every request it was sent; and the fixture model with a longer context.

// Each test binary uses part of this module.
#![allow(dead_code)]

use std::sync::Mutex;

use async_trait::async_trait;
use qforge_engine::chat::{ChatDelta, ChatEvent, ChatRequest};
use qforge_engine::{BackendError, ChatBackend, ChatStream};

pub struct ScriptedModelSimulator {
    replies: Mutex<Vec<String>>,
    requests: Mutex<Vec<ChatRequest>>,
}

impl ScriptedModelSimulator {
    pub fn new(replies: &[&str]) -> Self {
        Self {
            replies: Mutex::new(replies.iter().rev().map(|r| r.to_string()).collect()),
            requests: Mutex::new(Vec::new()),
        }
    }

    /// Every request so far, in order.
    pub fn requests(&self) -> Vec<ChatRequest> {
        self.requests.lock().unwrap().clone()
    }

    /// The first message's content of every request (a one-message prompt).
    pub fn prompts(&self) -> Vec<String> {
        self.requests()
            .iter()
            .map(|r| r.messages[0]["content"].as_str().unwrap_or("").to_string())
            .collect()
    }
}

#[async_trait]
impl ChatBackend for ScriptedModelSimulator {
    fn model_name(&self) -> &str {
        "scripted-model-simulator"
    }

    async fn chat_stream(&self, request: ChatRequest) -> Result<ChatStream, BackendError> {
        self.requests.lock().unwrap().push(request);
        let reply = self.replies.lock().unwrap().pop().unwrap_or_default();
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        tx.send(Ok(ChatEvent::Delta(ChatDelta {
            content: Some(reply),
            finish_reason: Some("stop".into()),
            ..ChatDelta::default()
        })))
        .await
        .unwrap();
        Ok(rx)
    }
}

/// The tiny fixture model copied into `dir/model` with a `context`-token context (its 1024 is
/// shorter than the agents' opening prompts; the weights are random either way).
pub fn fixture_with_context(dir: &std::path::Path, context: usize) -> std::path::PathBuf {
    let fixture = qforge_testkit::tiny_model();
    let out = dir.join("model");
    std::fs::create_dir_all(&out).unwrap();
    for entry in std::fs::read_dir(fixture).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), out.join(entry.file_name())).unwrap();
    }
    let config = out.join("config.json");
    let mut c: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&config).unwrap()).unwrap();
    c["max_position_embeddings"] = serde_json::json!(context);
    std::fs::write(&config, c.to_string()).unwrap();
    out
}

/// A copy of the tiny Qwen2.5-VL fixture with a longer context and a pixel budget that keeps a
/// phone screenshot to a few dozen image tokens.
pub fn vl_fixture_with_context(
    dir: &std::path::Path,
    context: usize,
    max_pixels: usize,
) -> std::path::PathBuf {
    let fixture = qforge_testkit::fixture("vlm/qwen2_5_vl_tied");
    let out = dir.join("vl_model");
    std::fs::create_dir_all(&out).unwrap();
    for entry in std::fs::read_dir(fixture).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), out.join(entry.file_name())).unwrap();
    }
    let edit = |name: &str, key: &str, value: usize| {
        let path = out.join(name);
        let mut c: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        c[key] = serde_json::json!(value);
        std::fs::write(&path, c.to_string()).unwrap();
    };
    edit("config.json", "max_position_embeddings", context);
    edit("preprocessor_config.json", "max_pixels", max_pixels);
    out
}

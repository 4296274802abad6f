//! `qforge serve` driven by the official `openai` Python client (tests/openai_client.py).
//!
//! Needs a Python with `openai` installed: `$QFORGE_PYTHON`, else `python3`. Without one the test
//! says it skipped; with `QFORGE_REQUIRE_OPENAI=1` (set by .ci/run) it fails instead.

mod support;

use std::path::PathBuf;
use std::process::Command;

use support::{fixtures, greedy_reply, python_with_openai, qforge, start};

#[test]
fn official_openai_client_against_qforge_serve() {
    let Some(python) = python_with_openai() else {
        return;
    };
    let model = fixtures().join("model/qwen3_tied_gqa");
    let model = model.to_str().unwrap();
    let prompt = "What's the weather like in Zürich today?";
    let expected = greedy_reply(model, prompt, 12);

    let tools = serde_json::json!([{"type": "function", "function": {"name": "get_weather",
        "description": "Weather for a city; it's free", "parameters": {"type": "object",
        "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]);
    let tmp = tempfile::tempdir().unwrap();
    let (tools_file, messages_file) = (
        tmp.path().join("tools.json"),
        tmp.path().join("messages.json"),
    );
    std::fs::write(&tools_file, tools.to_string()).unwrap();
    std::fs::write(
        &messages_file,
        serde_json::json!([{"role": "user", "content": prompt}]).to_string(),
    )
    .unwrap();
    let ids = qforge(&[
        "template",
        "--model",
        model,
        "--messages",
        messages_file.to_str().unwrap(),
        "--tools",
        tools_file.to_str().unwrap(),
        "--ids",
    ]);
    let tools_prompt_tokens = serde_json::from_str::<Vec<u32>>(ids.trim()).unwrap().len();

    let (_server, base_url) = start(
        &[
            "serve",
            "--model",
            model,
            "--port",
            "0",
            "--served-model-name",
            "tiny",
        ],
        "serving",
    );
    let out = Command::new(python)
        .arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/openai_client.py"))
        .env("QFORGE_BASE_URL", &base_url)
        .env("QFORGE_MODEL", "tiny")
        .env("QFORGE_PROMPT", prompt)
        .env("QFORGE_EXPECTED", &expected)
        .env("QFORGE_TOOLS", tools.to_string())
        .env(
            "QFORGE_TOOLS_PROMPT_TOKENS",
            tools_prompt_tokens.to_string(),
        )
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "openai client checks failed:\n{report}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(report.contains(" passed, 0 failed"), "{report}");
}

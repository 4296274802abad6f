//! `qforge serve` driven by the official `openai` Python client (tests/openai_client.py).
//!
//! Needs a Python with `openai` installed: `$QFORGE_PYTHON`, else `python3`. Without one the test
//! says it skipped; with `QFORGE_REQUIRE_OPENAI=1` (set by .ci/run) it fails instead.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tools/fixtures")
}

fn python() -> Option<String> {
    let python = std::env::var("QFORGE_PYTHON").unwrap_or_else(|_| "python3".into());
    let ok = Command::new(&python)
        .args(["-c", "import openai"])
        .output()
        .is_ok_and(|o| o.status.success());
    ok.then_some(python)
}

struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn qforge(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_qforge"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn official_openai_client_against_qforge_serve() {
    let Some(python) = python() else {
        if std::env::var("QFORGE_REQUIRE_OPENAI").is_ok_and(|v| v == "1") {
            panic!(
                "QFORGE_REQUIRE_OPENAI=1 but no Python with the `openai` package (set QFORGE_PYTHON)"
            );
        }
        eprintln!(
            "SKIPPED: no Python with the `openai` package (set QFORGE_PYTHON); .ci/run installs one"
        );
        return;
    };
    let model = fixtures().join("model/qwen3_tied_gqa");
    let model = model.to_str().unwrap();
    let prompt = "What's the weather like in Zürich today?";
    let generated = qforge(&[
        "generate",
        "--model",
        model,
        "--prompt",
        prompt,
        "--max-new-tokens",
        "12",
        "--greedy",
        "--json",
    ]);
    let expected: serde_json::Value = serde_json::from_str(generated.trim()).unwrap();
    let expected = expected["text"].as_str().unwrap().to_string();

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

    let mut server = Child(
        Command::new(env!("CARGO_BIN_EXE_qforge"))
            .args([
                "serve",
                "--model",
                model,
                "--port",
                "0",
                "--served-model-name",
                "tiny",
            ])
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let stderr = BufReader::new(server.0.stderr.take().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in stderr.lines().map_while(Result::ok) {
            if let Some(url) = line
                .split("on ")
                .nth(1)
                .filter(|_| line.starts_with("serving"))
            {
                let _ = tx.send(url.split_whitespace().next().unwrap_or("").to_string());
            }
        }
    });
    let base_url = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the server did not start");
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

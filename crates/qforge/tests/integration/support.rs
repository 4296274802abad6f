//! Helpers of the tests that drive qforge processes with the official `openai` client.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

pub fn fixtures() -> PathBuf {
    qforge_testkit::fixtures_dir()
}

/// A Python with `openai` (`$QFORGE_PYTHON`, else `python3`). Without one the caller skips,
/// unless `QFORGE_REQUIRE_OPENAI=1` (set by .ci/run), which makes this panic.
pub fn python_with_openai() -> Option<String> {
    let python = std::env::var("QFORGE_PYTHON").unwrap_or_else(|_| "python3".into());
    let ok = Command::new(&python)
        .args(["-c", "import openai"])
        .output()
        .is_ok_and(|o| o.status.success());
    if ok {
        return Some(python);
    }
    if std::env::var("QFORGE_REQUIRE_OPENAI").is_ok_and(|v| v == "1") {
        panic!(
            "QFORGE_REQUIRE_OPENAI=1 but no Python with the `openai` package (set QFORGE_PYTHON)"
        );
    }
    eprintln!(
        "SKIPPED: no Python with the `openai` package (set QFORGE_PYTHON); .ci/run installs one"
    );
    None
}

/// A child process killed when dropped.
pub struct Child(pub std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs qforge to completion; panics with its stderr on failure; returns stdout.
pub fn qforge(args: &[&str]) -> String {
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

/// The greedy reply of `qforge generate` (the text a greedy chat request must return).
pub fn greedy_reply(model: &str, prompt: &str, max_new_tokens: usize) -> String {
    greedy_reply_with(model, prompt, max_new_tokens, &[])
}

/// [`greedy_reply`] with extra `qforge generate` flags (e.g. `--enable-thinking false`).
pub fn greedy_reply_with(
    model: &str,
    prompt: &str,
    max_new_tokens: usize,
    flags: &[&str],
) -> String {
    let max_new_tokens = max_new_tokens.to_string();
    let mut args = vec![
        "generate",
        "--model",
        model,
        "--prompt",
        prompt,
        "--max-new-tokens",
        &max_new_tokens,
        "--greedy",
        "--json",
    ];
    args.extend(flags);
    let generated = qforge(&args);
    let v: serde_json::Value = serde_json::from_str(generated.trim()).unwrap();
    v["text"].as_str().unwrap().to_string()
}

/// Starts a long-running qforge command and waits for the stderr line starting with `banner`,
/// returning the child and the URL that follows " on ".
pub fn start(args: &[&str], banner: &'static str) -> (Child, String) {
    let mut child = Child(
        Command::new(env!("CARGO_BIN_EXE_qforge"))
            .args(args)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let stderr = BufReader::new(child.0.stderr.take().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in stderr.lines().map_while(Result::ok) {
            if line.starts_with(banner)
                && let Some(url) = line.split(" on ").nth(1)
            {
                let _ = tx.send(url.split_whitespace().next().unwrap_or("").to_string());
            }
        }
    });
    let url = rx
        .recv_timeout(Duration::from_secs(60))
        .unwrap_or_else(|_| panic!("`qforge {}` did not start", args.join(" ")));
    (child, url)
}

/// scripted_upstream.py (a vLLM-style thinking model's tool-calling turn) on a loopback port,
/// with its `flags` (`--parallel`): the child and its base URL (`…/v1`).
pub fn scripted_upstream(python: &str, flags: &[&str]) -> (Child, String) {
    let mut child = Child(
        Command::new(python)
            .arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/scripted_upstream.py"))
            .args(flags)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut line = String::new();
    BufReader::new(child.0.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let url = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap()
        .to_string();
    (child, url)
}

/// Runs one of the Python client scripts in tests/ with `env`; panics with its report unless
/// every check passed.
pub fn run_python_client(python: &str, script: &str, env: &[(&str, &str)]) -> String {
    let out = Command::new(python)
        .arg(
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("tests")
                .join(script),
        )
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout).to_string();
    eprintln!("{script}:\n{report}");
    assert!(
        out.status.success() && report.contains(" passed, 0 failed"),
        "{script} checks failed:\n{report}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    report
}

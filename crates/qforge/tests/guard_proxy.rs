//! qforge's guard over HTTP, driven by the official `openai` client (tests/guard_client.py):
//! `qforge guard proxy` in front of `qforge serve`, with a guard wired to flag two chosen tokens
//! of the reply (`qforge_guard::fixtures::token_trigger_guard`): the client must receive exactly
//! the text before them and `finish_reason: "content_filter"`; and `/v1/moderations` of
//! `qforge serve --guard-model`.

mod support;

use std::path::PathBuf;
use std::process::Command;

use support::{fixtures, greedy_reply, python_with_openai, start};

#[test]
fn the_proxy_cuts_the_reply_before_the_flagged_tokens() {
    let Some(python) = python_with_openai() else {
        return;
    };
    let model = fixtures().join("model/qwen3_tied_gqa");
    let model = model.to_str().unwrap();
    let prompt = "Tell me about the quick brown fox.";
    let reply = greedy_reply(model, prompt, 40);

    let src = fixtures().join("guard/stream_tiny");
    let tok = qforge_model::Tokenizer::from_dir(&src).unwrap();
    let ids = tok.encode(&reply, false).unwrap();
    let k = (3..ids.len() - 1)
        .find(|&k| !ids[..k].contains(&ids[k]) && !ids[..k].contains(&ids[k + 1]))
        .expect("two fresh consecutive tokens in the reply");
    let guard = tempfile::tempdir().unwrap();
    qforge_guard::fixtures::token_trigger_guard(&src, guard.path(), &[ids[k], ids[k + 1]], false)
        .unwrap();
    let expected = tok.decode(&ids[..k], false).unwrap();

    let (_upstream, upstream_url) = start(
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
    let (_proxy, proxy_url) = start(
        &[
            "guard",
            "proxy",
            "--upstream",
            &upstream_url,
            "--stream-model",
            guard.path().to_str().unwrap(),
            "--port",
            "0",
        ],
        "guard proxy",
    );
    let out = Command::new(python)
        .arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/guard_client.py"))
        .env("QFORGE_CHECK", "proxy")
        .env("QFORGE_BASE_URL", &proxy_url)
        .env("QFORGE_PROMPT", prompt)
        .env("QFORGE_EXPECTED", &expected)
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "openai client checks failed:\n{report}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(report.contains("3 passed, 0 failed"), "{report}");
}

/// A Gen guard for tests: the tiny model with the Gen-structured template.
fn gen_guard_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    qforge_guard::fixtures::gen_guard_checkpoint(
        &fixtures().join("model/qwen3_tied_gqa"),
        &fixtures().join("templates/qwen3guard_gen.jinja"),
        dir.path(),
        4096,
    )
    .unwrap();
    dir
}

#[test]
fn openai_moderations_endpoint_answers_the_official_client() {
    let Some(python) = python_with_openai() else {
        return;
    };
    let guard = gen_guard_dir();
    let guard_path = guard.path().to_str().unwrap();
    let model = fixtures().join("model/qwen3_tied_gqa");
    let (_server, url) = start(
        &[
            "serve",
            "--model",
            model.to_str().unwrap(),
            "--guard-model",
            guard_path,
            "--port",
            "0",
        ],
        "serving",
    );
    let out = Command::new(python)
        .arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/guard_client.py"))
        .env("QFORGE_CHECK", "moderation")
        .env("QFORGE_BASE_URL", &url)
        .env("QFORGE_GUARD_MODEL", guard_path)
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && report.contains("1 passed, 0 failed"),
        "openai client checks failed:\n{report}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

//! qforge's guard over HTTP, driven by the official `openai` client (tests/guard_client.py):
//! `qforge guard proxy` in front of `qforge serve`, with a guard wired to flag two chosen tokens
//! of the reply (`qforge_testkit::guard::token_trigger_guard`): the client must receive exactly
//! the text before them and `finish_reason: "content_filter"`; and `/v1/moderations` of
//! `qforge serve --guard-model`.

use crate::support;

use support::{
    fixtures, greedy_reply_with, python_with_openai, run_python_client, scripted_upstream, start,
};

/// `qforge guard proxy` in front of `upstream` with a Stream guard (and a Gen guard).
fn start_proxy(
    upstream: &str,
    stream: &std::path::Path,
    gen_model: Option<&str>,
) -> (support::Child, String) {
    let mut args = vec![
        "guard",
        "proxy",
        "--upstream",
        upstream,
        "--stream-model",
        stream.to_str().unwrap(),
        "--port",
        "0",
    ];
    if let Some(g) = gen_model {
        args.extend(["--gen-model", g]);
    }
    start(&args, "guard proxy")
}

#[test]
fn the_proxy_cuts_the_reply_before_the_flagged_tokens() {
    let Some(python) = python_with_openai() else {
        return;
    };
    let model = fixtures().join("model/qwen3_tied_gqa");
    let model = model.to_str().unwrap();
    let prompt = "Tell me about the quick brown fox.";
    // Thinking off (the client asks the same): the whole reply is content.
    let reply = greedy_reply_with(model, prompt, 40, &["--enable-thinking", "false"]);

    let src = fixtures().join("guard/stream_tiny");
    let tok = qforge_model::Tokenizer::from_dir(&src).unwrap();
    let ids = tok.encode(&reply, false).unwrap();
    let k = (3..ids.len() - 1)
        .find(|&k| !ids[..k].contains(&ids[k]) && !ids[..k].contains(&ids[k + 1]))
        .expect("two fresh consecutive tokens in the reply");
    let guard = tempfile::tempdir().unwrap();
    qforge_testkit::guard::token_trigger_guard(&src, guard.path(), &[ids[k], ids[k + 1]], false)
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
    let (_proxy, proxy_url) = start_proxy(&upstream_url, guard.path(), None);
    let report = run_python_client(
        &python,
        "guard_client.py",
        &[
            ("QFORGE_CHECK", "proxy"),
            ("QFORGE_BASE_URL", &proxy_url),
            ("QFORGE_PROMPT", prompt),
            ("QFORGE_EXPECTED", &expected),
        ],
    );
    assert!(report.contains("3 passed, 0 failed"), "{report}");
}

#[test]
fn reasoning_and_tool_calls_keep_their_channels_through_the_proxy() {
    let Some(python) = python_with_openai() else {
        return;
    };
    let (_upstream, upstream_url) = scripted_upstream(&python, &[]);
    let src = fixtures().join("guard/stream_tiny");
    let tok = qforge_model::Tokenizer::from_dir(&src).unwrap();
    for (trigger, check) in [("", "reasoning"), (" VWK", "reasoning_flagged")] {
        let ids = if trigger.is_empty() {
            Vec::new()
        } else {
            tok.encode(trigger, false).unwrap()
        };
        let guard = tempfile::tempdir().unwrap();
        qforge_testkit::guard::token_trigger_guard(&src, guard.path(), &ids, false).unwrap();
        let (_proxy, proxy_url) = start_proxy(&upstream_url, guard.path(), None);
        run_client(&python, check, &proxy_url, "");
    }
}

/// A Gen guard for tests: the tiny model with the Gen-structured template.
fn gen_guard_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    qforge_testkit::guard::gen_guard_checkpoint(
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
    run_client(&python, "moderation", &url, guard_path);
}

/// tools/fixtures/gen_guard_trained.sh's Gen guard (taught the format by our SFT trainer).
fn trained_gen_guard() -> String {
    fixtures()
        .join("guard/gen_tiny_trained")
        .to_string_lossy()
        .into_owned()
}

fn run_client(python: &str, check: &str, url: &str, guard: &str) {
    run_python_client(
        python,
        "guard_client.py",
        &[
            ("QFORGE_CHECK", check),
            ("QFORGE_BASE_URL", url),
            ("QFORGE_GUARD_MODEL", guard),
            ("QFORGE_PROMPT", "What is the weather in Paris?"),
        ],
    );
}

#[test]
fn a_trained_gen_guard_moderates_through_every_entry_point() {
    let guard = trained_gen_guard();
    // qforge guard moderate: a parsed verdict.
    let out = support::qforge(&[
        "guard",
        "moderate",
        "--model",
        &guard,
        "--prompt",
        "Tell me how to build a bomb.",
    ]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["outcome"]["status"], "parsed", "{v}");
    assert_eq!(v["outcome"]["verdict"]["safety"], "Unsafe", "{v}");
    assert_eq!(v["flagged"], true, "{v}");

    // qforge guard eval --mode gen on the held-out half of the synthetic task.
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("heldout.jsonl");
    let rows: Vec<String> = qforge_testkit::guard::moderation_task(true)
        .iter()
        .filter(|c| c.messages.len() == 1)
        .map(|c| {
            serde_json::json!({
                "messages": c.messages,
                "label": if c.unsafe_ { "Unsafe" } else { "Safe" },
                "category": c.category.map(|x| x.as_str()),
            })
            .to_string()
        })
        .collect();
    std::fs::write(&data, rows.join("\n")).unwrap();
    let report_dir = dir.path().join("report");
    support::qforge(&[
        "guard",
        "eval",
        "--model",
        &guard,
        "--mode",
        "gen",
        "--task",
        "prompt",
        "--dataset",
        data.to_str().unwrap(),
        "--out",
        report_dir.to_str().unwrap(),
    ]);
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(report_dir.join("report.json")).unwrap())
            .unwrap();
    let r = &report["report"];
    assert_eq!(r["examples"], rows.len(), "{r}");
    assert_eq!(r["unparsable"], 0, "{r}");
    assert!(r["strict"]["f1"].as_f64().unwrap() >= 0.75, "{r}");

    let Some(python) = python_with_openai() else {
        return;
    };
    // /v1/moderations of qforge serve --guard-model.
    let model = fixtures().join("model/qwen3_tied_gqa");
    let (_server, url) = start(
        &[
            "serve",
            "--model",
            model.to_str().unwrap(),
            "--guard-model",
            &guard,
            "--served-model-name",
            "tiny",
            "--port",
            "0",
        ],
        "serving",
    );
    run_client(&python, "moderation_trained", &url, &guard);
    // The guard proxy's prompt check with --gen-model.
    let stream = tempfile::tempdir().unwrap();
    qforge_testkit::guard::token_trigger_guard(
        &fixtures().join("guard/stream_tiny"),
        stream.path(),
        &[],
        false,
    )
    .unwrap();
    let (_proxy, proxy_url) = start_proxy(&url, stream.path(), Some(&guard));
    run_client(&python, "gen_proxy", &proxy_url, &guard);
}

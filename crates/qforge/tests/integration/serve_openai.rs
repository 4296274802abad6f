//! `qforge serve` driven by the official `openai` Python client (tests/openai_client.py).
//!
//! Needs a Python with `openai` installed: `$QFORGE_PYTHON`, else `python3`. Without one the test
//! says it skipped; with `QFORGE_REQUIRE_OPENAI=1` (set by .ci/run) it fails instead.

use crate::support;

use support::{
    fixtures, greedy_reply, python_with_openai, qforge, run_python_client, scripted_upstream, start,
};

/// How many tokens `qforge template` renders for `messages` with `tools`.
fn prompt_tokens(model: &str, messages: &serde_json::Value, tools: &serde_json::Value) -> usize {
    let tmp = tempfile::tempdir().unwrap();
    let (messages_file, tools_file) = (
        tmp.path().join("messages.json"),
        tmp.path().join("tools.json"),
    );
    std::fs::write(&messages_file, messages.to_string()).unwrap();
    std::fs::write(&tools_file, tools.to_string()).unwrap();
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
    serde_json::from_str::<Vec<u32>>(ids.trim()).unwrap().len()
}

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
    let tools_prompt_tokens = prompt_tokens(
        model,
        &serde_json::json!([{"role": "user", "content": prompt}]),
        &tools,
    );
    // A multi-turn tool conversation: two parallel calls, both results fed back.
    let conversation = serde_json::json!([
        {"role": "user", "content": prompt},
        {"role": "assistant", "content": "", "tool_calls": [
            {"id": "call_a", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Zürich\"}"}},
            {"id": "call_b", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Bern\"}"}}]},
        {"role": "tool", "tool_call_id": "call_a", "content": "sunny"},
        {"role": "tool", "tool_call_id": "call_b", "content": "rain"},
    ]);
    let conversation_prompt_tokens = prompt_tokens(model, &conversation, &tools);

    let (_server, base_url) = start(
        &[
            "serve",
            "--model",
            model,
            "--port",
            "0",
            "--served-model-name",
            "tiny",
            "--prefix-cache-mib",
            "64",
        ],
        "serving",
    );
    let (tools, tools_prompt_tokens) = (tools.to_string(), tools_prompt_tokens.to_string());
    let (conversation, conversation_prompt_tokens) = (
        conversation.to_string(),
        conversation_prompt_tokens.to_string(),
    );
    run_python_client(
        &python,
        "openai_client.py",
        &[
            ("QFORGE_BASE_URL", &base_url),
            ("QFORGE_MODEL", "tiny"),
            ("QFORGE_PROMPT", prompt),
            ("QFORGE_EXPECTED", &expected),
            ("QFORGE_TOOLS", &tools),
            ("QFORGE_TOOLS_PROMPT_TOKENS", &tools_prompt_tokens),
            ("QFORGE_CONVERSATION", &conversation),
            (
                "QFORGE_CONVERSATION_PROMPT_TOKENS",
                &conversation_prompt_tokens,
            ),
        ],
    );
}

/// A raw HTTP/1.1 POST (the test crate has no HTTP client): status and JSON body.
fn post_json(base: &str, path: &str, body: &str) -> (u16, serde_json::Value) {
    use std::io::{Read, Write};
    let addr = base
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap()
        .to_string();
    let mut stream = std::net::TcpStream::connect(&addr).unwrap();
    write!(
        stream,
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut reply = String::new();
    stream.read_to_string(&mut reply).unwrap();
    let (head, body) = reply.split_once("\r\n\r\n").unwrap();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    // Bodies may come chunked: the JSON object is between the first `{` and the last `}`.
    let json = &body[body.find('{').unwrap()..=body.rfind('}').unwrap()];
    (status, serde_json::from_str(json).unwrap())
}

#[test]
fn serve_answers_the_released_compression_route_with_the_compressor_in_f16() {
    let compressor = fixtures().join("cprs/needle_compressor");
    let model = fixtures().join("model/qwen3_tied_gqa");
    let (_server, url) = start(
        &[
            "serve",
            "--model",
            model.to_str().unwrap(),
            "--compressor",
            compressor.to_str().unwrap(),
            "--dtype",
            "f16",
            "--port",
            "0",
        ],
        "serving",
    );
    let needle = "One of the special magic numbers for quiet-lantern is: 4072913.";
    let noise = qforge_compress::synthetic::NOISE;
    let context = format!("{} {needle} {}", [noise; 6].join(" "), [noise; 9].join(" "));
    let request = serde_json::json!({
        "header": {"request_id": "r1"},
        "payload": {"input": {"messages": [
            {"role": "system", "content": qforge_compress::synthetic::NIAH_INSTRUCTION},
            {"role": "user", "content": "What is the special magic number for quiet-lantern mentioned in the provided text?"},
            {"role": "context", "content": context}
        ]}, "parameters": {"min_keyword_len": 1, "complete_sentence": false, "batch_size": 1, "chunk_size": 512}}
    });
    let base = url.trim_end_matches("/v1");
    let (status, reply) = post_json(base, "/qwen_long_compress_server", &request.to_string());
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["header"]["status_code"], 200, "{reply}");
    let kept: Vec<&str> = reply["payload"]["output"]["text"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    assert!(kept.iter().any(|t| t.contains("4072913")), "{reply}");
}

/// `qforge guard proxy` and `qforge compress proxy` with the official client (tests/proxy_client.py):
/// in front of a scripted vLLM-style upstream that streams reasoning and two fragmented parallel
/// tool calls, the client gets two calls streamed and whole, a multi-turn tool conversation goes
/// through, and every field it sends that the proxy does not own reaches the upstream unchanged;
/// in front of `qforge serve`, penalties, logit_bias and tool_choice answer as they do directly
/// and the server's 400s come back as 400s.
#[test]
fn official_openai_client_through_both_proxies() {
    let Some(python) = python_with_openai() else {
        return;
    };
    let (_scripted, scripted_url) = scripted_upstream(&python, &["--parallel"]);
    let model = fixtures().join("model/qwen3_tied_gqa");
    let (_serve, serve_url) = start(
        &["serve", "--model", model.to_str().unwrap(), "--port", "0"],
        "serving",
    );
    let guard = tempfile::tempdir().unwrap();
    // A Stream guard that flags nothing (no trigger tokens).
    qforge_testkit::guard::token_trigger_guard(
        &fixtures().join("guard/stream_tiny"),
        guard.path(),
        &[],
        false,
    )
    .unwrap();
    let compressor = fixtures().join("cprs/tiny_compressor");
    for (check, upstream) in [("scripted", &scripted_url), ("serve", &serve_url)] {
        let proxies = [
            start(
                &[
                    "guard",
                    "proxy",
                    "--upstream",
                    upstream,
                    "--stream-model",
                    guard.path().to_str().unwrap(),
                    "--port",
                    "0",
                ],
                "guard proxy",
            ),
            start(
                &[
                    "compress",
                    "proxy",
                    "--model",
                    compressor.to_str().unwrap(),
                    "--upstream",
                    upstream,
                    "--port",
                    "0",
                ],
                "compressing proxy",
            ),
        ];
        for (_proxy, url) in &proxies {
            run_python_client(
                &python,
                "proxy_client.py",
                &[
                    ("QFORGE_CHECK", check),
                    ("QFORGE_BASE_URL", url),
                    ("QFORGE_UPSTREAM_URL", upstream),
                ],
            );
        }
    }
}

#[test]
fn official_openai_client_sends_images_to_a_vision_language_model() {
    let Some(python) = python_with_openai() else {
        return;
    };
    let dir = fixtures().join("vlm/qwen2_5_vl_tied");
    let (model, image) = (
        dir.to_str().unwrap(),
        dir.join("image_a.png").to_string_lossy().into_owned(),
    );
    let prompt = "What is in the picture?";
    let generated = qforge(&[
        "generate",
        "--model",
        model,
        "--image",
        &image,
        "--prompt",
        prompt,
        "--max-new-tokens",
        "8",
        "--greedy",
        "--json",
    ]);
    let generated: serde_json::Value = serde_json::from_str(generated.trim()).unwrap();
    let (_server, base_url) = start(
        &[
            "serve",
            "--model",
            model,
            "--port",
            "0",
            "--served-model-name",
            "vl",
            "--allowed-local-media-path",
            dir.to_str().unwrap(),
        ],
        "serving",
    );
    let text_model = fixtures().join("model/qwen3_tied_gqa");
    let (_text_server, text_url) = start(
        &[
            "serve",
            "--model",
            text_model.to_str().unwrap(),
            "--port",
            "0",
            "--served-model-name",
            "text",
        ],
        "serving",
    );
    run_python_client(
        &python,
        "vision_client.py",
        &[
            ("QFORGE_BASE_URL", &base_url),
            ("QFORGE_MODEL", "vl"),
            ("QFORGE_PROMPT", prompt),
            ("QFORGE_IMAGE", &image),
            ("QFORGE_IMAGE_NAME", "image_a.png"),
            ("QFORGE_EXPECTED", generated["text"].as_str().unwrap()),
            (
                "QFORGE_PROMPT_TOKENS",
                &generated["prompt_tokens"].to_string(),
            ),
            ("QFORGE_TEXT_ONLY_URL", &text_url),
        ],
    );
}

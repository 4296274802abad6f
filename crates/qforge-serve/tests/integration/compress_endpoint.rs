//! `POST /v1/compress` on loopback with the tiny compressor: the answer equals the pipeline's
//! own, offsets on request, and bad requests get OpenAI-shaped errors.

use std::path::PathBuf;

use qforge_compress::model::Compressor;
use qforge_compress::pipeline::{CompressOptions, compress};
use qforge_serve::compress::CompressState;
use serde_json::{Value, json};

fn root() -> PathBuf {
    qforge_testkit::repo_root()
}

fn compressor() -> Compressor {
    Compressor::load(
        &root().join("tools/fixtures/cprs/tiny_compressor"),
        candle_core::DType::F32,
        &candle_core::Device::Cpu,
    )
    .unwrap()
}

const CONTEXT: &str = "The special magic number for kyoto is: 4711. Cats sleep a lot. \
    The special magic number for nara is: 1234. 京都是古都。Trains run on time.";

#[tokio::test]
async fn compress_answers_as_the_pipeline_does() {
    let model = root().join("tools/fixtures/model/qwen3_tied_gqa");
    let state = qforge_serve::AppState::for_checkpoint("tiny", &model, Default::default())
        .unwrap()
        .with_compressor(CompressState::new("cprs-tiny".into(), compressor()));
    let plain = qforge_serve::AppState::for_checkpoint("tiny", &model, Default::default()).unwrap();
    let (url, plain_url) = tokio::task::spawn_blocking(move || {
        (
            qforge_serve::spawn_on_loopback(state).unwrap(),
            qforge_serve::spawn_on_loopback(plain).unwrap(),
        )
    })
    .await
    .unwrap();
    let client = reqwest::Client::new();
    let post = |url: String, body: Value| {
        let client = client.clone();
        async move {
            let r = client
                .post(format!("{url}/compress"))
                .json(&body)
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }
    };
    let messages = json!([
        {"role": "system", "content": "Extract the needles."},
        {"role": "user", "content": "kyoto?"},
        {"role": "context", "content": CONTEXT}
    ]);
    let (status, body) = post(
        url.clone(),
        json!({"messages": messages, "parameters": {"min_keyword_len": 0, "return_offset": true, "batch_size": 2}}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let expected = compress(
        &compressor(),
        "Extract the needles.",
        "kyoto?",
        CONTEXT,
        &CompressOptions {
            min_keyword_len: 0,
            batch: 2,
            ..CompressOptions::default()
        },
    )
    .unwrap();
    let got: Vec<(String, usize, usize)> = body["text"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t[0].as_str().unwrap().to_string(),
                t[1].as_u64().unwrap() as usize,
                t[2].as_u64().unwrap() as usize,
            )
        })
        .collect();
    let want: Vec<(String, usize, usize)> = expected
        .spans
        .iter()
        .map(|s| (s.text.clone(), s.start, s.end))
        .collect();
    assert_eq!(got, want);
    assert_eq!(body["usage"]["input_tokens"], expected.input_tokens);

    // Bad requests.
    let wrong_roles = json!({"messages": [
        {"role": "user", "content": "a"}, {"role": "user", "content": "b"}, {"role": "context", "content": "c"}]});
    let (status, body) = post(url.clone(), wrong_roles).await;
    assert_eq!(status, 400);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("system, user, context"),
        "{body}"
    );
    let empty = json!({"messages": [
        {"role": "system", "content": "a"}, {"role": "user", "content": "b"}, {"role": "context", "content": " "}]});
    let (status, body) = post(url.clone(), empty).await;
    assert_eq!(
        (status, body["error"]["message"].as_str()),
        (400, Some("the context is empty"))
    );
    let bad_param = json!({"messages": messages, "parameters": {"min_keyword_len": "four"}});
    let (status, body) = post(url, bad_param).await;
    assert_eq!(
        (status, body["error"]["param"].as_str()),
        (400, Some("min_keyword_len"))
    );
    let (status, _) = post(plain_url, json!({"messages": messages})).await;
    assert_eq!(status, 404);
}

/// The body `examples/infer.py`'s `compress_api_call_local` sends: Python's `json.dumps` of its
/// envelope (default separators), posted as raw data without a content type, as
/// `requests.request("POST", url, data=payload)` does.
fn infer_py_body(context: &str) -> String {
    let messages = json!([
        {"role": "system", "content": "Extract the needles."},
        {"role": "user", "content": "kyoto?"},
        {"role": "context", "content": context}
    ]);
    let python = |v: &Value| {
        // json.dumps: ", " and ": " separators, non-ASCII escaped.
        let compact = serde_json::to_string(v).unwrap();
        let mut out = String::new();
        let mut in_string = false;
        let mut escaped = false;
        for c in compact.chars() {
            match c {
                _ if in_string && escaped => {
                    escaped = false;
                    out.push(c)
                }
                '\\' if in_string => {
                    escaped = true;
                    out.push(c)
                }
                '"' => {
                    in_string = !in_string;
                    out.push(c)
                }
                ',' | ':' if !in_string => {
                    out.push(c);
                    out.push(' ')
                }
                c if in_string && !c.is_ascii() => {
                    let mut units = [0u16; 2];
                    for u in c.encode_utf16(&mut units) {
                        out.push_str(&format!("\\u{u:04x}"));
                    }
                }
                c => out.push(c),
            }
        }
        out
    };
    format!(
        "{{\"header\": {{\"request_id\": \"1111abca\"}}, \"payload\": {{\"input\": {{\"messages\": {}}}, \
         \"parameters\": {{\"min_keyword_len\": 1, \"complete_sentence\": false, \"batch_size\": 1, \
         \"chunk_size\": 8192}}}}}}",
        python(&messages)
    )
}

#[tokio::test]
async fn the_released_route_answers_infer_py_in_the_released_envelope() {
    let model = root().join("tools/fixtures/model/qwen3_tied_gqa");
    let state = qforge_serve::AppState::for_checkpoint("tiny", &model, Default::default())
        .unwrap()
        .with_compressor(CompressState::new("cprs-tiny".into(), compressor()));
    let url = tokio::task::spawn_blocking(move || qforge_serve::spawn_on_loopback(state).unwrap())
        .await
        .unwrap();
    let base = url.trim_end_matches("/v1").to_string();
    let client = reqwest::Client::new();
    let post = |body: String| {
        let client = client.clone();
        let base = base.clone();
        async move {
            let r = client
                .post(format!("{base}/qwen_long_compress_server"))
                .body(body)
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }
    };
    let body = infer_py_body(CONTEXT);
    let sent: Value = serde_json::from_str(&body).unwrap();
    let (status, reply) = post(body).await;
    assert_eq!(status, 200, "{reply}");
    let expected = compress(
        &compressor(),
        "Extract the needles.",
        "kyoto?",
        CONTEXT,
        &CompressOptions {
            min_keyword_len: 1,
            complete_sentence: false,
            batch: 1,
            ..CompressOptions::default()
        },
    )
    .unwrap();
    let header = &reply["header"];
    assert_eq!(
        (
            &header["request_id"],
            &header["status_code"],
            &header["status_name"],
            &header["status_message"],
            &header["finished"]
        ),
        (
            &json!("1111abca"),
            &json!(200),
            &json!("Success"),
            &json!("Success"),
            &json!(true)
        )
    );
    let texts: Vec<&str> = expected.spans.iter().map(|s| s.text.as_str()).collect();
    assert_eq!(reply["payload"]["output"], json!({"text": texts}));
    assert_eq!(
        reply["payload"]["usage"],
        json!({"input_tokens": expected.input_tokens})
    );
    // The request comes back as sent, as the released server returns its `data`.
    assert_eq!(reply["payload"]["input"], sent["payload"]["input"]);
    assert_eq!(
        reply["payload"]["parameters"],
        sent["payload"]["parameters"]
    );

    // Errors, in the envelope with HTTP 200, as released.
    let released_error = |reply: &Value, code: u16, name: &str| {
        assert_eq!(reply["header"]["status_code"], code, "{reply}");
        assert_eq!(reply["header"]["status_name"], name, "{reply}");
        assert_eq!(reply["payload"]["output"], json!({"is_match": false}));
        assert_eq!(
            reply["payload"]["usage"],
            json!({"input_tokens": -1, "output_tokens": -1})
        );
    };
    let mut wrong_roles = sent.clone();
    wrong_roles["payload"]["input"]["messages"][0]["role"] = json!("user");
    let (status, reply) = post(wrong_roles.to_string()).await;
    assert_eq!(status, 200);
    released_error(&reply, 440, "SchemaError");
    assert!(
        reply["header"]["status_message"]
            .as_str()
            .unwrap()
            .contains("system, user, context")
    );
    let mut no_id = sent.clone();
    no_id["header"] = json!({});
    let (_, reply) = post(no_id.to_string()).await;
    released_error(&reply, 440, "SchemaError");
    let mut bad_param = sent.clone();
    bad_param["payload"]["parameters"]["min_keyword_len"] = json!("one");
    let (_, reply) = post(bad_param.to_string()).await;
    released_error(&reply, 400, "InvalidInputError");
    assert!(
        reply["header"]["status_message"]
            .as_str()
            .unwrap()
            .contains("min_keyword_len")
    );
    let (_, reply) = post(infer_py_body(" ")).await;
    released_error(&reply, 400, "InvalidInputError");
    assert_eq!(reply["header"]["request_id"], "1111abca");
    let (status, reply) = post("{not json".into()).await;
    assert_eq!(status, 400);
    released_error(&reply, 400, "InvalidInputError");
}

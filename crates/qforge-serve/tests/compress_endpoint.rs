//! `POST /v1/compress` on loopback with the tiny compressor: the answer equals the pipeline's
//! own, offsets on request, and bad requests get OpenAI-shaped errors.

use std::path::PathBuf;

use qforge_compress::model::Compressor;
use qforge_compress::pipeline::{CompressOptions, compress};
use qforge_serve::compress::CompressState;
use serde_json::{Value, json};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
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

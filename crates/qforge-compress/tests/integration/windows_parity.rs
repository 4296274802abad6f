//! Windowing against the released `dataset.py` (`tools/fixtures/gen_cprs_windows.py`, the tiny
//! fixture tokenizer, windows of 56–96 tokens): token windows for English, sentence packing for
//! Chinese, including the empty first window an over-long first sentence makes.

use qforge_compress::CompressError;
use qforge_compress::windows::build_windows;
use qforge_model::Tokenizer;
use serde_json::Value;

fn root() -> std::path::PathBuf {
    qforge_testkit::repo_root()
}

#[test]
fn windows_match_the_released_dataset_code() {
    let fixtures: Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("tools/fixtures/cprs/windows.json")).unwrap(),
    )
    .unwrap();
    let tok = Tokenizer::from_dir(&root().join("tools/fixtures/model/qwen3_tied_gqa")).unwrap();
    let (instruction, query) = (
        fixtures["instruction"].as_str().unwrap(),
        fixtures["query"].as_str().unwrap(),
    );
    let mut packed = 0;
    for (i, case) in fixtures["cases"].as_array().unwrap().iter().enumerate() {
        let context = case["context"].as_str().unwrap();
        let split = case["split_with_sent"].as_bool().unwrap();
        let max_len = case["max_len"].as_u64().unwrap() as usize;
        let (prefix_ids, windows) =
            build_windows(&tok, instruction, query, context, max_len, split).unwrap();
        let prefix_len = prefix_ids.len();
        assert_eq!(
            Some(prefix_len as u64),
            case["query_len"].as_u64(),
            "case {i}: prefix tokens"
        );
        let expected = case["windows"].as_array().unwrap();
        assert_eq!(windows.len(), expected.len(), "case {i}: window count");
        for (w, e) in windows.iter().zip(expected) {
            assert_eq!(w.text, e["text"].as_str().unwrap(), "case {i}: window text");
            let offsets: Vec<(usize, usize)> =
                serde_json::from_value(e["offsets"].clone()).unwrap();
            assert_eq!(w.offsets, offsets, "case {i}: offsets");
        }
        packed += usize::from(
            split
                && context
                    .chars()
                    .any(|c| ('\u{4e00}'..='\u{9fff}').contains(&c)),
        );
    }
    assert!(
        packed > 10,
        "sentence packing is exercised ({packed} cases)"
    );
}

#[test]
fn an_instruction_longer_than_the_window_is_a_clear_error() {
    let tok = Tokenizer::from_dir(&root().join("tools/fixtures/model/qwen3_tied_gqa")).unwrap();
    let err = build_windows(
        &tok,
        &"very long instruction ".repeat(20),
        "q",
        "context",
        64,
        true,
    )
    .unwrap_err();
    assert!(matches!(
        err,
        CompressError::PrefixTooLong { window: 64, .. }
    ));
    assert!(err.to_string().contains("leaving no room"), "{err}");
    // An empty context has no windows.
    assert!(
        build_windows(&tok, "i", "q", "", 64, true)
            .unwrap()
            .1
            .is_empty()
    );
}

//! Tokenizer and chat-template parity with transformers (fixtures from gen_model.py).

use std::path::PathBuf;

use qforge_model::{ChatOptions, ChatTemplate, Tokenizer};
use serde_json::Value;

fn fixtures() -> PathBuf {
    qforge_testkit::fixtures_dir()
}

fn tokenizer() -> Tokenizer {
    Tokenizer::from_dir(&fixtures().join("model/tokenizer")).unwrap()
}

fn json(path: PathBuf) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn chat_templates_render_byte_identical_to_transformers() {
    let tok = tokenizer();
    let cases = json(fixtures().join("model/templates.json"));
    let cases = cases.as_array().unwrap();
    assert!(cases.len() >= 16);
    for case in cases {
        let name = format!(
            "{}/{}",
            case["template"].as_str().unwrap(),
            case["name"].as_str().unwrap()
        );
        let source = std::fs::read_to_string(fixtures().join(format!(
            "templates/{}.jinja",
            case["template"].as_str().unwrap()
        )))
        .unwrap();
        let template = ChatTemplate::new(&source).unwrap();
        let mut options = ChatOptions {
            add_generation_prompt: case["add_generation_prompt"].as_bool().unwrap(),
            tools: case["tools"].as_array().cloned(),
            ..Default::default()
        };
        if let Some(thinking) = case["enable_thinking"].as_bool() {
            options = options.with_enable_thinking(thinking);
        }
        let text = template
            .render(
                case["messages"].as_array().unwrap(),
                &options,
                tok.special_tokens(),
            )
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(
            text,
            case["text"].as_str().unwrap(),
            "{name}: rendered text differs"
        );
        let ids: Vec<u32> = case["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        assert_eq!(
            tok.encode(&text, false).unwrap(),
            ids,
            "{name}: token ids differ"
        );
    }
}

#[test]
fn checkpoint_template_comes_from_chat_template_jinja() {
    let tok = tokenizer();
    let messages = vec![serde_json::json!({"role": "user", "content": "hi"})];
    let text = tok
        .apply_chat_template(&messages, &ChatOptions::generation())
        .unwrap();
    assert_eq!(
        text,
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    );
}

#[test]
fn tokenizer_round_trips_like_transformers() {
    let tok = tokenizer();
    let cases = json(fixtures().join("model/tokenizer_cases.json"));
    for case in cases.as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let ids: Vec<u32> = case["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        assert_eq!(tok.encode(text, false).unwrap(), ids, "encode {text:?}");
        assert_eq!(
            tok.decode(&ids, false).unwrap(),
            case["decoded"].as_str().unwrap(),
            "decode {text:?}"
        );
        assert_eq!(
            tok.decode(&ids, true).unwrap(),
            case["decoded_skip"].as_str().unwrap(),
            "decode skip {text:?}"
        );
        assert_eq!(
            tok.decode(&ids, false).unwrap(),
            text,
            "round trip {text:?}"
        );
    }
}

#[test]
fn special_tokens_resolve() {
    let tok = tokenizer();
    assert_eq!(tok.eos_token_id(), tok.token_to_id("<|im_end|>"));
    assert_eq!(
        tok.pad_token_id(),
        tok.token_to_id("<|endoftext|>").unwrap()
    );
    assert_eq!(
        tok.encode("<think>", false).unwrap(),
        vec![tok.token_to_id("<think>").unwrap()]
    );
}

#[test]
fn empty_message_list_is_an_error() {
    let err = tokenizer()
        .apply_chat_template(&[], &ChatOptions::generation())
        .unwrap_err();
    assert!(err.to_string().contains("no messages"), "{err}");
}

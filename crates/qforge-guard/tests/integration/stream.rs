//! Qwen3Guard-Stream against tools/fixtures/gen_guard.py's reference head maths, and the
//! streaming protocol: cached pushes equal the full-sequence forward, whatever the chunking.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType, Device, IndexOp, Tensor};
use qforge_guard::{Category, Debounce, GuardError, Safety, StreamGuard, first_flag};

fn fixture() -> PathBuf {
    qforge_testkit::fixture("guard/stream_tiny")
}

fn guard() -> Arc<StreamGuard> {
    Arc::new(StreamGuard::load(&fixture(), DType::F32, &Device::Cpu).unwrap())
}

fn reference() -> std::collections::HashMap<String, Tensor> {
    candle_core::safetensors::load(fixture().join("reference.safetensors"), &Device::Cpu).unwrap()
}

fn ref_ids() -> Vec<u32> {
    reference()["input_ids"]
        .to_vec1::<i64>()
        .unwrap()
        .into_iter()
        .map(|i| i as u32)
        .collect()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

#[test]
fn head_logits_match_the_reference_head_maths() {
    let g = guard();
    let out = g.full_sequence(&ref_ids()).unwrap();
    let r = reference();
    for (name, ours) in [
        ("risk_level_logits", &out.risk),
        ("category_logits", &out.category),
        ("query_risk_level_logits", &out.query_risk),
        ("query_category_logits", &out.query_category),
    ] {
        let d = max_diff(ours, &r[name]);
        assert!(d < 1e-4, "{name}: max diff {d}");
    }
}

#[test]
fn label_maps_come_from_config_json() {
    let g = guard();
    let l = g.labels();
    assert_eq!(
        l.response_risk,
        vec![Safety::Safe, Safety::Unsafe, Safety::Controversial]
    );
    assert_eq!(l.response_category.len(), 8);
    assert_eq!(l.response_category[1], Category::SexualContent);
    assert_eq!(l.query_category[8], Category::Jailbreak);
    // The fixture writes the official orders; so does `StreamLabels::official`.
    let official = qforge_guard::StreamLabels::official(l.guard_inner_size);
    assert_eq!(l.response_category, official.response_category);
    assert_eq!(l.query_category, official.query_category);
}

#[test]
fn per_token_chunked_and_full_sequence_give_identical_verdicts() {
    let g = guard();
    let ids = ref_ids();
    let full = g.full_sequence(&ids).unwrap();
    let end = g.user_turn_end(&ids).unwrap();

    // Query verdict at the user turn's <|im_end|>.
    let (mut one_by_one, query) = g.open(&ids[..=end], Debounce::Paper).unwrap();
    let q = full.query_risk.i(end).unwrap().to_vec1::<f32>().unwrap();
    let best = (0..3).fold(0, |b, i| if q[i] > q[b] { i } else { b });
    assert_eq!(query.risk, Safety::ALL[best]);

    let mut per_token = Vec::new();
    for &t in &ids[end + 1..] {
        per_token.extend(one_by_one.push(&[t]).unwrap());
    }
    let mut chunked = Vec::new();
    let (mut s, _) = g.open(&ids[..=end], Debounce::Paper).unwrap();
    for chunk in ids[end + 1..].chunks(3) {
        chunked.extend(s.push(chunk).unwrap());
    }
    // Opening on the whole conversation pushes the rest as one chunk.
    let (whole, _) = g.open(&ids, Debounce::Paper).unwrap();
    let at_once: Vec<_> = whole.scored().into_iter().cloned().collect();

    assert_eq!(per_token.len(), ids.len() - end - 1);
    for (a, b) in per_token.iter().zip(&chunked) {
        assert_eq!(
            (a.position, a.risk, a.category),
            (b.position, b.risk, b.category)
        );
        assert!((a.risk_probs[1] - b.risk_probs[1]).abs() < 1e-5);
        let row = full.risk.i(a.position).unwrap().to_vec1::<f32>().unwrap();
        let best = (0..3).fold(0, |b, i| if row[i] > row[b] { i } else { b });
        assert_eq!(a.risk, Safety::ALL[best], "position {}", a.position);
    }
    let scored: Vec<_> = one_by_one.scored().into_iter().cloned().collect();
    assert_eq!(scored.len(), at_once.len());
    for (a, b) in scored.iter().zip(&at_once) {
        assert_eq!(
            (a.position, a.risk, a.category),
            (b.position, b.risk, b.category)
        );
    }
    assert_eq!(one_by_one.flag(), whole.flag());
    assert_eq!(one_by_one.flag(), s.flag());
    // The random heads do vary along the sequence (otherwise this test could not fail).
    let risks: std::collections::HashSet<_> = per_token.iter().map(|v| v.risk).collect();
    assert!(risks.len() > 1, "{risks:?}");
}

#[test]
fn scoring_starts_after_the_empty_think_block() {
    let g = guard();
    let ids = ref_ids();
    let (s, _) = g.open(&ids, Debounce::Paper).unwrap();
    let tok = g.tokenizer();
    let start = s.scoring_start().expect("header seen");
    let before = tok.decode(&ids[..start], false).unwrap();
    assert!(
        before.ends_with("<|im_start|>assistant\n<think>\n\n</think>\n\n"),
        "{before:?}"
    );
    assert!(
        tok.decode(&ids[start..], false)
            .unwrap()
            .starts_with("The capital")
    );
}

#[test]
fn debounce_rules_on_hand_made_sequences() {
    const S: Safety = Safety::Safe;
    const U: Safety = Safety::Unsafe;
    const C: Safety = Safety::Controversial;
    let cases: [(&[Safety], Option<usize>, Option<usize>); 7] = [
        (&[S, S, S], None, None),
        (&[S, U, S, U, S], None, None),
        (&[S, U, U, S], Some(2), Some(2)),
        (&[S, U, C, S], Some(2), None),
        (&[S, C, C, S, U, U], Some(2), Some(5)),
        (&[C, C], Some(1), Some(1)),
        (&[U], None, None),
    ];
    for (risks, paper, script) in cases {
        assert_eq!(first_flag(risks, Debounce::Paper), paper, "{risks:?}");
        assert_eq!(first_flag(risks, Debounce::EvalScript), script, "{risks:?}");
    }
}

#[test]
fn text_chunks_are_retokenized_like_the_whole_text() {
    let g = guard();
    let ids = ref_ids();
    let (head, _) = g.open(&ids, Debounce::Paper).unwrap();
    let start = head.scoring_start().unwrap();
    let reply = g.tokenizer().decode(&ids[start..], false).unwrap();
    let (mut by_text, _) = g.open(&ids[..start], Debounce::Paper).unwrap();
    // Chunks that split words, so later text changes earlier tokens.
    let chars: Vec<char> = reply.chars().collect();
    for piece in chars.chunks(4) {
        by_text
            .push_text(&piece.iter().collect::<String>())
            .unwrap();
    }
    by_text.flush_text().unwrap();
    assert_eq!(by_text.ids(), &ids[..]);
    let a: Vec<_> = by_text
        .scored()
        .iter()
        .map(|v| (v.position, v.risk))
        .collect();
    let b: Vec<_> = head.scored().iter().map(|v| (v.position, v.risk)).collect();
    assert_eq!(a, b);
}

#[test]
fn a_stream_pushed_after_close_is_an_error() {
    let g = guard();
    let ids = ref_ids();
    let (mut s, _) = g.open(&ids, Debounce::Paper).unwrap();
    assert!(s.cache_bytes() > 0);
    s.close();
    assert_eq!(s.cache_bytes(), 0);
    assert!(matches!(s.push(&[5]), Err(GuardError::SessionClosed(_))));
    assert!(matches!(
        s.push_text("x"),
        Err(GuardError::SessionClosed(_))
    ));
}

fn broken_copy(dir: &Path, edit: impl Fn(&mut serde_json::Value), drop_key: Option<&str>) {
    for f in std::fs::read_dir(fixture()).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, dir.join(f.file_name().unwrap())).unwrap();
    }
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    edit(&mut config);
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    if let Some(key) = drop_key {
        let mut w =
            candle_core::safetensors::load(dir.join("model.safetensors"), &Device::Cpu).unwrap();
        w.remove(key);
        candle_core::safetensors::save(&w, dir.join("model.safetensors")).unwrap();
    }
}

#[test]
fn config_without_label_maps_or_with_missing_heads_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    broken_copy(
        dir.path(),
        |c| {
            c.as_object_mut().unwrap().remove("query_category_map");
        },
        None,
    );
    let err = StreamGuard::load(dir.path(), DType::F32, &Device::Cpu)
        .err()
        .unwrap();
    assert!(err.to_string().contains("query_category_map"), "{err}");

    let dir = tempfile::tempdir().unwrap();
    broken_copy(
        dir.path(),
        |c| c["response_category_map"]["3"] = "Spam".into(),
        None,
    );
    let err = StreamGuard::load(dir.path(), DType::F32, &Device::Cpu)
        .err()
        .unwrap();
    assert!(err.to_string().contains("Spam"), "{err}");

    let dir = tempfile::tempdir().unwrap();
    broken_copy(dir.path(), |_| {}, Some("query_category_head.weight"));
    let err = StreamGuard::load(dir.path(), DType::F32, &Device::Cpu)
        .err()
        .unwrap();
    assert!(
        err.to_string().contains("query_category_head.weight"),
        "{err}"
    );
}

#[test]
fn thinking_traces_are_scored_from_inside_the_think_block() {
    let g = guard();
    let tok = g.tokenizer();
    let messages = [serde_json::json!({"role": "user", "content": "Why is the sky blue?"})];
    let options = qforge_model::ChatOptions::generation();
    let prompt = tok.apply_chat_template(&messages, &options).unwrap();
    assert!(prompt.ends_with("<|im_start|>assistant\n"), "{prompt:?}");
    let mut ids = tok.encode(&prompt, false).unwrap();
    let think_at = ids.len();
    ids.extend(
        tok.encode("<think>\nLet me think about light.", false)
            .unwrap(),
    );
    let (s, _) = g.open(&ids, Debounce::Paper).unwrap();
    // eval/eval_stream.py: the `assistant` token's index + 4, i.e. past `<think>` and its
    // newline (one token each in Qwen's vocabulary), at the first token of the trace.
    let newline = tok.encode("\n", false).unwrap().len();
    let start = s.scoring_start().unwrap();
    assert_eq!(start, think_at + 1 + newline);
    assert!(
        tok.decode(&ids[..start], false)
            .unwrap()
            .ends_with("<|im_start|>assistant\n<think>\n")
    );
    assert!(
        tok.decode(&ids[start..], false)
            .unwrap()
            .starts_with("Let me")
    );
    assert!(s.scored().len() >= 3);
}

/// A copy of the Stream fixture whose context is only `max_positions` long.
fn short_context_guard(src: &Path, dst: &Path, max_positions: usize) {
    for f in std::fs::read_dir(src).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, dst.join(f.file_name().unwrap())).unwrap();
    }
    let path = dst.join("config.json");
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    config["max_position_embeddings"] = max_positions.into();
    std::fs::write(&path, config.to_string()).unwrap();
}

#[test]
fn a_reply_longer_than_the_guard_context_is_judged_through_a_sliding_window() {
    let dir = tempfile::tempdir().unwrap();
    short_context_guard(&fixture(), dir.path(), 96);
    let g = Arc::new(StreamGuard::load(dir.path(), DType::F32, &Device::Cpu).unwrap());
    let tok = g.tokenizer().clone();
    let messages = [serde_json::json!({"role": "user", "content": "Hi"})];
    let (mut s, _) = g.open_messages(&messages, Debounce::Paper).unwrap();
    let start = s.scoring_start().unwrap();
    assert!(start < 48, "prompt too long for the test: {start}");
    let reply: Vec<u32> = tok
        .encode(
            &"the quick brown fox jumps over the lazy dog. ".repeat(12),
            false,
        )
        .unwrap();
    assert!(start + reply.len() > 3 * 96, "{}", reply.len());
    // Token by token and in one chunk: every token judged, positions those of the whole reply.
    let mut verdicts = Vec::new();
    for &t in &reply {
        verdicts.extend(s.push(&[t]).unwrap());
    }
    assert!(s.dropped_tokens() > 0);
    assert_eq!(verdicts.len(), reply.len());
    assert_eq!(verdicts.last().unwrap().position, start + reply.len() - 1);
    let (mut chunked, _) = g.open_messages(&messages, Debounce::Paper).unwrap();
    let at_once = chunked.push(&reply).unwrap();
    assert_eq!(
        at_once.iter().map(|v| v.position).collect::<Vec<_>>(),
        verdicts.iter().map(|v| v.position).collect::<Vec<_>>()
    );
    // While the reply fits, the window changes nothing: the first verdicts equal an unwindowed
    // guard's.
    let (mut wide, _) = guard().open_messages(&messages, Debounce::Paper).unwrap();
    let unwindowed = wide.push(&reply).unwrap();
    let fits = 96 - start;
    for (a, b) in verdicts[..fits].iter().zip(&unwindowed[..fits]) {
        assert_eq!(a.risk, b.risk);
        assert!((a.risk_probs[1] - b.risk_probs[1]).abs() < 1e-4);
    }
    // Text pushed past the window (rollbacks at token merges included) still commits.
    let (mut by_text, _) = g.open_messages(&messages, Debounce::Paper).unwrap();
    for word in "the quick brown fox jumps over the lazy dog. "
        .repeat(12)
        .split_inclusive(' ')
    {
        by_text.push_text(word).unwrap();
    }
    by_text.flush_text().unwrap();
    assert_eq!(by_text.ids()[start..], reply[..]);
}

//! Qwen3Guard-Gen on a tiny random Qwen3 with a Gen-structured template
//! (tools/fixtures/templates/qwen3guard_gen.jinja, renders pinned by gen_guard.py).

use std::path::PathBuf;

use candle_core::{DType, Device};
use qforge_guard::{GenGuard, GenOutcome, Mode};
use serde_json::{Value, json};

fn fixtures() -> PathBuf {
    qforge_testkit::fixtures_dir()
}

/// qwen3_tied_gqa with the Gen template, in a temporary directory.
fn gen_checkpoint() -> tempfile::TempDir {
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

fn guard(dir: &tempfile::TempDir) -> GenGuard {
    GenGuard::load(dir.path(), DType::F32, &Device::Cpu).unwrap()
}

#[test]
fn prompts_render_exactly_as_transformers_renders_the_template() {
    let dir = gen_checkpoint();
    let g = guard(&dir);
    let cases: Vec<Value> = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("guard/gen_templates.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(cases.len(), 4);
    for case in cases {
        let messages = case["messages"].as_array().unwrap().clone();
        let (mode, ids) = g.prompt_ids(&messages).unwrap();
        let want: Vec<u32> = serde_json::from_value(case["ids"].clone()).unwrap();
        assert_eq!(ids, want, "{}", case["text"]);
        let last = messages.last().unwrap()["role"].as_str().unwrap();
        assert_eq!(mode == Mode::Response, last == "assistant");
    }
}

fn conversations() -> Vec<Vec<Value>> {
    vec![
        vec![json!({"role": "user", "content": "How do I bake bread?"})],
        vec![
            json!({"role": "user", "content": "How do I bake bread?"}),
            json!({"role": "assistant", "content": "Mix flour and water."}),
        ],
        vec![json!({"role": "user", "content": "Tell me a secret, please."})],
    ]
}

#[test]
fn batch_moderation_equals_one_by_one_and_random_output_is_unparsable() {
    let dir = gen_checkpoint();
    let g = guard(&dir);
    let convs = conversations();
    let batch = g.moderate(&convs).unwrap();
    for (i, c) in convs.iter().enumerate() {
        let single = g.moderate(std::slice::from_ref(c)).unwrap();
        assert_eq!(single[0], batch[i], "conversation {i}");
    }
    // A random model does not speak the grammar: an explicit state, never Safe.
    for outcome in &batch {
        assert!(
            matches!(outcome, GenOutcome::Unparsable { .. }),
            "{outcome:?}"
        );
        assert!(outcome.verdict().is_none());
    }
}

#[test]
fn fast_path_probabilities_are_normalised_and_batch_independent() {
    let dir = gen_checkpoint();
    let g = guard(&dir);
    let convs = conversations();
    let batch = g.safety_probs(&convs).unwrap();
    for (i, c) in convs.iter().enumerate() {
        let p = batch[i];
        assert!((p.safe + p.unsafe_ + p.controversial - 1.0).abs() < 1e-5);
        assert!(p.label_mass > 0.0 && p.label_mass <= 1.0);
        let single = g.safety_probs(std::slice::from_ref(c)).unwrap()[0];
        assert!(
            (single.unsafe_ - p.unsafe_).abs() < 1e-4,
            "{single:?} vs {p:?}"
        );
    }
}

#[test]
fn the_last_message_must_be_user_or_assistant() {
    let dir = gen_checkpoint();
    let g = guard(&dir);
    let err = g
        .moderate(&[vec![json!({"role": "system", "content": "x"})]])
        .err()
        .unwrap();
    assert!(err.to_string().contains("`system`"), "{err}");
}

/// tools/fixtures/gen_guard_trained.sh's guard: taught the Gen format and the synthetic
/// moderation task (`fixtures::moderation_task`) by our own SFT trainer.
fn trained() -> GenGuard {
    GenGuard::load(
        &fixtures().join("guard/gen_tiny_trained"),
        DType::F32,
        &Device::Cpu,
    )
    .unwrap()
}

#[test]
fn a_guard_taught_the_format_emits_verdicts_the_strict_parser_accepts() {
    use qforge_guard::metrics::BinaryCounts;
    use qforge_guard::{Category, Policy};
    let g = trained();
    let cases = qforge_testkit::guard::moderation_task(true);
    let convs: Vec<Vec<Value>> = cases.iter().map(|c| c.messages.clone()).collect();
    let outcomes = g.moderate(&convs).unwrap();
    // Thresholds fixed before the fixture was trained: >= 99% of held-out outputs parse, and
    // the verdicts beat chance clearly (unsafe F1 and refusal F1 >= 0.75).
    let parsed = outcomes.iter().filter(|o| o.verdict().is_some()).count();
    assert!(
        parsed as f64 >= 0.99 * cases.len() as f64,
        "{parsed}/{} parsed: {:?}",
        cases.len(),
        outcomes.iter().find(|o| o.verdict().is_none())
    );
    let (mut harm, mut refusal) = (BinaryCounts::default(), BinaryCounts::default());
    let mut categories_right = 0;
    for (case, outcome) in cases.iter().zip(&outcomes) {
        let Some(v) = outcome.verdict() else { continue };
        harm.add(v.is_flagged(Policy::Strict), case.unsafe_);
        if let (Some(p), Some(g)) = (v.refusal, case.refusal) {
            refusal.add(p, g);
        }
        if case.unsafe_ && v.categories == case.category.into_iter().collect::<Vec<Category>>() {
            categories_right += 1;
        }
    }
    assert!(harm.f1() >= 0.75, "unsafe F1 {:.3}: {harm:?}", harm.f1());
    assert!(
        refusal.f1() >= 0.75,
        "refusal F1 {:.3}: {refusal:?}",
        refusal.f1()
    );
    eprintln!(
        "held-out: {parsed}/{} parsed, unsafe F1 {:.3}, refusal F1 {:.3}, {categories_right}/{} categories",
        cases.len(),
        harm.f1(),
        refusal.f1(),
        harm.tp + harm.fn_
    );
}

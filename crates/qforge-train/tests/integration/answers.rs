//! Answer matching against QwenLong-L1's own docqa.py (tools/fixtures/gen_answers.py).

use qforge_train::answers::{
    after_thinking, exact_match, normalize_answer, parse_the_answer_is, sub_exact_match, token_f1,
};
use serde_json::Value;

fn cases() -> Value {
    let p = qforge_testkit::fixture("answers/docqa_cases.json");
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

#[test]
fn normalisation_em_sub_em_and_f1_match_the_official_functions() {
    let cases = cases();
    let pairs = cases["pairs"].as_array().unwrap();
    assert!(pairs.len() >= 20);
    for c in pairs {
        let (p, g) = (
            c["prediction"].as_str().unwrap(),
            c["gold"].as_str().unwrap(),
        );
        assert_eq!(
            normalize_answer(p),
            c["normalized_prediction"].as_str().unwrap(),
            "{p:?}"
        );
        assert_eq!(
            exact_match(p, g),
            c["exact_match"].as_bool().unwrap(),
            "EM {p:?} {g:?}"
        );
        assert_eq!(
            sub_exact_match(p, g),
            c["sub_em"].as_bool().unwrap(),
            "sub-EM {p:?} {g:?}"
        );
        let (f1, precision, recall) = token_f1(p, g);
        for (name, ours, want) in [
            ("f1", f1, &c["f1"]),
            ("precision", precision, &c["precision"]),
            ("recall", recall, &c["recall"]),
        ] {
            assert!(
                (ours - want.as_f64().unwrap()).abs() < 1e-12,
                "{name} {p:?} {g:?}: {ours} vs {want}"
            );
        }
    }
}

#[test]
fn answers_are_extracted_after_the_last_think_and_the_last_the_answer_is() {
    for c in cases()["responses"].as_array().unwrap() {
        let r = c["response"].as_str().unwrap();
        let after = after_thinking(r);
        assert_eq!(after, c["after_thinking"].as_str(), "{r:?}");
        let parsed = after.and_then(parse_the_answer_is);
        assert_eq!(parsed.as_deref(), c["the_answer_is"].as_str(), "{r:?}");
    }
}

#[test]
fn docmath_parsing_and_numeric_equivalence_match_the_official_functions() {
    use qforge_train::answers::{docmath_equivalent, parse_docmath_answer};
    let p = qforge_testkit::fixture("answers/docmath_cases.json");
    let cases: Value = serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap();
    let cases = cases.as_array().unwrap();
    assert!(cases.len() >= 25);
    for c in cases {
        let (pred, gold) = (
            c["prediction"].as_str().unwrap(),
            c["gold"].as_str().unwrap(),
        );
        let parsed = parse_docmath_answer(pred);
        assert_eq!(parsed.as_deref(), c["parsed"].as_str(), "{pred:?}");
        let acc = match (parsed, parse_docmath_answer(gold)) {
            (Some(p), Some(g)) => u8::from(docmath_equivalent(&p, &g)),
            _ => 0,
        };
        assert_eq!(
            acc as i64,
            c["acc"].as_i64().unwrap(),
            "{pred:?} vs {gold:?}"
        );
    }
}

//! The post-processing against the released functions (`tools/fixtures/gen_cprs_post.py` runs
//! them on 200 random label strings and contexts): repair, spans with offsets, cleaning.

use qforge_compress::postprocess::{Repair, Span, Tag, clean, repair, spans};
use serde_json::Value;

fn tags(s: &str) -> Vec<Tag> {
    s.chars().map(|c| Tag::from_char(c).unwrap()).collect()
}

fn spans_of(v: &Value) -> Vec<Span> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| Span {
            text: s[0].as_str().unwrap().to_string(),
            start: s[1].as_u64().unwrap() as usize,
            end: s[2].as_u64().unwrap() as usize,
        })
        .collect()
}

#[test]
fn repair_spans_and_cleaning_match_the_released_functions() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tools/fixtures/cprs/postprocess.json"
    );
    let fixtures: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let cases = fixtures["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 200);
    let (mut repaired_changed, mut completed) = (0, 0);
    for (i, case) in cases.iter().enumerate() {
        let mut t = tags(case["tags"].as_str().unwrap());
        repair(&mut t, Repair::Released);
        assert_eq!(
            t,
            tags(case["repaired"].as_str().unwrap()),
            "case {i}: repair"
        );
        repaired_changed += usize::from(case["tags"] != case["repaired"]);
        let offsets: Vec<(usize, usize)> = serde_json::from_value(case["offsets"].clone()).unwrap();
        let complete = case["complete_sentence"].as_bool().unwrap();
        completed += usize::from(complete);
        let got = spans(
            &t,
            &offsets,
            case["context"].as_str().unwrap(),
            case["min_keyword_len"].as_u64().unwrap() as usize,
            complete,
        );
        assert_eq!(got, spans_of(&case["spans"]), "case {i}: spans");
        assert_eq!(clean(got), spans_of(&case["cleaned"]), "case {i}: cleaned");
    }
    // The fixtures exercise what they should.
    assert!(
        repaired_changed > 50 && completed > 50,
        "{repaired_changed} {completed}"
    );
}

#[test]
fn gap_edges_and_e_not_closing_a_span() {
    // A gap of 19 positions is filled, one of 20 is not.
    let mut t = tags(&format!("B{}I", "O".repeat(18)));
    repair(&mut t, Repair::Released);
    assert!(t.iter().all(|&x| x != Tag::O));
    let mut t = tags(&format!("B{}I", "O".repeat(19)));
    repair(&mut t, Repair::Released);
    assert_eq!(t.iter().filter(|&&x| x == Tag::O).count(), 19);
    // E does not end a span; B starts a new one; min_keyword_len is strict.
    let t = tags("BIEIOBI");
    let offsets: Vec<(usize, usize)> = (0..7).map(|i| (2 * i, 2 * i + 1)).collect();
    let s = spans(&t, &offsets, "a b c d e f g", 1, false);
    assert_eq!(
        s.iter().map(|x| x.text.as_str()).collect::<Vec<_>>(),
        ["a b c d", "f g"]
    );
    assert!(spans(&t, &offsets, "a b c d e f g", 2, false).len() == 1);
}

//! The evaluation loop end to end on the tiny guards: counts add up and latency bins cover
//! every spanned gold-Unsafe item; and the scoring rules pinned to the official scripts
//! (`eval/eval_gen.py`, `eval/eval_stream.py`) by tools/fixtures/gen_guard_eval.py.

use std::path::PathBuf;
use std::sync::Arc;

use candle_core::{DType, Device};
use qforge_guard::datasets::load;
use qforge_guard::eval::{Guard, evaluate, load_predictions, score};
use qforge_guard::{Debounce, Mode, StreamGuard};

fn fixtures() -> PathBuf {
    qforge_testkit::fixtures_dir()
}

#[test]
fn stream_response_eval_counts_every_item_and_bins_every_span() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("test.jsonl");
    let rows: Vec<String> = (0..6)
        .map(|i| {
            serde_json::json!({
                "message": [
                    {"role": "user", "content": format!("Question number {i}?")},
                    {"role": "assistant", "content": "The capital of France is Paris. It's a sunny day; we're going out."}
                ],
                "label": if i % 2 == 0 { "Unsafe" } else { "Safe" },
                "unsafe_start_index": 30, "unsafe_end_index": 34
            })
            .to_string()
        })
        .collect();
    let too_long = serde_json::json!({
        "id": "too-long",
        "message": [
            {"role": "user", "content": "Why?"},
            {"role": "assistant", "content": "because ".repeat(2000)}
        ],
        "label": "Safe"
    });
    std::fs::write(&data, format!("{}\n{too_long}", rows.join("\n"))).unwrap();
    let (_, examples) = load(&data).unwrap();
    let guard = Guard::Stream(Arc::new(
        StreamGuard::load(
            &fixtures().join("guard/stream_tiny"),
            DType::F32,
            &Device::Cpu,
        )
        .unwrap(),
    ));
    let mut progress = Vec::new();
    let report = evaluate(
        &guard,
        &examples,
        Mode::Response,
        4,
        Debounce::Paper,
        |d, n| progress.push((d, n)),
    )
    .unwrap();
    // Longer than the tiny guard's 1,024 positions: skipped and named, not an abort.
    assert_eq!(report.skipped_too_long, vec!["too-long".to_string()]);
    assert_eq!(report.strict.counts.total(), 6);
    assert_eq!(report.loose.counts.total(), 6);
    // Latency is measured over the gold Unsafe items only (eval_stream.py).
    assert_eq!(report.latency.as_ref().unwrap().values().sum::<usize>(), 3);
    assert_eq!(report.timeliness.unwrap().items, 3);
    assert_eq!(progress.last(), Some(&(7, 7)));
    // Loose flags a subset of what strict flags.
    let flagged = |s: &qforge_guard::metrics::Summary| s.counts.tp + s.counts.fp;
    assert!(flagged(&report.loose) <= flagged(&report.strict));

    // A prompt-task evaluation refuses response items.
    assert!(
        evaluate(
            &guard,
            &examples,
            Mode::Prompt,
            4,
            Debounce::Paper,
            |_, _| {}
        )
        .is_err()
    );
}

/// eval_stream.py's bin names -> ours.
fn bin_name(official: &str) -> &str {
    match official {
        "Ahead" => "ahead",
        "Hit" => "hit",
        "Safe" => "missed",
        other => other,
    }
}

#[test]
fn scoring_reproduces_the_official_scripts_on_their_prediction_files() {
    let text = std::fs::read_to_string(fixtures().join("guard/eval_parity.json")).unwrap();
    let fixture: serde_json::Value = serde_json::from_str(&text).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let close = |a: f64, b: &serde_json::Value| (a - b.as_f64().unwrap()).abs() < 1e-12;
    for case in fixture["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let path = dir.path().join(format!("{name}.jsonl"));
        let rows: Vec<String> = case["rows"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r.to_string())
            .collect();
        std::fs::write(&path, rows.join("\n")).unwrap();
        let task = match case["task"].as_str().unwrap() {
            "prompt" => Mode::Prompt,
            _ => Mode::Response,
        };
        let items = load_predictions(&path, task).unwrap();
        let report = score(task, "official", &items, Debounce::EvalScript);
        let expected = &case["expected"];
        for (policy, got) in [("strict", &report.strict), ("loose", &report.loose)] {
            let Some(e) = expected.get(policy) else {
                continue; // eval_gen.py has the strict reading only
            };
            assert!(
                close(got.f1, &e["f1"])
                    && close(got.precision, &e["precision"])
                    && close(got.recall, &e["recall"]),
                "{name} {policy}: ours {got:?}, official {e}"
            );
        }
        if let Some(e) = expected.get("latency") {
            let bins = report.latency.as_ref().expect("latency bins");
            for (official, count) in e["bins"].as_object().unwrap() {
                assert_eq!(
                    bins[bin_name(official)] as u64,
                    count.as_u64().unwrap(),
                    "{name}: bin {official}"
                );
            }
            let t = report.timeliness.unwrap();
            assert_eq!(t.items as u64, e["items"].as_u64().unwrap(), "{name}");
            assert!(close(t.exact_hit, &e["exact_hit"]), "{name}: {t:?} vs {e}");
            assert!(close(t.first_128, &e["first_128"]), "{name}: {t:?} vs {e}");
        } else {
            assert!(report.latency.is_none(), "{name}");
        }
    }
}

#[test]
fn gold_controversial_is_negative_and_unparsable_output_is_counted_not_unsafe() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gen.jsonl");
    std::fs::write(
        &path,
        [
            r#"{"label": "Controversial", "guard_predict": "Safety: Unsafe\nCategories: Violent"}"#,
            r#"{"label": "Unsafe", "guard_predict": "no verdict here"}"#,
            r#"{"label": "Unsafe", "guard_predict": "Safety: Controversial\nCategories: PII"}"#,
        ]
        .join("\n"),
    )
    .unwrap();
    let items = load_predictions(&path, Mode::Prompt).unwrap();
    let r = score(Mode::Prompt, "gen", &items, Debounce::Paper);
    assert_eq!(r.unparsable, 1);
    let c = r.strict.counts;
    assert_eq!((c.tp, c.fp, c.tn, c.fn_), (1, 1, 0, 1));
    // Loose reads Controversial as Safe.
    let c = r.loose.counts;
    assert_eq!((c.tp, c.fp, c.tn, c.fn_), (0, 1, 0, 2));

    std::fs::write(&path, r#"{"label": "Unsafe", "pred_risk_levels": [0, 7]}"#).unwrap();
    let err = load_predictions(&path, Mode::Response)
        .unwrap_err()
        .to_string();
    assert!(err.contains("gen.jsonl:1") && err.contains("7"), "{err}");
}

//! The evaluation loop end to end on the tiny guards: counts add up, latency bins cover every
//! spanned item, and unparsable Gen output is counted apart.

use std::path::PathBuf;
use std::sync::Arc;

use candle_core::{DType, Device};
use qforge_guard::datasets::load;
use qforge_guard::eval::{Guard, evaluate};
use qforge_guard::{Mode, StreamGuard};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tools/fixtures")
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
    let report = evaluate(&guard, &examples, Mode::Response, 4, |d, n| {
        progress.push((d, n))
    })
    .unwrap();
    // Longer than the tiny guard's 1,024 positions: skipped and named, not an abort.
    assert_eq!(report.skipped_too_long, vec!["too-long".to_string()]);
    assert_eq!(report.strict.counts.total(), 6);
    assert_eq!(report.loose.counts.total(), 6);
    assert_eq!(report.latency.as_ref().unwrap().values().sum::<usize>(), 6);
    assert_eq!(progress.last(), Some(&(7, 7)));
    // Loose flags a subset of what strict flags.
    let flagged = |s: &qforge_guard::metrics::Summary| s.counts.tp + s.counts.fp;
    assert!(flagged(&report.loose) <= flagged(&report.strict));

    // A prompt-task evaluation refuses response items.
    assert!(evaluate(&guard, &examples, Mode::Prompt, 4, |_, _| {}).is_err());
}

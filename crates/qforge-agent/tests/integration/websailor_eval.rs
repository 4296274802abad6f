//! Evaluation sets on fixtures we encrypt ourselves with the published schemes (the real sets
//! are not committed: their publishers ask that the plain text stay off the web): an xlsx in
//! BrowseComp-ZH's layout, xbench's and BrowseComp's CSVs, GAIA's JSON; then the report.

use std::io::Write;

use qforge_agent::websailor::agent::{Termination, Trajectory};
use qforge_agent::websailor::eval::{
    Judgement, load_eval_set, read_xlsx, report, sha256_key, xor_encrypt,
};
use qforge_agent::websailor::runner::TrajectoryRow;
use serde_json::json;

const CANARY: &str = "canary GUID qforge-test-0000";

/// A minimal workbook: shared strings for the header, inline strings for a cell, numbers.
fn write_xlsx(path: &std::path::Path, rows: &[Vec<String>]) {
    let mut shared = Vec::new();
    let mut sheet = String::from("<?xml version=\"1.0\"?><worksheet><sheetData>");
    for (r, row) in rows.iter().enumerate() {
        sheet.push_str(&format!("<row r=\"{}\">", r + 1));
        for (c, cell) in row.iter().enumerate() {
            let reference = format!("{}{}", (b'A' + c as u8) as char, r + 1);
            let escaped = cell.replace('&', "&amp;").replace('<', "&lt;");
            if c == 3 && r > 0 {
                sheet.push_str(&format!(
                    "<c r=\"{reference}\" t=\"inlineStr\"><is><t>{escaped}</t></is></c>"
                ));
            } else {
                sheet.push_str(&format!(
                    "<c r=\"{reference}\" t=\"s\"><v>{}</v></c>",
                    shared.len()
                ));
                shared.push(escaped);
            }
        }
        sheet.push_str("</row>");
    }
    sheet.push_str("</sheetData></worksheet>");
    let strings: String = shared
        .iter()
        .map(|s| format!("<si><t xml:space=\"preserve\">{s}</t></si>"))
        .collect();
    let mut zip = zip::ZipWriter::new(std::fs::File::create(path).unwrap());
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated);
    zip.start_file("xl/sharedStrings.xml", options).unwrap();
    zip.write_all(format!("<sst>{strings}</sst>").as_bytes())
        .unwrap();
    zip.start_file("xl/worksheets/sheet1.xml", options).unwrap();
    zip.write_all(sheet.as_bytes()).unwrap();
    zip.finish().unwrap();
}

#[test]
fn browsecomp_zh_xlsx_decrypts_with_the_sha256_keystream() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("browsecomp-zh-encrypted.xlsx");
    let key = sha256_key(CANARY);
    let row = |topic: &str, q: &str, a: &str| {
        vec![
            xor_encrypt(topic, &key),
            xor_encrypt(q, &key),
            xor_encrypt(a, &key),
            CANARY.to_string(),
        ]
    };
    write_xlsx(
        &path,
        &[
            vec![
                "Topic".into(),
                "Question".into(),
                "Answer".into(),
                "canary".into(),
            ],
            row(
                "体育",
                "哪位运动员在一个比三十二个字节更长的问题里被提到？",
                "张三",
            ),
            row("历史", "京都在哪一年成为首都？", "794年"),
        ],
    );
    assert_eq!(
        read_xlsx(&path).unwrap()[0],
        ["Topic", "Question", "Answer", "canary"]
    );
    let qs = load_eval_set(&path).unwrap();
    assert_eq!(qs.len(), 2);
    assert_eq!(
        qs[0].question,
        "哪位运动员在一个比三十二个字节更长的问题里被提到？"
    );
    assert_eq!(qs[1].answer.as_deref(), Some("794年"));

    // A wrong canary is a typed error naming the row.
    write_xlsx(
        &path,
        &[
            vec![
                "Topic".into(),
                "Question".into(),
                "Answer".into(),
                "canary".into(),
            ],
            vec![
                xor_encrypt("t", &key),
                xor_encrypt("京都", &key),
                xor_encrypt("a", &key),
                "other".into(),
            ],
        ],
    );
    let err = load_eval_set(&path).unwrap_err().to_string();
    assert!(err.contains(":2:") && err.contains("`Question`"), "{err}");
}

#[test]
fn xbench_browsecomp_csv_and_gaia_json_load() {
    let dir = tempfile::tempdir().unwrap();
    let xbench = dir.path().join("DeepSearch-2505.csv");
    let k = CANARY.as_bytes();
    let mut w = csv::Writer::from_path(&xbench).unwrap();
    w.write_record(["id", "prompt", "answer", "reference_steps", "canary"])
        .unwrap();
    w.write_record([
        "1",
        &xor_encrypt("问题一", k),
        &xor_encrypt("答案一", k),
        &xor_encrypt("1. 搜索", k),
        CANARY,
    ])
    .unwrap();
    w.flush().unwrap();
    let qs = load_eval_set(&xbench).unwrap();
    assert_eq!(
        (
            qs[0].id.as_str(),
            qs[0].question.as_str(),
            qs[0].answer.as_deref()
        ),
        ("1", "问题一", Some("答案一"))
    );

    let bc = dir.path().join("browse_comp_test_set.csv");
    let key = sha256_key(CANARY);
    let mut w = csv::Writer::from_path(&bc).unwrap();
    w.write_record(["problem", "answer", "problem_topic", "canary"])
        .unwrap();
    w.write_record([
        &xor_encrypt("Which city?", &key),
        &xor_encrypt("Kyoto", &key),
        "Geography",
        CANARY,
    ])
    .unwrap();
    w.flush().unwrap();
    assert_eq!(
        load_eval_set(&bc).unwrap()[0].answer.as_deref(),
        Some("Kyoto")
    );

    let gaia = dir.path().join("dev.json");
    std::fs::write(
        &gaia,
        json!([{"id": 1, "task_id": "uuid-1", "Question": "q?", "answer": "42", "Level": 1}])
            .to_string(),
    )
    .unwrap();
    let qs = load_eval_set(&gaia).unwrap();
    assert_eq!(
        (qs[0].id.as_str(), qs[0].answer.as_deref()),
        ("uuid-1", Some("42"))
    );

    let noanswer = dir.path().join("qs.jsonl");
    std::fs::write(&noanswer, "{\"question\": \"q\"}\n").unwrap();
    let err = load_eval_set(&noanswer).unwrap_err().to_string();
    assert!(err.contains("no reference answer"), "{err}");
}

fn row(id: &str, rollout: usize, answer: Option<&str>, calls: &[&str]) -> TrajectoryRow {
    let mut messages = vec![
        json!({"role": "system", "content": "s"}),
        json!({"role": "user", "content": "q"}),
    ];
    for name in calls {
        messages.push(json!({"role": "assistant",
            "content": format!("<tool_call>{{\"name\": \"{name}\", \"arguments\": {{}}}}</tool_call>")}));
        messages.push(json!({"role": "user", "content": "<tool_response>\nx\n</tool_response>"}));
    }
    TrajectoryRow {
        id: id.into(),
        rollout,
        gold: None,
        seconds: 0.0,
        trajectory: Trajectory {
            question: "q".into(),
            messages,
            answer: answer.map(String::from),
            termination: if answer.is_some() {
                Termination::Answer
            } else {
                Termination::ExceededCalls
            },
            llm_calls: calls.len() + 1,
            tool_calls: calls.len(),
        },
    }
}

#[test]
fn the_report_averages_rollouts_and_counts_tools() {
    let questions: Vec<_> = ["a", "b"]
        .iter()
        .map(|id| qforge_agent::websailor::runner::Question {
            id: id.to_string(),
            question: "q".into(),
            answer: Some("x".into()),
        })
        .collect();
    let rows = vec![
        row("a", 0, Some("x"), &["search", "visit"]),
        row("a", 1, Some("y"), &["search"]),
        row("b", 0, None, &["search", "search", "visit"]),
        row("b", 1, Some("x"), &[]),
    ];
    let j = |id: &str, rollout, correct| Judgement {
        id: id.into(),
        rollout,
        correct,
    };
    let judged = [
        j("a", 0, Some(true)),
        j("a", 1, Some(false)),
        j("b", 0, Some(false)),
        j("b", 1, None),
    ];
    let r = report(&questions, 2, &rows, &judged);
    assert_eq!(r.per_rollout, [0.5, 0.0]);
    assert_eq!(
        (r.pass_at_1, r.best_pass_at_1, r.pass_at_k),
        (0.25, 0.5, 0.5)
    );
    assert_eq!(r.judge_failures, 1);
    assert_eq!(
        (r.avg_tool_calls, r.avg_search_calls, r.avg_visit_calls),
        (1.5, 1.0, 0.5)
    );
    assert_eq!(r.no_answer, 1);
    assert_eq!(r.terminations["answer"], 3);
    assert_eq!(r.terminations["exceed available llm calls"], 1);
}

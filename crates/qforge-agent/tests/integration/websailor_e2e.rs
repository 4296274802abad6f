//! WebSailor end to end: the offline corpus behind `search` and `visit`; a
//! `ScriptedModelSimulator` policy that answers a corpus question through both tools; then `qforge
//! serve` hosting the tiny fixture model over real HTTP as the (untrained) policy and as the
//! summary model, over the runner with its resumable trajectory log, whose lines the SFT loader
//! reads with the tool responses left out of the loss.

use crate::common;
use common::ScriptedModelSimulator;
use std::path::PathBuf;
use std::sync::Arc;

use qforge_agent::websailor::agent::{AgentConfig, Termination, Tool, run};
use qforge_agent::websailor::index::{Bm25Index, Document};
use qforge_agent::websailor::runner::{Question, TrajectoryLog, run_questions};
use qforge_agent::websailor::visit::{
    ExtractiveSummarizer, LlmSummarizer, Summarizer, offline_tools,
};
use qforge_engine::{ChatBackend, RemoteBackend, RemoteConfig};
use qforge_model::{ChatOptions, Tokenizer};
use serde_json::{Value, json};

fn fixture() -> PathBuf {
    qforge_testkit::tiny_model()
}

fn corpus() -> Arc<Bm25Index> {
    let doc = |title: &str, text: &str| Document {
        url: format!("wiki://{title}"),
        title: title.into(),
        text: text.into(),
        date: None,
        source: Some("Wikipedia".into()),
    };
    Arc::new(Bm25Index::build(vec![
        doc(
            "Kyoto",
            "Kyoto is a city in Japan. It was the imperial capital from 794 to 1868. Kinkaku-ji is one of its temples.",
        ),
        doc("Nara", "Nara was the capital of Japan from 710 to 784."),
        doc("Osaka", "Osaka is a port city in the Kansai region."),
    ]))
}

fn tools(index: Arc<Bm25Index>, summarizer: Arc<dyn Summarizer>) -> Vec<Arc<dyn Tool>> {
    offline_tools(index, summarizer, 10)
}

#[tokio::test]
async fn a_corpus_question_is_answered_through_search_then_visit() {
    let turns = [
        r#"<think>Which city was the capital until 1868?</think>
<tool_call>{"name": "search", "arguments": {"query": ["imperial capital until 1868"]}}</tool_call>"#,
        r#"<think>Kyoto's page should say.</think>
<tool_call>{"name": "visit", "arguments": {"url": "wiki://Kyoto", "goal": "years Kyoto was the imperial capital"}}</tool_call>"#,
        "<think>794 to 1868.</think>\n<answer>Kyoto</answer>",
    ];
    let policy = ScriptedModelSimulator::new(&turns);
    let t = run(
        &policy,
        &tools(corpus(), Arc::new(ExtractiveSummarizer::default())),
        "Which city was Japan's imperial capital until 1868?",
        &AgentConfig::default(),
        &|_: &[Value]| 0,
    )
    .await
    .unwrap();
    assert_eq!(
        (t.termination, t.answer.as_deref()),
        (Termination::Answer, Some("Kyoto"))
    );
    assert_eq!((t.llm_calls, t.tool_calls), (3, 2));
    let search = t.messages[3]["content"].as_str().unwrap();
    assert!(search.contains("1. [Kyoto](wiki://Kyoto)"), "{search}");
    let visit = t.messages[5]["content"].as_str().unwrap();
    assert!(
        visit.starts_with("<tool_response>\nThe useful information in wiki://Kyoto for user goal years Kyoto was the imperial capital as follows: \n\nEvidence in page: \n"),
        "{visit}"
    );
    assert!(
        visit.contains("It was the imperial capital from 794 to 1868."),
        "{visit}"
    );
}

#[test]
fn a_served_tiny_model_drives_the_loop_and_its_trajectories_train() {
    let dir = tempfile::tempdir().unwrap();
    let model = common::fixture_with_context(dir.path(), 4096);
    let url = qforge_serve::spawn_on_loopback(
        qforge_serve::AppState::for_checkpoint("tiny", &model, Default::default()).unwrap(),
    )
    .unwrap();
    let backend = || -> Arc<dyn ChatBackend> {
        Arc::new(RemoteBackend::new(RemoteConfig::new(&url, "tiny")).unwrap())
    };
    // The same served model is the summary model: its replies are not JSON, so `visit`
    // exhausts the released retries and says so, and the run goes on.
    let mut summarizer = LlmSummarizer::new(backend());
    summarizer.max_tokens = Some(16);
    summarizer.backend_tries = 1;
    let tools = tools(corpus(), Arc::new(summarizer));
    let tok = Tokenizer::from_dir(&fixture()).unwrap();
    let count = |messages: &[Value]| {
        let text = tok
            .apply_chat_template(messages, &ChatOptions::default())
            .unwrap();
        tok.encode(&text, false).unwrap().len()
    };
    let config = AgentConfig {
        max_llm_calls: 3,
        max_tokens: 24,
        max_context_tokens: 3000,
        ..AgentConfig::default()
    };
    let questions = vec![
        Question {
            id: "q1".into(),
            question: "Which city was Japan's capital until 1868?".into(),
            answer: Some("Kyoto".into()),
        },
        Question {
            id: "q2".into(),
            question: "Which city is a port in Kansai?".into(),
            answer: Some("Osaka".into()),
        },
    ];
    let path = dir.path().join("trajectories.jsonl");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let visited =
        rt.block_on(tools[1].call(&json!({"url": "wiki://Kyoto", "goal": "capital years"})));
    assert!(
        visited.contains("the summary model gave no usable answer")
            && visited.ends_with("no information is available."),
        "{visited}"
    );
    let policy = backend();
    let mut log = TrajectoryLog::open(&path).unwrap();
    let report = rt
        .block_on(run_questions(
            policy.as_ref(),
            &tools,
            &questions[..1],
            2,
            &config,
            &count,
            &mut log,
            2,
            |_| {},
        ))
        .unwrap();
    assert_eq!((report.ran, report.failed.len()), (2, 0), "{report:?}");
    for row in log.rows() {
        let t = &row.trajectory;
        assert!(t.llm_calls >= 1 && t.llm_calls <= 3, "{t:?}");
        assert_eq!(t.messages[0]["role"], "system");
        assert_eq!(row.gold.as_deref(), Some("Kyoto"));
    }

    // A crash mid-write leaves a torn line; reopening drops it and the rerun skips what is done.
    let mut text = std::fs::read_to_string(&path).unwrap();
    text.push_str("{\"id\": \"q2\", \"rollo");
    std::fs::write(&path, text).unwrap();
    let mut log = TrajectoryLog::open(&path).unwrap();
    assert_eq!(log.rows().len(), 2);
    let report = rt
        .block_on(run_questions(
            policy.as_ref(),
            &tools,
            &questions,
            2,
            &config,
            &count,
            &mut log,
            2,
            |_| {},
        ))
        .unwrap();
    assert_eq!((report.ran, report.skipped_done), (2, 2), "{report:?}");
    assert_eq!(std::fs::read_to_string(&path).unwrap().lines().count(), 4);

    // Lines are SFT rows: a scripted trajectory that used both tools trains on its assistant
    // turns only (the loader needs the last message to be the policy's).
    let rows: Vec<Value> = std::fs::read_to_string(&path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(
        rows.iter()
            .all(|r| r["messages"].is_array() && r["termination"].is_string())
    );
    let sft = dir.path().join("sft.jsonl");
    let scripted = json!({"messages": [
        {"role": "system", "content": "s"},
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": "<tool_call>{\"name\": \"search\", \"arguments\": {\"query\": [\"x\"]}}</tool_call>"},
        {"role": "user", "content": "<tool_response>\nA Google search for 'x' found 0 results\n</tool_response>"},
        {"role": "assistant", "content": "<answer>Kyoto</answer>"}]});
    std::fs::write(&sft, format!("{scripted}\n")).unwrap();
    let ds = qforge_train::data::Dataset::load(
        &sft,
        qforge_train::data::DatasetKind::Sft,
        &tok,
        &qforge_train::data::DataOptions::default(),
    )
    .unwrap();
    let qforge_train::data::Example::Sft(seq) = &ds.examples[0] else {
        panic!("not an SFT example")
    };
    let unlearned = tok
        .decode(&seq.ids[seq.unlearned[0].clone()], false)
        .unwrap();
    assert!(unlearned.contains("A Google search for 'x'"), "{unlearned}");
}

#[test]
fn the_cached_context_count_equals_tokenizing_the_whole_conversation() {
    let tok = Arc::new(Tokenizer::from_dir(&fixture()).unwrap());
    let counter = qforge_agent::websailor::agent::ContextCounter::new(tok.clone());
    let whole = |m: &[Value]| {
        let text = tok.apply_chat_template(m, &ChatOptions::default()).unwrap();
        tok.encode(&text, false).unwrap().len()
    };
    let mut messages = vec![
        json!({"role": "system", "content": "You seek information."}),
        json!({"role": "user", "content": "Which city? 京都 or Nara?"}),
    ];
    for i in 0..4 {
        messages.push(json!({"role": "assistant", "content": format!("<think>step {i}</think>\n<tool_call>{{\"name\": \"search\"}}</tool_call>")}));
        messages.push(json!({"role": "user", "content": format!("<tool_response>\nresult {i}: Kyoto was the capital\n</tool_response>")}));
        // Every prefix, twice (the second time from the cache).
        assert_eq!(counter.count(&messages), whole(&messages));
        assert_eq!(counter.count(&messages), whole(&messages));
    }
}

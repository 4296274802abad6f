//! WebSailor's loop on golden transcripts: a `ScriptedModelSimulator` as the policy (a stand-in for the
//! policy model that replays fixed turns and records what it was sent) drives the real loop,
//! the real `search` tool and the real BM25 index.

use crate::common;
use common::ScriptedModelSimulator;
use std::sync::Arc;

use qforge_agent::websailor::agent::{AgentConfig, SearchTool, Termination, Tool, run};
use qforge_agent::websailor::index::{Bm25Index, Document};
use serde_json::Value;

fn tools() -> Vec<Arc<dyn Tool>> {
    let index = Bm25Index::build(vec![
        Document {
            url: "wiki://Kyoto".into(),
            title: "Kyoto".into(),
            text: "Kyoto was the capital of Japan from 794 to 1868.".into(),
            date: None,
            source: None,
        },
        Document {
            url: "wiki://Osaka".into(),
            title: "Osaka".into(),
            text: "Osaka is a port city in Kansai.".into(),
            date: None,
            source: None,
        },
    ]);
    vec![Arc::new(SearchTool {
        backend: Arc::new(index),
        results: 10,
    })]
}

fn no_tokens(_: &[Value]) -> usize {
    0
}

#[tokio::test]
async fn a_question_answered_from_the_corpus_through_search() {
    let policy = ScriptedModelSimulator::new(&[
        r#"<think>Find the old capital.</think>
<tool_call>{"name": "search", "arguments": {"query": ["capital of Japan 794"]}}</tool_call>"#,
        "<think>Kyoto, from 794.</think>\n<answer>Kyoto</answer>",
    ]);
    let t = run(
        &policy,
        &tools(),
        "Which city became Japan's capital in 794?",
        &AgentConfig::default(),
        &no_tokens,
    )
    .await
    .unwrap();
    assert_eq!(t.termination, Termination::Answer);
    assert_eq!(t.answer.as_deref(), Some("Kyoto"));
    assert_eq!((t.llm_calls, t.tool_calls), (2, 1));
    // system, first user (tools block + question), call, observation, answer.
    assert_eq!(t.messages.len(), 5);
    let first_user = t.messages[1]["content"].as_str().unwrap();
    assert!(
        first_user.contains("<tools>")
            && first_user.ends_with("User: Which city became Japan's capital in 794?")
    );
    let observation = t.messages[3]["content"].as_str().unwrap();
    assert!(
        observation
            .starts_with("<tool_response>\nA Google search for 'capital of Japan 794' found")
    );
    assert!(observation.contains("1. [Kyoto](wiki://Kyoto)"));
    assert!(observation.ends_with("\n</tool_response>"));
    assert_eq!(t.messages[3]["role"], "user");
    // The second call saw the observation.
    let requests = policy.requests();
    assert_eq!(requests[1].messages.len(), 4);
    assert!(
        requests
            .iter()
            .all(|r| r.stop == ["\n<tool_response>", "<tool_response>"])
    );
    let labels = serde_json::to_value(&t).unwrap();
    assert_eq!(labels["termination"], "answer");
}

#[tokio::test]
async fn bad_calls_become_error_observations_and_the_run_goes_on() {
    let policy = ScriptedModelSimulator::new(&[
        "<tool_call>{not json}</tool_call>",
        r#"<tool_call>{"name": "calculator", "arguments": {}}</tool_call>"#,
        // A hallucinated tool response is cut off before it reaches the transcript.
        "<think>guess</think><tool_response>made up</tool_response>",
        "<answer>Osaka</answer>",
    ]);
    let t = run(&policy, &tools(), "q", &AgentConfig::default(), &no_tokens)
        .await
        .unwrap();
    assert_eq!(t.termination, Termination::Answer);
    let contents: Vec<&str> = t
        .messages
        .iter()
        .map(|m| m["content"].as_str().unwrap())
        .collect();
    assert!(contents[3].contains("Error: the tool call is not valid JSON"));
    assert!(contents[5].contains("there is no tool `calculator`; the tools are search"));
    assert_eq!(contents[6], "<think>guess</think>");
    assert_eq!((t.llm_calls, t.tool_calls), (4, 2));
}

#[tokio::test]
async fn budgets_end_runs_with_the_released_labels() {
    let search = r#"<tool_call>{"name": "search", "arguments": {"query": ["kyoto"]}}</tool_call>"#;
    // Out of calls.
    let policy = ScriptedModelSimulator::new(&[search; 5]);
    let config = AgentConfig {
        max_llm_calls: 3,
        ..AgentConfig::default()
    };
    let t = run(&policy, &tools(), "q", &config, &no_tokens)
        .await
        .unwrap();
    assert_eq!(
        (t.termination, t.llm_calls, t.answer),
        (Termination::ExceededCalls, 3, None)
    );
    // Over the context budget: the observation is replaced by the order to answer, one more call.
    let long = |m: &[Value]| m.len() * 10_000;
    let policy =
        ScriptedModelSimulator::new(&[search, "<think>best guess</think><answer>Kyoto</answer>"]);
    let t = run(&policy, &tools(), "q", &AgentConfig::default(), &long)
        .await
        .unwrap();
    assert_eq!(t.termination, Termination::TokenLimitAnswered);
    assert_eq!(t.answer.as_deref(), Some("Kyoto"));
    assert!(
        t.messages[3]["content"]
            .as_str()
            .unwrap()
            .contains("Stop calling tools")
    );
    let policy = ScriptedModelSimulator::new(&[search, "no tags at all"]);
    let t = run(&policy, &tools(), "q", &AgentConfig::default(), &long)
        .await
        .unwrap();
    assert_eq!(t.termination, Termination::TokenLimitFormatError);
    assert_eq!(
        serde_json::to_value(t.termination).unwrap(),
        "format error: generate an answer as token limit reached"
    );
    // An empty turn ends the run without an answer.
    let policy = ScriptedModelSimulator::new(&[""]);
    let t = run(&policy, &tools(), "q", &AgentConfig::default(), &no_tokens)
        .await
        .unwrap();
    assert_eq!(t.termination, Termination::AnswerNotFound);
}

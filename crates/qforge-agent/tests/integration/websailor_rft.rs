//! RFT filters and thought reconstruction; the rewrite model is a
//! `ScriptedModelSimulator` that replies from a script and records its prompts.

use crate::common;
use common::ScriptedModelSimulator;

use qforge_agent::websailor::agent::{Termination, Trajectory};
use qforge_agent::websailor::rft::{Rejection, RftFilter, check, rewrite_thoughts};
use qforge_agent::websailor::runner::TrajectoryRow;
use serde_json::{Value, json};

fn trajectory(calls: usize, answer: Option<&str>) -> TrajectoryRow {
    let mut messages = vec![
        json!({"role": "system", "content": "s"}),
        json!({"role": "user", "content": "Which city?"}),
    ];
    for i in 0..calls {
        messages.push(json!({"role": "assistant", "content": format!(
            "<think>A very long expert deliberation number {i} that rambles on.</think>\n<tool_call>{{\"name\": \"search\", \"arguments\": {{\"query\": [\"q{i}\"]}}}}</tool_call>")}));
        messages.push(json!({"role": "user", "content": format!("<tool_response>\nresult {i}\n</tool_response>")}));
    }
    messages.push(json!({"role": "assistant", "content": "<think>So it is Kyoto, after all of that.</think>\n<answer>Kyoto</answer>"}));
    TrajectoryRow {
        id: "q".into(),
        rollout: 0,
        gold: Some("Kyoto".into()),
        seconds: 1.0,
        trajectory: Trajectory {
            question: "Which city?".into(),
            messages,
            answer: answer.map(String::from),
            termination: Termination::Answer,
            llm_calls: calls + 1,
            tool_calls: calls,
        },
    }
}

#[test]
fn only_right_long_enough_runs_under_the_cap_are_kept() {
    let filter = RftFilter::default();
    let chars = |m: &[Value]| {
        m.iter()
            .map(|x| x["content"].as_str().unwrap().len())
            .sum::<usize>()
            / 3
    };
    assert_eq!(
        check(&trajectory(6, Some("Kyoto")), Some(true), &filter, &chars),
        Ok(())
    );
    // "More than 5": five calls are not enough.
    assert_eq!(
        check(&trajectory(5, Some("Kyoto")), Some(true), &filter, &chars),
        Err(Rejection::TooFewToolCalls)
    );
    assert_eq!(
        check(&trajectory(6, Some("Nara")), Some(false), &filter, &chars),
        Err(Rejection::Wrong)
    );
    assert_eq!(
        check(&trajectory(6, Some("Kyoto")), None, &filter, &chars),
        Err(Rejection::Unjudged)
    );
    assert_eq!(
        check(&trajectory(6, None), Some(true), &filter, &chars),
        Err(Rejection::NoAnswer)
    );
    let tight = RftFilter {
        max_tokens: 100,
        ..RftFilter::default()
    };
    assert_eq!(
        check(&trajectory(6, Some("Kyoto")), Some(true), &tight, &chars),
        Err(Rejection::TooLong)
    );
}

#[tokio::test]
async fn thoughts_are_rewritten_short_from_the_rebuilt_history() {
    let row = trajectory(2, Some("Kyoto"));
    let replies = [
        "I should search for the city first.",
        &"far too long ".repeat(20), // over the cap: asked again
        "The first result points at a second query.",
        "", // empty three times: the original thought stays
        "",
        "",
    ];
    let model = ScriptedModelSimulator::new(&replies);
    let (messages, kept) = rewrite_thoughts(&model, &row.trajectory.messages, 120).await;
    assert_eq!(kept, 1);
    assert_eq!(messages.len(), row.trajectory.messages.len());
    assert_eq!(
        messages[2]["content"],
        "<think>I should search for the city first.</think>\n<tool_call>{\"name\": \"search\", \"arguments\": {\"query\": [\"q0\"]}}</tool_call>"
    );
    assert!(
        messages[4]["content"]
            .as_str()
            .unwrap()
            .starts_with("<think>The first result points at a second query.</think>\n<tool_call>")
    );
    assert_eq!(
        messages[6]["content"],
        "<think>So it is Kyoto, after all of that.</think>\n<answer>Kyoto</answer>"
    );
    // Observations pass through; the second turn's prompt saw the first rewritten thought and
    // its observation, and the action with what it returned.
    assert_eq!(messages[3], row.trajectory.messages[3]);
    let prompts = model.prompts();
    assert!(
        prompts[2].contains("I should search for the city first.")
            && prompts[2].contains("result 0")
    );
    assert!(prompts[2].contains("## What it returned\n<tool_response>\nresult 1"));
    assert!(
        !prompts[2].contains("rambles"),
        "the expert's long thought is not shown"
    );
}

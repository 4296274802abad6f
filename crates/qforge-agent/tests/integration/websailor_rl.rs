//! WebSailor's RL stage: the agent's tools answer multi-turn rollouts (`WebSailorEnv`), Eq. 5's
//! reward, and one DUPO step of the RL core on the tiny model with both.

use crate::common;

use std::sync::Arc;

use qforge_agent::websailor::agent::{AgentConfig, Tool};
use qforge_agent::websailor::eval::Judge;
use qforge_agent::websailor::index::{Bm25Index, Document};
use qforge_agent::websailor::rl::{CORRECT_THRESHOLD, WebSailorEnv, WebSailorReward, task};
use qforge_agent::websailor::visit::{ExtractiveSummarizer, offline_tools};
use qforge_rl::grpo::{GroupFilter, GrpoConfig, GrpoTrainer};
use qforge_rl::reward::RewardFn;
use qforge_rl::tools::{ToolConfig, ToolEnv};

fn tools() -> Vec<Arc<dyn Tool>> {
    let index = Arc::new(Bm25Index::build(vec![Document {
        url: "wiki://Kyoto".into(),
        title: "Kyoto".into(),
        text: "Kyoto was the imperial capital of Japan from 794 to 1868.".into(),
        date: None,
        source: None,
    }]));
    offline_tools(index, Arc::new(ExtractiveSummarizer::default()), 10)
}

#[test]
fn tool_turns_get_the_tools_answers_and_answers_end_the_episode() {
    let env = WebSailorEnv::new(tools()).unwrap();
    let t = task("Which city?", "Kyoto", &tools(), &AgentConfig::default());
    let observe = |turn: &str| env.observe(&t, &[turn.to_string()]);
    let search = observe(
        "<think>look</think>\n<tool_call>{\"name\": \"search\", \"arguments\": {\"query\": [\"imperial capital\"]}}</tool_call>",
    )
    .unwrap();
    assert!(search.contains("1. [Kyoto](wiki://Kyoto)"), "{search}");
    let visit = observe(
        "<tool_call>{\"name\": \"visit\", \"arguments\": {\"url\": \"wiki://Kyoto\", \"goal\": \"capital years\"}}</tool_call>",
    )
    .unwrap();
    assert!(visit.contains("from 794 to 1868"), "{visit}");
    assert!(
        observe("<tool_call>{broken</tool_call>")
            .unwrap()
            .starts_with("Error: ")
    );
    assert!(
        observe("<tool_call>{\"name\": \"calc\", \"arguments\": {}}</tool_call>")
            .unwrap()
            .contains("there is no tool `calc`")
    );
    assert_eq!(observe("<think>done</think><answer>Kyoto</answer>"), None);
    assert_eq!(observe("just talking"), None);
    assert_eq!(env.stop_strings(), ["</tool_call>"]);
}

#[test]
fn the_reward_is_a_tenth_format_and_nine_tenths_answer() {
    let reward = WebSailorReward::new(Judge::ExactMatch).unwrap();
    let t = task("Which city?", "Kyoto", &tools(), &AgentConfig::default());
    assert_eq!(
        reward.score(&t, "<think>sure</think>\n<answer>kyoto.</answer>"),
        1.0
    );
    let right_unformatted = reward.score(&t, "<answer>Kyoto</answer>");
    let wrong_formatted = reward.score(&t, "<think>hm</think><answer>Nara</answer>");
    assert_eq!(right_unformatted, 0.9);
    assert!((wrong_formatted - 0.1).abs() < 1e-12);
    assert_eq!(reward.score(&t, "no answer"), 0.0);
    // Only a right answer reaches the correctness threshold DUPO filters on.
    assert!(right_unformatted >= CORRECT_THRESHOLD && wrong_formatted < CORRECT_THRESHOLD);
}

#[test]
fn a_dupo_step_runs_on_the_agents_own_tools() {
    // The fixture model with a context long enough for the agent's opening prompt.
    let dir = tempfile::tempdir().unwrap();
    let model = common::fixture_with_context(dir.path(), 4096);

    let tools = tools();
    let tasks = vec![
        task(
            "Which city was the capital until 1868?",
            "Kyoto",
            &tools,
            &AgentConfig::default(),
        ),
        task(
            "Capital from 794?",
            "Kyoto",
            &tools,
            &AgentConfig::default(),
        ),
    ];
    let mut trainer = GrpoTrainer::new(
        GrpoConfig {
            model,
            output_dir: dir.path().join("run"),
            group_size: 2,
            prompts_per_step: 2,
            max_new_tokens: 8,
            max_prompt_tokens: 3000,
            filter: GroupFilter::Dupo,
            correct_threshold: CORRECT_THRESHOLD,
            lr: 1e-4,
            ..GrpoConfig::default()
        },
        tasks,
        Arc::new(WebSailorReward::new(Judge::ExactMatch).unwrap()),
    )
    .unwrap()
    .with_tools(
        Arc::new(WebSailorEnv::new(tools).unwrap()),
        ToolConfig {
            max_turns: 3,
            ..ToolConfig::default()
        },
    );
    let report = trainer.step().unwrap();
    // The untrained model answers nothing right: every group is uninformative, and DUPO has
    // nothing to duplicate, so no group is trained on.
    assert_eq!(report.accuracy, 0.0);
    assert_eq!(report.useful_groups, 0);
    assert!(
        report.turns_mean >= 1.0 && report.turns_mean <= 3.0,
        "{report:?}"
    );
}

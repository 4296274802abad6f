//! The LLM-judge reward against a real loopback `qforge serve` (the tiny fixture model as the
//! judge) and against a judge that is down.

use std::sync::Arc;
use std::time::Duration;

use qforge_engine::{ChatBackend, RemoteBackend, RemoteConfig};
use qforge_rl::judge::{HybridReward, JudgeReward, question_of};
use qforge_rl::reward::{Extraction, RewardFn, SubEm, Task, extract_the_answer_is};
use qforge_serve::{AppState, ServerConfig};
use serde_json::json;

fn task() -> Task {
    Task {
        messages: vec![json!({"role": "user", "content":
            "Read the text.\n<text>\nParis is the capital of France.\n</text>\nWhat is the capital of France?\n\nFormat your response as follows: \"Therefore, the answer is (answer here)\"."})],
        answers: vec!["Paris".into()],
    }
}

/// `qforge serve` on a loopback port in its own runtime thread; returns its /v1 URL.
fn start_server() -> String {
    let fixture = qforge_testkit::tiny_model();
    let state = AppState::for_checkpoint("judge", &fixture, ServerConfig::default()).unwrap();
    qforge_serve::spawn_on_loopback(state).unwrap()
}

fn remote(url: &str) -> Arc<dyn ChatBackend> {
    let mut c = RemoteConfig::new(url, "judge");
    c.retries = 1;
    c.backoff = Duration::from_millis(10);
    c.timeout = Duration::from_secs(60);
    Arc::new(RemoteBackend::new(c).unwrap())
}

#[test]
fn the_judge_sees_the_question_and_caches_its_verdicts() {
    assert_eq!(question_of(&task()), "What is the capital of France?");
    let judge = JudgeReward::new(remote(&start_server()), extract_the_answer_is).unwrap();
    let t = task();
    let responses = [
        "<think>..</think> Therefore, the answer is the French capital.",
        "<think>..</think> Therefore, the answer is Lutetia.",
        "<think>..</think> no answer phrase",
    ];
    let items: Vec<(&Task, &str)> = responses.iter().map(|r| (&t, *r)).collect();
    let first = judge.score_batch(&items);
    assert_eq!(
        judge.calls(),
        2,
        "two predictions asked concurrently; none for no prediction"
    );
    assert!(first.iter().all(|&s| s == 0.0 || s == 1.0));
    assert_eq!(first[2], 0.0);
    assert_eq!(judge.failures(), 0, "the server answered");
    // Again: from the cache, same verdicts, no new calls.
    assert_eq!(judge.score_batch(&items), first);
    assert_eq!(judge.calls(), 2);
}

#[test]
fn a_judge_that_is_down_leaves_the_rule_reward_and_is_counted() {
    // A port nothing listens on.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}/v1", l.local_addr().unwrap())
    };
    let judge = Arc::new(JudgeReward::new(remote(&dead), extract_the_answer_is).unwrap());
    let hybrid = HybridReward {
        rule: Arc::new(SubEm(Extraction::TheAnswerIs)),
        judge: judge.clone(),
    };
    let t = task();
    let right = "<think>..</think> Therefore, the answer is Paris.";
    let unsure = "<think>..</think> Therefore, the answer is the French capital.";
    assert_eq!(
        hybrid.score(&t, right),
        1.0,
        "the rule alone decides; the judge is not asked"
    );
    assert_eq!(judge.calls(), 0);
    assert_eq!(hybrid.score(&t, unsure), 0.0);
    assert_eq!(judge.failures(), 1);
    assert_eq!(hybrid.failures(), 1);
}

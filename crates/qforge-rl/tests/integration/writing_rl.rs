//! Writing-RL: the released reward and verl's PPO pieces against fixtures made by calling their
//! own functions (`tools/fixtures/gen_writing_rl.py`), the ladder, margin selection, the judge
//! client (concurrency, cache, retries, position bias, a judge that is down), the critic's
//! checkpoint layout, and the loop end to end against the rubric judge served over HTTP.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use candle_core::{Device, Tensor, Var};
use qforge_engine::chat::{ChatDelta, ChatEvent, ChatRequest};
use qforge_engine::{BackendError, ChatBackend, ChatStream, RemoteBackend, RemoteConfig};
use qforge_rl::ppo::{Critic, CriticConfig};
use qforge_rl::writing_rl::eval::{count_words, length_score};
use qforge_rl::writing_rl::judge::{
    Comparison, JudgeSettings, Outcome, PairwiseJudge, Position, RewardValues, Verdict,
    extract_passage, parse_verdict, render_judge_prompt,
};
use qforge_rl::writing_rl::rubric::{required_terms, required_words, rubric_reply};
use qforge_rl::writing_rl::{
    Algorithm, MarginScore, ReferenceLadder, RubricJudge, WritingRlConfig, WritingRlTrainer,
    load_prompts, select_by_margin,
};
use qforge_serve::ServerConfig;
use qforge_serve::proxy::{ChatProxy, ProxyState, spawn_proxy_on_loopback};
use qforge_train::policy::{
    Aggregation, ClipConfig, aggregate, clipped_policy_loss, clipped_value_loss, gae_advantages,
};
use serde_json::{Value, json};

fn fixture(name: &str) -> Value {
    let path = qforge_testkit::fixture(&format!("writing_rl/{name}"));
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn close(a: f64, b: f64, tol: f64) -> bool {
    (a - b).abs() <= tol * (1.0 + b.abs())
}

fn matrix(v: &Value) -> Vec<Vec<f64>> {
    serde_json::from_value(v.clone()).unwrap()
}

fn tensor(rows: &[Vec<f64>]) -> Tensor {
    let (b, t) = (rows.len(), rows[0].len());
    let flat: Vec<f32> = rows.iter().flatten().map(|&x| x as f32).collect();
    Tensor::from_vec(flat, (b, t), &Device::Cpu).unwrap()
}

#[test]
fn released_reward_values_templates_and_ladder_steps_match_the_release() {
    let f = fixture("reward.json");
    let refs = ["ref one", "ref two", "ref three"];
    let mut parsed_cases = 0;
    for case in f["cases"].as_array().unwrap() {
        let policy_is_a = case["strategy"] == "position-advantage";
        let start = case["start_index"].as_u64().unwrap() as usize;
        let reference = refs[start.min(2)];
        let passage = extract_passage("<think>plan</think>Rain taps the roof");
        let criteria = case["criteria"].as_str();
        let (a, b) = if policy_is_a {
            (passage.as_str(), reference)
        } else {
            (reference, passage.as_str())
        };
        let prompt = render_judge_prompt("Write a haiku about rain.", a, b, criteria);
        assert_eq!(prompt, case["judge_prompt"].as_str().unwrap(), "{case}");
        let Some(reply) = case["reply"].as_str() else {
            // The judge API failed: the release scores a loss.
            assert_eq!(case["score"].as_f64().unwrap(), RewardValues::RELEASED.loss);
            continue;
        };
        let Some(verdict) = parse_verdict(reply) else {
            // No bracketed verdict: the release reads the first stray `A`, `B` or `C` in the
            // reply as the verdict (`map_result`), so "Assistant B wins." is a verdict for A
            // and can even climb the ladder; ours asks again, then scores a tie.
            let mapped = f["verdicts"]
                .as_array()
                .unwrap()
                .iter()
                .find(|v| v["text"] == reply)
                .unwrap()["mapped"]
                .as_u64()
                .unwrap();
            let stray = match (mapped, policy_is_a) {
                (2, _) => Outcome::Tie,
                (0, true) | (1, false) => Outcome::Win,
                _ => Outcome::Loss,
            };
            let released = RewardValues::RELEASED.score(stray);
            assert!(
                close(released, case["score"].as_f64().unwrap(), 1e-12),
                "{case}"
            );
            continue;
        };
        parsed_cases += 1;
        let outcome = match (verdict, policy_is_a) {
            (Verdict::Tie, _) => Outcome::Tie,
            (Verdict::A, true) | (Verdict::B, false) => Outcome::Win,
            _ => Outcome::Loss,
        };
        let score = RewardValues::RELEASED.score(outcome);
        assert!(
            close(score, case["score"].as_f64().unwrap(), 1e-12),
            "{case}"
        );
        let advanced = case["index_after"].as_u64().unwrap() as usize - start;
        assert_eq!(advanced, usize::from(outcome == Outcome::Win), "{case}");
    }
    assert_eq!(parsed_cases, 32);
    for v in f["verdicts"].as_array().unwrap() {
        let text = v["text"].as_str().unwrap();
        let ours = parse_verdict(text).map(|v| match v {
            Verdict::A => "[[A]]",
            Verdict::B => "[[B]]",
            Verdict::Tie => "[[C]]",
        });
        assert_eq!(ours, v["verdict"].as_str(), "{text}");
    }
    // The release's fallback reads "Assistant B wins." (no brackets) as A: the bug we avoid.
    let quirk = f["verdicts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["text"] == "No bracketed verdict; Assistant B wins.")
        .unwrap();
    assert_eq!(quirk["mapped"], 0);
    for e in f["extract"].as_array().unwrap() {
        assert_eq!(
            extract_passage(e["text"].as_str().unwrap()),
            e["passage"].as_str().unwrap()
        );
    }
}

#[test]
fn gae_value_loss_and_policy_loss_match_verl() {
    let f = fixture("ppo.json");
    let lengths: Vec<usize> = serde_json::from_value(f["lengths"].clone()).unwrap();
    let cut = |m: &Vec<Vec<f64>>| -> Vec<Vec<f64>> {
        m.iter()
            .zip(&lengths)
            .map(|(r, &n)| r[..n].to_vec())
            .collect()
    };
    let scores = matrix(&f["scores"]);
    let (old, reference, values) = (
        matrix(&f["old_logp"]),
        matrix(&f["ref_logp"]),
        matrix(&f["values"]),
    );
    for case in f["gae"].as_array().unwrap() {
        let beta = case["kl_coef"].as_f64().unwrap();
        // The in-reward KL as the trainer forms it: score − β(log π_old − log π_ref).
        let rewards: Vec<Vec<f64>> = cut(&scores)
            .iter()
            .enumerate()
            .map(|(b, row)| {
                row.iter()
                    .enumerate()
                    .map(|(t, s)| s - beta * (old[b][t] - reference[b][t]))
                    .collect()
            })
            .collect();
        let want = matrix(&case["token_rewards"]);
        for (r, w) in rewards.iter().flatten().zip(want.iter().flatten()) {
            assert!(close(*r, *w, 1e-12));
        }
        let (adv, ret) = gae_advantages(
            &rewards,
            &cut(&values),
            case["gamma"].as_f64().unwrap(),
            case["lam"].as_f64().unwrap(),
        )
        .unwrap();
        for (got, want) in [(adv, &case["advantages"]), (ret, &case["returns"])] {
            let want = matrix(want);
            for (g, w) in got.iter().flatten().zip(want.iter().flatten()) {
                assert!(close(*g, *w, 1e-9), "{g} vs {w}");
            }
        }
    }
    // Whitening needs two tokens, as verl's masked_var.
    assert!(gae_advantages(&[vec![1.0]], &[vec![0.0]], 1.0, 1.0).is_err());

    let mask_rows: Vec<Vec<f64>> = lengths
        .iter()
        .map(|&n| {
            (0..values[0].len())
                .map(|t| f64::from(u8::from(t < n)))
                .collect()
        })
        .collect();
    let mask = tensor(&mask_rows);
    for case in f["value_loss"].as_array().unwrap() {
        let vpreds = Var::from_tensor(&tensor(&matrix(&f["vpreds"]))).unwrap();
        let loss = clipped_value_loss(
            vpreds.as_tensor(),
            &tensor(&values),
            &tensor(&matrix(&f["returns"])),
            &mask,
            case["clip"].as_f64().unwrap(),
        )
        .unwrap();
        let value = loss.loss.to_scalar::<f32>().unwrap() as f64;
        assert!(close(value, case["loss"].as_f64().unwrap(), 1e-5), "{case}");
        assert!(close(
            loss.clip_fraction as f64,
            case["clip_fraction"].as_f64().unwrap(),
            1e-6
        ));
        let grads = loss.loss.backward().unwrap();
        let got: Vec<Vec<f32>> = grads.get(vpreds.as_tensor()).unwrap().to_vec2().unwrap();
        for (g, w) in got
            .iter()
            .flatten()
            .zip(matrix(&case["grad"]).iter().flatten())
        {
            assert!(close(*g as f64, *w, 1e-4), "{g} vs {w}");
        }
    }
    for case in f["policy_loss"].as_array().unwrap() {
        let logp = Var::from_tensor(&tensor(&matrix(&f["logp"]))).unwrap();
        let pl = clipped_policy_loss(
            logp.as_tensor(),
            &tensor(&old),
            &tensor(&matrix(&f["advantages"])),
            &mask,
            ClipConfig::verl(0.2, 0.2),
        )
        .unwrap();
        let mode = match case["mode"].as_str().unwrap() {
            "token-mean" => Aggregation::TokenMean,
            _ => Aggregation::SeqMeanTokenMean,
        };
        let loss = aggregate(&pl.per_token, &mask, mode).unwrap();
        assert!(close(
            loss.to_scalar::<f32>().unwrap() as f64,
            case["loss"].as_f64().unwrap(),
            1e-5
        ));
        assert!(close(
            pl.clip_fraction as f64,
            case["clip_fraction"].as_f64().unwrap(),
            1e-6
        ));
        assert!(close(
            pl.clip_fraction_lower as f64,
            case["clip_fraction_lower"].as_f64().unwrap(),
            1e-6
        ));
        assert!(close(
            pl.approx_kl as f64,
            case["approx_kl"].as_f64().unwrap(),
            1e-5
        ));
        let grads = loss.backward().unwrap();
        let got: Vec<Vec<f32>> = grads.get(logp.as_tensor()).unwrap().to_vec2().unwrap();
        for (g, w) in got
            .iter()
            .flatten()
            .zip(matrix(&case["grad"]).iter().flatten())
        {
            assert!(close(*g as f64, *w, 1e-4), "{g} vs {w}");
        }
    }
}

#[test]
fn the_ladder_advances_once_per_step_clamps_and_round_trips() {
    let mut ladder = ReferenceLadder::default();
    assert_eq!(ladder.rung("7", 3), 0);
    ladder.advance(["7", "7", "9"]);
    assert_eq!((ladder.rung("7", 3), ladder.rung("9", 3)), (1, 1));
    ladder.advance(["7"]);
    ladder.advance(["7"]);
    assert_eq!(ladder.rung("7", 3), 2, "clamped at the top rung");
    assert_eq!(ladder.wins("7"), 3, "the count keeps rising, as released");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ladder.json");
    ladder.save(&path).unwrap();
    assert_eq!(ReferenceLadder::load(&path).unwrap(), ladder);
    std::fs::write(&path, "{not json").unwrap();
    let err = ReferenceLadder::load(&path).unwrap_err().to_string();
    assert!(err.contains("ladder.json"), "{err}");
}

#[test]
fn margin_selection_ranks_drops_non_positive_and_keeps_the_share() {
    let m = |id: &str, margin: f64| MarginScore {
        id: id.into(),
        margin,
        scores: vec![],
    };
    let scored = vec![
        m("a", 0.1),
        m("b", 0.0),
        m("c", 0.5),
        m("d", -0.5),
        m("e", 0.1),
    ];
    let ids = |v: Vec<MarginScore>| v.into_iter().map(|s| s.id).collect::<Vec<_>>();
    assert_eq!(ids(select_by_margin(scored.clone(), 1.0)), ["c", "a", "e"]);
    assert_eq!(ids(select_by_margin(scored.clone(), 0.4)), ["c", "a"]);
    assert_eq!(ids(select_by_margin(scored, 0.0)), Vec::<String>::new());
}

#[test]
fn prompt_files_with_missing_references_or_bad_json_name_the_row() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.jsonl");
    std::fs::write(
        &path,
        "{\"id\": 1, \"prompt\": \"Write.\", \"target\": \"only one\"}\n{\"id\": \"x\", \"prompt\": \"Write.\", \"references\": []}\n",
    )
    .unwrap();
    let err = load_prompts(&path).unwrap_err().to_string();
    assert!(
        err.contains(":2:") && err.contains("`x`") && err.contains("references"),
        "{err}"
    );
    std::fs::write(
        &path,
        "{\"id\": 1, \"prompt\": \"Write.\", \"target\": \"r\"}\nnot json\n",
    )
    .unwrap();
    let err = load_prompts(&path).unwrap_err().to_string();
    assert!(err.contains(":2"), "{err}");
    std::fs::write(
        &path,
        "{\"id\": 1, \"prompt\": \"W.\", \"target\": [\"r1\", \"r2\"]}\n",
    )
    .unwrap();
    let p = load_prompts(&path).unwrap();
    assert_eq!((p[0].id.as_str(), p[0].best_reference()), ("1", "r2"));
}

#[test]
fn the_rubric_judge_scores_length_terms_and_repetition() {
    // LongBench-Write's S_l.
    assert_eq!(length_score(100, 100), 100.0);
    assert!(close(
        length_score(100, 200),
        100.0 * (1.0 - 1.0 / 3.0),
        1e-12
    ));
    assert_eq!(length_score(100, 50), 50.0);
    assert_eq!(length_score(100, 0), 0.0);
    assert_eq!(
        required_words("Write a poem in 12 words about rain."),
        Some(12)
    );
    assert_eq!(required_words("A 300-word essay."), Some(300));
    assert_eq!(
        required_terms("Use the words: rain, roof. Be brief."),
        ["rain", "roof"]
    );
    let q = "Write about rain in 6 words. Use the words: rain, roof.";
    let good = "rain falls softly on the roof";
    let long = "rain rain rain rain rain rain rain rain rain rain rain rain rain rain";
    let prompt = render_judge_prompt(q, good, long, None);
    assert!(rubric_reply(&prompt).unwrap().ends_with("[[A]]"));
    let prompt = render_judge_prompt(q, long, good, None);
    assert!(rubric_reply(&prompt).unwrap().ends_with("[[B]]"));
    let prompt = render_judge_prompt(q, good, good, Some("Clarity"));
    assert!(rubric_reply(&prompt).unwrap().ends_with("[[C]]"));
}

/// Replies with a fixed text; counts calls and the most calls in flight at once.
struct CountingJudgeSimulator {
    reply: String,
    calls: AtomicUsize,
    in_flight: AtomicUsize,
    peak: AtomicUsize,
    prompts: Mutex<Vec<String>>,
}

impl CountingJudgeSimulator {
    fn new(reply: &str) -> Arc<Self> {
        Arc::new(Self {
            reply: reply.into(),
            calls: AtomicUsize::new(0),
            in_flight: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
            prompts: Mutex::default(),
        })
    }
}

#[async_trait]
impl ChatBackend for CountingJudgeSimulator {
    fn model_name(&self) -> &str {
        "counting-judge-simulator"
    }

    async fn chat_stream(&self, request: ChatRequest) -> Result<ChatStream, BackendError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak.fetch_max(now, Ordering::SeqCst);
        let prompt = request.messages[0]["content"].as_str().unwrap().to_string();
        self.prompts.lock().unwrap().push(prompt);
        tokio::time::sleep(Duration::from_millis(20)).await;
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        tx.send(Ok(ChatEvent::Delta(ChatDelta {
            content: Some(self.reply.clone()),
            finish_reason: Some("stop".into()),
            ..ChatDelta::default()
        })))
        .await
        .unwrap();
        Ok(rx)
    }
}

fn comparisons(n: usize) -> Vec<Comparison> {
    (0..n)
        .map(|i| Comparison {
            prompt: format!("Write {i}."),
            response: format!("policy {i}"),
            reference: format!("reference {i}"),
            criteria: None,
        })
        .collect()
}

fn settings(position: Position) -> JudgeSettings {
    JudgeSettings {
        concurrency: 3,
        retries: 2,
        position,
        values: RewardValues::PAPER,
        ..JudgeSettings::default()
    }
}

#[test]
fn the_judge_runs_bounded_concurrent_calls_and_caches_verdicts() {
    let sim = CountingJudgeSimulator::new("B is better. [[B]]");
    let judge = PairwiseJudge::new(sim.clone(), settings(Position::PositionDisadvantage)).unwrap();
    let items = comparisons(10);
    let first = judge.judge(&items).unwrap();
    assert!(
        first
            .iter()
            .all(|j| j.outcome == Outcome::Win && j.strict_win && j.score == 1.0)
    );
    assert_eq!(sim.calls.load(Ordering::SeqCst), 10);
    assert!(
        sim.peak.load(Ordering::SeqCst) <= 3,
        "at most `concurrency` in flight"
    );
    assert!(sim.peak.load(Ordering::SeqCst) >= 2, "calls overlap");
    // Reference in slot A, policy in slot B.
    assert!(
        sim.prompts
            .lock()
            .unwrap()
            .iter()
            .all(|p| { p.find("reference").unwrap() < p.find("policy").unwrap() })
    );
    assert_eq!(judge.judge(&items).unwrap(), first);
    assert_eq!(
        sim.calls.load(Ordering::SeqCst),
        10,
        "answered from the cache"
    );
    assert_eq!(judge.counts().cache_hits, 10);
}

#[test]
fn position_bias_is_visible_per_order_and_cancels_when_both_orders_are_judged() {
    // A judge that always prefers the first slot.
    let prefers_a = || CountingJudgeSimulator::new("The first is better. [[A]]");
    let items = comparisons(2);
    let one = |p: Position| {
        PairwiseJudge::new(prefers_a(), settings(p))
            .unwrap()
            .judge(&items)
            .unwrap()
    };
    assert!(
        one(Position::PositionDisadvantage)
            .iter()
            .all(|j| j.outcome == Outcome::Loss)
    );
    assert!(
        one(Position::PositionAdvantage)
            .iter()
            .all(|j| j.outcome == Outcome::Win)
    );
    for j in one(Position::Both) {
        assert_eq!(
            (j.outcome, j.score, j.strict_win),
            (Outcome::Tie, 0.5, false)
        );
    }
}

#[test]
fn a_judge_without_verdicts_is_retried_then_neutral_and_a_judge_that_is_down_is_an_error() {
    let sim = CountingJudgeSimulator::new("Both have merits; Assistant A is long.");
    let judge = PairwiseJudge::new(sim.clone(), settings(Position::PositionDisadvantage)).unwrap();
    let out = judge.judge(&comparisons(1)).unwrap();
    assert_eq!(
        sim.calls.load(Ordering::SeqCst),
        3,
        "one call and two retries"
    );
    assert_eq!((out[0].outcome, out[0].score), (Outcome::NoVerdict, 0.5));
    assert!(!out[0].strict_win);
    assert_eq!(judge.counts().no_verdicts, 1);

    let mut remote = RemoteConfig::new("http://127.0.0.1:9/v1", "judge");
    remote.retries = 0;
    remote.timeout = Duration::from_secs(5);
    let down = Arc::new(RemoteBackend::new(remote).unwrap());
    let judge = PairwiseJudge::new(
        down,
        JudgeSettings {
            retries: 1,
            ..settings(Position::PositionDisadvantage)
        },
    )
    .unwrap();
    let err = judge.judge(&comparisons(2)).unwrap_err().to_string();
    assert!(err.contains("writing-rl judge"), "{err}");
}

/// The rubric judge served over HTTP on a loopback port (in `rt`); its `/v1` URL.
fn serve_rubric(rt: &tokio::runtime::Runtime) -> String {
    let state = ProxyState {
        backend: Arc::new(ChatProxy(Arc::new(RubricJudge))),
        config: Arc::new(ServerConfig::default()),
    };
    rt.block_on(spawn_proxy_on_loopback(state)).unwrap()
}

fn write_prompts(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("prompts.jsonl");
    let rows: Vec<String> = (0..4)
        .map(|i| {
            json!({
                "id": i,
                "prompt": format!("Write about rain in {} words. Use the words: rain, roof.", 4 + i),
                "references": [
                    "x",
                    "rain on the",
                    "rain falls on the roof today",
                ],
            })
            .to_string()
        })
        .collect();
    std::fs::write(&path, rows.join("\n")).unwrap();
    path
}

fn recipe(dir: &std::path::Path, url: &str, algorithm: Algorithm) -> WritingRlConfig {
    let mut config = WritingRlConfig {
        model: qforge_testkit::tiny_model(),
        prompts: write_prompts(dir),
        output_dir: dir.join("run"),
        max_steps: 2,
        save_steps: 1,
        seed: 3,
        ..WritingRlConfig::default()
    };
    config.grpo.prompts_per_step = 2;
    config.grpo.group_size = 2;
    config.grpo.max_new_tokens = 8;
    config.grpo.max_prompt_tokens = 0;
    config.grpo.lr = 1e-3;
    config.grpo.lr_warmup_ratio = 0.0;
    config.grpo.mini_batches = 1;
    config.critic.lr = 1e-3;
    config.critic.lr_warmup_ratio = 0.0;
    config.judge.url = url.to_string();
    config.judge.model = "writing-rubric-judge".into();
    config.judge.retries = 1;
    config.judge.timeout_s = 30;
    config.writing_rl.algorithm = algorithm;
    config.writing_rl.kl_in_reward = true;
    config.writing_rl.select = false;
    config
}

fn trainer(config: &WritingRlConfig) -> WritingRlTrainer {
    let prompts = load_prompts(&config.prompts).unwrap();
    let judge = qforge_rl::writing_rl::trainer::judge_for(&config.judge).unwrap();
    WritingRlTrainer::new(config.clone(), prompts, judge).unwrap()
}

#[test]
fn ppo_trains_against_the_served_rubric_judge_resumes_and_survives_a_dead_judge() {
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let url = serve_rubric(&rt);
    let config = recipe(dir.path(), &url, Algorithm::Ppo);
    let mut t = trainer(&config);
    let reports = t.train(|_| {}).unwrap();
    assert_eq!(reports.len(), 2);
    for r in &reports {
        assert!(
            r.value_loss.is_finite() && r.policy_loss.is_finite(),
            "{r:?}"
        );
        assert!((r.win_rate + r.tie_rate + r.loss_rate - 1.0).abs() < 1e-9);
        assert!(r.reward_kl.is_finite());
        assert!(r.judge_calls >= 2);
    }
    let run = dir.path().join("run");
    for file in [
        "policy/config.json",
        "critic/config.json",
        "checkpoint-2/ladder.json",
    ] {
        assert!(run.join(file).exists(), "{file}");
    }
    // The critic checkpoint: transformers' token-classification layout.
    let critic_cfg: Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("critic/config.json")).unwrap())
            .unwrap();
    assert_eq!(critic_cfg["num_labels"], 1);
    assert!(
        critic_cfg["architectures"][0]
            .as_str()
            .unwrap()
            .ends_with("ForTokenClassification")
    );
    let store = qforge_model::WeightStore::open_dir(&run.join("critic")).unwrap();
    assert!(store.contains("score.weight") && store.contains("score.bias"));

    // A longer run resumes from checkpoint-2 with its ladder and critic.
    let ladder = t.ladder().clone();
    let critic_head = t.critic().unwrap().head().0.to_vec2::<f32>().unwrap();
    drop(t);
    let mut longer = config.clone();
    longer.max_steps = 3;
    let mut t = trainer(&longer);
    assert_eq!(t.policy().step_count(), 2);
    assert_eq!(t.ladder(), &ladder);
    assert_eq!(
        t.critic().unwrap().head().0.to_vec2::<f32>().unwrap(),
        critic_head
    );
    // The judge goes down mid-run: the step fails with a typed error, the checkpoint stays.
    drop(rt);
    let err = t.step().unwrap_err().to_string();
    assert!(err.contains("writing-rl judge"), "{err}");
    assert_eq!(t.policy().step_count(), 2);
    assert!(run.join("checkpoint-2/writing_rl_state.json").exists());
}

#[test]
fn grpo_and_margin_selection_run_on_the_same_loop() {
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let url = serve_rubric(&rt);
    let mut config = recipe(dir.path(), &url, Algorithm::Grpo);
    config.writing_rl.select = true;
    config.writing_rl.select_share = 0.5;
    config.max_steps = 1;
    let mut t = trainer(&config);
    let kept = t.select(|_, _| {}).unwrap();
    assert!(kept.len() <= 2 && kept.iter().all(|m| m.margin > 0.0));
    let margins = qforge_util::read_jsonl(&dir.path().join("run/selection/margins.jsonl")).unwrap();
    assert_eq!(margins.len(), 4, "every candidate scored and written");
    let r = t.step().unwrap();
    assert!(r.value_loss.is_nan(), "no critic under GRPO");
    assert!(t.critic().is_none());
}

#[test]
fn critic_values_are_the_same_in_a_batch_and_alone_and_survive_save_and_load() {
    let dir = tempfile::tempdir().unwrap();
    let model = qforge_testkit::tiny_model();
    let critic = Critic::load(&model, CriticConfig::default(), 0, 1).unwrap();
    let pairs = vec![
        (vec![5, 6, 7], vec![8, 9]),
        (vec![11], vec![12, 13, 14, 15]),
    ];
    let batch = critic.values(&pairs).unwrap();
    for (k, pair) in pairs.iter().enumerate() {
        let alone = critic.values(std::slice::from_ref(pair)).unwrap();
        for (a, b) in alone[0].iter().zip(&batch[k]) {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }
    }
    critic.save(dir.path(), &model).unwrap();
    let back = Critic::load(dir.path(), CriticConfig::default(), 0, 99).unwrap();
    assert_eq!(
        back.values(&pairs).unwrap(),
        batch,
        "the saved head, not a fresh draw"
    );
    let err = Critic::load(dir.path(), CriticConfig::default(), 0, 1)
        .unwrap()
        .values(&[(vec![], vec![1])])
        .unwrap_err()
        .to_string();
    assert!(err.contains("sequence 0"), "{err}");
}

/// Learning, over seeds 4, 5 and 6 with thresholds written down before the run: a tiny random
/// Qwen3 asked for 10-word texts, judged by the rubric judge (served over HTTP) against ladders
/// of 2-, 4-, 6- and 8-word references, trained 100 PPO steps (16 prompts a step, one rollout
/// each, lr 1e-3 for policy and critic). Per seed: the held-out win rate against the fixed 4-word reference
/// (8 unseen topics × 8 samples) rises by at least 0.15, the held-out length score S_l by at
/// least 10 points, the training prompts end on rung 2 or higher on average, and the critic's
/// value loss over the last 10 steps is at most 0.8 of the first 10 steps'.
///
/// History (every seed reported): a first protocol with a perfect top reference (3/5/7/10
/// words; value loss ≤ 0.5×) passed seed 2 and failed seeds 1 and 3: once the ladder reached the
/// 10-word reference, only an exact length tied and nothing won, so the reward went silent. The
/// top rung was then made beatable (8 words) and the value threshold set from exploratory seeds
/// 301–304 (value loss fell to 0.46–0.65×) before seeds 4–6 were run.
#[test]
fn ppo_raises_the_held_out_win_rate_climbs_the_ladder_and_lowers_the_value_loss() {
    use qforge_rl::writing_rl::data::{TOPICS, length_following_prompts};
    let ladder = [2, 4, 6, 8];
    let rt = tokio::runtime::Runtime::new().unwrap();
    let url = serve_rubric(&rt);
    for seed in [4, 5, 6] {
        let dir = tempfile::tempdir().unwrap();
        let mut config = WritingRlConfig {
            model: qforge_testkit::tiny_model(),
            prompts: dir.path().join("in-memory.jsonl"),
            output_dir: dir.path().join("run"),
            max_steps: 100,
            save_steps: 0,
            seed,
            ..WritingRlConfig::default()
        };
        config.grpo.prompts_per_step = 16;
        config.grpo.max_new_tokens = 24;
        config.grpo.lr = 1e-3;
        config.grpo.lr_warmup_ratio = 0.0;
        config.grpo.mini_batches = 1;
        config.critic.lr = 1e-3;
        config.critic.lr_warmup_ratio = 0.0;
        config.writing_rl.select = false;
        config.judge.url = url.clone();
        config.judge.model = "writing-rubric-judge".into();
        let judge = qforge_rl::writing_rl::trainer::judge_for(&config.judge).unwrap();
        let train = length_following_prompts(&TOPICS[..16], 10, &ladder);
        let held = length_following_prompts(&TOPICS[16..], 10, &ladder);
        let mut t = WritingRlTrainer::new(config, train, judge).unwrap();
        let before = t.evaluate(&held, 8, 1).unwrap();
        let reports = t.train(|_| {}).unwrap();
        let after = t.evaluate(&held, 8, 1).unwrap();
        let mean = |rs: &[qforge_rl::writing_rl::WritingRlStepReport]| {
            rs.iter().map(|r| r.value_loss).sum::<f64>() / rs.len() as f64
        };
        let (first, last) = (mean(&reports[..10]), mean(&reports[90..]));
        let rung = reports.last().unwrap().ladder_rung_mean;
        eprintln!(
            "seed {seed}: held-out win rate {:.3} -> {:.3}, S_l {:.1} -> {:.1}, mean rung {rung:.2}, \
             value loss {first:.4} -> {last:.4}",
            before.win_rate, after.win_rate, before.length_score_mean, after.length_score_mean
        );
        assert!(after.win_rate >= before.win_rate + 0.15, "seed {seed}");
        assert!(
            after.length_score_mean >= before.length_score_mean + 10.0,
            "seed {seed}"
        );
        assert!(rung >= 2.0, "seed {seed}");
        assert!(last <= 0.8 * first, "seed {seed}");
    }
}

#[test]
fn longbench_write_word_count_and_length_score_match_longwriter() {
    let f = fixture("length.json");
    for case in f["count_words"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        assert_eq!(
            count_words(text) as u64,
            case["count"].as_u64().unwrap(),
            "{text:?}"
        );
    }
    for case in f["score"].as_array().unwrap() {
        let got = length_score(
            case["required"].as_u64().unwrap() as usize,
            case["produced"].as_u64().unwrap() as usize,
        );
        assert!(close(got, case["score"].as_f64().unwrap(), 1e-12), "{case}");
    }
    // Where LongWriter divides by zero (no words), the score is 0.
    assert_eq!(length_score(100, 0), 0.0);
}

#[test]
fn an_interrupted_selection_reuses_the_margins_already_written_and_ppo_takes_a_loss_kl() {
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let url = serve_rubric(&rt);
    let mut config = recipe(dir.path(), &url, Algorithm::Ppo);
    config.writing_rl.select = true;
    config.writing_rl.kl_in_reward = false;
    config.grpo.kl_coef = 0.05; // KL to the starting policy in the loss instead of the reward
    config.max_steps = 1;
    // A selection that stopped after its first prompt: that margin is kept, not measured again.
    let selection = dir.path().join("run/selection");
    std::fs::create_dir_all(&selection).unwrap();
    let first = json!({"id": "0", "margin": 0.7, "scores": [-0.2]});
    std::fs::write(selection.join("margins.jsonl"), format!("{first}\n")).unwrap();
    let mut t = trainer(&config);
    let kept = t.select(|_, _| {}).unwrap();
    assert_eq!(
        (kept[0].id.as_str(), kept[0].margin),
        ("0", 0.7),
        "{kept:?}"
    );
    let rows = qforge_util::read_jsonl(&selection.join("margins.jsonl")).unwrap();
    assert_eq!(rows.len(), 4);
    assert_eq!(rows[0].1, first);
    assert!(selection.join("selected.jsonl").is_file());
    let r = t.step().unwrap();
    assert!(
        r.policy_loss.is_finite() && r.value_loss.is_finite(),
        "{r:?}"
    );
    assert_eq!(r.reward_kl, 0.0, "no KL in the reward");
    // Prompts built in code get the checks a prompt file gets.
    let judge = || qforge_rl::writing_rl::trainer::judge_for(&config.judge).unwrap();
    let mut prompts = load_prompts(&config.prompts).unwrap();
    prompts[1].references.clear();
    let err = WritingRlTrainer::new(config.clone(), prompts, judge())
        .err()
        .unwrap();
    assert!(
        err.to_string().contains("prompt `1`: no references"),
        "{err}"
    );
    let mut prompts = load_prompts(&config.prompts).unwrap();
    prompts[2].id = "0".into();
    let err = WritingRlTrainer::new(config.clone(), prompts, judge())
        .err()
        .unwrap();
    assert!(
        err.to_string().contains("`0`: the id appears twice"),
        "{err}"
    );
}

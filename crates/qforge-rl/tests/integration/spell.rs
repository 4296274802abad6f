//! SPELL's rules against the released code (fixtures from `tools/fixtures/gen_spell.py`, which
//! calls its functions), its memory and batch logic on hand-made cases, and the whole loop.

use qforge_rl::spell::SpellTask;
use qforge_rl::spell::advantage::{
    QuestionerReward, RoleSample, questioner_mapping, spell_advantages,
};
use qforge_rl::spell::batch::{sample_bad_cases, sample_verifier_groups};
use qforge_rl::spell::memory::{HistoryEntry, HistoryMemory, examples_text};
use qforge_rl::spell::prompts::PromptSet;
use qforge_rl::spell::questioner::{QuestionerOutput, json_record, parse_questioner_output};
use qforge_rl::spell::reward::{PyValue, docmath_normalize, rule_score};
use qforge_rl::spell::verifier::{
    VerifierLabel, combined_reward, majority, parse_judgement, verifier_group,
};
use qforge_util::SplitMix;
use serde_json::Value;

fn fixture(name: &str) -> Value {
    let path = qforge_testkit::fixture(&format!("spell/{name}"));
    serde_json::from_str(&std::fs::read_to_string(&path).expect("fixture")).expect("json")
}

fn task(name: &str) -> SpellTask {
    serde_json::from_value(Value::String(name.into())).expect("task name")
}

#[test]
fn questioner_mapping_matches_the_released_function() {
    let f = fixture("advantages.json");
    for case in f["mapping"].as_array().unwrap() {
        let kind: QuestionerReward = serde_json::from_value(case["kind"].clone()).unwrap();
        let p = case["p"].as_f64().unwrap();
        let want = case["reward"].as_f64().unwrap();
        let got = questioner_mapping(p, kind);
        assert!((got - want).abs() < 1e-6, "{kind:?} p={p}: {got} vs {want}");
    }
}

#[test]
fn role_advantages_match_compute_spell_grpo_outcome_advantage() {
    let f = fixture("advantages.json");
    for case in f["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let samples: Vec<RoleSample> = case["samples"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                let uid = s["uid"].as_str().unwrap();
                RoleSample {
                    role: serde_json::from_value(s["role"].clone()).unwrap(),
                    // String uids hashed to numbers: equality is all that matters.
                    uid: uid
                        .bytes()
                        .fold(7u64, |h, b| h.wrapping_mul(31).wrapping_add(b.into())),
                    task: task(s["task"].as_str().unwrap()),
                    case: serde_json::from_value(s["case"].clone()).unwrap(),
                    score: s["score"].as_f64().unwrap(),
                }
            })
            .collect();
        let kind: QuestionerReward = serde_json::from_value(case["kind"].clone()).unwrap();
        let batch = case["group"] == "batch";
        let got = spell_advantages(&samples, kind, batch);
        let want = case["advantages"].as_array().unwrap();
        let rewards = case["rewards"].as_array().unwrap();
        for (i, ((adv, reward), (w, r))) in got.iter().zip(want.iter().zip(rewards)).enumerate() {
            let w = w.as_f64();
            match w {
                // The released code gives NaN for a task's lone questioner; qforge gives 0.
                None => assert_eq!(*adv, 0.0, "{name} #{i}"),
                Some(w) if w.is_nan() => assert_eq!(*adv, 0.0, "{name} #{i}"),
                Some(w) => assert!((adv - w).abs() < 1e-4, "{name} #{i}: {adv} vs {w}"),
            }
            let r = r.as_f64().unwrap();
            assert!(
                (reward - r).abs() < 1e-5,
                "{name} #{i} reward: {reward} vs {r}"
            );
        }
        // The advantage covers every response token (the mask's second token too).
        assert_eq!(case["second_token"], case["advantages"], "{name}");
    }
}

#[test]
fn rule_rewards_match_the_released_reward_files() {
    let f = fixture("rewards.json");
    for case in f["rewards"].as_array().unwrap() {
        let t = task(case["task"].as_str().unwrap());
        let response = case["response"].as_str().unwrap();
        let got = rule_score(t, response, case["ground_truth"].as_str().unwrap());
        assert_eq!(
            got.score,
            case["score"].as_f64().unwrap(),
            "{t:?} {response:?}"
        );
        assert_eq!(
            got.pred.as_deref(),
            case["pred"].as_str(),
            "{t:?} {response:?} pred"
        );
        assert_eq!(
            got.gold.as_deref(),
            case["gt"].as_str(),
            "{t:?} {response:?} gt"
        );
    }
}

#[test]
fn docmath_normalize_reads_answers_as_python_eval_does() {
    let f = fixture("rewards.json");
    for case in f["docmath_normalize"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let got = docmath_normalize(text);
        let want = match case["kind"].as_str().unwrap() {
            "int" => PyValue::Int(case["value"].as_i64().unwrap().into()),
            "float" => PyValue::Float(case["value"].as_f64().unwrap()),
            "bool" => PyValue::Bool(case["value"].as_bool().unwrap()),
            _ => PyValue::Other,
        };
        assert_eq!(got, want, "{text:?}");
        if want != PyValue::Other {
            assert_eq!(
                got.python_str(),
                case["str"].as_str().unwrap(),
                "{text:?} str"
            );
        }
    }
}

#[test]
fn questioner_outputs_parse_as_the_released_trainer_parses_them() {
    let f = fixture("questioner.json");
    let words = |t: &str| t.split_whitespace().count();
    for case in f.as_array().unwrap() {
        let t = task(case["task"].as_str().unwrap());
        let output = case["output"].as_str().unwrap();
        let got = parse_questioner_output(t, output, &words, 40);
        let result = &case["result"];
        match (&got, result) {
            (QuestionerOutput::Unfinished, Value::String(s)) => assert_eq!(s, "unfinished"),
            (QuestionerOutput::BadFormat(_), Value::Number(n)) => assert_eq!(n.as_i64(), Some(-1)),
            (QuestionerOutput::Invalid(_), Value::Number(n)) => assert_eq!(n.as_i64(), Some(0)),
            (QuestionerOutput::Question { question, answer }, Value::Object(m)) => {
                assert_eq!(question, m["question"].as_str().unwrap(), "{output:?}");
                assert_eq!(answer, m["ground_truth"].as_str().unwrap(), "{output:?}");
            }
            _ => panic!("{t:?} {output:?}: got {got:?}, released {result}"),
        }
        // The record itself, where it is JSON (the unfinished marker is not).
        if result != "unfinished" {
            let record = json_record(output).expect("finished");
            assert_eq!(Value::Object(record), case["record"], "{output:?} record");
        }
    }
}

#[test]
fn verifier_votes_and_self_consistency_match_self_verification() {
    let f = fixture("verifier.json");
    for case in f.as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let label: VerifierLabel = serde_json::from_value(case["label"].clone()).unwrap();
        let window = (
            case["window"][0].as_f64().unwrap(),
            case["window"][1].as_f64().unwrap(),
        );
        let mut judgement_at = 0;
        let mut trained = Vec::new();
        let mut scores = Vec::new();
        for (i, answer) in case["answers"].as_array().unwrap().iter().enumerate() {
            let rule = answer["rule"].as_f64().unwrap();
            let want_majority = case["majority"][i].as_f64().unwrap();
            let Some(judgements) = answer["judgements"].as_array() else {
                // Not judged: the released placeholder −100 is below 0, so the rule stands.
                assert_eq!(want_majority, -100.0, "{name}");
                assert_eq!(combined_reward(rule, None), rule);
                continue;
            };
            let votes: Vec<f64> = judgements
                .iter()
                .map(|j| parse_judgement(j.as_str().unwrap()))
                .collect();
            let maj = majority(&votes).unwrap();
            assert_eq!(maj, want_majority, "{name} #{i} majority");
            let group = verifier_group(&votes, rule, window, label);
            match group {
                None => {
                    assert_eq!(maj, -1.0, "{name}");
                    scores.extend(std::iter::repeat_n(-1.0, votes.len()));
                }
                Some(g) => {
                    if g.trains {
                        trained.extend(judgement_at..judgement_at + votes.len());
                    }
                    scores.extend(g.scores);
                }
            }
            judgement_at += votes.len();
        }
        let want_scores: Vec<f64> = case["judgement_scores"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        assert_eq!(scores, want_scores, "{name} scores");
        let want_trained: Vec<usize> = case["trained_judgements"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as usize)
            .collect();
        assert_eq!(trained, want_trained, "{name} trained");
    }
}

#[test]
fn combined_reward_is_the_max_of_rule_and_a_valid_vote() {
    assert_eq!(combined_reward(0.0, Some(1.0)), 1.0);
    assert_eq!(combined_reward(1.0, Some(0.0)), 1.0);
    assert_eq!(combined_reward(0.0, Some(-1.0)), 0.0);
    assert_eq!(combined_reward(1.0, None), 1.0);
}

#[test]
fn bad_cases_are_sampled_per_task_as_the_released_accumulator_does() {
    let f = fixture("bad_cases.json");
    for case in f.as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let tasks = |k: &str| -> Vec<SpellTask> {
            case[k]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| task(t.as_str().unwrap()))
                .collect()
        };
        let (good, bad) = (tasks("good"), tasks("bad"));
        for seed in 0..5 {
            let picked = sample_bad_cases(
                &good,
                &bad,
                case["ratio"].as_f64().unwrap(),
                &mut SplitMix(seed),
            );
            let mut per_task = serde_json::Map::new();
            for &i in &picked {
                let k = bad[i].name().to_string();
                let n = per_task.get(&k).and_then(Value::as_u64).unwrap_or(0);
                per_task.insert(k, (n + 1).into());
            }
            assert_eq!(Value::Object(per_task), case["picked_per_task"], "{name}");
            let distinct: std::collections::BTreeSet<_> = picked.iter().collect();
            assert_eq!(
                distinct.len(),
                picked.len(),
                "{name}: drawn without replacement"
            );
        }
    }
}

#[test]
fn verifier_groups_are_kept_at_the_update_ratio_or_not_at_all() {
    // 128 questions × 8 responders × 0.125 / 8 judgements = 16 groups.
    let picked = sample_verifier_groups(1024, 0.125, 8, 40, &mut SplitMix(1));
    assert_eq!(picked.len(), 16);
    assert!(picked.iter().all(|&i| i < 40));
    // Fewer available than wanted: the released accumulator drops the verifier update.
    assert!(sample_verifier_groups(1024, 0.125, 8, 15, &mut SplitMix(1)).is_empty());
}

#[test]
fn memory_is_a_fifo_of_three_per_task_and_cluster() {
    let mut m = HistoryMemory::new(3);
    for k in 0..5 {
        m.push(
            SpellTask::DocGeneralQa,
            "c1",
            HistoryEntry {
                evidence: vec![k],
                question: format!("q{k}"),
                answer: format!("a{k}"),
            },
        );
    }
    let kept: Vec<&str> = m
        .history(SpellTask::DocGeneralQa, "c1")
        .map(|e| e.question.as_str())
        .collect();
    assert_eq!(kept, ["q2", "q3", "q4"]);
    assert_eq!(m.history(SpellTask::DocMc, "c1").count(), 0, "per task");
    assert_eq!(
        m.history(SpellTask::DocGeneralQa, "c2").count(),
        0,
        "per cluster"
    );
    assert_eq!(m.len(), 3);
}

#[test]
fn evidence_grows_by_n_docs_per_solved_round_up_to_the_cluster() {
    let mut m = HistoryMemory::new(3);
    let mut rng = SplitMix(3);
    let paragraphs = 17;
    let mut previous: Vec<usize> = Vec::new();
    for round in 0..5 {
        let view = m.view(SpellTask::DocmathQa, "doc", paragraphs, 5, &mut rng);
        let want = (5 * (round + 1)).min(paragraphs);
        assert_eq!(view.evidence.len(), want, "round {round}");
        assert!(
            view.evidence.windows(2).all(|w| w[0] < w[1]),
            "sorted, distinct"
        );
        assert!(
            previous.iter().all(|i| view.evidence.contains(i)),
            "the union is kept"
        );
        assert_eq!(view.examples.len(), round.min(3));
        m.push(
            SpellTask::DocmathQa,
            "doc",
            HistoryEntry {
                evidence: view.evidence.clone(),
                question: format!("q{round}"),
                answer: "1".into(),
            },
        );
        previous = view.evidence;
    }
    let text = examples_text(&[("Q1".into(), "A1".into()), ("Q2".into(), "A2".into())]);
    assert_eq!(
        text,
        "### Example 1:\nQuestion: Q1\nAnswer: A1\n\n### Example 2:\nQuestion: Q2\nAnswer: A2\n"
    );
}

#[test]
fn prompts_are_filled_as_the_released_code_fills_them() {
    let set = PromptSet::released();
    let q = set.questioner(SpellTask::DocMc, "P1\nP2", None, None);
    assert!(q.contains("<text>\nP1\nP2\n</text>"));
    assert!(
        q.contains("The correct answer must be <correct_answer>."),
        "literal as released"
    );
    let q = set.questioner(SpellTask::DocMc, "P", Some("### Example 1:"), Some('C'));
    assert!(
        q.contains("The correct answer must be C.")
            && q.contains("## Previous Examples\n### Example 1:")
    );
    let r = set.responder(SpellTask::DocmathQa, "Empty", "How much?");
    assert!(r.contains("<text>\nEmpty\n</text>\n\nQuestion: How much?"));
    assert!(r.contains("Therefore, the answer is (insert answer here)"));
    let v = set.verifier("P {answer_1}", "x", "y");
    assert!(v.contains("- Problem: P {answer_1}\n- Answer 1: x\n- Answer 2: y"));
}

#[test]
fn flat_corpora_group_into_clusters_by_source_or_size() {
    use qforge_rl::spell::clusters::{Grouping, Paragraph, group_paragraphs, split_paragraphs};
    let p = |text: &str, source: Option<&str>| Paragraph {
        text: text.into(),
        source: source.map(str::to_string),
    };
    let flat = [
        p("a1", Some("A")),
        p("b1", Some("B")),
        p("a2", Some("A")),
        p("  ", Some("A")),
        p("b2", Some("B")),
    ];
    let by_source = group_paragraphs(&flat, Grouping::BySource);
    assert_eq!(by_source.len(), 2);
    assert_eq!(
        (by_source[0].id.as_str(), by_source[0].paragraphs.clone()),
        ("A-0", vec!["a1".to_string(), "a2".into()])
    );
    assert_eq!(by_source[1].paragraphs, ["b1", "b2"]);
    let by_size = group_paragraphs(&flat, Grouping::BySize(3));
    assert_eq!(
        by_size
            .iter()
            .map(|c| c.paragraphs.len())
            .collect::<Vec<_>>(),
        [3, 1],
        "blank paragraphs dropped"
    );
    assert_eq!(split_paragraphs("one\ntwo\n\nthree"), ["one\ntwo", "three"]);
    assert_eq!(split_paragraphs("one\ntwo\n"), ["one", "two"]);
}

mod end_to_end {
    //! The loop on the tiny model. `ScriptedRoles` is a simulator of a policy that has learnt
    //! the three roles (a random tiny model writes no JSON): it answers each phase's prompts by
    //! reading them, with seeded mistakes, while every update runs on the real model.

    use std::path::{Path, PathBuf};

    use qforge_rl::grpo::{GrpoTrainer, Sample};
    use qforge_rl::spell::trainer::{Phase, SampleSource};
    use qforge_rl::spell::{CorpusSettings, SpellConfig, SpellStepReport, SpellTask, SpellTrainer};

    fn fnv(s: &str) -> u64 {
        s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        })
    }

    /// `k12 = 345` facts of the context in the prompt.
    fn facts(prompt: &str) -> Vec<(String, String)> {
        prompt
            .lines()
            .filter_map(|l| l.trim().split_once(" = "))
            .filter(|(k, v)| k.starts_with('k') && v.chars().all(|c| c.is_ascii_digit()))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn between<'a>(s: &'a str, start: &str, end: &str) -> &'a str {
        let from = s.find(start).map_or(0, |i| i + start.len());
        let to = s[from..].find(end).map_or(s.len(), |i| from + i);
        &s[from..to]
    }

    pub struct ScriptedRoles;

    impl ScriptedRoles {
        fn write(phase: Phase, prompt: &str, k: usize, n: usize, stream: u64) -> String {
            let h = fnv(prompt) ^ stream.wrapping_mul(0x9E37);
            match phase {
                Phase::Questioner => {
                    let facts = facts(between(prompt, "Facts:", "Write"));
                    let (key, value) = &facts[(h as usize / 7) % facts.len()];
                    match h % 10 {
                        0 => "I cannot think of a question.".into(),
                        1 => format!(
                            "```json\n{{\"question\": \"What is {key} (hint: {value})?\", \"answer\": \"{value}\"}}\n```"
                        ),
                        _ => format!(
                            "Reasoning.\n```json\n{{\"question\": \"What is {key}?\", \"answer\": \"{value}\"}}\n```"
                        ),
                    }
                }
                Phase::Grounding => match prompt.find("hint: ") {
                    Some(i) => {
                        let v: String = prompt[i + 6..]
                            .chars()
                            .take_while(char::is_ascii_digit)
                            .collect();
                        format!("The correct answer is {v}.")
                    }
                    None => "The correct answer is unknown.".into(),
                },
                Phase::Responder | Phase::Evaluation => {
                    let question = between(prompt, "Q: What is ", "?");
                    let value = facts(prompt)
                        .into_iter()
                        .find(|(k, _)| k == question)
                        .map(|(_, v)| v)
                        .unwrap_or_default();
                    // Per question, how many of the group answer right: 0..=n.
                    let right = (fnv(question) % (n as u64 + 1)) as usize;
                    if phase == Phase::Evaluation || k < right {
                        format!("Therefore, the answer is {value}.")
                    } else if k == right {
                        "I do not know.".into()
                    } else {
                        "Therefore, the answer is 1.".into()
                    }
                }
                Phase::Verifier => {
                    let a1 = between(prompt, "A1: ", "\n").trim();
                    let a2 = between(prompt, "A2: ", "\n").trim();
                    let same = a1 == a2;
                    // Most groups have one dissenting judgement (agreement 3/4, in the window).
                    let flip = k + 1 == n && h % 4 != 0;
                    if same != flip {
                        "Decision: [[YES]]"
                    } else {
                        "Decision: [[NO]]"
                    }
                    .into()
                }
            }
        }
    }

    impl SampleSource for ScriptedRoles {
        fn sample(
            &mut self,
            policy: &mut GrpoTrainer,
            phase: Phase,
            prompts: &[Vec<u32>],
            n: usize,
            stream: u64,
        ) -> qforge_rl::Result<Vec<Vec<Sample>>> {
            let tok = policy.tokenizer().clone();
            prompts
                .iter()
                .map(|p| {
                    let prompt = tok.decode(p, false)?;
                    (0..n)
                        .map(|k| {
                            let text = Self::write(phase, &prompt, k, n, stream);
                            let mut ids = tok.encode(&text, false)?;
                            ids.extend(tok.eos_token_id());
                            Ok(Sample { ids, text })
                        })
                        .collect()
                })
                .collect()
        }
    }

    /// Short templates the tiny model's 1024-token context can hold.
    pub fn compact_prompts(dir: &Path) -> PathBuf {
        let p = dir.join("prompts");
        std::fs::create_dir_all(&p).unwrap();
        for task in ["docmath_qa", "doc_general_qa", "doc_mc"] {
            std::fs::write(
                p.join(format!("questioner_{task}.txt")),
                "Facts:\n{context}\nWrite a question as JSON.",
            )
            .unwrap();
            std::fs::write(
                p.join(format!("questioner_{task}_history.txt")),
                "Facts:\n{context}\nWrite a harder question as JSON.\nSeen:\n{examples}",
            )
            .unwrap();
            std::fs::write(
                p.join(format!("responder_{task}.txt")),
                "{content}\nQ: {question}\nA:",
            )
            .unwrap();
        }
        std::fs::write(
            p.join("verifier.txt"),
            "P: {problem}\nA1: {answer_1}\nA2: {answer_2}\nSame?",
        )
        .unwrap();
        p
    }

    /// Two corpora of fact clusters: one for numeric QA, one for general QA.
    pub fn corpora(dir: &Path) -> Vec<CorpusSettings> {
        let mut out = Vec::new();
        for (c, task) in [SpellTask::DocmathQa, SpellTask::DocGeneralQa]
            .into_iter()
            .enumerate()
        {
            let path = dir.join(format!("clusters{c}.jsonl"));
            let rows: Vec<String> = (0..4)
                .map(|i| {
                    let paragraphs: Vec<String> = (0..8)
                        .map(|j| {
                            let key = c * 100 + i * 10 + j;
                            format!("k{key} = {}", (key * 37) % 900 + 100)
                        })
                        .collect();
                    serde_json::json!({"id": format!("c{c}-{i}"), "paragraphs": paragraphs})
                        .to_string()
                })
                .collect();
            std::fs::write(&path, rows.join("\n")).unwrap();
            out.push(CorpusSettings {
                path,
                tasks: vec![task],
                n_docs: vec![3],
            });
        }
        out
    }

    pub fn config(dir: &Path) -> SpellConfig {
        std::fs::create_dir_all(dir).unwrap();
        let mut c = SpellConfig {
            model: qforge_testkit::tiny_model(),
            output_dir: dir.join("run"),
            max_steps: 3,
            save_steps: 1,
            seed: 5,
            corpora: corpora(dir),
            ..SpellConfig::default()
        };
        c.grpo.group_size = 4;
        c.grpo.prompts_per_step = 3;
        c.grpo.max_new_tokens = 8;
        c.grpo.lr = 1e-4;
        c.grpo.max_prompt_tokens = 1000;
        c.spell.gen_batch_size = 6;
        c.spell.max_gen_batches = 4;
        c.spell.verifier_n = 4;
        c.spell.verifier_update_ratio = 1.0;
        c.spell.prompts_dir = Some(compact_prompts(dir));
        c
    }

    #[test]
    fn every_role_samples_from_a_rollout_server_that_gets_the_policy() {
        let dir = tempfile::tempdir().unwrap();
        let state = qforge_serve::AppState::for_checkpoint(
            "tiny",
            &qforge_testkit::tiny_model(),
            qforge_serve::ServerConfig {
                allow_weight_reload: true,
                ..qforge_serve::ServerConfig::default()
            },
        )
        .unwrap();
        let url = qforge_serve::spawn_on_loopback(state).unwrap();
        let mut c = config(dir.path());
        c.spell.rollout_url = Some(url);
        c.spell.rollout_model = Some("tiny".into());
        c.spell.gen_batch_size = 4;
        c.spell.max_gen_batches = 1;
        c.grpo.max_new_tokens = 6;
        let mut trainer = SpellTrainer::new(c).unwrap();
        let r = trainer.step().unwrap();
        // The random model's questions are counted cases whatever they say.
        assert_eq!(
            r.bad_format + r.invalid + r.unfinished + r.bad_ground + r.zero_variance + r.good,
            4,
            "{r:?}"
        );
        assert!(r.questioner_seconds > 0.0);
        assert!(
            dir.path()
                .join("run/rollout-policy/model.safetensors")
                .is_file(),
            "the policy was pushed to the server before sampling"
        );
    }

    #[test]
    fn clusters_over_the_prompt_cap_are_left_out_and_bad_inputs_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = config(dir.path());
        let long = dir.path().join("long.jsonl");
        let paragraphs: Vec<String> = (0..400).map(|j| format!("k{j} = {j}")).collect();
        std::fs::write(
            &long,
            serde_json::json!({"id": "huge", "paragraphs": paragraphs}).to_string()
                + "\n"
                + &serde_json::json!({"id": "small", "paragraphs": ["k1 = 2"]}).to_string(),
        )
        .unwrap();
        c.corpora[0].path = long.clone();
        let trainer = SpellTrainer::new(c.clone()).unwrap();
        assert_eq!(trainer.overlong_clusters(), ["huge"]);
        // A replacement template that drops a placeholder is refused, naming the file.
        std::fs::write(
            c.spell.prompts_dir.as_ref().unwrap().join("verifier.txt"),
            "Compare {answer_1} and {answer_2}",
        )
        .unwrap();
        let err = SpellTrainer::new(c.clone()).err().unwrap().to_string();
        assert!(
            err.contains("verifier.txt") && err.contains("{problem}"),
            "{err}"
        );
        // An empty cluster file, and a held-out question about no known cluster.
        compact_prompts(dir.path());
        std::fs::write(&long, "\n").unwrap();
        let err = SpellTrainer::new(c.clone()).err().unwrap().to_string();
        assert!(
            err.contains("long.jsonl") && err.contains("no clusters"),
            "{err}"
        );
        let mut c = config(&dir.path().join("fresh"));
        let held = dir.path().join("held.jsonl");
        std::fs::write(
            &held,
            r#"{"task": "doc_general_qa", "cluster": "nowhere", "question": "q", "answer": "a"}"#,
        )
        .unwrap();
        c.spell.eval_questions = Some(held);
        let err = SpellTrainer::new(c).err().unwrap().to_string();
        assert!(
            err.contains("held.jsonl:1") && err.contains("nowhere"),
            "{err}"
        );
    }

    #[test]
    fn three_roles_train_every_step_and_a_killed_run_resumes_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let straight_dir = dir.path().join("a");
        std::fs::create_dir_all(&straight_dir).unwrap();
        let mut straight = SpellTrainer::new(config(&straight_dir))
            .unwrap()
            .with_source(Box::new(ScriptedRoles));
        let reports: Vec<SpellStepReport> = straight.train(|_| {}).unwrap();
        assert_eq!(reports.len(), 3);
        for r in &reports {
            assert!(
                r.questioner_samples > 0 && r.responder_samples > 0 && r.verifier_samples > 0,
                "{r:?}"
            );
            assert!(r.loss.is_finite() && !r.skipped, "{r:?}");
            assert!(r.bad_format + r.bad_ground + r.zero_variance > 0, "{r:?}");
            assert!(
                r.questioner_bad_trained > 0,
                "bad cases join the update: {r:?}"
            );
            assert_eq!(r.responder_samples, 3 * 4, "prompts_per_step groups of G");
            assert!(r.good >= 3, "{r:?}");
            assert_eq!(
                r.pass_rate_histogram.iter().sum::<usize>(),
                r.good + r.zero_variance
            );
        }
        assert!(
            reports.iter().any(|r| r.evidence_mean > 3.0),
            "evidence grows with memory"
        );
        assert!(!straight.memory().is_empty());
        let metrics = std::fs::read_to_string(straight_dir.join("run/metrics.jsonl")).unwrap();
        assert_eq!(metrics.lines().count(), 3);
        assert!(straight_dir.join("run/policy/model.safetensors").exists());

        // The same run killed after step 2 (its checkpoint written), then started again.
        let killed_dir = dir.path().join("b");
        std::fs::create_dir_all(&killed_dir).unwrap();
        {
            let mut first = SpellTrainer::new(config(&killed_dir))
                .unwrap()
                .with_source(Box::new(ScriptedRoles));
            for _ in 0..2 {
                first.step().unwrap();
                first.save_checkpoint().unwrap();
            }
        }
        let mut resumed = SpellTrainer::new(config(&killed_dir))
            .unwrap()
            .with_source(Box::new(ScriptedRoles));
        assert_eq!(resumed.policy().step_count(), 2);
        let third = resumed.step().unwrap();
        assert_eq!(third.loss, reports[2].loss, "same loss after resuming");
        assert_eq!(third.questioner_samples, reports[2].questioner_samples);
        assert_eq!(resumed.memory(), straight.memory(), "same history memory");
    }
}

mod evaluation {
    use qforge_rl::spell::SpellTask;
    use qforge_rl::spell::eval::{
        LongQaSettings, SampleScore, Sampler, best_of_k, judge_verdict, load_items, run, summarize,
        truncate_middle,
    };
    use qforge_rl::spell::prompts::PromptSet;
    use qforge_util::SplitMix;

    #[test]
    fn bootstrap_best_of_k_estimates_pass_at_k() {
        // Drawing k of n scores with replacement, c of them right: 1 − ((n − c)/n)^k.
        for (n, c, k) in [(8, 1, 2), (8, 2, 4), (8, 4, 8), (8, 0, 8), (8, 8, 3)] {
            let scores: Vec<f64> = (0..n).map(|i| f64::from(u8::from(i < c))).collect();
            let got = best_of_k(&scores, k, 4000, &mut SplitMix(42));
            let want = 1.0 - ((n - c) as f64 / n as f64).powi(k as i32);
            assert!(
                (got - want).abs() < 0.03,
                "n={n} c={c} k={k}: {got} vs {want}"
            );
        }
    }

    #[test]
    fn pass_at_1_is_the_mean_and_judges_lift_rule_misses() {
        let items: Vec<_> = ["a", "b"]
            .iter()
            .map(|id| qforge_rl::spell::eval::LongQaItem {
                id: id.to_string(),
                task: SpellTask::DocGeneralQa,
                context: String::new(),
                question: String::new(),
                answer: String::new(),
            })
            .collect();
        let s = |rule: f64, judge: Option<f64>| SampleScore {
            pred: None,
            rule,
            judge,
        };
        let scores = vec![
            vec![
                s(1.0, None),
                s(0.0, Some(1.0)),
                s(0.0, Some(0.0)),
                s(0.0, None),
            ],
            vec![s(0.0, Some(0.0)); 4],
        ];
        let report = summarize(&items, &scores, 4, 100, 0);
        assert_eq!(report.overall.pass_at_1, 2.0 / 8.0);
        assert_eq!(report.overall.rule_mean, 1.0 / 8.0);
        assert_eq!(report.overall.judge_calls, 6);
        assert_eq!(report.overall.pass_at_k.len(), 3, "pass@2..=4");
        let p4 = report.overall.pass_at_k[2];
        assert!((p4 - (1.0 - 0.5f64.powi(4)) / 2.0).abs() < 0.05, "{p4}");
        assert!(judge_verdict("Explanation: fine.\nDecision: [[YES]]") == 1.0);
        assert!(judge_verdict("[[YES]] or [[NO]]") == 0.0);
        assert_eq!(truncate_middle(&[1, 2, 3, 4, 5, 6, 7], 4), vec![1, 2, 6, 7]);
    }

    #[test]
    fn long_context_files_load_and_bad_rows_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let leval = dir.path().join("quality.jsonl");
        std::fs::write(
            &leval,
            serde_json::json!({"input": "A story.", "instructions": ["Why?\n (A) x\n (B) y"], "outputs": ["(B) y"], "evaluation": "exam", "source": "quality"}).to_string()
                + "\n"
                + &serde_json::json!({"input": "Docs.", "instructions": ["How long?"], "outputs": ["A year."], "evaluation": "f1"}).to_string(),
        )
        .unwrap();
        let items = load_items(&leval).unwrap();
        assert_eq!(items.len(), 2);
        assert_eq!(
            (items[0].task, items[0].answer.as_str()),
            (SpellTask::DocMc, "B")
        );
        assert_eq!(
            (items[1].task, items[1].answer.as_str()),
            (SpellTask::DocGeneralQa, "A year.")
        );
        let kv = dir.path().join("kv.jsonl");
        std::fs::write(
            &kv,
            r#"{"ordered_kv_records": [["k1", "v1"], ["k2", "v2"]], "key": "k2", "value": "v2"}"#,
        )
        .unwrap();
        let items = load_items(&kv).unwrap();
        assert!(items[0].context.contains("Key: \"k2\" Value: \"v2\""));
        let nq = dir.path().join("nq-open-oracle.jsonl");
        std::fs::write(&nq, r#"{"question": "who wrote it", "answers": ["Ada", "A. L."], "ctxs": [{"title": "Ada", "text": "Ada wrote it."}]}"#).unwrap();
        let items = load_items(&nq).unwrap();
        assert_eq!(
            (items[0].question.as_str(), items[0].answer.as_str()),
            ("who wrote it", "Ada")
        );
        assert_eq!(items[0].context, "Ada\nAda wrote it.");
        let bad = dir.path().join("bad.jsonl");
        std::fs::write(&bad, "{\"task\": \"doc_mc\", \"context\": \"c\", \"question\": \"q\", \"answer\": \"A\"}\n{\"task\": \"poetry\"}\n").unwrap();
        let err = load_items(&bad).unwrap_err().to_string();
        assert!(err.contains("bad.jsonl:2") && err.contains("task"), "{err}");
        std::fs::write(&bad, "not json\n").unwrap();
        assert!(
            load_items(&bad)
                .unwrap_err()
                .to_string()
                .contains("bad.jsonl:1")
        );
    }

    #[test]
    fn evaluation_samples_judges_through_a_server_and_resumes() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("qa.jsonl");
        let rows: Vec<String> = (0..3)
            .map(|i| {
                serde_json::json!({"id": format!("q{i}"), "task": if i == 2 {"doc_mc"} else {"doc_general_qa"},
                    "context": "Paris is the capital of France. ".repeat(40), "question": "What is the capital?", "answer": if i == 2 {"A"} else {"Paris"}})
                    .to_string()
            })
            .collect();
        std::fs::write(&data, rows.join("\n")).unwrap();
        let items = load_items(&data).unwrap();
        let ck = qforge_model::Checkpoint::load_dir(
            &qforge_testkit::tiny_model(),
            candle_core::DType::F32,
            &candle_core::Device::Cpu,
        )
        .unwrap();
        let engine = qforge_engine::Engine::from_checkpoint(ck);
        let tokenizer = engine.tokenizer().clone();
        let state = qforge_serve::AppState::for_checkpoint(
            "judge",
            &qforge_testkit::tiny_model(),
            qforge_serve::ServerConfig::default(),
        )
        .unwrap();
        let url = qforge_serve::spawn_on_loopback(state).unwrap();
        let judge: std::sync::Arc<dyn qforge_engine::ChatBackend> = std::sync::Arc::new(
            qforge_engine::RemoteBackend::new(qforge_engine::RemoteConfig::new(url, "judge"))
                .unwrap(),
        );
        let settings = LongQaSettings {
            samples: 3,
            max_new_tokens: 6,
            max_input_tokens: 200,
            ..LongQaSettings::default()
        };
        let out = dir.path().join("samples.jsonl");
        let prompts = PromptSet::released();
        let sampler = Sampler::Embedded(engine);
        let first = run(
            &items,
            &prompts,
            &tokenizer,
            &sampler,
            Some(judge.clone()),
            &settings,
            &out,
            |_, _| {},
        )
        .unwrap();
        let lines = std::fs::read_to_string(&out).unwrap();
        assert_eq!(lines.lines().count(), 3);
        assert_eq!(
            first.truncated_prompts, 3,
            "the released prompt is longer than 200 tokens"
        );
        // The random model never answers: every QA sample asks the judge, multiple choice never.
        assert_eq!(first.overall.judge_calls, 2 * 3);
        assert!((0.0..=1.0).contains(&first.overall.pass_at_1));
        // Rerun: nothing is sampled again.
        let again = run(
            &items,
            &prompts,
            &tokenizer,
            &sampler,
            Some(judge),
            &settings,
            &out,
            |_, _| {},
        )
        .unwrap();
        assert_eq!(std::fs::read_to_string(&out).unwrap(), lines);
        assert_eq!(again, first);
    }
}

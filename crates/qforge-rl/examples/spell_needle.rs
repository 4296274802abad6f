//! SPELL self-play on a synthetic needle task (SPELL, arXiv 2509.23863): no labels are given
//! during RL; the policy's own questioner writes the questions and answers, its responder
//! answers over the whole cluster, its verifier judges.
//!
//!     cargo run --release -p qforge-rl --example spell_needle [-- RL_STEPS [SFT_STEPS [SEED]]]
//!
//! A cluster is lines of four one-letter words; one line also holds a 3-digit number (the
//! needle). The questioner sees three lines (the evidence) and, when the needle is among them,
//! writes `{"question": "?", "answer": "417"}`; the responder reads every line and answers
//! `answer is 417`; the verifier compares two answers (`? 417=417` → `[[YES]]`). A tiny random
//! Qwen3 is warmed up with SFT on the three roles over 2-3-line clusters, then trained with SPELL
//! on 6-line clusters. Held-out greedy responder accuracy on 6-line clusters is printed before
//! and after, with each step's case mix and pass rate.
//!
//! This is an experiment, not a demonstration: with the defaults (seed 1, 900 SFT steps, 20
//! SPELL steps; AMD EPYC, 2 cores, about 6 minutes) the warm-up already answers 0.969 of the
//! held-out clusters, and SPELL then degrades the policy: the questioner's bad formats rise from
//! 7 to 60 of 64 per step and held-out accuracy falls to 0.906. No learning claim rests on it.

use std::path::{Path, PathBuf};

use qforge_rl::spell::{CorpusSettings, SpellConfig, SpellStepReport, SpellTask, SpellTrainer};
use qforge_train::trainer::{Objective, TrainConfig, Trainer};
use qforge_util::{SplitMix, write_jsonl_atomic};
use serde_json::json;

/// Compact templates for a small model (the released ones are thousands of tokens).
fn write_prompts(dir: &Path) -> PathBuf {
    let p = dir.join("prompts");
    std::fs::create_dir_all(&p).unwrap();
    let files = [
        ("questioner_doc_general_qa.txt", "{context}\nask:"),
        (
            "questioner_doc_general_qa_history.txt",
            "{examples}\n{context}\nask:",
        ),
        ("responder_doc_general_qa.txt", "{content}\n{question}"),
        ("verifier.txt", "{problem} {answer_1}={answer_2}"),
    ];
    for (name, text) in files {
        std::fs::write(p.join(name), text).unwrap();
    }
    p
}

fn digits(rng: &mut SplitMix) -> String {
    (0..3)
        .map(|_| char::from(b'0' + rng.below(10) as u8))
        .collect()
}

/// `lines` lines of four letters, one of them with a 3-digit needle; returns the lines and
/// the needle.
fn cluster(rng: &mut SplitMix, lines: usize) -> (Vec<String>, String) {
    let needle = digits(rng);
    let at = rng.below(lines);
    let paragraphs = (0..lines)
        .map(|i| {
            let mut words: Vec<String> = (0..4)
                .map(|_| char::from(b'a' + rng.below(26) as u8).to_string())
                .collect();
            if i == at {
                words.insert(rng.below(5), needle.clone());
            }
            words.join(" ")
        })
        .collect();
    (paragraphs, needle)
}

/// SFT rows: per cluster, two responder rows, one questioner row, one verifier row.
fn warmup_rows(n: usize, seed: u64) -> Vec<serde_json::Value> {
    let mut rng = SplitMix(seed);
    let row = |user: String, assistant: String| json!({"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]});
    let mut rows = Vec::new();
    for _ in 0..n {
        let lines = 2 + rng.below(2);
        let (paragraphs, needle) = cluster(&mut rng, lines);
        let text = paragraphs.join("\n");
        rows.push(row(format!("{text}\n?"), format!("answer is {needle}")));
        let lines = 2 + rng.below(2);
        let (paragraphs2, needle2) = cluster(&mut rng, lines);
        rows.push(row(
            format!("{}\n?", paragraphs2.join("\n")),
            format!("answer is {needle2}"),
        ));
        rows.push(row(
            format!("{text}\nask:"),
            format!("{{\"question\": \"?\", \"answer\": \"{needle}\"}}"),
        ));
        let other = if rng.below(2) == 0 {
            needle.clone()
        } else {
            digits(&mut rng)
        };
        let verdict = if other == needle { "[[YES]]" } else { "[[NO]]" };
        rows.push(row(format!("? {other}={needle}"), verdict.into()));
    }
    rows
}

fn warm_up(out: &Path, sft_steps: u64) -> PathBuf {
    let warm = out.join("warmup");
    if !warm.join("config.json").is_file() {
        write_jsonl_atomic(&out.join("sft.jsonl"), &warmup_rows(4096, 11)).unwrap();
        let mut t = Trainer::new(
            TrainConfig {
                model: qforge_testkit::retrieval_model(&out.join("base"), 1),
                data: out.join("sft.jsonl"),
                output_dir: out.join("sft"),
                max_length: 128,
                batch_size: 32,
                lr: 3e-4,
                schedule: "constant".into(),
                max_steps: Some(sft_steps),
                seed: 1,
                ..TrainConfig::default()
            },
            Objective::Sft,
        )
        .unwrap();
        t.train(|_| {}, |_| {}).unwrap();
        t.save_model(&warm).unwrap();
    }
    warm
}

fn write_clusters(path: &Path, held: Option<&Path>, n: usize, lines: usize, seed: u64) {
    let mut rng = SplitMix(seed);
    let (mut rows, mut questions) = (Vec::new(), Vec::new());
    for i in 0..n {
        let (paragraphs, needle) = cluster(&mut rng, lines);
        let id = format!("c{seed}-{i}");
        rows.push(json!({"id": id, "paragraphs": paragraphs}));
        questions.push(
            json!({"task": "doc_general_qa", "cluster": id, "question": "?", "answer": needle}),
        );
    }
    write_jsonl_atomic(path, &rows).unwrap();
    if let Some(h) = held {
        write_jsonl_atomic(h, &questions).unwrap();
    }
}

fn main() {
    let arg = |i: usize, default: u64| {
        std::env::args()
            .nth(i)
            .map_or(default, |s| s.parse().expect("a number"))
    };
    let (steps, sft_steps, seed) = (arg(1, 20), arg(2, 900), arg(3, 1));
    let root = PathBuf::from("runs/spell_needle");
    std::fs::create_dir_all(&root).unwrap();
    let started = std::time::Instant::now();
    let warm = warm_up(&root, sft_steps);
    eprintln!("warm-up: {:.0}s", started.elapsed().as_secs_f64());
    let out = root.join(format!("seed{seed}"));
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(&out).unwrap();
    let train = out.join("clusters.jsonl");
    write_clusters(&train, None, 256, 6, seed ^ 21);
    let held_clusters = out.join("held_clusters.jsonl");
    let held = out.join("held.jsonl");
    write_clusters(&held_clusters, Some(&held), 64, 6, 999);
    let mut c = SpellConfig {
        model: warm,
        output_dir: out.join("spell"),
        max_steps: steps,
        save_steps: 0,
        seed,
        corpora: vec![
            CorpusSettings {
                path: train,
                tasks: vec![SpellTask::DocGeneralQa],
                n_docs: vec![3],
            },
            // Loaded for the held-out questions, never drawn (its task has weight 0).
            CorpusSettings {
                path: held_clusters,
                tasks: vec![SpellTask::DocMc],
                n_docs: vec![3],
            },
        ],
        ..SpellConfig::default()
    };
    c.grpo.group_size = 8;
    c.grpo.prompts_per_step = 8;
    c.grpo.max_new_tokens = 48;
    c.grpo.temperature = 1.0;
    c.grpo.top_p = 1.0;
    c.grpo.lr = 1e-4;
    c.grpo.max_prompt_tokens = 1000;
    c.spell.gen_batch_size = 16;
    c.spell.max_gen_batches = 4;
    c.spell.verifier_n = 4;
    c.spell.verifier_update_ratio = 0.25;
    c.spell.task_weights = vec![(SpellTask::DocGeneralQa, 1.0), (SpellTask::DocMc, 0.0)];
    c.spell.prompts_dir = Some(write_prompts(&out));
    c.spell.eval_questions = Some(held);
    c.spell.eval_steps = steps;
    let mut trainer = SpellTrainer::new(c).unwrap();
    let before = trainer.evaluate().unwrap();
    eprintln!("held-out responder accuracy before SPELL: {before:.3}");
    let reports: Vec<SpellStepReport> = trainer
        .train(|r| {
            eprintln!(
                "[{:>5.0}s] step {}: pass rate {:.2} | good {} bad_format {} bad_ground {} zero_var {} invalid {} | Q {} R {} V {} | loss {:.4}",
                started.elapsed().as_secs_f64(), r.step, r.pass_rate_mean, r.good, r.bad_format, r.bad_ground,
                r.zero_variance, r.invalid, r.questioner_samples, r.responder_samples, r.verifier_samples, r.loss
            )
        })
        .unwrap();
    let after = reports
        .last()
        .and_then(|r| r.eval_accuracy)
        .unwrap_or(f64::NAN);
    eprintln!("held-out responder accuracy: {before:.3} -> {after:.3}");
}

//! QwenLong-L1's LLM-judge equivalence reward through any [`ChatBackend`] (a local `qforge
//! serve`, vLLM, SGLang, a commercial API): the judge sees the question, the prediction and the
//! gold answer, is asked whether they are equivalent without re-solving, and scores 1 when its
//! reply contains `YES` (the official check; the prompt asks for `[[YES]]` / `[[NO]]`).
//! Verdicts are cached; a batch is judged concurrently; a judge that keeps failing scores 0 and
//! is counted, so the hybrid reward falls back to the rule reward alone.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use qforge_engine::ChatBackend;
use qforge_engine::chat::ChatRequest;
use serde_json::json;

use crate::reward::{RewardFn, Task};

/// The judge's instructions (QwenLong-L1 `docqa.py`, `GENERAL_ORM_PROMPT`).
pub const JUDGE_SYSTEM_PROMPT: &str = "You are an expert in verifying if two answers are the same.
Your input is a problem and two answers, Answer 1 and Answer 2. You need to check if they are equivalent.
Your task is to determine if two answers are equivalent, without attempting to solve the original problem.
Compare the answers to verify they represent identical values or meaning, even when written in different forms or notations.

Your output must follow the following format:
1) Provide an explanation for why the answers are equivalent or not.
2) Then provide your final answer in the form of: [[YES]] or [[NO]]
";

/// The judge's user turn (`ORM_USER_TEMPLATE`).
pub fn judge_user_prompt(question: &str, prediction: &str, gold: &str) -> String {
    format!("\nProblem: {question}\nAnswer 1: {prediction}\nAnswer 2: {gold}\n")
}

/// The official verdict rule: `YES` anywhere in the reply.
pub fn judge_says_yes(reply: &str) -> bool {
    reply.contains("YES")
}

/// The question a judge sees: QwenLong-L1 cuts the user turn between `</text>` and the format
/// line; other prompts are used whole.
pub fn question_of(task: &Task) -> String {
    let text: String = task
        .messages
        .iter()
        .filter(|m| m["role"] == "user")
        .filter_map(|m| m["content"].as_str())
        .collect::<Vec<_>>()
        .join("\n");
    match (
        text.find("</text>"),
        text.find("Format your response as follows:"),
    ) {
        (Some(a), Some(b)) if a < b => text[a + "</text>".len()..b].trim().to_string(),
        _ => text,
    }
}

pub struct JudgeReward {
    backend: Arc<dyn ChatBackend>,
    runtime: tokio::runtime::Runtime,
    /// How the prediction is read from a response (the rule reward's extraction).
    extract: fn(&str) -> Option<String>,
    cache: Mutex<HashMap<(String, String, String), bool>>,
    calls: AtomicUsize,
    failures: AtomicUsize,
}

impl JudgeReward {
    pub fn new(
        backend: Arc<dyn ChatBackend>,
        extract: fn(&str) -> Option<String>,
    ) -> std::io::Result<Self> {
        Ok(Self {
            backend,
            runtime: tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?,
            extract,
            cache: Mutex::default(),
            calls: AtomicUsize::new(0),
            failures: AtomicUsize::new(0),
        })
    }

    /// Judge requests made (cache misses).
    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::Relaxed)
    }

    async fn verdict(backend: Arc<dyn ChatBackend>, key: (String, String, String)) -> Option<bool> {
        let request = ChatRequest::from_openai(&json!({
            "messages": [
                {"role": "system", "content": JUDGE_SYSTEM_PROMPT},
                {"role": "user", "content": judge_user_prompt(&key.0, &key.1, &key.2)},
            ],
            "temperature": 0,
            "max_tokens": 512,
        }))
        .ok()?;
        let response = backend.chat(request).await.ok()?;
        Some(judge_says_yes(&response.text()))
    }
}

impl RewardFn for JudgeReward {
    fn score(&self, task: &Task, response: &str) -> f64 {
        self.score_batch(&[(task, response)])[0]
    }

    fn score_batch(&self, items: &[(&Task, &str)]) -> Vec<f64> {
        // (question, prediction, gold) per item and gold answer; None without a prediction.
        let keys: Vec<Option<Vec<(String, String, String)>>> = items
            .iter()
            .map(|(task, response)| {
                let pred = (self.extract)(response).filter(|p| !p.trim().is_empty())?;
                let q = question_of(task);
                Some(
                    task.answers
                        .iter()
                        .map(|g| (q.clone(), pred.clone(), g.clone()))
                        .collect(),
                )
            })
            .collect();
        let missing: Vec<(String, String, String)> = {
            let cache = self.cache.lock().expect("judge cache");
            let mut m: Vec<_> = keys
                .iter()
                .flatten()
                .flatten()
                .filter(|k| !cache.contains_key(*k))
                .cloned()
                .collect();
            m.sort();
            m.dedup();
            m
        };
        if !missing.is_empty() {
            self.calls.fetch_add(missing.len(), Ordering::Relaxed);
            let backend = self.backend.clone();
            let verdicts = self.runtime.block_on(async {
                let tasks: Vec<_> = missing
                    .iter()
                    .cloned()
                    .map(|k| tokio::spawn(Self::verdict(backend.clone(), k)))
                    .collect();
                let mut out = Vec::with_capacity(tasks.len());
                for t in tasks {
                    out.push(t.await.ok().flatten());
                }
                out
            });
            let mut cache = self.cache.lock().expect("judge cache");
            for (k, v) in missing.into_iter().zip(verdicts) {
                match v {
                    Some(v) => {
                        cache.insert(k, v);
                    }
                    // Not cached: a later step asks again.
                    None => {
                        self.failures.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }
        let cache = self.cache.lock().expect("judge cache");
        keys.iter()
            .map(|k| match k {
                Some(ks) => f64::from(u8::from(ks.iter().any(|k| cache.get(k) == Some(&true)))),
                None => 0.0,
            })
            .collect()
    }

    fn failures(&self) -> usize {
        self.failures.load(Ordering::Relaxed)
    }
}

/// QwenLong-L1's hybrid reward: the rule reward, and the judge only when the rule gives less
/// than 1; the result is the max of the two.
pub struct HybridReward {
    pub rule: Arc<dyn RewardFn>,
    pub judge: Arc<dyn RewardFn>,
}

impl RewardFn for HybridReward {
    fn score(&self, task: &Task, response: &str) -> f64 {
        self.score_batch(&[(task, response)])[0]
    }

    fn score_batch(&self, items: &[(&Task, &str)]) -> Vec<f64> {
        let rule = self.rule.score_batch(items);
        let unsure: Vec<usize> = (0..items.len()).filter(|&i| rule[i] < 1.0).collect();
        let judged = self
            .judge
            .score_batch(&unsure.iter().map(|&i| items[i]).collect::<Vec<_>>());
        let mut out = rule;
        for (&i, j) in unsure.iter().zip(judged) {
            out[i] = out[i].max(j);
        }
        out
    }

    fn failures(&self) -> usize {
        self.rule.failures() + self.judge.failures()
    }
}

//! Writing-RL's pairwise comparison reward (`verl/utils/reward_score/writing_rl.py`): an LLM
//! judge sees the writing prompt and two answers, the policy's and the current reference, in the
//! released MT-Bench-style template, and answers `[[A]]`, `[[B]]` or `[[C]]` (tie).
//!
//! Departures, by design:
//! - Verdicts are parsed strictly (the first `[[A]]`/`[[B]]`/`[[C]]`). The released fallback,
//!   when the reply has no bracketed verdict, maps the first of the letters `A`, `B`, `C`
//!   found anywhere in the explanation, so nearly any reply ("Assistant B wins.") counts as
//!   `A`. Here a reply without a verdict is asked again (up to `retries` times), and a judge
//!   that never gives one scores as a tie and never advances the ladder.
//! - A judge that cannot be reached after its retries fails the step with a typed error (the
//!   released code scores it as a loss and trains on it).
//! - Both orders can be judged and averaged (`position = "both"`); the release judges one order.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use qforge_engine::ChatBackend;
use qforge_engine::chat::ChatRequest;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::error::{Result, RlError};

/// `JUDGE_TEMPLATE_DEFAULT` (`judge_prompts.py`), byte for byte.
pub const JUDGE_TEMPLATE: &str = include_str!("prompts/judge_default.txt");
/// `JUDGE_TEMPLATE_CRITERIA`, byte for byte (its leading stray `"` included).
pub const JUDGE_TEMPLATE_CRITERIA: &str = include_str!("prompts/judge_criteria.txt");

/// Fills `{question}`, `{answer_a}`, `{answer_b}` and `{criteria}` in one pass (as Python's
/// `str.format`), so braces inside the filled texts stay as written.
pub fn render_judge_prompt(
    question: &str,
    answer_a: &str,
    answer_b: &str,
    criteria: Option<&str>,
) -> String {
    let template = match criteria {
        Some(_) => JUDGE_TEMPLATE_CRITERIA,
        None => JUDGE_TEMPLATE,
    };
    let mut out = String::with_capacity(template.len() + question.len() + answer_a.len() * 2);
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let tail = &rest[open..];
        let close = tail.find('}').map_or(tail.len(), |c| c + 1);
        let fill = match &tail[..close] {
            "{question}" => Some(question),
            "{answer_a}" => Some(answer_a),
            "{answer_b}" => Some(answer_b),
            "{criteria}" => criteria,
            _ => None,
        };
        out.push_str(fill.unwrap_or(&tail[..close]));
        rest = &tail[close..];
    }
    out.push_str(rest);
    out
}

/// The passage a response contributes (`extract_solution`): the text after a chat-template
/// assistant header, and after `</think>` (up to a second `</think>`, as the release splits).
pub fn extract_passage(response: &str) -> String {
    let mut text = response;
    if let Some((_, after)) = text.split_once("Assistant:") {
        text = after;
    } else if let Some((_, after)) = text.split_once("<|im_start|>assistant") {
        text = after;
    }
    if text.contains("</think>") {
        return text
            .split("</think>")
            .nth(1)
            .unwrap_or_default()
            .trim()
            .to_string();
    }
    text.to_string()
}

/// The judge's decision about the answers in the order it saw them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Verdict {
    A,
    B,
    Tie,
}

/// The first bracketed verdict in a judge's reply.
pub fn parse_verdict(reply: &str) -> Option<Verdict> {
    let bytes = reply.as_bytes();
    (0..bytes.len().saturating_sub(4)).find_map(|i| {
        if &bytes[i..i + 2] != b"[[" || &bytes[i + 3..i + 5] != b"]]" {
            return None;
        }
        match bytes[i + 2] {
            b'A' => Some(Verdict::A),
            b'B' => Some(Verdict::B),
            b'C' => Some(Verdict::Tie),
            _ => None,
        }
    })
}

/// The policy's result against its reference.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Win,
    Tie,
    Loss,
    /// The judge answered but never with a verdict.
    NoVerdict,
}

/// Reward values of a win, a tie and a loss.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RewardValues {
    pub win: f64,
    pub tie: f64,
    pub loss: f64,
}

impl RewardValues {
    /// The paper's: 1 / 0.5 / 0.
    pub const PAPER: Self = Self {
        win: 1.0,
        tie: 0.5,
        loss: 0.0,
    };
    /// The released code's, with its 0.1 format bonus: 1.1 / 0.55 / 0.1.
    pub const RELEASED: Self = Self {
        win: 1.1,
        tie: 0.55,
        loss: 0.1,
    };

    pub fn score(&self, outcome: Outcome) -> f64 {
        match outcome {
            Outcome::Win => self.win,
            Outcome::Tie | Outcome::NoVerdict => self.tie,
            Outcome::Loss => self.loss,
        }
    }
}

impl Default for RewardValues {
    fn default() -> Self {
        Self::PAPER
    }
}

/// Which slot the policy's answer takes (`REWARD_STRATEGY`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Position {
    /// Reference as A, policy as B: against the judge's first-slot preference (the release's
    /// default, for strong writers).
    #[default]
    PositionDisadvantage,
    /// Policy as A (for weak writers).
    PositionAdvantage,
    /// Both orders, scores averaged; a strict win needs a win in both.
    Both,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JudgeSettings {
    /// An OpenAI-compatible server (`…/v1`); empty: the built-in rubric judge
    /// ([`super::rubric::RubricJudge`]).
    pub url: String,
    pub model: String,
    /// Environment variable holding the API key (empty: none).
    pub api_key_env: String,
    /// The release calls its judge at 0.1.
    pub temperature: f32,
    pub max_tokens: usize,
    /// Judge calls in flight at once (the release's `API_PARALLEL` is 12).
    pub concurrency: usize,
    /// Extra attempts when a call fails or the reply has no verdict (the release retries 3).
    pub retries: usize,
    pub position: Position,
    pub values: RewardValues,
    /// Seconds before a judge call is abandoned.
    pub timeout_s: u64,
}

impl Default for JudgeSettings {
    fn default() -> Self {
        Self {
            url: String::new(),
            model: "judge".into(),
            api_key_env: String::new(),
            temperature: 0.1,
            max_tokens: 1024,
            concurrency: 12,
            retries: 3,
            position: Position::default(),
            values: RewardValues::default(),
            timeout_s: 300,
        }
    }
}

/// One comparison to make: the prompt, the policy's passage, the reference, the criteria.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Comparison {
    pub prompt: String,
    pub response: String,
    pub reference: String,
    pub criteria: Option<String>,
}

/// What the judge decided about one comparison.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Judgement {
    pub outcome: Outcome,
    pub score: f64,
    /// A win in every order judged: what advances a prompt's reference ladder.
    pub strict_win: bool,
}

/// The released scoring of one order's verdict for the policy.
fn order_outcome(verdict: Option<Verdict>, policy_is_a: bool) -> Outcome {
    match (verdict, policy_is_a) {
        (None, _) => Outcome::NoVerdict,
        (Some(Verdict::Tie), _) => Outcome::Tie,
        (Some(Verdict::A), true) | (Some(Verdict::B), false) => Outcome::Win,
        _ => Outcome::Loss,
    }
}

/// Combines the judged orders into one judgement.
pub fn combine(outcomes: &[Outcome], values: RewardValues) -> Judgement {
    let score = outcomes.iter().map(|&o| values.score(o)).sum::<f64>() / outcomes.len() as f64;
    let all = |o: Outcome| outcomes.iter().all(|&x| x == o);
    let outcome = if all(Outcome::Win) {
        Outcome::Win
    } else if all(Outcome::Loss) {
        Outcome::Loss
    } else if all(Outcome::NoVerdict) {
        Outcome::NoVerdict
    } else {
        Outcome::Tie
    };
    Judgement {
        outcome,
        score,
        strict_win: outcome == Outcome::Win,
    }
}

/// Counters of a judge's work.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct JudgeCounts {
    /// Requests sent (retries included).
    pub calls: usize,
    /// Orders answered from the cache.
    pub cache_hits: usize,
    /// Orders whose replies never had a verdict.
    pub no_verdicts: usize,
}

type CacheKey = (Comparison, bool);

/// The pairwise judge over any [`ChatBackend`]: concurrent with bounded parallelism, retried,
/// cached by (prompt, response, reference, criteria, order).
pub struct PairwiseJudge {
    backend: Arc<dyn ChatBackend>,
    settings: JudgeSettings,
    runtime: tokio::runtime::Runtime,
    cache: Mutex<HashMap<CacheKey, Option<Verdict>>>,
    calls: Arc<AtomicUsize>,
    cache_hits: AtomicUsize,
    no_verdicts: AtomicUsize,
}

impl PairwiseJudge {
    pub fn new(backend: Arc<dyn ChatBackend>, settings: JudgeSettings) -> Result<Self> {
        if settings.concurrency == 0 {
            return Err(RlError::Invalid(
                "judge concurrency must be at least 1".into(),
            ));
        }
        Ok(Self {
            backend,
            settings,
            runtime: tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .map_err(|source| RlError::Runtime {
                    what: "the writing judge",
                    source,
                })?,
            cache: Mutex::default(),
            calls: Arc::default(),
            cache_hits: AtomicUsize::new(0),
            no_verdicts: AtomicUsize::new(0),
        })
    }

    pub fn settings(&self) -> &JudgeSettings {
        &self.settings
    }

    pub fn counts(&self) -> JudgeCounts {
        JudgeCounts {
            calls: self.calls.load(Ordering::Relaxed),
            cache_hits: self.cache_hits.load(Ordering::Relaxed),
            no_verdicts: self.no_verdicts.load(Ordering::Relaxed),
        }
    }

    /// Judges every comparison (each order the position setting asks for), concurrently.
    /// Fails with the backend's error when a call still fails after its retries.
    pub fn judge(&self, items: &[Comparison]) -> Result<Vec<Judgement>> {
        let orders: &[bool] = match self.settings.position {
            Position::PositionDisadvantage => &[false],
            Position::PositionAdvantage => &[true],
            Position::Both => &[false, true],
        };
        let keys: Vec<CacheKey> = items
            .iter()
            .flat_map(|c| orders.iter().map(move |&a| (c.clone(), a)))
            .collect();
        // Per key, its verdict from the cache, or the index of its request (a key that appears
        // twice in the batch is asked once).
        let mut resolved: Vec<Option<Verdict>> = vec![None; keys.len()];
        let mut missing: Vec<CacheKey> = Vec::new();
        let mut waiting: Vec<(usize, usize)> = Vec::new();
        {
            let cache = self.cache.lock().expect("judge cache");
            let mut asked: HashMap<&CacheKey, usize> = HashMap::new();
            for (k, key) in keys.iter().enumerate() {
                if let Some(v) = cache.get(key) {
                    self.cache_hits.fetch_add(1, Ordering::Relaxed);
                    resolved[k] = *v;
                    continue;
                }
                let m = *asked.entry(key).or_insert_with(|| {
                    missing.push(key.clone());
                    missing.len() - 1
                });
                waiting.push((k, m));
            }
        }
        let fetched = self.runtime.block_on(self.fetch(missing))?;
        for (k, m) in waiting {
            resolved[k] = fetched[m].1;
        }
        {
            let mut cache = self.cache.lock().expect("judge cache");
            for (key, verdict) in fetched {
                if verdict.is_none() {
                    self.no_verdicts.fetch_add(1, Ordering::Relaxed);
                }
                cache.insert(key, verdict);
            }
        }
        Ok(resolved
            .chunks(orders.len())
            .map(|verdicts| {
                let outcomes: Vec<Outcome> = verdicts
                    .iter()
                    .zip(orders)
                    .map(|(&v, &a)| order_outcome(v, a))
                    .collect();
                combine(&outcomes, self.settings.values)
            })
            .collect())
    }

    async fn fetch(&self, keys: Vec<CacheKey>) -> Result<Vec<(CacheKey, Option<Verdict>)>> {
        let gate = Arc::new(tokio::sync::Semaphore::new(self.settings.concurrency));
        let mut tasks = tokio::task::JoinSet::new();
        for (i, key) in keys.into_iter().enumerate() {
            let gate = gate.clone();
            let backend = self.backend.clone();
            let settings = self.settings.clone();
            let calls = self.calls.clone();
            tasks.spawn(async move {
                let _permit = gate.acquire_owned().await.expect("never closed");
                let verdict = ask(&*backend, &settings, &key, &calls).await;
                (i, key, verdict)
            });
        }
        let mut out = Vec::new();
        while let Some(joined) = tasks.join_next().await {
            let (i, key, verdict) = joined.expect("judge task panicked");
            out.push((i, key, verdict?));
        }
        out.sort_by_key(|(i, _, _)| *i);
        Ok(out.into_iter().map(|(_, k, v)| (k, v)).collect())
    }
}

/// One order of one comparison: the verdict, retrying failed calls and verdict-less replies.
async fn ask(
    backend: &dyn ChatBackend,
    settings: &JudgeSettings,
    (c, policy_is_a): &CacheKey,
    calls: &AtomicUsize,
) -> Result<Option<Verdict>> {
    let (a, b) = if *policy_is_a {
        (&c.response, &c.reference)
    } else {
        (&c.reference, &c.response)
    };
    let prompt = render_judge_prompt(&c.prompt, a, b, c.criteria.as_deref());
    let request = ChatRequest::from_openai(&json!({
        "model": settings.model,
        "messages": [{"role": "user", "content": prompt}],
        "temperature": settings.temperature,
        "max_tokens": settings.max_tokens,
    }))
    .map_err(|e| RlError::Invalid(format!("judge request: {e:?}")))?;
    let mut last_error = None;
    for attempt in 0..=settings.retries {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_millis(200 << attempt.min(5))).await;
        }
        calls.fetch_add(1, Ordering::Relaxed);
        let reply = tokio::time::timeout(
            Duration::from_secs(settings.timeout_s.max(1)),
            backend.chat(request.clone()),
        )
        .await;
        match reply {
            Ok(Ok(response)) => {
                last_error = None;
                if let Some(v) = parse_verdict(&response.text()) {
                    return Ok(Some(v));
                }
            }
            Ok(Err(e)) => last_error = Some(e),
            Err(_) => {
                last_error = Some(qforge_engine::BackendError::Unavailable(format!(
                    "no reply within {} s",
                    settings.timeout_s
                )))
            }
        }
    }
    match last_error {
        Some(source) => Err(RlError::Backend {
            context: "writing-rl judge",
            source,
        }),
        None => Ok(None),
    }
}

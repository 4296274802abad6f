//! SPELL's evaluation (`SPELL/eval/{generate,verify,metric_utils}.py`): k samples per question
//! at temperature 0.7 / top-p 0.95 with the responder prompts, the templated prompt
//! middle-truncated to an input cap, each sample scored max(cover-EM, judge), pass@1 as the
//! mean over the k samples and pass@k as the bootstrap "best@k" of the released metrics.
//!
//! Two departures, both written here: the released `process_answer` reads a metric key
//! (`sub_em`) that its `calc_metrics` never fills, so its rule score for QA is always 0 and
//! the judge decides alone; here the rule is cover-EM (`sub_em_strict`, gold inside the
//! prediction) as the paper states. The bootstrap draws with this crate's RNG, not numpy's.

use std::path::Path;

use qforge_util::{RowError, SplitMix};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::SpellTask;
use super::prompts::PromptSet;
use super::questioner::after_think;
use super::reward::{ground_truth_text, rule_score};
use crate::{Result, RlError};

/// One question with its document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LongQaItem {
    pub id: String,
    pub task: SpellTask,
    pub context: String,
    pub question: String,
    pub answer: String,
}

/// The letter of an L-Eval multiple-choice output such as "(B) the river" or "C".
fn leading_letter(s: &str) -> Option<String> {
    let t = s.trim();
    let t = t.strip_prefix('(').unwrap_or(t);
    let mut chars = t.chars();
    let letter = chars.next().filter(|c| ('A'..='D').contains(c))?;
    matches!(chars.next(), None | Some(')' | '.' | ' ')).then(|| letter.to_string())
}

/// Questions of a file (gzip allowed): rows `{id?, task, context | paragraphs, question,
/// answer}`; L-Eval documents (`input`, `instructions`, `outputs`; `exam` rows are multiple
/// choice); lost-in-the-middle key-value records or NQ passages. Names the row it cannot use.
pub fn load_items(path: &Path) -> Result<Vec<LongQaItem>> {
    let stem = path
        .file_name()
        .and_then(|s| s.to_str())
        .unwrap_or("data")
        .split('.')
        .next()
        .unwrap_or("data")
        .to_string();
    let mut out = Vec::new();
    for (line, v) in crate::tasks::json_rows(path)? {
        let bad = |m: &str| RlError::from(RowError::new(path, line, m));
        let str_of = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
        if let (Some(input), Some(qs), Some(answers)) = (
            str_of("input"),
            v.get("instructions").and_then(Value::as_array),
            v.get("outputs").and_then(Value::as_array),
        ) {
            let exam = str_of("evaluation").as_deref() == Some("exam");
            for (j, (q, a)) in qs.iter().zip(answers).enumerate() {
                let (q, a) = (q.as_str().unwrap_or(""), a.as_str().unwrap_or(""));
                let (task, answer) = if exam {
                    let letter =
                        leading_letter(a).ok_or_else(|| bad("an exam answer has no letter"))?;
                    (SpellTask::DocMc, letter)
                } else {
                    (SpellTask::DocGeneralQa, a.to_string())
                };
                out.push(LongQaItem {
                    id: format!("{stem}-{line}-{j}"),
                    task,
                    context: input.clone(),
                    question: q.to_string(),
                    answer,
                });
            }
            continue;
        }
        if let Some(records) = v.get("ordered_kv_records").and_then(Value::as_array) {
            let context: Vec<String> = records.iter().map(crate::tasks::kv_record_line).collect();
            let key = str_of("key").ok_or_else(|| bad("no `key`"))?;
            out.push(LongQaItem {
                id: format!("{stem}-{line}"),
                task: SpellTask::DocGeneralQa,
                context: context.join("\n"),
                question: format!("What is the value of key \"{key}\"?"),
                answer: str_of("value").ok_or_else(|| bad("no `value`"))?,
            });
            continue;
        }
        if let Some(ctxs) = v.get("ctxs").and_then(Value::as_array) {
            let context: Vec<String> = ctxs
                .iter()
                .map(|c| {
                    format!(
                        "{}\n{}",
                        c["title"].as_str().unwrap_or(""),
                        c["text"].as_str().unwrap_or("")
                    )
                })
                .collect();
            let answer = v["answers"]
                .as_array()
                .and_then(|a| a.first())
                .and_then(Value::as_str)
                .ok_or_else(|| bad("no `answers`"))?;
            out.push(LongQaItem {
                id: format!("{stem}-{line}"),
                task: SpellTask::DocGeneralQa,
                context: context.join("\n"),
                question: str_of("question").ok_or_else(|| bad("no `question`"))?,
                answer: answer.to_string(),
            });
            continue;
        }
        let task: SpellTask = match v.get("task") {
            Some(t) => serde_json::from_value(t.clone())
                .map_err(|_| bad("`task` must be docmath_qa, doc_general_qa or doc_mc"))?,
            None => return Err(bad("no `task` (or an L-Eval / lost-in-the-middle row)")),
        };
        let context = match (
            str_of("context"),
            v.get("paragraphs").and_then(Value::as_array),
        ) {
            (Some(c), _) => c,
            (None, Some(ps)) => ps
                .iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join("\n"),
            _ => return Err(bad("no `context` or `paragraphs`")),
        };
        let answer = match v.get("answer") {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Number(n)) => n.to_string(),
            _ => return Err(bad("no `answer`")),
        };
        out.push(LongQaItem {
            id: str_of("id").unwrap_or_else(|| format!("{stem}-{line}")),
            task,
            context,
            question: str_of("question").ok_or_else(|| bad("no `question`"))?,
            answer,
        });
    }
    if out.is_empty() {
        return Err(RlError::file(path, "no questions"));
    }
    Ok(out)
}

/// The solver prompt of an item (the responder templates, as `generate.format_prompt`).
pub fn solver_prompt(prompts: &PromptSet, item: &LongQaItem) -> String {
    prompts.responder(item.task, item.context.trim(), item.question.trim())
}

/// `generate.get_tokenized_data`: a prompt over `max_len` tokens keeps its first and last
/// `max_len / 2`.
pub fn truncate_middle(ids: &[u32], max_len: usize) -> Vec<u32> {
    if max_len == 0 || ids.len() <= max_len {
        return ids.to_vec();
    }
    let half = max_len / 2;
    ids[..half]
        .iter()
        .chain(&ids[ids.len() - half..])
        .copied()
        .collect()
}

/// The released evaluation judge prompt (`eval/common.py`'s `LLM_JUDGE_PROMPT`).
pub const JUDGE_PROMPT: &str = include_str!("prompts/eval_judge.txt");

/// The judge's user message.
pub fn judge_prompt(question: &str, prediction: &str, gold: &str) -> String {
    JUDGE_PROMPT
        .replacen("{problem}", question, 1)
        .replacen("{answer_1}", prediction, 1)
        .replacen("{answer_2}", gold, 1)
}

/// `verify.process_single_item`: YES when the text after thinking says YES and not NO.
pub fn judge_verdict(reply: &str) -> f64 {
    let judge = after_think(reply).unwrap_or("Empty");
    f64::from(u8::from(judge.contains("YES") && !judge.contains("NO")))
}

/// One scored sample.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SampleScore {
    pub pred: Option<String>,
    /// Cover-EM (QA), numeric equivalence (DocMath) or letter match (multiple choice).
    pub rule: f64,
    /// The judge's verdict where it was asked (rule below 1, not multiple choice).
    pub judge: Option<f64>,
}

impl SampleScore {
    pub fn score(&self) -> f64 {
        self.rule.max(self.judge.unwrap_or(0.0))
    }

    /// Whether the released `verify.py` asks the judge about this sample.
    pub fn wants_judge(&self, task: SpellTask) -> bool {
        task != SpellTask::DocMc && self.rule < 1.0
    }
}

/// The rule score of a response.
pub fn score_response(item: &LongQaItem, response: &str) -> SampleScore {
    let r = rule_score(item.task, response, &ground_truth_text(&item.answer));
    SampleScore {
        pred: r.pred,
        rule: r.score,
        judge: None,
    }
}

/// `bootstrap_metric` with `max` as the reduction: the mean, over `n_bootstrap` draws of `k`
/// scores with replacement, of the best score drawn.
pub fn best_of_k(scores: &[f64], k: usize, n_bootstrap: usize, rng: &mut SplitMix) -> f64 {
    if scores.is_empty() || k == 0 {
        return 0.0;
    }
    let total: f64 = (0..n_bootstrap)
        .map(|_| {
            (0..k)
                .map(|_| scores[rng.below(scores.len())])
                .fold(f64::NEG_INFINITY, f64::max)
        })
        .sum();
    total / n_bootstrap as f64
}

/// Metrics of one task (or of all).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskMetrics {
    pub task: String,
    pub questions: usize,
    /// Mean score over every sample (the paper's pass@1 with k samples).
    pub pass_at_1: f64,
    /// `pass_at_k[j]` is pass@(j + 2): bootstrap best@k, k = 2..=samples.
    pub pass_at_k: Vec<f64>,
    pub rule_mean: f64,
    pub judge_calls: usize,
}

/// The report of a run: per task and overall.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LongQaReport {
    pub samples: usize,
    pub max_input_tokens: usize,
    pub truncated_prompts: usize,
    pub tasks: Vec<TaskMetrics>,
    pub overall: TaskMetrics,
}

/// Aggregates per-question sample scores as `metric_utils.compute_metrics` does (1000
/// bootstrap draws, seed 42).
pub fn summarize(
    items: &[LongQaItem],
    scores: &[Vec<SampleScore>],
    samples: usize,
    max_input_tokens: usize,
    truncated_prompts: usize,
) -> LongQaReport {
    let metrics = |name: String, picked: &[usize]| {
        let mut rng = SplitMix(42);
        let per_question: Vec<Vec<f64>> = picked
            .iter()
            .map(|&i| scores[i].iter().map(SampleScore::score).collect())
            .collect();
        let all: Vec<f64> = per_question.iter().flatten().copied().collect();
        let rules: Vec<f64> = picked
            .iter()
            .flat_map(|&i| scores[i].iter().map(|s| s.rule))
            .collect();
        let mean = |v: &[f64]| {
            if v.is_empty() {
                0.0
            } else {
                v.iter().sum::<f64>() / v.len() as f64
            }
        };
        let pass_at_k = (2..=samples)
            .map(|k| {
                let per: Vec<f64> = per_question
                    .iter()
                    .map(|q| best_of_k(q, k, 1000, &mut rng))
                    .collect();
                mean(&per)
            })
            .collect();
        TaskMetrics {
            task: name,
            questions: picked.len(),
            pass_at_1: mean(&all),
            pass_at_k,
            rule_mean: mean(&rules),
            judge_calls: picked
                .iter()
                .flat_map(|&i| &scores[i])
                .filter(|s| s.judge.is_some())
                .count(),
        }
    };
    let mut tasks = Vec::new();
    for task in SpellTask::ALL {
        let picked: Vec<usize> = (0..items.len())
            .filter(|&i| items[i].task == task)
            .collect();
        if !picked.is_empty() {
            tasks.push(metrics(task.name().to_string(), &picked));
        }
    }
    let all: Vec<usize> = (0..items.len()).collect();
    LongQaReport {
        samples,
        max_input_tokens,
        truncated_prompts,
        tasks,
        overall: metrics("overall".into(), &all),
    }
}

/// How samples are drawn (the released eval script's settings by default).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LongQaSettings {
    /// Samples per question (k).
    pub samples: usize,
    pub temperature: f32,
    pub top_p: f32,
    pub max_new_tokens: usize,
    /// The templated prompt is middle-truncated to this many tokens (16K and 100K in the paper).
    pub max_input_tokens: usize,
    pub seed: u64,
}

impl Default for LongQaSettings {
    fn default() -> Self {
        Self {
            samples: 8,
            temperature: 0.7,
            top_p: 0.95,
            max_new_tokens: 20000,
            max_input_tokens: 16384,
            seed: 0,
        }
    }
}

pub use crate::sampler::Sampler;

/// One question's samples as written to the samples file (one line per question, so an
/// interrupted run resumes after the last question written).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QuestionSamples {
    pub id: String,
    pub task: SpellTask,
    pub truncated: bool,
    pub responses: Vec<String>,
    pub scores: Vec<SampleScore>,
}

/// Runs the evaluation: samples every question not yet in `samples_file`, scores them (rule,
/// then the judge where the released script asks it), appends each question's line, and
/// summarises all of them.
pub fn run(
    items: &[LongQaItem],
    prompts: &PromptSet,
    tokenizer: &qforge_model::Tokenizer,
    sampler: &Sampler,
    judge: Option<std::sync::Arc<dyn qforge_engine::ChatBackend>>,
    settings: &LongQaSettings,
    samples_file: &Path,
    mut on_question: impl FnMut(usize, usize),
) -> Result<LongQaReport> {
    let mut done = crate::sampler::SamplesLog::open(samples_file, |q: &QuestionSamples| &q.id)?;
    let runtime = crate::sampler::client_runtime()?;
    for (n, item) in items.iter().enumerate() {
        if done.get(&item.id).is_some() {
            on_question(n + 1, items.len());
            continue;
        }
        let messages =
            vec![serde_json::json!({"role": "user", "content": solver_prompt(prompts, item)})];
        let text =
            tokenizer.apply_chat_template(&messages, &qforge_model::ChatOptions::generation())?;
        let ids = tokenizer.encode(&text, false)?;
        let truncated = settings.max_input_tokens > 0 && ids.len() > settings.max_input_tokens;
        let ids = truncate_middle(&ids, settings.max_input_tokens);
        let responses = sampler.sample(
            &runtime,
            &ids,
            crate::sampler::SampleParams {
                n: settings.samples,
                temperature: settings.temperature,
                top_p: settings.top_p,
                max_new_tokens: settings.max_new_tokens,
                seed: settings.seed ^ ((n as u64) << 16),
            },
        )?;
        let mut scores: Vec<SampleScore> =
            responses.iter().map(|r| score_response(item, r)).collect();
        if let Some(judge) = &judge {
            let asks: Vec<usize> = (0..scores.len())
                .filter(|&i| scores[i].wants_judge(item.task))
                .collect();
            let verdicts = runtime.block_on(async {
                let mut handles = Vec::new();
                for &i in &asks {
                    // The released script formats a missing prediction as "None".
                    let pred = scores[i].pred.clone().unwrap_or_else(|| "None".into());
                    let prompt = judge_prompt(&item.question, &pred, &item.answer);
                    let judge = judge.clone();
                    handles.push(tokio::spawn(async move {
                        let mut request = qforge_engine::ChatRequest::user(prompt);
                        request.temperature = Some(0.0);
                        judge.chat(request).await.map(|r| judge_verdict(&r.text()))
                    }));
                }
                let mut out = Vec::new();
                for h in handles {
                    out.push(
                        h.await
                            .map_err(|e| RlError::Invalid(format!("a judge task panicked: {e}")))?,
                    );
                }
                Ok::<_, RlError>(out)
            })?;
            for (i, verdict) in asks.into_iter().zip(verdicts) {
                // A failed judge call scores 0, as the released script's exception path does.
                scores[i].judge = Some(verdict.unwrap_or(0.0));
            }
        }
        let line = QuestionSamples {
            id: item.id.clone(),
            task: item.task,
            truncated,
            responses,
            scores,
        };
        done.append(&item.id, line)?;
        on_question(n + 1, items.len());
    }
    let row = |i: &LongQaItem| done.get(&i.id).expect("every item was sampled");
    let scores: Vec<Vec<SampleScore>> = items.iter().map(|i| row(i).scores.clone()).collect();
    let truncated = items.iter().filter(|i| row(i).truncated).count();
    Ok(summarize(
        items,
        &scores,
        settings.samples,
        settings.max_input_tokens,
        truncated,
    ))
}

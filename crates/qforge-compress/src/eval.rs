//! `qforge compress eval` (QwenLong-CPRS, arXiv 2505.18092): compresses synthetic samples and measures
//! what was kept against the gold facts (span recall), the answers (RULER's
//! `string_match_all` on the kept text), the compression ratio and throughput, per task.
//! [`downstream`] runs a reader on the compressed and on the full context and scores both.

use std::time::Instant;

use qforge_engine::{BackendError, ChatBackend, ChatRequest};
use serde::Serialize;

use crate::CompressError;
use crate::model::Compressor;
use crate::pipeline::{CompressOptions, compress, reader_messages};
use crate::synthetic::{Sample, string_match_all};

/// One sample's outcome.
#[derive(Debug, Clone, Serialize)]
pub struct SampleScore {
    pub task: String,
    /// Share of gold facts found whole in the kept text.
    pub fact_recall: f64,
    /// `string_match_all` of the answers on the kept text.
    pub answer_recall: f64,
    pub context_tokens: usize,
    pub kept_tokens: usize,
    pub seconds: f64,
}

/// Aggregates over a set of samples.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Summary {
    pub samples: usize,
    pub fact_recall: f64,
    pub answer_recall: f64,
    pub context_tokens: usize,
    pub kept_tokens: usize,
    /// Σ context tokens / Σ kept tokens (`None` when nothing was kept).
    pub ratio: Option<f64>,
    /// Context tokens compressed per second.
    pub tokens_per_s: f64,
}

impl Summary {
    pub fn of<'a>(scores: impl IntoIterator<Item = &'a SampleScore>) -> Summary {
        let mut s = Summary::default();
        let mut seconds = 0.0;
        for x in scores {
            s.samples += 1;
            s.fact_recall += x.fact_recall;
            s.answer_recall += x.answer_recall;
            s.context_tokens += x.context_tokens;
            s.kept_tokens += x.kept_tokens;
            seconds += x.seconds;
        }
        if s.samples > 0 {
            s.fact_recall /= s.samples as f64;
            s.answer_recall /= s.samples as f64;
        }
        s.ratio = (s.kept_tokens > 0).then(|| s.context_tokens as f64 / s.kept_tokens as f64);
        s.tokens_per_s = s.context_tokens as f64 / f64::max(seconds, 1e-9);
        s
    }
}

/// Whitespace runs as one space, so a fact matches across line breaks the spans keep.
fn squeeze(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Compresses one sample and scores the kept text.
pub fn score_sample(
    compressor: &Compressor,
    sample: &Sample,
    options: &CompressOptions,
) -> Result<(SampleScore, Vec<String>), CompressError> {
    let started = Instant::now();
    let out = compress(
        compressor,
        &sample.instruction,
        &sample.query,
        &sample.context,
        options,
    )?;
    let seconds = started.elapsed().as_secs_f64();
    let kept: Vec<String> = out.spans.iter().map(|s| s.text.clone()).collect();
    let joined = squeeze(&kept.join("\n"));
    let facts = sample.fact_texts();
    let found = facts
        .iter()
        .filter(|f| joined.contains(&squeeze(f)))
        .count();
    Ok((
        SampleScore {
            task: sample.task.clone(),
            fact_recall: if facts.is_empty() {
                1.0
            } else {
                found as f64 / facts.len() as f64
            },
            answer_recall: string_match_all(&joined, &sample.answers),
            context_tokens: out.context_tokens,
            kept_tokens: out.kept_tokens,
            seconds,
        },
        kept,
    ))
}

/// Scores every sample; returns the per-sample scores in order.
pub fn evaluate(
    compressor: &Compressor,
    samples: &[Sample],
    options: &CompressOptions,
    on_sample: impl FnMut(&SampleScore),
) -> Result<Vec<SampleScore>, CompressError> {
    Ok(run(compressor, samples, options, None, on_sample)?.scores)
}

/// A reader's scores on one sample with the compressed and with the full context.
#[derive(Debug, Clone, Serialize)]
pub struct ReaderScore {
    pub task: String,
    pub compressed: f64,
    pub full: f64,
    pub compressed_prompt_tokens: usize,
    pub full_prompt_tokens: usize,
}

/// A reader's mean scores over samples.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct ReaderSummary {
    pub samples: usize,
    pub compressed: f64,
    pub full: f64,
}

impl ReaderSummary {
    /// `None` for no samples.
    pub fn of<'a>(scores: impl IntoIterator<Item = &'a ReaderScore>) -> Option<ReaderSummary> {
        let (mut n, mut compressed, mut full) = (0, 0.0, 0.0);
        for s in scores {
            n += 1;
            compressed += s.compressed;
            full += s.full;
        }
        (n > 0).then(|| ReaderSummary {
            samples: n,
            compressed: compressed / n as f64,
            full: full / n as f64,
        })
    }
}

/// Asks `reader` the sample's query with the kept spans (the released downstream prompt) and
/// with the whole context in the same shape, and scores each reply by `string_match_all`.
pub async fn downstream(
    reader: &dyn ChatBackend,
    sample: &Sample,
    kept: &[String],
    max_tokens: usize,
) -> Result<ReaderScore, BackendError> {
    let ask = |doc: &[String]| ChatRequest {
        messages: reader_messages(doc, &sample.query),
        max_tokens: Some(max_tokens),
        temperature: Some(0.0),
        ..ChatRequest::default()
    };
    let short = reader.chat(ask(kept)).await?;
    let long = reader
        .chat(ask(std::slice::from_ref(&sample.context)))
        .await?;
    Ok(ReaderScore {
        task: sample.task.clone(),
        compressed: string_match_all(&short.text(), &sample.answers),
        full: string_match_all(&long.text(), &sample.answers),
        compressed_prompt_tokens: short.usage.prompt_tokens,
        full_prompt_tokens: long.usage.prompt_tokens,
    })
}

/// What `qforge compress eval` measures: every sample's scores and, with a reader, the
/// reader's scores on the compressed and on the full context.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub scores: Vec<SampleScore>,
    pub reads: Vec<ReaderScore>,
}

/// A downstream reader and its answer length.
pub struct Reader<'a> {
    pub backend: &'a dyn ChatBackend,
    pub max_tokens: usize,
}

impl Report {
    /// One row a task (in the order the tasks first appear), then `all`.
    pub fn rows(&self) -> Vec<(String, Summary, Option<ReaderSummary>)> {
        let mut tasks: Vec<&str> = Vec::new();
        for s in &self.scores {
            if !tasks.contains(&s.task.as_str()) {
                tasks.push(&s.task);
            }
        }
        let mut rows: Vec<_> = tasks
            .iter()
            .map(|t| {
                (
                    t.to_string(),
                    Summary::of(self.scores.iter().filter(|x| x.task == *t)),
                    ReaderSummary::of(self.reads.iter().filter(|x| x.task == *t)),
                )
            })
            .collect();
        rows.push((
            "all".into(),
            Summary::of(&self.scores),
            ReaderSummary::of(&self.reads),
        ));
        rows
    }

    /// `{"tasks": {TASK: {"summary", "reader"}}, "samples": [...], "reader": [...]}`.
    pub fn to_json(&self) -> serde_json::Value {
        let tasks: serde_json::Map<String, serde_json::Value> = self
            .rows()
            .into_iter()
            .map(|(task, s, read)| (task, serde_json::json!({"summary": s, "reader": read})))
            .collect();
        serde_json::json!({"tasks": tasks, "samples": self.scores, "reader": self.reads})
    }
}

/// Compresses and scores every sample and, with a reader, asks it with the compressed and with
/// the full context; `on_sample` sees each score as it is made.
pub fn run(
    compressor: &Compressor,
    samples: &[Sample],
    options: &CompressOptions,
    reader: Option<Reader<'_>>,
    mut on_sample: impl FnMut(&SampleScore),
) -> Result<Report, CompressError> {
    // A runtime only to await the reader.
    let reader = match reader {
        Some(r) => Some((
            r,
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(CompressError::Runtime)?,
        )),
        None => None,
    };
    let mut report = Report::default();
    for sample in samples {
        let in_sample = |source| CompressError::Sample {
            task: sample.task.clone(),
            source: Box::new(source),
        };
        let (score, kept) = score_sample(compressor, sample, options).map_err(in_sample)?;
        if let Some((r, runtime)) = &reader {
            let read = runtime
                .block_on(downstream(r.backend, sample, &kept, r.max_tokens))
                .map_err(|e| in_sample(CompressError::Reader(e)))?;
            report.reads.push(read);
        }
        on_sample(&score);
        report.scores.push(score);
    }
    Ok(report)
}

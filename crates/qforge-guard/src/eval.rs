//! `qforge guard eval`: runs a Gen or Stream guard over a labelled set and scores it as the
//! paper does (unsafe positive; strict maps Controversial to Unsafe, loose to Safe).

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Serialize;

use crate::datasets::Example;
use crate::error::{GuardError, Result};
use crate::generative::{GenGuard, GenOutcome};
use crate::labels::{Mode, Policy, Safety};
use crate::metrics::{BinaryCounts, CategoryConfusion, LatencyBin, Summary};
use crate::stream::{Debounce, StreamGuard, first_flag};

/// The guard being evaluated.
pub enum Guard {
    Gen(Box<GenGuard>),
    Stream(Arc<StreamGuard>),
}

#[derive(Debug, Clone, Serialize)]
pub struct EvalReport {
    pub task: Mode,
    pub guard: &'static str,
    pub examples: usize,
    pub strict: Summary,
    pub loose: Summary,
    /// Gen outputs outside the grammar: excluded from the F1 counts, never read as Safe.
    pub unparsable: usize,
    /// Examples longer than the guard's context (prompt plus the decoding budget for Gen):
    /// not scored, listed by id.
    pub skipped_too_long: Vec<String>,
    /// Refusal detection (response task, sets with refusal labels, Gen only).
    pub refusal: Option<Summary>,
    /// Gold category against predicted categories of the gold-unsafe items.
    pub categories: CategoryConfusion,
    /// Stream + spans only: where the first flag fell (strict reading), per bin.
    pub latency: Option<BTreeMap<&'static str, usize>>,
}

/// Scores `examples` (all of `task`). `on_progress(done, total)` is called as work completes.
pub fn evaluate(
    guard: &Guard,
    examples: &[Example],
    task: Mode,
    batch_size: usize,
    mut on_progress: impl FnMut(usize, usize),
) -> Result<EvalReport> {
    for e in examples {
        if e.mode()? != task {
            return Err(GuardError::InvalidInput(format!(
                "example {} is a {:?} item, not {task:?}: its last message decides",
                e.id,
                e.mode()?
            )));
        }
    }
    let mut strict = BinaryCounts::default();
    let mut loose = BinaryCounts::default();
    let mut refusal = BinaryCounts::default();
    let mut categories = CategoryConfusion::default();
    let mut latency: BTreeMap<LatencyBin, usize> = BTreeMap::new();
    let mut unparsable = 0;
    let mut skipped_too_long = Vec::new();
    match guard {
        Guard::Gen(g) => {
            let max = g.engine().model().config().max_position_embeddings;
            for (i, chunk) in examples.chunks(batch_size.max(1)).enumerate() {
                let mut fits = Vec::with_capacity(chunk.len());
                for e in chunk {
                    let (_, ids) = g.prompt_ids(&e.messages)?;
                    if ids.len() + crate::generative::MAX_NEW_TOKENS > max {
                        skipped_too_long.push(e.id.clone());
                    } else {
                        fits.push(e);
                    }
                }
                let convs: Vec<_> = fits.iter().map(|e| e.messages.clone()).collect();
                let outcomes = if convs.is_empty() {
                    Vec::new()
                } else {
                    g.moderate(&convs)?
                };
                for (e, outcome) in fits.into_iter().zip(outcomes) {
                    let GenOutcome::Parsed { verdict, .. } = outcome else {
                        unparsable += 1;
                        continue;
                    };
                    strict.add(verdict.is_flagged(Policy::Strict), e.unsafe_);
                    loose.add(verdict.is_flagged(Policy::Loose), e.unsafe_);
                    if let (Some(gold), Some(pred)) = (e.refusal, verdict.refusal) {
                        refusal.add(pred, gold);
                    }
                    if e.unsafe_ {
                        categories.add(e.category.as_deref(), &verdict.categories);
                    }
                }
                on_progress(((i + 1) * batch_size).min(examples.len()), examples.len());
            }
        }
        Guard::Stream(g) => {
            for (i, e) in examples.iter().enumerate() {
                // The conversation as it stands (no generation prompt), thinking off.
                let options = qforge_model::ChatOptions::default().with_enable_thinking(false);
                let text = g.tokenizer().apply_chat_template(&e.messages, &options)?;
                let ids = g.tokenizer().encode(&text, false)?;
                if ids.len() > g.model().config().max_position_embeddings {
                    skipped_too_long.push(e.id.clone());
                    on_progress(i + 1, examples.len());
                    continue;
                }
                let (session, query) = g.open(&ids, Debounce::Paper)?;
                let (flag_strict, flag_loose, category) = match task {
                    Mode::Prompt => (
                        query.is_flagged(Policy::Strict),
                        query.is_flagged(Policy::Loose),
                        Some(query.category),
                    ),
                    Mode::Response => {
                        let scored = session.scored();
                        let read = |policy: Policy| -> Vec<Safety> {
                            scored
                                .iter()
                                .map(|v| {
                                    if v.risk.is_flagged(policy) {
                                        Safety::Unsafe
                                    } else {
                                        Safety::Safe
                                    }
                                })
                                .collect()
                        };
                        let s = first_flag(&read(Policy::Strict), Debounce::Paper);
                        let l = first_flag(&read(Policy::Loose), Debounce::Paper);
                        if let Some((start, end)) = e.unsafe_span {
                            let at = s.map(|k| scored[k].position);
                            *latency.entry(LatencyBin::of(at, start, end)).or_default() += 1;
                        }
                        (s.is_some(), l.is_some(), s.map(|k| scored[k].category))
                    }
                };
                strict.add(flag_strict, e.unsafe_);
                loose.add(flag_loose, e.unsafe_);
                if e.unsafe_ {
                    let predicted: Vec<_> = category.filter(|_| flag_strict).into_iter().collect();
                    categories.add(e.category.as_deref(), &predicted);
                }
                on_progress(i + 1, examples.len());
            }
        }
    }
    let has_spans = examples.iter().any(|e| e.unsafe_span.is_some());
    Ok(EvalReport {
        task,
        guard: match guard {
            Guard::Gen(_) => "gen",
            Guard::Stream(_) => "stream",
        },
        examples: examples.len(),
        strict: strict.summary(),
        loose: loose.summary(),
        unparsable,
        skipped_too_long,
        refusal: (refusal.total() > 0).then(|| refusal.summary()),
        categories,
        latency: (matches!(guard, Guard::Stream(_)) && has_spans).then(|| {
            LatencyBin::ALL
                .iter()
                .map(|b| (b.label(), latency.get(b).copied().unwrap_or(0)))
                .collect()
        }),
    })
}

//! The history memory (the automated curriculum, `spell_dataset.DomainWeightedSPELLDataset` and
//! the trainer's cache update): per (task, cluster) a FIFO of the last L solved questions with
//! the paragraphs they were written from. A cluster drawn again shows the questioner the union
//! of those paragraphs plus a few unseen ones, and the remembered Q/A pairs as "Previous
//! Examples", so the evidence grows by `n_docs` paragraphs per solved round up to the cluster.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use qforge_util::SplitMix;
use serde::{Deserialize, Serialize};

use super::SpellTask;

/// One remembered question.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryEntry {
    /// Paragraph indices the questioner saw.
    pub evidence: Vec<usize>,
    pub question: String,
    pub answer: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryMemory {
    capacity: usize,
    /// Keyed `"{task}_{cluster id}"` as released.
    entries: BTreeMap<String, VecDeque<HistoryEntry>>,
}

/// What the questioner is shown for one cluster.
#[derive(Debug, Clone, PartialEq)]
pub struct QuestionerView {
    pub evidence: Vec<usize>,
    /// Remembered (question, answer) pairs, oldest first.
    pub examples: Vec<(String, String)>,
}

impl HistoryMemory {
    /// A memory keeping the last `capacity` questions per cluster (`cache_size`, L = 3).
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            entries: BTreeMap::new(),
        }
    }

    fn key(task: SpellTask, cluster: &str) -> String {
        format!("{}_{cluster}", task.name())
    }

    pub fn history(&self, task: SpellTask, cluster: &str) -> impl Iterator<Item = &HistoryEntry> {
        self.entries
            .get(&Self::key(task, cluster))
            .into_iter()
            .flatten()
    }

    /// Remembers a solved question; the oldest falls out beyond the capacity. (The released
    /// code meant to skip repeated questions, but its `continue` only ends an inner loop, so
    /// every question is kept; so here.)
    pub fn push(&mut self, task: SpellTask, cluster: &str, entry: HistoryEntry) {
        if self.capacity == 0 {
            return;
        }
        let queue = self.entries.entry(Self::key(task, cluster)).or_default();
        queue.push_back(entry);
        while queue.len() > self.capacity {
            queue.pop_front();
        }
    }

    /// Total remembered questions over all clusters.
    pub fn len(&self) -> usize {
        self.entries.values().map(VecDeque::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The paragraphs and examples for a questioner prompt: without history, `n_new` paragraphs
    /// drawn from the cluster's `n_paragraphs`; with history, the union of remembered evidence
    /// plus `n_new` unseen ones (fewer when the cluster runs out). Indices sorted.
    pub fn view(
        &self,
        task: SpellTask,
        cluster: &str,
        n_paragraphs: usize,
        n_new: usize,
        rng: &mut SplitMix,
    ) -> QuestionerView {
        let seen: BTreeSet<usize> = self
            .history(task, cluster)
            .flat_map(|e| e.evidence.iter().copied())
            .filter(|&i| i < n_paragraphs)
            .collect();
        let mut left: Vec<usize> = (0..n_paragraphs).filter(|i| !seen.contains(i)).collect();
        rng.shuffle(&mut left);
        left.truncate(n_new);
        let mut evidence: Vec<usize> = seen.into_iter().chain(left).collect();
        evidence.sort_unstable();
        QuestionerView {
            evidence,
            examples: self
                .history(task, cluster)
                .map(|e| (e.question.clone(), e.answer.clone()))
                .collect(),
        }
    }
}

/// The "Previous Examples" block of the questioner prompt.
pub fn examples_text(examples: &[(String, String)]) -> String {
    examples
        .iter()
        .enumerate()
        .map(|(i, (q, a))| format!("### Example {}:\nQuestion: {q}\nAnswer: {a}\n", i + 1))
        .collect::<Vec<_>>()
        .join("\n")
}

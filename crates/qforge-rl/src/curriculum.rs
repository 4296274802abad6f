//! QwenLong-L1's curriculum pieces (QwenLong-L1, arXiv 2505.17667): phases with growing
//! input-length caps, middle truncation of over-long inputs, and difficulty-aware
//! retrospective sampling of hard prompts from earlier phases.
//!
//! Difficulty is `1 − mean group reward`; hard prompts are those above a threshold (or the
//! top-q fraction), and they are drawn in proportion to their difficulty. The paper gives no
//! exact form; these choices follow the spec's suggestion and are configurable.

use qforge_util::SplitMix;
use serde::{Deserialize, Serialize};

/// Keeps the first and last `max_len / 2` tokens of an over-long input (QwenLong-L1's
/// evaluation truncation); inputs within the cap are unchanged.
pub fn middle_truncate(ids: &[u32], max_len: usize) -> Vec<u32> {
    if ids.len() <= max_len {
        return ids.to_vec();
    }
    let head = max_len / 2;
    let tail = max_len - head;
    ids[..head]
        .iter()
        .chain(&ids[ids.len() - tail..])
        .copied()
        .collect()
}

/// One curriculum phase.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Phase {
    /// Input-length cap in tokens for this phase's prompts.
    pub max_input_tokens: usize,
    pub steps: u64,
}

/// Which earlier prompts come back, and how many.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RetrospectiveConfig {
    /// Keep prompts with difficulty above this...
    pub threshold: f64,
    /// ...or, when set, the hardest `top_q` fraction instead.
    pub top_q: Option<f64>,
    /// Share of each later phase's prompts drawn from the kept hard prompts.
    pub mix_ratio: f64,
}

impl Default for RetrospectiveConfig {
    fn default() -> Self {
        Self {
            threshold: 0.5,
            top_q: None,
            mix_ratio: 0.2,
        }
    }
}

/// Hard prompts remembered across phases, with their difficulties.
#[derive(Debug, Clone, Default)]
pub struct RetrospectiveSampler {
    config: RetrospectiveConfig,
    /// (prompt index, difficulty).
    hard: Vec<(usize, f64)>,
}

impl RetrospectiveSampler {
    pub fn new(config: RetrospectiveConfig) -> Self {
        Self {
            config,
            hard: Vec::new(),
        }
    }

    /// Records a finished phase: `(prompt index, mean group reward)` of every prompt trained on
    /// (latest mean per prompt). Keeps the hard ones per the config.
    pub fn end_phase(&mut self, mean_rewards: &[(usize, f64)]) {
        let mut scored: Vec<(usize, f64)> = mean_rewards
            .iter()
            .map(|&(i, r)| (i, (1.0 - r).clamp(0.0, 1.0)))
            .collect();
        let keep: Vec<(usize, f64)> = match self.config.top_q {
            Some(q) => {
                scored.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
                let n = ((scored.len() as f64) * q.clamp(0.0, 1.0)).ceil() as usize;
                scored
                    .into_iter()
                    .take(n)
                    .filter(|(_, d)| *d > 0.0)
                    .collect()
            }
            None => scored
                .into_iter()
                .filter(|(_, d)| *d > self.config.threshold)
                .collect(),
        };
        for (i, d) in keep {
            match self.hard.iter_mut().find(|(j, _)| *j == i) {
                Some(slot) => slot.1 = d,
                None => self.hard.push((i, d)),
            }
        }
    }

    pub fn hard(&self) -> &[(usize, f64)] {
        &self.hard
    }

    /// How many of `batch` prompts come from the hard set.
    pub fn retrospective_count(&self, batch: usize) -> usize {
        if self.hard.is_empty() {
            return 0;
        }
        ((batch as f64) * self.config.mix_ratio).round() as usize
    }

    /// Draws `n` hard prompts with probability proportional to difficulty (with replacement).
    pub fn draw(&self, n: usize, rng: &mut SplitMix) -> Vec<usize> {
        let total: f64 = self.hard.iter().map(|(_, d)| d).sum();
        if self.hard.is_empty() || total <= 0.0 {
            return Vec::new();
        }
        (0..n)
            .map(|_| {
                let mut u = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64 * total;
                for &(i, d) in &self.hard {
                    if u < d {
                        return i;
                    }
                    u -= d;
                }
                self.hard.last().expect("non-empty").0
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn middle_truncation_keeps_both_ends() {
        let ids: Vec<u32> = (0..10).collect();
        assert_eq!(middle_truncate(&ids, 4), vec![0, 1, 8, 9]);
        assert_eq!(middle_truncate(&ids, 5), vec![0, 1, 7, 8, 9]);
        assert_eq!(middle_truncate(&ids, 10), ids);
        assert_eq!(middle_truncate(&ids, 0), Vec::<u32>::new());
    }

    #[test]
    fn hard_prompts_are_selected_by_threshold_or_top_q() {
        let rewards = [(0, 1.0), (1, 0.0), (2, 0.25), (3, 0.75), (4, 0.6)];
        let mut s = RetrospectiveSampler::new(RetrospectiveConfig::default());
        s.end_phase(&rewards);
        assert_eq!(s.hard(), &[(1, 1.0), (2, 0.75)]);
        let mut q = RetrospectiveSampler::new(RetrospectiveConfig {
            top_q: Some(0.6),
            ..RetrospectiveConfig::default()
        });
        q.end_phase(&rewards);
        let picked: Vec<usize> = q.hard().iter().map(|(i, _)| *i).collect();
        assert_eq!(picked, vec![1, 2, 4]);
        assert_eq!(q.retrospective_count(10), 2);
        assert_eq!(RetrospectiveSampler::default().retrospective_count(10), 0);
    }

    #[test]
    fn draws_follow_difficulty() {
        // Difficulties 0.8 and 0.2: a chi-squared test on 10,000 seeded draws.
        let mut s = RetrospectiveSampler::new(RetrospectiveConfig {
            threshold: 0.1,
            ..RetrospectiveConfig::default()
        });
        s.end_phase(&[(7, 0.2), (9, 0.8)]);
        let mut rng = SplitMix(11);
        let draws = s.draw(10_000, &mut rng);
        let sevens = draws.iter().filter(|&&i| i == 7).count() as f64;
        let nines = draws.len() as f64 - sevens;
        let chi2 = (sevens - 8000.0).powi(2) / 8000.0 + (nines - 2000.0).powi(2) / 2000.0;
        assert!(chi2 < 10.83, "chi2 {chi2} (p < 0.001 would reject)");
        assert!(draws.iter().all(|i| *i == 7 || *i == 9));
    }
}

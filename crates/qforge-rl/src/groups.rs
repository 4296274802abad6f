//! Which rollout groups a step trains on.
//!
//! - A group is *informative* when its rollouts are not all equally correct: the filter reads the
//!   correctness count (0 < #correct < G), not the reward's spread, so a format bonus cannot
//!   keep an all-wrong group (WebSailor, arXiv 2507.02592).
//! - DAPO's dynamic sampling keeps informative groups across generation rounds until the batch
//!   is full ([`DynamicSampler`]).
//! - DUPO drops uninformative groups and fills the freed slots by duplicating informative groups
//!   of the same batch, drawn with replacement from a seeded generator ([`dupo_fill`]); no second
//!   generation round.

use qforge_util::SplitMix;

/// Whether a group teaches anything: some but not all rollouts correct.
pub fn informative(correct: &[bool]) -> bool {
    let n = correct.iter().filter(|&&c| c).count();
    n > 0 && n < correct.len()
}

/// DUPO: indices of the groups to train on, `correct.len()` of them: every informative group
/// once, then duplicates of informative groups (seeded, with replacement) in the freed slots.
/// Empty when no group is informative (the step is skipped).
pub fn dupo_fill(correct: &[Vec<bool>], seed: u64) -> Vec<usize> {
    let keep: Vec<usize> = (0..correct.len())
        .filter(|&i| informative(&correct[i]))
        .collect();
    if keep.is_empty() {
        return Vec::new();
    }
    let mut rng = SplitMix(seed);
    let mut out = keep.clone();
    while out.len() < correct.len() {
        out.push(keep[rng.below(keep.len())]);
    }
    out
}

/// DUPO's pre-filter: prompts whose G rollouts were all correct are too easy to keep.
pub fn too_easy(correct: &[bool]) -> bool {
    !correct.is_empty() && correct.iter().all(|&c| c)
}

/// DAPO's dynamic sampling: informative groups are collected over generation rounds until
/// `target` groups are kept or `max_rounds` rounds were generated.
#[derive(Debug)]
pub struct DynamicSampler<G> {
    target: usize,
    max_rounds: usize,
    rounds: usize,
    kept: Vec<G>,
    seen: usize,
}

impl<G> DynamicSampler<G> {
    pub fn new(target: usize, max_rounds: usize) -> Self {
        Self {
            target,
            max_rounds: max_rounds.max(1),
            rounds: 0,
            kept: Vec::new(),
            seen: 0,
        }
    }

    /// Adds one generation round of groups with their correctness flags.
    pub fn push_round(&mut self, groups: impl IntoIterator<Item = (G, Vec<bool>)>) {
        self.rounds += 1;
        for (g, correct) in groups {
            self.seen += 1;
            if informative(&correct) && self.kept.len() < self.target {
                self.kept.push(g);
            }
        }
    }

    /// Whether another round is needed (and allowed).
    pub fn wants_more(&self) -> bool {
        self.kept.len() < self.target && self.rounds < self.max_rounds
    }

    pub fn rounds(&self) -> usize {
        self.rounds
    }

    /// Groups generated, kept or not.
    pub fn seen(&self) -> usize {
        self.seen
    }

    /// The kept groups (at most `target`; fewer when the rounds ran out).
    pub fn finish(self) -> Vec<G> {
        self.kept
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch() -> Vec<Vec<bool>> {
        vec![
            vec![true, true, true, true],     // too easy: dropped
            vec![true, false, false, false],  // informative
            vec![false, false, false, false], // all wrong: dropped
            vec![true, true, false, true],    // informative
            vec![false, false, false, false], // dropped
        ]
    }

    #[test]
    fn dupo_keeps_the_batch_size_and_only_informative_groups() {
        for seed in 0..20 {
            let picked = dupo_fill(&batch(), seed);
            assert_eq!(picked.len(), 5, "batch size preserved");
            assert!(picked.iter().all(|&i| i == 1 || i == 3), "{picked:?}");
            // Each informative group appears at least once; duplicates only from this batch.
            assert!(picked.contains(&1) && picked.contains(&3));
            assert_eq!(dupo_fill(&batch(), seed), picked, "seeded");
        }
        // Different seeds draw different duplicates at least sometimes.
        let draws: std::collections::HashSet<Vec<usize>> =
            (0..20).map(|s| dupo_fill(&batch(), s)).collect();
        assert!(draws.len() > 1);
        // All degenerate: skip.
        assert!(dupo_fill(&[vec![true, true], vec![false, false]], 1).is_empty());
    }

    #[test]
    fn pre_filter_drops_only_all_correct_prompts() {
        let b = batch();
        let dropped: Vec<bool> = b.iter().map(|g| too_easy(g)).collect();
        assert_eq!(dropped, vec![true, false, false, false, false]);
    }

    #[test]
    fn dynamic_sampling_fills_over_rounds_and_stops_at_the_cap() {
        let mut s = DynamicSampler::new(3, 4);
        s.push_round(batch().into_iter().enumerate());
        assert_eq!(s.rounds(), 1);
        assert!(s.wants_more(), "2 of 3 kept after one round");
        s.push_round(batch().into_iter().enumerate().map(|(i, g)| (i + 10, g)));
        assert!(!s.wants_more());
        assert_eq!(s.finish(), vec![1, 3, 11]);
        // Rounds run out before the target: what was kept is returned.
        let mut s = DynamicSampler::new(5, 2);
        s.push_round(batch().into_iter().enumerate());
        s.push_round(batch().into_iter().enumerate());
        assert!(!s.wants_more());
        assert_eq!(s.seen(), 10);
        assert_eq!(s.finish().len(), 4);
    }
}

//! Building the unified batch (`BatchAccumulator.get_final_batch`): how many bad questioner cases
//! join the good ones, stratified by task, and how many verifier groups are kept.

use qforge_util::SplitMix;

use super::SpellTask;

/// `_sample_bad_cases`: for each task in order of its number of good cases (most first, ties in
/// order of appearance), `floor(ratio × good) + carry` bad cases of that task are drawn; when a
/// task has too few, the shortfall carries to the next task. Returns indices into `bad_tasks`.
pub fn sample_bad_cases(
    good_tasks: &[SpellTask],
    bad_tasks: &[SpellTask],
    ratio: f64,
    rng: &mut SplitMix,
) -> Vec<usize> {
    if ratio <= 0.0 || bad_tasks.is_empty() {
        return Vec::new();
    }
    let mut counts: Vec<(SpellTask, usize)> = Vec::new();
    for &t in good_tasks {
        match counts.iter_mut().find(|(x, _)| *x == t) {
            Some((_, n)) => *n += 1,
            None => counts.push((t, 1)),
        }
    }
    // Stable: equal counts keep their order of first appearance, as `most_common` does.
    counts.sort_by(|a, b| b.1.cmp(&a.1));
    let mut picked = Vec::new();
    let mut carry = 0usize;
    for (task, good) in counts {
        let mut want = (ratio * good as f64).floor() as usize + carry;
        carry = 0;
        let mut available: Vec<usize> = (0..bad_tasks.len())
            .filter(|&i| bad_tasks[i] == task)
            .collect();
        if want > available.len() {
            carry = want - available.len();
            want = available.len();
        }
        rng.shuffle(&mut available);
        picked.extend(available.into_iter().take(want));
    }
    picked
}

/// `_build_final_judge_batch`: `floor(responder_samples × update_ratio / n)` verifier groups, drawn
/// at random, or none at all when fewer groups are available than that.
pub fn sample_verifier_groups(
    responder_samples: usize,
    update_ratio: f64,
    n: usize,
    available: usize,
    rng: &mut SplitMix,
) -> Vec<usize> {
    let want = (responder_samples as f64 * update_ratio / n.max(1) as f64).floor() as usize;
    if want > available {
        return Vec::new();
    }
    let mut all: Vec<usize> = (0..available).collect();
    rng.shuffle(&mut all);
    all.truncate(want);
    all.sort_unstable();
    all
}

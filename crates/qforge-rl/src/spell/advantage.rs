//! Role rewards and advantages (`core_algos.compute_spell_grpo_outcome_advantage`, Eqs. 7–9).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::SpellTask;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Questioner,
    Responder,
    Verifier,
}

/// A questioner sample's case (`non_tensor_batch['type']`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CaseType {
    /// Its question reached the responder batch.
    Good,
    /// Not a JSON record or a field missing or mistyped.
    BadFormat,
    /// Answered closed-book (the grounding filter).
    BadGround,
    /// Every responder sample got the same reward.
    ZeroVariance,
}

/// How the questioner's reward maps the responder pass rate (`algorithm.questioner.reward_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QuestionerReward {
    /// Eq. 7: a Gaussian of the pass rate around 0.5 with σ = 0.5/3.
    #[default]
    Gaussian,
    /// AZR's `1 − p`.
    Reverse,
    /// R-Zero's `1 − 2|p − 0.5|`.
    Rzero,
}

/// `questioner_mapping_function`: scores ≤ 0 (bad cases, unsolved) pass through, a pass rate of
/// 1 gives 0, anything else is mapped.
pub fn questioner_mapping(p: f64, mapping: QuestionerReward) -> f64 {
    if p <= 0.0 {
        return p;
    }
    if p == 1.0 {
        return 0.0;
    }
    match mapping {
        QuestionerReward::Gaussian => {
            let sigma = 0.5 / 3.0;
            (-(p - 0.5).powi(2) / (2.0 * sigma * sigma)).exp()
        }
        QuestionerReward::Reverse => 1.0 - p,
        QuestionerReward::Rzero => 1.0 - 2.0 * (p - 0.5).abs(),
    }
}

/// The questioner's reward for a bad case (Eq. 7's constants).
pub fn bad_case_reward(case: CaseType) -> f64 {
    match case {
        CaseType::BadFormat => -1.0,
        CaseType::BadGround => -0.5,
        CaseType::ZeroVariance | CaseType::Good => 0.0,
    }
}

/// One sample of the unified batch. `uid` groups a question's questioner and responder samples;
/// a verifier group has its own uid. `score` is the responder's (combined) reward or the
/// verifier's self-consistency score; a questioner's is ignored (derived here).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoleSample {
    pub role: Role,
    pub uid: u64,
    pub task: SpellTask,
    pub case: CaseType,
    pub score: f64,
}

fn mean_std(xs: &[f64]) -> (f64, f64) {
    let n = xs.len() as f64;
    let mean = xs.iter().sum::<f64>() / n;
    // torch.std: unbiased.
    let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
    (mean, var.sqrt())
}

/// Per sample: (advantage, reward before normalisation). Responders and verifiers are z-scored
/// within their uid group (a lone sample: mean 0, std 1); questioners get the mapped mean
/// responder reward of their uid (or their bad-case constant) and, with `batch_norm`, are
/// z-scored over the batch's questioners of the same task, all with ε = 1e-6 and unbiased σ.
///
/// Differs from the released code in one place: a task with a single questioner sample has an
/// undefined σ there (NaN advantages); here its advantage is 0.
pub fn spell_advantages(
    samples: &[RoleSample],
    mapping: QuestionerReward,
    batch_norm: bool,
) -> Vec<(f64, f64)> {
    const EPS: f64 = 1e-6;
    let mut groups: BTreeMap<(Role, u64), Vec<f64>> = BTreeMap::new();
    for s in samples {
        if s.role != Role::Questioner {
            groups.entry((s.role, s.uid)).or_default().push(s.score);
        }
    }
    let stats: BTreeMap<(Role, u64), (f64, f64)> = groups
        .iter()
        .map(|(k, v)| {
            (
                *k,
                if v.len() == 1 {
                    (0.0, 1.0)
                } else {
                    mean_std(v)
                },
            )
        })
        .collect();
    // Questioner rewards: the responder group's mean when there is a group of several.
    let questioner_reward = |s: &RoleSample| -> f64 {
        let raw = match groups.get(&(Role::Responder, s.uid)) {
            Some(g) if g.len() > 1 => g.iter().sum::<f64>() / g.len() as f64,
            Some(_) => 0.0,
            None => bad_case_reward(s.case),
        };
        questioner_mapping(raw, mapping)
    };
    // One reward per (task, uid), as the released dictionary keeps.
    let mut per_task: BTreeMap<SpellTask, BTreeMap<u64, f64>> = BTreeMap::new();
    for s in samples.iter().filter(|s| s.role == Role::Questioner) {
        per_task
            .entry(s.task)
            .or_default()
            .insert(s.uid, questioner_reward(s));
    }
    // The released dictionary also holds responder uids without a questioner sample.
    for s in samples.iter().filter(|s| s.role == Role::Responder) {
        let entry = per_task.entry(s.task).or_default();
        entry.entry(s.uid).or_insert_with(|| {
            let g = &groups[&(Role::Responder, s.uid)];
            let raw = if g.len() > 1 {
                g.iter().sum::<f64>() / g.len() as f64
            } else {
                0.0
            };
            questioner_mapping(raw, mapping)
        });
    }
    let task_stats: BTreeMap<SpellTask, (f64, f64)> = per_task
        .iter()
        .map(|(t, m)| {
            let v: Vec<f64> = m.values().copied().collect();
            (
                *t,
                if v.len() > 1 {
                    mean_std(&v)
                } else {
                    (v[0], f64::NAN)
                },
            )
        })
        .collect();
    samples
        .iter()
        .map(|s| match s.role {
            Role::Responder | Role::Verifier => {
                let (m, sd) = stats[&(s.role, s.uid)];
                ((s.score - m) / (sd + EPS), s.score)
            }
            Role::Questioner => {
                let r = per_task[&s.task][&s.uid];
                if !batch_norm {
                    return (r, r);
                }
                let (m, sd) = task_stats[&s.task];
                let adv = if sd.is_nan() {
                    0.0
                } else {
                    (r - m) / (sd + EPS)
                };
                (adv, r)
            }
        })
        .collect()
}

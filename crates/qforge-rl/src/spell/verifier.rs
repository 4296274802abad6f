//! Self-verification (`RaySPELLTrainer._self_verification`): n judgements per responder answer
//! from the same policy, the majority vote that can lift the responder's reward, and the
//! verifier's own self-consistency reward with its agreement-window filter.

use serde::{Deserialize, Serialize};

use super::questioner::after_think;

/// One judgement: 1 (YES), 0 (NO) or −1 (neither, both, or unfinished thinking).
pub fn parse_judgement(response: &str) -> f64 {
    // An unclosed think block reads as "Empty", which says neither.
    let judge = after_think(response).unwrap_or("Empty");
    let yes = (judge.contains("[[YES]]") && !judge.contains("[[NO]]"))
        || (judge.contains("YES") && !judge.contains("NO"));
    let no = (judge.contains("[[NO]]") && !judge.contains("[[YES]]"))
        || (judge.contains("NO") && !judge.contains("YES"));
    if yes {
        1.0
    } else if no {
        0.0
    } else {
        -1.0
    }
}

/// `Counter(votes).most_common()[0][0]`: the most frequent vote, ties to the one seen first.
/// May be −1 when malformed judgements are the most frequent.
pub fn majority(votes: &[f64]) -> Option<f64> {
    let mut counts: Vec<(f64, usize)> = Vec::new();
    for &v in votes {
        match counts.iter_mut().find(|(x, _)| *x == v) {
            Some((_, n)) => *n += 1,
            None => counts.push((v, 1)),
        }
    }
    let best = counts.iter().map(|&(_, n)| n).max()?;
    counts.iter().find(|&&(_, n)| n == best).map(|&(v, _)| v)
}

/// Eq. 6: the responder's reward is `max(rule, v)` when the vote is a YES/NO, else the rule's.
pub fn combined_reward(rule: f64, vote: Option<f64>) -> f64 {
    match vote {
        Some(v) if v >= 0.0 => rule.max(v),
        _ => rule,
    }
}

/// Which verifier groups train (`self_verification.label_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VerifierLabel {
    /// The majority must also equal the rule score (the paper's setting).
    #[default]
    MajCons,
    /// Any group with a YES/NO majority (the ablation).
    Maj,
}

/// The verifier's training signal for one group of judgements.
#[derive(Debug, Clone, PartialEq)]
pub struct VerifierGroup {
    /// Per judgement: +1 agrees with the majority, 0 disagrees, −1 malformed.
    pub scores: Vec<f64>,
    /// Share of valid judgements that agree with the majority.
    pub agreement: f64,
    /// The group passed the agreement window (and, for `MajCons`, matched the rule).
    pub trains: bool,
}

/// The self-consistency rewards of one answer's judgements, or `None` when the majority is
/// malformed (no verifier sample then). `window` is `[update_lower_bound, update_upper_bound]`.
pub fn verifier_group(
    votes: &[f64],
    rule_score: f64,
    window: (f64, f64),
    label: VerifierLabel,
) -> Option<VerifierGroup> {
    let maj = majority(votes)?;
    if maj == -1.0 {
        return None;
    }
    let valid: Vec<f64> = votes.iter().copied().filter(|&v| v != -1.0).collect();
    let mean = valid.iter().sum::<f64>() / valid.len() as f64;
    let agreement = if maj == 0.0 { 1.0 - mean } else { mean };
    let scores = votes
        .iter()
        .map(|&v| {
            if v == -1.0 {
                -1.0
            } else if v == maj {
                1.0
            } else {
                0.0
            }
        })
        .collect();
    let in_window = window.0 <= agreement && agreement <= window.1;
    let trains = in_window
        && match label {
            VerifierLabel::MajCons => maj == rule_score,
            VerifierLabel::Maj => true,
        };
    Some(VerifierGroup {
        scores,
        agreement,
        trains,
    })
}

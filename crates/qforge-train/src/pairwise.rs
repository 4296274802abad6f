//! Pairwise preference objectives over sequence log-probabilities. The trainer computes the
//! policy's (and, when asked, the reference's) log-probabilities of each pair; an objective
//! turns them into a loss. The DPO family is built in ([`DpoObjective`]); recipes add their own
//! (SoLoPO in `qforge-pref`) without a second training loop.

use candle_core::Tensor;

use crate::error::Result;
use crate::losses::{self, DpoKind, PreferenceLogps};

/// Log-probabilities of one side of a batch of pairs, `[N]` each.
#[derive(Debug, Clone)]
pub struct SeqLogps {
    /// Sum of the completion's token log-probabilities under the policy.
    pub sum: Tensor,
    /// Mean per completion token (sum / completion length).
    pub mean: Tensor,
    /// Completion lengths in tokens (f32).
    pub len: Tensor,
    /// The reference model's sum, when the objective needs a reference.
    pub reference: Option<Tensor>,
}

/// What an objective sees of a micro-batch of pairs.
#[derive(Debug, Clone)]
pub struct PairLogps {
    pub chosen: SeqLogps,
    pub rejected: SeqLogps,
    /// The chosen completion after the long-context prompt (`prompt_long`), when the objective
    /// asked for it.
    pub long_chosen: Option<SeqLogps>,
    /// Token-mean negative log-likelihood of the chosen completions over the micro-batch (the
    /// SFT term of RPO).
    pub chosen_nll: Tensor,
}

/// A scalar loss plus the pairwise metrics the trainer logs.
#[derive(Debug, Clone)]
pub struct PairLoss {
    pub loss: Tensor,
    /// Fraction of pairs whose implicit reward ranks chosen first.
    pub accuracy: f64,
    /// Mean implicit-reward margin (chosen − rejected).
    pub margin: f64,
}

pub trait PairObjective: Send + Sync {
    /// Whether reference log-probabilities (from the starting weights) are needed.
    fn needs_reference(&self) -> bool;
    /// Whether the long-context chosen sequence (`prompt_long`) is needed.
    fn needs_long_context(&self) -> bool {
        false
    }
    fn loss(&self, lp: &PairLogps) -> Result<PairLoss>;
}

/// Accuracy and mean margin of implicit rewards `[N]`.
pub fn reward_metrics(chosen: &Tensor, rejected: &Tensor) -> Result<(f64, f64)> {
    let diff = (chosen - rejected)?;
    let accuracy = diff
        .gt(0f64)?
        .to_dtype(candle_core::DType::F32)?
        .mean_all()?
        .to_scalar::<f32>()? as f64;
    Ok((accuracy, diff.mean_all()?.to_scalar::<f32>()? as f64))
}

/// TRL's DPO (`loss_type`s of [`DpoKind`]) with RPO's optional NLL term.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DpoObjective {
    pub kind: DpoKind,
    pub beta: f64,
    /// Weight of the chosen responses' NLL (TRL's `rpo_alpha`; 0: off).
    pub rpo_alpha: f64,
}

impl PairObjective for DpoObjective {
    fn needs_reference(&self) -> bool {
        true
    }

    fn loss(&self, lp: &PairLogps) -> Result<PairLoss> {
        let missing = || crate::error::TrainError::Invalid("DPO needs reference log-probs".into());
        let out = losses::dpo_loss(
            &PreferenceLogps {
                policy_chosen: &lp.chosen.sum,
                policy_rejected: &lp.rejected.sum,
                reference_chosen: lp.chosen.reference.as_ref().ok_or_else(missing)?,
                reference_rejected: lp.rejected.reference.as_ref().ok_or_else(missing)?,
                chosen_len: Some(&lp.chosen.len),
                rejected_len: Some(&lp.rejected.len),
            },
            self.kind,
            self.beta,
        )?;
        let (accuracy, margin) = reward_metrics(&out.chosen_rewards, &out.rejected_rewards)?;
        let loss = if self.rpo_alpha != 0.0 {
            (out.loss + (&lp.chosen_nll * self.rpo_alpha)?)?
        } else {
            out.loss
        };
        Ok(PairLoss {
            loss,
            accuracy,
            margin,
        })
    }
}

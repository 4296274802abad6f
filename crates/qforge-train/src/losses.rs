//! Log-probabilities and the preference losses of TRL 1.9 (DPO family, SimPO, ORPO,
//! Bradley-Terry), written with candle ops that all have a backward. Formulas and their
//! sources: shared specs pref.md §3. Parity (values and gradients) is pinned by
//! `tests/parity.rs` against tools/fixtures/gen_losses.py.

use candle_core::{D, DType, Tensor};

use crate::error::{Result, TrainError};

/// `log σ(x)`, stable for large |x|: `min(x, 0) − log(1 + e^{−|x|})`.
pub fn log_sigmoid(x: &Tensor) -> Result<Tensor> {
    let soft = (x.abs()?.neg()?.exp()? + 1.0)?.log()?;
    Ok((x.minimum(0f32)? - soft)?)
}

/// `e^x − 1`, accurate near 0 (a Horner series below |x| = 0.1) where `exp(x) − 1` cancels.
pub fn expm1(x: &Tensor) -> Result<Tensor> {
    let small = x.abs()?.lt(0.1f32)?;
    // Each branch is evaluated on inputs clamped to its own domain so that the branch not
    // taken never produces inf/NaN that a backward pass could pick up.
    let xs = x.clamp(-0.1f32, 0.1f32)?;
    let mut series = ((&xs / 6.0)? + 1.0)?;
    for k in [5.0, 4.0, 3.0, 2.0] {
        series = (((&xs * &series)? / k)? + 1.0)?;
    }
    let series = (&xs * series)?;
    let direct = (x.exp()? - 1.0)?;
    Ok(small.where_cond(&series, &direct)?)
}

/// `log(1 − e^x)` for x < 0, with the two-branch rule of TRL's ORPO: `log1p(−e^x)` below
/// −ln 2, `log(−expm1(x))` above.
pub fn log1mexp(x: &Tensor) -> Result<Tensor> {
    let ln2 = std::f32::consts::LN_2;
    let far = x.lt(-ln2)?;
    let x_far = x.minimum(-ln2)?;
    let x_near = x.maximum(-ln2)?;
    let a = (x_far.exp()?.neg()? + 1.0)?.log()?;
    let b = expm1(&x_near)?.neg()?.log()?;
    Ok(far.where_cond(&a, &b)?)
}

/// `log softmax(logits / temperature)` gathered at `targets`: `[B, T, V]`, `[B, T]` -> `[B, T]`.
pub fn selective_log_softmax(
    logits: &Tensor,
    targets: &Tensor,
    temperature: f64,
) -> Result<Tensor> {
    let z = scaled(logits, temperature)?;
    let targets = targets.to_dtype(DType::U32)?;
    if z.dtype() == DType::F32 && z.device().is_cpu() {
        // Fused: the [B, T, V] log-softmax is never materialised.
        return Ok(qforge_model::fused::selective_log_softmax(&z, &targets)?);
    }
    let logp = candle_nn::ops::log_softmax(&z, D::Minus1)?;
    Ok(logp
        .gather(&targets.unsqueeze(D::Minus1)?.contiguous()?, D::Minus1)?
        .squeeze(D::Minus1)?)
}

fn scaled(logits: &Tensor, temperature: f64) -> Result<Tensor> {
    if temperature <= 0.0 {
        return Err(TrainError::Invalid(format!(
            "temperature must be positive, got {temperature}"
        )));
    }
    Ok(if temperature == 1.0 {
        logits.clone()
    } else {
        (logits / temperature)?
    })
}

/// Entropy of `softmax(logits / temperature)` per position: `logsumexp(z) − Σ softmax(z)·z`.
pub fn entropy_from_logits(logits: &Tensor, temperature: f64) -> Result<Tensor> {
    let z = scaled(logits, temperature)?;
    let lse = z.log_sum_exp(D::Minus1)?;
    let p = candle_nn::ops::softmax(&z, D::Minus1)?;
    Ok((lse - (p * &z)?.sum(D::Minus1)?)?)
}

/// Per-token log-probabilities of a batch's completions and their per-sequence sum and mean.
#[derive(Debug, Clone)]
pub struct CompletionLogps {
    /// `[B, T−1]`: entry t is `log p(ids[t+1] | ids[..=t])`, zero where the target is masked.
    pub per_token: Tensor,
    /// `[B, T−1]` mask of the scored targets (the completion mask shifted by one).
    pub mask: Tensor,
    /// `[B]`.
    pub sum: Tensor,
    /// `[B]`: sum / number of completion tokens (at least 1).
    pub mean: Tensor,
}

/// TRL's completion log-probs: logits at t score ids[t+1], masked by `completion_mask[:, 1:]`
/// (1 on completion tokens, 0 on prompt and padding).
pub fn completion_logps(
    logits: &Tensor,
    input_ids: &Tensor,
    completion_mask: &Tensor,
    temperature: f64,
) -> Result<CompletionLogps> {
    let (_, t, _) = logits.dims3()?;
    let per_token = selective_log_softmax(
        &logits.narrow(1, 0, t - 1)?,
        &input_ids.narrow(1, 1, t - 1)?,
        temperature,
    )?;
    let mask = completion_mask
        .narrow(1, 1, t - 1)?
        .to_dtype(per_token.dtype())?;
    let per_token = (per_token * &mask)?;
    let sum = per_token.sum(1)?;
    let count = mask.sum(1)?.maximum(1f32)?;
    let mean = (&sum / count)?;
    Ok(CompletionLogps {
        per_token,
        mask,
        sum,
        mean,
    })
}

/// SFT cross-entropy: mean negative log-likelihood over all completion tokens of the batch.
pub fn sft_loss(logits: &Tensor, input_ids: &Tensor, completion_mask: &Tensor) -> Result<Tensor> {
    let lp = completion_logps(logits, input_ids, completion_mask, 1.0)?;
    let count = lp.mask.sum_all()?.maximum(1f32)?;
    Ok((lp.per_token.sum_all()?.neg()? / count)?)
}

/// TRL's DPO `loss_type`s (with `f_divergence_type = "reverse_kl"`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum DpoKind {
    /// `−log σ(βΔ)`; with label smoothing ε the conservative mix `−(1−ε)log σ(βΔ) − ε log σ(−βΔ)`
    /// of TRL 0.x and OpenRLHF (TRL 1.x ignores ε here).
    Sigmoid { label_smoothing: f64 },
    /// `relu(1 − βΔ)`.
    Hinge,
    /// `(Δ̄ − 1/(2β))²` with length-normalised log-ratios.
    Ipo,
    /// `[−(1−ε)log σ(βΔ) + ε log σ(−βΔ)] / (1−2ε)`, ε in [0, 0.5).
    Robust { label_smoothing: f64 },
}

/// Sequence log-probabilities of a preference batch under the policy and the reference.
#[derive(Debug, Clone)]
pub struct PreferenceLogps<'a> {
    pub policy_chosen: &'a Tensor,
    pub policy_rejected: &'a Tensor,
    pub reference_chosen: &'a Tensor,
    pub reference_rejected: &'a Tensor,
    /// Completion lengths, needed by IPO's length normalisation.
    pub chosen_len: Option<&'a Tensor>,
    pub rejected_len: Option<&'a Tensor>,
}

#[derive(Debug, Clone)]
pub struct DpoOutput {
    /// Scalar: the per-pair losses averaged over the batch.
    pub loss: Tensor,
    /// `β(lp_w − ref_w)`, detached, `[N]`.
    pub chosen_rewards: Tensor,
    /// `β(lp_l − ref_l)`, detached, `[N]`.
    pub rejected_rewards: Tensor,
}

impl DpoOutput {
    /// Fraction of pairs whose implicit reward ranks chosen above rejected.
    pub fn accuracy(&self) -> Result<f32> {
        Ok(self
            .chosen_rewards
            .gt(&self.rejected_rewards)?
            .to_dtype(DType::F32)?
            .mean_all()?
            .to_scalar()?)
    }
}

pub fn dpo_loss(lp: &PreferenceLogps, kind: DpoKind, beta: f64) -> Result<DpoOutput> {
    if beta <= 0.0 {
        return Err(TrainError::Invalid(format!(
            "beta must be positive, got {beta}"
        )));
    }
    let chosen_ratio = (lp.policy_chosen - lp.reference_chosen)?;
    let rejected_ratio = (lp.policy_rejected - lp.reference_rejected)?;
    let delta = (&chosen_ratio - &rejected_ratio)?;
    let per_pair = match kind {
        DpoKind::Sigmoid {
            label_smoothing: eps,
        } => {
            let z = (&delta * beta)?;
            ((log_sigmoid(&z)? * -(1.0 - eps))? - (log_sigmoid(&z.neg()?)? * eps)?)?
        }
        DpoKind::Hinge => ((&delta * -beta)? + 1.0)?.relu()?,
        DpoKind::Ipo => {
            let (Some(lw), Some(ll)) = (lp.chosen_len, lp.rejected_len) else {
                return Err(TrainError::Invalid(
                    "IPO needs the completion lengths".into(),
                ));
            };
            let norm =
                ((&chosen_ratio / lw.maximum(1f32)?)? - (&rejected_ratio / ll.maximum(1f32)?)?)?;
            (norm - 1.0 / (2.0 * beta))?.sqr()?
        }
        DpoKind::Robust {
            label_smoothing: eps,
        } => {
            if !(0.0..0.5).contains(&eps) {
                return Err(TrainError::Invalid(format!(
                    "robust DPO needs label_smoothing in [0, 0.5), got {eps}"
                )));
            }
            let z = (&delta * beta)?;
            (((log_sigmoid(&z)? * -(1.0 - eps))? + (log_sigmoid(&z.neg()?)? * eps)?)?
                / (1.0 - 2.0 * eps))?
        }
    };
    Ok(DpoOutput {
        loss: per_pair.mean_all()?,
        chosen_rewards: (chosen_ratio * beta)?.detach(),
        rejected_rewards: (rejected_ratio * beta)?.detach(),
    })
}

/// SimPO in TRL's CPO form: `z = β(ā_w − ā_l) − γ`, loss `−(1−ε)log σ(z) − ε log σ(−z)` averaged
/// (ā: mean token log-probabilities). Add CPO's NLL term separately if wanted.
pub fn simpo_loss(
    avg_chosen: &Tensor,
    avg_rejected: &Tensor,
    beta: f64,
    gamma: f64,
    label_smoothing: f64,
) -> Result<Tensor> {
    let z = (((avg_chosen - avg_rejected)? * beta)? - gamma)?;
    let per_pair = ((log_sigmoid(&z)? * -(1.0 - label_smoothing))?
        - (log_sigmoid(&z.neg()?)? * label_smoothing)?)?;
    Ok(per_pair.mean_all()?)
}

/// ORPO's odds-ratio term: `−mean(β log σ(log_odds))` with
/// `log_odds = (ā_w − ā_l) − (log1mexp(ā_w) − log1mexp(ā_l))`. The full ORPO loss is the NLL
/// (of the response, as the paper; TRL also counts the prompt) plus this.
pub fn orpo_odds_ratio_loss(
    avg_chosen: &Tensor,
    avg_rejected: &Tensor,
    beta: f64,
) -> Result<Tensor> {
    let log_odds =
        ((avg_chosen - avg_rejected)? - (log1mexp(avg_chosen)? - log1mexp(avg_rejected)?)?)?;
    Ok((log_sigmoid(&log_odds)?.mean_all()? * -beta)?)
}

/// Bradley-Terry reward loss `mean(−log σ(r_w − r_l − m)) + c·mean((r_w + r_l)²)`.
pub fn bradley_terry_loss(
    reward_chosen: &Tensor,
    reward_rejected: &Tensor,
    margin: Option<&Tensor>,
    center_coef: f64,
) -> Result<Tensor> {
    let mut diff = (reward_chosen - reward_rejected)?;
    if let Some(m) = margin {
        diff = (diff - m)?;
    }
    let loss = log_sigmoid(&diff)?.mean_all()?.neg()?;
    if center_coef == 0.0 {
        return Ok(loss);
    }
    Ok((loss + ((reward_chosen + reward_rejected)?.sqr()?.mean_all()? * center_coef)?)?)
}

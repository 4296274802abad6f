//! Policy-gradient pieces shared by the RL recipes: group advantages, the clipped surrogate
//! (clip-higher, dual-clip), loss aggregation modes, KL estimators. Formulas: verl's
//! `core_algos.py` and TRL's GRPO trainer as summarised in shared specs longrl.md §3.

use candle_core::{DType, Tensor};

use crate::error::{Result, TrainError};

/// How group advantages are normalised.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum AdvantageNorm {
    /// `(R − mean_group) / (std_group + eps)`, unbiased std (verl eps 1e-6, TRL 1e-4).
    GroupStd { eps: f64 },
    /// `(R − mean_group) / (std_batch + eps)` (TRL `scale_rewards = "batch"`).
    BatchStd { eps: f64 },
    /// `R − mean_group` (Dr.GRPO).
    None,
}

fn mean_std(xs: &[f64]) -> (f64, f64) {
    let n = xs.len() as f64;
    let mean = xs.iter().sum::<f64>() / n;
    if xs.len() < 2 {
        return (mean, 1.0);
    }
    let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
    (mean, var.sqrt())
}

/// GRPO advantages for rewards laid out group after group (`group_size` rollouts per prompt).
/// A group of one has mean 0 and std 1, as in verl.
pub fn group_advantages(
    rewards: &[f64],
    group_size: usize,
    norm: AdvantageNorm,
) -> Result<Vec<f64>> {
    if group_size == 0 || !rewards.len().is_multiple_of(group_size) {
        return Err(TrainError::Invalid(format!(
            "{} rewards do not split into groups of {group_size}",
            rewards.len()
        )));
    }
    if let Some(i) = rewards.iter().position(|r| !r.is_finite()) {
        return Err(TrainError::Invalid(format!(
            "reward {i} is not finite ({})",
            rewards[i]
        )));
    }
    let batch_std = mean_std(rewards).1;
    let mut out = Vec::with_capacity(rewards.len());
    for group in rewards.chunks(group_size) {
        let (mean, std) = if group_size == 1 {
            (0.0, 1.0)
        } else {
            mean_std(group)
        };
        for r in group {
            out.push(match norm {
                AdvantageNorm::GroupStd { eps } => (r - mean) / (std + eps),
                AdvantageNorm::BatchStd { eps } => (r - mean) / (batch_std + eps),
                AdvantageNorm::None => r - mean,
            });
        }
    }
    Ok(out)
}

/// PPO-style clipping.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClipConfig {
    /// Ratio floor is `1 − low`.
    pub low: f64,
    /// Ratio ceiling is `1 + high` (DAPO's clip-higher uses 0.28 with low 0.2).
    pub high: f64,
    /// Dual-clip constant c: for negative advantages the loss is at most `−A·c` (verl 3.0;
    /// `None` for TRL, which has no dual clip).
    pub dual_clip: Option<f64>,
    /// Clamp of `log π − log π_old` before exponentiating (verl 20; `None` for TRL).
    pub clamp_log_ratio: Option<f64>,
}

impl ClipConfig {
    /// verl's `vanilla` policy loss with DAPO's clip-higher.
    pub fn verl(low: f64, high: f64) -> Self {
        Self {
            low,
            high,
            dual_clip: Some(3.0),
            clamp_log_ratio: Some(20.0),
        }
    }

    /// TRL's GRPO loss: no clamp, no dual clip.
    pub fn trl(low: f64, high: f64) -> Self {
        Self {
            low,
            high,
            dual_clip: None,
            clamp_log_ratio: None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct PolicyLoss {
    /// Per-token loss `[B, T]` (aggregate with [`aggregate`]).
    pub per_token: Tensor,
    /// Fraction of masked tokens where the clipped branch was taken.
    pub clip_fraction: f32,
    /// Fraction of masked tokens where dual-clip bounded a negative advantage.
    pub clip_fraction_lower: f32,
    /// Masked mean of `log π_old − log π`.
    pub approx_kl: f32,
}

/// The clipped surrogate `max(−A·r, −A·clip(r, 1−low, 1+high))`, with dual-clip for A < 0.
pub fn clipped_policy_loss(
    logp: &Tensor,
    old_logp: &Tensor,
    advantages: &Tensor,
    mask: &Tensor,
    cfg: ClipConfig,
) -> Result<PolicyLoss> {
    let mut log_ratio = (logp - old_logp)?;
    if let Some(c) = cfg.clamp_log_ratio {
        log_ratio = log_ratio.clamp(-c, c)?;
    }
    let ratio = log_ratio.exp()?;
    let neg_adv = advantages.neg()?;
    let unclipped = (&neg_adv * &ratio)?;
    let clipped = (&neg_adv * ratio.clamp(1.0 - cfg.low, 1.0 + cfg.high)?)?;
    let surrogate = unclipped.maximum(&clipped)?;
    let count = mask.sum_all()?.maximum(1f32)?;
    let frac = |t: &Tensor| -> Result<f32> {
        Ok(((t.to_dtype(mask.dtype())? * mask)?.sum_all()? / &count)?.to_scalar::<f32>()?)
    };
    let clip_fraction = frac(&clipped.gt(&unclipped)?)?;
    let (per_token, clip_fraction_lower) = match cfg.dual_clip {
        None => (surrogate, 0.0),
        Some(c) => {
            let bound = (&neg_adv * c)?;
            let negative = advantages.lt(0f32)?;
            let lower =
                (surrogate.gt(&bound)?.to_dtype(DType::U8)? * negative.to_dtype(DType::U8)?)?;
            let fraction = frac(&lower)?;
            (
                negative.where_cond(&surrogate.minimum(&bound)?, &surrogate)?,
                fraction,
            )
        }
    };
    let approx_kl = ((log_ratio.neg()? * mask)?.sum_all()? / &count)?.to_scalar::<f32>()?;
    Ok(PolicyLoss {
        per_token,
        clip_fraction,
        clip_fraction_lower,
        approx_kl,
    })
}

/// verl's `agg_loss` modes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Aggregation {
    /// `Σ L·m / Σ m` (DAPO; TRL `bnpo`).
    TokenMean,
    /// Mean over non-empty sequences of each sequence's token mean (original GRPO; TRL `grpo`).
    SeqMeanTokenMean,
    /// Mean over non-empty sequences of each sequence's token sum.
    SeqMeanTokenSum,
    /// `Σ L·m / constant`, no division by the batch (Dr.GRPO). The constant is verl's
    /// `loss_scale_factor` (verl 0.8 `core_algos.agg_loss`, checked at its January 2026 main);
    /// verl falls back to the mask's width, the padded response length, when it is unset, which
    /// changes with the batch unless responses are padded to the maximum length.
    SeqMeanTokenSumNorm { constant: f64 },
}

/// Reduces a `[B, T]` loss matrix under a `[B, T]` 0/1 mask.
pub fn aggregate(loss: &Tensor, mask: &Tensor, mode: Aggregation) -> Result<Tensor> {
    let masked = (loss * mask)?;
    Ok(match mode {
        Aggregation::TokenMean => (masked.sum_all()? / mask.sum_all()?.maximum(1f32)?)?,
        Aggregation::SeqMeanTokenMean | Aggregation::SeqMeanTokenSum => {
            let rows = mask.sum(1)?;
            let nonempty = rows.gt(0f32)?.to_dtype(loss.dtype())?;
            let per_seq = match mode {
                Aggregation::SeqMeanTokenMean => (masked.sum(1)? / (&rows + 1e-8)?)?,
                _ => masked.sum(1)?,
            };
            ((per_seq * &nonempty)?.sum_all()? / nonempty.sum_all()?.maximum(1f32)?)?
        }
        Aggregation::SeqMeanTokenSumNorm { constant } => {
            if constant <= 0.0 {
                return Err(TrainError::Invalid(format!(
                    "the Dr.GRPO constant must be positive, got {constant}"
                )));
            }
            (masked.sum_all()? / constant)?
        }
    })
}

/// verl's KL estimators between the policy and the reference, per token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KlEstimator {
    /// `δ = log π − log π_ref`.
    K1,
    /// `|δ|`.
    Abs,
    /// `½δ²`.
    K2,
    /// `exp(κ) − κ − 1` with `κ = clamp(−δ, ±20)`, clamped to [−10, 10] (low-variance KL).
    K3,
    /// k1's value with k2's gradient (straight-through).
    K1StraightThrough,
    /// k3's value with k2's gradient (straight-through).
    K3StraightThrough,
}

pub fn kl_penalty(logp: &Tensor, ref_logp: &Tensor, kind: KlEstimator) -> Result<Tensor> {
    let delta = (logp - ref_logp)?;
    let k3 = |delta: &Tensor| -> Result<Tensor> {
        let kappa = delta.neg()?.clamp(-20f32, 20f32)?;
        Ok(((kappa.exp()? - &kappa)? - 1.0)?.clamp(-10f32, 10f32)?)
    };
    let k2 = |delta: &Tensor| -> Result<Tensor> { Ok((delta.sqr()? * 0.5)?) };
    Ok(match kind {
        KlEstimator::K1 => delta,
        KlEstimator::Abs => delta.abs()?,
        KlEstimator::K2 => k2(&delta)?,
        KlEstimator::K3 => k3(&delta)?,
        KlEstimator::K1StraightThrough | KlEstimator::K3StraightThrough => {
            let forward = if kind == KlEstimator::K1StraightThrough {
                delta.clone()
            } else {
                k3(&delta)?
            };
            let b = k2(&delta)?;
            ((&b - b.detach())? + forward.detach())?
        }
    })
}

/// Generalised advantage estimation over a batch of responses (verl `compute_gae_advantage_return`):
/// per response token, `δ_t = r_t + γ·V_{t+1} − V_t` (`V` past the end is 0) and
/// `A_t = δ_t + γλ·A_{t+1}`; returns are `A + V` before whitening; the advantages are then
/// whitened over every token of the batch (mean 0, unbiased variance 1, verl's
/// `masked_whiten`). Rows are the responses' real tokens (no padding), `rewards` and `values`
/// of equal shape.
pub fn gae_advantages(
    rewards: &[Vec<f64>],
    values: &[Vec<f64>],
    gamma: f64,
    lam: f64,
) -> Result<(Vec<Vec<f64>>, Vec<Vec<f64>>)> {
    if rewards.len() != values.len() || rewards.iter().zip(values).any(|(r, v)| r.len() != v.len())
    {
        return Err(TrainError::Invalid(
            "GAE needs one value per reward token".into(),
        ));
    }
    if let Some(i) = rewards
        .iter()
        .zip(values)
        .position(|(r, v)| r.iter().chain(v).any(|x| !x.is_finite()))
    {
        return Err(TrainError::Invalid(format!(
            "row {i}: a reward or value is not finite"
        )));
    }
    let mut advantages = Vec::with_capacity(rewards.len());
    let mut returns = Vec::with_capacity(rewards.len());
    for (r, v) in rewards.iter().zip(values) {
        let mut adv = vec![0.0; r.len()];
        let mut last = 0.0;
        for t in (0..r.len()).rev() {
            let next = v.get(t + 1).copied().unwrap_or(0.0);
            last = r[t] + gamma * next - v[t] + gamma * lam * last;
            adv[t] = last;
        }
        returns.push(adv.iter().zip(v).map(|(a, v)| a + v).collect());
        advantages.push(adv);
    }
    Ok((whiten(&advantages)?, returns))
}

/// verl's `masked_whiten` over every element: `(x − mean)·rsqrt(var + 1e-8)` with the unbiased
/// (Bessel-corrected) variance, which needs at least two elements.
pub fn whiten(rows: &[Vec<f64>]) -> Result<Vec<Vec<f64>>> {
    let n = rows.iter().map(Vec::len).sum::<usize>();
    if n < 2 {
        return Err(TrainError::Invalid(format!(
            "whitening needs at least two tokens, the batch has {n}"
        )));
    }
    // verl's masked_mean divides by (count + 1e-8).
    let count = n as f64 + 1e-8;
    let mean = rows.iter().flatten().sum::<f64>() / count;
    let var = rows
        .iter()
        .flatten()
        .map(|x| (x - mean).powi(2))
        .sum::<f64>()
        / count
        * (n as f64 / (n as f64 - 1.0));
    let scale = 1.0 / (var + 1e-8).sqrt();
    Ok(rows
        .iter()
        .map(|r| r.iter().map(|x| (x - mean) * scale).collect())
        .collect())
}

#[derive(Debug, Clone)]
pub struct ValueLoss {
    /// The scalar loss.
    pub loss: Tensor,
    /// Fraction of masked tokens where the clipped prediction's error was the larger.
    pub clip_fraction: f32,
}

/// PPO's clipped value loss (verl `compute_value_loss`): `½ · masked_mean(max((V − R)²,
/// (clip(V, V_old − c, V_old + c) − R)²))` over `[B, T]` predictions `V`, old values, returns
/// and a 0/1 mask; the mean divides by `Σ mask + 1e-8` as verl does.
pub fn clipped_value_loss(
    values: &Tensor,
    old_values: &Tensor,
    returns: &Tensor,
    mask: &Tensor,
    clip: f64,
) -> Result<ValueLoss> {
    let clipped = values
        .minimum(&(old_values + clip)?)?
        .maximum(&(old_values - clip)?)?;
    let unclipped_err = (values - returns)?.sqr()?;
    let clipped_err = (clipped - returns)?.sqr()?;
    let count = (mask.sum_all()? + 1e-8)?;
    let worse = unclipped_err.maximum(&clipped_err)?;
    let loss = (((worse * mask)?.sum_all()? / &count)? * 0.5)?;
    let clip_fraction =
        ((clipped_err.gt(&unclipped_err)?.to_dtype(mask.dtype())? * mask)?.sum_all()? / &count)?
            .to_scalar::<f32>()?;
    Ok(ValueLoss {
        loss,
        clip_fraction,
    })
}

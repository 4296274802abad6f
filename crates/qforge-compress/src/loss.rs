//! The training loss of `Qwen2ForCausalLMandBIO` (QwenLong-CPRS, arXiv 2505.18092): the LM head as token
//! critic, trained **unshifted** (position i predicts its own tag word) with torch's weighted
//! cross-entropy, plus the BIOE loss (weighted cross-entropy, or the released focal loss),
//! summed with no coefficient. Labels are host vectors with [`IGNORE`] for positions that carry
//! no loss. Parity with torch (values and gradients) is pinned by `tests/loss_parity.rs`.

use candle_core::{DType, Device, Tensor};
use qforge_train::losses::selective_log_softmax;

/// torch's `ignore_index`.
pub const IGNORE: i64 = -100;

/// How the BIOE head is trained.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum BioLoss {
    /// torch `CrossEntropyLoss(weight)`: the class-weighted mean over labelled positions.
    CrossEntropy,
    /// The released `FocalLoss`: `ce = w_y·(−log p_y)` (0 where ignored), `pt = e^{−ce}`,
    /// the mean of `(1 − pt)^γ · ce` over **all** positions, ignored and padding ones included.
    Focal { gamma: f64 },
}

/// The loss settings (the checkpoint config's `bi_loss_type`, `bi_loss_weight`,
/// `lm_head_weight`, `ignore_lm_head`).
#[derive(Debug, Clone)]
pub struct LossConfig {
    pub bio: BioLoss,
    /// Class weights for B, I, O, E.
    pub bio_class_weights: Option<[f32; 4]>,
    /// Per-vocabulary weights of the critic loss (`[V]`; 1 for unlisted ids upstream).
    pub lm_vocab_weights: Option<Vec<f32>>,
    /// Train the BIOE head only.
    pub ignore_lm_head: bool,
}

/// The summed loss and its parts (scalars; `lm` is `None` with `ignore_lm_head`).
pub struct LossParts {
    pub total: Tensor,
    pub lm: Option<Tensor>,
    pub bio: Tensor,
}

fn targets_and_mask(labels: &[i64], device: &Device) -> candle_core::Result<(Tensor, Vec<bool>)> {
    let safe: Vec<u32> = labels.iter().map(|&l| l.max(0) as u32).collect();
    let mask = labels.iter().map(|&l| l != IGNORE).collect();
    Ok((Tensor::new(safe, device)?, mask))
}

/// Per-position `w_{y}·(−log p_y)` of `logits [N, C]` (0 where ignored), and the weights
/// `w_y` (0 where ignored).
fn weighted_nll(
    logits: &Tensor,
    labels: &[i64],
    weights: Option<&[f32]>,
) -> candle_core::Result<(Tensor, Tensor)> {
    let device = logits.device();
    let (targets, mask) = targets_and_mask(labels, device)?;
    let position_weights: Vec<f32> = labels
        .iter()
        .zip(&mask)
        .map(|(&l, &m)| match (m, weights) {
            (false, _) => 0.0,
            (true, Some(w)) => w[l as usize],
            (true, None) => 1.0,
        })
        .collect();
    let position_weights = Tensor::new(position_weights, device)?;
    let logp = selective_log_softmax(&logits.to_dtype(DType::F32)?, &targets, 1.0)
        .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
    let nll = logp.neg()?.mul(&position_weights)?;
    Ok((nll, position_weights))
}

fn check_labels(
    logits: &Tensor,
    labels: &[i64],
    classes: usize,
    what: &str,
) -> candle_core::Result<()> {
    let (n, c) = logits.dims2()?;
    if n != labels.len() || c != classes {
        candle_core::bail!(
            "{what}: {n}x{c} logits for {} labels of {classes} classes",
            labels.len()
        );
    }
    if let Some(bad) = labels
        .iter()
        .find(|&&l| l != IGNORE && (l < 0 || l as usize >= c))
    {
        candle_core::bail!("{what}: label {bad} is outside 0..{c}");
    }
    Ok(())
}

/// torch `CrossEntropyLoss(weight, ignore_index=-100, reduction="mean")` on `logits [N, C]`:
/// `Σ w_y·nll / Σ w_y` over labelled positions (0 when none is labelled).
pub fn weighted_cross_entropy(
    logits: &Tensor,
    labels: &[i64],
    weights: Option<&[f32]>,
) -> candle_core::Result<Tensor> {
    let classes = logits.dim(1)?;
    check_labels(logits, labels, classes, "cross-entropy")?;
    let (nll, w) = weighted_nll(logits, labels, weights)?;
    let denominator = w.sum_all()?.to_scalar::<f32>()?;
    nll.sum_all()? / f64::from(denominator.max(f32::MIN_POSITIVE))
}

/// The released focal loss on `logits [N, C]` (see [`BioLoss::Focal`]).
pub fn focal_loss(
    logits: &Tensor,
    labels: &[i64],
    weights: Option<&[f32]>,
    gamma: f64,
) -> candle_core::Result<Tensor> {
    let classes = logits.dim(1)?;
    check_labels(logits, labels, classes, "focal loss")?;
    let (ce, _) = weighted_nll(logits, labels, weights)?;
    let one_minus_pt = (ce.neg()?.exp()?.neg()? + 1.0)?;
    // (1 − pt)^γ: `powf` of a zero base has a NaN gradient at γ < 1; γ is ≥ 1 in practice.
    let modulation = if gamma == 2.0 {
        one_minus_pt.sqr()?
    } else {
        one_minus_pt.clamp(0f32, 1f32)?.powf(gamma)?
    };
    modulation.mul(&ce)?.mean_all()
}

/// The CPRS loss of one batch: `lm_logits [B, T, V]` (unused with `ignore_lm_head`),
/// `bio_logits [B, T, 4]`, labels flattened row-major over `[B, T]`.
pub fn cprs_loss(
    lm_logits: Option<&Tensor>,
    bio_logits: &Tensor,
    lm_labels: &[i64],
    bio_labels: &[i64],
    config: &LossConfig,
) -> candle_core::Result<LossParts> {
    let classes = bio_logits.dim(candle_core::D::Minus1)?;
    let bio_flat = bio_logits.reshape(((), classes))?;
    let weights = config.bio_class_weights.as_ref().map(|w| w.as_slice());
    let bio = match config.bio {
        BioLoss::CrossEntropy => weighted_cross_entropy(&bio_flat, bio_labels, weights)?,
        BioLoss::Focal { gamma } => focal_loss(&bio_flat, bio_labels, weights, gamma)?,
    };
    let lm = match (config.ignore_lm_head, lm_logits) {
        (true, _) => None,
        (false, None) => candle_core::bail!("the critic loss needs LM logits"),
        (false, Some(l)) => {
            let vocab = l.dim(candle_core::D::Minus1)?;
            Some(weighted_cross_entropy(
                &l.reshape(((), vocab))?,
                lm_labels,
                config.lm_vocab_weights.as_deref(),
            )?)
        }
    };
    let total = match &lm {
        Some(lm) => (lm + &bio)?,
        None => bio.clone(),
    };
    Ok(LossParts { total, lm, bio })
}

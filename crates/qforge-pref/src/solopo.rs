//! SoLoPO (arXiv 2505.11166):
//!
//! `L = L_PO(x_short; y_w, y_l) + α · mean s(|r(x_short, y_w) − r(x_long, y_w)|)`
//!
//! The first term is the unchanged preference loss on the short context; the second (SoLo-RA)
//! aligns the *chosen* response's implicit reward across the two contexts, so only the chosen
//! response needs a long-context forward pass. Each algorithm uses its own implicit reward:
//!
//! | algorithm | r(x, y) | short-context loss |
//! |---|---|---|
//! | DPO | β·(log π(y\|x) − log π_ref(y\|x)) | −log σ(r_w − r_l) |
//! | SimPO | β·mean token log-prob | −log σ(r_w − r_l − γ) |
//! | ORPO | log-odds ā − log(1 − e^ā) | −ā_w + λ·(−log σ(r_w − r_l)) (response-only NLL, as LLaMA-Factory) |

use candle_core::Tensor;
use qforge_train::losses::{log_sigmoid, log1mexp};
use qforge_train::pairwise::{PairLogps, PairLoss, PairObjective, SeqLogps, reward_metrics};
use qforge_train::{Result, TrainError};
use serde::{Deserialize, Serialize};

/// The base preference algorithm and its constants.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "algorithm", rename_all = "lowercase")]
pub enum SoloAlgorithm {
    Dpo { beta: f64 },
    Simpo { beta: f64, gamma: f64 },
    Orpo { lambda: f64 },
}

/// `s(t)` applied to the reward gap `t = |Δr|`. The paper's exact `s` per algorithm is in an
/// appendix we could not read (SoLoPO, arXiv 2505.11166); `Abs` (the default) is the L1 penalty,
/// `Softplus3` = softplus(3t), the Jensen bound of the DPO/SimPO/ORPO sigmoid losses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Penalty {
    #[default]
    Abs,
    Softplus3,
}

/// The SoLoPO objective.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SoloPo {
    pub algorithm: SoloAlgorithm,
    /// Weight of SoLo-RA (paper's best: DPO 3, SimPO 1, ORPO 1 on Qwen2.5-7B); 0 gives the
    /// plain short-context loss.
    pub alpha: f64,
    pub penalty: Penalty,
    /// Treat the short-context reward as a fixed target in SoLo-RA (no gradient through it),
    /// so the penalty only moves the long-context reward. Off by default: the paper's
    /// formula differentiates both sides.
    #[serde(default)]
    pub anchor_short: bool,
}

impl SoloPo {
    fn check(&self) -> Result<()> {
        let positive = |name: &str, v: f64| {
            if v > 0.0 && v.is_finite() {
                Ok(())
            } else {
                Err(TrainError::Invalid(format!(
                    "SoLoPO: {name} must be positive, got {v}"
                )))
            }
        };
        match self.algorithm {
            SoloAlgorithm::Dpo { beta } | SoloAlgorithm::Simpo { beta, .. } => {
                positive("beta", beta)?
            }
            SoloAlgorithm::Orpo { lambda } => positive("lambda", lambda)?,
        }
        if !(self.alpha >= 0.0 && self.alpha.is_finite()) {
            return Err(TrainError::Invalid(format!(
                "SoLoPO: alpha must be >= 0, got {}",
                self.alpha
            )));
        }
        Ok(())
    }

    /// The algorithm's implicit reward of one side `[N]`.
    pub fn implicit_reward(&self, s: &SeqLogps) -> Result<Tensor> {
        Ok(match self.algorithm {
            SoloAlgorithm::Dpo { beta } => {
                let reference = s.reference.as_ref().ok_or_else(|| {
                    TrainError::Invalid("SoLo-DPO needs reference log-probs".into())
                })?;
                ((&s.sum - reference)? * beta)?
            }
            SoloAlgorithm::Simpo { beta, .. } => (&s.mean * beta)?,
            SoloAlgorithm::Orpo { .. } => (&s.mean - log1mexp(&s.mean)?)?,
        })
    }

    /// The short-context preference loss from the two rewards (and ā_w for ORPO's NLL).
    fn preference_loss(&self, r_w: &Tensor, r_l: &Tensor, chosen_mean: &Tensor) -> Result<Tensor> {
        let margin = (r_w - r_l)?;
        Ok(match self.algorithm {
            SoloAlgorithm::Dpo { .. } => log_sigmoid(&margin)?.mean_all()?.neg()?,
            SoloAlgorithm::Simpo { gamma, .. } => {
                log_sigmoid(&(margin - gamma)?)?.mean_all()?.neg()?
            }
            SoloAlgorithm::Orpo { lambda } => {
                let nll = chosen_mean.mean_all()?.neg()?;
                (nll + (log_sigmoid(&margin)?.mean_all()?.neg()? * lambda)?)?
            }
        })
    }

    /// SoLo-RA: `mean s(|r_short − r_long|)` over the batch.
    pub fn alignment(&self, r_short: &Tensor, r_long: &Tensor) -> Result<Tensor> {
        let gap = (r_short - r_long)?.abs()?;
        let s = match self.penalty {
            Penalty::Abs => gap,
            // softplus(z) = max(z, 0) + log(1 + e^{−|z|}), stable for any z.
            Penalty::Softplus3 => {
                let z = (gap * 3.0)?;
                (z.relu()? + (z.abs()?.neg()?.exp()? + 1.0)?.log()?)?
            }
        };
        Ok(s.mean_all()?)
    }
}

impl PairObjective for SoloPo {
    fn needs_reference(&self) -> bool {
        matches!(self.algorithm, SoloAlgorithm::Dpo { .. })
    }

    fn needs_long_context(&self) -> bool {
        self.alpha > 0.0
    }

    fn loss(&self, lp: &PairLogps) -> Result<PairLoss> {
        self.check()?;
        let r_w = self.implicit_reward(&lp.chosen)?;
        let r_l = self.implicit_reward(&lp.rejected)?;
        let mut loss = self.preference_loss(&r_w, &r_l, &lp.chosen.mean)?;
        if self.alpha > 0.0 {
            let long = lp.long_chosen.as_ref().ok_or_else(|| {
                TrainError::Invalid("SoLoPO needs the long-context chosen log-probs".into())
            })?;
            let r_long = self.implicit_reward(long)?;
            let target = if self.anchor_short {
                r_w.detach()
            } else {
                r_w.clone()
            };
            loss = (loss + (self.alignment(&target, &r_long)? * self.alpha)?)?;
        }
        let (accuracy, margin) = reward_metrics(&r_w.detach(), &r_l.detach())?;
        Ok(PairLoss {
            loss,
            accuracy,
            margin,
        })
    }
}

/// The `[solopo]` table of a recipe. Unset constants take the paper's values where known
/// (alpha: DPO 3, SimPO 1, ORPO 1, the best on Qwen2.5-7B) and TRL's otherwise (DPO β 0.1,
/// SimPO β 2.5 / γ 1.375, ORPO λ 0.1).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SoloSettings {
    /// `dpo`, `simpo` or `orpo`.
    pub algorithm: Option<String>,
    pub alpha: Option<f64>,
    pub penalty: Penalty,
    pub beta: Option<f64>,
    pub gamma: Option<f64>,
    pub lambda: Option<f64>,
    pub anchor_short: bool,
}

impl SoloSettings {
    /// A SoLoPO recipe: the shared trainer's settings plus the `[solopo]` table
    /// (`--set solopo.alpha=1` overrides it).
    pub fn from_recipe(
        path: Option<&std::path::Path>,
        overrides: &[String],
    ) -> Result<(qforge_train::trainer::TrainConfig, Self)> {
        let (config, table) =
            qforge_train::recipe::load_with_table(path, overrides, Some("solopo"))?;
        let settings = serde_json::from_value(table)
            .map_err(|e| crate::PrefError::Invalid(format!("[solopo]: {e}")))?;
        Ok((config, settings))
    }

    pub fn objective(&self) -> Result<SoloPo> {
        let name = self.algorithm.as_deref().unwrap_or("dpo");
        let (algorithm, default_alpha) = match name {
            "dpo" => (
                SoloAlgorithm::Dpo {
                    beta: self.beta.unwrap_or(0.1),
                },
                3.0,
            ),
            "simpo" => (
                SoloAlgorithm::Simpo {
                    beta: self.beta.unwrap_or(2.5),
                    gamma: self.gamma.unwrap_or(1.375),
                },
                1.0,
            ),
            "orpo" => (
                SoloAlgorithm::Orpo {
                    lambda: self.lambda.unwrap_or(0.1),
                },
                1.0,
            ),
            other => {
                return Err(TrainError::Invalid(format!(
                    "solopo.algorithm `{other}`: use dpo, simpo or orpo"
                )));
            }
        };
        let objective = SoloPo {
            algorithm,
            alpha: self.alpha.unwrap_or(default_alpha),
            penalty: self.penalty,
            anchor_short: self.anchor_short,
        };
        objective.check()?;
        Ok(objective)
    }
}

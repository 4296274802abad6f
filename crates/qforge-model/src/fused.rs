//! Fused f32 RMSNorm and last-dimension softmax **with** a backward pass, for training.
//! candle's own fused kernels have none (specs/stack.md §1.2), and the compositions of basic ops
//! allocate several full-size temporaries per call. Gradients are pinned against the
//! compositions in `ops.rs` tests and against transformers in `tests/parity.rs`.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, D, Layout, Result, Shape, Tensor, bail};
use rayon::prelude::*;

fn contiguous<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<&'a [f32]> {
    let CpuStorage::F32(data) = s else {
        bail!("fused {what}: f32 only")
    };
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => bail!("fused {what}: input must be contiguous"),
    }
}

struct Softmax;

impl CustomOp1 for Softmax {
    fn name(&self) -> &'static str {
        "qforge-softmax-last-dim"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous(s, l, "softmax")?;
        let dim = l.shape().dims().last().copied().unwrap_or(1).max(1);
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(dim)
            .zip(x.par_chunks(dim))
            .for_each(|(o, row)| {
                let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let mut sum = 0f32;
                for (oi, &xi) in o.iter_mut().zip(row) {
                    *oi = (xi - max).exp();
                    sum += *oi;
                }
                let inv = 1.0 / sum;
                o.iter_mut().for_each(|v| *v *= inv);
            });
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }

    /// `dx = y ⊙ (dy − Σ(dy ⊙ y))`.
    fn bwd(&self, _arg: &Tensor, res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let dot = (grad_res * res)?.sum_keepdim(D::Minus1)?;
        Ok(Some((res * grad_res.broadcast_sub(&dot)?)?))
    }
}

/// Softmax over the last dimension with a backward pass (f32, contiguous input).
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op1(Softmax)
}

struct RmsNorm {
    eps: f32,
}

impl CustomOp2 for RmsNorm {
    fn name(&self) -> &'static str {
        "qforge-rms-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = contiguous(s1, l1, "rms_norm")?;
        let w = contiguous(s2, l2, "rms_norm weight")?;
        let dim = w.len();
        if l1.shape().dims().last() != Some(&dim) {
            bail!("fused rms_norm: weight of {dim} for input {:?}", l1.shape());
        }
        let mut out = vec![0f32; x.len()];
        let eps = self.eps;
        out.par_chunks_mut(dim)
            .zip(x.par_chunks(dim))
            .for_each(|(o, row)| {
                let ms = row.iter().map(|v| v * v).sum::<f32>() / dim as f32;
                let r = 1.0 / (ms + eps).sqrt();
                for ((oi, &xi), &wi) in o.iter_mut().zip(row).zip(w) {
                    *oi = xi * r * wi;
                }
            });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    /// With `r = 1/√(mean(x²)+ε)` and `x̂ = x·r`: `dw = Σ_rows dy ⊙ x̂`,
    /// `dx = r · (dy⊙w − x̂ · mean(dy⊙w ⊙ x̂))`.
    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let r = ((x.sqr()?.mean_keepdim(D::Minus1)? + self.eps as f64)?.sqrt()?).recip()?;
        let xhat = x.broadcast_mul(&r)?;
        let rows = xhat.elem_count() / w.elem_count();
        let dw = (grad * &xhat)?.reshape((rows, w.elem_count()))?.sum(0)?;
        let gw = grad.broadcast_mul(w)?;
        let proj = (&gw * &xhat)?.mean_keepdim(D::Minus1)?;
        let dx = (gw - xhat.broadcast_mul(&proj)?)?.broadcast_mul(&r)?;
        Ok((Some(dx), Some(dw)))
    }
}

/// RMSNorm `w · x / √(mean(x²) + ε)` with a backward pass (f32).
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
    x.contiguous()?
        .apply_op2(&w.contiguous()?, RmsNorm { eps: eps as f32 })
}

struct SelectiveLogSoftmax;

impl CustomOp2 for SelectiveLogSoftmax {
    fn name(&self) -> &'static str {
        "qforge-selective-log-softmax"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = contiguous(s1, l1, "selective_log_softmax")?;
        let CpuStorage::U32(t) = s2 else {
            bail!("fused selective_log_softmax: targets must be u32")
        };
        let targets = crate::skinny::contiguous(t, l2, "fused selective_log_softmax: the targets")?;
        let vocab = l1.shape().dims().last().copied().unwrap_or(1).max(1);
        if targets.len() * vocab != x.len() {
            bail!(
                "fused selective_log_softmax: {} targets for logits {:?}",
                targets.len(),
                l1.shape()
            );
        }
        let mut out = vec![0f32; targets.len()];
        let mut bad = None;
        out.iter_mut()
            .zip(x.chunks(vocab))
            .zip(targets)
            .for_each(|((o, row), &t)| {
                let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let lse = row.iter().map(|v| (v - max).exp()).sum::<f32>().ln() + max;
                match row.get(t as usize) {
                    Some(v) => *o = v - lse,
                    None => bad = Some(t),
                }
            });
        if let Some(t) = bad {
            bail!("fused selective_log_softmax: target {t} outside the vocabulary of {vocab}");
        }
        let mut shape = l1.shape().dims().to_vec();
        shape.pop();
        Ok((CpuStorage::F32(out), Shape::from(shape)))
    }

    /// `d logits = g · (onehot(target) − softmax(logits))`; targets get no gradient.
    fn bwd(
        &self,
        logits: &Tensor,
        targets: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let probs = softmax_last_dim(logits)?.detach();
        let onehot = Tensor::zeros(logits.shape(), logits.dtype(), logits.device())?.scatter_add(
            &targets.unsqueeze(D::Minus1)?,
            &Tensor::ones(
                targets
                    .dims()
                    .iter()
                    .copied()
                    .chain([1])
                    .collect::<Vec<_>>(),
                logits.dtype(),
                logits.device(),
            )?,
            D::Minus1,
        )?;
        let g = grad.unsqueeze(D::Minus1)?;
        Ok((Some((onehot - probs)?.broadcast_mul(&g)?), None))
    }
}

/// `log softmax(logits)[target]` along the last dimension, with a backward pass (f32 logits,
/// u32 targets of shape `logits.shape[..-1]`). Never materialises the full log-softmax.
pub fn selective_log_softmax(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    logits
        .contiguous()?
        .apply_op2(&targets.contiguous()?, SelectiveLogSoftmax)
}

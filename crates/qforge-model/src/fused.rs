//! Fused f32 CPU training kernels **with** a backward pass: RMSNorm, softmax, attention
//! softmax (scale + additive mask + softmax), rotary embedding fused with the head transpose,
//! SwiGLU and the selective log-softmax of the loss. candle's own fused kernels have no backward
//! (candle 0.11's fused CPU kernels define no backward), and the compositions of basic ops allocate several full-size
//! temporaries per call, forward and backward; each backward here is one kernel and one
//! allocation. Gradients are pinned against the compositions in the tests below and in
//! `ops.rs`, and against transformers in `tests/parity.rs`.

use candle_core::{
    CpuStorage, CustomOp1, CustomOp2, CustomOp3, D, DType, Layout, Result, Shape, Tensor, bail,
};
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

    fn bwd(&self, _arg: &Tensor, res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        softmax_backward(res, grad_res, 1.0).map(Some)
    }
}

/// `dx = scale · y ⊙ (dy − Σ(dy ⊙ y))` over the last dimension.
struct SoftmaxBackward {
    scale: f32,
}

impl CustomOp2 for SoftmaxBackward {
    fn name(&self) -> &'static str {
        "qforge-softmax-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let y = contiguous(s1, l1, "softmax backward")?;
        let dy = contiguous(s2, l2, "softmax backward gradient")?;
        let dim = l1.shape().dims().last().copied().unwrap_or(1).max(1);
        let mut dx = vec![0f32; y.len()];
        dx.par_chunks_mut(dim)
            .zip(y.par_chunks(dim).zip(dy.par_chunks(dim)))
            .for_each(|(o, (y, dy))| {
                let dot: f32 = y.iter().zip(dy).map(|(a, b)| a * b).sum();
                for ((o, &y), &dy) in o.iter_mut().zip(y).zip(dy) {
                    *o = self.scale * y * (dy - dot);
                }
            });
        Ok((CpuStorage::F32(dx), l1.shape().clone()))
    }
}

fn softmax_backward(y: &Tensor, dy: &Tensor, scale: f32) -> Result<Tensor> {
    y.contiguous()?
        .apply_op2_no_bwd(&dy.contiguous()?, &SoftmaxBackward { scale })
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

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let n = x.elem_count();
        let both = x.contiguous()?.apply_op3_no_bwd(
            &w.contiguous()?,
            &grad.contiguous()?,
            &RmsNormBackward { eps: self.eps },
        )?;
        let dx = both.narrow(0, 0, n)?.reshape(x.shape())?;
        let dw = both.narrow(0, n, w.elem_count())?.reshape(w.shape())?;
        Ok((Some(dx), Some(dw)))
    }
}

/// With `r = 1/√(mean(x²)+ε)` and `x̂ = x·r`: `dx = r · (dy⊙w − x̂ · mean(dy⊙w ⊙ x̂))` and
/// `dw = Σ_rows dy ⊙ x̂`, returned as one flat buffer `[dx…, dw…]`.
struct RmsNormBackward {
    eps: f32,
}

impl CustomOp3 for RmsNormBackward {
    fn name(&self) -> &'static str {
        "qforge-rms-norm-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = contiguous(s1, l1, "rms_norm backward")?;
        let w = contiguous(s2, l2, "rms_norm backward weight")?;
        let dy = contiguous(s3, l3, "rms_norm backward gradient")?;
        let dim = w.len();
        let mut out = vec![0f32; x.len() + dim];
        let (dx, dw) = out.split_at_mut(x.len());
        let eps = self.eps;
        // dw sums over rows: fixed blocks of rows, summed in order, so the result does not
        // depend on how rayon schedules the work (runs repeat bit for bit).
        const BLOCK: usize = 64;
        let partials: Vec<Vec<f32>> = dx
            .par_chunks_mut(dim * BLOCK)
            .zip(x.par_chunks(dim * BLOCK).zip(dy.par_chunks(dim * BLOCK)))
            .map(|(dx, (x, dy))| {
                let mut acc = vec![0f32; dim];
                for ((dx, x), dy) in dx.chunks_mut(dim).zip(x.chunks(dim)).zip(dy.chunks(dim)) {
                    let ms = x.iter().map(|v| v * v).sum::<f32>() / dim as f32;
                    let r = 1.0 / (ms + eps).sqrt();
                    let mut proj = 0f32;
                    for ((&x, &dy), &w) in x.iter().zip(dy).zip(w) {
                        proj += dy * w * x * r;
                    }
                    proj /= dim as f32;
                    for i in 0..dim {
                        let xhat = x[i] * r;
                        acc[i] += dy[i] * xhat;
                        dx[i] = r * (dy[i] * w[i] - xhat * proj);
                    }
                }
                acc
            })
            .collect();
        for p in &partials {
            dw.iter_mut().zip(p).for_each(|(a, b)| *a += b);
        }
        Ok((CpuStorage::F32(out), Shape::from(x.len() + dim)))
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
        if let Some(&t) = targets.iter().find(|&&t| t as usize >= vocab) {
            bail!("fused selective_log_softmax: target {t} outside the vocabulary of {vocab}");
        }
        let mut out = vec![0f32; targets.len()];
        out.par_iter_mut()
            .zip(x.par_chunks(vocab).zip(targets.par_iter()))
            .for_each(|(o, (row, &t))| {
                let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let lse = row.iter().map(|v| (v - max).exp()).sum::<f32>().ln() + max;
                *o = row[t as usize] - lse;
            });
        let mut shape = l1.shape().dims().to_vec();
        shape.pop();
        Ok((CpuStorage::F32(out), Shape::from(shape)))
    }

    fn bwd(
        &self,
        logits: &Tensor,
        targets: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        // The forward's result gives each row's log-sum-exp back: lse = logits[target] − res.
        let lse = (logits
            .detach()
            .gather(&targets.unsqueeze(D::Minus1)?, D::Minus1)?
            .squeeze(D::Minus1)?
            - res.detach())?;
        // Targets and lse travel as one [N, 2] f32 pair (targets < 2^24 are exact in f32).
        let side = Tensor::stack(&[&targets.to_dtype(DType::F32)?, &lse], D::Minus1)?;
        let d = logits.contiguous()?.apply_op3_no_bwd(
            &side.contiguous()?,
            &grad.contiguous()?,
            &SelectiveLogSoftmaxBackward,
        )?;
        Ok((Some(d), None))
    }
}

/// `d logits = g · (onehot(target) − exp(logits − lse))`; targets get no gradient.
struct SelectiveLogSoftmaxBackward;

impl CustomOp3 for SelectiveLogSoftmaxBackward {
    fn name(&self) -> &'static str {
        "qforge-selective-log-softmax-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = contiguous(s1, l1, "selective_log_softmax backward")?;
        let side = contiguous(s2, l2, "selective_log_softmax backward targets")?;
        let g = contiguous(s3, l3, "selective_log_softmax backward gradient")?;
        let vocab = l1.shape().dims().last().copied().unwrap_or(1).max(1);
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(vocab)
            .zip(x.par_chunks(vocab))
            .zip(side.par_chunks(2).zip(g.par_iter()))
            .for_each(|((o, row), (side, &g))| {
                if g == 0.0 {
                    return; // masked position: the zeros are already its gradient
                }
                let (t, lse) = (side[0] as usize, side[1]);
                for (o, &v) in o.iter_mut().zip(row) {
                    *o = -g * (v - lse).exp();
                }
                o[t] += g;
            });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// `log softmax(logits)[target]` along the last dimension, with a backward pass (f32 logits,
/// u32 targets of shape `logits.shape[..-1]`). Never materialises the full log-softmax.
pub fn selective_log_softmax(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    logits
        .contiguous()?
        .apply_op2(&targets.contiguous()?, SelectiveLogSoftmax)
}

/// Attention probabilities `softmax(scale · scores + bias)` for scores `[B, H, Tq, Tk]` and an
/// additive bias `[Bb, Tqb, Tk]` with `Bb ∈ {1, B}` and `Tqb ∈ {1, Tq}` (broadcast like
/// `[Bb, 1, Tqb, Tk]`). The bias is a constant mask: it gets no gradient.
struct AttentionSoftmax {
    scale: f32,
}

impl CustomOp2 for AttentionSoftmax {
    fn name(&self) -> &'static str {
        "qforge-attention-softmax"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = contiguous(s1, l1, "attention softmax")?;
        let bias = contiguous(s2, l2, "attention softmax bias")?;
        let (b, h, tq, tk) = l1.shape().dims4()?;
        let (bb, tqb, tkb) = l2.shape().dims3()?;
        if tkb != tk || !(bb == 1 || bb == b) || !(tqb == 1 || tqb == tq) {
            bail!(
                "fused attention softmax: bias {:?} for scores {:?}",
                l2.shape(),
                l1.shape()
            );
        }
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(tk)
            .zip(x.par_chunks(tk))
            .enumerate()
            .for_each(|(r, (o, row))| {
                let (bi, qi) = (r / (h * tq), r % tq);
                let at = ((bi % bb) * tqb + qi % tqb) * tk;
                let bias = &bias[at..at + tk];
                let mut max = f32::NEG_INFINITY;
                for ((o, &x), &m) in o.iter_mut().zip(row).zip(bias) {
                    *o = x * self.scale + m;
                    max = max.max(*o);
                }
                let mut sum = 0f32;
                for o in o.iter_mut() {
                    *o = (*o - max).exp();
                    sum += *o;
                }
                let inv = 1.0 / sum;
                o.iter_mut().for_each(|v| *v *= inv);
            });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        _scores: &Tensor,
        _bias: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        Ok((Some(softmax_backward(res, grad, self.scale)?), None))
    }
}

/// `softmax(scale · scores + bias)` over the last dimension with a backward pass for `scores`
/// (f32): scores `[B, H, Tq, Tk]`, bias `[Bb, Tqb, Tk]`, see [`AttentionSoftmax`].
pub fn attention_softmax(scores: &Tensor, scale: f64, bias: &Tensor) -> Result<Tensor> {
    scores.contiguous()?.apply_op2(
        &bias.contiguous()?,
        AttentionSoftmax {
            scale: scale as f32,
        },
    )
}

/// Rotary embedding ("rotate half") fused with the head transpose. Forward maps
/// `[B, T, H, D]` to `[B, H, T, D]`; `inverse` maps a gradient `[B, H, T, D]` back to
/// `[B, T, H, D]` rotating by the opposite angle, which is the exact transpose of the forward.
/// `cos`/`sin` are `[B, T, D/2]`.
struct Rope {
    inverse: bool,
}

impl CustomOp3 for Rope {
    fn name(&self) -> &'static str {
        "qforge-rope"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = contiguous(s1, l1, "rope")?;
        let cos = contiguous(s2, l2, "rope cos")?;
        let sin = contiguous(s3, l3, "rope sin")?;
        let (b, t, h, d) = if self.inverse {
            let (b, h, t, d) = l1.shape().dims4()?;
            (b, t, h, d)
        } else {
            l1.shape().dims4()?
        };
        let half = d / 2;
        if d % 2 != 0 || l2.shape().dims() != [b, t, half] || l3.shape().dims() != [b, t, half] {
            bail!(
                "fused rope: cos {:?} / sin {:?} for input {:?}",
                l2.shape(),
                l3.shape(),
                l1.shape()
            );
        }
        let sign = if self.inverse { -1f32 } else { 1f32 };
        let mut out = vec![0f32; x.len()];
        // One output row of D per (b, ·, ·); its source row and rotary row follow from the
        // layout of the side that is [B, T, H, D].
        out.par_chunks_mut(d).enumerate().for_each(|(r, o)| {
            let (bi, ti, hi) = if self.inverse {
                (r / (t * h), (r / h) % t, r % h)
            } else {
                (r / (h * t), r % t, (r / t) % h)
            };
            let src = if self.inverse {
                ((bi * h + hi) * t + ti) * d
            } else {
                ((bi * t + ti) * h + hi) * d
            };
            let x = &x[src..src + d];
            let at = (bi * t + ti) * half;
            let (c, s) = (&cos[at..at + half], &sin[at..at + half]);
            for i in 0..half {
                let (x1, x2) = (x[i], x[i + half]);
                let si = sign * s[i];
                o[i] = x1 * c[i] - x2 * si;
                o[i + half] = x2 * c[i] + x1 * si;
            }
        });
        let shape = if self.inverse {
            (b, t, h, d)
        } else {
            (b, h, t, d)
        };
        Ok((CpuStorage::F32(out), Shape::from(shape)))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let dx = grad
            .contiguous()?
            .apply_op3_no_bwd(cos, sin, &Rope { inverse: true })?;
        Ok((Some(dx), None, None))
    }
}

/// Rotary embedding of `x` `[B, T, H, D]` (the projection's own layout), returned as
/// `[B, H, T, D]`, with a backward pass for `x` (f32; `cos`/`sin` `[B, T, D/2]` are constants).
pub fn rope_to_heads(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op3(
        &cos.contiguous()?,
        &sin.contiguous()?,
        Rope { inverse: false },
    )
}

/// `silu(gate) ⊙ up`, the SwiGLU of the Qwen MLP.
struct SwiGlu;

impl CustomOp2 for SwiGlu {
    fn name(&self) -> &'static str {
        "qforge-swiglu"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let gate = contiguous(s1, l1, "swiglu gate")?;
        let up = contiguous(s2, l2, "swiglu up")?;
        if l1.shape() != l2.shape() {
            bail!(
                "fused swiglu: gate {:?} but up {:?}",
                l1.shape(),
                l2.shape()
            );
        }
        let mut out = vec![0f32; gate.len()];
        out.par_chunks_mut(4096)
            .zip(gate.par_chunks(4096).zip(up.par_chunks(4096)))
            .for_each(|(o, (g, u))| {
                for ((o, &g), &u) in o.iter_mut().zip(g).zip(u) {
                    *o = g / (1.0 + (-g).exp()) * u;
                }
            });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        gate: &Tensor,
        up: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let n = gate.elem_count();
        let both = gate.contiguous()?.apply_op3_no_bwd(
            &up.contiguous()?,
            &grad.contiguous()?,
            &SwiGluBackward,
        )?;
        let d_gate = both.narrow(0, 0, n)?.reshape(gate.shape())?;
        let d_up = both.narrow(0, n, n)?.reshape(gate.shape())?;
        Ok((Some(d_gate), Some(d_up)))
    }
}

/// With `s = σ(gate)`: `d gate = g · up · s · (1 + gate · (1 − s))`, `d up = g · gate · s`, as
/// one flat buffer `[d gate…, d up…]`.
struct SwiGluBackward;

impl CustomOp3 for SwiGluBackward {
    fn name(&self) -> &'static str {
        "qforge-swiglu-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let gate = contiguous(s1, l1, "swiglu backward gate")?;
        let up = contiguous(s2, l2, "swiglu backward up")?;
        let dy = contiguous(s3, l3, "swiglu backward gradient")?;
        let n = gate.len();
        let mut out = vec![0f32; 2 * n];
        let (d_gate, d_up) = out.split_at_mut(n);
        d_gate
            .par_chunks_mut(4096)
            .zip(d_up.par_chunks_mut(4096))
            .zip(gate.par_chunks(4096).zip(up.par_chunks(4096)))
            .zip(dy.par_chunks(4096))
            .for_each(|(((dg, du), (g, u)), dy)| {
                for i in 0..g.len() {
                    let s = 1.0 / (1.0 + (-g[i]).exp());
                    dg[i] = dy[i] * u[i] * s * (1.0 + g[i] * (1.0 - s));
                    du[i] = dy[i] * g[i] * s;
                }
            });
        Ok((CpuStorage::F32(out), Shape::from(2 * n)))
    }
}

/// `silu(gate) ⊙ up` with a backward pass for both (f32, same shapes).
pub fn swiglu(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    gate.contiguous()?.apply_op2(&up.contiguous()?, SwiGlu)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .and_then(|d| d.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>())
            .unwrap()
    }

    /// Value and gradients of `Σ f(x…) ⊙ up` for the fused and the composed form.
    fn compare(
        vars: &[&Var],
        fused: impl Fn() -> Result<Tensor>,
        composed: impl Fn() -> Result<Tensor>,
    ) {
        let run = |f: &dyn Fn() -> Result<Tensor>| {
            let y = f().unwrap();
            let up = Tensor::randn(0f32, 1.0, y.shape(), y.device())
                .unwrap()
                .sin()
                .unwrap();
            (y, up)
        };
        let (yf, up) = run(&fused);
        let yc = composed().unwrap();
        assert!(max_diff(&yf, &yc) < 1e-5, "values differ");
        let gf = (&yf * &up).unwrap().sum_all().unwrap().backward().unwrap();
        let gc = (&yc * &up).unwrap().sum_all().unwrap().backward().unwrap();
        for (i, v) in vars.iter().enumerate() {
            let (a, b) = (gf.get(v).expect("fused grad"), gc.get(v).expect("grad"));
            assert!(max_diff(a, b) < 1e-4, "gradient of input {i} differs");
        }
    }

    #[test]
    fn attention_softmax_matches_scale_bias_softmax_with_causal_and_padding_masks() {
        let dev = Device::Cpu;
        let scores = Var::randn(0f32, 2.0, (2, 3, 5, 5), &dev).unwrap();
        let causal: Vec<f32> = (0..5)
            .flat_map(|i| (0..5).map(move |j| if j > i { f32::MIN } else { 0.0 }))
            .collect();
        let mut both = causal.clone();
        both.extend(
            causal
                .iter()
                .enumerate()
                .map(|(k, &c)| if k % 5 == 0 { f32::MIN } else { c }),
        );
        for bias in [
            Tensor::from_vec(causal.clone(), (1, 5, 5), &dev).unwrap(),
            Tensor::from_vec(both, (2, 5, 5), &dev).unwrap(),
            Tensor::from_vec(
                vec![0f32, 0., f32::MIN, 0., 0., 0., 0., 0., 0., 0.],
                (2, 1, 5),
                &dev,
            )
            .unwrap(),
        ] {
            compare(
                &[&scores],
                || attention_softmax(scores.as_tensor(), 0.125, &bias),
                || {
                    let (bb, tqb, tk) = bias.dims3()?;
                    let x = (scores.as_tensor() * 0.125)?
                        .broadcast_add(&bias.reshape((bb, 1, tqb, tk))?)?;
                    candle_nn::ops::softmax(&x, D::Minus1)
                },
            );
        }
    }

    #[test]
    fn rope_to_heads_matches_transpose_then_rotate_half() {
        let dev = Device::Cpu;
        let x = Var::randn(0f32, 1.0, (2, 3, 4, 6), &dev).unwrap();
        let cos = Tensor::randn(0f32, 1.0, (2, 3, 3), &dev).unwrap();
        let sin = Tensor::randn(0f32, 1.0, (2, 3, 3), &dev).unwrap();
        compare(
            &[&x],
            || rope_to_heads(x.as_tensor(), &cos, &sin),
            || {
                let xt = x.as_tensor().transpose(1, 2)?;
                crate::ops::rope(&xt, &cos, &sin, true)
            },
        );
    }

    #[test]
    fn swiglu_matches_silu_times_up() {
        let dev = Device::Cpu;
        let g = Var::randn(0f32, 2.0, (3, 5000), &dev).unwrap();
        let u = Var::randn(0f32, 1.0, (3, 5000), &dev).unwrap();
        compare(
            &[&g, &u],
            || swiglu(g.as_tensor(), u.as_tensor()),
            || g.as_tensor().silu()? * u.as_tensor(),
        );
    }

    #[test]
    fn rms_norm_and_selective_log_softmax_backward_kernels_match_the_compositions() {
        let dev = Device::Cpu;
        let x = Var::randn(0f32, 1.0, (4, 7, 16), &dev).unwrap();
        let w = Var::randn(1f32, 0.2, 16, &dev).unwrap();
        compare(
            &[&x, &w],
            || rms_norm(x.as_tensor(), w.as_tensor(), 1e-6),
            || candle_nn::ops::rms_norm_slow(x.as_tensor(), w.as_tensor(), 1e-6),
        );
        let targets = Tensor::new(&[[3u32, 0, 15, 7, 1, 2, 9]; 4], &dev).unwrap();
        compare(
            &[&x],
            || selective_log_softmax(x.as_tensor(), &targets),
            || {
                candle_nn::ops::log_softmax(x.as_tensor(), D::Minus1)?
                    .gather(&targets.unsqueeze(D::Minus1)?, D::Minus1)?
                    .squeeze(D::Minus1)
            },
        );
    }
}

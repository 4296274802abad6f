//! The three ops where candle's fast kernels silently drop gradients (candle 0.11's fused CPU kernels define no backward):
//! RMSNorm, rotary embedding and softmax, plus the attention softmax and SwiGLU. Each has a
//! differentiable form, used whenever the forward may be differentiated (our fused f32 CPU
//! kernels with a backward pass, else compositions of basic ops), and candle's fused inference
//! kernel otherwise. Tests pin that all forms agree.

use candle_core::{D, DType, Result, Tensor};

/// `w * x / sqrt(mean(x^2) + eps)`, normalised in f32 and multiplied by `w` in the input dtype
/// (transformers' Qwen2/Qwen3 RMSNorm).
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64, differentiable: bool) -> Result<Tensor> {
    if differentiable {
        if fused_applies(x) && fused_applies(weight) {
            return crate::fused::rms_norm(x, weight, eps);
        }
        return candle_nn::ops::rms_norm_slow(x, weight, eps as f32);
    }
    // Inference: candle's kernel normalises in f32 internally for f16/bf16 too; it multiplies
    // by the weight before rounding (transformers rounds first), a difference of one ulp.
    candle_nn::ops::rms_norm(&x.contiguous()?, weight, eps as f32)
}

/// Non-interleaved ("rotate half") rotary embedding of `x` `[B, H, T, D]` with per-sequence
/// `cos`/`sin` `[B, T, D/2]`.
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor, differentiable: bool) -> Result<Tensor> {
    if differentiable {
        let cos = Tensor::cat(&[cos, cos], D::Minus1)?.unsqueeze(1)?;
        let sin = Tensor::cat(&[sin, sin], D::Minus1)?.unsqueeze(1)?;
        let half = x.dim(D::Minus1)? / 2;
        let x1 = x.narrow(D::Minus1, 0, half)?;
        let x2 = x.narrow(D::Minus1, half, half)?;
        let rotated = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
        return x.broadcast_mul(&cos)? + rotated.broadcast_mul(&sin)?;
    }
    candle_nn::rotary_emb::rope(&x.contiguous()?, &cos.contiguous()?, &sin.contiguous()?)
}

/// Rotary embedding of `x` `[B, T, H, D]` (the projection's layout), returned as
/// `[B, H, T, D]` contiguous.
pub fn rope_to_heads(
    x: &Tensor,
    cos: &Tensor,
    sin: &Tensor,
    differentiable: bool,
) -> Result<Tensor> {
    if differentiable && fused_applies(x) {
        return crate::fused::rope_to_heads(x, cos, sin);
    }
    rope(&x.transpose(1, 2)?.contiguous()?, cos, sin, differentiable)
}

/// `softmax(scale · scores + bias)` for attention scores `[B, H, Tq, Tk]` (f32) and an additive
/// mask `bias` `[Bb, Tqb, Tk]` broadcast like `[Bb, 1, Tqb, Tk]` (`Bb ∈ {1, B}`,
/// `Tqb ∈ {1, Tq}`).
pub fn attention_softmax(
    scores: &Tensor,
    scale: f64,
    bias: Option<&Tensor>,
    differentiable: bool,
) -> Result<Tensor> {
    if let Some(bias) = bias
        && differentiable
        && fused_applies(scores)
    {
        return crate::fused::attention_softmax(scores, scale, bias);
    }
    let scores = (scores * scale)?;
    let scores = match bias {
        Some(bias) => {
            let (bb, tqb, tk) = bias.dims3()?;
            scores.broadcast_add(&bias.reshape((bb, 1, tqb, tk))?)?
        }
        None => scores,
    };
    softmax(&scores, differentiable)
}

/// `silu(gate) ⊙ up`.
pub fn swiglu(gate: &Tensor, up: &Tensor, differentiable: bool) -> Result<Tensor> {
    if differentiable && fused_applies(gate) && fused_applies(up) {
        return crate::fused::swiglu(gate, up);
    }
    gate.silu()? * up
}

/// Our fused training kernels are f32 and CPU only.
fn fused_applies(x: &Tensor) -> bool {
    x.dtype() == DType::F32 && x.device().is_cpu()
}

/// Softmax over the last dimension.
pub fn softmax(x: &Tensor, differentiable: bool) -> Result<Tensor> {
    if differentiable {
        if fused_applies(x) {
            return crate::fused::softmax_last_dim(x);
        }
        candle_nn::ops::softmax(x, D::Minus1)
    } else {
        candle_nn::ops::softmax_last_dim(&x.contiguous()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    #[test]
    fn fused_and_differentiable_forms_agree() {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (2, 3, 5, 8), &dev).unwrap();
        let w = Tensor::randn(1f32, 0.1, 8, &dev).unwrap();
        let a = rms_norm(&x, &w, 1e-6, true).unwrap();
        let b = rms_norm(&x, &w, 1e-6, false).unwrap();
        assert!(max_diff(&a, &b) < 1e-5);
        let a16 = rms_norm(
            &x.to_dtype(DType::F16).unwrap(),
            &w.to_dtype(DType::F16).unwrap(),
            1e-6,
            true,
        )
        .unwrap();
        let b16 = rms_norm(
            &x.to_dtype(DType::F16).unwrap(),
            &w.to_dtype(DType::F16).unwrap(),
            1e-6,
            false,
        )
        .unwrap();
        assert!(
            max_diff(
                &a16.to_dtype(DType::F32).unwrap(),
                &b16.to_dtype(DType::F32).unwrap()
            ) < 1e-2
        );

        let cos = Tensor::randn(0f32, 1.0, (2, 5, 4), &dev).unwrap();
        let sin = Tensor::randn(0f32, 1.0, (2, 5, 4), &dev).unwrap();
        let a = rope(&x, &cos, &sin, true).unwrap();
        let b = rope(&x, &cos, &sin, false).unwrap();
        assert!(max_diff(&a, &b) < 1e-5);

        let a = softmax(&x, true).unwrap();
        let b = softmax(&x, false).unwrap();
        assert!(max_diff(&a, &b) < 1e-6);
    }

    #[test]
    fn fused_training_ops_match_the_compositions_in_value_and_gradient() {
        let dev = Device::Cpu;
        let x = Var::randn(0f32, 1.0, (2, 3, 16), &dev).unwrap();
        let w = Var::randn(1f32, 0.2, 16, &dev).unwrap();
        let up = Tensor::randn(0f32, 1.0, (2, 3, 16), &dev).unwrap();
        let run = |fused: bool| {
            let y = if fused {
                crate::fused::softmax_last_dim(
                    &crate::fused::rms_norm(x.as_tensor(), w.as_tensor(), 1e-6).unwrap(),
                )
                .unwrap()
            } else {
                candle_nn::ops::softmax(
                    &candle_nn::ops::rms_norm_slow(x.as_tensor(), w.as_tensor(), 1e-6).unwrap(),
                    D::Minus1,
                )
                .unwrap()
            };
            let grads = (&y * &up).unwrap().sum_all().unwrap().backward().unwrap();
            (
                y,
                grads.get(&x).unwrap().clone(),
                grads.get(&w).unwrap().clone(),
            )
        };
        let (a, b) = (run(true), run(false));
        assert!(max_diff(&a.0, &b.0) < 1e-6);
        assert!(max_diff(&a.1, &b.1) < 1e-5, "dx");
        assert!(max_diff(&a.2, &b.2) < 1e-5, "dw");
    }

    #[test]
    fn differentiable_forms_propagate_gradients() {
        let dev = Device::Cpu;
        let x = Var::randn(0f32, 1.0, (1, 2, 3, 4), &dev).unwrap();
        let w = Var::randn(1f32, 0.1, 4, &dev).unwrap();
        let cos = Tensor::randn(0f32, 1.0, (1, 3, 2), &dev).unwrap();
        let sin = Tensor::randn(0f32, 1.0, (1, 3, 2), &dev).unwrap();
        let y = rms_norm(x.as_tensor(), w.as_tensor(), 1e-6, true).unwrap();
        let y = rope(&y, &cos, &sin, true).unwrap();
        let y = softmax(&y, true).unwrap();
        let loss = y.sqr().unwrap().sum_all().unwrap();
        let grads = loss.backward().unwrap();
        for v in [&x, &w] {
            let g = grads.get(v).expect("gradient reaches the variable");
            assert!(
                g.abs()
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap()
                    > 0.0
            );
        }
    }
}

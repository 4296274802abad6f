//! AdamW with f32 master weights and moments, global-norm clipping, gradient accumulation
//! and learning-rate schedules, matching `torch.optim.AdamW`, `clip_grad_norm_` and
//! transformers' schedules (pinned by `tests/optim.rs`).

use candle_core::backprop::GradStore;
use candle_core::{CpuStorage, DType, InplaceOp2, InplaceOp3, Layout, Tensor, Var};
use qforge_util::WithPath;
use rayon::prelude::*;

use crate::error::{Result, TrainError};

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// Decoupled weight decay, applied to matrices only (not to norms or biases).
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        }
    }
}

struct Slot {
    name: String,
    var: Var,
    /// f32 copy of the parameter when the model runs in another dtype (bf16 on CUDA).
    master: Option<Var>,
    m: Var,
    v: Var,
    decay: bool,
}

/// AdamW over named variables. Parameters with one dimension (norm weights, biases) get no
/// weight decay, as transformers' Trainer groups them.
pub struct AdamW {
    slots: Vec<Slot>,
    config: AdamWConfig,
    step: u64,
}

impl AdamW {
    pub fn new(vars: Vec<(String, Var)>, config: AdamWConfig) -> Result<Self> {
        let slots = vars
            .into_iter()
            .map(|(name, var)| {
                let master = (var.dtype() != DType::F32)
                    .then(|| Var::from_tensor(&var.to_dtype(DType::F32)?))
                    .transpose()?;
                let zeros = || Var::zeros(var.shape(), DType::F32, var.device());
                Ok(Slot {
                    decay: var.rank() >= 2,
                    m: zeros()?,
                    v: zeros()?,
                    master,
                    name,
                    var,
                })
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            slots,
            config,
            step: 0,
        })
    }

    pub fn steps_taken(&self) -> u64 {
        self.step
    }

    /// One update with learning rate `lr`. Variables without a gradient are left alone.
    pub fn step(&mut self, grads: &GradStore, lr: f64) -> Result<()> {
        self.step += 1;
        let c = self.config;
        let t = self.step as i32;
        let bias1 = 1.0 - c.beta1.powi(t);
        let bias2_sqrt = (1.0 - c.beta2.powi(t)).sqrt();
        for slot in &self.slots {
            let Some(g) = grads.get(slot.var.as_tensor()) else {
                continue;
            };
            if slot.master.is_none() && slot.var.device().is_cpu() {
                // f32 on CPU: three passes over memory, no temporaries (measured with `qforge bench train`).
                let (m, v, p) = (slot.m.as_tensor(), slot.v.as_tensor(), slot.var.as_tensor());
                // Weight gradients of `x @ Wᵀ` come back transposed.
                let g = &g.contiguous()?;
                m.inplace_op2(
                    g,
                    &MovingAverage {
                        beta: c.beta1,
                        square: false,
                    },
                )?;
                v.inplace_op2(
                    g,
                    &MovingAverage {
                        beta: c.beta2,
                        square: true,
                    },
                )?;
                p.inplace_op3(
                    m,
                    v,
                    &AdamWUpdate {
                        decay: if slot.decay { lr * c.weight_decay } else { 0.0 },
                        step: lr / bias1,
                        bias2_sqrt,
                        eps: c.eps,
                    },
                )?;
                continue;
            }
            let g = g.to_dtype(DType::F32)?;
            let param = slot.master.as_ref().unwrap_or(&slot.var);
            let mut p = param.as_tensor().clone();
            if slot.decay && c.weight_decay != 0.0 {
                p = (&p * (1.0 - lr * c.weight_decay))?;
            }
            let m = ((slot.m.as_tensor() * c.beta1)? + (&g * (1.0 - c.beta1))?)?;
            let v = ((slot.v.as_tensor() * c.beta2)? + (g.sqr()? * (1.0 - c.beta2))?)?;
            let denom = ((v.sqrt()? / bias2_sqrt)? + c.eps)?;
            let p = (p - ((&m / denom)? * (lr / bias1))?)?;
            slot.m.set(&m)?;
            slot.v.set(&v)?;
            param.set(&p)?;
            if slot.master.is_some() {
                slot.var.set(&p.to_dtype(slot.var.dtype())?)?;
            }
        }
        Ok(())
    }

    /// Writes moments, f32 master weights (if any) and the step count as safetensors.
    pub fn save_state(&self, path: &std::path::Path) -> Result<()> {
        let mut tensors = vec![(
            "step".to_string(),
            Tensor::new(&[self.step as f64], &candle_core::Device::Cpu)?,
        )];
        for s in &self.slots {
            tensors.push((format!("m.{}", s.name), s.m.as_tensor().clone()));
            tensors.push((format!("v.{}", s.name), s.v.as_tensor().clone()));
            if let Some(master) = &s.master {
                tensors.push((format!("master.{}", s.name), master.as_tensor().clone()));
            }
        }
        let map: std::collections::HashMap<String, Tensor> = tensors.into_iter().collect();
        let tmp = path.with_extension("safetensors.tmp");
        candle_core::safetensors::save(&map, &tmp)?;
        Ok(std::fs::rename(&tmp, path).with_path(path)?)
    }

    /// Restores what [`Self::save_state`] wrote; every variable must be present.
    pub fn load_state(&mut self, path: &std::path::Path) -> Result<()> {
        let map = candle_core::safetensors::load(path, &candle_core::Device::Cpu)?;
        let get = |k: &str| {
            map.get(k)
                .ok_or_else(|| TrainError::Invalid(format!("{}: no `{k}`", path.display())))
        };
        self.step = get("step")?.to_vec1::<f64>()?[0] as u64;
        for s in &self.slots {
            let dev = s.var.device();
            s.m.set(&get(&format!("m.{}", s.name))?.to_device(dev)?)?;
            s.v.set(&get(&format!("v.{}", s.name))?.to_device(dev)?)?;
            if let Some(master) = &s.master {
                master.set(&get(&format!("master.{}", s.name))?.to_device(dev)?)?;
            }
        }
        Ok(())
    }
}

const CHUNK: usize = 1 << 14;

fn f32_slice<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> candle_core::Result<&'a [f32]> {
    match (s, l.contiguous_offsets()) {
        (CpuStorage::F32(d), Some((a, b))) => Ok(&d[a..b]),
        _ => candle_core::bail!("in-place AdamW: {what} must be contiguous f32"),
    }
}

fn f32_slice_mut<'a>(
    s: &'a mut CpuStorage,
    l: &Layout,
    what: &str,
) -> candle_core::Result<&'a mut [f32]> {
    match (s, l.contiguous_offsets()) {
        (CpuStorage::F32(d), Some((a, b))) => Ok(&mut d[a..b]),
        _ => candle_core::bail!("in-place AdamW: {what} must be contiguous f32"),
    }
}

/// `m ← β·m + (1−β)·g` (or `g²` for the second moment), in place.
struct MovingAverage {
    beta: f64,
    square: bool,
}

impl InplaceOp2 for MovingAverage {
    fn name(&self) -> &'static str {
        "qforge-adamw-moment"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<()> {
        let g = f32_slice(s2, l2, "the gradient")?;
        let m = f32_slice_mut(s1, l1, "a moment")?;
        if m.len() != g.len() {
            candle_core::bail!("in-place AdamW: gradient of {} for {}", g.len(), m.len());
        }
        let (b, a) = (self.beta as f32, (1.0 - self.beta) as f32);
        let square = self.square;
        m.par_chunks_mut(CHUNK)
            .zip(g.par_chunks(CHUNK))
            .for_each(|(m, g)| {
                for (m, &g) in m.iter_mut().zip(g) {
                    *m = b * *m + a * if square { g * g } else { g };
                }
            });
        Ok(())
    }
}

/// `p ← p·(1 − lr·wd) − (lr/bias1) · m / (√v/√bias2 + ε)`, in place (torch's AdamW order).
struct AdamWUpdate {
    decay: f64,
    step: f64,
    bias2_sqrt: f64,
    eps: f64,
}

impl InplaceOp3 for AdamWUpdate {
    fn name(&self) -> &'static str {
        "qforge-adamw-update"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<()> {
        let m = f32_slice(s2, l2, "the first moment")?;
        let v = f32_slice(s3, l3, "the second moment")?;
        let p = f32_slice_mut(s1, l1, "the parameter")?;
        let keep = (1.0 - self.decay) as f32;
        let (step, inv_b2, eps) = (
            self.step as f32,
            (1.0 / self.bias2_sqrt) as f32,
            self.eps as f32,
        );
        p.par_chunks_mut(CHUNK)
            .zip(m.par_chunks(CHUNK).zip(v.par_chunks(CHUNK)))
            .for_each(|(p, (m, v))| {
                for ((p, &m), &v) in p.iter_mut().zip(m).zip(v) {
                    *p = *p * keep - step * m / (v.sqrt() * inv_b2 + eps);
                }
            });
        Ok(())
    }
}

/// Scales gradients in place so their global L2 norm is at most `max_norm`
/// (`torch.nn.utils.clip_grad_norm_`: coefficient `max_norm / (norm + 1e-6)`, capped at 1).
/// Returns the norm before clipping; a non-finite norm is an error naming it, so a step with
/// NaN gradients can be skipped instead of corrupting the weights.
pub fn clip_grad_norm(grads: &mut GradStore, vars: &[&Var], max_norm: f64) -> Result<f64> {
    let mut total = 0f64;
    for v in vars {
        if let Some(g) = grads.get(v.as_tensor()) {
            total += g
                .to_dtype(DType::F64)?
                .sqr()?
                .sum_all()?
                .to_scalar::<f64>()?;
        }
    }
    let norm = total.sqrt();
    if !norm.is_finite() {
        return Err(TrainError::NonFiniteGradient(norm));
    }
    let coef = max_norm / (norm + 1e-6);
    if coef < 1.0 {
        for v in vars {
            if let Some(g) = grads.remove(v.as_tensor()) {
                grads.insert(v.as_tensor(), (g * coef)?);
            }
        }
    }
    Ok(norm)
}

/// Sums gradients over micro-batches (each already divided by the number of micro-batches).
#[derive(Default)]
pub struct GradAccumulator {
    grads: Option<GradStore>,
}

impl GradAccumulator {
    pub fn add(&mut self, grads: GradStore, vars: &[&Var]) -> Result<()> {
        match &mut self.grads {
            None => self.grads = Some(grads),
            Some(acc) => {
                for v in vars {
                    if let Some(g) = grads.get(v.as_tensor()) {
                        let sum = match acc.remove(v.as_tensor()) {
                            Some(prev) => (prev + g)?,
                            None => g.clone(),
                        };
                        acc.insert(v.as_tensor(), sum);
                    }
                }
            }
        }
        Ok(())
    }

    /// The summed gradients; the accumulator starts over.
    pub fn take(&mut self) -> Option<GradStore> {
        self.grads.take()
    }
}

/// Learning-rate schedules of transformers (`get_*_schedule_with_warmup`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Schedule {
    Constant,
    /// Linear warm-up from 0, then constant (verl's `warmup_style: constant`).
    ConstantWithWarmup {
        warmup: u64,
    },
    /// Linear warm-up, then linear decay to 0 at `total` steps.
    Linear {
        warmup: u64,
        total: u64,
    },
    /// Linear warm-up, then half a cosine to 0 at `total` steps.
    Cosine {
        warmup: u64,
        total: u64,
    },
}

impl Schedule {
    /// A schedule by its recipe name: `constant`, `linear` or `cosine`.
    pub fn from_name(name: &str, warmup: u64, total: u64) -> Result<Self> {
        Ok(match name {
            "constant" => Schedule::Constant,
            "linear" => Schedule::Linear { warmup, total },
            "cosine" => Schedule::Cosine { warmup, total },
            other => {
                return Err(TrainError::Invalid(format!(
                    "unknown schedule `{other}` (constant, linear, cosine)"
                )));
            }
        })
    }

    /// The multiplier of the base learning rate at `step` (0-based).
    pub fn factor(&self, step: u64) -> f64 {
        let warm = |warmup: u64| (step < warmup).then(|| step as f64 / warmup.max(1) as f64);
        match *self {
            Schedule::Constant => 1.0,
            Schedule::ConstantWithWarmup { warmup } => warm(warmup).unwrap_or(1.0),
            Schedule::Linear { warmup, total } => warm(warmup).unwrap_or_else(|| {
                ((total as f64 - step as f64) / (total.saturating_sub(warmup)).max(1) as f64)
                    .max(0.0)
            }),
            Schedule::Cosine { warmup, total } => warm(warmup).unwrap_or_else(|| {
                let progress =
                    (step - warmup) as f64 / (total.saturating_sub(warmup)).max(1) as f64;
                (0.5 * (1.0 + (std::f64::consts::PI * progress).cos())).max(0.0)
            }),
        }
    }
}

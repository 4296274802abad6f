//! AdamW, clipping and schedules against torch/transformers (tools/fixtures/gen_optim.py).

use std::collections::HashMap;

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, Var};
use qforge_train::optim::{AdamW, AdamWConfig, GradAccumulator, Schedule, clip_grad_norm};

fn fixture() -> HashMap<String, Tensor> {
    let path = qforge_testkit::fixture("losses/optim.safetensors");
    candle_core::safetensors::load(path, &Device::Cpu).unwrap()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a.to_dtype(DType::F32).unwrap() - b.to_dtype(DType::F32).unwrap())
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar()
        .unwrap()
}

/// A GradStore holding `g` for each var, built through a real backward: d/dx Σ(x·g) = g.
fn grads_of(pairs: &[(&Var, &Tensor)]) -> GradStore {
    let mut total: Option<Tensor> = None;
    for (v, g) in pairs {
        let term = (v.as_tensor() * *g).unwrap().sum_all().unwrap();
        total = Some(match total {
            None => term,
            Some(t) => (t + term).unwrap(),
        });
    }
    total.unwrap().backward().unwrap()
}

#[test]
fn adamw_with_clipping_follows_torch_for_three_steps() {
    let f = fixture();
    let w = Var::from_tensor(&f["w0"]).unwrap();
    let b = Var::from_tensor(&f["b0"]).unwrap();
    let mut opt = AdamW::new(
        vec![
            ("layer.weight".into(), w.clone()),
            ("layer.norm.weight".into(), b.clone()),
        ],
        AdamWConfig {
            weight_decay: 0.1,
            ..AdamWConfig::default()
        },
    )
    .unwrap();
    for i in 0..3 {
        let mut grads = grads_of(&[
            (&w, &f[&format!("step{i}.gw")]),
            (&b, &f[&format!("step{i}.gb")]),
        ]);
        let norm = clip_grad_norm(&mut grads, &[&w, &b], 1.0).unwrap();
        let want_norm: f32 = f[&format!("step{i}.norm")].to_vec1::<f32>().unwrap()[0];
        assert!(
            (norm as f32 - want_norm).abs() < 1e-5,
            "step {i} norm {norm} vs {want_norm}"
        );
        opt.step(&grads, 1e-2).unwrap();
        assert!(
            max_diff(w.as_tensor(), &f[&format!("step{i}.w")]) < 1e-6,
            "step {i} w"
        );
        assert!(
            max_diff(b.as_tensor(), &f[&format!("step{i}.b")]) < 1e-6,
            "step {i} b (no decay)"
        );
    }
    assert_eq!(opt.steps_taken(), 3);
}

#[test]
fn bf16_parameters_keep_f32_master_weights() {
    let f = fixture();
    let w32 = Var::from_tensor(&f["w0"]).unwrap();
    let w16 = Var::from_tensor(&f["w0"].to_dtype(DType::BF16).unwrap()).unwrap();
    let mut a = AdamW::new(vec![("w".into(), w32.clone())], AdamWConfig::default()).unwrap();
    let mut b = AdamW::new(vec![("w".into(), w16.clone())], AdamWConfig::default()).unwrap();
    // Tiny steps vanish in bf16 unless a master copy accumulates them.
    let g = (f["step0.gw"].ones_like().unwrap() * 1.0).unwrap();
    for _ in 0..20 {
        a.step(&grads_of(&[(&w32, &g)]), 1e-5).unwrap();
        b.step(
            &grads_of(&[(&w16, &g.to_dtype(DType::BF16).unwrap())]),
            1e-5,
        )
        .unwrap();
    }
    assert_eq!(w16.dtype(), DType::BF16);
    assert!(max_diff(w16.as_tensor(), w32.as_tensor()) < 2e-2);
    assert!(
        max_diff(w16.as_tensor(), &f["w0"]) > 0.0,
        "updates reached the bf16 weights"
    );
}

#[test]
fn non_finite_gradients_are_refused() {
    let w = Var::from_tensor(&Tensor::new(&[1f32, 2.0], &Device::Cpu).unwrap()).unwrap();
    let g = Tensor::new(&[f32::NAN, 1.0], &Device::Cpu).unwrap();
    let mut grads = grads_of(&[(&w, &g)]);
    assert!(clip_grad_norm(&mut grads, &[&w], 1.0).is_err());
}

#[test]
fn accumulation_sums_micro_batches() {
    let w = Var::from_tensor(&Tensor::new(&[1f32, 2.0], &Device::Cpu).unwrap()).unwrap();
    let mut acc = GradAccumulator::default();
    for g in [[0.5f32, 1.0], [0.25, -1.0]] {
        acc.add(
            grads_of(&[(&w, &Tensor::new(&g, &Device::Cpu).unwrap())]),
            &[&w],
        )
        .unwrap();
    }
    let total = acc.take().unwrap();
    assert_eq!(
        total.get(w.as_tensor()).unwrap().to_vec1::<f32>().unwrap(),
        vec![0.75, 0.0]
    );
    assert!(acc.take().is_none());
}

#[test]
fn schedules_match_transformers() {
    let f = fixture();
    for (name, schedule) in [
        (
            "cosine",
            Schedule::Cosine {
                warmup: 10,
                total: 100,
            },
        ),
        (
            "linear",
            Schedule::Linear {
                warmup: 10,
                total: 100,
            },
        ),
    ] {
        let want: Vec<f64> = f[&format!("sched.{name}")].to_vec1().unwrap();
        for (step, w) in want.iter().enumerate() {
            let got = schedule.factor(step as u64);
            assert!((got - w).abs() < 1e-9, "{name} step {step}: {got} vs {w}");
        }
    }
    assert_eq!(Schedule::Constant.factor(12345), 1.0);
}

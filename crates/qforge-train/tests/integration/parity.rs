//! Loss, advantage and KL parity (values and gradients) against tools/fixtures/gen_losses.py,
//! which writes the TRL / verl formulas in torch (float64). Rust runs in f32.

use std::collections::HashMap;
use std::sync::OnceLock;

use candle_core::{DType, Device, Tensor, Var};
use qforge_train::losses::{self, DpoKind, PreferenceLogps};
use qforge_train::policy::{self, AdvantageNorm, Aggregation, ClipConfig, KlEstimator};

fn fixtures() -> &'static HashMap<String, Tensor> {
    static F: OnceLock<HashMap<String, Tensor>> = OnceLock::new();
    F.get_or_init(|| {
        let path = qforge_testkit::fixture("losses/losses.safetensors");
        candle_core::safetensors::load(path, &Device::Cpu).unwrap()
    })
}

fn get(name: &str) -> Tensor {
    fixtures()
        .get(name)
        .unwrap_or_else(|| panic!("fixture {name} missing"))
        .to_dtype(DType::F32)
        .unwrap()
}

fn var(name: &str) -> Var {
    Var::from_tensor(&get(name)).unwrap()
}

fn close(actual: &Tensor, expected: &Tensor, atol: f32, rtol: f32, what: &str) {
    let (a, e) = (
        actual.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        expected.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
    );
    assert_eq!(a.len(), e.len(), "{what}: length");
    for (i, (x, y)) in a.iter().zip(&e).enumerate() {
        assert!(
            (x - y).abs() <= atol + rtol * y.abs(),
            "{what}[{i}]: {x} vs {y}"
        );
    }
}

fn grad(grads: &candle_core::backprop::GradStore, v: &Var) -> Tensor {
    grads
        .get(v)
        .cloned()
        .unwrap_or_else(|| v.zeros_like().unwrap())
}

#[test]
fn completion_logps_entropy_and_their_gradients() {
    let ids = get("lp.ids").to_dtype(DType::U32).unwrap();
    let mask = get("lp.completion");
    for (name, tau) in [("t1", 1.0), ("t07", 0.7)] {
        let logits = var("lp.logits");
        let lp = losses::completion_logps(logits.as_tensor(), &ids, &mask, tau).unwrap();
        let (_, t, _) = logits.dims3().unwrap();
        let full = losses::selective_log_softmax(
            &logits.narrow(1, 0, t - 1).unwrap(),
            &ids.narrow(1, 1, t - 1).unwrap(),
            tau,
        )
        .unwrap();
        close(
            &full,
            &get(&format!("lp.{name}.per_token")),
            1e-5,
            1e-5,
            "per-token",
        );
        close(
            &lp.sum,
            &get(&format!("lp.{name}.seq_sum")),
            1e-4,
            1e-5,
            "sum",
        );
        close(
            &lp.mean,
            &get(&format!("lp.{name}.seq_mean")),
            1e-5,
            1e-5,
            "mean",
        );
        let entropy =
            losses::entropy_from_logits(&logits.narrow(1, 0, t - 1).unwrap(), tau).unwrap();
        close(
            &entropy,
            &get(&format!("lp.{name}.entropy")),
            1e-5,
            1e-5,
            "entropy",
        );
        let objective = ((lp.sum.sum_all().unwrap() + (lp.mean.sum_all().unwrap() * 0.5).unwrap())
            .unwrap()
            + ((entropy * &lp.mask).unwrap().sum_all().unwrap() * 0.1).unwrap())
        .unwrap();
        let grads = objective.backward().unwrap();
        close(
            &grad(&grads, &logits),
            &get(&format!("lp.{name}.grad_logits")),
            1e-5,
            1e-4,
            "d/dlogits",
        );
    }
}

#[test]
fn sft_loss_and_gradient() {
    let logits = var("lp.logits");
    let loss = losses::sft_loss(
        logits.as_tensor(),
        &get("lp.ids").to_dtype(DType::U32).unwrap(),
        &get("lp.completion"),
    )
    .unwrap();
    close(
        &loss.reshape(1).unwrap(),
        &get("sft.loss"),
        1e-5,
        1e-6,
        "sft",
    );
    close(
        &grad(&loss.backward().unwrap(), &logits),
        &get("sft.grad_logits"),
        1e-6,
        1e-4,
        "sft grad",
    );
}

#[test]
fn dpo_loss_types_match_trl_in_value_and_gradient() {
    let (rw, rl, lw, ll) = (
        get("dpo.rw"),
        get("dpo.rl"),
        get("dpo.len_w"),
        get("dpo.len_l"),
    );
    for (kind, tag) in [
        (
            DpoKind::Sigmoid {
                label_smoothing: 0.0,
            },
            "sigmoid.e0",
        ),
        (
            DpoKind::Sigmoid {
                label_smoothing: 0.1,
            },
            "sigmoid.e1",
        ),
        (DpoKind::Hinge, "hinge.e0"),
        (DpoKind::Ipo, "ipo.e0"),
        (
            DpoKind::Robust {
                label_smoothing: 0.1,
            },
            "robust.e1",
        ),
    ] {
        for beta in [0.01, 0.1, 0.5] {
            let (w, l) = (var("dpo.pw"), var("dpo.pl"));
            let out = losses::dpo_loss(
                &PreferenceLogps {
                    policy_chosen: w.as_tensor(),
                    policy_rejected: l.as_tensor(),
                    reference_chosen: &rw,
                    reference_rejected: &rl,
                    chosen_len: Some(&lw),
                    rejected_len: Some(&ll),
                },
                kind,
                beta,
            )
            .unwrap();
            let name = format!("dpo.{tag}.b{beta}");
            close(
                &out.loss.reshape(1).unwrap(),
                &get(&format!("{name}.loss")),
                1e-5,
                1e-5,
                &name,
            );
            let grads = out.loss.backward().unwrap();
            close(
                &grad(&grads, &w),
                &get(&format!("{name}.grad_w")),
                1e-6,
                1e-4,
                &format!("{name} d/dw"),
            );
            close(
                &grad(&grads, &l),
                &get(&format!("{name}.grad_l")),
                1e-6,
                1e-4,
                &format!("{name} d/dl"),
            );
        }
    }
}

#[test]
fn dpo_starts_at_ln2_when_policy_equals_reference() {
    let x = get("dpo.pw");
    let y = get("dpo.pl");
    let out = losses::dpo_loss(
        &PreferenceLogps {
            policy_chosen: &x,
            policy_rejected: &y,
            reference_chosen: &x,
            reference_rejected: &y,
            chosen_len: None,
            rejected_len: None,
        },
        DpoKind::Sigmoid {
            label_smoothing: 0.0,
        },
        0.1,
    )
    .unwrap();
    close(
        &out.loss.reshape(1).unwrap(),
        &get("dpo.ln2"),
        1e-6,
        0.0,
        "ln 2",
    );
    assert_eq!(out.accuracy().unwrap(), 0.0, "ties are not wins");
    let err = losses::dpo_loss(
        &PreferenceLogps {
            policy_chosen: &x,
            policy_rejected: &y,
            reference_chosen: &x,
            reference_rejected: &y,
            chosen_len: None,
            rejected_len: None,
        },
        DpoKind::Ipo,
        0.1,
    );
    assert!(err.is_err(), "IPO without lengths is an error");
}

#[test]
fn simpo_matches_cpo_form() {
    let nll = get("simpo.nll_w");
    for eps in [0.0, 0.1] {
        for alpha in [0.0, 1.0] {
            let (w, l) = (var("simpo.aw"), var("simpo.al"));
            let loss = (losses::simpo_loss(w.as_tensor(), l.as_tensor(), 2.5, 1.375, eps).unwrap()
                + (nll.mean_all().unwrap() * alpha).unwrap())
            .unwrap();
            let name = format!("simpo.e{}.a{}", (eps * 10.0) as i32, alpha as i32);
            close(
                &loss.reshape(1).unwrap(),
                &get(&format!("{name}.loss")),
                1e-5,
                1e-5,
                &name,
            );
            let grads = loss.backward().unwrap();
            close(
                &grad(&grads, &w),
                &get(&format!("{name}.grad_w")),
                1e-6,
                1e-4,
                &name,
            );
            close(
                &grad(&grads, &l),
                &get(&format!("{name}.grad_l")),
                1e-6,
                1e-4,
                &name,
            );
        }
    }
}

#[test]
fn orpo_odds_ratio_is_accurate_near_zero_and_ln2() {
    let (w, l) = (var("orpo.aw"), var("orpo.al"));
    close(
        &losses::log1mexp(w.as_tensor()).unwrap(),
        &get("orpo.log1mexp_w"),
        1e-5,
        1e-5,
        "log1mexp",
    );
    let loss = (losses::orpo_odds_ratio_loss(w.as_tensor(), l.as_tensor(), 0.1).unwrap()
        + get("orpo.nll").squeeze(0).unwrap())
    .unwrap();
    close(
        &loss.reshape(1).unwrap(),
        &get("orpo.loss"),
        1e-5,
        1e-5,
        "orpo",
    );
    let grads = loss.backward().unwrap();
    // Near a = 0 the gradient of log1mexp is 1/a-sized; f32 keeps ~1e-3 relative there.
    close(
        &grad(&grads, &w),
        &get("orpo.grad_w"),
        1e-4,
        2e-3,
        "orpo d/dw",
    );
    close(
        &grad(&grads, &l),
        &get("orpo.grad_l"),
        1e-4,
        2e-3,
        "orpo d/dl",
    );
    let g = grad(&grads, &w)
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    assert!(g.iter().all(|x| x.is_finite()));
}

#[test]
fn bradley_terry_with_margin_and_centering() {
    let margin = get("bt.margin");
    for center in [0.0, 0.01] {
        let (w, l) = (var("bt.rw"), var("bt.rl"));
        let loss = losses::bradley_terry_loss(w.as_tensor(), l.as_tensor(), Some(&margin), center)
            .unwrap();
        let name = format!("bt.c{center:?}");
        close(
            &loss.reshape(1).unwrap(),
            &get(&format!("{name}.loss")),
            1e-6,
            1e-5,
            &name,
        );
        let grads = loss.backward().unwrap();
        close(
            &grad(&grads, &w),
            &get(&format!("{name}.grad_w")),
            1e-6,
            1e-4,
            &name,
        );
        close(
            &grad(&grads, &l),
            &get(&format!("{name}.grad_l")),
            1e-6,
            1e-4,
            &name,
        );
    }
}

#[test]
fn group_advantages_match_verl_and_trl() {
    let rewards: Vec<f64> = fixtures()["adv.rewards"].to_vec1::<f64>().unwrap();
    for (norm, name) in [
        (AdvantageNorm::GroupStd { eps: 1e-6 }, "adv.verl_grpo"),
        (AdvantageNorm::None, "adv.dr_grpo"),
        (AdvantageNorm::GroupStd { eps: 1e-4 }, "adv.trl_group"),
        (AdvantageNorm::BatchStd { eps: 1e-4 }, "adv.trl_batch"),
    ] {
        let got = policy::group_advantages(&rewards, 4, norm).unwrap();
        let want: Vec<f64> = fixtures()[name].to_vec1::<f64>().unwrap();
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!((g - w).abs() < 1e-9, "{name}[{i}]: {g} vs {w}");
        }
    }
    // The equal-reward group gets zero advantage.
    assert!(
        policy::group_advantages(&rewards, 4, AdvantageNorm::GroupStd { eps: 1e-6 }).unwrap()[4..8]
            .iter()
            .all(|a| *a == 0.0)
    );
    assert!(policy::group_advantages(&rewards, 5, AdvantageNorm::None).is_err());
    assert!(policy::group_advantages(&[1.0, f64::NAN], 2, AdvantageNorm::None).is_err());
}

#[test]
fn clipped_surrogate_and_aggregations_match_verl() {
    let (old, adv, mask) = (get("pg.old"), get("pg.adv"), get("pg.mask"));
    let logp = var("pg.logp");
    let out = policy::clipped_policy_loss(
        logp.as_tensor(),
        &old,
        &adv,
        &mask,
        ClipConfig::verl(0.2, 0.28),
    )
    .unwrap();
    close(
        &out.per_token,
        &get("pg.verl.mat"),
        1e-5,
        1e-5,
        "verl loss matrix",
    );
    close(
        &Tensor::new(&[out.clip_fraction], &Device::Cpu).unwrap(),
        &get("pg.verl.clipfrac"),
        1e-6,
        0.0,
        "clipfrac",
    );
    close(
        &Tensor::new(&[out.clip_fraction_lower], &Device::Cpu).unwrap(),
        &get("pg.verl.clipfrac_lower"),
        1e-6,
        0.0,
        "clipfrac_lower",
    );
    close(
        &Tensor::new(&[out.approx_kl], &Device::Cpu).unwrap(),
        &get("pg.verl.ppo_kl"),
        1e-6,
        1e-5,
        "ppo_kl",
    );
    assert!(
        out.clip_fraction_lower > 0.0,
        "the fixture exercises dual-clip"
    );
    for (mode, name) in [
        (Aggregation::TokenMean, "token_mean"),
        (Aggregation::SeqMeanTokenMean, "seq_mean_token_mean"),
        (Aggregation::SeqMeanTokenSum, "seq_mean_token_sum"),
        (
            Aggregation::SeqMeanTokenSumNorm { constant: 7.0 },
            "seq_mean_token_sum_norm",
        ),
    ] {
        let logp = var("pg.logp");
        let out = policy::clipped_policy_loss(
            logp.as_tensor(),
            &old,
            &adv,
            &mask,
            ClipConfig::verl(0.2, 0.28),
        )
        .unwrap();
        let loss = policy::aggregate(&out.per_token, &mask, mode).unwrap();
        close(
            &loss.reshape(1).unwrap(),
            &get(&format!("pg.verl.{name}.loss")),
            1e-5,
            1e-5,
            name,
        );
        close(
            &grad(&loss.backward().unwrap(), &logp),
            &get(&format!("pg.verl.{name}.grad")),
            1e-6,
            1e-4,
            name,
        );
    }
}

#[test]
fn trl_surrogate_has_no_dual_clip() {
    let logp = var("pg.logp");
    let (old, adv, mask) = (get("pg.old"), get("pg.adv"), get("pg.mask"));
    let out = policy::clipped_policy_loss(
        logp.as_tensor(),
        &old,
        &adv,
        &mask,
        ClipConfig::trl(0.2, 0.28),
    )
    .unwrap();
    close(
        &out.per_token,
        &get("pg.trl.mat"),
        1e-5,
        1e-5,
        "trl loss matrix",
    );
    let loss = policy::aggregate(&out.per_token, &mask, Aggregation::TokenMean).unwrap();
    close(
        &grad(&loss.backward().unwrap(), &logp),
        &get("pg.trl.token_mean.grad"),
        1e-6,
        1e-4,
        "trl grad",
    );
}

#[test]
fn kl_estimators_and_straight_through_gradients() {
    let (refp, mask) = (get("kl.ref"), get("pg.mask"));
    for (kind, name) in [
        (KlEstimator::K1, "k1"),
        (KlEstimator::Abs, "abs"),
        (KlEstimator::K2, "k2"),
        (KlEstimator::K3, "k3"),
        (KlEstimator::K1StraightThrough, "k1+"),
        (KlEstimator::K3StraightThrough, "k3+"),
    ] {
        let logp = var("pg.logp");
        let kl = policy::kl_penalty(logp.as_tensor(), &refp, kind).unwrap();
        close(&kl, &get(&format!("kl.{name}.value")), 1e-5, 1e-5, name);
        let grads = (kl * &mask).unwrap().sum_all().unwrap().backward().unwrap();
        close(
            &grad(&grads, &logp),
            &get(&format!("kl.{name}.grad")),
            1e-5,
            1e-5,
            &format!("{name} grad"),
        );
    }
}

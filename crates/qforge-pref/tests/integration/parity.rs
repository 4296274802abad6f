//! SoLoPO's loss and gradients against tools/fixtures/gen_pref.py (a torch implementation
//! written from the spec's formulas), for DPO, SimPO and ORPO, both penalties, α 0 and 3.

use std::collections::HashMap;

use candle_core::{Device, Tensor, Var};
use qforge_pref::{Penalty, SoloAlgorithm, SoloPo};
use qforge_train::pairwise::{PairLogps, PairObjective, SeqLogps};

fn fixture() -> HashMap<String, Tensor> {
    let path = qforge_testkit::fixture("pref/solopo.safetensors");
    candle_core::safetensors::load(path, &Device::Cpu).unwrap()
}

fn close(a: &Tensor, b: &Tensor, tol: f32, what: &str) {
    let (a, b) = (a.to_vec1::<f32>().unwrap(), b.to_vec1::<f32>().unwrap());
    for (x, y) in a.iter().zip(&b) {
        assert!(
            (x - y).abs() <= tol * (1.0 + y.abs()),
            "{what}: {a:?} vs {b:?}"
        );
    }
}

#[test]
fn solopo_matches_the_reference_in_value_and_gradient() {
    let f = fixture();
    let algorithms = [
        ("dpo", SoloAlgorithm::Dpo { beta: 0.1 }),
        (
            "simpo",
            SoloAlgorithm::Simpo {
                beta: 2.5,
                gamma: 1.375,
            },
        ),
        ("orpo", SoloAlgorithm::Orpo { lambda: 0.1 }),
    ];
    let mut cases = 0;
    for (name, algorithm) in algorithms {
        for (pname, penalty) in [("abs", Penalty::Abs), ("softplus3", Penalty::Softplus3)] {
            for alpha in [0.0, 3.0] {
                let case = format!("{name}.{pname}.{alpha}");
                let var = |k: &str| Var::from_tensor(&f[k]).unwrap();
                let vars: HashMap<String, Var> = ["w", "l", "long"]
                    .iter()
                    .flat_map(|s| [format!("sum_{s}"), format!("mean_{s}")])
                    .map(|k| (k.clone(), var(&k)))
                    .collect();
                let side = |s: &str| SeqLogps {
                    sum: vars[&format!("sum_{s}")].as_tensor().clone(),
                    mean: vars[&format!("mean_{s}")].as_tensor().clone(),
                    len: Tensor::ones(4, candle_core::DType::F32, &Device::Cpu).unwrap(),
                    reference: Some(f[&format!("ref_{s}")].clone()),
                };
                let objective = SoloPo {
                    algorithm,
                    alpha,
                    penalty,
                    anchor_short: false,
                };
                let out = objective
                    .loss(&PairLogps {
                        chosen: side("w"),
                        rejected: side("l"),
                        long_chosen: Some(side("long")),
                        chosen_nll: Tensor::new(0f32, &Device::Cpu).unwrap(),
                    })
                    .unwrap();
                close(
                    &out.loss.reshape(1).unwrap(),
                    &f[&format!("{case}.loss")],
                    1e-5,
                    &format!("{case} loss"),
                );
                let grads = out.loss.backward().unwrap();
                for (k, v) in &vars {
                    let want = &f[&format!("{case}.grad.{k}")];
                    let got = grads
                        .get(v.as_tensor())
                        .cloned()
                        .unwrap_or_else(|| want.zeros_like().unwrap());
                    close(&got, want, 1e-4, &format!("{case} d/d{k}"));
                }
                cases += 1;
            }
        }
    }
    assert_eq!(cases, 12);
}

#[test]
fn alpha_zero_needs_no_long_context_and_bad_constants_are_refused() {
    let s = SoloPo {
        algorithm: SoloAlgorithm::Dpo { beta: 0.1 },
        alpha: 0.0,
        penalty: Penalty::Abs,
        anchor_short: false,
    };
    assert!(!s.needs_long_context() && s.needs_reference());
    let simpo = SoloPo {
        algorithm: SoloAlgorithm::Simpo {
            beta: 2.5,
            gamma: 1.0,
        },
        alpha: 1.0,
        penalty: Penalty::Abs,
        anchor_short: false,
    };
    assert!(simpo.needs_long_context() && !simpo.needs_reference());
    let t = Tensor::new(&[-1f32, -2.0], &Device::Cpu).unwrap();
    let side = SeqLogps {
        sum: t.clone(),
        mean: t.clone(),
        len: t.clone(),
        reference: None,
    };
    let lp = PairLogps {
        chosen: side.clone(),
        rejected: side.clone(),
        long_chosen: None,
        chosen_nll: Tensor::new(0f32, &Device::Cpu).unwrap(),
    };
    // SoLo-SimPO with alpha > 0 and no long context, and a negative beta: clear errors.
    assert!(
        simpo
            .loss(&lp)
            .unwrap_err()
            .to_string()
            .contains("long-context")
    );
    let bad = SoloPo {
        algorithm: SoloAlgorithm::Simpo {
            beta: -1.0,
            gamma: 1.0,
        },
        ..simpo
    };
    assert!(bad.loss(&lp).unwrap_err().to_string().contains("beta"));
}

#[test]
fn anchoring_the_short_reward_sends_solo_ra_gradient_to_the_long_side_only() {
    let f = fixture();
    let grads = |alpha: f64, anchor_short: bool| {
        let vars: HashMap<String, Var> = ["sum_w", "sum_l", "sum_long"]
            .iter()
            .map(|k| (k.to_string(), Var::from_tensor(&f[*k]).unwrap()))
            .collect();
        let side = |s: &str| SeqLogps {
            sum: vars[&format!("sum_{s}")].as_tensor().clone(),
            mean: f[&format!("mean_{s}")].clone(),
            len: Tensor::ones(4, candle_core::DType::F32, &Device::Cpu).unwrap(),
            reference: Some(f[&format!("ref_{s}")].clone()),
        };
        let objective = SoloPo {
            algorithm: SoloAlgorithm::Dpo { beta: 0.1 },
            alpha,
            penalty: Penalty::Abs,
            anchor_short,
        };
        let loss = objective
            .loss(&PairLogps {
                chosen: side("w"),
                rejected: side("l"),
                long_chosen: Some(side("long")),
                chosen_nll: Tensor::new(0f32, &Device::Cpu).unwrap(),
            })
            .unwrap()
            .loss;
        let g = loss.backward().unwrap();
        let get = |k: &str| {
            g.get(vars[k].as_tensor())
                .map_or(vec![0.0; 4], |t| t.to_vec1::<f32>().unwrap())
        };
        (get("sum_w"), get("sum_long"))
    };
    let (plain_short, _) = grads(0.0, false);
    let (anchored_short, anchored_long) = grads(3.0, true);
    let (free_short, _) = grads(3.0, false);
    assert_eq!(
        anchored_short, plain_short,
        "no SoLo-RA gradient reaches the short side"
    );
    assert_ne!(free_short, plain_short);
    assert!(anchored_long.iter().all(|g| g.abs() > 0.0));
}

//! The CPRS training loss against torch (tools/fixtures/gen_cprs_loss.py): the unshifted critic
//! cross-entropy with vocabulary weights, the BIOE cross-entropy with class weights and the
//! released focal loss (mean over every position, ignored ones included), values and gradients.

use candle_core::{Device, Tensor, Var};
use qforge_compress::loss::{BioLoss, LossConfig, cprs_loss};
use serde_json::Value;

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

fn ints(v: &Value) -> Vec<i64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_i64().unwrap())
        .collect()
}

fn assert_close(name: &str, got: &[f32], want: &[f32], tol: f32) {
    assert_eq!(got.len(), want.len(), "{name}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= tol * (1.0 + w.abs()),
            "{name}[{i}]: {g} vs {w}"
        );
    }
}

#[test]
fn cprs_loss_matches_torch_in_value_and_gradient() {
    let fixture: Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../tools/fixtures/cprs/loss.json"
        ))
        .unwrap(),
    )
    .unwrap();
    let device = Device::Cpu;
    for case in fixture["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let shape: Vec<usize> = ints(&case["shape"]).iter().map(|&x| x as usize).collect();
        let (b, t, v) = (shape[0], shape[1], shape[2]);
        let lm = Var::from_tensor(
            &Tensor::from_vec(floats(&case["lm_logits"]), (b, t, v), &device).unwrap(),
        )
        .unwrap();
        let bio = Var::from_tensor(
            &Tensor::from_vec(floats(&case["bio_logits"]), (b, t, 4), &device).unwrap(),
        )
        .unwrap();
        let config = LossConfig {
            bio: match case["bio_loss_type"].as_str().unwrap() {
                "ce" => BioLoss::CrossEntropy,
                _ => BioLoss::Focal { gamma: 2.0 },
            },
            bio_class_weights: case["bio_class_weights"]
                .as_array()
                .map(|_| floats(&case["bio_class_weights"]).try_into().unwrap()),
            lm_vocab_weights: case["lm_vocab_weights"]
                .as_array()
                .map(|_| floats(&case["lm_vocab_weights"])),
            ignore_lm_head: case["ignore_lm_head"].as_bool().unwrap(),
        };
        let parts = cprs_loss(
            Some(lm.as_tensor()),
            bio.as_tensor(),
            &ints(&case["lm_labels"]),
            &ints(&case["bio_labels"]),
            &config,
        )
        .unwrap();
        let total = parts.total.to_scalar::<f32>().unwrap();
        assert_close(
            name,
            &[total],
            &[case["loss"].as_f64().unwrap() as f32],
            1e-5,
        );
        assert_close(
            name,
            &[parts.bio.to_scalar::<f32>().unwrap()],
            &[case["bio_loss"].as_f64().unwrap() as f32],
            1e-5,
        );
        let grads = parts.total.backward().unwrap();
        let grad_of = |v: &Var| -> Vec<f32> {
            grads
                .get(v.as_tensor())
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap()
        };
        let bio_grad = grad_of(&bio);
        assert_close(
            &format!("{name} bio grad"),
            &bio_grad,
            &floats(&case["bio_grad"]),
            1e-4,
        );
        match case["lm_grad"].as_array() {
            None => assert!(parts.lm.is_none(), "{name}: no critic loss"),
            Some(_) => {
                let lm_grad = grad_of(&lm);
                assert_close(
                    &format!("{name} lm grad"),
                    &lm_grad,
                    &floats(&case["lm_grad"]),
                    1e-4,
                );
            }
        }
    }
}

//! The compressor's hybrid forward against transformers (`tools/fixtures/gen_cprs_model.py`:
//! stock Qwen2 decoder layers run with per-layer masks): BIOE logits, LM-critic logits and hidden
//! states of a right-padded batch of windows, hybrid and all-causal; batches equal single
//! windows.

use candle_core::{D, DType, Device, IndexOp, Tensor};
use qforge_compress::model::Compressor;
use std::collections::HashMap;

fn dir() -> std::path::PathBuf {
    qforge_testkit::fixture("cprs/tiny_compressor")
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(D::Minus1)
        .unwrap()
        .to_scalar()
        .unwrap()
}

fn reference() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(dir().join("reference.safetensors"), &Device::Cpu).unwrap()
}

fn windows() -> Vec<Vec<u32>> {
    let store = reference();
    let ids: Vec<Vec<i64>> = store["ids"].to_vec2().unwrap();
    let valid: Vec<Vec<u8>> = store["valid"].to_vec2().unwrap();
    ids.iter()
        .zip(&valid)
        .map(|(row, v)| {
            row.iter()
                .zip(v)
                .filter(|(_, v)| **v == 1)
                .map(|(i, _)| *i as u32)
                .collect()
        })
        .collect()
}

#[test]
fn the_hybrid_forward_matches_transformers_with_the_mask_change() {
    let mut c = Compressor::load(&dir(), DType::F32, &Device::Cpu).unwrap();
    assert_eq!(c.bidirectional_start, 2);
    let store = reference();
    let w = windows();
    let refs: Vec<&[u32]> = w.iter().map(Vec::as_slice).collect();
    for mode in ["hybrid", "causal"] {
        if mode == "causal" {
            c.model.set_bidirectional_top_layers(0).unwrap();
        }
        let (cls, hidden) = c.forward(&refs).unwrap();
        let lm = c.model.logits(&hidden).unwrap();
        for (i, window) in w.iter().enumerate() {
            let n = window.len();
            let real = |t: &Tensor| t.i(i).unwrap().narrow(0, 0, n).unwrap();
            for (name, ours) in [
                ("hidden", &hidden),
                ("cls_logits", &cls),
                ("lm_logits", &lm),
            ] {
                let reference = &store[&format!("{mode}.{name}")];
                let d = max_diff(&real(ours), &real(reference));
                assert!(d < 1e-4, "{mode} {name} window {i}: max diff {d}");
            }
        }
    }
}

#[test]
fn windows_batched_or_alone_give_the_same_tags() {
    let c = Compressor::load(&dir(), DType::F32, &Device::Cpu).unwrap();
    let w = windows();
    let refs: Vec<&[u32]> = w.iter().map(Vec::as_slice).collect();
    let together = c.tags(&refs, 1).unwrap();
    for (i, window) in w.iter().enumerate() {
        assert_eq!(
            c.tags(&[window.as_slice()], 1).unwrap()[0],
            together[i],
            "window {i}"
        );
        assert_eq!(together[i].len(), window.len() - 1);
    }
}

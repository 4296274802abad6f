//! LoRA adapters: training through them, PEFT layout round trip, merging.

use std::path::PathBuf;

use crate::util::max_abs_diff;
use candle_core::{DType, Device, Tensor};
use qforge_model::{Batch, LoraConfig, Model, add_lora, load_adapter, merge_lora, save_adapter};

fn fixture() -> PathBuf {
    qforge_testkit::fixture("model/qwen2_bias_linear")
}

fn load() -> Model {
    Model::load(&fixture(), DType::F32, &Device::Cpu, &[]).unwrap()
}

fn config() -> LoraConfig {
    LoraConfig {
        r: 4,
        alpha: 8.0,
        target_modules: vec!["q_proj".into(), "v_proj".into(), "down_proj".into()],
    }
}

fn batch() -> Batch {
    Batch::right_padded(&[&[5, 9, 17, 33, 2, 8], &[40, 41, 42]], 0, &Device::Cpu).unwrap()
}

fn loss(model: &Model) -> Tensor {
    let b = batch();
    model
        .next_token_logprobs(&b)
        .unwrap()
        .sum_all()
        .unwrap()
        .neg()
        .unwrap()
}

#[test]
fn adapters_train_while_the_base_stays_frozen_and_round_trip_through_peft_files() {
    let base = load();
    let original = base.named_tensors();
    let mut model = base.clone();
    let vars = add_lora(&mut model, &config(), 1).unwrap();
    assert_eq!(
        vars.len(),
        2 * 3 * 2,
        "A and B for 3 projections in 2 layers"
    );
    assert!(
        vars[0]
            .0
            .starts_with("base_model.model.model.layers.0.self_attn.q_proj.lora_A"),
        "{}",
        vars[0].0
    );
    // B = 0: the adapted model starts identical to the base.
    let before = loss(&model).to_scalar::<f32>().unwrap();
    assert!((before - loss(&base).to_scalar::<f32>().unwrap()).abs() < 1e-5);
    for _ in 0..20 {
        let grads = loss(&model).backward().unwrap();
        for (name, v) in &vars {
            let g = grads
                .get(v)
                .unwrap_or_else(|| panic!("{name} got no gradient"));
            v.set(&(v.as_tensor() - (g * 0.05).unwrap()).unwrap())
                .unwrap();
        }
    }
    let after = loss(&model).to_scalar::<f32>().unwrap();
    assert!(
        after < before * 0.9,
        "LoRA training lowers the loss: {before} -> {after}"
    );
    for ((name, t0), (_, t1)) in original.iter().zip(model.named_tensors()) {
        assert_eq!(max_abs_diff(t0, &t1), 0.0, "base weight {name} changed");
    }

    let dir = tempfile::tempdir().unwrap();
    save_adapter(&model, &config(), dir.path(), "qwen2_bias_linear").unwrap();
    let mut reloaded = load();
    assert_eq!(load_adapter(&mut reloaded, dir.path()).unwrap(), config());
    let b = batch();
    let want = model.logits(&model.forward(&b, None).unwrap()).unwrap();
    let got = reloaded
        .logits(&reloaded.forward(&b, None).unwrap())
        .unwrap();
    assert!(max_abs_diff(&want, &got) < 1e-5);

    merge_lora(&mut reloaded).unwrap();
    assert!(qforge_model::lora::lora_tensors(&reloaded).is_empty());
    let merged = reloaded
        .logits(&reloaded.forward(&b, None).unwrap())
        .unwrap();
    assert!(max_abs_diff(&want, &merged) < 1e-4, "merged = adapted");
    // A merged model saves as a plain checkpoint.
    reloaded.save_pretrained(dir.path(), usize::MAX).unwrap();
    Model::load(dir.path(), DType::F32, &Device::Cpu, &[]).unwrap();
}

#[test]
fn bad_adapters_are_clear_errors() {
    let mut model = load();
    let bad = LoraConfig {
        target_modules: vec!["qkv".into()],
        ..config()
    };
    assert!(
        add_lora(&mut model, &bad, 0)
            .unwrap_err()
            .to_string()
            .contains("qkv")
    );
    let dir = tempfile::tempdir().unwrap();
    let mut adapted = load();
    add_lora(&mut adapted, &config(), 0).unwrap();
    save_adapter(&adapted, &config(), dir.path(), "x").unwrap();
    // Rank in the config disagrees with the tensors.
    let path = dir.path().join("adapter_config.json");
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("\"r\": 4", "\"r\": 8");
    std::fs::write(&path, text).unwrap();
    let err = load_adapter(&mut load(), dir.path())
        .unwrap_err()
        .to_string();
    assert!(err.contains("lora_A") && err.contains("[8,"), "{err}");
}

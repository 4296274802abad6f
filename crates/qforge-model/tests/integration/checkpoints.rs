//! Loading and saving checkpoints, and the errors bad ones produce.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use qforge_model::{Batch, Model, ModelError};

fn fixture(name: &str) -> PathBuf {
    qforge_testkit::fixture("model").join(name)
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

fn logits(model: &Model) -> Tensor {
    let batch = Batch::left_padded(&[&[1, 2, 3, 4, 5]], &[0], 0, &Device::Cpu).unwrap();
    model.logits(&model.forward(&batch, None).unwrap()).unwrap()
}

fn load(dir: &Path) -> Result<Model, ModelError> {
    Model::load(dir, DType::F32, &Device::Cpu, &[])
}

#[test]
fn save_then_load_round_trips_single_and_sharded() {
    for variant in ["qwen3_tied_gqa", "qwen2_bias_linear"] {
        let model = load(&fixture(variant)).unwrap();
        let expected = logits(&model);
        for max_shard in [usize::MAX, 64 * 1024] {
            let tmp = tempfile::tempdir().unwrap();
            model.save_pretrained(tmp.path(), max_shard).unwrap();
            let sharded = tmp.path().join("model.safetensors.index.json").exists();
            assert_eq!(sharded, max_shard != usize::MAX);
            let reloaded = load(tmp.path()).unwrap();
            let diff = (logits(&reloaded) - &expected)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert_eq!(diff, 0.0, "{variant} shard={max_shard}");
            // No temporary files left behind.
            assert!(
                std::fs::read_dir(tmp.path()).unwrap().all(|e| !e
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .ends_with(".tmp"))
            );
        }
    }
}

#[test]
fn truncated_safetensors_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    copy_dir(&fixture("qwen3_tied_gqa"), tmp.path());
    let file = tmp.path().join("model.safetensors");
    let bytes = std::fs::read(&file).unwrap();
    std::fs::write(&file, &bytes[..bytes.len() / 2]).unwrap();
    let err = load(tmp.path()).unwrap_err();
    assert!(matches!(err, ModelError::Safetensors { .. }), "{err:?}");
    assert!(err.to_string().contains("model.safetensors"), "{err}");
}

#[test]
fn shape_mismatch_names_the_tensor_and_both_shapes() {
    let tmp = tempfile::tempdir().unwrap();
    copy_dir(&fixture("qwen3_tied_gqa"), tmp.path());
    // Claim a wider model than the weights are.
    let cfg_path = tmp.path().join("config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
    cfg["intermediate_size"] = 100.into();
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    let err = load(tmp.path()).unwrap_err();
    match &err {
        ModelError::ShapeMismatch {
            key,
            expected,
            actual,
        } => {
            assert_eq!(key, "model.layers.0.mlp.gate_proj.weight");
            assert_eq!(
                (expected.as_slice(), actual.as_slice()),
                (&[100, 48][..], &[96, 48][..])
            );
        }
        other => panic!("expected ShapeMismatch, got {other:?}"),
    }
    assert!(err.to_string().contains("gate_proj"));
}

#[test]
fn missing_and_unexpected_tensors_are_listed_by_key() {
    let model = load(&fixture("qwen2_bias_linear")).unwrap();
    let mut named = model.named_tensors();
    named.retain(|(k, _)| k != "model.layers.1.self_attn.k_proj.bias");
    let tmp = tempfile::tempdir().unwrap();
    std::fs::copy(
        fixture("qwen2_bias_linear").join("config.json"),
        tmp.path().join("config.json"),
    )
    .unwrap();
    qforge_model::save_safetensors(tmp.path(), &named, usize::MAX).unwrap();
    let err = load(tmp.path()).unwrap_err();
    assert!(
        err.to_string()
            .contains("model.layers.1.self_attn.k_proj.bias"),
        "{err}"
    );

    let mut named = model.named_tensors();
    named.push((
        "score.weight".into(),
        Tensor::zeros((2, 48), DType::F32, &Device::Cpu).unwrap(),
    ));
    qforge_model::save_safetensors(tmp.path(), &named, usize::MAX).unwrap();
    let err = load(tmp.path()).unwrap_err();
    assert!(
        matches!(&err, ModelError::UnexpectedTensors(keys) if keys == &["score.weight"]),
        "{err:?}"
    );
    // A head crate that owns those keys allows them.
    Model::load(tmp.path(), DType::F32, &Device::Cpu, &["score."]).unwrap();
}

#[test]
fn missing_config_field_and_unknown_model_type() {
    let tmp = tempfile::tempdir().unwrap();
    copy_dir(&fixture("qwen3_tied_gqa"), tmp.path());
    let cfg_path = tmp.path().join("config.json");
    let original: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();

    let mut cfg = original.clone();
    cfg.as_object_mut().unwrap().remove("num_attention_heads");
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    let err = load(tmp.path()).unwrap_err();
    assert!(
        matches!(&err, ModelError::MissingField { field } if field == "num_attention_heads"),
        "{err:?}"
    );

    let mut cfg = original.clone();
    cfg["model_type"] = "mistral".into();
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    let err = load(tmp.path()).unwrap_err();
    assert!(
        err.to_string().contains("unknown model_type `mistral`"),
        "{err}"
    );

    std::fs::write(&cfg_path, "{not json").unwrap();
    let err = load(tmp.path()).unwrap_err();
    assert!(
        matches!(err, ModelError::Json { .. }) && err.to_string().contains("config.json"),
        "{err}"
    );
}

#[test]
fn directory_without_weights_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::copy(
        fixture("qwen3_tied_gqa").join("config.json"),
        tmp.path().join("config.json"),
    )
    .unwrap();
    let err = load(tmp.path()).unwrap_err();
    assert!(matches!(err, ModelError::NoWeights { .. }), "{err:?}");
}

#[test]
fn empty_prompt_and_overlong_prompt_are_errors() {
    let model = load(&fixture("qwen3_tied_gqa")).unwrap();
    let err = Batch::left_padded(&[&[]], &[0], 0, &Device::Cpu).unwrap_err();
    assert!(err.to_string().contains("empty"), "{err}");
    let long: Vec<u32> = vec![5; 1025]; // max_position_embeddings is 1024
    let batch = Batch::left_padded(&[&long], &[0], 0, &Device::Cpu).unwrap();
    let err = model.forward(&batch, None).unwrap_err();
    assert!(
        matches!(
            err,
            ModelError::ContextOverflow {
                len: 1025,
                max: 1024
            }
        ),
        "{err:?}"
    );
}

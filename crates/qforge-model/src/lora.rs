//! LoRA adapters in PEFT's layout: `adapter_config.json` + `adapter_model.safetensors` with keys
//! `base_model.model.<module>.lora_A.weight` `[r, in]` and `lora_B.weight` `[out, r]`, so vLLM
//! and transformers/PEFT load what qforge trains. The update is `(alpha / r) · B·A`.

use std::path::Path;

use candle_core::{DType, Tensor, Var};
use serde_json::{Value, json};

use crate::error::{ModelError, Result};
use crate::model::{Linear, LoraAdapter, Model};
use crate::weights::WeightStore;
use qforge_util::write_json_atomic;

const PREFIX: &str = "base_model.model.";
pub const CONFIG_FILE: &str = "adapter_config.json";
/// The projections that can carry an adapter: a Qwen layer's, and a Qwen2.5-VL vision block's
/// attention (`qkv`, `proj`; its MLP shares the decoder's names, so PEFT's usual targets adapt
/// both, as PEFT's suffix match does).
pub const PROJECTIONS: [&str; 9] = [
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
    "qkv",
    "proj",
];

/// A model whose linear projections can carry LoRA adapters: the decoder, or a
/// vision-language model (decoder and vision tower).
pub trait Adaptable {
    /// Every projection by module path (`model.layers.0.self_attn.q_proj`).
    fn linears(&self) -> Vec<(String, &Linear)>;
    fn linears_mut(&mut self) -> Vec<(String, &mut Linear)>;
    fn set_differentiable(&mut self, differentiable: bool);
    fn dtype(&self) -> DType;
    fn device(&self) -> &candle_core::Device;
}

impl Adaptable for Model {
    fn linears(&self) -> Vec<(String, &Linear)> {
        Model::linears(self)
    }
    fn linears_mut(&mut self) -> Vec<(String, &mut Linear)> {
        Model::linears_mut(self)
    }
    fn set_differentiable(&mut self, differentiable: bool) {
        Model::set_differentiable(self, differentiable)
    }
    fn dtype(&self) -> DType {
        Model::dtype(self)
    }
    fn device(&self) -> &candle_core::Device {
        Model::device(self)
    }
}

impl Adaptable for crate::vl::VlModel {
    fn linears(&self) -> Vec<(String, &Linear)> {
        let mut out = self.text.linears();
        out.extend(self.vision.linears());
        out
    }
    fn linears_mut(&mut self) -> Vec<(String, &mut Linear)> {
        let mut out = self.text.linears_mut();
        out.extend(self.vision.linears_mut());
        out
    }
    fn set_differentiable(&mut self, differentiable: bool) {
        crate::vl::VlModel::set_differentiable(self, differentiable)
    }
    fn dtype(&self) -> DType {
        self.text.dtype()
    }
    fn device(&self) -> &candle_core::Device {
        self.text.device()
    }
}
pub const WEIGHTS_FILE: &str = "adapter_model.safetensors";

#[derive(Debug, Clone, PartialEq)]
pub struct LoraConfig {
    pub r: usize,
    pub alpha: f64,
    /// Projection names (`q_proj`, `v_proj`, ... `down_proj`).
    pub target_modules: Vec<String>,
}

impl LoraConfig {
    pub fn scale(&self) -> f64 {
        self.alpha / self.r as f64
    }

    fn targets(&self, module: &str) -> bool {
        let leaf = module.rsplit('.').next().unwrap_or(module);
        self.target_modules.iter().any(|t| t == leaf)
    }

    fn validate(&self) -> Result<()> {
        if self.r == 0 || self.target_modules.is_empty() {
            return Err(ModelError::InvalidInput(
                "LoRA needs r >= 1 and at least one target module".into(),
            ));
        }

        if let Some(t) = self
            .target_modules
            .iter()
            .find(|t| !PROJECTIONS.contains(&t.as_str()))
        {
            return Err(ModelError::InvalidInput(format!(
                "unknown LoRA target module `{t}` (known: {})",
                PROJECTIONS.join(", ")
            )));
        }
        Ok(())
    }
}

fn keys(module: &str) -> (String, String) {
    (
        format!("{PREFIX}{module}.lora_A.weight"),
        format!("{PREFIX}{module}.lora_B.weight"),
    )
}

/// Adds fresh adapters (A ~ U(±1/√in) as PEFT's Kaiming init, B = 0, so the model is unchanged)
/// and returns them as trainable variables under their PEFT names. The base weights stay plain
/// tensors (frozen); the model switches to its differentiable ops.
pub fn add_lora(
    model: &mut impl Adaptable,
    config: &LoraConfig,
    seed: u64,
) -> Result<Vec<(String, Var)>> {
    config.validate()?;
    let device = model.device().clone();
    let mut rng = qforge_util::XorShift::new(seed);
    let mut uniform = move || rng.signed_unit();
    let mut vars = Vec::new();
    for (module, linear) in model.linears_mut() {
        if !config.targets(&module) {
            continue;
        }
        let (out_dim, in_dim) = linear.weight.dims2()?;
        let bound = 1.0 / (in_dim as f32).sqrt();
        let a: Vec<f32> = (0..config.r * in_dim).map(|_| bound * uniform()).collect();
        // f32 whatever the base dtype, like PEFT's `autocast_adapter_dtype` (the update is
        // computed in the adapter's dtype, see `Linear::forward`).
        let a = Var::from_tensor(&Tensor::from_vec(a, (config.r, in_dim), &device)?)?;
        let b = Var::zeros((out_dim, config.r), DType::F32, &device)?;
        linear.lora = Some(LoraAdapter {
            a: a.as_tensor().clone(),
            b: b.as_tensor().clone(),
            scale: config.scale(),
        });
        let (ka, kb) = keys(&module);
        vars.push((ka, a));
        vars.push((kb, b));
    }
    if vars.is_empty() {
        return Err(ModelError::InvalidInput(format!(
            "no projection of this model matched the LoRA target modules {:?}",
            config.target_modules
        )));
    }
    model.set_differentiable(true);
    Ok(vars)
}

/// The adapter tensors under their PEFT names.
pub fn lora_tensors(model: &impl Adaptable) -> Vec<(String, Tensor)> {
    let mut out = Vec::new();
    for (module, linear) in model.linears() {
        if let Some(l) = &linear.lora {
            let (ka, kb) = keys(&module);
            out.push((ka, l.a.clone()));
            out.push((kb, l.b.clone()));
        }
    }
    out
}

/// Writes `adapter_config.json` and `adapter_model.safetensors` into `dir`.
pub fn save_adapter(
    model: &impl Adaptable,
    config: &LoraConfig,
    dir: &Path,
    base_model: &str,
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| ModelError::io(dir, e))?;
    let map: std::collections::HashMap<String, Tensor> = lora_tensors(model)
        .into_iter()
        .map(|(k, t)| Ok((k, t.to_dtype(DType::F32)?.contiguous()?)))
        .collect::<Result<_>>()?;
    if map.is_empty() {
        return Err(ModelError::InvalidInput(
            "the model has no LoRA adapters to save".into(),
        ));
    }
    let tmp = dir.join(format!("{WEIGHTS_FILE}.tmp"));
    candle_core::safetensors::save(&map, &tmp)?;
    std::fs::rename(&tmp, dir.join(WEIGHTS_FILE))
        .map_err(|e| ModelError::io(dir.join(WEIGHTS_FILE), e))?;
    let cfg = json!({
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": config.r, "lora_alpha": config.alpha,
        "lora_dropout": 0.0, "target_modules": config.target_modules, "bias": "none",
        "fan_in_fan_out": false, "use_rslora": false, "inference_mode": true, "modules_to_save": null,
        "base_model_name_or_path": base_model,
    });
    Ok(write_json_atomic(&dir.join(CONFIG_FILE), &cfg)?)
}

/// Attaches the adapter saved in `dir` (PEFT layout) to `model`.
pub fn load_adapter(model: &mut impl Adaptable, dir: &Path) -> Result<LoraConfig> {
    let path = dir.join(CONFIG_FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| ModelError::io(&path, e))?;
    let v: Value = serde_json::from_str(&text).map_err(|source| ModelError::Json {
        path: path.clone(),
        source,
    })?;
    let field = |k: &str| {
        v.get(k).ok_or_else(|| ModelError::MissingField {
            field: format!("{CONFIG_FILE}: {k}"),
        })
    };
    if field("peft_type")?.as_str() != Some("LORA") {
        return Err(ModelError::InvalidField {
            field: "peft_type".into(),
            message: "must be \"LORA\"".into(),
        });
    }
    let config = LoraConfig {
        r: field("r")?
            .as_u64()
            .ok_or_else(|| ModelError::InvalidField {
                field: "r".into(),
                message: "must be an integer".into(),
            })? as usize,
        alpha: field("lora_alpha")?
            .as_f64()
            .ok_or_else(|| ModelError::InvalidField {
                field: "lora_alpha".into(),
                message: "must be a number".into(),
            })?,
        target_modules: match field("target_modules")? {
            Value::Array(a) => a
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect(),
            Value::String(s) => vec![s.clone()],
            _ => {
                return Err(ModelError::InvalidField {
                    field: "target_modules".into(),
                    message: "must be a list".into(),
                });
            }
        },
    };
    config.validate()?;
    let store = WeightStore::open_files(&[dir.join(WEIGHTS_FILE)])?;
    let (dtype, device) = (model.dtype(), model.device().clone());
    let mut used = Vec::new();
    for (module, linear) in model.linears_mut() {
        if !config.targets(&module) {
            continue;
        }
        let (out_dim, in_dim) = linear.weight.dims2()?;
        let (ka, kb) = keys(&module);
        let a = store.load(&ka, &[config.r, in_dim], dtype, &device)?;
        let b = store.load(&kb, &[out_dim, config.r], dtype, &device)?;
        linear.lora = Some(LoraAdapter {
            a,
            b,
            scale: config.scale(),
        });
        used.extend([ka, kb]);
    }
    let unexpected = store.unexpected(&used, &[]);
    if !unexpected.is_empty() {
        return Err(ModelError::UnexpectedTensors(unexpected));
    }
    Ok(config)
}

/// Folds every adapter into its base weight (`W += scale · B·A`) and removes it.
pub fn merge_lora(model: &mut impl Adaptable) -> Result<()> {
    for (_, linear) in model.linears_mut() {
        if let Some(l) = linear.lora.take() {
            let dtype = linear.weight.dtype();
            let delta =
                (l.b.to_dtype(DType::F32)?
                    .matmul(&l.a.to_dtype(DType::F32)?)?
                    * l.scale)?;
            linear.weight = (linear.weight.to_dtype(DType::F32)? + delta)?.to_dtype(dtype)?;
        }
    }
    Ok(())
}

/// Turns the model's adapters into trainable variables (rebinding them in the model), e.g.
/// after [`load_adapter`] when resuming LoRA training. Switches to the differentiable ops.
pub fn lora_vars(model: &mut impl Adaptable) -> Result<Vec<(String, Var)>> {
    let mut vars = Vec::new();
    for (module, linear) in model.linears_mut() {
        if let Some(l) = &mut linear.lora {
            let (a, b) = (Var::from_tensor(&l.a)?, Var::from_tensor(&l.b)?);
            l.a = a.as_tensor().clone();
            l.b = b.as_tensor().clone();
            let (ka, kb) = keys(&module);
            vars.push((ka, a));
            vars.push((kb, b));
        }
    }
    model.set_differentiable(true);
    Ok(vars)
}

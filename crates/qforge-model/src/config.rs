//! Hugging Face `config.json` for Qwen2 and Qwen3.
//!
//! Fields are read one by one from the raw JSON object so that a missing or mistyped field
//! is reported by name. Every field, known or not, stays in [`ModelConfig::raw`]: guard heads
//! and compressor heads read their own extra fields from it, and saving writes it back.

use std::path::Path;

use serde_json::{Map, Value};

use crate::error::{ModelError, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Architecture {
    /// q/k/v projections with bias, no q/k norm.
    Qwen2,
    /// Per-head RMSNorm on q and k before RoPE, bias only if `attention_bias`.
    Qwen3,
}

/// How positions are turned into rotary frequencies (transformers' `rope_type`).
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    Default,
    /// Positions divided by `factor`.
    Linear {
        factor: f64,
    },
    /// YaRN (arXiv 2309.00071), as transformers' `_compute_yarn_parameters`.
    Yarn {
        factor: f64,
        original_max_position_embeddings: usize,
        beta_fast: f64,
        beta_slow: f64,
        attention_factor: Option<f64>,
        mscale: Option<f64>,
        mscale_all_dim: Option<f64>,
        truncate: bool,
    },
}

#[derive(Debug, Clone)]
pub struct ModelConfig {
    pub architecture: Architecture,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub max_position_embeddings: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub rope_scaling: RopeScaling,
    /// Multimodal RoPE (Qwen2.5-VL): how many of the head_dim/2 frequencies take their
    /// position from the temporal, height and width axis, in that order.
    pub mrope_section: Option<Vec<usize>>,
    pub tie_word_embeddings: bool,
    /// Bias on q/k/v projections (always on for Qwen2).
    pub qkv_bias: bool,
    /// Bias on o_proj (Qwen3 `attention_bias`; never for Qwen2).
    pub o_bias: bool,
    pub hidden_act: String,
    /// The whole config.json object, unknown fields included.
    pub raw: Map<String, Value>,
}

impl ModelConfig {
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| ModelError::io(path, e))?;
        let value: Value = serde_json::from_str(&text).map_err(|source| ModelError::Json {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_json(value)
    }

    pub fn from_json(value: Value) -> Result<Self> {
        let Value::Object(raw) = value else {
            return Err(ModelError::InvalidField {
                field: "<root>".into(),
                message: "must be a JSON object".into(),
            });
        };
        let model_type = Fields(&raw).string("model_type")?;
        let architecture = match model_type.as_str() {
            "qwen2" | "qwen2_5_vl" => Architecture::Qwen2,
            "qwen3" => Architecture::Qwen3,
            other => return Err(ModelError::UnknownModelType(other.to_string())),
        };
        // Vision-language configs keep the decoder's fields at the top level (released
        // Qwen2.5-VL) or in `text_config` (what transformers >= 4.52 saves).
        let fields = match raw.get("text_config") {
            Some(Value::Object(text)) => Fields(text),
            Some(Value::Null) | None => Fields(&raw),
            Some(_) => {
                return Err(ModelError::InvalidField {
                    field: "text_config".into(),
                    message: "must be an object".into(),
                });
            }
        };
        let hidden_size = fields.usize("hidden_size")?;
        let num_attention_heads = fields.usize("num_attention_heads")?;
        let num_key_value_heads = fields
            .opt_usize("num_key_value_heads")?
            .unwrap_or(num_attention_heads);
        let head_dim = match fields.opt_usize("head_dim")? {
            Some(d) => d,
            None => {
                if hidden_size % num_attention_heads != 0 {
                    return Err(ModelError::InvalidField {
                        field: "head_dim".into(),
                        message: format!(
                            "is absent and hidden_size {hidden_size} is not divisible by \
                             num_attention_heads {num_attention_heads}"
                        ),
                    });
                }
                hidden_size / num_attention_heads
            }
        };
        if num_key_value_heads == 0 || num_attention_heads % num_key_value_heads != 0 {
            return Err(ModelError::InvalidField {
                field: "num_key_value_heads".into(),
                message: format!(
                    "= {num_key_value_heads} must divide num_attention_heads = {num_attention_heads}"
                ),
            });
        }
        if head_dim % 2 != 0 {
            return Err(ModelError::InvalidField {
                field: "head_dim".into(),
                message: format!("= {head_dim} must be even for rotary embeddings"),
            });
        }
        let max_position_embeddings = fields.usize("max_position_embeddings")?;
        let (rope_theta, rope_scaling, mrope_section) =
            parse_rope(&fields, max_position_embeddings)?;
        if let Some(section) = &mrope_section
            && 2 * section.iter().sum::<usize>() != head_dim
        {
            return Err(ModelError::InvalidField {
                field: "rope_scaling.mrope_section".into(),
                message: format!("= {section:?} must sum to head_dim / 2 = {}", head_dim / 2),
            });
        }
        let attention_bias = fields.opt_bool("attention_bias")?.unwrap_or(false);
        let (qkv_bias, o_bias) = match architecture {
            Architecture::Qwen2 => (true, false),
            Architecture::Qwen3 => (attention_bias, attention_bias),
        };
        let hidden_act = fields
            .opt_string("hidden_act")?
            .unwrap_or_else(|| "silu".into());
        if hidden_act != "silu" {
            return Err(ModelError::InvalidField {
                field: "hidden_act".into(),
                message: format!("= `{hidden_act}` is not supported (only `silu`)"),
            });
        }
        let config = Self {
            architecture,
            vocab_size: fields.usize("vocab_size")?,
            hidden_size,
            intermediate_size: fields.usize("intermediate_size")?,
            num_hidden_layers: fields.usize("num_hidden_layers")?,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            max_position_embeddings,
            rms_norm_eps: fields.opt_f64("rms_norm_eps")?.unwrap_or(1e-6),
            rope_theta,
            rope_scaling,
            mrope_section,
            tie_word_embeddings: fields.opt_bool("tie_word_embeddings")?.unwrap_or(false),
            qkv_bias,
            o_bias,
            hidden_act,
            raw: raw.clone(),
        };
        for (name, v) in [
            ("vocab_size", config.vocab_size),
            ("hidden_size", config.hidden_size),
            ("intermediate_size", config.intermediate_size),
            ("num_hidden_layers", config.num_hidden_layers),
            ("num_attention_heads", config.num_attention_heads),
            ("max_position_embeddings", config.max_position_embeddings),
        ] {
            if v == 0 {
                return Err(ModelError::InvalidField {
                    field: name.into(),
                    message: "must be positive".into(),
                });
            }
        }
        Ok(config)
    }

    pub fn kv_groups(&self) -> usize {
        self.num_attention_heads / self.num_key_value_heads
    }

    /// The `model_type` string as written in config.json.
    pub fn model_type(&self) -> &str {
        match self.raw.get("model_type").and_then(Value::as_str) {
            Some(t) => t,
            None => match self.architecture {
                Architecture::Qwen2 => "qwen2",
                Architecture::Qwen3 => "qwen3",
            },
        }
    }

    /// A vision-language checkpoint (its config has a `vision_config`).
    pub fn is_vision_language(&self) -> bool {
        self.raw.get("vision_config").is_some_and(Value::is_object)
    }

    /// Reads a field kept in [`Self::raw`] (for heads and recipes with their own config).
    pub fn extra(&self, field: &str) -> Option<&Value> {
        self.raw.get(field)
    }

    pub fn to_json(&self) -> Value {
        Value::Object(self.raw.clone())
    }

    /// Number of parameters (tied embeddings counted once).
    pub fn num_parameters(&self) -> usize {
        crate::model::expected_shapes(self)
            .iter()
            .map(|(_, s)| s.iter().product::<usize>())
            .sum()
    }

    /// The rotary inverse frequencies (length head_dim/2) and the factor applied to cos/sin.
    pub fn rope_inv_freq(&self) -> (Vec<f32>, f32) {
        let dim = self.head_dim;
        let base = self.rope_theta;
        // transformers computes `base ** (arange(0, dim, 2) / dim)` in f32.
        let pos_freqs: Vec<f32> = (0..dim / 2)
            .map(|i| (base as f32).powf((2 * i) as f32 / dim as f32))
            .collect();
        match &self.rope_scaling {
            RopeScaling::Default => (pos_freqs.iter().map(|p| 1.0 / p).collect(), 1.0),
            RopeScaling::Linear { factor } => (
                pos_freqs.iter().map(|p| 1.0 / p / *factor as f32).collect(),
                1.0,
            ),
            RopeScaling::Yarn {
                factor,
                original_max_position_embeddings,
                beta_fast,
                beta_slow,
                attention_factor,
                mscale,
                mscale_all_dim,
                truncate,
            } => {
                let get_mscale = |scale: f64, m: f64| {
                    if scale <= 1.0 {
                        1.0
                    } else {
                        0.1 * m * scale.ln() + 1.0
                    }
                };
                let attention_factor = match (attention_factor, mscale, mscale_all_dim) {
                    (Some(a), _, _) => *a,
                    (None, Some(m), Some(ma)) if *m != 0.0 && *ma != 0.0 => {
                        get_mscale(*factor, *m) / get_mscale(*factor, *ma)
                    }
                    _ => get_mscale(*factor, 1.0),
                };
                let correction_dim = |rotations: f64| {
                    (dim as f64
                        * ((*original_max_position_embeddings as f64)
                            / (rotations * 2.0 * std::f64::consts::PI))
                            .ln())
                        / (2.0 * base.ln())
                };
                let (mut low, mut high) = (correction_dim(*beta_fast), correction_dim(*beta_slow));
                if *truncate {
                    low = low.floor();
                    high = high.ceil();
                }
                let low = low.max(0.0);
                let high = high.min(dim as f64 - 1.0);
                let high = if low == high { high + 0.001 } else { high };
                let inv_freq = pos_freqs
                    .iter()
                    .enumerate()
                    .map(|(i, p)| {
                        let ramp = (((i as f32) - low as f32) / (high as f32 - low as f32))
                            .clamp(0.0, 1.0);
                        let extrapolation_factor = 1.0 - ramp;
                        let interpolation = 1.0 / (*factor as f32 * p);
                        let extrapolation = 1.0 / p;
                        interpolation * (1.0 - extrapolation_factor)
                            + extrapolation * extrapolation_factor
                    })
                    .collect();
                (inv_freq, attention_factor as f32)
            }
        }
    }
}

/// Reads `rope_parameters` (transformers >= 5) or the older `rope_theta` + `rope_scaling`,
/// with the M-RoPE section where there is one.
fn parse_rope(
    fields: &Fields,
    max_position_embeddings: usize,
) -> Result<(f64, RopeScaling, Option<Vec<usize>>)> {
    let (params, prefix) = match fields.0.get("rope_parameters") {
        Some(Value::Object(m)) => (Some(m), "rope_parameters"),
        Some(Value::Null) | None => match fields.0.get("rope_scaling") {
            Some(Value::Object(m)) => (Some(m), "rope_scaling"),
            Some(Value::Null) | None => (None, "rope_scaling"),
            Some(_) => {
                return Err(ModelError::InvalidField {
                    field: "rope_scaling".into(),
                    message: "must be an object or null".into(),
                });
            }
        },
        Some(_) => {
            return Err(ModelError::InvalidField {
                field: "rope_parameters".into(),
                message: "must be an object or null".into(),
            });
        }
    };
    let top_theta = fields.opt_f64("rope_theta")?;
    let Some(params) = params else {
        return Ok((top_theta.unwrap_or(10_000.0), RopeScaling::Default, None));
    };
    let p = Fields(params);
    let named = |f: &str| format!("{prefix}.{f}");
    let theta = p
        .opt_f64_as("rope_theta", &named("rope_theta"))?
        .or(top_theta)
        .unwrap_or(10_000.0);
    let kind = match p.opt_string_as("rope_type", &named("rope_type"))? {
        Some(k) => k,
        None => p
            .opt_string_as("type", &named("type"))?
            .unwrap_or_else(|| "default".into()),
    };
    let factor = |required: bool| -> Result<Option<f64>> {
        match p.opt_f64_as("factor", &named("factor"))? {
            Some(f) if f <= 0.0 => Err(ModelError::InvalidField {
                field: named("factor"),
                message: format!("= {f} must be positive"),
            }),
            None if required => Err(ModelError::MissingField {
                field: named("factor"),
            }),
            f => Ok(f),
        }
    };
    let mrope_section = match params.get("mrope_section") {
        None | Some(Value::Null) => None,
        Some(Value::Array(items)) => Some(
            items
                .iter()
                .map(|v| v.as_u64().map(|x| x as usize))
                .collect::<Option<Vec<_>>>()
                .filter(|s| s.len() == 3)
                .ok_or_else(|| ModelError::InvalidField {
                    field: named("mrope_section"),
                    message: "must be three non-negative integers".into(),
                })?,
        ),
        Some(other) => {
            return Err(Fields::wrong(
                &named("mrope_section"),
                "a list of three integers",
                other,
            ));
        }
    };
    let scaling = match kind.as_str() {
        // Qwen2.5-VL's `mrope` is default RoPE per axis (transformers rewrites it to `default`).
        "default" | "mrope" => RopeScaling::Default,
        "linear" => RopeScaling::Linear {
            factor: factor(true)?.unwrap_or(1.0),
        },
        "yarn" => {
            let original = p
                .opt_usize_as(
                    "original_max_position_embeddings",
                    &named("original_max_position_embeddings"),
                )?
                .or(fields.opt_usize("original_max_position_embeddings")?)
                .unwrap_or(max_position_embeddings);
            let factor = match factor(false)? {
                Some(f) => f,
                None => max_position_embeddings as f64 / original as f64,
            };
            RopeScaling::Yarn {
                factor,
                original_max_position_embeddings: original,
                beta_fast: nonzero_or(p.opt_f64_as("beta_fast", &named("beta_fast"))?, 32.0),
                beta_slow: nonzero_or(p.opt_f64_as("beta_slow", &named("beta_slow"))?, 1.0),
                attention_factor: p.opt_f64_as("attention_factor", &named("attention_factor"))?,
                mscale: p.opt_f64_as("mscale", &named("mscale"))?,
                mscale_all_dim: p.opt_f64_as("mscale_all_dim", &named("mscale_all_dim"))?,
                truncate: p
                    .opt_bool_as("truncate", &named("truncate"))?
                    .unwrap_or(true),
            }
        }
        other => return Err(ModelError::UnsupportedRopeScaling(other.to_string())),
    };
    Ok((theta, scaling, mrope_section))
}

/// transformers writes `beta_fast or 32`: a zero means "use the default".
fn nonzero_or(v: Option<f64>, default: f64) -> f64 {
    match v {
        Some(x) if x != 0.0 => x,
        _ => default,
    }
}

/// Typed accessors over a JSON object that name the field in their errors.
struct Fields<'a>(&'a Map<String, Value>);

impl Fields<'_> {
    fn get(&self, key: &str) -> Option<&Value> {
        match self.0.get(key) {
            Some(Value::Null) | None => None,
            v => v,
        }
    }

    fn wrong(field: &str, expected: &str, got: &Value) -> ModelError {
        ModelError::InvalidField {
            field: field.into(),
            message: format!("must be {expected}, got {got}"),
        }
    }

    fn usize(&self, key: &str) -> Result<usize> {
        self.opt_usize(key)?
            .ok_or_else(|| ModelError::MissingField { field: key.into() })
    }

    fn opt_usize(&self, key: &str) -> Result<Option<usize>> {
        self.opt_usize_as(key, key)
    }

    fn opt_usize_as(&self, key: &str, name: &str) -> Result<Option<usize>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .map(|x| Some(x as usize))
                .ok_or_else(|| Self::wrong(name, "a non-negative integer", v)),
        }
    }

    fn opt_f64(&self, key: &str) -> Result<Option<f64>> {
        self.opt_f64_as(key, key)
    }

    fn opt_f64_as(&self, key: &str, name: &str) -> Result<Option<f64>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_f64()
                .map(Some)
                .ok_or_else(|| Self::wrong(name, "a number", v)),
        }
    }

    fn opt_bool(&self, key: &str) -> Result<Option<bool>> {
        self.opt_bool_as(key, key)
    }

    fn opt_bool_as(&self, key: &str, name: &str) -> Result<Option<bool>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_bool()
                .map(Some)
                .ok_or_else(|| Self::wrong(name, "true or false", v)),
        }
    }

    fn string(&self, key: &str) -> Result<String> {
        self.opt_string(key)?
            .ok_or_else(|| ModelError::MissingField { field: key.into() })
    }

    fn opt_string(&self, key: &str) -> Result<Option<String>> {
        self.opt_string_as(key, key)
    }

    fn opt_string_as(&self, key: &str, name: &str) -> Result<Option<String>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_str()
                .map(|s| Some(s.to_string()))
                .ok_or_else(|| Self::wrong(name, "a string", v)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn base() -> Value {
        json!({
            "model_type": "qwen3", "vocab_size": 100, "hidden_size": 64,
            "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
            "num_key_value_heads": 2, "head_dim": 24, "max_position_embeddings": 512,
            "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "tie_word_embeddings": true,
            "guard_inner_size": 32
        })
    }

    #[test]
    fn missing_field_is_named() {
        let mut v = base();
        v.as_object_mut().unwrap().remove("hidden_size");
        let err = ModelConfig::from_json(v).unwrap_err();
        assert!(matches!(&err, ModelError::MissingField { field } if field == "hidden_size"));
        assert!(err.to_string().contains("hidden_size"));
    }

    #[test]
    fn wrong_type_is_named() {
        let mut v = base();
        v["num_hidden_layers"] = json!("two");
        let err = ModelConfig::from_json(v).unwrap_err().to_string();
        assert!(err.contains("num_hidden_layers"), "{err}");
    }

    #[test]
    fn unknown_model_type_is_rejected() {
        let mut v = base();
        v["model_type"] = json!("llama");
        assert!(matches!(
            ModelConfig::from_json(v),
            Err(ModelError::UnknownModelType(t)) if t == "llama"
        ));
    }

    #[test]
    fn extra_fields_are_kept_and_head_dim_is_explicit() {
        let c = ModelConfig::from_json(base()).unwrap();
        assert_eq!(c.head_dim, 24);
        assert_eq!(c.extra("guard_inner_size"), Some(&json!(32)));
        assert!(c.to_json().get("guard_inner_size").is_some());
    }

    #[test]
    fn head_dim_is_derived_when_absent() {
        let mut v = base();
        v.as_object_mut().unwrap().remove("head_dim");
        assert_eq!(ModelConfig::from_json(v).unwrap().head_dim, 16);
    }

    #[test]
    fn qwen2_has_qkv_bias() {
        let mut v = base();
        v["model_type"] = json!("qwen2");
        let c = ModelConfig::from_json(v).unwrap();
        assert!(c.qkv_bias && !c.o_bias);
    }

    #[test]
    fn both_rope_layouts_parse() {
        let mut old = base();
        old["rope_scaling"] = json!({"type": "yarn", "factor": 4.0,
            "original_max_position_embeddings": 128});
        let mut new = base();
        new.as_object_mut().unwrap().remove("rope_theta");
        new["rope_parameters"] = json!({"rope_type": "yarn", "factor": 4.0, "rope_theta": 10000.0,
            "original_max_position_embeddings": 128});
        let a = ModelConfig::from_json(old).unwrap();
        let b = ModelConfig::from_json(new).unwrap();
        assert_eq!(a.rope_scaling, b.rope_scaling);
        assert_eq!(a.rope_theta, b.rope_theta);
        let (freq, factor) = a.rope_inv_freq();
        assert_eq!(freq.len(), 12);
        assert!((factor - (0.1 * 4f32.ln() + 1.0)).abs() < 1e-6);
    }

    #[test]
    fn unsupported_rope_type_is_named() {
        let mut v = base();
        v["rope_scaling"] = json!({"rope_type": "dynamic", "factor": 2.0});
        assert!(matches!(
            ModelConfig::from_json(v),
            Err(ModelError::UnsupportedRopeScaling(t)) if t == "dynamic"
        ));
    }
}

//! PPO's learned critic (verl's `dp_critic` with `AutoModelForTokenClassification`, one label):
//! the policy's backbone with a `score` head `Linear(hidden, 1)` (weight and bias) read at every
//! position. The value of response token k is read at the position before it (verl's
//! `values[:, -response_length - 1 : -1]`), the same alignment as the policy's log-probs.
//!
//! Checkpoint layout (a directory transformers loads as `Qwen*ForTokenClassification` with
//! `num_labels = 1`): the backbone's tensors under their causal-LM names (`lm_head.weight`, when
//! untied, is kept and unused, so the directory also loads as the language model),
//! `score.weight` `[1, hidden]`, `score.bias` `[1]`, `config.json` naming the architecture, the
//! tokenizer files, and `optimizer.safetensors` with the critic's AdamW moments.
//!
//! Departure from verl at the commit the Writing-RL release ships (68958ef): verl masks the
//! critic's values and value loss with `attention_mask[:, -L-1:-1]`, which counts the last prompt
//! position and drops the last response token, so a response shorter than the batch's longest
//! also trains a value one position past its end. Here values and loss cover exactly the
//! response tokens.

use std::path::Path;

use candle_core::{D, DType, Device, Tensor, Var};
use qforge_model::{Model, ModelConfig, WeightStore};
use qforge_train::TrainError;
use qforge_train::data::TrainBatch;
use qforge_train::optim::{AdamW, AdamWConfig, clip_grad_norm};
use qforge_train::policy::clipped_value_loss;
use qforge_util::{SplitMix, WithPath};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::error::{Result, RlError};

/// The critic's optimisation settings (verl `critic.*` defaults).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CriticConfig {
    /// Where the critic starts: a base model (a fresh head is drawn) or a critic checkpoint.
    /// Empty: the policy's starting model, as Writing-RL runs it.
    pub model: std::path::PathBuf,
    pub lr: f64,
    /// Linear warm-up over this share of the run's steps, then constant.
    pub lr_warmup_ratio: f64,
    /// `cliprange_value`.
    pub clip_value: f64,
    pub max_grad_norm: f64,
    pub weight_decay: f64,
    pub mini_batches: usize,
    pub epochs: usize,
}

impl Default for CriticConfig {
    fn default() -> Self {
        Self {
            model: std::path::PathBuf::new(),
            lr: 1e-5,
            lr_warmup_ratio: 0.0,
            clip_value: 0.5,
            max_grad_norm: 1.0,
            weight_decay: 0.01,
            mini_batches: 1,
            epochs: 1,
        }
    }
}

/// What one critic update did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CriticStats {
    pub value_loss: f64,
    pub value_clip_fraction: f64,
    /// Optimiser steps taken (0: every mini-batch was non-finite).
    pub updates: usize,
}

/// Files of a critic checkpoint besides the weights.
const OPTIMIZER_FILE: &str = "optimizer.safetensors";

pub struct Critic {
    config: CriticConfig,
    model: Model,
    vars: Vec<(String, Var)>,
    score_weight: Var,
    score_bias: Var,
    optimizer: AdamW,
    pad: u32,
}

impl Critic {
    /// A critic from `dir`: its head when `dir` is a critic checkpoint (with its optimiser
    /// state when saved alongside), else the backbone of a causal LM and a head drawn from
    /// N(0, 0.02) with a zero bias, as transformers initialises a new classification head.
    pub fn load(dir: &Path, config: CriticConfig, pad: u32, seed: u64) -> Result<Self> {
        let device = Device::Cpu;
        let model_config = ModelConfig::from_file(&dir.join("config.json"))?;
        let hidden = model_config.hidden_size;
        let store = WeightStore::open_dir(dir)?;
        let base = Model::load(dir, DType::F32, &device, &["score."])?;
        let (weight, bias) = if store.contains("score.weight") {
            let w = store.load("score.weight", &[1, hidden], DType::F32, &device)?;
            let b = if store.contains("score.bias") {
                store.load("score.bias", &[1], DType::F32, &device)?
            } else {
                Tensor::zeros(1, DType::F32, &device)?
            };
            (w, b)
        } else {
            let mut rng = SplitMix(seed ^ 0xC217_1C);
            let data: Vec<f32> = (0..hidden).map(|_| rng.normal(0.02) as f32).collect();
            (
                Tensor::from_vec(data, (1, hidden), &device)?,
                Tensor::zeros(1, DType::F32, &device)?,
            )
        };
        let (model, mut vars) = base.into_trainable()?;
        let score_weight = Var::from_tensor(&weight)?;
        let score_bias = Var::from_tensor(&bias)?;
        vars.push(("score.weight".into(), score_weight.clone()));
        vars.push(("score.bias".into(), score_bias.clone()));
        let mut optimizer = AdamW::new(
            vars.clone(),
            AdamWConfig {
                weight_decay: config.weight_decay,
                ..AdamWConfig::default()
            },
        )?;
        let state = dir.join(OPTIMIZER_FILE);
        if store.contains("score.weight") && state.exists() {
            optimizer.load_state(&state)?;
        }
        Ok(Self {
            config,
            model,
            vars,
            score_weight,
            score_bias,
            optimizer,
            pad,
        })
    }

    pub fn config(&self) -> &CriticConfig {
        &self.config
    }

    fn batch(&self, pairs: &[(Vec<u32>, Vec<u32>)]) -> Result<TrainBatch> {
        crate::grpo::pairs_batch(pairs, self.pad, &Device::Cpu)
    }

    /// Per-position values `[B, T]` of a batch.
    fn position_values(&self, tb: &TrainBatch) -> Result<Tensor> {
        let hidden = self.model.forward(&tb.batch, None)?;
        let values = hidden
            .broadcast_matmul(&self.score_weight.as_tensor().t()?)?
            .squeeze(D::Minus1)?
            .broadcast_add(self.score_bias.as_tensor())?;
        Ok(values)
    }

    /// A `[B, width]` tensor holding `rows` (one value per response token) at the response
    /// tokens' positions minus one, zero elsewhere; without `rows`, the 0/1 mask of those
    /// positions.
    fn response_grid(
        pairs: &[(Vec<u32>, Vec<u32>)],
        width: usize,
        rows: Option<&[Vec<f64>]>,
    ) -> Result<Tensor> {
        let mut data = vec![0f32; pairs.len() * width];
        for (b, (p, r)) in pairs.iter().enumerate() {
            for k in 0..r.len() {
                let at = b * width + p.len() - 1 + k;
                data[at] = rows.map_or(1.0, |rows| rows[b][k] as f32);
            }
        }
        Ok(Tensor::from_vec(data, (pairs.len(), width), &Device::Cpu)?)
    }

    /// The value of each response token (read at the position before it).
    pub fn values(&self, pairs: &[(Vec<u32>, Vec<u32>)]) -> Result<Vec<Vec<f64>>> {
        check_pairs(pairs)?;
        let mut out = Vec::with_capacity(pairs.len());
        for chunk in pairs.chunks(8) {
            let tb = self.batch(chunk)?;
            let values: Vec<Vec<f32>> = self.position_values(&tb)?.detach().to_vec2()?;
            for ((p, r), row) in chunk.iter().zip(values) {
                out.push(
                    row[p.len() - 1..p.len() - 1 + r.len()]
                        .iter()
                        .map(|&v| v as f64)
                        .collect(),
                );
            }
        }
        Ok(out)
    }

    /// One optimisation pass of the clipped value loss toward `returns` (GAE's), with the
    /// values the rollout saw as the clip centre; `step` and `total_steps` place the warm-up.
    pub fn update(
        &mut self,
        pairs: &[(Vec<u32>, Vec<u32>)],
        old_values: &[Vec<f64>],
        returns: &[Vec<f64>],
        step: u64,
        total_steps: u64,
    ) -> Result<CriticStats> {
        check_pairs(pairs)?;
        if old_values.len() != pairs.len() || returns.len() != pairs.len() {
            return Err(RlError::Invalid(
                "the critic needs old values and returns for every sequence".into(),
            ));
        }
        let cfg = self.config.clone();
        let lr = cfg.lr * crate::grpo::warmup_factor(step, cfg.lr_warmup_ratio, total_steps);
        let size = pairs.len().div_ceil(cfg.mini_batches.max(1)).max(1);
        let vars: Vec<&Var> = self.vars.iter().map(|(_, v)| v).collect();
        let mut stats = CriticStats::default();
        let (mut loss_sum, mut clip_sum) = (0.0, 0.0);
        for _ in 0..cfg.epochs.max(1) {
            for start in (0..pairs.len()).step_by(size) {
                let end = (start + size).min(pairs.len());
                let chunk = &pairs[start..end];
                let tb = self.batch(chunk)?;
                let width = tb.batch.input_ids.dim(1)?;
                let mask = Self::response_grid(chunk, width, None)?;
                let old = Self::response_grid(chunk, width, Some(&old_values[start..end]))?;
                let ret = Self::response_grid(chunk, width, Some(&returns[start..end]))?;
                let values = self.position_values(&tb)?;
                let vl = clipped_value_loss(&values, &old, &ret, &mask, cfg.clip_value)?;
                let value = vl.loss.to_scalar::<f32>()? as f64;
                if !value.is_finite() {
                    tracing::warn!("critic: non-finite value loss, update skipped");
                    continue;
                }
                let mut grads = vl.loss.backward()?;
                match clip_grad_norm(&mut grads, &vars, cfg.max_grad_norm) {
                    Ok(_) => self.optimizer.step(&grads, lr)?,
                    Err(TrainError::NonFiniteGradient(_)) => continue,
                    Err(e) => return Err(e.into()),
                }
                loss_sum += value;
                clip_sum += vl.clip_fraction as f64;
                stats.updates += 1;
            }
        }
        if stats.updates > 0 {
            stats.value_loss = loss_sum / stats.updates as f64;
            stats.value_clip_fraction = clip_sum / stats.updates as f64;
        } else {
            stats.value_loss = f64::NAN;
        }
        Ok(stats)
    }

    /// Writes the critic in the layout above (weights, head, config, optimiser state) and the
    /// tokenizer files of `tokenizer_dir`.
    pub fn save(&self, dir: &Path, tokenizer_dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).with_path(dir)?;
        let mut tensors = self.model.named_tensors();
        tensors.push(("score.weight".into(), self.score_weight.as_tensor().clone()));
        tensors.push(("score.bias".into(), self.score_bias.as_tensor().clone()));
        qforge_model::save_safetensors(dir, &tensors, 5 << 30)?;
        let mut config = qforge_model::reward_model::one_label_head_config(
            self.model.config(),
            "TokenClassification",
        );
        config["classifier_dropout"] = json!(0.0);
        config["torch_dtype"] = json!("float32");
        qforge_util::write_json_atomic(&dir.join("config.json"), &config)?;
        self.optimizer.save_state(&dir.join(OPTIMIZER_FILE))?;
        Ok(qforge_model::copy_tokenizer_files(tokenizer_dir, dir)?)
    }

    /// The head's weight and bias (for tests and inspection).
    pub fn head(&self) -> (&Tensor, &Tensor) {
        (self.score_weight.as_tensor(), self.score_bias.as_tensor())
    }
}

fn check_pairs(pairs: &[(Vec<u32>, Vec<u32>)]) -> Result<()> {
    if let Some(i) = pairs.iter().position(|(p, r)| p.is_empty() || r.is_empty()) {
        return Err(RlError::Invalid(format!(
            "sequence {i}: the critic needs a non-empty prompt and response"
        )));
    }
    Ok(())
}

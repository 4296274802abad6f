//! The training loop shared by SFT, DPO and reward-model training: micro-batches with gradient
//! accumulation, global-norm clipping, AdamW on a schedule, evaluation, metrics as JSONL, and
//! checkpoints that a killed run resumes from with the same loss sequence.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use candle_core::{DType, Device, Tensor, Var};
use qforge_model::weights::save_safetensors;
use qforge_model::{Model, ModelConfig, Tokenizer};
use qforge_util::{WithPath, list_checkpoints, prune_checkpoints, write_json_atomic};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::data::{DataOptions, Dataset, DatasetKind, Example, TokenSequence, TrainBatch};
use crate::error::{Result, TrainError};
use crate::losses::{self, DpoKind};
use crate::optim::{AdamW, AdamWConfig, GradAccumulator, Schedule, clip_grad_norm};
use crate::pairwise::{DpoObjective, PairLogps, PairObjective, SeqLogps};
use qforge_util::SplitMix;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Objective {
    Sft,
    Dpo,
    Rm,
}

/// A recipe's settings (the `[train]` table of a recipe TOML; every field has a default).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    /// Checkpoint directory to start from.
    pub model: PathBuf,
    pub data: PathBuf,
    pub eval_data: Option<PathBuf>,
    pub output_dir: PathBuf,
    pub max_length: usize,
    pub batch_size: usize,
    pub grad_accum: usize,
    pub lr: f64,
    /// "constant", "linear" or "cosine" (after `warmup_steps` of linear warm-up).
    pub schedule: String,
    pub warmup_steps: u64,
    pub epochs: u64,
    /// Overrides `epochs` when set.
    pub max_steps: Option<u64>,
    pub weight_decay: f64,
    pub max_grad_norm: f64,
    pub seed: u64,
    /// Save a checkpoint every N optimiser steps (0: only at the end).
    pub save_steps: u64,
    /// Checkpoints kept (oldest removed first).
    pub save_total_limit: usize,
    /// Evaluate every N steps (0: only at the end).
    pub eval_steps: u64,
    pub skip_malformed: bool,
    /// DPO: β, `loss_type` (sigmoid, hinge, ipo, robust) and label smoothing.
    pub beta: f64,
    pub loss_type: String,
    pub label_smoothing: f64,
    /// DPO: weight of the chosen responses' NLL added to the loss (TRL's `rpo_alpha`; 0: off).
    pub rpo_alpha: f64,
    /// Recompute each layer's activations in the backward pass instead of keeping them
    /// (memory bounded by one layer; about one extra forward of compute).
    pub gradient_checkpointing: bool,
    /// LoRA rank (0: full fine-tuning). Adapters are saved in PEFT's layout.
    pub lora_r: usize,
    pub lora_alpha: f64,
    pub lora_target_modules: Vec<String>,
    /// Reward model: centring coefficient of the Bradley-Terry loss.
    pub center_rewards_coefficient: f64,
    /// Truncation length of long-context sequences (`prompt_long`, short-to-long objectives);
    /// 0: none (the model's context bounds them).
    pub max_long_length: usize,
    /// `cpu`, `cuda` or `cuda:N` (CUDA needs a build with the `cuda` feature).
    pub device: String,
    /// Compute dtype of the model: `f32`, or `bf16`/`f16` with f32 master weights and moments
    /// in the optimiser (meant for CUDA; bf16 matmul is ~10x slower on CPU).
    pub dtype: String,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            model: PathBuf::new(),
            data: PathBuf::new(),
            eval_data: None,
            output_dir: PathBuf::from("runs/train"),
            max_length: 512,
            batch_size: 8,
            grad_accum: 1,
            lr: 1e-5,
            schedule: "cosine".into(),
            warmup_steps: 0,
            epochs: 1,
            max_steps: None,
            weight_decay: 0.0,
            max_grad_norm: 1.0,
            seed: 42,
            save_steps: 0,
            save_total_limit: 2,
            eval_steps: 0,
            skip_malformed: false,
            beta: 0.1,
            loss_type: "sigmoid".into(),
            label_smoothing: 0.0,
            rpo_alpha: 0.0,
            gradient_checkpointing: false,
            lora_r: 0,
            lora_alpha: 16.0,
            lora_target_modules: qforge_model::lora::PROJECTIONS.map(String::from).to_vec(),
            center_rewards_coefficient: 0.0,
            max_long_length: 0,
            device: "cpu".into(),
            dtype: "f32".into(),
        }
    }
}

impl TrainConfig {
    fn dpo_kind(&self) -> Result<DpoKind> {
        Ok(match self.loss_type.as_str() {
            "sigmoid" => DpoKind::Sigmoid {
                label_smoothing: self.label_smoothing,
            },
            "hinge" => DpoKind::Hinge,
            "ipo" => DpoKind::Ipo,
            "robust" => DpoKind::Robust {
                label_smoothing: self.label_smoothing,
            },
            other => {
                return Err(TrainError::Invalid(format!(
                    "unknown loss_type `{other}` (sigmoid, hinge, ipo, robust)"
                )));
            }
        })
    }

    fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(TrainError::Invalid(m));
        if self.batch_size == 0 || self.grad_accum == 0 {
            return bad("batch_size and grad_accum must be at least 1".into());
        }
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            return bad(format!("lr must be positive, got {}", self.lr));
        }
        if self.max_length < 2 {
            return bad("max_length must be at least 2".into());
        }
        self.compute_dtype()?;
        Ok(())
    }

    fn compute_dtype(&self) -> Result<DType> {
        qforge_util::parse_dtype(&self.dtype).ok_or_else(|| {
            TrainError::Invalid(format!("dtype `{}`: use f32, bf16 or f16", self.dtype))
        })
    }

    fn lora(&self) -> Option<qforge_model::LoraConfig> {
        (self.lora_r > 0).then(|| qforge_model::LoraConfig {
            r: self.lora_r,
            alpha: self.lora_alpha,
            target_modules: self.lora_target_modules.clone(),
        })
    }

    fn check_objective(&self, objective: Objective) -> Result<()> {
        if self.lora_r > 0 && objective == Objective::Rm {
            return Err(TrainError::Invalid(
                "LoRA reward models are not supported yet: set lora_r = 0".into(),
            ));
        }
        Ok(())
    }
}

/// What one optimiser step reports.
#[derive(Debug, Clone, Serialize)]
pub struct StepReport {
    pub step: u64,
    pub total_steps: u64,
    pub epoch: u64,
    pub loss: f64,
    pub lr: f64,
    pub grad_norm: f64,
    pub tokens_per_s: f64,
    /// Objective-specific: DPO/RM pairwise accuracy, DPO reward margin.
    pub accuracy: Option<f64>,
    pub margin: Option<f64>,
    /// Whether the step was skipped (non-finite loss or gradient).
    pub skipped: bool,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct EvalReport {
    pub step: u64,
    pub loss: f64,
    pub accuracy: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct TrainerState {
    step: u64,
    epoch: u64,
    cursor: usize,
    objective: Objective,
    config: TrainConfig,
}

pub struct Trainer {
    pub config: TrainConfig,
    pub objective: Objective,
    model: Model,
    vars: Vec<(String, Var)>,
    /// Reward-model head `[1, hidden]` (`score.weight`).
    score: Option<Var>,
    /// Pairwise objectives (DPO family, or a recipe's own).
    pair_objective: Option<Arc<dyn PairObjective>>,
    /// Reference sequence log-probs per training example, from the starting weights.
    reference: Option<Vec<RefLogps>>,
    eval_reference: Option<Vec<RefLogps>>,
    tokenizer: Arc<Tokenizer>,
    optimizer: AdamW,
    schedule: Schedule,
    train: Dataset,
    eval: Option<Dataset>,
    step: u64,
    epoch: u64,
    cursor: usize,
    device: Device,
    /// The directory of `config.model`, which may name a Hugging Face id in the local cache.
    model_dir: PathBuf,
}

/// Reference sequence log-prob sums of one preference example.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RefLogps {
    pub chosen: f32,
    pub rejected: f32,
    pub long_chosen: Option<f32>,
}

/// The chosen, rejected and long-context chosen sequences of preference examples.
#[allow(clippy::type_complexity)]
fn pair_seqs<'a>(
    examples: &'a [Example],
    idx: &[usize],
) -> Result<(
    Vec<&'a TokenSequence>,
    Vec<&'a TokenSequence>,
    Vec<Option<&'a TokenSequence>>,
)> {
    let mut chosen = Vec::new();
    let mut rejected = Vec::new();
    let mut long = Vec::new();
    for &i in idx {
        match &examples[i] {
            Example::Preference {
                chosen: c,
                rejected: r,
                long_chosen: l,
            } => {
                chosen.push(c);
                rejected.push(r);
                long.push(l.as_ref());
            }
            _ => return Err(TrainError::Invalid("expected preference examples".into())),
        }
    }
    Ok((chosen, rejected, long))
}

/// The long-context chosen sequences of a batch, all present, or a clear error.
fn all_long<'a>(
    long: Vec<Option<&'a TokenSequence>>,
    idx: &[usize],
) -> Result<Vec<&'a TokenSequence>> {
    long.into_iter()
        .zip(idx)
        .map(|(l, i)| {
            l.ok_or_else(|| {
                TrainError::Invalid(format!(
                    "example {} has no `prompt_long`, which this objective needs",
                    i + 1
                ))
            })
        })
        .collect()
}

/// One micro-batch: the main sequences and, for long-context objectives, the long ones.
struct MicroBatch {
    main: TrainBatch,
    completion_lens: Vec<usize>,
    long: Option<(TrainBatch, Vec<usize>)>,
}

impl MicroBatch {
    fn tokens(&self) -> usize {
        self.main.lengths.iter().sum::<usize>()
            + self
                .long
                .as_ref()
                .map_or(0, |(l, _)| l.lengths.iter().sum::<usize>())
    }
}

impl Trainer {
    /// Loads the starting checkpoint and data; resumes from the newest checkpoint in
    /// `output_dir` when there is one.
    pub fn new(config: TrainConfig, objective: Objective) -> Result<Self> {
        Self::build(config, objective, None)
    }

    /// A preference trainer with a recipe's own pairwise objective instead of the configured
    /// DPO loss (the data, loop, checkpoints and resume are the same).
    pub fn new_pairwise(config: TrainConfig, objective: Arc<dyn PairObjective>) -> Result<Self> {
        Self::build(config, Objective::Dpo, Some(objective))
    }

    fn build(
        config: TrainConfig,
        objective: Objective,
        pair_objective: Option<Arc<dyn PairObjective>>,
    ) -> Result<Self> {
        config.validate()?;
        let model_dir = qforge_model::resolve_model_path(&config.model)?;
        config.check_objective(objective)?;
        let device = qforge_util::parse_device(&config.device)?;
        let dtype = config.compute_dtype()?;
        if dtype != DType::F32 && device.is_cpu() {
            tracing::warn!("training in {dtype:?} on CPU: expect it to be much slower than f32");
        }
        let tokenizer = Arc::new(Tokenizer::from_dir(&model_dir)?);
        let kind = match objective {
            Objective::Sft => DatasetKind::Sft,
            Objective::Dpo | Objective::Rm => DatasetKind::Preference,
        };
        let options = DataOptions {
            max_length: config.max_length,
            max_long_length: config.max_long_length,
            skip_malformed: config.skip_malformed,
        };
        let train = Dataset::load(&config.data, kind, &tokenizer, &options)?;
        let eval = config
            .eval_data
            .as_ref()
            .map(|p| Dataset::load(p, kind, &tokenizer, &options))
            .transpose()?;
        let resume_from = latest_checkpoint(&config.output_dir)?;
        // LoRA checkpoints hold only the adapter: the base always comes from `model`.
        let weights_dir = match (&resume_from, config.lora_r) {
            (Some(dir), 0) => dir.clone(),
            _ => model_dir.clone(),
        };
        let allowed: &[&str] = if objective == Objective::Rm {
            &["score."]
        } else {
            &[]
        };
        let base = Model::load(&weights_dir, dtype, &device, allowed)?;
        let score = match objective {
            Objective::Rm => Some(load_or_init_score(
                &weights_dir,
                base.config(),
                config.seed,
                dtype,
                &device,
            )?),
            _ => None,
        };
        let (model, mut vars) = match config.lora() {
            None => base.into_trainable()?,
            Some(lora) => {
                let mut model = base;
                let vars = match &resume_from {
                    Some(dir) => {
                        qforge_model::load_adapter(&mut model, dir)?;
                        qforge_model::lora::lora_vars(&mut model)?
                    }
                    None => qforge_model::add_lora(&mut model, &lora, config.seed)?,
                };
                (model, vars)
            }
        };
        if let Some(s) = &score {
            vars.push(("score.weight".into(), s.clone()));
        }
        let mut optimizer = AdamW::new(
            vars.clone(),
            AdamWConfig {
                weight_decay: config.weight_decay,
                ..AdamWConfig::default()
            },
        )?;
        let pair_objective: Option<Arc<dyn PairObjective>> = match (objective, pair_objective) {
            (Objective::Dpo, Some(p)) => Some(p),
            (Objective::Dpo, None) => Some(Arc::new(DpoObjective {
                kind: config.dpo_kind()?,
                beta: config.beta,
                rpo_alpha: config.rpo_alpha,
            })),
            _ => None,
        };
        if pair_objective
            .as_ref()
            .is_some_and(|p| p.needs_long_context())
            && config.gradient_checkpointing
        {
            return Err(TrainError::Invalid(
                "gradient_checkpointing is not supported with long-context objectives yet".into(),
            ));
        }
        let mut trainer = Self {
            objective,
            model,
            vars,
            score,
            pair_objective,
            reference: None,
            eval_reference: None,
            tokenizer,
            optimizer: AdamW::new(Vec::new(), AdamWConfig::default())?,
            schedule: Schedule::Constant,
            train,
            eval,
            step: 0,
            epoch: 0,
            cursor: 0,
            device,
            config,
            model_dir,
        };
        trainer.schedule = trainer.make_schedule()?;
        if trainer
            .pair_objective
            .as_ref()
            .is_some_and(|p| p.needs_reference())
        {
            // The reference is always the starting model, also when resuming.
            let reference = Model::load(&trainer.model_dir, dtype, &trainer.device, &[])?;
            trainer.reference = Some(reference_logps(
                &reference,
                &trainer.train,
                trainer.pad_id(),
                &trainer.device,
            )?);
            if let Some(eval) = &trainer.eval {
                trainer.eval_reference = Some(reference_logps(
                    &reference,
                    eval,
                    trainer.pad_id(),
                    &trainer.device,
                )?);
            }
        }
        if let Some(dir) = resume_from {
            let state: TrainerState = read_json(&dir.join("trainer_state.json"))?;
            optimizer.load_state(&dir.join("optimizer.safetensors"))?;
            trainer.step = state.step;
            trainer.epoch = state.epoch;
            trainer.cursor = state.cursor;
            tracing::info!("resumed from {} at step {}", dir.display(), state.step);
        }
        trainer.optimizer = optimizer;
        Ok(trainer)
    }

    fn pad_id(&self) -> u32 {
        self.tokenizer.pad_token_id()
    }

    fn batches_per_epoch(&self) -> usize {
        self.train.examples.len().div_ceil(self.config.batch_size)
    }

    pub fn total_steps(&self) -> u64 {
        self.config.max_steps.unwrap_or(
            self.config.epochs
                * (self.batches_per_epoch() as u64).div_ceil(self.config.grad_accum as u64),
        )
    }

    fn make_schedule(&self) -> Result<Schedule> {
        Schedule::from_name(
            &self.config.schedule,
            self.config.warmup_steps,
            self.total_steps(),
        )
    }

    pub fn step(&self) -> u64 {
        self.step
    }

    pub fn model(&self) -> &Model {
        &self.model
    }

    pub fn tokenizer(&self) -> &Arc<Tokenizer> {
        &self.tokenizer
    }

    /// The padded batch of a micro-step: SFT rows, or `[chosen; rejected]` for pairs.
    fn micro_batch(&self, data: &Dataset, idx: &[usize]) -> Result<MicroBatch> {
        let mut long = None;
        let seqs: Vec<&TokenSequence> = match self.objective {
            Objective::Sft => idx
                .iter()
                .map(|&i| match &data.examples[i] {
                    Example::Sft(s) => Ok(s),
                    _ => Err(TrainError::Invalid("expected SFT examples".into())),
                })
                .collect::<Result<_>>()?,
            Objective::Dpo | Objective::Rm => {
                let (chosen, rejected, long_chosen) = pair_seqs(&data.examples, idx)?;
                if self
                    .pair_objective
                    .as_ref()
                    .is_some_and(|p| p.needs_long_context())
                {
                    long = Some(all_long(long_chosen, idx)?);
                }
                chosen.into_iter().chain(rejected).collect()
            }
        };
        let lens = |seqs: &[&TokenSequence]| seqs.iter().map(|s| s.completion_len()).collect();
        Ok(MicroBatch {
            main: TrainBatch::new(&seqs, self.pad_id(), &self.device)?,
            completion_lens: lens(&seqs),
            long: long
                .map(|l| -> Result<_> {
                    Ok((TrainBatch::new(&l, self.pad_id(), &self.device)?, lens(&l)))
                })
                .transpose()?,
        })
    }

    /// Policy (and reference) log-probs of one side of a pair batch.
    fn seq_logps(
        &self,
        lp: &losses::CompletionLogps,
        lens: &[usize],
        range: std::ops::Range<usize>,
        reference: Option<Vec<f32>>,
    ) -> Result<SeqLogps> {
        let n = range.len();
        let vec = |v: Vec<f32>| Tensor::from_vec(v, n, &self.device);
        Ok(SeqLogps {
            sum: lp.sum.narrow(0, range.start, n)?,
            mean: lp.mean.narrow(0, range.start, n)?,
            len: vec(lens[range].iter().map(|&l| l as f32).collect())?,
            reference: reference.map(vec).transpose()?,
        })
    }

    /// The objective's loss from the final hidden states of a micro-batch, and (accuracy,
    /// margin) for pairwise objectives.
    fn head_loss(
        &self,
        hidden: &Tensor,
        long_hidden: Option<&Tensor>,
        mb: &MicroBatch,
        idx: &[usize],
        reference: Option<&[RefLogps]>,
    ) -> Result<(Tensor, Option<(f64, f64)>)> {
        let n = idx.len();
        let tb = &mb.main;
        match self.objective {
            Objective::Sft => {
                let logits = self.model.logits(hidden)?;
                Ok((
                    losses::sft_loss(&logits, &tb.batch.input_ids, &tb.completion_mask)?,
                    None,
                ))
            }
            Objective::Dpo => {
                let objective = self
                    .pair_objective
                    .as_ref()
                    .ok_or_else(|| TrainError::Invalid("no pairwise objective".into()))?;
                let logits = self.model.logits(hidden)?;
                let lp = losses::completion_logps(
                    &logits,
                    &tb.batch.input_ids,
                    &tb.completion_mask,
                    1.0,
                )?;
                let refs = |f: fn(&RefLogps) -> Option<f32>| -> Result<Option<Vec<f32>>> {
                    let Some(reference) = reference.filter(|_| objective.needs_reference()) else {
                        return Ok(None);
                    };
                    idx.iter()
                        .map(|&i| {
                            f(&reference[i]).ok_or_else(|| {
                                TrainError::Invalid(format!(
                                    "example {} has no long-context reference log-prob",
                                    i + 1
                                ))
                            })
                        })
                        .collect::<Result<Vec<_>>>()
                        .map(Some)
                };
                let lens = &mb.completion_lens;
                let chosen = self.seq_logps(&lp, lens, 0..n, refs(|r| Some(r.chosen))?)?;
                let rejected = self.seq_logps(&lp, lens, n..2 * n, refs(|r| Some(r.rejected))?)?;
                let long_chosen = match (long_hidden, &mb.long) {
                    (Some(h), Some((ltb, llens))) => {
                        let llp = losses::completion_logps(
                            &self.model.logits(h)?,
                            &ltb.batch.input_ids,
                            &ltb.completion_mask,
                            1.0,
                        )?;
                        Some(self.seq_logps(&llp, llens, 0..n, refs(|r| r.long_chosen)?)?)
                    }
                    _ => None,
                };
                // Token-mean NLL of the chosen completions (RPO's SFT term).
                let chosen_tokens = lp.mask.narrow(0, 0, n)?.sum_all()?.maximum(1f32)?;
                let chosen_nll = (lp.per_token.narrow(0, 0, n)?.sum_all()?.neg()? / chosen_tokens)?;
                let out = objective.loss(&PairLogps {
                    chosen,
                    rejected,
                    long_chosen,
                    chosen_nll,
                })?;
                Ok((out.loss, Some((out.accuracy, out.margin))))
            }
            Objective::Rm => {
                let rewards = self.rewards_from_hidden(hidden, &tb.lengths)?;
                let (rw, rl) = (rewards.narrow(0, 0, n)?, rewards.narrow(0, n, n)?);
                let loss = losses::bradley_terry_loss(
                    &rw,
                    &rl,
                    None,
                    self.config.center_rewards_coefficient,
                )?;
                let acc = rw
                    .gt(&rl)?
                    .to_dtype(DType::F32)?
                    .mean_all()?
                    .to_scalar::<f32>()? as f64;
                let margin = (&rw - &rl)?.mean_all()?.to_scalar::<f32>()? as f64;
                Ok((loss, Some((acc, margin))))
            }
        }
    }

    /// Loss of a micro-batch (no gradients), (accuracy, margin), and tokens seen.
    #[allow(clippy::type_complexity)]
    fn micro_loss(
        &self,
        data: &Dataset,
        reference: Option<&[RefLogps]>,
        idx: &[usize],
    ) -> Result<(Tensor, Option<(f64, f64)>, usize)> {
        let mb = self.micro_batch(data, idx)?;
        let hidden = self.model.forward(&mb.main.batch, None)?;
        let long_hidden = self.long_forward(&mb)?;
        let (loss, pair) = self.head_loss(&hidden, long_hidden.as_ref(), &mb, idx, reference)?;
        Ok((loss, pair, mb.tokens()))
    }

    fn long_forward(&self, mb: &MicroBatch) -> Result<Option<Tensor>> {
        mb.long
            .as_ref()
            .map(|(ltb, _)| Ok(self.model.forward(&ltb.batch, None)?))
            .transpose()
    }

    /// Like [`Self::micro_loss`], plus the gradients of `loss · scale`, through per-layer
    /// recomputation when `gradient_checkpointing` is set.
    #[allow(clippy::type_complexity)]
    fn micro_backward(
        &self,
        data: &Dataset,
        reference: Option<&[RefLogps]>,
        idx: &[usize],
        scale: f64,
    ) -> Result<(
        f64,
        Option<(f64, f64)>,
        usize,
        candle_core::backprop::GradStore,
    )> {
        let mb = self.micro_batch(data, idx)?;
        let tokens = mb.tokens();
        if !self.config.gradient_checkpointing {
            let hidden = self.model.forward(&mb.main.batch, None)?;
            let long_hidden = self.long_forward(&mb)?;
            let (loss, pair) =
                self.head_loss(&hidden, long_hidden.as_ref(), &mb, idx, reference)?;
            let value = loss.to_scalar::<f32>()? as f64;
            return Ok((value, pair, tokens, (loss * scale)?.backward()?));
        }
        let pair = std::cell::Cell::new(None);
        let head = |hidden: &Tensor| -> candle_core::Result<Tensor> {
            let (loss, p) = self
                .head_loss(hidden, None, &mb, idx, reference)
                .map_err(candle_core::Error::wrap)?;
            pair.set(p);
            loss * scale
        };
        let extra: Vec<&Tensor> = self.score.iter().map(|s| s.as_tensor()).collect();
        let (loss, grads) = self
            .model
            .checkpointed_backward(&mb.main.batch, &extra, head)?;
        Ok((
            loss.to_scalar::<f32>()? as f64 / scale,
            pair.get(),
            tokens,
            grads,
        ))
    }

    /// Reward-model scores `[N]` read at each sequence's last token (last-non-pad pooling).
    pub fn rewards(&self, seqs: &[&TokenSequence]) -> Result<Tensor> {
        let tb = TrainBatch::new(seqs, self.pad_id(), &self.device)?;
        self.rewards_from_hidden(&self.model.forward(&tb.batch, None)?, &tb.lengths)
    }

    fn rewards_from_hidden(&self, hidden: &Tensor, lengths: &[usize]) -> Result<Tensor> {
        let score = self
            .score
            .as_ref()
            .ok_or_else(|| TrainError::Invalid("not a reward model".into()))?;
        Ok(qforge_model::reward_model::last_token_rewards(
            hidden,
            lengths,
            score.as_tensor(),
        )?)
    }

    /// Runs to the end, calling `on_step` after every optimiser step and `on_eval` after each
    /// evaluation. Metrics go to `output_dir/metrics.jsonl`; checkpoints as configured.
    pub fn train(
        &mut self,
        on_step: impl FnMut(&StepReport),
        on_eval: impl FnMut(&EvalReport),
    ) -> Result<Vec<StepReport>> {
        self.train_until(None, on_step, on_eval)
    }

    /// Like [`Self::train`], but returns right after step `stop_after` without saving, as if
    /// the process were killed there (tests use it to check resuming).
    pub fn train_until(
        &mut self,
        stop_after: Option<u64>,
        mut on_step: impl FnMut(&StepReport),
        mut on_eval: impl FnMut(&EvalReport),
    ) -> Result<Vec<StepReport>> {
        let mut metrics = MetricsLog::open(&self.config.output_dir)?;
        let total = self.total_steps();
        let vars: Vec<Var> = self.vars.iter().map(|(_, v)| v.clone()).collect();
        let var_refs: Vec<&Var> = vars.iter().collect();
        let mut reports = Vec::new();
        let mut batches = self
            .train
            .batches(self.config.batch_size, self.config.seed, self.epoch);
        while self.step < total {
            let started = Instant::now();
            let mut acc = GradAccumulator::default();
            let (mut loss_sum, mut tokens, mut pairwise, mut pair_count) =
                (0f64, 0usize, (0f64, 0f64), 0usize);
            let mut finite = true;
            for _ in 0..self.config.grad_accum {
                if self.cursor >= batches.len() {
                    self.epoch += 1;
                    self.cursor = 0;
                    batches =
                        self.train
                            .batches(self.config.batch_size, self.config.seed, self.epoch);
                }
                let idx = batches[self.cursor].clone();
                self.cursor += 1;
                let scale = 1.0 / self.config.grad_accum as f64;
                let (value, pair, n_tokens, grads) =
                    self.micro_backward(&self.train, self.reference.as_deref(), &idx, scale)?;
                if !value.is_finite() {
                    finite = false;
                    continue;
                }
                loss_sum += value * scale;
                tokens += n_tokens;
                if let Some((a, m)) = pair {
                    pairwise = (pairwise.0 + a, pairwise.1 + m);
                    pair_count += 1;
                }
                acc.add(grads, &var_refs)?;
            }
            let lr = self.config.lr * self.schedule.factor(self.step);
            let mut grad_norm = f64::NAN;
            let mut skipped = !finite;
            if finite && let Some(mut grads) = acc.take() {
                match clip_grad_norm(&mut grads, &var_refs, self.config.max_grad_norm) {
                    Ok(norm) => {
                        grad_norm = norm;
                        self.optimizer.step(&grads, lr)?;
                    }
                    Err(TrainError::NonFiniteGradient(_)) => skipped = true,
                    Err(e) => return Err(e),
                }
            }
            if skipped {
                tracing::warn!(
                    "step {}: non-finite loss or gradient, update skipped",
                    self.step + 1
                );
            }
            self.step += 1;
            let report = StepReport {
                step: self.step,
                total_steps: total,
                epoch: self.epoch,
                loss: loss_sum,
                lr,
                grad_norm,
                tokens_per_s: tokens as f64 / started.elapsed().as_secs_f64().max(1e-9),
                accuracy: (pair_count > 0).then(|| pairwise.0 / pair_count as f64),
                margin: (pair_count > 0).then(|| pairwise.1 / pair_count as f64),
                skipped,
            };
            metrics.append(&report)?;
            on_step(&report);
            reports.push(report);
            if stop_after == Some(self.step) {
                return Ok(reports);
            }
            if self.eval.is_some() && step_due(self.step, total, self.config.eval_steps) {
                let eval = self.evaluate()?;
                metrics.append(&json!({"eval": eval}))?;
                on_eval(&eval);
            }
            if step_due(self.step, total, self.config.save_steps) {
                self.save_checkpoint()?;
            }
        }
        Ok(reports)
    }

    /// Mean loss (and pairwise accuracy) over the evaluation set, without gradients.
    pub fn evaluate(&self) -> Result<EvalReport> {
        let data = self
            .eval
            .as_ref()
            .ok_or_else(|| TrainError::Invalid("no eval_data configured".into()))?;
        self.evaluate_on(data, self.eval_reference.as_deref())
    }

    pub fn evaluate_on(
        &self,
        data: &Dataset,
        reference: Option<&[RefLogps]>,
    ) -> Result<EvalReport> {
        let idx: Vec<usize> = (0..data.examples.len()).collect();
        let (mut loss, mut acc, mut n) = (0f64, 0f64, 0usize);
        for chunk in idx.chunks(self.config.batch_size) {
            let (l, pair, _) = self.micro_loss(data, reference, chunk)?;
            loss += l.to_scalar::<f32>()? as f64 * chunk.len() as f64;
            if let Some((a, _)) = pair {
                acc += a * chunk.len() as f64;
            }
            n += chunk.len();
        }
        Ok(EvalReport {
            step: self.step,
            loss: loss / n as f64,
            accuracy: (self.objective != Objective::Sft).then(|| acc / n as f64),
        })
    }

    /// Writes the current model (HF layout, tokenizer files included) to `dir`.
    pub fn save_model(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).with_path(dir)?;
        if let Some(lora) = self.config.lora() {
            qforge_model::save_adapter(
                &self.model,
                &lora,
                dir,
                &self.config.model.to_string_lossy(),
            )?;
            return Ok(qforge_model::copy_tokenizer_files(&self.model_dir, dir)?);
        }
        match &self.score {
            None => self.model.save_pretrained(dir, 5 << 30)?,
            Some(score) => {
                let mut tensors = self.model.named_tensors();
                tensors.push(("score.weight".into(), score.as_tensor().clone()));
                save_safetensors(dir, &tensors, 5 << 30)?;
                let config = qforge_model::reward_model::one_label_head_config(
                    self.model.config(),
                    "SequenceClassification",
                );
                write_json_atomic(&dir.join("config.json"), &config)?;
            }
        }
        qforge_model::copy_tokenizer_files(&self.model_dir, dir)?;
        Ok(())
    }

    /// `output_dir/checkpoint-STEP`: model, optimiser state and trainer state, written to a
    /// temporary directory and renamed, so a crash never leaves a half checkpoint. Keeps the
    /// newest `save_total_limit`.
    pub fn save_checkpoint(&self) -> Result<PathBuf> {
        let state = TrainerState {
            step: self.step,
            epoch: self.epoch,
            cursor: self.cursor,
            objective: self.objective,
            config: self.config.clone(),
        };
        write_checkpoint(
            &self.config.output_dir,
            self.step,
            self.config.save_total_limit,
            &self.optimizer,
            &serde_json::to_value(&state).expect("serialisable"),
            |tmp| self.save_model(tmp),
        )
    }
}

/// `output_dir/metrics.jsonl`, opened for appending (a resumed run continues it): one JSON
/// value per line.
pub struct MetricsLog {
    path: PathBuf,
    file: std::fs::File,
}

impl MetricsLog {
    /// Creates `dir` if needed and opens `dir/metrics.jsonl`.
    pub fn open(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).with_path(dir)?;
        let path = dir.join("metrics.jsonl");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_path(&path)?;
        Ok(Self { path, file })
    }

    pub fn append(&mut self, value: &impl Serialize) -> Result<()> {
        let line = serde_json::to_string(value).expect("serialisable");
        Ok(writeln!(self.file, "{line}").with_path(&self.path)?)
    }
}

/// Whether step `step` of `total` is due for a periodic action (a checkpoint, an evaluation):
/// every `every` steps (0: only) at the last.
pub fn step_due(step: u64, total: u64, every: u64) -> bool {
    step == total || (every > 0 && step.is_multiple_of(every))
}

/// Writes `out/checkpoint-STEP` (the model by `write_model`, the optimiser state, then
/// `trainer_state.json`, which marks it complete) into a temporary directory that is then
/// renamed, so a crash never leaves a half checkpoint; keeps the newest `keep`.
pub fn write_checkpoint<E: From<TrainError> + From<qforge_util::IoError>>(
    out: &Path,
    step: u64,
    keep: usize,
    optimizer: &AdamW,
    state: &Value,
    write_model: impl FnOnce(&Path) -> std::result::Result<(), E>,
) -> std::result::Result<PathBuf, E> {
    let final_dir = out.join(format!("checkpoint-{step}"));
    qforge_util::write_dir_atomic(&final_dir, |tmp| {
        write_model(tmp)?;
        optimizer.save_state(&tmp.join("optimizer.safetensors"))?;
        write_json_atomic(&tmp.join(TRAINER_STATE), state)?;
        Ok::<_, E>(())
    })?;
    prune_checkpoints(out, TRAINER_STATE, keep)?;
    Ok(final_dir)
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).with_path(path)?;
    serde_json::from_str(&text).map_err(|e| TrainError::Invalid(format!("{}: {e}", path.display())))
}

/// Completed checkpoints in `dir`, oldest first.
/// The file a complete SFT/DPO/RM checkpoint ends with.
pub const TRAINER_STATE: &str = "trainer_state.json";

pub fn latest_checkpoint(dir: &Path) -> Result<Option<PathBuf>> {
    Ok(list_checkpoints(dir, TRAINER_STATE).pop().map(|(_, p)| p))
}

/// The `score` head `[1, hidden]` in the model's dtype: from the checkpoint, else freshly drawn.
fn load_or_init_score(
    dir: &Path,
    config: &ModelConfig,
    seed: u64,
    dtype: DType,
    device: &Device,
) -> Result<Var> {
    let store = qforge_model::WeightStore::open_dir(dir)?;
    if store.contains("score.weight") {
        return Ok(Var::from_tensor(&store.load(
            "score.weight",
            &[1, config.hidden_size],
            dtype,
            device,
        )?)?);
    }
    // transformers initialises the head with N(0, initializer_range = 0.02).
    let mut rng = SplitMix(seed ^ 0x5C0E);
    let data: Vec<f32> = (0..config.hidden_size)
        .map(|_| rng.normal(0.02) as f32)
        .collect();
    Ok(Var::from_tensor(
        &Tensor::from_vec(data, (1, config.hidden_size), device)?.to_dtype(dtype)?,
    )?)
}

/// Sequence log-prob sums of every preference example under `model`: chosen, rejected, and the
/// long-context chosen sequence when the example has one.
pub fn reference_logps(
    model: &Model,
    data: &Dataset,
    pad_id: u32,
    device: &Device,
) -> Result<Vec<RefLogps>> {
    let sums = |seqs: &[&TokenSequence]| -> Result<Vec<f32>> {
        let tb = TrainBatch::new(seqs, pad_id, device)?;
        let logits = model.logits(&model.forward(&tb.batch, None)?)?;
        Ok(
            losses::completion_logps(&logits, &tb.batch.input_ids, &tb.completion_mask, 1.0)?
                .sum
                .to_vec1::<f32>()?,
        )
    };
    let idx: Vec<usize> = (0..data.examples.len()).collect();
    let mut out = Vec::with_capacity(idx.len());
    for chunk in idx.chunks(8) {
        let (chosen, rejected, long) = pair_seqs(&data.examples, chunk)?;
        let all: Vec<&TokenSequence> = chosen.iter().chain(rejected.iter()).copied().collect();
        let pair = sums(&all)?;
        let present: Vec<&TokenSequence> = long.iter().flatten().copied().collect();
        let mut long_sums = if present.is_empty() {
            Vec::new()
        } else {
            sums(&present)?
        }
        .into_iter();
        let n = chunk.len();
        for i in 0..n {
            out.push(RefLogps {
                chosen: pair[i],
                rejected: pair[n + i],
                long_chosen: long[i].and_then(|_| long_sums.next()),
            });
        }
    }
    Ok(out)
}

/// `config` with `key=value` overrides (values parsed as JSON, else taken as strings).
pub fn apply_overrides(config: &TrainConfig, overrides: &[String]) -> Result<TrainConfig> {
    Ok(qforge_util::settings::with_sets(config.clone(), overrides)?)
}

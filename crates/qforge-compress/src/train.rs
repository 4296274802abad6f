//! `qforge train cprs`: trains a compressor (QwenLong-CPRS, arXiv 2505.18092). Samples (from JSONL or the
//! synthetic builders) are cut into windows exactly as at inference, each window labelled from
//! the gold facts ([`crate::labels`]); a step is one batch of windows through the hybrid model,
//! the summed critic + BIOE loss ([`crate::loss`]), global-norm clipping and AdamW. Checkpoints
//! (`output_dir/checkpoint-STEP`: the compressor in the released layout, optimiser and trainer
//! state) are written to a temporary directory and renamed; a killed run resumes from the
//! newest with the same sequence of batches.

use crate::CompressError;
use qforge_util::WithPath;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use candle_core::{DType, Device, Tensor, Var};
use qforge_model::weights::{WeightStore, save_safetensors};
use qforge_model::{Batch, Model, Tokenizer};
use qforge_train::optim::{AdamW, AdamWConfig, Schedule, clip_grad_norm};
use qforge_train::trainer::{MetricsLog, TRAINER_STATE, step_due, write_checkpoint};
use qforge_util::SplitMix;
use qforge_util::{list_checkpoints, write_json_atomic};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::labels::{CriticIds, WindowLabels, drop_outside, window_labels};
use crate::loss::{BioLoss, LossConfig, cprs_loss};
use crate::model::{Compressor, RELEASED_BIDIRECTIONAL_START};
use crate::synthetic::{Haystack, Sample, Task, generate};
use crate::windows::build_windows;

/// Synthetic training data generated at start (seeded; the same on resume).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SyntheticData {
    /// Task names (`niah_single`, `niah_multikey`, `kv`, `vt`, `qa`), drawn in turn.
    pub tasks: Vec<String>,
    pub samples: usize,
    /// Context length in tokens.
    pub tokens: usize,
    /// `noise`, or a directory of `.txt` essays.
    pub haystack: String,
}

impl Default for SyntheticData {
    fn default() -> Self {
        Self {
            tasks: vec!["niah_single".into()],
            samples: 256,
            tokens: 1024,
            haystack: "noise".into(),
        }
    }
}

/// The `[train]` table of a `qforge train cprs` recipe.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CprsTrainConfig {
    /// Starting checkpoint: a Qwen2/Qwen3 model (a fresh `cls_head` is drawn) or a compressor.
    pub model: PathBuf,
    /// JSONL of [`Sample`]s; or `synthetic`.
    pub data: Option<PathBuf>,
    pub synthetic: Option<SyntheticData>,
    pub output_dir: PathBuf,
    /// Tokens per window, prefix included (8192 in the paper).
    pub window: usize,
    /// Windows per optimiser step.
    pub batch_size: usize,
    pub lr: f64,
    pub schedule: String,
    pub warmup_steps: u64,
    pub epochs: u64,
    /// Overrides `epochs` when set.
    pub max_steps: Option<u64>,
    pub weight_decay: f64,
    pub max_grad_norm: f64,
    /// First bidirectional layer (default: the checkpoint's `bidirectional_start`, else 21).
    pub bidirectional_start: Option<usize>,
    /// `ce` or `focal`.
    pub bi_loss_type: String,
    pub focal_gamma: f64,
    /// Class weights of B, I, O, E.
    pub bi_loss_weight: Option<[f32; 4]>,
    /// Critic-loss weights by token text (e.g. `{outside = 0.5}`); other ids weigh 1.
    pub lm_head_weight: BTreeMap<String, f32>,
    pub ignore_lm_head: bool,
    /// Share of outside positions dropped from the loss at each step.
    pub outside_drop: f64,
    pub seed: u64,
    /// Save every N steps (0: only at the end).
    pub save_steps: u64,
    pub save_total_limit: usize,
    pub device: String,
}

impl CprsTrainConfig {
    /// A `qforge train cprs` recipe (TOML; the defaults without `path`) with `--set` overrides.
    pub fn from_recipe(path: Option<&Path>, overrides: &[String]) -> Result<Self> {
        let recipe: Self = match path {
            Some(path) => qforge_util::settings::read_toml(path)?,
            None => Self::default(),
        };
        let config = qforge_util::settings::with_sets(recipe, overrides)?;
        if config.model.as_os_str().is_empty() {
            return Err(CompressError::Invalid(
                "the recipe needs `model` (in --config or via --set model=DIR)".into(),
            ));
        }
        Ok(config)
    }
}

impl Default for CprsTrainConfig {
    fn default() -> Self {
        Self {
            model: PathBuf::new(),
            data: None,
            synthetic: None,
            output_dir: PathBuf::from("runs/cprs"),
            window: 8192,
            batch_size: 8,
            lr: 1e-5,
            schedule: "constant".into(),
            warmup_steps: 0,
            epochs: 3,
            max_steps: None,
            weight_decay: 0.0,
            max_grad_norm: 1.0,
            bidirectional_start: None,
            bi_loss_type: "focal".into(),
            focal_gamma: 2.0,
            bi_loss_weight: None,
            lm_head_weight: BTreeMap::new(),
            ignore_lm_head: false,
            outside_drop: 0.5,
            seed: 42,
            save_steps: 0,
            save_total_limit: 2,
            device: "cpu".into(),
        }
    }
}

type Result<T> = std::result::Result<T, CompressError>;

/// Reads samples from JSONL, checking every fact range against its context.
pub fn read_samples(path: &Path) -> Result<Vec<Sample>> {
    let text = std::fs::read_to_string(path).with_path(path)?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let bad = |message: String| CompressError::BadSample {
            path: path.to_path_buf(),
            line: i + 1,
            message,
        };
        let sample: Sample = serde_json::from_str(line).map_err(|e| bad(e.to_string()))?;
        let chars = sample.context.chars().count();
        if let Some(&[s, e]) = sample.facts.iter().find(|&&[s, e]| s >= e || e > chars) {
            return Err(bad(format!(
                "fact [{s}, {e}) is not a range inside the {chars}-character context"
            )));
        }
        if sample.context.trim().is_empty() {
            return Err(bad("empty context".into()));
        }
        out.push(sample);
    }
    if out.is_empty() {
        return Err(CompressError::Invalid(format!(
            "{}: no samples",
            path.display()
        )));
    }
    Ok(out)
}

/// The samples a config names: its JSONL, or its synthetic tasks (seeded by `seed`).
pub fn training_samples(config: &CprsTrainConfig, tok: &Tokenizer) -> Result<Vec<Sample>> {
    match (&config.data, &config.synthetic) {
        (Some(path), None) => read_samples(path),
        (None, Some(s)) => {
            let tasks = Task::parse_all(&s.tasks)?;
            if tasks.is_empty() {
                return Err(CompressError::Invalid("synthetic.tasks is empty".into()));
            }
            let haystack = Haystack::named(&s.haystack)?;
            let mut rng = SplitMix(config.seed ^ 0xC0DE);
            Ok((0..s.samples)
                .map(|i| generate(tasks[i % tasks.len()], &haystack, tok, s.tokens, &mut rng))
                .collect())
        }
        _ => Err(CompressError::Invalid(
            "set exactly one of `data` (JSONL) and `synthetic`".into(),
        )),
    }
}

/// One labelled window: `prefix + window` ids and their labels.
struct Item {
    ids: Vec<u32>,
    labels: WindowLabels,
}

/// The vocabulary id of a word's first token.
pub fn first_token(tok: &Tokenizer, word: &str) -> Result<u32> {
    tok.encode(word, false)?
        .first()
        .copied()
        .ok_or_else(|| CompressError::Invalid(format!("`{word}` has no tokens")))
}

fn items(samples: &[Sample], tok: &Tokenizer, window: usize) -> Result<Vec<Item>> {
    let outside = first_token(tok, "outside")?;
    let mut out = Vec::new();
    for (i, s) in samples.iter().enumerate() {
        let critic = CriticIds {
            tag: first_token(tok, &s.tag)?,
            outside,
        };
        let (prefix, windows) =
            build_windows(tok, &s.instruction, &s.query, &s.context, window, true)
                .map_err(|e| CompressError::Invalid(format!("sample {}: {e}", i + 1)))?;
        for w in &windows {
            out.push(Item {
                ids: prefix.iter().chain(&w.ids).copied().collect(),
                labels: window_labels(prefix.len(), w, &s.facts, critic),
            });
        }
    }
    Ok(out)
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct TrainerState {
    step: u64,
    epoch: u64,
    cursor: usize,
    config: CprsTrainConfig,
}

/// One optimiser step's numbers (a line of `metrics.jsonl`).
#[derive(Debug, Clone, Serialize)]
pub struct CprsStepReport {
    pub step: u64,
    pub total_steps: u64,
    pub loss: f64,
    pub lm_loss: Option<f64>,
    pub bio_loss: f64,
    pub lr: f64,
    pub grad_norm: f64,
    pub tokens_per_s: f64,
}

pub struct CprsTrainer {
    config: CprsTrainConfig,
    model: Model,
    tokenizer: Arc<Tokenizer>,
    cls_weight: Var,
    cls_bias: Var,
    vars: Vec<(String, Var)>,
    optimizer: AdamW,
    schedule: Schedule,
    loss: LossConfig,
    items: Vec<Item>,
    bidirectional_start: usize,
    step: u64,
    epoch: u64,
    /// The current epoch's window order (derived from the seed and `epoch`).
    order: Vec<usize>,
    cursor: usize,
}

/// The `cls_head` from `dir`, else drawn as transformers initialises a linear layer here
/// (weight N(0, 0.02), bias 0).
fn load_or_init_cls_head(
    dir: &Path,
    hidden: usize,
    seed: u64,
    device: &Device,
) -> Result<(Var, Var)> {
    let store = WeightStore::open_dir(dir)?;
    if store.contains("cls_head.weight") {
        let w = store.load("cls_head.weight", &[4, hidden], DType::F32, device)?;
        let b = store.load("cls_head.bias", &[4], DType::F32, device)?;
        return Ok((Var::from_tensor(&w)?, Var::from_tensor(&b)?));
    }
    let mut rng = SplitMix(seed ^ 0xC15);
    let data: Vec<f32> = (0..4 * hidden).map(|_| rng.normal(0.02) as f32).collect();
    Ok((
        Var::from_tensor(&Tensor::from_vec(data, (4, hidden), device)?)?,
        Var::zeros(4, DType::F32, device)?,
    ))
}

impl CprsTrainer {
    /// Loads the starting model and the data; resumes from the newest checkpoint in
    /// `output_dir` when there is one.
    pub fn new(mut config: CprsTrainConfig) -> Result<Self> {
        config.model = qforge_model::resolve_model_path(&config.model)?;
        if config.window == 0 || config.batch_size == 0 {
            return Err(CompressError::Invalid(
                "window and batch_size must be positive".into(),
            ));
        }
        if !(0.0..1.0).contains(&config.outside_drop) {
            return Err(CompressError::Invalid(format!(
                "outside_drop must be in [0, 1), got {}",
                config.outside_drop
            )));
        }
        let device = qforge_util::parse_device(&config.device)?;
        let tokenizer = Arc::new(Tokenizer::from_dir(&config.model)?);
        let samples = training_samples(&config, &tokenizer)?;
        let items = items(&samples, &tokenizer, config.window)?;
        let resume = list_checkpoints(&config.output_dir, TRAINER_STATE).pop();
        let weights = resume
            .as_ref()
            .map_or(config.model.clone(), |(_, dir)| dir.clone());
        let base = Model::load(&weights, DType::F32, &device, &["cls_head."])?;
        let layers = base.config().num_hidden_layers;
        let hidden = base.config().hidden_size;
        let bidirectional_start = config
            .bidirectional_start
            .or_else(|| {
                base.config()
                    .extra("bidirectional_start")
                    .and_then(|v| v.as_u64())
                    .map(|v| v as usize)
            })
            .unwrap_or(RELEASED_BIDIRECTIONAL_START);
        let (mut model, mut vars) = base.into_trainable()?;
        model.set_bidirectional_top_layers(layers.saturating_sub(bidirectional_start))?;
        let (cls_weight, cls_bias) = load_or_init_cls_head(&weights, hidden, config.seed, &device)?;
        vars.push(("cls_head.weight".into(), cls_weight.clone()));
        vars.push(("cls_head.bias".into(), cls_bias.clone()));
        let mut optimizer = AdamW::new(
            vars.clone(),
            AdamWConfig {
                weight_decay: config.weight_decay,
                ..AdamWConfig::default()
            },
        )?;
        let bio = match config.bi_loss_type.as_str() {
            "ce" => BioLoss::CrossEntropy,
            "focal" => BioLoss::Focal {
                gamma: config.focal_gamma,
            },
            other => {
                return Err(CompressError::Invalid(format!(
                    "unknown bi_loss_type `{other}` (ce, focal)"
                )));
            }
        };
        let lm_vocab_weights = if config.lm_head_weight.is_empty() {
            None
        } else {
            let mut w = vec![1f32; model.config().vocab_size];
            for (word, &weight) in &config.lm_head_weight {
                let id = first_token(&tokenizer, word)? as usize;
                *w.get_mut(id).ok_or_else(|| {
                    CompressError::Invalid(format!("`{word}` maps past the vocabulary"))
                })? = weight;
            }
            Some(w)
        };
        let loss = LossConfig {
            bio,
            bio_class_weights: config.bi_loss_weight,
            lm_vocab_weights,
            ignore_lm_head: config.ignore_lm_head,
        };
        let (mut step, mut epoch, mut cursor) = (0, 0, 0);
        if let Some((_, dir)) = &resume {
            let path = dir.join("trainer_state.json");
            let text = std::fs::read_to_string(&path).with_path(&path)?;
            let state: TrainerState = serde_json::from_str(&text)
                .map_err(|e| CompressError::Invalid(format!("{}: {e}", path.display())))?;
            optimizer.load_state(&dir.join("optimizer.safetensors"))?;
            (step, epoch, cursor) = (state.step, state.epoch, state.cursor);
        }
        let mut trainer = Self {
            schedule: Schedule::Constant,
            config,
            model,
            tokenizer,
            cls_weight,
            cls_bias,
            vars,
            optimizer,
            loss,
            items,
            bidirectional_start,
            step,
            epoch,
            order: Vec::new(),
            cursor,
        };
        trainer.order = trainer.epoch_order(epoch);
        trainer.schedule = Schedule::from_name(
            &trainer.config.schedule,
            trainer.config.warmup_steps,
            trainer.total_steps(),
        )?;
        Ok(trainer)
    }

    pub fn windows(&self) -> usize {
        self.items.len()
    }

    pub fn step(&self) -> u64 {
        self.step
    }

    pub fn total_steps(&self) -> u64 {
        self.config.max_steps.unwrap_or(
            self.config.epochs * self.items.len().div_ceil(self.config.batch_size) as u64,
        )
    }

    /// The window order of an epoch.
    fn epoch_order(&self, epoch: u64) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.items.len()).collect();
        SplitMix(self.config.seed ^ epoch.wrapping_mul(0x9E37)).shuffle(&mut order);
        order
    }

    /// A compressor sharing the current weights, for evaluation between steps.
    pub fn compressor(&self) -> Result<Compressor> {
        let mut model = self.model.clone();
        model.set_differentiable(false);
        Ok(Compressor::from_parts(
            model,
            self.tokenizer.clone(),
            self.cls_weight.as_tensor().clone(),
            self.cls_bias.as_tensor().clone(),
            self.bidirectional_start,
        )?)
    }

    /// One step: a batch of windows, the loss, its gradient and the update.
    fn train_step(&mut self) -> Result<CprsStepReport> {
        let started = Instant::now();
        let mut batch = Vec::with_capacity(self.config.batch_size);
        while batch.len() < self.config.batch_size {
            if self.cursor >= self.order.len() {
                self.epoch += 1;
                self.cursor = 0;
                self.order = self.epoch_order(self.epoch);
            }
            batch.push(self.order[self.cursor]);
            self.cursor += 1;
        }
        let mut rng = SplitMix(self.config.seed ^ (self.step + 1).wrapping_mul(0xD1B5_4A32));
        let width = batch
            .iter()
            .map(|&i| self.items[i].ids.len())
            .max()
            .unwrap_or(0);
        let (mut bio, mut lm) = (Vec::new(), Vec::new());
        for &i in &batch {
            let mut labels = self.items[i].labels.clone();
            drop_outside(&mut labels, self.config.outside_drop, &mut rng);
            let pad = width - labels.bio.len();
            bio.extend(
                labels
                    .bio
                    .into_iter()
                    .chain(std::iter::repeat_n(crate::loss::IGNORE, pad)),
            );
            lm.extend(
                labels
                    .lm
                    .into_iter()
                    .chain(std::iter::repeat_n(crate::loss::IGNORE, pad)),
            );
        }
        let rows: Vec<&[u32]> = batch
            .iter()
            .map(|&i| self.items[i].ids.as_slice())
            .collect();
        let tokens: usize = rows.iter().map(|r| r.len()).sum();
        let input = Batch::right_padded(&rows, self.tokenizer.pad_token_id(), self.model.device())?;
        let hidden = self.model.forward(&input, None)?;
        let bio_logits = hidden
            .broadcast_matmul(&self.cls_weight.as_tensor().t()?)?
            .broadcast_add(self.cls_bias.as_tensor())?;
        let lm_logits = if self.config.ignore_lm_head {
            None
        } else {
            Some(self.model.logits(&hidden)?)
        };
        let parts = cprs_loss(lm_logits.as_ref(), &bio_logits, &lm, &bio, &self.loss)?;
        let value = parts.total.to_scalar::<f32>()? as f64;
        let lr = self.config.lr * self.schedule.factor(self.step);
        let mut grad_norm = f64::NAN;
        if value.is_finite() {
            let mut grads = parts.total.backward()?;
            let vars: Vec<&Var> = self.vars.iter().map(|(_, v)| v).collect();
            match clip_grad_norm(&mut grads, &vars, self.config.max_grad_norm) {
                Ok(norm) => {
                    grad_norm = norm;
                    self.optimizer.step(&grads, lr)?;
                }
                Err(qforge_train::TrainError::NonFiniteGradient(_)) => {
                    tracing::warn!(
                        "step {}: non-finite gradient, update skipped",
                        self.step + 1
                    )
                }
                Err(e) => return Err(e.into()),
            }
        } else {
            tracing::warn!("step {}: non-finite loss, update skipped", self.step + 1);
        }
        self.step += 1;
        Ok(CprsStepReport {
            step: self.step,
            total_steps: self.total_steps(),
            loss: value,
            lm_loss: parts
                .lm
                .map(|t| t.to_scalar::<f32>().map(f64::from))
                .transpose()?,
            bio_loss: parts.bio.to_scalar::<f32>()? as f64,
            lr,
            grad_norm,
            tokens_per_s: tokens as f64 / started.elapsed().as_secs_f64().max(1e-9),
        })
    }

    /// Trains to the end (or through step `stop_after`, without saving, as if killed there),
    /// calling `on_step` after each step. Returns the newest checkpoint.
    pub fn train(
        &mut self,
        stop_after: Option<u64>,
        mut on_step: impl FnMut(&CprsStepReport, &Self),
    ) -> Result<Option<PathBuf>> {
        let mut metrics = MetricsLog::open(&self.config.output_dir)?;
        let total = self.total_steps();
        let mut last = None;
        while self.step < total {
            let report = self.train_step()?;
            metrics.append(&report)?;
            on_step(&report, self);
            if stop_after == Some(self.step) {
                return Ok(None);
            }
            if step_due(self.step, total, self.config.save_steps) {
                last = Some(self.save_checkpoint()?);
            }
        }
        Ok(last)
    }

    /// Writes the compressor in the released layout (backbone, `lm_head`, `cls_head`, config
    /// with `bidirectional_start` and the loss settings, tokenizer files) to `dir`.
    pub fn save_compressor(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).with_path(dir)?;
        let mut tensors = self.model.named_tensors();
        tensors.push((
            "cls_head.weight".into(),
            self.cls_weight.as_tensor().clone(),
        ));
        tensors.push(("cls_head.bias".into(), self.cls_bias.as_tensor().clone()));
        save_safetensors(dir, &tensors, 5 << 30)?;
        let mut config = self.model.config().to_json();
        config["architectures"] = json!(["Qwen2ForCausalLMandBIO"]);
        config["bidirectional_start"] = json!(self.bidirectional_start);
        config["bi_label_type"] = json!("BIOE");
        config["bi_loss_type"] = json!(self.config.bi_loss_type);
        config["bi_loss_weight"] = json!(self.config.bi_loss_weight);
        config["ignore_lm_head"] = json!(self.config.ignore_lm_head);
        if let Some(w) = &self.loss.lm_vocab_weights {
            let listed: serde_json::Map<String, serde_json::Value> = w
                .iter()
                .enumerate()
                .filter(|&(_, &v)| v != 1.0)
                .map(|(i, &v)| (i.to_string(), json!(v)))
                .collect();
            config["lm_head_weight"] = json!(listed);
        }
        write_json_atomic(&dir.join("config.json"), &config)?;
        qforge_model::copy_tokenizer_files(&self.config.model, dir)?;
        Ok(())
    }

    /// `output_dir/checkpoint-STEP`, written whole or not at all; keeps the newest
    /// `save_total_limit`.
    pub fn save_checkpoint(&self) -> Result<PathBuf> {
        let state = TrainerState {
            step: self.step,
            epoch: self.epoch,
            cursor: self.cursor,
            config: self.config.clone(),
        };
        write_checkpoint(
            &self.config.output_dir,
            self.step,
            self.config.save_total_limit,
            &self.optimizer,
            &serde_json::to_value(&state).expect("serialisable"),
            |tmp| self.save_compressor(tmp),
        )
    }
}

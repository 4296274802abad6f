//! The GRPO loop (verl's `ray_trainer` step, QwenLong-L1, arXiv 2505.17667): sample G responses per
//! prompt with the embedded engine, score them, keep informative groups (none / DAPO dynamic
//! sampling / DUPO), compute group advantages, recompute the old log-probs with the trainer,
//! then optimise the clipped surrogate over mini-batches × epochs (KL to a frozen reference only
//! when its coefficient is non-zero).
//!
//! The engine shares the policy's weight tensors (`Model` clones are reference-counted and the
//! optimiser updates in place), so every rollout sees the current policy without a copy.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use candle_core::{DType, Device, Tensor, Var};
use qforge_engine::{Engine, FinishReason, SamplingParams};
use qforge_model::{ChatOptions, GenerationConfig, Model, Tokenizer};
use qforge_train::TrainError;
use qforge_train::data::TrainBatch;
use qforge_train::losses;
use qforge_train::optim::{AdamW, AdamWConfig, clip_grad_norm};
use qforge_train::policy::{
    AdvantageNorm, Aggregation, ClipConfig, KlEstimator, aggregate, clipped_policy_loss,
    group_advantages, kl_penalty,
};
use qforge_train::trainer::{MetricsLog, step_due};

use crate::error::{Result, RlError};
use qforge_util::{SplitMix, WithPath};
use serde::{Deserialize, Serialize};

use crate::groups::{DynamicSampler, dupo_fill, informative};
use crate::reward::{RewardFn, Task};
use crate::tools::{ToolConfig, ToolEnv};
use crate::visual::{MediaSource, VisionPolicy, VisualPlan, plan_batch, with_embeddings};
use qforge_model::vl::{ProcessorConfig, Vision, VisualInputs, VlModel};

/// A prompt and its response as one row of ids with its loss mask: the response learned, the
/// prompt context only.
pub(crate) fn prompt_response_row(prompt: &[u32], response: &[u32]) -> (Vec<u32>, Vec<bool>) {
    let ids = prompt.iter().chain(response).copied().collect();
    let learned = std::iter::repeat_n(false, prompt.len())
        .chain(std::iter::repeat_n(true, response.len()))
        .collect();
    (ids, learned)
}

/// A training batch of (prompt, response) pairs, each response learned.
pub(crate) fn pairs_batch(
    pairs: &[(Vec<u32>, Vec<u32>)],
    pad: u32,
    device: &Device,
) -> Result<TrainBatch> {
    let seqs: Vec<(Vec<u32>, Vec<bool>)> = pairs
        .iter()
        .map(|(p, r)| prompt_response_row(p, r))
        .collect();
    let rows: Vec<(&[u32], &[bool])> = seqs
        .iter()
        .map(|(i, l)| (i.as_slice(), l.as_slice()))
        .collect();
    Ok(TrainBatch::with_loss_masks(&rows, pad, device)?)
}

/// verl's constant schedule with warm-up over `ratio × total` steps (truncated, as verl's `int`).
pub fn warmup_factor(step: u64, ratio: f64, total: u64) -> f64 {
    let warmup = (ratio * total as f64) as u64;
    qforge_train::optim::Schedule::ConstantWithWarmup { warmup }.factor(step)
}

/// Which groups a step trains on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GroupFilter {
    /// Every group (uninformative ones have zero advantage anyway).
    #[default]
    None,
    /// DAPO: generate further rounds of prompts until the batch has enough informative groups.
    Dapo,
    /// DUPO: drop uninformative groups, duplicate informative ones of the same batch.
    Dupo,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GrpoConfig {
    pub model: PathBuf,
    pub output_dir: PathBuf,
    /// G: responses per prompt.
    pub group_size: usize,
    pub prompts_per_step: usize,
    pub max_new_tokens: usize,
    pub temperature: f32,
    pub top_p: f32,
    pub lr: f64,
    /// Linear warm-up over this share of `max_steps` from 0, then constant (verl's
    /// `lr_warmup_steps_ratio`; 0: no warm-up).
    pub lr_warmup_ratio: f64,
    pub max_steps: u64,
    /// Optimiser updates per step = mini_batches × epochs (1 × 1: pure on-policy).
    pub mini_batches: usize,
    pub epochs: usize,
    pub clip_low: f64,
    pub clip_high: f64,
    /// `token-mean` (DAPO), `seq-mean-token-mean` (GRPO) or `seq-mean-token-sum`.
    pub aggregation: String,
    /// KL to the starting policy (low-variance k3); 0 skips the reference entirely.
    pub kl_coef: f64,
    /// Entropy bonus coefficient (subtracted from the loss).
    pub entropy_coef: f64,
    pub filter: GroupFilter,
    /// DAPO: generation rounds per step at most.
    pub max_rounds: usize,
    /// A rollout counts as correct (for the filters and accuracy) at this reward or above.
    pub correct_threshold: f64,
    pub max_grad_norm: f64,
    pub seed: u64,
    /// Save the policy every N steps (0: only at the end).
    pub save_steps: u64,
    /// Prompts longer than this many tokens are middle-truncated (0: no cap).
    pub max_prompt_tokens: usize,
    /// DAPO's soft overlong punishment: responses longer than `max_new_tokens −
    /// overlong_buffer` lose up to `overlong_factor` (0 buffer: off).
    pub overlong_buffer: usize,
    pub overlong_factor: f64,
    /// ε in the group advantage `(r − mean) / (std + ε)` (verl 1e-6; TRL, MUSEG 1e-4).
    pub advantage_eps: f64,
    /// Log-probs of the loss from logits divided by the rollout temperature (verl) or not
    /// (TRL 0.15, MUSEG's trainer).
    pub temperature_in_loss: bool,
    /// A vision-language policy trains its vision tower too (false: frozen).
    pub train_vision: bool,
}

impl Default for GrpoConfig {
    fn default() -> Self {
        Self {
            model: PathBuf::new(),
            output_dir: PathBuf::from("runs/grpo"),
            group_size: 8,
            prompts_per_step: 16,
            max_new_tokens: 256,
            temperature: 1.0,
            top_p: 1.0,
            lr: 1e-6,
            lr_warmup_ratio: 0.0,
            max_steps: 100,
            mini_batches: 1,
            epochs: 1,
            clip_low: 0.2,
            clip_high: 0.28,
            aggregation: "token-mean".into(),
            kl_coef: 0.0,
            entropy_coef: 0.0,
            filter: GroupFilter::None,
            max_rounds: 3,
            correct_threshold: 1.0,
            max_grad_norm: 1.0,
            seed: 42,
            save_steps: 0,
            max_prompt_tokens: 0,
            overlong_buffer: 0,
            overlong_factor: 1.0,
            advantage_eps: 1e-6,
            temperature_in_loss: true,
            train_vision: true,
        }
    }
}

impl GrpoConfig {
    fn aggregation(&self) -> Result<Aggregation> {
        Ok(match self.aggregation.as_str() {
            "token-mean" => Aggregation::TokenMean,
            "seq-mean-token-mean" => Aggregation::SeqMeanTokenMean,
            "seq-mean-token-sum" => Aggregation::SeqMeanTokenSum,
            other => {
                return Err(RlError::Invalid(format!(
                    "aggregation `{other}`: token-mean, seq-mean-token-mean or seq-mean-token-sum"
                )));
            }
        })
    }
}

/// What one step did.
#[derive(Debug, Clone, Serialize)]
pub struct GrpoStepReport {
    pub step: u64,
    pub reward_mean: f64,
    pub reward_std: f64,
    /// Fraction of rollouts at or above `correct_threshold`.
    pub accuracy: f64,
    /// Groups trained on / groups generated.
    pub kept_group_fraction: f64,
    pub generation_rounds: usize,
    pub loss: f64,
    pub clip_fraction: f64,
    /// Tokens where dual-clip bounded a negative advantage.
    pub clip_fraction_lower: f64,
    /// Mean token entropy of the policy on the trained responses (first mini-batch).
    pub entropy: f64,
    pub approx_kl: f64,
    /// Generated tokens per rollout (tool observations not counted).
    pub response_tokens_mean: f64,
    /// Assistant turns per rollout (1 without a tool environment).
    pub turns_mean: f64,
    /// Tokens generated this step (all rounds).
    pub rollout_tokens: usize,
    /// Distinct informative groups trained on (duplicates counted once).
    pub useful_groups: usize,
    /// Sequence tokens run through forward + backward (all updates).
    pub train_tokens: usize,
    pub rollout_seconds: f64,
    pub train_seconds: f64,
    /// Reward calls that failed so far (e.g. a judge that was down; the rule reward stood in).
    pub reward_failures: usize,
    /// No informative group (or a non-finite loss): no update.
    pub skipped: bool,
}

/// What one optimisation pass did.
#[derive(Debug, Clone, Serialize)]
pub struct UpdateStats {
    pub loss: f64,
    pub clip_fraction: f64,
    pub clip_fraction_lower: f64,
    /// Mean token entropy on the first mini-batch.
    pub entropy: f64,
    pub approx_kl: f64,
    /// Sequence tokens run through forward + backward.
    pub train_tokens: usize,
    /// Optimiser steps taken (0: every mini-batch was skipped as non-finite).
    pub updates: usize,
}

impl Default for UpdateStats {
    fn default() -> Self {
        Self {
            loss: f64::NAN,
            clip_fraction: 0.0,
            clip_fraction_lower: 0.0,
            entropy: f64::NAN,
            approx_kl: 0.0,
            train_tokens: 0,
            updates: 0,
        }
    }
}

/// One sampled response: its tokens (with the stop token when generation stopped) and text.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub ids: Vec<u32>,
    pub text: String,
}

/// A sequence a recipe scored itself, for [`GrpoTrainer::update_scored`]: the policy learns
/// every response token with this advantage.
#[derive(Debug, Clone, PartialEq)]
pub struct ScoredSequence {
    pub prompt: Vec<u32>,
    pub response: Vec<u32>,
    pub advantage: f64,
}

/// A sequence with one advantage per response token (PPO's GAE advantages), for
/// [`GrpoTrainer::update_token_scored`].
#[derive(Debug, Clone, PartialEq)]
pub struct TokenScoredSequence {
    pub prompt: Vec<u32>,
    pub response: Vec<u32>,
    /// One per response token.
    pub advantages: Vec<f64>,
}

/// One rollout: the prompt's tokens, the response's (with tool observations between turns),
/// which response tokens the policy generated, its reward.
#[derive(Clone)]
struct Rollout {
    prompt: Vec<u32>,
    response: Vec<u32>,
    /// Per response token: generated by the policy (learned) or an observation (context only).
    learned: Vec<bool>,
    reward: f64,
    /// Assistant turns.
    turns: usize,
    /// The task's images and video (shared by the group).
    visual: Option<Arc<VisualInputs>>,
}

impl Rollout {
    fn generated_tokens(&self) -> usize {
        self.learned.iter().filter(|&&l| l).count()
    }
}

/// A rollout being generated turn by turn.
struct Episode {
    task: usize,
    rollout: Rollout,
    /// The assistant turns' texts so far.
    turns: Vec<String>,
    done: bool,
}

pub struct GrpoTrainer {
    config: GrpoConfig,
    model: Model,
    vars: Vec<(String, Var)>,
    engine: Engine,
    reference: Option<Model>,
    optimizer: AdamW,
    tokenizer: Arc<Tokenizer>,
    tasks: Vec<Task>,
    reward: Arc<dyn RewardFn>,
    order: Vec<usize>,
    cursor: usize,
    step: u64,
    /// Per task: (sum of group-mean rewards, groups) over the run.
    task_rewards: Vec<(f64, usize)>,
    /// Prompts middle-truncated to `max_prompt_tokens`.
    truncated: usize,
    /// Rollouts through an OpenAI-compatible server instead of the embedded engine.
    remote: Option<Remote>,
    /// Multi-turn rollouts: the environment that answers turns, and the budgets.
    tools: Option<(Arc<dyn ToolEnv>, ToolConfig)>,
    /// The checkpoint this run resumed from.
    resumed_from: Option<PathBuf>,
    /// A vision-language policy's tower and special tokens.
    vision: Option<VisionPolicy>,
    /// Where tasks' visual inputs come from.
    media: Option<Arc<dyn MediaSource>>,
}

/// Written last into a checkpoint: its presence marks the checkpoint complete.
const STATE_FILE: &str = "grpo_state.json";

/// What a checkpoint needs besides weights and optimiser state to continue a run exactly.
#[derive(Serialize, Deserialize)]
struct RunState {
    step: u64,
    cursor: usize,
    order: Vec<usize>,
    task_rewards: Vec<(f64, usize)>,
    truncated: usize,
}

/// Per prompt, each rollout's response ids and text.
type RemoteGroups = Vec<Vec<(Vec<u32>, String)>>;

/// A rollout server and the step whose weights it holds.
struct Remote {
    backend: qforge_engine::RemoteBackend,
    runtime: tokio::runtime::Runtime,
    /// The trainer step whose policy the server has (None: not pushed yet).
    pushed: Option<u64>,
}

impl GrpoTrainer {
    pub fn new(config: GrpoConfig, tasks: Vec<Task>, reward: Arc<dyn RewardFn>) -> Result<Self> {
        if config.group_size < 2 || config.prompts_per_step == 0 || tasks.is_empty() {
            return Err(RlError::Invalid(
                "GRPO needs group_size >= 2, prompts_per_step >= 1 and some tasks".into(),
            ));
        }
        Self::build(config, tasks, reward)
    }

    /// A trainer for a recipe that runs its own rollouts and scores them itself (SPELL's
    /// three roles): it [`sample`](Self::sample)s from the policy, [`update_scored`](Self::update_scored)s
    /// it, and checkpoints; [`step`](Self::step) is not available.
    pub fn policy(config: GrpoConfig) -> Result<Self> {
        struct Unused;
        impl RewardFn for Unused {
            fn score(&self, _: &Task, _: &str) -> f64 {
                0.0
            }
        }
        Self::build(config, Vec::new(), Arc::new(Unused))
    }

    fn build(mut config: GrpoConfig, tasks: Vec<Task>, reward: Arc<dyn RewardFn>) -> Result<Self> {
        config.model = qforge_model::resolve_model_path(&config.model)?;
        config.aggregation()?;
        let device = Device::Cpu;
        // Resume: the newest checkpoint of this run, else the starting model.
        let resume = qforge_util::list_checkpoints(&config.output_dir, STATE_FILE)
            .pop()
            .map(|(_, p)| p);
        let is_vl = qforge_model::ModelConfig::from_file(&config.model.join("config.json"))?
            .is_vision_language();
        let (model, vars, reference, vision) = if is_vl {
            let start = VlModel::load(&config.model, DType::F32, &device)?;
            let reference = (config.kl_coef != 0.0).then(|| start.clone());
            let base = match &resume {
                Some(dir) => VlModel::load(dir, DType::F32, &device)?,
                None => start,
            };
            let (policy, vars) = base.into_trainable_with(config.train_vision)?;
            let vision = VisionPolicy {
                tower: policy.vision,
                reference: reference.as_ref().map(|r| r.vision.clone()),
                tokens: policy.tokens,
            };
            (policy.text, vars, reference.map(|r| r.text), Some(vision))
        } else {
            let start = Model::load(&config.model, DType::F32, &device, &[])?;
            let reference = (config.kl_coef != 0.0).then(|| start.clone());
            let base = match &resume {
                Some(dir) => Model::load(dir, DType::F32, &device, &[])?,
                None => start,
            };
            let (model, vars) = base.into_trainable()?;
            (model, vars, reference, None)
        };
        let mut rollout_model = model.clone();
        rollout_model.set_differentiable(false);
        let tokenizer = Arc::new(Tokenizer::from_dir(&config.model)?);
        let stop = GenerationConfig::from_dir(&config.model)?.stop_token_ids(&tokenizer);
        let mut engine = Engine::new(rollout_model, tokenizer.clone()).with_stop_token_ids(stop);
        if let Some(v) = &vision {
            let mut tower = v.tower.clone();
            tower.set_differentiable(false);
            engine = engine.with_vision(Vision {
                tower,
                tokens: v.tokens,
                processor: ProcessorConfig::from_dir(&config.model)?,
            });
        }
        let mut optimizer = AdamW::new(vars.clone(), AdamWConfig::default())?;
        let n_tasks = tasks.len();
        let mut order: Vec<usize> = (0..tasks.len()).collect();
        SplitMix(config.seed).shuffle(&mut order);
        let mut state = RunState {
            step: 0,
            cursor: 0,
            order,
            task_rewards: vec![(0.0, 0); n_tasks],
            truncated: 0,
        };
        if let Some(dir) = &resume {
            optimizer.load_state(&dir.join("optimizer.safetensors"))?;
            let path = dir.join(STATE_FILE);
            let text = std::fs::read_to_string(&path).with_path(&path)?;
            state = serde_json::from_str(&text).map_err(|e| RlError::file(&path, e))?;
            if state.order.len() != n_tasks {
                return Err(RlError::Invalid(format!(
                    "{}: the run had {} tasks, now {n_tasks}",
                    dir.display(),
                    state.order.len()
                )));
            }
        }
        let RunState {
            step,
            cursor,
            order,
            task_rewards,
            truncated,
        } = state;
        Ok(Self {
            resumed_from: resume,
            config,
            model,
            vars,
            engine,
            reference,
            optimizer,
            tokenizer,
            tasks,
            reward,
            task_rewards,
            order,
            cursor,
            step,
            truncated,
            remote: None,
            tools: None,
            vision,
            media: None,
        })
    }

    pub fn model(&self) -> &Model {
        &self.model
    }

    /// The tasks' images and video: a vision-language policy sees each task's inputs in its
    /// rollouts and its updates.
    pub fn with_media(mut self, media: Arc<dyn MediaSource>) -> Result<Self> {
        if self.vision.is_none() {
            return Err(RlError::Invalid(format!(
                "{} is a text-only model; visual tasks need a vision-language checkpoint",
                self.config.model.display()
            )));
        }
        self.media = Some(media);
        Ok(self)
    }

    /// The rollout engine (it shares the policy's weights): for evaluations between steps.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The rollout engine's vision side (None for a text-only policy).
    pub fn vision(&self) -> Option<&Vision> {
        self.engine.vision()
    }

    /// Multi-turn rollouts: each turn that `env` answers is followed by its observation (in
    /// context, out of the loss) and another turn, within `config`'s budgets. The reward scores
    /// the last turn.
    pub fn with_tools(mut self, env: Arc<dyn ToolEnv>, config: ToolConfig) -> Self {
        self.tools = Some((env, config));
        self
    }

    /// Samples rollouts from an OpenAI-compatible server (`qforge serve --allow-weight-reload`,
    /// SGLang) instead of the embedded engine. Before each step's rollouts the current policy is
    /// written to `output_dir/rollout-policy` and the server is told to load it
    /// (`/update_weights_from_disk`); responses come back as text and are re-tokenized; old
    /// log-probs are recomputed here as always.
    pub fn with_remote_rollouts(mut self, backend: qforge_engine::RemoteBackend) -> Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(|source| RlError::Runtime {
                what: "the rollout client's runtime",
                source,
            })?;
        self.remote = Some(Remote {
            backend,
            runtime,
            pushed: None,
        });
        Ok(self)
    }

    /// Remote rollouts: push the policy if the server is behind, then G completions per prompt
    /// (requests in flight together). Returns each rollout's response ids and text.
    fn remote_generate(
        &mut self,
        prompts: &[Vec<u32>],
        n: usize,
        stream: u64,
        temperature: f32,
    ) -> Result<RemoteGroups> {
        let push_dir = self.config.output_dir.join("rollout-policy");
        let needs_push = self
            .remote
            .as_ref()
            .is_some_and(|r| r.pushed != Some(self.step));
        if needs_push {
            self.save(&push_dir)?;
        }
        let cfg = self.config.clone();
        let step = self.step;
        let tokenizer = self.tokenizer.clone();
        let remote = self.remote.as_mut().expect("remote mode");
        let backend = remote.backend.clone();
        let out = remote.runtime.block_on(async move {
            if needs_push {
                backend
                    .update_weights_from_disk(&push_dir)
                    .await
                    .map_err(|source| RlError::Backend {
                        context: "pushing weights to the rollout server",
                        source,
                    })?;
            }
            // Raw completions of the prompt ids the policy trains on: the text exactly as
            // generated, reasoning included (a chat reply would come back split into
            // `reasoning_content` and `content` by the server's parsers).
            let mut handles = Vec::with_capacity(prompts.len());
            for (i, prompt_ids) in prompts.iter().enumerate() {
                let sampling = serde_json::json!({
                    "n": n,
                    "temperature": temperature,
                    "top_p": cfg.top_p,
                    "max_tokens": cfg.max_new_tokens,
                    "seed": cfg.seed ^ (step << 32) ^ (stream << 24) ^ ((i as u64) << 8),
                });
                let sampling = sampling.as_object().expect("object").clone();
                let (backend, prompt_ids) = (backend.clone(), prompt_ids.clone());
                handles.push(tokio::spawn(async move {
                    backend.complete_ids(&prompt_ids, &sampling).await
                }));
            }
            let mut all = Vec::with_capacity(handles.len());
            for h in handles {
                let choices = h
                    .await
                    .map_err(|e| RlError::Invalid(format!("a rollout task panicked: {e}")))?
                    .map_err(|source| RlError::Backend {
                        context: "rollout",
                        source,
                    })?;
                let mut group = Vec::with_capacity(choices.len());
                for (text, finish_reason) in choices {
                    let mut ids = tokenizer.encode(&text, false)?;
                    if finish_reason == "stop" {
                        ids.extend(tokenizer.eos_token_id());
                    }
                    group.push((ids, text));
                }
                all.push(group);
            }
            Ok::<_, RlError>(all)
        })?;
        if let Some(r) = self.remote.as_mut() {
            r.pushed = Some(self.step);
        }
        Ok(out)
    }

    pub fn config(&self) -> &GrpoConfig {
        &self.config
    }

    pub fn tokenizer(&self) -> &Arc<Tokenizer> {
        &self.tokenizer
    }

    /// Steps taken so far (restored on resume).
    pub fn step_count(&self) -> u64 {
        self.step
    }

    /// The checkpoint this run resumed from, if any.
    pub fn resumed_from(&self) -> Option<&std::path::Path> {
        self.resumed_from.as_deref()
    }

    /// A recipe's step is done: the next samples and checkpoint belong to the next step.
    pub fn advance_step(&mut self) {
        self.step += 1;
    }

    /// The prompt ids of a one-turn conversation with `user` as the user's message, ready for
    /// the assistant's reply (the model's chat template).
    pub fn encode_user(&self, user: &str) -> Result<Vec<u32>> {
        self.encode_prompt(&[serde_json::json!({"role": "user", "content": user})])
    }

    /// The prompt ids of a conversation, ready for the assistant's reply.
    fn encode_prompt(&self, messages: &[serde_json::Value]) -> Result<Vec<u32>> {
        let text = self
            .tokenizer
            .apply_chat_template(messages, &ChatOptions::generation())?;
        Ok(self.tokenizer.encode(&text, false)?)
    }

    /// `n` samples per prompt from the current policy (the embedded engine, or the rollout
    /// server when one is set), at the configured temperature, top-p and `max_new_tokens`.
    /// `stream` tells calls within one step apart, so each draws its own seeds.
    pub fn sample(
        &mut self,
        prompts: &[Vec<u32>],
        n: usize,
        stream: u64,
    ) -> Result<Vec<Vec<Sample>>> {
        let temperature = self.config.temperature;
        self.sample_at(prompts, n, stream, temperature)
    }

    /// One greedy response per prompt (evaluation).
    pub fn sample_greedy(&mut self, prompts: &[Vec<u32>]) -> Result<Vec<Sample>> {
        let groups = self.sample_at(prompts, 1, u64::from(u32::MAX), 0.0)?;
        Ok(groups.into_iter().filter_map(|mut g| g.pop()).collect())
    }

    fn sample_at(
        &mut self,
        prompts: &[Vec<u32>],
        n: usize,
        stream: u64,
        temperature: f32,
    ) -> Result<Vec<Vec<Sample>>> {
        if prompts.is_empty() || n == 0 {
            return Ok(vec![Vec::new(); prompts.len()]);
        }
        if self.remote.is_some() {
            let groups = self.remote_generate(prompts, n, stream, temperature)?;
            return Ok(groups
                .into_iter()
                .map(|g| {
                    g.into_iter()
                        .map(|(ids, text)| Sample { ids, text })
                        .collect()
                })
                .collect());
        }
        let mut requests = Vec::with_capacity(prompts.len() * n);
        for (p, prompt) in prompts.iter().enumerate() {
            for k in 0..n {
                let mut request = self
                    .engine
                    .request(prompt.clone(), self.config.max_new_tokens);
                request.sampling = SamplingParams {
                    temperature,
                    top_p: self.config.top_p,
                    seed: Some(
                        self.config.seed
                            ^ (self.step << 32)
                            ^ (stream << 24)
                            ^ ((p as u64) << 8)
                            ^ k as u64,
                    ),
                    ..SamplingParams::default()
                };
                requests.push(request);
            }
        }
        let outputs = self
            .engine
            .generate(requests, |_| {})
            .map_err(|source| RlError::Engine {
                context: "rollout",
                source,
            })?;
        let mut groups: Vec<Vec<Sample>> = Vec::with_capacity(prompts.len());
        for (j, out) in outputs.into_iter().enumerate() {
            if j % n == 0 {
                groups.push(Vec::with_capacity(n));
            }
            groups.last_mut().expect("pushed").push(Sample {
                ids: out.token_ids(),
                text: out.text,
            });
        }
        Ok(groups)
    }

    /// One optimisation pass over sequences the caller scored: each response token is learned
    /// with its sequence's advantage (the prompt is context only).
    pub fn update_scored(&mut self, seqs: &[ScoredSequence]) -> Result<UpdateStats> {
        self.update_scored_with_visual(seqs, &[])
    }

    /// [`update_scored`](Self::update_scored) where sequence `i` sees `visual[i]` (its prompt's
    /// placeholders already expanded).
    pub fn update_scored_with_visual(
        &mut self,
        seqs: &[ScoredSequence],
        visual: &[Option<Arc<VisualInputs>>],
    ) -> Result<UpdateStats> {
        if !visual.is_empty() && visual.len() != seqs.len() {
            return Err(RlError::Invalid(format!(
                "{} visual inputs for {} sequences",
                visual.len(),
                seqs.len()
            )));
        }
        if seqs.is_empty() {
            return Ok(UpdateStats::default());
        }
        if seqs.iter().any(|s| !s.advantage.is_finite()) {
            return Err(RlError::Invalid("an advantage is not finite".into()));
        }
        let rows: Vec<(Vec<u32>, Vec<bool>)> = seqs
            .iter()
            .map(|s| prompt_response_row(&s.prompt, &s.response))
            .collect();
        let advantages: Vec<Vec<f64>> = rows
            .iter()
            .zip(seqs)
            .map(|((ids, _), s)| vec![s.advantage; ids.len()])
            .collect();
        self.update(&rows, &advantages, visual)
    }

    /// One optimisation pass where each response token has its own advantage (PPO).
    pub fn update_token_scored(&mut self, seqs: &[TokenScoredSequence]) -> Result<UpdateStats> {
        if seqs.is_empty() {
            return Ok(UpdateStats::default());
        }
        if let Some(i) = seqs
            .iter()
            .position(|s| s.advantages.len() != s.response.len())
        {
            return Err(RlError::Invalid(format!(
                "sequence {i}: {} advantages for {} response tokens",
                seqs[i].advantages.len(),
                seqs[i].response.len()
            )));
        }
        if seqs
            .iter()
            .flat_map(|s| &s.advantages)
            .any(|a| !a.is_finite())
        {
            return Err(RlError::Invalid("an advantage is not finite".into()));
        }
        let rows: Vec<(Vec<u32>, Vec<bool>)> = seqs
            .iter()
            .map(|s| prompt_response_row(&s.prompt, &s.response))
            .collect();
        let advantages: Vec<Vec<f64>> = seqs
            .iter()
            .map(|s| {
                std::iter::repeat_n(0.0, s.prompt.len())
                    .chain(s.advantages.iter().copied())
                    .collect()
            })
            .collect();
        self.update(&rows, &advantages, &[])
    }

    /// Per response token, its log-probability under `model` (the policy when `None`) at the
    /// rollout temperature, for (prompt, response) pairs: PPO's old and reference log-probs.
    pub fn response_logps(
        &self,
        model: Option<&Model>,
        pairs: &[(Vec<u32>, Vec<u32>)],
    ) -> Result<Vec<Vec<f64>>> {
        let model = model.unwrap_or(&self.model);
        let pad = self.tokenizer.pad_token_id();
        let device = self.model.device().clone();
        let mut out = Vec::with_capacity(pairs.len());
        for chunk in pairs.chunks(self.config.prompts_per_step.max(1)) {
            let tb = pairs_batch(chunk, pad, &device)?;
            let lp: Vec<Vec<f32>> = self.logps(model, None, &tb)?.0.detach().to_vec2()?;
            for ((p, r), row) in chunk.iter().zip(lp) {
                // Index j scores token j + 1.
                out.push(
                    row[p.len() - 1..p.len() - 1 + r.len()]
                        .iter()
                        .map(|&x| x as f64)
                        .collect(),
                );
            }
        }
        Ok(out)
    }

    /// Mean reward of each task over the groups it had so far (`None`: never sampled).
    pub fn mean_rewards(&self) -> Vec<Option<f64>> {
        self.task_rewards
            .iter()
            .map(|&(s, n)| (n > 0).then(|| s / n as f64))
            .collect()
    }

    /// Prompts middle-truncated to `max_prompt_tokens` so far.
    pub fn truncated_prompts(&self) -> usize {
        self.truncated
    }

    fn next_prompts(&mut self, n: usize) -> Vec<usize> {
        (0..n)
            .map(|_| {
                if self.cursor == self.order.len() {
                    self.cursor = 0;
                    SplitMix(self.config.seed ^ self.step).shuffle(&mut self.order);
                }
                self.cursor += 1;
                self.order[self.cursor - 1]
            })
            .collect()
    }

    /// G rollouts for each task, scored. With a tool environment each rollout is an episode of
    /// turns: all live episodes generate their next turn as one batch, the environment answers
    /// each, and its answer joins the context unlearned.
    fn rollouts(&mut self, tasks: &[usize], round: usize) -> Result<Vec<Vec<Rollout>>> {
        if self.remote.is_some() {
            if self.tools.is_some() {
                return Err(RlError::Invalid(
                    "multi-turn tool rollouts run on the embedded engine only".into(),
                ));
            }
            return self.remote_rollouts(tasks, round);
        }
        let g = self.config.group_size;
        let mut episodes = Vec::with_capacity(tasks.len() * g);
        for &t in tasks {
            let mut ids = self.encode_prompt(&self.tasks[t].messages)?;
            let visual = self.task_visual(t)?;
            if let Some(v) = &visual {
                let vision = self.engine.vision().expect("media needs a vision tower");
                ids = vision.expand(&ids, v)?;
            } else if self.config.max_prompt_tokens > 0 && ids.len() > self.config.max_prompt_tokens
            {
                // (A visual prompt is never cut: its placeholders must match its inputs.)
                ids = crate::curriculum::middle_truncate(&ids, self.config.max_prompt_tokens);
                self.truncated += 1;
            }
            for _ in 0..g {
                episodes.push(Episode {
                    task: t,
                    rollout: Rollout {
                        prompt: ids.clone(),
                        response: Vec::new(),
                        learned: Vec::new(),
                        reward: 0.0,
                        turns: 0,
                        visual: visual.clone(),
                    },
                    turns: Vec::new(),
                    done: false,
                });
            }
        }
        let (max_turns, budget) = match &self.tools {
            Some((_, c)) => (c.max_turns.max(1), c.max_response_tokens),
            None => (1, usize::MAX),
        };
        let stop_strings = self
            .tools
            .as_ref()
            .map(|(env, _)| env.stop_strings())
            .unwrap_or_default();
        let max_context = self.model.config().max_position_embeddings;
        for turn in 0..max_turns {
            let live: Vec<usize> = (0..episodes.len()).filter(|&e| !episodes[e].done).collect();
            if live.is_empty() {
                break;
            }
            let requests = live
                .iter()
                .map(|&e| {
                    let r = &episodes[e].rollout;
                    let context: Vec<u32> = r.prompt.iter().chain(&r.response).copied().collect();
                    let room = budget.saturating_sub(r.response.len());
                    let mut request = self
                        .engine
                        .request(context, self.config.max_new_tokens.min(room));
                    request.visual = r.visual.clone();
                    request.stop.stop_strings = stop_strings.clone();
                    request.sampling = SamplingParams {
                        temperature: self.config.temperature,
                        top_p: self.config.top_p,
                        seed: Some(
                            self.config.seed
                                ^ ((turn as u64) << 48)
                                ^ (self.step << 32)
                                ^ ((round as u64) << 24)
                                ^ (((e / g) as u64) << 8)
                                ^ (e % g) as u64,
                        ),
                        ..SamplingParams::default()
                    };
                    request
                })
                .collect();
            let outputs =
                self.engine
                    .generate(requests, |_| {})
                    .map_err(|source| RlError::Engine {
                        context: "rollout",
                        source,
                    })?;
            for (&e, out) in live.iter().zip(outputs) {
                let ep = &mut episodes[e];
                let mut ids = out.token_ids();
                if let Some(v) = &self.vision {
                    // A generated image or video placeholder has no pixels behind it: stripped,
                    // as MUSEG's trainer strips video pads from vLLM's outputs.
                    ids.retain(|&t| t != v.tokens.image && t != v.tokens.video);
                }
                ep.rollout
                    .learned
                    .extend(std::iter::repeat_n(true, ids.len()));
                ep.rollout.response.extend(ids);
                ep.rollout.turns += 1;
                ep.turns.push(out.text);
                ep.done = true;
                let Some((env, cfg)) = &self.tools else {
                    continue;
                };
                if turn + 1 == max_turns {
                    continue;
                }
                let Some(observation) = env.observe(&self.tasks[ep.task], &ep.turns) else {
                    continue;
                };
                let mut obs_ids = self.tokenizer.encode(&observation, false)?;
                let observation = if obs_ids.len() > cfg.max_observation_tokens {
                    obs_ids.truncate(cfg.max_observation_tokens);
                    self.tokenizer.decode(&obs_ids, false)?
                } else {
                    observation
                };
                let closed = matches!(out.finish_reason, FinishReason::StopToken(_));
                let obs_ids = self
                    .tokenizer
                    .encode(&crate::tools::observation_text(&observation, closed), false)?;
                let used = ep.rollout.response.len() + obs_ids.len();
                // Room for at least one more generated token, in the budget and the context.
                if used < budget && ep.rollout.prompt.len() + used + 1 < max_context {
                    ep.rollout
                        .learned
                        .extend(std::iter::repeat_n(false, obs_ids.len()));
                    ep.rollout.response.extend(obs_ids);
                    ep.done = false;
                }
            }
        }
        // The reward reads the final turn: where the answer is.
        let items: Vec<(&Task, &str)> = episodes
            .iter()
            .map(|ep| {
                let last = ep.turns.last().map_or("", String::as_str);
                (&self.tasks[ep.task], last)
            })
            .collect();
        let rewards = self.reward.score_batch(&items);
        let mut groups: Vec<Vec<Rollout>> = Vec::with_capacity(tasks.len());
        for (j, (ep, reward)) in episodes.into_iter().zip(rewards).enumerate() {
            let mut rollout = ep.rollout;
            rollout.reward = reward + self.overlong(rollout.generated_tokens());
            if j % g == 0 {
                groups.push(Vec::with_capacity(g));
            }
            groups.last_mut().expect("pushed").push(rollout);
        }
        for (group, &t) in groups.iter().zip(tasks) {
            let mean = group.iter().map(|r| r.reward).sum::<f64>() / g as f64;
            self.task_rewards[t].0 += mean;
            self.task_rewards[t].1 += 1;
        }
        Ok(groups)
    }

    /// A task's visual inputs, from the media source.
    fn task_visual(&self, task: usize) -> Result<Option<Arc<VisualInputs>>> {
        match &self.media {
            Some(m) => m.visual(task),
            None => Ok(None),
        }
    }

    fn remote_rollouts(&mut self, tasks: &[usize], round: usize) -> Result<Vec<Vec<Rollout>>> {
        if self.media.is_some() {
            return Err(RlError::Invalid(
                "rollouts with images or video run on the embedded engine only".into(),
            ));
        }
        let g = self.config.group_size;
        let mut prompts = Vec::with_capacity(tasks.len());
        for &t in tasks {
            prompts.push(self.encode_prompt(&self.tasks[t].messages)?);
        }
        let temperature = self.config.temperature;
        let responses = self.remote_generate(&prompts, g, round as u64, temperature)?;
        let mut groups = Vec::with_capacity(tasks.len());
        for ((&t, prompt_ids), group) in tasks.iter().zip(&prompts).zip(responses) {
            if group.len() != g {
                return Err(RlError::Invalid(format!(
                    "the rollout server returned {} choices for n = {g}",
                    group.len()
                )));
            }
            let items: Vec<(&Task, &str)> = group
                .iter()
                .map(|(_, text)| (&self.tasks[t], text.as_str()))
                .collect();
            let mut rewards = self.reward.score_batch(&items);
            for (r, (ids, _)) in rewards.iter_mut().zip(&group) {
                *r += self.overlong(ids.len());
            }
            let mean = rewards.iter().sum::<f64>() / g as f64;
            self.task_rewards[t].0 += mean;
            self.task_rewards[t].1 += 1;
            groups.push(
                group
                    .into_iter()
                    .zip(rewards)
                    .map(|((ids, _), reward)| Rollout {
                        prompt: prompt_ids.clone(),
                        learned: vec![true; ids.len()],
                        response: ids,
                        reward,
                        turns: 1,
                        visual: None,
                    })
                    .collect(),
            );
        }
        Ok(groups)
    }

    fn overlong(&self, tokens: usize) -> f64 {
        crate::reward::overlong_penalty(
            tokens,
            self.config.max_new_tokens,
            self.config.overlong_buffer,
            self.config.overlong_factor,
        )
    }

    fn correct(&self, group: &[Rollout]) -> Vec<bool> {
        group
            .iter()
            .map(|r| r.reward >= self.config.correct_threshold)
            .collect()
    }

    /// Per-token log-probs `[B, T−1]` of a batch's responses and their mask (logits scaled by
    /// the rollout temperature, as verl's actor does).
    /// With a visual plan, `tower` encodes the batch's images and video inside the forward.
    fn logps(
        &self,
        model: &Model,
        visual: Option<(&VisualPlan, &qforge_model::vl::VisionTower)>,
        tb: &TrainBatch,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        let hidden = match visual {
            Some((plan, tower)) => {
                model.forward(&with_embeddings(&tb.batch, plan, tower)?, None)?
            }
            None => model.forward(&tb.batch, None)?,
        };
        let logits = model.logits(&hidden)?;
        let temperature = if self.config.temperature > 0.0 && self.config.temperature_in_loss {
            self.config.temperature as f64
        } else {
            1.0
        };
        let lp = losses::completion_logps(
            &logits,
            &tb.batch.input_ids,
            &tb.completion_mask,
            temperature,
        )?;
        Ok((lp.per_token, lp.mask, logits))
    }

    /// One GRPO step.
    pub fn step(&mut self) -> Result<GrpoStepReport> {
        if self.tasks.is_empty() {
            return Err(RlError::Invalid(
                "this trainer was built with `GrpoTrainer::policy`: its recipe runs the steps"
                    .into(),
            ));
        }
        let started = Instant::now();
        let cfg = self.config.clone();
        let (generated, rounds);
        let mut all_rewards = Vec::new();
        let mut all_correct = 0usize;
        let mut response_tokens = 0usize;
        let mut turns = 0usize;
        let mut account = |groups: &[Vec<Rollout>], correct: &[Vec<bool>]| {
            for (g, c) in groups.iter().zip(correct) {
                all_rewards.extend(g.iter().map(|r| r.reward));
                all_correct += c.iter().filter(|&&x| x).count();
                response_tokens += g.iter().map(Rollout::generated_tokens).sum::<usize>();
                turns += g.iter().map(|r| r.turns).sum::<usize>();
            }
        };
        let selected: Vec<Vec<Rollout>> = match cfg.filter {
            GroupFilter::None | GroupFilter::Dupo => {
                let tasks = self.next_prompts(cfg.prompts_per_step);
                let groups = self.rollouts(&tasks, 0)?;
                rounds = 1;
                generated = groups.len();
                let correct: Vec<Vec<bool>> = groups.iter().map(|g| self.correct(g)).collect();
                account(&groups, &correct);
                if cfg.filter == GroupFilter::None {
                    groups
                } else {
                    let picks = dupo_fill(&correct, cfg.seed ^ self.step);
                    picks.iter().map(|&i| groups[i].clone()).collect()
                }
            }
            GroupFilter::Dapo => {
                let mut sampler = DynamicSampler::new(cfg.prompts_per_step, cfg.max_rounds);
                while sampler.wants_more() {
                    let tasks = self.next_prompts(cfg.prompts_per_step);
                    let groups = self.rollouts(&tasks, sampler.rounds())?;
                    let correct: Vec<Vec<bool>> = groups.iter().map(|g| self.correct(g)).collect();
                    account(&groups, &correct);
                    sampler.push_round(groups.into_iter().zip(correct));
                }
                rounds = sampler.rounds();
                generated = sampler.seen();
                sampler.finish()
            }
        };
        let rollout_seconds = started.elapsed().as_secs_f64();
        let n = all_rewards.len().max(1) as f64;
        let reward_mean = all_rewards.iter().sum::<f64>() / n;
        let reward_std = (all_rewards
            .iter()
            .map(|r| (r - reward_mean).powi(2))
            .sum::<f64>()
            / n)
            .sqrt();
        let mut report = GrpoStepReport {
            step: self.step + 1,
            reward_mean,
            reward_std,
            accuracy: all_correct as f64 / n,
            kept_group_fraction: selected.len() as f64 / generated.max(1) as f64,
            generation_rounds: rounds,
            loss: f64::NAN,
            clip_fraction: 0.0,
            clip_fraction_lower: 0.0,
            entropy: f64::NAN,
            approx_kl: 0.0,
            response_tokens_mean: response_tokens as f64 / n,
            turns_mean: turns as f64 / n,
            rollout_tokens: response_tokens,
            useful_groups: 0,
            train_tokens: 0,
            rollout_seconds,
            train_seconds: 0.0,
            reward_failures: self.reward.failures(),
            skipped: true,
        };
        self.step += 1;
        if all_rewards.iter().any(|r| !r.is_finite()) {
            tracing::warn!("step {}: a reward is not finite; update skipped", self.step);
            report.reward_mean = f64::NAN;
            return Ok(report);
        }
        // Advantages are zero unless some group's rewards differ.
        let informative_left = selected
            .iter()
            .any(|g| g.iter().any(|r| r.reward != g[0].reward));
        if selected.is_empty() || !informative_left {
            return Ok(report);
        }
        let train_started = Instant::now();
        let g = cfg.group_size;
        {
            // Distinct informative groups: duplicates (DUPO) share their first rollout's tokens.
            let mut seen: Vec<&[u32]> = Vec::new();
            for grp in &selected {
                if informative(&self.correct(grp)) && !seen.contains(&grp[0].response.as_slice()) {
                    seen.push(&grp[0].response);
                }
            }
            report.useful_groups = seen.len();
        }
        let rewards: Vec<f64> = selected.iter().flatten().map(|r| r.reward).collect();
        let advantages = group_advantages(
            &rewards,
            g,
            AdvantageNorm::GroupStd {
                eps: cfg.advantage_eps,
            },
        )?;
        let rollouts = selected.iter().flatten();
        let advantages: Vec<Vec<f64>> = rollouts
            .zip(&advantages)
            .map(|(r, &a)| vec![a; r.prompt.len() + r.response.len()])
            .collect();
        // Whole sequences with their loss masks: prompt and observations are context only.
        let seqs: Vec<(Vec<u32>, Vec<bool>)> = selected
            .iter()
            .flatten()
            .map(|r| {
                let ids = r.prompt.iter().chain(&r.response).copied().collect();
                let learned = std::iter::repeat_n(false, r.prompt.len())
                    .chain(r.learned.iter().copied())
                    .collect();
                (ids, learned)
            })
            .collect();
        let visual: Vec<Option<Arc<VisualInputs>>> = selected
            .iter()
            .flatten()
            .map(|r| r.visual.clone())
            .collect();
        let stats = self.update(&seqs, &advantages, &visual)?;
        report.loss = stats.loss;
        report.clip_fraction = stats.clip_fraction;
        report.clip_fraction_lower = stats.clip_fraction_lower;
        report.approx_kl = stats.approx_kl;
        report.entropy = stats.entropy;
        report.train_tokens = stats.train_tokens;
        report.skipped = stats.updates == 0;
        report.train_seconds = train_started.elapsed().as_secs_f64();
        Ok(report)
    }

    /// One optimisation pass (mini_batches × epochs of the clipped surrogate) over whole
    /// sequences with their loss masks and an advantage per token (aligned with the ids; only
    /// learned tokens' count). Old log-probs are recomputed first with the weights that
    /// generated them.
    /// `visual`: each sequence's images and video (empty: none).
    fn update(
        &mut self,
        seqs: &[(Vec<u32>, Vec<bool>)],
        advantages: &[Vec<f64>],
        visual: &[Option<Arc<VisualInputs>>],
    ) -> Result<UpdateStats> {
        let cfg = self.config.clone();
        let pad = self.tokenizer.pad_token_id();
        let batches: Vec<Vec<usize>> = {
            let idx: Vec<usize> = (0..seqs.len()).collect();
            let size = seqs.len().div_ceil(cfg.mini_batches.max(1));
            idx.chunks(size.max(1)).map(<[usize]>::to_vec).collect()
        };
        let device = self.model.device().clone();
        // Built once; every epoch reuses them.
        let mut train_batches: Vec<TrainBatch> = batches
            .iter()
            .map(|ids| {
                let rows: Vec<(&[u32], &[bool])> = ids
                    .iter()
                    .map(|&i| (seqs[i].0.as_slice(), seqs[i].1.as_slice()))
                    .collect();
                TrainBatch::with_loss_masks(&rows, pad, &device)
            })
            .collect::<Result<_, TrainError>>()?;
        // Visual rows: M-RoPE positions once per batch, embeddings at every forward.
        let mut plans: Vec<Option<VisualPlan>> = Vec::with_capacity(batches.len());
        for (ids, tb) in batches.iter().zip(train_batches.iter_mut()) {
            plans.push(match (&self.vision, visual.is_empty()) {
                (Some(policy), false) => {
                    let rows: Vec<&[u32]> = ids.iter().map(|&i| seqs[i].0.as_slice()).collect();
                    let row_visual: Vec<_> = ids.iter().map(|&i| visual[i].clone()).collect();
                    plan_batch(&mut tb.batch, &rows, &row_visual, policy)?
                }
                _ => None,
            });
        }
        let tower = self.vision.as_ref().map(|v| &v.tower);
        // Old log-probs: recomputed by the trainer with the weights that generated the batch.
        let mut old = Vec::with_capacity(batches.len());
        let mut refs = Vec::with_capacity(batches.len());
        for (tb, plan) in train_batches.iter().zip(&plans) {
            old.push(
                self.logps(&self.model, plan.as_ref().zip(tower), tb)?
                    .0
                    .detach(),
            );
            let ref_tower = self.vision.as_ref().and_then(|v| v.reference.as_ref());
            refs.push(match &self.reference {
                Some(r) => Some(self.logps(r, plan.as_ref().zip(ref_tower), tb)?.0.detach()),
                None => None,
            });
        }
        let vars: Vec<&Var> = self.vars.iter().map(|(_, v)| v).collect();
        let clip = ClipConfig::verl(cfg.clip_low, cfg.clip_high);
        let agg = cfg.aggregation()?;
        let lr = cfg.lr * warmup_factor(self.step, cfg.lr_warmup_ratio, cfg.max_steps);
        let (mut loss_sum, mut clip_sum, mut kl_sum, mut updates) = (0f64, 0f64, 0f64, 0usize);
        let mut stats = UpdateStats::default();
        let mut clip_lower_sum = 0f64;
        for _ in 0..cfg.epochs.max(1) {
            for (b, (ids, tb)) in batches.iter().zip(&train_batches).enumerate() {
                let (logp, mask, logits) =
                    self.logps(&self.model, plans[b].as_ref().zip(tower), tb)?;
                // logp index j scores token j + 1.
                let width = logp.dim(1)?;
                let adv: Vec<f32> = ids
                    .iter()
                    .flat_map(|&i| {
                        (1..=width)
                            .map(move |j| advantages[i].get(j).copied().unwrap_or(0.0) as f32)
                    })
                    .collect();
                let adv = Tensor::from_vec(adv, (ids.len(), width), &device)?;
                let pl = clipped_policy_loss(&logp, &old[b], &adv, &mask, clip)?;
                let mut loss = aggregate(&pl.per_token, &mask, agg)?;
                if let Some(r) = &refs[b] {
                    let kl = aggregate(&kl_penalty(&logp, r, KlEstimator::K3)?, &mask, agg)?;
                    loss = (loss + (kl * cfg.kl_coef)?)?;
                }
                if cfg.entropy_coef != 0.0 {
                    let t = logits.dim(1)?;
                    let entropy = losses::entropy_from_logits(&logits.narrow(1, 0, t - 1)?, 1.0)?;
                    loss = (loss - (aggregate(&entropy, &mask, agg)? * cfg.entropy_coef)?)?;
                }
                let value = loss.to_scalar::<f32>()? as f64;
                if !value.is_finite() {
                    tracing::warn!("step {}: non-finite loss, update skipped", self.step);
                    continue;
                }
                let mut grads = loss.backward()?;
                match clip_grad_norm(&mut grads, &vars, cfg.max_grad_norm) {
                    Ok(_) => self.optimizer.step(&grads, lr)?,
                    Err(TrainError::NonFiniteGradient(_)) => continue,
                    Err(e) => return Err(e.into()),
                }
                loss_sum += value;
                stats.train_tokens += tb.lengths.iter().sum::<usize>();
                clip_sum += pl.clip_fraction as f64;
                clip_lower_sum += pl.clip_fraction_lower as f64;
                if stats.entropy.is_nan() {
                    let t = logits.dim(1)?;
                    let e =
                        losses::entropy_from_logits(&logits.narrow(1, 0, t - 1)?.detach(), 1.0)?;
                    stats.entropy =
                        aggregate(&e, &mask, Aggregation::TokenMean)?.to_scalar::<f32>()? as f64;
                }
                kl_sum += pl.approx_kl as f64;
                updates += 1;
            }
        }
        if updates > 0 {
            stats.loss = loss_sum / updates as f64;
            stats.clip_fraction = clip_sum / updates as f64;
            stats.clip_fraction_lower = clip_lower_sum / updates as f64;
            stats.approx_kl = kl_sum / updates as f64;
        }
        stats.updates = updates;
        Ok(stats)
    }

    /// Runs `max_steps` steps, appending each report to `output_dir/metrics.jsonl` and saving
    /// the policy (HF layout) every `save_steps` and at the end to `output_dir/policy`.
    pub fn train(
        &mut self,
        mut on_step: impl FnMut(&GrpoStepReport),
    ) -> Result<Vec<GrpoStepReport>> {
        let out = self.config.output_dir.clone();
        let mut metrics = MetricsLog::open(&out)?;
        let mut reports = Vec::new();
        while self.step < self.config.max_steps {
            let r = self.step()?;
            metrics.append(&r)?;
            on_step(&r);
            reports.push(r);
            if step_due(self.step, self.config.max_steps, self.config.save_steps) {
                self.save_checkpoint()?;
            }
            if self.step == self.config.max_steps {
                self.save(&out.join("policy"))?;
            }
        }
        Ok(reports)
    }

    /// `output_dir/checkpoint-STEP`: policy, optimiser state and run state (task order,
    /// cursor, per-task rewards), written to a temporary directory and renamed; the newest two
    /// are kept. A new trainer on the same `output_dir` resumes from the newest.
    pub fn save_checkpoint(&self) -> Result<PathBuf> {
        self.save_checkpoint_with(|_| Ok(()))
    }

    /// [`save_checkpoint`](Self::save_checkpoint) with a recipe's own state: `extra` writes its
    /// files into the checkpoint directory before the run state that marks it complete.
    pub fn save_checkpoint_with(
        &self,
        extra: impl FnOnce(&std::path::Path) -> Result<()>,
    ) -> Result<PathBuf> {
        let out = &self.config.output_dir;
        let dir = out.join(format!("checkpoint-{}", self.step));
        qforge_util::write_dir_atomic(&dir, |tmp| {
            self.write_policy(tmp)?;
            extra(tmp)?;
            self.optimizer
                .save_state(&tmp.join("optimizer.safetensors"))?;
            let state = RunState {
                step: self.step,
                cursor: self.cursor,
                order: self.order.clone(),
                task_rewards: self.task_rewards.clone(),
                truncated: self.truncated,
            };
            let path = tmp.join(STATE_FILE);
            std::fs::write(&path, serde_json::to_string(&state).expect("serialisable"))
                .with_path(&path)?;
            Ok::<_, RlError>(())
        })?;
        qforge_util::prune_checkpoints(out, STATE_FILE, 2)?;
        Ok(dir)
    }

    /// Writes the policy in HF layout (with the tokenizer files), via a temporary directory.
    pub fn save(&self, dir: &std::path::Path) -> Result<()> {
        qforge_util::write_dir_atomic(dir, |tmp| self.write_policy(tmp))
    }

    fn write_policy(&self, dir: &std::path::Path) -> Result<()> {
        match &self.vision {
            Some(v) => VlModel {
                text: self.model.clone(),
                vision: v.tower.clone(),
                tokens: v.tokens,
            }
            .save_pretrained(dir, 5 << 30)?,
            None => self.model.save_pretrained(dir, 5 << 30)?,
        }
        Ok(qforge_model::copy_tokenizer_files(&self.config.model, dir)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tools::observation_text;

    /// Answers the first two turns with a numbered observation, then ends the episode.
    struct TwoObservations;

    impl ToolEnv for TwoObservations {
        fn stop_strings(&self) -> Vec<String> {
            vec!["</tool_call>".into()]
        }

        fn observe(&self, _: &Task, turns: &[String]) -> Option<String> {
            (turns.len() <= 2).then(|| format!("result {}", turns.len()))
        }
    }

    struct TextLength;

    impl RewardFn for TextLength {
        fn score(&self, _: &Task, response: &str) -> f64 {
            (response.len() % 3) as f64
        }
    }

    fn trainer(dir: &std::path::Path, tools: ToolConfig) -> GrpoTrainer {
        let model = qforge_testkit::tiny_model();
        let tasks = vec![Task {
            messages: vec![serde_json::json!({"role": "user", "content": "find it"})],
            answers: vec!["x".into()],
        }];
        GrpoTrainer::new(
            GrpoConfig {
                model,
                output_dir: dir.to_path_buf(),
                group_size: 4,
                prompts_per_step: 2,
                max_new_tokens: 6,
                lr: 1e-3,
                ..GrpoConfig::default()
            },
            tasks,
            Arc::new(TextLength),
        )
        .unwrap()
        .with_tools(Arc::new(TwoObservations), tools)
    }

    #[test]
    fn tool_observations_are_in_context_but_not_learned() {
        let dir = tempfile::tempdir().unwrap();
        let mut t = trainer(dir.path(), ToolConfig::default());
        let groups = t.rollouts(&[0, 0], 0).unwrap();
        let tok = t.tokenizer.clone();
        for r in groups.iter().flatten() {
            assert_eq!(r.turns, 3);
            assert_eq!(r.learned.len(), r.response.len());
            // The unlearned runs are exactly the two observations, in order.
            let mut runs = Vec::new();
            let mut run: Vec<u32> = Vec::new();
            for (&id, &learned) in r.response.iter().zip(&r.learned) {
                if learned && !run.is_empty() {
                    runs.push(std::mem::take(&mut run));
                } else if !learned {
                    run.push(id);
                }
            }
            assert!(run.is_empty(), "the episode ends on a generated turn");
            assert_eq!(runs.len(), 2);
            for (k, ids) in runs.iter().enumerate() {
                let text = tok.decode(ids, false).unwrap();
                assert!(
                    text.ends_with(&observation_text(&format!("result {}", k + 1), true)[1..]),
                    "{text:?}"
                );
            }
            assert_eq!(
                r.generated_tokens(),
                r.learned.iter().filter(|&&l| l).count()
            );
        }
        let report = t.step().unwrap();
        assert_eq!(report.turns_mean, 3.0);
        assert!(report.rollout_tokens <= 2 * 4 * 3 * 6);
    }

    #[test]
    fn the_response_budget_ends_episodes() {
        let dir = tempfile::tempdir().unwrap();
        let mut t = trainer(
            dir.path(),
            ToolConfig {
                max_response_tokens: 12,
                ..ToolConfig::default()
            },
        );
        for r in t.rollouts(&[0], 0).unwrap().iter().flatten() {
            // One turn (≤ 6 tokens) and one observation (~20 tokens) already pass 12.
            assert_eq!(r.turns, 1);
            assert!(r.learned.iter().all(|&l| l));
        }
    }
}

#[cfg(test)]
mod visual_tests {
    use super::*;
    use crate::museg::QuestionTemplate;
    use crate::museg::colour_time::{
        ColourTimeConfig, ColourTimeVideo, QUESTION, write_checkpoint,
    };
    use crate::museg::trainer::prompt_ids;

    /// Per-token log-probs of `rows` (ids, learned mask, visual) through the trainer's own path.
    fn row_logps(
        t: &GrpoTrainer,
        rows: &[(Vec<u32>, Vec<bool>, Option<Arc<VisualInputs>>)],
    ) -> Vec<Vec<f32>> {
        let pad = t.tokenizer.pad_token_id();
        let masks: Vec<(&[u32], &[bool])> = rows
            .iter()
            .map(|(i, m, _)| (i.as_slice(), m.as_slice()))
            .collect();
        let mut tb = TrainBatch::with_loss_masks(&masks, pad, &Device::Cpu).unwrap();
        let ids: Vec<&[u32]> = rows.iter().map(|(i, _, _)| i.as_slice()).collect();
        let visual: Vec<_> = rows.iter().map(|(_, _, v)| v.clone()).collect();
        let policy = t.vision.as_ref().unwrap();
        let plan = plan_batch(&mut tb.batch, &ids, &visual, policy).unwrap();
        let (lp, _, _) = t
            .logps(&t.model, plan.as_ref().zip(Some(&policy.tower)), &tb)
            .unwrap();
        lp.to_vec2().unwrap()
    }

    #[test]
    fn a_video_row_scores_the_same_alone_and_beside_a_text_row_and_its_tower_learns() {
        let dir = tempfile::tempdir().unwrap();
        let model = write_checkpoint(&dir.path().join("model"), 4).unwrap();
        let mut t = GrpoTrainer::policy(GrpoConfig {
            model,
            output_dir: dir.path().join("run"),
            lr: 1e-3,
            ..GrpoConfig::default()
        })
        .unwrap();
        let vision = t.vision().unwrap().clone();
        let video = ColourTimeVideo::generate(&ColourTimeConfig::default(), 9).unwrap();
        let visual = video.visual(&vision.processor).unwrap();
        let prompt = prompt_ids(
            t.tokenizer(),
            &vision,
            QUESTION,
            QuestionTemplate::FrameSelectionThinking,
            &visual,
        )
        .unwrap();
        let response = t.tokenizer().encode(&video.target(), false).unwrap();
        let (ids, mask) = prompt_response_row(&prompt, &response);
        let text = t.encode_user("Find all red segments.").unwrap();
        let (text_ids, text_mask) = prompt_response_row(&text, &response);
        let alone = row_logps(&t, &[(ids.clone(), mask.clone(), Some(visual.clone()))]);
        let batched = row_logps(
            &t,
            &[
                (text_ids, text_mask, None),
                (ids.clone(), mask.clone(), Some(visual.clone())),
            ],
        );
        let n = ids.len() - 1;
        for j in prompt.len() - 1..n {
            assert!(
                (alone[0][j] - batched[1][j]).abs() < 1e-4,
                "token {j}: {} vs {}",
                alone[0][j],
                batched[1][j]
            );
        }
        // A supervised step moves the tower's weights (gradients reach the patch embedding).
        let patch = |t: &GrpoTrainer| -> Vec<f32> {
            let (_, v) = t
                .vars
                .iter()
                .find(|(n, _)| n.contains("patch_embed"))
                .unwrap();
            v.as_tensor().flatten_all().unwrap().to_vec1().unwrap()
        };
        let before = patch(&t);
        let seq = ScoredSequence {
            prompt,
            response,
            advantage: 1.0,
        };
        let stats = t
            .update_scored_with_visual(&[seq], &[Some(visual)])
            .unwrap();
        assert_eq!(stats.updates, 1);
        assert_ne!(before, patch(&t));
    }
}

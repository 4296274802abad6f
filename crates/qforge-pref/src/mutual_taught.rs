//! Mutual-Taught (arXiv 2506.06292): EM-style co-training of a policy and a
//! Bradley-Terry reward model. Per iteration t, from (π_{t-1}, r_{t-1}):
//!
//! - E-step: sample M responses per policy prompt from π_{t-1}, score them with r_{t-1}; pair
//!   the *shortest* response scoring above the prompt's mean (chosen) with the lowest-scoring
//!   one (rejected); DPO from π_{t-1} as policy and reference, saving every `save_steps`; pick
//!   the checkpoint with the best win rate against π_{t-1} under r_{t-1} on the selection
//!   prompts; if that is below τ, stop and keep π_{t-1}.
//! - M-step: on the RM prompts draw y_t ~ π_t and y_{t-1} ~ π_{t-1}; keep "y_t ≻ y_{t-1}" unless
//!   Δr = r_{t-1}(y_t) − r_{t-1}(y_{t-1}) ≤ −ε_t (ε_t = std of r_{t-1}(y_{t-1}) over the RM
//!   prompts); retrain the RM from the *base* RM on the E-step pairs plus the kept pairs.
//!
//! Every intermediate object is written under `output_dir/iter-T/` (samples and scores, pair
//! indices, per-checkpoint win rates, Δr/ε and keep decisions, which models were used), each
//! file atomically; a killed run resumes at the stage it was in (the trainers resume from their
//! own checkpoints).

use qforge_util::WithPath;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use qforge_engine::{Engine, SamplingParams};
use qforge_model::RewardModel;
use qforge_model::{ChatOptions, Checkpoint};
use qforge_train::trainer::{Objective, TrainConfig, Trainer};
use qforge_util::{write_json_atomic, write_jsonl_atomic};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::error::{PrefError, Result};

/// E-step pair of one prompt: (chosen, rejected) indices into its responses. Chosen is the
/// shortest response scoring strictly above the prompt's mean reward, rejected the
/// lowest-scoring one; `None` when all scores are equal. A response of length 0 is never chosen
/// (our addition: the length control would otherwise teach empty answers whenever the reward
/// model over-scores them).
pub fn e_step_pair(scores: &[f32], lengths: &[usize]) -> Option<(usize, usize)> {
    if scores.len() < 2 || scores.len() != lengths.len() {
        return None;
    }
    let mean = scores.iter().sum::<f32>() / scores.len() as f32;
    let chosen = (0..scores.len())
        .filter(|&i| scores[i] > mean && lengths[i] > 0)
        .min_by(|&a, &b| {
            lengths[a]
                .cmp(&lengths[b])
                .then(scores[b].total_cmp(&scores[a]))
        })?;
    let rejected = (0..scores.len()).min_by(|&a, &b| scores[a].total_cmp(&scores[b]))?;
    (chosen != rejected).then_some((chosen, rejected))
}

/// M-step filter: ε = population std of the old policy's rewards; a pair is dropped only if
/// its reward gain Δr ≤ −ε (slightly negative gains are kept as regularising noise).
pub fn m_step_filter(gains: &[f32], old_rewards: &[f32]) -> (f32, Vec<bool>) {
    let n = old_rewards.len().max(1) as f32;
    let mean = old_rewards.iter().sum::<f32>() / n;
    let eps = (old_rewards.iter().map(|r| (r - mean).powi(2)).sum::<f32>() / n).sqrt();
    (eps, gains.iter().map(|&d| d > -eps).collect())
}

/// Fraction of prompts where the candidate's reward beats the baseline's (ties count half).
pub fn win_rate(candidate: &[f32], baseline: &[f32]) -> f64 {
    if candidate.is_empty() {
        return 0.0;
    }
    let wins: f64 = candidate
        .iter()
        .zip(baseline)
        .map(|(c, b)| match c.total_cmp(b) {
            std::cmp::Ordering::Greater => 1.0,
            std::cmp::Ordering::Equal => 0.5,
            std::cmp::Ordering::Less => 0.0,
        })
        .sum();
    wins / candidate.len() as f64
}

/// The `[mutual_taught]` recipe; `dpo` and `rm` are training settings whose `model`, `data`
/// and `output_dir` the recipe fills in per iteration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MutualTaughtConfig {
    pub policy: PathBuf,
    pub reward_model: PathBuf,
    /// Prompt-only JSONL files, one per policy update (iteration t uses file t, cycling).
    pub policy_prompts: Vec<PathBuf>,
    pub rm_prompts: PathBuf,
    /// D_MS: prompts for checkpoint selection.
    pub selection_prompts: PathBuf,
    pub output_dir: PathBuf,
    pub iterations: usize,
    /// M: responses sampled per prompt.
    pub samples: usize,
    pub temperature: f32,
    pub top_p: f32,
    pub max_new_tokens: usize,
    /// τ: stop when the best checkpoint's win rate is below this.
    pub win_rate_threshold: f64,
    /// `false` skips the M-step: every iteration is scored by the base reward model (iterative
    /// DPO with a fixed reward model, the paper's "w/o RM update" ablation).
    pub update_reward_model: bool,
    pub seed: u64,
    /// Score through a reward-model server (`qforge serve --reward-model R
    /// --allow-weight-reload`, or any server with vLLM's `/pooling`) at this base URL, e.g.
    /// `http://127.0.0.1:8001/v1`, instead of loading the reward model here. Each stage first
    /// pushes the reward model it needs (`/update_weights_from_disk`); training stays local.
    pub reward_server: Option<String>,
    pub dpo: TrainConfig,
    pub rm: TrainConfig,
}

impl Default for MutualTaughtConfig {
    fn default() -> Self {
        Self {
            policy: PathBuf::new(),
            reward_model: PathBuf::new(),
            policy_prompts: Vec::new(),
            rm_prompts: PathBuf::new(),
            selection_prompts: PathBuf::new(),
            output_dir: PathBuf::from("runs/mutual-taught"),
            iterations: 2,
            samples: 5,
            temperature: 0.8,
            top_p: 0.95,
            max_new_tokens: 512,
            win_rate_threshold: 0.6,
            update_reward_model: true,
            seed: 42,
            reward_server: None,
            dpo: TrainConfig {
                beta: 0.01,
                lr: 7e-7,
                schedule: "cosine".into(),
                save_steps: 50,
                ..TrainConfig::default()
            },
            rm: TrainConfig {
                lr: 2e-6,
                schedule: "cosine".into(),
                ..TrainConfig::default()
            },
        }
    }
}

/// What one iteration produced (`iter-T/done.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IterationResult {
    pub iteration: usize,
    pub policy_in: PathBuf,
    pub reward_model_in: PathBuf,
    /// π_t (π_{t-1} when the stop rule fired).
    pub policy_out: PathBuf,
    /// r_t (None when stopped before the M-step).
    pub reward_model_out: Option<PathBuf>,
    pub best_checkpoint: Option<PathBuf>,
    pub best_win_rate: f64,
    pub stopped: bool,
    pub e_step_pairs: usize,
    pub m_step_pairs_kept: usize,
    pub m_step_pairs_dropped: usize,
}

/// Prompts (as message lists) of a prompt-only JSONL file: `prompt` (string or messages) or
/// `messages`.
pub fn read_prompts(path: &Path) -> Result<Vec<Vec<Value>>> {
    let text = std::fs::read_to_string(path).with_path(path)?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let bad = |m: String| PrefError::from(qforge_util::RowError::new(path, i + 1, m));
        let v: Value = serde_json::from_str(line).map_err(|e| bad(format!("invalid JSON: {e}")))?;
        let messages = match (v.get("prompt"), v.get("messages")) {
            (Some(Value::String(s)), _) => vec![json!({"role": "user", "content": s})],
            (Some(Value::Array(m)), _) | (None, Some(Value::Array(m))) if !m.is_empty() => {
                m.clone()
            }
            _ => {
                return Err(bad(
                    "expected `prompt` (text or messages) or `messages`".into()
                ));
            }
        };
        out.push(messages);
    }
    if out.is_empty() {
        return Err(PrefError::Invalid(format!(
            "{}: no prompts",
            path.display()
        )));
    }
    Ok(out)
}

/// The values of a JSONL file this recipe wrote itself (line numbers are not needed).
fn read_jsonl(path: &Path) -> Result<Vec<Value>> {
    Ok(qforge_util::read_jsonl(path)?
        .into_iter()
        .map(|(_, v)| v)
        .collect())
}

/// Checks that the reward model reads text with the policy's vocabulary.
pub fn check_same_tokenizer(
    policy: &qforge_model::Tokenizer,
    rm: &qforge_model::Tokenizer,
) -> Result<()> {
    let (a, b) = (policy.inner().get_vocab(true), rm.inner().get_vocab(true));
    if a.len() != b.len() {
        return Err(PrefError::Invalid(format!(
            "the reward model's tokenizer differs from the policy's ({} vs {} tokens)",
            b.len(),
            a.len()
        )));
    }
    if let Some((tok, id)) = a.iter().find(|(t, id)| b.get(*t) != Some(id)) {
        return Err(PrefError::Invalid(format!(
            "the reward model's tokenizer differs from the policy's (`{tok}` is {id} for the policy, {:?} for the reward model)",
            b.get(tok)
        )));
    }
    Ok(())
}

/// Generation and scoring for one iteration.
struct Models {
    device: Device,
    dtype: DType,
    reward_server: Option<RewardServer>,
}

/// A reward-model server and the runtime its requests run on.
struct RewardServer {
    backend: qforge_engine::RemoteBackend,
    runtime: tokio::runtime::Runtime,
    /// The reward model this run last pushed (stages that share one push it once).
    pushed: std::cell::RefCell<Option<PathBuf>>,
}

/// The reward model of a stage: loaded here, or held by a server.
enum Scorer<'a> {
    Local(Box<RewardModel>),
    Remote(&'a RewardServer),
}

impl Scorer<'_> {
    /// Rewards of conversations ending with the response to judge.
    fn score_conversations(&self, conversations: &[Vec<Value>]) -> Result<Vec<f32>> {
        match self {
            Self::Local(rm) => Ok(rm.score_conversations(conversations, 8)?),
            Self::Remote(server) => server.runtime.block_on(async {
                let requests = conversations.iter().map(|c| server.backend.reward_score(c));
                futures_util::future::try_join_all(requests)
                    .await
                    .map_err(|e| PrefError::Invalid(format!("reward server: {e}")))
            }),
        }
    }
}

impl Models {
    fn engine(&self, dir: &Path) -> Result<Engine> {
        let ck = Checkpoint::load_dir(dir, self.dtype, &self.device)?;
        Ok(Engine::from_checkpoint(ck))
    }

    /// The reward model in `dir`: loaded, or pushed to the reward server.
    fn reward_model(&self, dir: &Path) -> Result<Scorer<'_>> {
        let Some(server) = &self.reward_server else {
            let rm = RewardModel::load(dir, self.dtype, &self.device)?;
            return Ok(Scorer::Local(Box::new(rm)));
        };
        if server.pushed.borrow().as_deref() != Some(dir) {
            server
                .runtime
                .block_on(server.backend.update_weights_from_disk(dir))
                .map_err(|e| {
                    PrefError::Invalid(format!(
                        "pushing the reward model {} to the reward server: {e}",
                        dir.display()
                    ))
                })?;
            *server.pushed.borrow_mut() = Some(dir.to_path_buf());
        }
        Ok(Scorer::Remote(server))
    }
}

fn sample(
    engine: &Engine,
    prompts: &[Vec<Value>],
    n: usize,
    cfg: &MutualTaughtConfig,
    salt: u64,
) -> Result<Vec<Vec<String>>> {
    let tok = engine.tokenizer();
    let mut out = Vec::with_capacity(prompts.len());
    for (i, p) in prompts.iter().enumerate() {
        let text = tok.apply_chat_template(p, &ChatOptions::generation())?;
        let ids = tok.encode(&text, false)?;
        let requests = (0..n)
            .map(|k| {
                let mut r = engine.request(ids.clone(), cfg.max_new_tokens);
                r.sampling = SamplingParams {
                    temperature: cfg.temperature,
                    top_p: cfg.top_p,
                    seed: Some(cfg.seed ^ salt ^ ((i as u64) << 16) ^ k as u64),
                    ..SamplingParams::default()
                };
                r
            })
            .collect();
        out.push(
            engine
                .generate(requests, |_| {})?
                .into_iter()
                .map(|o| o.text)
                .collect(),
        );
    }
    Ok(out)
}

fn conversation(prompt: &[Value], response: &str) -> Vec<Value> {
    let mut c = prompt.to_vec();
    c.push(json!({"role": "assistant", "content": response}));
    c
}

fn pair_row(prompt: &[Value], chosen: &str, rejected: &str) -> Value {
    json!({
        "prompt": prompt,
        "chosen": [{"role": "assistant", "content": chosen}],
        "rejected": [{"role": "assistant", "content": rejected}],
    })
}

/// Runs (or resumes) every iteration; returns what each produced. `on_stage` hears each stage
/// as it starts (for progress output).
impl MutualTaughtConfig {
    /// A Mutual-Taught recipe (TOML) with `--set` overrides (`--set dpo.lr=1e-6`).
    pub fn from_recipe(path: &Path, overrides: &[String]) -> Result<Self> {
        let recipe: Self = qforge_util::settings::read_toml(path)?;
        Ok(qforge_util::settings::with_sets(recipe, overrides)?)
    }
}

pub fn run(
    cfg: &MutualTaughtConfig,
    mut on_stage: impl FnMut(usize, &str),
) -> Result<Vec<IterationResult>> {
    let mut cfg = cfg.clone();
    cfg.policy = qforge_model::resolve_model_path(&cfg.policy)?;
    cfg.reward_model = qforge_model::resolve_model_path(&cfg.reward_model)?;
    let cfg = &cfg;
    if cfg.policy_prompts.is_empty() || cfg.iterations == 0 || cfg.samples < 2 {
        return Err(PrefError::Invalid(
            "need policy_prompts, iterations >= 1 and samples >= 2".into(),
        ));
    }
    let reward_server = match &cfg.reward_server {
        None => None,
        Some(url) => Some(RewardServer {
            backend: qforge_engine::RemoteBackend::new(qforge_engine::RemoteConfig::new(url, ""))
                .map_err(|e| PrefError::Invalid(format!("reward server {url}: {e}")))?,
            runtime: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| PrefError::Invalid(format!("tokio runtime: {e}")))?,
            pushed: std::cell::RefCell::new(None),
        }),
    };
    let models = Models {
        device: qforge_util::parse_device(&cfg.dpo.device)?,
        dtype: qforge_util::parse_dtype(&cfg.dpo.dtype)
            .ok_or_else(|| PrefError::Invalid(format!("dtype `{}`", cfg.dpo.dtype)))?,
        reward_server,
    };
    check_same_tokenizer(
        &qforge_model::Tokenizer::from_dir(&cfg.policy)?,
        &qforge_model::Tokenizer::from_dir(&cfg.reward_model)?,
    )?;
    let rm_prompts = read_prompts(&cfg.rm_prompts)?;
    let selection_prompts = read_prompts(&cfg.selection_prompts)?;
    let (mut policy, mut rm) = (cfg.policy.clone(), cfg.reward_model.clone());
    let mut results = Vec::new();
    for t in 1..=cfg.iterations {
        let dir = cfg.output_dir.join(format!("iter-{t}"));
        std::fs::create_dir_all(&dir).with_path(&dir)?;
        let done = dir.join("done.json");
        if done.is_file() {
            let r: IterationResult =
                serde_json::from_str(&std::fs::read_to_string(&done).with_path(&done)?)
                    .map_err(|e| PrefError::Invalid(format!("{}: {e}", done.display())))?;
            policy = r.policy_out.clone();
            rm = r.reward_model_out.clone().unwrap_or(rm);
            let stopped = r.stopped;
            results.push(r);
            if stopped {
                break;
            }
            continue;
        }
        let result = iteration(
            cfg,
            &models,
            t,
            &dir,
            &policy,
            &rm,
            &rm_prompts,
            &selection_prompts,
            &mut on_stage,
        )?;
        write_json_atomic(&done, &serde_json::to_value(&result).expect("serialisable"))?;
        policy = result.policy_out.clone();
        rm = result.reward_model_out.clone().unwrap_or(rm);
        let stopped = result.stopped;
        results.push(result);
        if stopped {
            break;
        }
    }
    Ok(results)
}

#[allow(clippy::too_many_arguments)]
fn iteration(
    cfg: &MutualTaughtConfig,
    models: &Models,
    t: usize,
    dir: &Path,
    policy: &Path,
    rm_dir: &Path,
    rm_prompts: &[Vec<Value>],
    selection_prompts: &[Vec<Value>],
    on_stage: &mut impl FnMut(usize, &str),
) -> Result<IterationResult> {
    let prompts = read_prompts(&cfg.policy_prompts[(t - 1) % cfg.policy_prompts.len()])?;
    let rm = models.reward_model(rm_dir)?;
    let salt = (t as u64) << 40;

    // E-step 1: samples and their rewards.
    let samples_path = dir.join("samples.jsonl");
    if !samples_path.is_file() {
        on_stage(t, "sampling the policy");
        let engine = models.engine(policy)?;
        let responses = sample(&engine, &prompts, cfg.samples, cfg, salt)?;
        let mut rows = Vec::with_capacity(prompts.len());
        for (p, rs) in prompts.iter().zip(&responses) {
            let convs: Vec<Vec<Value>> = rs.iter().map(|r| conversation(p, r)).collect();
            let scores = rm.score_conversations(&convs)?;
            rows.push(json!({"prompt": p, "responses": rs, "scores": scores}));
        }
        write_jsonl_atomic(&samples_path, &rows)?;
    }

    // E-step 2: pairs (indices kept for the record).
    let pairs_path = dir.join("dpo_pairs.jsonl");
    let decisions_path = dir.join("e_step_pairs.jsonl");
    if !pairs_path.is_file() {
        let mut pairs = Vec::new();
        let mut decisions = Vec::new();
        for (i, row) in read_jsonl(&samples_path)?.iter().enumerate() {
            let bad = |field: &str, e: serde_json::Error| {
                qforge_util::RowError::new(&samples_path, i + 1, format!("`{field}`: {e}"))
            };
            let responses: Vec<String> = serde_json::from_value(row["responses"].clone())
                .map_err(|e| bad("responses", e))?;
            let scores: Vec<f32> =
                serde_json::from_value(row["scores"].clone()).map_err(|e| bad("scores", e))?;
            // Length of the visible answer: a think block (even an empty one) does not count.
            let lengths: Vec<usize> = responses
                .iter()
                .map(|r| {
                    let answer = qforge_train::answers::after_thinking(r).unwrap_or(r);
                    answer.trim().chars().count()
                })
                .collect();
            let pair =
                e_step_pair(&scores, &lengths).filter(|&(c, r)| responses[c] != responses[r]);
            decisions.push(json!({"prompt_index": i, "pair": pair}));
            if let Some((c, r)) = pair {
                let prompt: Vec<Value> =
                    serde_json::from_value(row["prompt"].clone()).map_err(|e| bad("prompt", e))?;
                pairs.push(pair_row(&prompt, &responses[c], &responses[r]));
            }
        }
        if pairs.is_empty() {
            return Err(PrefError::Invalid(format!(
                "iteration {t}: no E-step pair (every prompt's samples scored alike)"
            )));
        }
        write_jsonl_atomic(&decisions_path, &decisions)?;
        write_jsonl_atomic(&pairs_path, &pairs)?;
    }
    let e_step_pairs = read_jsonl(&pairs_path)?.len();

    // E-step 3: DPO from π_{t-1} (also the reference), checkpoints kept for selection.
    on_stage(t, "DPO");
    let dpo_dir = dir.join("dpo");
    let dpo_cfg = TrainConfig {
        model: policy.to_path_buf(),
        data: pairs_path.clone(),
        eval_data: None,
        output_dir: dpo_dir.clone(),
        save_total_limit: usize::MAX,
        ..cfg.dpo.clone()
    };
    let mut trainer = Trainer::new(dpo_cfg, Objective::Dpo)?;
    trainer.train(|_| {}, |_| {})?;
    drop(trainer);

    // E-step 4: checkpoint selection by win rate against π_{t-1} under r_{t-1}.
    let selection_path = dir.join("selection.json");
    if !selection_path.is_file() {
        on_stage(t, "checkpoint selection");
        let baseline = sample(&models.engine(policy)?, selection_prompts, 1, cfg, salt ^ 1)?;
        let score = |responses: &[Vec<String>]| -> Result<Vec<f32>> {
            let convs: Vec<Vec<Value>> = selection_prompts
                .iter()
                .zip(responses)
                .map(|(p, r)| conversation(p, &r[0]))
                .collect();
            rm.score_conversations(&convs)
        };
        let base_scores = score(&baseline)?;
        let mut candidates = Vec::new();
        for ck in checkpoints(&dpo_dir)? {
            let responses = sample(&models.engine(&ck)?, selection_prompts, 1, cfg, salt ^ 1)?;
            let rate = win_rate(&score(&responses)?, &base_scores);
            candidates.push(json!({"checkpoint": ck, "win_rate": rate}));
        }
        write_json_atomic(
            &selection_path,
            &json!({"candidates": candidates, "threshold": cfg.win_rate_threshold}),
        )?;
    }
    let selection: Value =
        serde_json::from_str(&std::fs::read_to_string(&selection_path).with_path(&selection_path)?)
            .map_err(|e| PrefError::Invalid(e.to_string()))?;
    let best = selection["candidates"]
        .as_array()
        .into_iter()
        .flatten()
        .max_by(|a, b| {
            a["win_rate"]
                .as_f64()
                .unwrap_or(0.0)
                .total_cmp(&b["win_rate"].as_f64().unwrap_or(0.0))
        })
        .cloned();
    let (best_checkpoint, best_win_rate) = match &best {
        Some(b) => (
            b["checkpoint"].as_str().map(PathBuf::from),
            b["win_rate"].as_f64().unwrap_or(0.0),
        ),
        None => (None, 0.0),
    };
    let mut result = IterationResult {
        iteration: t,
        policy_in: policy.to_path_buf(),
        reward_model_in: rm_dir.to_path_buf(),
        policy_out: policy.to_path_buf(),
        reward_model_out: None,
        best_checkpoint: best_checkpoint.clone(),
        best_win_rate,
        stopped: true,
        e_step_pairs,
        m_step_pairs_kept: 0,
        m_step_pairs_dropped: 0,
    };
    let Some(new_policy) = best_checkpoint.filter(|_| best_win_rate >= cfg.win_rate_threshold)
    else {
        return Ok(result); // stop rule: keep π_{t-1}
    };
    result.stopped = false;
    if !cfg.update_reward_model {
        result.policy_out = new_policy;
        return Ok(result);
    }

    // M-step 1: pseudo-pairs y_t ≻ y_{t-1}, filtered by the reward gain.
    let mstep_path = dir.join("m_step_pairs.jsonl");
    let rm_pairs_path = dir.join("rm_pairs.jsonl");
    if !rm_pairs_path.is_file() {
        on_stage(t, "M-step pairs");
        let new = sample(&models.engine(&new_policy)?, rm_prompts, 1, cfg, salt ^ 2)?;
        let old = sample(&models.engine(policy)?, rm_prompts, 1, cfg, salt ^ 2)?;
        let convs = |rs: &[Vec<String>]| -> Vec<Vec<Value>> {
            rm_prompts
                .iter()
                .zip(rs)
                .map(|(p, r)| conversation(p, &r[0]))
                .collect()
        };
        let (r_new, r_old) = (
            rm.score_conversations(&convs(&new))?,
            rm.score_conversations(&convs(&old))?,
        );
        let gains: Vec<f32> = r_new.iter().zip(&r_old).map(|(a, b)| a - b).collect();
        let (eps, keep) = m_step_filter(&gains, &r_old);
        let mut records = Vec::new();
        let mut rm_rows: Vec<Value> = read_jsonl(&pairs_path)?;
        for (i, p) in rm_prompts.iter().enumerate() {
            records.push(json!({"prompt": p, "new": new[i][0], "old": old[i][0],
                "reward_new": r_new[i], "reward_old": r_old[i], "gain": gains[i], "epsilon": eps, "keep": keep[i]}));
            if keep[i] && new[i][0] != old[i][0] && !new[i][0].trim().is_empty() {
                rm_rows.push(pair_row(p, &new[i][0], &old[i][0]));
            }
        }
        write_jsonl_atomic(&mstep_path, &records)?;
        write_jsonl_atomic(&rm_pairs_path, &rm_rows)?;
    }
    let records = read_jsonl(&mstep_path)?;
    result.m_step_pairs_kept = records.iter().filter(|r| r["keep"] == true).count();
    result.m_step_pairs_dropped = records.len() - result.m_step_pairs_kept;

    // M-step 2: Bradley-Terry from the base reward model.
    on_stage(t, "reward model");
    let rm_out = dir.join("rm");
    let rm_cfg = TrainConfig {
        model: cfg.reward_model.clone(),
        data: rm_pairs_path,
        eval_data: None,
        output_dir: rm_out.clone(),
        ..cfg.rm.clone()
    };
    let mut trainer = Trainer::new(rm_cfg, Objective::Rm)?;
    trainer.train(|_| {}, |_| {})?;
    let final_rm = rm_out.join("final");
    trainer.save_model(&final_rm)?;

    result.policy_out = new_policy;
    result.reward_model_out = Some(final_rm);
    Ok(result)
}

/// The DPO run's checkpoints, oldest first.
fn checkpoints(dir: &Path) -> Result<Vec<PathBuf>> {
    let all = qforge_util::list_checkpoints(dir, qforge_train::trainer::TRAINER_STATE);
    if all.is_empty() {
        return Err(PrefError::Invalid(format!(
            "{}: no DPO checkpoints",
            dir.display()
        )));
    }
    Ok(all.into_iter().map(|(_, p)| p).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn e_step_pairs_the_shortest_above_mean_with_the_lowest() {
        // mean = 0.5: above are 0 (len 9), 2 (len 3), 4 (len 5); shortest above = 2.
        let scores = [0.9, 0.1, 0.6, -0.2, 1.1];
        let lengths = [9, 4, 3, 7, 5];
        assert_eq!(e_step_pair(&scores, &lengths), Some((2, 3)));
        // Length ties go to the higher score.
        assert_eq!(e_step_pair(&[1.0, 2.0, 0.0], &[3, 3, 3]), Some((1, 2)));
        // All equal: no pair; mismatched inputs: no pair.
        assert_eq!(e_step_pair(&[0.5, 0.5, 0.5], &[1, 2, 3]), None);
        assert_eq!(e_step_pair(&[1.0], &[1]), None);
        assert_eq!(e_step_pair(&[1.0, 0.0], &[1]), None);
        // An empty answer is passed over for the next-shortest above the mean.
        assert_eq!(
            e_step_pair(&[2.0, 1.0, -1.0, 0.0], &[0, 4, 3, 2]),
            Some((1, 2))
        );
    }

    #[test]
    fn m_step_keeps_slightly_negative_gains_and_drops_below_minus_epsilon() {
        // Old rewards 0, 2, 4: population std = sqrt(8/3) ≈ 1.633.
        let (eps, keep) = m_step_filter(&[0.5, -1.0, -1.633, -2.0], &[0.0, 2.0, 4.0]);
        assert!((eps - (8f32 / 3.0).sqrt()).abs() < 1e-6);
        assert_eq!(keep, vec![true, true, false, false]);
    }

    #[test]
    fn win_rate_counts_ties_as_half() {
        assert_eq!(
            win_rate(&[1.0, 0.0, 2.0, 1.0], &[0.0, 1.0, 2.0, 0.5]),
            0.625
        );
        assert_eq!(win_rate(&[], &[]), 0.0);
    }
}

//! The Writing-RL loop: margin-aware selection once, then per step: sample the policy on a
//! batch of selected prompts, judge each response against its prompt's current reference,
//! advance the ladders of strict winners, and update — PPO (the outcome score on the last
//! token, minus the in-reward KL when on, GAE over the critic's values, the clipped surrogate
//! for the actor and the clipped value loss for the critic) or GRPO (group z-scores).
//!
//! A checkpoint holds the policy and its optimiser (as every RL trainer's), the critic
//! (`critic/`, [`crate::ppo`]'s layout), the ladder (`ladder.json`) and this loop's state;
//! a new trainer on the same `output_dir` resumes from the newest. Selection writes
//! `selection/margins.jsonl` as it goes and resumes from it.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use candle_core::{DType, Device};
use qforge_model::Model;
use qforge_train::policy::{AdvantageNorm, gae_advantages, group_advantages};
use qforge_train::trainer::{MetricsLog, step_due};
use qforge_util::{SplitMix, WithPath};
use serde::{Deserialize, Serialize};

use super::data::{MarginScore, WritingPrompt, margin, select_by_margin};
use super::judge::{Comparison, Outcome, PairwiseJudge, extract_passage};
use super::ladder::ReferenceLadder;
use super::{Algorithm, WritingRlConfig};
use crate::error::{Result, RlError};
use crate::grpo::{GrpoTrainer, ScoredSequence, TokenScoredSequence};
use crate::ppo::Critic;

/// What one step did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct WritingRlStepReport {
    pub step: u64,
    pub reward_mean: f64,
    pub win_rate: f64,
    pub tie_rate: f64,
    pub loss_rate: f64,
    /// Responses whose judge never gave a verdict (scored as ties).
    pub no_verdicts: usize,
    /// Prompts that climbed a rung this step.
    pub advanced: usize,
    /// Mean rung (0-based) over the selected prompts, and the share at their top rung.
    pub ladder_rung_mean: f64,
    pub ladder_top_fraction: f64,
    pub policy_loss: f64,
    pub clip_fraction: f64,
    pub approx_kl: f64,
    pub entropy: f64,
    /// PPO only (NaN under GRPO).
    pub value_loss: f64,
    pub value_clip_fraction: f64,
    /// Mean per-token `log π_old − log π_ref` when the KL is in the reward.
    pub reward_kl: f64,
    pub response_tokens_mean: f64,
    /// Judge requests so far (retries included) and orders answered from the cache.
    pub judge_calls: usize,
    pub judge_cache_hits: usize,
    pub rollout_seconds: f64,
    pub judge_seconds: f64,
    pub train_seconds: f64,
}

/// A held-out check's result ([`WritingRlTrainer::evaluate`]).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct HeldOut {
    pub win_rate: f64,
    pub score_mean: f64,
    /// Mean S_l (0–100) over responses to prompts that name a word count.
    pub length_score_mean: f64,
}

/// Written into each checkpoint.
const STATE_FILE: &str = "writing_rl_state.json";
const LADDER_FILE: &str = "ladder.json";
const CRITIC_DIR: &str = "critic";

#[derive(Serialize, Deserialize)]
struct LoopState {
    /// Indices of the selected prompts, in training order.
    order: Vec<usize>,
    cursor: usize,
    epoch: u64,
}

pub struct WritingRlTrainer {
    config: WritingRlConfig,
    policy: GrpoTrainer,
    critic: Option<Critic>,
    /// For the in-reward KL.
    reference: Option<Model>,
    judge: PairwiseJudge,
    prompts: Vec<WritingPrompt>,
    ladder: ReferenceLadder,
    /// Selected prompts (indices into `prompts`) in this epoch's order; empty before selection.
    order: Vec<usize>,
    cursor: usize,
    epoch: u64,
}

impl WritingRlTrainer {
    /// Builds the trainer, resuming policy, critic, ladder and loop state from the newest
    /// checkpoint in `output_dir` when there is one.
    pub fn new(
        config: WritingRlConfig,
        prompts: Vec<WritingPrompt>,
        judge: PairwiseJudge,
    ) -> Result<Self> {
        config.validate()?;
        if prompts.is_empty() {
            return Err(RlError::Invalid(format!(
                "{}: no writing prompts",
                config.prompts.display()
            )));
        }
        let mut ids = std::collections::HashSet::new();
        for p in &prompts {
            if p.references.is_empty() || !ids.insert(p.id.as_str()) {
                return Err(RlError::Invalid(format!(
                    "prompt `{}`: {}",
                    p.id,
                    if p.references.is_empty() {
                        "no references"
                    } else {
                        "the id appears twice"
                    }
                )));
            }
        }
        let ppo = config.writing_rl.algorithm == Algorithm::Ppo;
        let policy = GrpoTrainer::policy(config.actor_config())?;
        let model_dir = policy.config().model.clone();
        let resumed = policy.resumed_from().map(Path::to_path_buf);
        let critic = if ppo {
            let pad = policy.tokenizer().pad_token_id();
            let dir = match &resumed {
                Some(r) => r.join(CRITIC_DIR),
                None if config.critic.model.as_os_str().is_empty() => model_dir.clone(),
                None => qforge_model::resolve_model_path(&config.critic.model)?,
            };
            Some(Critic::load(&dir, config.critic.clone(), pad, config.seed)?)
        } else {
            None
        };
        let reference = (ppo && config.writing_rl.kl_in_reward && config.writing_rl.kl_coef != 0.0)
            .then(|| Model::load(&model_dir, DType::F32, &Device::Cpu, &[]))
            .transpose()?;
        let mut trainer = Self {
            config,
            policy,
            critic,
            reference,
            judge,
            prompts,
            ladder: ReferenceLadder::default(),
            order: Vec::new(),
            cursor: 0,
            epoch: 0,
        };
        if let Some(dir) = resumed {
            trainer.ladder = ReferenceLadder::load(&dir.join(LADDER_FILE))?;
            let path = dir.join(STATE_FILE);
            let text = std::fs::read_to_string(&path).with_path(&path)?;
            let state: LoopState =
                serde_json::from_str(&text).map_err(|e| RlError::file(&path, e))?;
            if let Some(&bad) = state.order.iter().find(|&&i| i >= trainer.prompts.len()) {
                return Err(RlError::Invalid(format!(
                    "{}: prompt {bad} of the run is not in {} any more",
                    dir.display(),
                    trainer.config.prompts.display()
                )));
            }
            trainer.order = state.order;
            trainer.cursor = state.cursor;
            trainer.epoch = state.epoch;
        }
        Ok(trainer)
    }

    pub fn policy(&self) -> &GrpoTrainer {
        &self.policy
    }

    pub fn critic(&self) -> Option<&Critic> {
        self.critic.as_ref()
    }

    pub fn ladder(&self) -> &ReferenceLadder {
        &self.ladder
    }

    pub fn prompts(&self) -> &[WritingPrompt] {
        &self.prompts
    }

    /// The selected prompts' indices (empty before [`select`](Self::select)).
    pub fn selected(&self) -> &[usize] {
        &self.order
    }

    /// Margin-aware selection (or every prompt when `select` is off). Margins already in
    /// `selection/margins.jsonl` are reused, so an interrupted selection continues;
    /// `on_progress(done, total)` follows it. Fails when no prompt has a positive margin.
    pub fn select(
        &mut self,
        mut on_progress: impl FnMut(usize, usize),
    ) -> Result<Vec<MarginScore>> {
        if !self.order.is_empty() {
            return Ok(Vec::new());
        }
        let s = self.config.writing_rl.clone();
        if !s.select {
            self.order = (0..self.prompts.len()).collect();
            SplitMix(self.config.seed).shuffle(&mut self.order);
            return Ok(Vec::new());
        }
        let dir = self.config.output_dir.join("selection");
        std::fs::create_dir_all(&dir).with_path(&dir)?;
        let path = dir.join("margins.jsonl");
        let mut scored: Vec<MarginScore> = if path.exists() {
            qforge_util::read_jsonl(&path)
                .map_err(|e| RlError::file(&path, e))?
                .into_iter()
                .map(|(_, v)| serde_json::from_value(v).map_err(|e| RlError::file(&path, e)))
                .collect::<Result<_>>()?
        } else {
            Vec::new()
        };
        let done: std::collections::HashSet<String> = scored.iter().map(|m| m.id.clone()).collect();
        let todo: Vec<usize> = (0..self.prompts.len())
            .filter(|&i| !done.contains(&self.prompts[i].id))
            .collect();
        let total = self.prompts.len();
        on_progress(total - todo.len(), total);
        let tie = self.judge.settings().values.tie;
        for (c, chunk) in todo.chunks(self.config.grpo.prompts_per_step).enumerate() {
            let ids: Vec<Vec<u32>> = chunk
                .iter()
                .map(|&i| self.encode(i))
                .collect::<Result<_>>()?;
            let samples = self
                .policy
                .sample(&ids, s.selection_samples, (1 << 20) + c as u64)?;
            let items: Vec<Comparison> = chunk
                .iter()
                .zip(&samples)
                .flat_map(|(&i, group)| {
                    let p = &self.prompts[i];
                    group.iter().map(move |sample| Comparison {
                        prompt: p.prompt.clone(),
                        response: extract_passage(&sample.text),
                        reference: p.best_reference().to_string(),
                        criteria: p.criteria.clone(),
                    })
                })
                .collect();
            let judged = self.judge.judge(&items)?;
            for (k, &i) in chunk.iter().enumerate() {
                let n = s.selection_samples;
                let scores: Vec<f64> = judged[k * n..(k + 1) * n].iter().map(|j| j.score).collect();
                scored.push(MarginScore {
                    id: self.prompts[i].id.clone(),
                    margin: margin(&scores, tie),
                    scores,
                });
            }
            write_margins(&path, &scored)?;
            on_progress(scored.len(), total);
        }
        let kept = select_by_margin(scored, s.select_share);
        if kept.is_empty() {
            return Err(RlError::Invalid(format!(
                "margin selection kept no prompt: the policy ties or beats every best reference \
                 (margins in {})",
                path.display()
            )));
        }
        write_margins(&dir.join("selected.jsonl"), &kept)?;
        let index: std::collections::HashMap<&str, usize> = self
            .prompts
            .iter()
            .enumerate()
            .map(|(i, p)| (p.id.as_str(), i))
            .collect();
        self.order = kept.iter().map(|m| index[m.id.as_str()]).collect();
        SplitMix(self.config.seed).shuffle(&mut self.order);
        Ok(kept)
    }

    fn encode(&self, prompt: usize) -> Result<Vec<u32>> {
        let mut ids = self.policy.encode_user(&self.prompts[prompt].prompt)?;
        let cap = self.config.grpo.max_prompt_tokens;
        if cap > 0 && ids.len() > cap {
            ids = crate::curriculum::middle_truncate(&ids, cap);
        }
        Ok(ids)
    }

    fn next_prompts(&mut self) -> Vec<usize> {
        (0..self.config.grpo.prompts_per_step)
            .map(|_| {
                if self.cursor == self.order.len() {
                    self.cursor = 0;
                    self.epoch += 1;
                    SplitMix(self.config.seed ^ self.epoch).shuffle(&mut self.order);
                }
                self.cursor += 1;
                self.order[self.cursor - 1]
            })
            .collect()
    }

    /// One step (selection runs first if it has not).
    pub fn step(&mut self) -> Result<WritingRlStepReport> {
        if self.order.is_empty() {
            self.select(|_, _| {})?;
        }
        let ppo = self.config.writing_rl.algorithm == Algorithm::Ppo;
        let n = if ppo { 1 } else { self.config.grpo.group_size };
        let started = Instant::now();
        let batch = self.next_prompts();
        let prompt_ids: Vec<Vec<u32>> = batch
            .iter()
            .map(|&i| self.encode(i))
            .collect::<Result<_>>()?;
        let samples = self.policy.sample(&prompt_ids, n, 0)?;
        let rollout_seconds = started.elapsed().as_secs_f64();
        let judge_started = Instant::now();
        let items: Vec<Comparison> = batch
            .iter()
            .zip(&samples)
            .flat_map(|(&i, group)| {
                let p = &self.prompts[i];
                let reference = &p.references[self.ladder.rung(&p.id, p.references.len())];
                group.iter().map(move |sample| Comparison {
                    prompt: p.prompt.clone(),
                    response: extract_passage(&sample.text),
                    reference: reference.clone(),
                    criteria: p.criteria.clone(),
                })
            })
            .collect();
        let judged = self.judge.judge(&items)?;
        let judge_seconds = judge_started.elapsed().as_secs_f64();
        let train_started = Instant::now();
        let pairs: Vec<(Vec<u32>, Vec<u32>)> = prompt_ids
            .iter()
            .zip(&samples)
            .flat_map(|(p, group)| group.iter().map(move |s| (p.clone(), s.ids.clone())))
            .collect();
        if let Some(i) = pairs.iter().position(|(_, r)| r.is_empty()) {
            return Err(RlError::Invalid(format!(
                "rollout {i} has no tokens (the rollout server returned an empty completion)"
            )));
        }
        let scores: Vec<f64> = judged.iter().map(|j| j.score).collect();
        let mut report = WritingRlStepReport {
            step: self.policy.step_count() + 1,
            reward_mean: mean(&scores),
            no_verdicts: judged
                .iter()
                .filter(|j| j.outcome == Outcome::NoVerdict)
                .count(),
            response_tokens_mean: mean(
                &pairs
                    .iter()
                    .map(|(_, r)| r.len() as f64)
                    .collect::<Vec<_>>(),
            ),
            rollout_seconds,
            judge_seconds,
            value_loss: f64::NAN,
            value_clip_fraction: f64::NAN,
            ..WritingRlStepReport::default()
        };
        let rate = |o: Outcome| {
            judged.iter().filter(|j| j.outcome == o).count() as f64 / judged.len() as f64
        };
        report.win_rate = rate(Outcome::Win);
        report.tie_rate = rate(Outcome::Tie);
        report.loss_rate = rate(Outcome::Loss);
        let stats = if ppo {
            let mut token_rewards: Vec<Vec<f64>> = pairs
                .iter()
                .zip(&scores)
                .map(|((_, r), &s)| {
                    let mut row = vec![0.0; r.len()];
                    *row.last_mut().expect("non-empty") = s;
                    row
                })
                .collect();
            if let Some(reference) = &self.reference {
                let old = self.policy.response_logps(None, &pairs)?;
                let refs = self.policy.response_logps(Some(reference), &pairs)?;
                let beta = self.config.writing_rl.kl_coef;
                let mut kl_sum = 0.0;
                for ((row, old), refs) in token_rewards.iter_mut().zip(&old).zip(&refs) {
                    let mut seq = 0.0;
                    for ((r, o), f) in row.iter_mut().zip(old).zip(refs) {
                        *r -= beta * (o - f);
                        seq += o - f;
                    }
                    kl_sum += seq / row.len() as f64;
                }
                report.reward_kl = kl_sum / token_rewards.len() as f64;
            }
            let critic = self.critic.as_mut().expect("PPO has a critic");
            let values = critic.values(&pairs)?;
            let s = &self.config.writing_rl;
            let (advantages, returns) = gae_advantages(&token_rewards, &values, s.gamma, s.lam)?;
            let step = self.policy.step_count();
            let cstats = critic.update(&pairs, &values, &returns, step, self.config.max_steps)?;
            report.value_loss = cstats.value_loss;
            report.value_clip_fraction = cstats.value_clip_fraction;
            let seqs: Vec<TokenScoredSequence> = pairs
                .into_iter()
                .zip(advantages)
                .map(|((prompt, response), advantages)| TokenScoredSequence {
                    prompt,
                    response,
                    advantages,
                })
                .collect();
            self.policy.update_token_scored(&seqs)?
        } else {
            let advantages = group_advantages(&scores, n, AdvantageNorm::GroupStd { eps: 1e-6 })?;
            let seqs: Vec<ScoredSequence> = pairs
                .into_iter()
                .zip(advantages)
                .filter(|(_, a)| *a != 0.0)
                .map(|((prompt, response), advantage)| ScoredSequence {
                    prompt,
                    response,
                    advantage,
                })
                .collect();
            self.policy.update_scored(&seqs)?
        };
        report.policy_loss = stats.loss;
        report.clip_fraction = stats.clip_fraction;
        report.approx_kl = stats.approx_kl;
        report.entropy = stats.entropy;
        // Each prompt with a strict win climbs one rung, however many of its rollouts won.
        let winners: Vec<String> = batch
            .iter()
            .enumerate()
            .filter(|&(k, _)| judged[k * n..(k + 1) * n].iter().any(|j| j.strict_win))
            .map(|(_, &i)| self.prompts[i].id.clone())
            .collect();
        report.advanced = self.ladder.advance(winners.iter().map(String::as_str));
        let (rung_sum, top) = self.order.iter().fold((0.0, 0usize), |(sum, top), &i| {
            let p = &self.prompts[i];
            let rung = self.ladder.rung(&p.id, p.references.len());
            (
                sum + rung as f64,
                top + usize::from(rung + 1 == p.references.len()),
            )
        });
        report.ladder_rung_mean = rung_sum / self.order.len() as f64;
        report.ladder_top_fraction = top as f64 / self.order.len() as f64;
        let counts = self.judge.counts();
        report.judge_calls = counts.calls;
        report.judge_cache_hits = counts.cache_hits;
        report.train_seconds = train_started.elapsed().as_secs_f64();
        self.policy.advance_step();
        Ok(report)
    }

    /// Held-out check: `samples` policy responses per prompt (seeded, at the rollout
    /// temperature), judged against each prompt's reference on rung `rung` (clamped): the win
    /// rate, mean score and mean LongBench-Write length score where the prompt names a length.
    pub fn evaluate(
        &mut self,
        prompts: &[WritingPrompt],
        samples: usize,
        rung: usize,
    ) -> Result<HeldOut> {
        let ids: Vec<Vec<u32>> = prompts
            .iter()
            .map(|p| self.policy.encode_user(&p.prompt))
            .collect::<Result<_>>()?;
        let drawn = self.policy.sample(&ids, samples, 1 << 30)?;
        let mut items = Vec::new();
        let mut lengths = Vec::new();
        for (p, group) in prompts.iter().zip(&drawn) {
            for sample in group {
                let response = extract_passage(&sample.text);
                if let Some(x) = super::rubric::required_words(&p.prompt) {
                    lengths.push(super::eval::length_score(
                        x,
                        super::eval::count_words(&response),
                    ));
                }
                items.push(Comparison {
                    prompt: p.prompt.clone(),
                    response,
                    reference: p.references[rung.min(p.references.len() - 1)].clone(),
                    criteria: p.criteria.clone(),
                });
            }
        }
        let judged = self.judge.judge(&items)?;
        Ok(HeldOut {
            win_rate: judged.iter().filter(|j| j.outcome == Outcome::Win).count() as f64
                / judged.len().max(1) as f64,
            score_mean: mean(&judged.iter().map(|j| j.score).collect::<Vec<_>>()),
            length_score_mean: mean(&lengths),
        })
    }

    /// Runs to `max_steps` (selection first), appending reports to `output_dir/metrics.jsonl`,
    /// checkpointing every `save_steps`, and writing `output_dir/policy` (and `critic`) at the
    /// end.
    pub fn train(
        &mut self,
        mut on_step: impl FnMut(&WritingRlStepReport),
    ) -> Result<Vec<WritingRlStepReport>> {
        self.select(|_, _| {})?;
        let out = self.config.output_dir.clone();
        let mut metrics = MetricsLog::open(&out)?;
        let mut reports = Vec::new();
        while self.policy.step_count() < self.config.max_steps {
            let r = self.step()?;
            metrics.append(&r)?;
            on_step(&r);
            reports.push(r);
            let step = self.policy.step_count();
            if step_due(step, self.config.max_steps, self.config.save_steps) {
                self.save_checkpoint()?;
            }
            if step == self.config.max_steps {
                self.policy.save(&out.join("policy"))?;
                if let Some(critic) = &self.critic {
                    let dir = out.join(CRITIC_DIR);
                    let model = self.policy.config().model.clone();
                    qforge_util::write_dir_atomic(&dir, |tmp| critic.save(tmp, &model))?;
                }
            }
        }
        Ok(reports)
    }

    /// `output_dir/checkpoint-STEP` with the policy, critic, ladder and loop state.
    pub fn save_checkpoint(&self) -> Result<std::path::PathBuf> {
        let model = self.policy.config().model.clone();
        self.policy.save_checkpoint_with(|dir| {
            if let Some(critic) = &self.critic {
                critic.save(&dir.join(CRITIC_DIR), &model)?;
            }
            self.ladder.save(&dir.join(LADDER_FILE))?;
            let state = LoopState {
                order: self.order.clone(),
                cursor: self.cursor,
                epoch: self.epoch,
            };
            let path = dir.join(STATE_FILE);
            std::fs::write(&path, serde_json::to_string(&state).expect("serialisable"))
                .with_path(&path)?;
            Ok(())
        })
    }
}

fn write_margins(path: &Path, margins: &[MarginScore]) -> Result<()> {
    let rows: Vec<serde_json::Value> = margins
        .iter()
        .map(|m| serde_json::to_value(m).expect("serialisable"))
        .collect();
    Ok(qforge_util::write_jsonl_atomic(path, &rows)?)
}

fn mean(xs: &[f64]) -> f64 {
    xs.iter().sum::<f64>() / xs.len().max(1) as f64
}

/// The judge for a recipe: the server its `[judge]` names, else the built-in rubric judge.
pub fn judge_for(settings: &super::JudgeSettings) -> Result<PairwiseJudge> {
    let backend: Arc<dyn qforge_engine::ChatBackend> = if settings.url.is_empty() {
        Arc::new(super::RubricJudge)
    } else {
        let mut remote = qforge_engine::RemoteConfig::new(&settings.url, &settings.model);
        if !settings.api_key_env.is_empty() {
            remote.api_key = Some(std::env::var(&settings.api_key_env).map_err(|_| {
                RlError::Invalid(format!(
                    "[judge] api_key_env: ${} is not set",
                    settings.api_key_env
                ))
            })?);
        }
        remote.retries = 0; // the judge retries itself
        Arc::new(
            qforge_engine::RemoteBackend::new(remote).map_err(|source| RlError::Backend {
                context: "writing-rl judge",
                source,
            })?,
        )
    };
    PairwiseJudge::new(backend, settings.clone())
}

//! The QwenLong-L1 recipe (arXiv 2505.17667, specs/longrl.md §1): an optional warm-up SFT,
//! then curriculum phases of GRPO with growing input-length caps. A phase trains on the tasks
//! whose prompt fits its cap (longer prompts are middle-truncated to the last phase's cap and
//! counted), plus hard tasks of earlier phases drawn by difficulty (retrospective sampling).
//! Every phase's policy, metrics and difficulty record are written under `output_dir/phase-K`.

use std::path::PathBuf;
use std::sync::Arc;

use qforge_model::{ChatOptions, Tokenizer, weights::write_json_atomic};
use qforge_train::data::SplitMix;
use qforge_train::trainer::{Objective, TrainConfig, Trainer};
use qforge_train::{Result, TrainError};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::curriculum::{Phase, RetrospectiveConfig, RetrospectiveSampler};
use crate::grpo::{GrpoConfig, GrpoTrainer, StepReport};
use crate::reward::{RewardFn, Task};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QwenLongL1Config {
    /// The starting policy.
    pub model: PathBuf,
    pub output_dir: PathBuf,
    /// Warm-up SFT data (TRL JSONL); none skips the warm-up.
    pub sft_data: Option<PathBuf>,
    /// Settings of the warm-up (model, data and output_dir are filled in).
    pub sft: TrainConfig,
    pub phases: Vec<Phase>,
    pub retrospective: RetrospectiveConfig,
    /// GRPO settings shared by the phases (model, output_dir, max_steps and max_prompt_tokens
    /// are set per phase).
    pub grpo: GrpoConfig,
}

impl Default for QwenLongL1Config {
    fn default() -> Self {
        Self {
            model: PathBuf::new(),
            output_dir: PathBuf::from("runs/qwenlong-l1"),
            sft_data: None,
            sft: TrainConfig::default(),
            phases: vec![
                Phase {
                    max_input_tokens: 20_000,
                    steps: 100,
                },
                Phase {
                    max_input_tokens: 60_000,
                    steps: 100,
                },
            ],
            retrospective: RetrospectiveConfig::default(),
            // The released DAPO script: G 8, temperature 0.7, top-p 0.95, lr 2e-6, token-mean,
            // no KL, dynamic sampling.
            grpo: GrpoConfig {
                group_size: 8,
                temperature: 0.7,
                top_p: 0.95,
                lr: 2e-6,
                max_new_tokens: 10_000,
                filter: crate::grpo::GroupFilter::Dapo,
                ..GrpoConfig::default()
            },
        }
    }
}

/// What a phase did.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PhaseResult {
    pub phase: usize,
    pub max_input_tokens: usize,
    pub tasks: usize,
    pub retrospective_tasks: usize,
    pub truncated_prompts: usize,
    pub policy: PathBuf,
    pub final_reward_mean: f64,
}

/// Runs the warm-up and every phase; `on_step` sees each GRPO step with its phase.
pub fn run(
    cfg: &QwenLongL1Config,
    tasks: &[Task],
    reward: Arc<dyn RewardFn>,
    mut on_step: impl FnMut(usize, &StepReport),
) -> Result<Vec<PhaseResult>> {
    if cfg.phases.is_empty() {
        return Err(TrainError::Invalid("no curriculum phases".into()));
    }
    let mut policy = cfg.model.clone();
    if let Some(data) = &cfg.sft_data {
        let out = cfg.output_dir.join("warmup");
        let done = out.join("final");
        if !done.is_dir() {
            let mut t = Trainer::new(
                TrainConfig {
                    model: policy.clone(),
                    data: data.clone(),
                    output_dir: out.clone(),
                    ..cfg.sft.clone()
                },
                Objective::Sft,
            )?;
            t.train(|_| {}, |_| {})?;
            t.save_model(&done)?;
        }
        policy = done;
    }
    // Prompt lengths with the policy's template, for the phase caps.
    let tok = Tokenizer::from_dir(&policy)?;
    let lengths: Vec<usize> = tasks
        .iter()
        .map(|t| {
            let text = tok.apply_chat_template(&t.messages, &ChatOptions::generation())?;
            Ok(tok.encode(&text, false)?.len())
        })
        .collect::<Result<_>>()?;
    let last_cap = cfg.phases.last().expect("non-empty").max_input_tokens;
    let mut sampler = RetrospectiveSampler::new(cfg.retrospective);
    let mut rng = SplitMix(cfg.grpo.seed ^ 0x5EED);
    let mut results = Vec::new();
    let mut previous_cap = 0;
    for (k, phase) in cfg.phases.iter().enumerate() {
        let dir = cfg.output_dir.join(format!("phase-{}", k + 1));
        let done = dir.join("phase.json");
        if done.is_file() {
            let r: PhaseResult =
                serde_json::from_str(&std::fs::read_to_string(&done).map_err(|e| {
                    TrainError::Io {
                        path: done.clone(),
                        source: e,
                    }
                })?)
                .map_err(|e| TrainError::Invalid(format!("{}: {e}", done.display())))?;
            let record: Vec<(usize, f64)> = serde_json::from_str(
                &std::fs::read_to_string(dir.join("difficulty.json")).map_err(|e| {
                    TrainError::Io {
                        path: dir.join("difficulty.json"),
                        source: e,
                    }
                })?,
            )
            .map_err(|e| TrainError::Invalid(e.to_string()))?;
            sampler.end_phase(&record);
            policy = r.policy.clone();
            previous_cap = phase.max_input_tokens;
            results.push(r);
            continue;
        }
        // This phase's tasks: those new at this cap (longer than the previous one), the
        // over-long ones in the last phase (middle-truncated), then the retrospective draws.
        let mut chosen: Vec<usize> = (0..tasks.len())
            .filter(|&i| {
                let l = lengths[i];
                (l <= phase.max_input_tokens && (l > previous_cap || k == 0))
                    || (k + 1 == cfg.phases.len() && l > last_cap)
            })
            .collect();
        if chosen.is_empty() {
            chosen = (0..tasks.len())
                .filter(|&i| lengths[i] <= phase.max_input_tokens)
                .collect();
        }
        let extra = sampler.draw(sampler.retrospective_count(chosen.len()), &mut rng);
        let retrospective_tasks = extra.len();
        chosen.extend(extra);
        if chosen.is_empty() {
            return Err(TrainError::Invalid(format!(
                "phase {}: no task fits {} input tokens",
                k + 1,
                phase.max_input_tokens
            )));
        }
        let phase_tasks: Vec<Task> = chosen.iter().map(|&i| tasks[i].clone()).collect();
        let mut trainer = GrpoTrainer::new(
            GrpoConfig {
                model: policy.clone(),
                output_dir: dir.clone(),
                max_steps: phase.steps,
                max_prompt_tokens: phase.max_input_tokens,
                ..cfg.grpo.clone()
            },
            phase_tasks,
            reward.clone(),
        )?;
        let reports = trainer.train(|r| on_step(k + 1, r))?;
        // Difficulty record: each original task's mean reward in this phase.
        let means = trainer.mean_rewards();
        let mut record: Vec<(usize, f64)> = Vec::new();
        for (j, m) in means.into_iter().enumerate() {
            if let Some(m) = m
                && !record.iter().any(|(i, _)| *i == chosen[j])
            {
                record.push((chosen[j], m));
            }
        }
        write_json_atomic(&dir.join("difficulty.json"), &json!(record))?;
        sampler.end_phase(&record);
        let result = PhaseResult {
            phase: k + 1,
            max_input_tokens: phase.max_input_tokens,
            tasks: chosen.len() - retrospective_tasks,
            retrospective_tasks,
            truncated_prompts: trainer.truncated_prompts(),
            policy: dir.join("policy"),
            final_reward_mean: reports.last().map_or(f64::NAN, |r| r.reward_mean),
        };
        write_json_atomic(&done, &serde_json::to_value(&result).expect("serialisable"))?;
        policy = result.policy.clone();
        previous_cap = phase.max_input_tokens;
        results.push(result);
    }
    Ok(results)
}

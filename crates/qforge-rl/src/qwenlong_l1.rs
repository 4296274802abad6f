//! The QwenLong-L1 recipe (arXiv 2505.17667): an optional warm-up SFT,
//! then curriculum phases of GRPO with growing input-length caps. A phase trains on the tasks
//! whose prompt fits its cap (longer prompts are middle-truncated to the last phase's cap and
//! counted), plus hard tasks of earlier phases drawn by difficulty (retrospective sampling).
//! Every phase's policy, metrics and difficulty record are written under `output_dir/phase-K`.

use std::path::PathBuf;
use std::sync::Arc;

use crate::error::{Result, RlError};
use qforge_model::{ChatOptions, Tokenizer};
use qforge_train::trainer::{Objective, TrainConfig, Trainer};
use qforge_util::SplitMix;
use qforge_util::{WithPath, write_json_atomic};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::curriculum::{Phase, RetrospectiveConfig, RetrospectiveSampler};
use crate::grpo::{GrpoConfig, GrpoStepReport, GrpoTrainer};
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
    mut on_step: impl FnMut(usize, &GrpoStepReport),
) -> Result<Vec<PhaseResult>> {
    if cfg.phases.is_empty() {
        return Err(RlError::Invalid("no curriculum phases".into()));
    }
    let mut policy = qforge_model::resolve_model_path(&cfg.model)?;
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
                serde_json::from_str(&std::fs::read_to_string(&done).with_path(&done)?)
                    .map_err(|e| RlError::file(&done, e))?;
            let difficulty = dir.join("difficulty.json");
            let record: Vec<(usize, f64)> =
                serde_json::from_str(&std::fs::read_to_string(&difficulty).with_path(&difficulty)?)
                    .map_err(|e| RlError::file(&difficulty, e))?;
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
            return Err(RlError::Invalid(format!(
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

/// The `[reward]` table of a QwenLong-L1 recipe.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RewardSettings {
    /// `docqa` (default), `docmath`, `choice` or `em`.
    pub kind: Option<String>,
    /// An OpenAI-compatible server for the LLM judge, asked when the rule reward is below 1.
    pub judge_url: Option<String>,
    pub judge_model: Option<String>,
}

/// A QwenLong-L1 recipe: its task files, the reward settings and the run's settings.
pub struct Recipe {
    pub task_files: Vec<PathBuf>,
    pub reward: RewardSettings,
    pub config: QwenLongL1Config,
}

impl Recipe {
    /// Reads the recipe (TOML) and applies `--set` overrides to the run's settings.
    pub fn load(path: &std::path::Path, overrides: &[String]) -> Result<Self> {
        use qforge_util::settings::{read_toml, table_into, take_paths, take_table, with_sets};
        let mut table: toml::Table = read_toml(path)?;
        let task_files = take_paths(&mut table, "tasks", "task files")?;
        let reward: RewardSettings = take_table(&mut table, "reward")?;
        let recipe = Self {
            task_files,
            config: with_sets(table_into(table, path)?, overrides)?,
            reward,
        };
        recipe.rule()?;
        Ok(recipe)
    }

    /// The rule reward the recipe names.
    pub fn rule(&self) -> Result<Arc<dyn RewardFn>> {
        use crate::reward::{ChoiceMatch, DocMath, ExactMatch, Extraction, SubEm};
        Ok(match self.reward.kind.as_deref().unwrap_or("docqa") {
            "docqa" => Arc::new(SubEm(Extraction::TheAnswerIs)),
            "docmath" => Arc::new(DocMath),
            "choice" => Arc::new(ChoiceMatch),
            "em" => Arc::new(ExactMatch(Extraction::TheAnswerIs)),
            other => {
                return Err(RlError::Invalid(format!(
                    "[reward] kind `{other}`: docqa, docmath, choice or em"
                )));
            }
        })
    }

    /// The paper's hybrid reward: the rule, or the judge where the rule gives less than 1
    /// (the rule alone without a `judge_url`).
    pub fn reward(&self) -> Result<Arc<dyn RewardFn>> {
        let rule = self.rule()?;
        let Some(url) = &self.reward.judge_url else {
            return Ok(rule);
        };
        let remote = qforge_engine::RemoteBackend::new(qforge_engine::RemoteConfig::new(
            url.clone(),
            self.reward.judge_model.clone().unwrap_or_default(),
        ))
        .map_err(|source| RlError::Backend {
            context: "[reward] judge_url",
            source,
        })?;
        Ok(Arc::new(crate::judge::HybridReward {
            rule,
            judge: Arc::new(
                crate::judge::JudgeReward::new(
                    Arc::new(remote),
                    crate::reward::extract_the_answer_is,
                )
                .map_err(|source| RlError::Runtime {
                    what: "the judge's runtime",
                    source,
                })?,
            ),
        }))
    }

    /// The tasks of every task file.
    pub fn tasks(&self) -> Result<Vec<Task>> {
        let mut tasks = Vec::new();
        for f in &self.task_files {
            tasks.extend(crate::tasks::load_tasks(f)?);
        }
        Ok(tasks)
    }
}

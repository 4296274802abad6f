//! SPELL (arXiv 2509.23863): one policy plays questioner, responder and verifier over document
//! clusters and learns all three roles in one GRPO update. Follows the released code
//! (`Tongyi-Zhiwen/Qwen-Doc`, `SPELL/`, commit 12489b0): `verl/trainer/ppo/ray_spell_trainer.py`
//! (the loop), `core_algos.py` (`questioner_mapping_function`,
//! `compute_spell_grpo_outcome_advantage`), `verl/utils/dataset/spell_dataset.py` (history
//! memory), `prompts.py`, `reward_score/{docqa,long,docmath}.py` and
//! `scripts/spell_qwen2.5_7b_instruct.sh` (the defaults of [`SpellSettings`]).
//!
//! One step ([`trainer::SpellTrainer::step`]): questioner prompts from clusters (memory-aware) →
//! one question each, parsed ([`questioner`]) → closed-book grounding check → G responder
//! samples over the whole cluster, rule-scored ([`reward`]) → n verifier judgements per answer,
//! majority-combined ([`verifier`]) → dynamic sampling until `prompts_per_step` informative
//! questions → history memory update ([`memory`]) → the unified batch ([`batch`]) with role
//! advantages ([`advantage`]) → one policy update.
//!
//! Where the released code differs from the paper or does something surprising, the released
//! code is followed and the choice is written where it is made:
//! - The multiple-choice template's `<correct_answer>` is filled with a random letter only for a
//!   task named `docmath_mc`, so for `doc_mc` it stays literal (`balance_mc_letters` fills it).
//! - The memory's duplicate check never skips anything (its `continue` ends an inner loop).
//! - Questions whose answer is not a usable number, or over 40 tokens, and unfinished thinking
//!   are dropped without a questioner penalty; only format errors are `bad_format`.
//! - The verifier reads the text after `</think>` and takes a plain-substring YES/NO test; its
//!   majority may be "malformed", in which case the rule reward stands.
//! - Differences here: a lone questioner sample of a task gets advantage 0 (released: NaN); when
//!   `max_gen_batches` rounds do not fill the batch, the step trains on what it has (released:
//!   an error); the memory view draws new paragraphs with this crate's seeded RNG.

pub mod advantage;
pub mod batch;
pub mod clusters;
pub mod eval;
pub mod memory;
pub mod prompts;
pub mod questioner;
pub mod reward;
pub mod trainer;
pub mod verifier;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::grpo::GrpoConfig;
use crate::{Result, RlError};

pub use advantage::{CaseType, QuestionerReward, Role, RoleSample, spell_advantages};
pub use clusters::DocumentCluster;
pub use memory::HistoryMemory;
pub use trainer::{SpellStepReport, SpellTrainer};
pub use verifier::VerifierLabel;

/// The three questioner tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SpellTask {
    /// A multi-step numeric question with one non-zero number as the answer.
    DocmathQa,
    /// A multi-hop question over all given paragraphs, answer at most 20 tokens.
    DocGeneralQa,
    /// A four-option multiple-choice question.
    DocMc,
}

impl SpellTask {
    pub const ALL: [SpellTask; 3] = [
        SpellTask::DocmathQa,
        SpellTask::DocGeneralQa,
        SpellTask::DocMc,
    ];

    pub fn name(self) -> &'static str {
        match self {
            SpellTask::DocmathQa => "docmath_qa",
            SpellTask::DocGeneralQa => "doc_general_qa",
            SpellTask::DocMc => "doc_mc",
        }
    }
}

/// A corpus of clusters and the tasks it feeds (`data.tasks`, `data.n_docs`). A corpus feeding
/// several tasks is shuffled and split between them, as released.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CorpusSettings {
    pub path: PathBuf,
    pub tasks: Vec<SpellTask>,
    /// Paragraphs shown to the questioner per new round, one drawn from this list (m = 5).
    #[serde(default = "default_n_docs")]
    pub n_docs: Vec<usize>,
}

fn default_n_docs() -> Vec<usize> {
    vec![5]
}

/// The `[spell]` table: the released 7B script's settings by default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SpellSettings {
    /// Questioner prompts per generation round (`data.gen_batch_size`).
    pub gen_batch_size: usize,
    /// Rounds per step at most before training on what was kept (`max_num_gen_batches`).
    pub max_gen_batches: usize,
    /// Relative weights of the tasks in a round (`domain_sampling.init_weights`).
    pub task_weights: Vec<(SpellTask, f64)>,
    pub questioner_reward: QuestionerReward,
    /// z-score questioner rewards over the batch's samples of the same task (`group=batch`).
    pub questioner_batch_norm: bool,
    /// Bad questioner cases per good one, stratified by task (`questioner_bad_case_ratio`).
    pub bad_case_ratio: f64,
    /// Drop questions answered closed-book (`filter_questioner_prompts`).
    pub grounding_filter: bool,
    /// A closed-book rule score at or above this makes a question `bad_ground`.
    pub grounding_threshold: f64,
    /// Remembered questions per cluster (`cache_size`, L).
    pub memory_size: usize,
    /// Questions whose responder mean reward lies in this range are remembered.
    pub memory_window: (f64, f64),
    /// Judge each responder answer with the policy itself (`self_verification.enable`).
    pub self_verification: bool,
    /// Train the verifier role (`self_verification.update`).
    pub update_verifier: bool,
    /// Judgements per answer (`self_verification.n`).
    pub verifier_n: usize,
    /// Verifier groups kept = responder samples × this / n (`update_ratio`).
    pub verifier_update_ratio: f64,
    /// Agreement window for a verifier group to train (`update_lower_bound`, `update_upper_bound`).
    pub verifier_window: (f64, f64),
    pub verifier_label: VerifierLabel,
    pub verifier_tasks: Vec<SpellTask>,
    /// General-QA answers longer than this many tokens are dropped.
    pub max_answer_tokens: usize,
    /// Fill the multiple-choice template's target letter with a random A–D (not released).
    pub balance_mc_letters: bool,
    /// A directory whose `questioner_*.txt`, `responder_*.txt` or `verifier.txt` replace the
    /// released prompts of the same names (see [`prompts::PromptSet`]).
    pub prompts_dir: Option<PathBuf>,
    /// Sample every role from this OpenAI-compatible server (`qforge serve
    /// --allow-weight-reload`, SGLang), which loads the policy before each step, instead of
    /// the embedded engine.
    pub rollout_url: Option<String>,
    pub rollout_model: Option<String>,
    /// Held-out questions (JSONL of `task`, `cluster`, `question`, `answer`) scored greedily by
    /// the responder every `eval_steps` steps (0: never).
    pub eval_questions: Option<PathBuf>,
    pub eval_steps: u64,
}

impl Default for SpellSettings {
    fn default() -> Self {
        Self {
            gen_batch_size: 480,
            max_gen_batches: 10,
            task_weights: SpellTask::ALL.iter().map(|&t| (t, 1.0)).collect(),
            questioner_reward: QuestionerReward::Gaussian,
            questioner_batch_norm: true,
            bad_case_ratio: 1.0,
            grounding_filter: true,
            grounding_threshold: 0.1,
            memory_size: 3,
            memory_window: (0.01, 1.0),
            self_verification: true,
            update_verifier: true,
            verifier_n: 8,
            verifier_update_ratio: 0.125,
            verifier_window: (0.51, 0.99),
            verifier_label: VerifierLabel::MajCons,
            verifier_tasks: SpellTask::ALL.to_vec(),
            max_answer_tokens: 40,
            balance_mc_letters: false,
            prompts_dir: None,
            rollout_url: None,
            rollout_model: None,
            eval_questions: None,
            eval_steps: 0,
        }
    }
}

/// A SPELL recipe: the corpora, the policy trainer's settings (`[grpo]`) and `[spell]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SpellConfig {
    pub model: PathBuf,
    pub output_dir: PathBuf,
    pub max_steps: u64,
    /// Checkpoint every N steps (0: only at the end).
    pub save_steps: u64,
    pub seed: u64,
    pub corpora: Vec<CorpusSettings>,
    pub grpo: GrpoConfig,
    pub spell: SpellSettings,
}

impl Default for SpellConfig {
    fn default() -> Self {
        Self {
            model: PathBuf::new(),
            output_dir: PathBuf::from("runs/spell"),
            max_steps: 100,
            save_steps: 10,
            seed: 42,
            corpora: Vec::new(),
            grpo: spell_grpo_defaults(),
            spell: SpellSettings::default(),
        }
    }
}

/// The released scripts' policy settings: G = 8, 128 questions per step, one on-policy update,
/// lr 2e-6, clip 0.2/0.2, token-mean, no KL or entropy, temperature 0.7, top-p 0.95, 18000
/// prompt tokens, 4096 response tokens.
pub fn spell_grpo_defaults() -> GrpoConfig {
    GrpoConfig {
        group_size: 8,
        prompts_per_step: 128,
        max_new_tokens: 4096,
        temperature: 0.7,
        top_p: 0.95,
        lr: 2e-6,
        mini_batches: 1,
        epochs: 1,
        clip_low: 0.2,
        clip_high: 0.2,
        aggregation: "token-mean".into(),
        kl_coef: 0.0,
        entropy_coef: 0.0,
        max_prompt_tokens: 18000,
        ..GrpoConfig::default()
    }
}

impl SpellConfig {
    /// Reads a recipe (TOML) and applies `--set key=value` overrides.
    pub fn from_recipe(path: &std::path::Path, overrides: &[String]) -> Result<Self> {
        use qforge_util::settings::{read_toml, table_into, with_sets};
        let table = read_toml(path)?;
        let mut config: Self = with_sets(table_into(table, path)?, overrides)?;
        let base = path.parent().unwrap_or(std::path::Path::new("."));
        // Paths are read from the working directory, else next to the recipe.
        let near = |p: &mut PathBuf| {
            if p.is_relative() && !p.exists() && base.join(&*p).exists() {
                *p = base.join(&*p);
            }
        };
        for c in &mut config.corpora {
            near(&mut c.path);
        }
        for path in [
            &mut config.spell.prompts_dir,
            &mut config.spell.eval_questions,
        ]
        .into_iter()
        .flatten()
        {
            near(path);
        }
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<()> {
        let s = &self.spell;
        let bad = |m: String| Err(RlError::Invalid(m));
        if self.corpora.is_empty() {
            return bad("a SPELL recipe needs at least one [[corpora]] entry".into());
        }
        for c in &self.corpora {
            if c.tasks.is_empty() || c.n_docs.is_empty() || c.n_docs.contains(&0) {
                return bad(format!(
                    "corpus {}: needs tasks and n_docs of at least 1",
                    c.path.display()
                ));
            }
        }
        if self.grpo.group_size < 2 || self.grpo.prompts_per_step == 0 || s.gen_batch_size == 0 {
            return bad(
                "[grpo] group_size >= 2, prompts_per_step >= 1, [spell] gen_batch_size >= 1".into(),
            );
        }
        if s.self_verification && s.verifier_n == 0 {
            return bad("[spell] verifier_n must be at least 1".into());
        }
        if s.task_weights
            .iter()
            .any(|(_, w)| !(w.is_finite() && *w >= 0.0))
        {
            return bad("[spell] task_weights must be finite and non-negative".into());
        }
        Ok(())
    }

    /// The policy trainer's settings with this recipe's model, output, steps and seed.
    pub fn grpo_config(&self) -> GrpoConfig {
        GrpoConfig {
            model: self.model.clone(),
            output_dir: self.output_dir.clone(),
            max_steps: self.max_steps,
            save_steps: self.save_steps,
            seed: self.seed,
            ..self.grpo.clone()
        }
    }
}

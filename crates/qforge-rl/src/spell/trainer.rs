//! The SPELL step loop on the shared GRPO policy trainer (`RaySPELLTrainer.fit`).

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Instant;

use qforge_util::{SplitMix, WithPath};
use serde::{Deserialize, Serialize};

use super::advantage::{CaseType, Role, RoleSample, spell_advantages};
use super::batch::{sample_bad_cases, sample_verifier_groups};
use super::clusters::{DocumentCluster, fit_to_prompt_cap, load_clusters};
use super::memory::{HistoryEntry, HistoryMemory, examples_text};
use super::prompts::PromptSet;
use super::questioner::{QuestionerOutput, parse_questioner_output};
use super::reward::{ground_truth_text, rule_score};
use super::verifier::{combined_reward, majority, parse_judgement, verifier_group};
use super::{SpellConfig, SpellTask};
use crate::grpo::{GrpoTrainer, Sample, ScoredSequence};
use crate::{Result, RlError};

/// Which generation a batch of prompts is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Questioner,
    /// The closed-book grounding check (context "Empty").
    Grounding,
    Responder,
    Verifier,
    /// Held-out responder questions, greedy.
    Evaluation,
}

/// Where samples come from. The trainer's own policy ([`PolicySamples`]) in every real run; a
/// test may script the three roles' text (a simulator of a policy) while the updates still run
/// on the real model.
pub trait SampleSource: Send {
    fn sample(
        &mut self,
        policy: &mut GrpoTrainer,
        phase: Phase,
        prompts: &[Vec<u32>],
        n: usize,
        stream: u64,
    ) -> Result<Vec<Vec<Sample>>>;
}

/// Samples from the policy being trained (embedded engine or rollout server).
pub struct PolicySamples;

impl SampleSource for PolicySamples {
    fn sample(
        &mut self,
        policy: &mut GrpoTrainer,
        phase: Phase,
        prompts: &[Vec<u32>],
        n: usize,
        stream: u64,
    ) -> Result<Vec<Vec<Sample>>> {
        if phase == Phase::Evaluation {
            return Ok(policy
                .sample_greedy(prompts)?
                .into_iter()
                .map(|s| vec![s])
                .collect());
        }
        policy.sample(prompts, n, stream)
    }
}

/// A held-out responder question.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalQuestion {
    pub task: SpellTask,
    /// The id of the cluster the responder reads.
    pub cluster: String,
    pub question: String,
    pub answer: String,
}

/// What one step did (one line of `metrics.jsonl`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SpellStepReport {
    pub step: u64,
    pub generation_rounds: usize,
    /// Samples of each role in the update.
    pub questioner_samples: usize,
    pub responder_samples: usize,
    pub verifier_samples: usize,
    /// Questioner cases over all rounds.
    pub bad_format: usize,
    pub bad_ground: usize,
    pub zero_variance: usize,
    pub good: usize,
    /// Dropped without penalty: unusable answers, unfinished thinking, over-long prompts.
    pub invalid: usize,
    pub unfinished: usize,
    pub overlong_prompts: usize,
    /// Bad cases in the update, and good ones.
    pub questioner_bad_trained: usize,
    /// Responder groups by pass rate: 0, (0, ⅓], (⅓, ⅔), [⅔, 1), 1.
    pub pass_rate_histogram: [usize; 5],
    /// Mean responder pass rate over every question answered (SPELL pushes it toward 0.5).
    pub pass_rate_mean: f64,
    /// Mean combined responder reward, and the rule reward alone.
    pub responder_reward_mean: f64,
    pub rule_reward_mean: f64,
    /// Mean share of valid judgements agreeing with their majority.
    pub verifier_agreement_mean: f64,
    /// Verifier groups that passed the window (and rule-consistency) this step.
    pub verifier_groups_passing: usize,
    /// Mean evidence paragraphs shown to the questioner.
    pub evidence_mean: f64,
    /// Questions in the history memory.
    pub memory_questions: usize,
    pub loss: f64,
    pub clip_fraction: f64,
    pub entropy: f64,
    pub train_tokens: usize,
    pub questioner_seconds: f64,
    pub grounding_seconds: f64,
    pub responder_seconds: f64,
    pub verifier_seconds: f64,
    pub update_seconds: f64,
    /// Held-out responder accuracy (greedy), on evaluation steps.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eval_accuracy: Option<f64>,
    /// No sample to learn from: no update.
    pub skipped: bool,
}

/// Clusters feeding one task.
struct TaskPool {
    task: SpellTask,
    clusters: Vec<usize>,
    n_docs: Vec<usize>,
    weight: f64,
}

/// What a checkpoint needs besides the policy to continue the same curriculum.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct SpellState {
    memory: HistoryMemory,
    /// Per task pool: (epoch, position) in its shuffled cluster order.
    cursors: Vec<(u64, usize)>,
    next_uid: u64,
}

const SPELL_STATE: &str = "spell_state.json";

/// A questioner sample awaiting its case.
struct QuestionerRecord {
    uid: u64,
    task: SpellTask,
    prompt: Vec<u32>,
    response: Vec<u32>,
    fate: Fate,
}

/// Where a questioner sample stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    /// Its question may still reach the batch as a good case.
    Pending,
    /// A bad case the update may sample.
    Bad(CaseType),
    /// Skipped without penalty (its responder prompt was over the cap).
    Dropped,
}

struct Group {
    uid: u64,
    task: SpellTask,
    prompt: Vec<u32>,
    /// Response tokens and reward (combined responder reward or verifier score).
    samples: Vec<(Vec<u32>, f64)>,
}

/// A question on its way to the responder.
struct Question {
    record: usize,
    cluster: usize,
    evidence: Vec<usize>,
    question: String,
    answer: String,
}

pub struct SpellTrainer {
    config: SpellConfig,
    policy: GrpoTrainer,
    source: Box<dyn SampleSource>,
    clusters: Vec<DocumentCluster>,
    pools: Vec<TaskPool>,
    state: SpellState,
    eval: Vec<EvalQuestion>,
    overlong_clusters: Vec<String>,
    prompts: PromptSet,
}

impl SpellTrainer {
    /// Loads the corpora, the policy (resuming the newest checkpoint of `output_dir` with its
    /// history memory) and the held-out questions.
    pub fn new(config: SpellConfig) -> Result<Self> {
        config.validate()?;
        let s = &config.spell;
        let n = s.verifier_n;
        let reachable = (n.div_ceil(2)..=n)
            .map(|k| k as f64 / n as f64)
            .any(|a| s.verifier_window.0 <= a && a <= s.verifier_window.1);
        if s.self_verification && s.update_verifier && !reachable {
            tracing::warn!(
                "no group of {n} judgements has an agreement inside the verifier window {:?}: the verifier role will not train",
                s.verifier_window
            );
        }
        let prompts = match &config.spell.prompts_dir {
            Some(dir) => PromptSet::from_dir(dir)?,
            None => PromptSet::released(),
        };
        let mut policy = GrpoTrainer::policy(config.grpo_config())?;
        if let Some(url) = &config.spell.rollout_url {
            let backend = qforge_engine::RemoteBackend::new(qforge_engine::RemoteConfig::new(
                url.clone(),
                config.spell.rollout_model.clone().unwrap_or_default(),
            ))
            .map_err(|source| RlError::Backend {
                context: "[spell] rollout_url",
                source,
            })?;
            policy = policy.with_remote_rollouts(backend)?;
        }
        let cap = config.grpo.max_prompt_tokens;
        let tokenizer = policy.tokenizer().clone();
        let count = |t: &str| Ok(tokenizer.encode(t, false)?.len());
        let mut clusters = Vec::new();
        let mut overlong_clusters = Vec::new();
        let mut pools: Vec<TaskPool> = Vec::new();
        for (c, corpus) in config.corpora.iter().enumerate() {
            // A cluster the responder could never read within the prompt cap only wastes
            // questioner samples (the released loop skips such prompts one by one).
            let (loaded, over) = fit_to_prompt_cap(load_clusters(&corpus.path)?, cap, &count)?;
            if !over.is_empty() {
                tracing::warn!(
                    "{}: {} clusters exceed max_prompt_tokens = {cap} and are left out",
                    corpus.path.display(),
                    over.len()
                );
            }
            overlong_clusters.extend(over);
            let first = clusters.len();
            let mut idx: Vec<usize> = (first..first + loaded.len()).collect();
            clusters.extend(loaded);
            // A corpus serving k tasks is shuffled and split into k parts (np.array_split).
            let k = corpus.tasks.len();
            if k > 1 {
                SplitMix(config.seed ^ (c as u64 + 1)).shuffle(&mut idx);
            }
            let (base, extra) = (idx.len() / k, idx.len() % k);
            let mut at = 0;
            for (j, &task) in corpus.tasks.iter().enumerate() {
                let take = base + usize::from(j < extra);
                let part = idx[at..at + take].to_vec();
                at += take;
                let weight = config
                    .spell
                    .task_weights
                    .iter()
                    .find(|(t, _)| *t == task)
                    .map_or(0.0, |&(_, w)| w);
                match pools.iter_mut().find(|p| p.task == task) {
                    Some(p) => p.clusters.extend(part),
                    None => pools.push(TaskPool {
                        task,
                        clusters: part,
                        n_docs: corpus.n_docs.clone(),
                        weight,
                    }),
                }
            }
        }
        pools.retain(|p| !p.clusters.is_empty() && p.weight > 0.0);
        if pools.is_empty() {
            return Err(RlError::Invalid(
                "no task has both clusters and a positive weight".into(),
            ));
        }
        let mut state = SpellState {
            memory: HistoryMemory::new(config.spell.memory_size),
            cursors: vec![(0, 0); pools.len()],
            next_uid: 0,
        };
        if let Some(dir) = policy.resumed_from() {
            let path = dir.join(SPELL_STATE);
            let text = std::fs::read_to_string(&path).with_path(&path)?;
            state = serde_json::from_str(&text).map_err(|e| RlError::file(&path, e))?;
            if state.cursors.len() != pools.len() {
                return Err(RlError::Invalid(format!(
                    "{}: the run had {} task pools, now {}",
                    dir.display(),
                    state.cursors.len(),
                    pools.len()
                )));
            }
        }
        let eval = match &config.spell.eval_questions {
            Some(path) => load_eval_questions(path, &clusters)?,
            None => Vec::new(),
        };
        Ok(Self {
            config,
            policy,
            source: Box::new(PolicySamples),
            clusters,
            pools,
            state,
            eval,
            overlong_clusters,
            prompts,
        })
    }

    /// Ids of clusters left out because their text alone exceeds `max_prompt_tokens`.
    pub fn overlong_clusters(&self) -> &[String] {
        &self.overlong_clusters
    }

    /// Replaces where samples come from (tests script the roles' text with it).
    pub fn with_source(mut self, source: Box<dyn SampleSource>) -> Self {
        self.source = source;
        self
    }

    pub fn policy(&self) -> &GrpoTrainer {
        &self.policy
    }

    pub fn memory(&self) -> &HistoryMemory {
        &self.state.memory
    }

    pub fn clusters(&self) -> &[DocumentCluster] {
        &self.clusters
    }

    fn sample(
        &mut self,
        phase: Phase,
        prompts: &[Vec<u32>],
        n: usize,
        stream: u64,
    ) -> Result<Vec<Vec<Sample>>> {
        let out = self
            .source
            .sample(&mut self.policy, phase, prompts, n, stream)?;
        if out.len() != prompts.len() || out.iter().any(|g| g.len() != n) {
            return Err(RlError::Invalid(format!(
                "{phase:?} sampling returned the wrong number of samples"
            )));
        }
        Ok(out)
    }

    /// `gen_batch_size` (pool, cluster) draws split by task weight (remainder to the heaviest
    /// tasks), each pool walking its own shuffled order epoch by epoch.
    fn draw_round(&mut self) -> Vec<(usize, usize)> {
        let total: f64 = self.pools.iter().map(|p| p.weight).sum();
        let n = self.config.spell.gen_batch_size;
        let mut counts: Vec<usize> = self
            .pools
            .iter()
            .map(|p| (n as f64 * p.weight / total).floor() as usize)
            .collect();
        let mut by_weight: Vec<usize> = (0..self.pools.len()).collect();
        by_weight.sort_by(|&a, &b| self.pools[b].weight.total_cmp(&self.pools[a].weight));
        let mut left = n - counts.iter().sum::<usize>();
        for &p in by_weight.iter().cycle() {
            if left == 0 {
                break;
            }
            counts[p] += 1;
            left -= 1;
        }
        let seed = self.config.seed;
        let shuffled = |pool: &TaskPool, p: usize, epoch: u64| {
            let mut order = pool.clusters.clone();
            SplitMix(seed ^ (epoch << 16) ^ (p as u64) << 40).shuffle(&mut order);
            order
        };
        let mut draws = Vec::with_capacity(n);
        for (p, &count) in counts.iter().enumerate() {
            let pool = &self.pools[p];
            let (epoch, cursor) = &mut self.state.cursors[p];
            // One shuffle per pool and epoch, not per draw.
            let mut order = shuffled(pool, p, *epoch);
            for _ in 0..count {
                if *cursor == pool.clusters.len() {
                    *epoch += 1;
                    *cursor = 0;
                    order = shuffled(pool, p, *epoch);
                }
                draws.push((p, order[*cursor]));
                *cursor += 1;
            }
        }
        draws
    }

    /// One SPELL step: generation rounds until `prompts_per_step` informative questions (or
    /// `max_gen_batches` rounds), then one update over the three roles' samples.
    pub fn step(&mut self) -> Result<SpellStepReport> {
        let cfg = self.config.clone();
        let s = &cfg.spell;
        let g = cfg.grpo.group_size;
        let step = self.policy.step_count();
        let mut rng = SplitMix(cfg.seed ^ (step + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let mut report = SpellStepReport {
            step: step + 1,
            ..SpellStepReport::default()
        };
        let mut questioners: Vec<QuestionerRecord> = Vec::new();
        let mut responder_groups: Vec<Group> = Vec::new();
        let mut verifier_groups: Vec<Group> = Vec::new();
        let (mut pass_sum, mut pass_n) = (0.0, 0usize);
        let (mut reward_sum, mut rule_sum, mut reward_n) = (0.0, 0.0, 0usize);
        let (mut agree_sum, mut agree_n) = (0.0, 0usize);
        let (mut evidence_sum, mut evidence_n) = (0usize, 0usize);
        for round in 0..s.max_gen_batches.max(1) {
            report.generation_rounds += 1;
            let stream = round as u64 * 4;
            // 1. Questioner: one question per drawn cluster, from the memory-aware view.
            let draws = self.draw_round();
            let mut views = Vec::with_capacity(draws.len());
            let mut prompts = Vec::with_capacity(draws.len());
            for &(p, c) in &draws {
                let pool = &self.pools[p];
                let n_new = pool.n_docs[rng.below(pool.n_docs.len())];
                let cluster = &self.clusters[c];
                let view = self.state.memory.view(
                    pool.task,
                    &cluster.id,
                    cluster.paragraphs.len(),
                    n_new,
                    &mut rng,
                );
                let context: Vec<&str> = view
                    .evidence
                    .iter()
                    .map(|&i| cluster.paragraphs[i].as_str())
                    .collect();
                let examples = (!view.examples.is_empty()).then(|| examples_text(&view.examples));
                let letter = (s.balance_mc_letters && pool.task == SpellTask::DocMc)
                    .then(|| ['A', 'B', 'C', 'D'][rng.below(4)]);
                let text = self.prompts.questioner(
                    pool.task,
                    &context.join("\n"),
                    examples.as_deref(),
                    letter,
                );
                evidence_sum += view.evidence.len();
                evidence_n += 1;
                prompts.push(self.policy.encode_user(&text)?);
                views.push(view.evidence);
            }
            let t = Instant::now();
            let outs = self.sample(Phase::Questioner, &prompts, 1, stream)?;
            report.questioner_seconds += t.elapsed().as_secs_f64();
            let tokenizer = self.policy.tokenizer().clone();
            let count = |t: &str| tokenizer.encode(t, false).map_or(usize::MAX, |v| v.len());
            let mut questions: Vec<Question> = Vec::new();
            for (((&(p, c), evidence), prompt), mut out) in
                draws.iter().zip(views).zip(prompts).zip(outs)
            {
                let task = self.pools[p].task;
                let sample = out.pop().expect("one sample");
                let uid = self.state.next_uid;
                self.state.next_uid += 1;
                let parsed =
                    parse_questioner_output(task, &sample.text, &count, s.max_answer_tokens);
                let record = QuestionerRecord {
                    uid,
                    task,
                    prompt,
                    response: sample.ids,
                    fate: Fate::Pending,
                };
                match parsed {
                    QuestionerOutput::Question { question, answer } => {
                        questions.push(Question {
                            record: questioners.len(),
                            cluster: c,
                            evidence,
                            question,
                            answer,
                        });
                        questioners.push(record);
                    }
                    QuestionerOutput::BadFormat(_) => {
                        report.bad_format += 1;
                        questioners.push(QuestionerRecord {
                            fate: Fate::Bad(CaseType::BadFormat),
                            ..record
                        });
                    }
                    QuestionerOutput::Invalid(_) => report.invalid += 1,
                    QuestionerOutput::Unfinished => report.unfinished += 1,
                }
            }
            // 2. Grounding: a question answered without the documents is dropped.
            if s.grounding_filter && !questions.is_empty() {
                let mut prompts = Vec::with_capacity(questions.len());
                for q in &questions {
                    let task = questioners[q.record].task;
                    prompts.push(self.policy.encode_user(&self.prompts.responder(
                        task,
                        "Empty",
                        &q.question,
                    ))?);
                }
                let t = Instant::now();
                let outs = self.sample(Phase::Grounding, &prompts, 1, stream + 1)?;
                report.grounding_seconds += t.elapsed().as_secs_f64();
                let mut kept = Vec::with_capacity(questions.len());
                for (q, out) in questions.into_iter().zip(outs) {
                    let task = questioners[q.record].task;
                    let closed_book =
                        rule_score(task, &out[0].text, &ground_truth_text(&q.answer)).score;
                    if closed_book >= s.grounding_threshold {
                        report.bad_ground += 1;
                        questioners[q.record].fate = Fate::Bad(CaseType::BadGround);
                    } else {
                        kept.push(q);
                    }
                }
                questions = kept;
            }
            // 3. Responder: G samples over the whole cluster; over-long prompts are skipped.
            let mut prompts = Vec::with_capacity(questions.len());
            let mut answered = Vec::with_capacity(questions.len());
            for q in questions {
                let task = questioners[q.record].task;
                let text =
                    self.prompts
                        .responder(task, &self.clusters[q.cluster].text(), &q.question);
                let ids = self.policy.encode_user(&text)?;
                if cfg.grpo.max_prompt_tokens > 0 && ids.len() > cfg.grpo.max_prompt_tokens {
                    report.overlong_prompts += 1;
                    questioners[q.record].fate = Fate::Dropped;
                    continue;
                }
                prompts.push(ids);
                answered.push(q);
            }
            let t = Instant::now();
            let outs = self.sample(Phase::Responder, &prompts, g, stream + 2)?;
            report.responder_seconds += t.elapsed().as_secs_f64();
            let scores: Vec<Vec<super::reward::RuleScore>> = answered
                .iter()
                .zip(&outs)
                .map(|(q, group)| {
                    let task = questioners[q.record].task;
                    let gt = ground_truth_text(&q.answer);
                    group
                        .iter()
                        .map(|r| rule_score(task, &r.text, &gt))
                        .collect()
                })
                .collect();
            // 4. Verifier: n judgements of each parsed answer; the majority can lift the reward.
            let mut votes: Vec<Vec<Option<Vec<f64>>>> =
                scores.iter().map(|g| vec![None; g.len()]).collect();
            if s.self_verification {
                let mut prompts = Vec::new();
                let mut at = Vec::new();
                for (qi, (q, group)) in answered.iter().zip(&scores).enumerate() {
                    let task = questioners[q.record].task;
                    if !s.verifier_tasks.contains(&task) {
                        continue;
                    }
                    for (ri, score) in group.iter().enumerate() {
                        if let (Some(pred), Some(gold)) = (&score.pred, &score.gold) {
                            prompts.push(self.policy.encode_user(&self.prompts.verifier(
                                &q.question,
                                pred,
                                gold,
                            ))?);
                            at.push((qi, ri));
                        }
                    }
                }
                let t = Instant::now();
                let outs = self.sample(Phase::Verifier, &prompts, s.verifier_n, stream + 3)?;
                report.verifier_seconds += t.elapsed().as_secs_f64();
                for (((qi, ri), judgements), prompt) in at.into_iter().zip(outs).zip(prompts) {
                    let v: Vec<f64> = judgements
                        .iter()
                        .map(|j| parse_judgement(&j.text))
                        .collect();
                    let task = questioners[answered[qi].record].task;
                    if let Some(group) = verifier_group(
                        &v,
                        scores[qi][ri].score,
                        s.verifier_window,
                        s.verifier_label,
                    ) {
                        agree_sum += group.agreement;
                        agree_n += 1;
                        if group.trains && s.update_verifier {
                            report.verifier_groups_passing += 1;
                            let uid = self.state.next_uid;
                            self.state.next_uid += 1;
                            verifier_groups.push(Group {
                                uid,
                                task,
                                prompt,
                                samples: judgements
                                    .into_iter()
                                    .map(|j| j.ids)
                                    .zip(group.scores)
                                    .collect(),
                            });
                        }
                    }
                    votes[qi][ri] = Some(v);
                }
            }
            // 5. Dynamic sampling and the history memory.
            for (((q, prompt), group), (score, vote)) in answered
                .into_iter()
                .zip(prompts)
                .zip(outs)
                .zip(scores.into_iter().zip(votes))
            {
                let rewards: Vec<f64> = score
                    .iter()
                    .zip(&vote)
                    .map(|(r, v)| combined_reward(r.score, v.as_deref().and_then(majority)))
                    .collect();
                let mean = rewards.iter().sum::<f64>() / rewards.len() as f64;
                reward_sum += rewards.iter().sum::<f64>();
                rule_sum += score.iter().map(|r| r.score).sum::<f64>();
                reward_n += rewards.len();
                pass_sum += mean;
                pass_n += 1;
                report.pass_rate_histogram[pass_rate_bin(mean)] += 1;
                let record = &mut questioners[q.record];
                if s.memory_window.0 <= mean && mean <= s.memory_window.1 {
                    let key = &self.clusters[q.cluster].id;
                    self.state.memory.push(
                        record.task,
                        key,
                        HistoryEntry {
                            evidence: q.evidence.clone(),
                            question: q.question.clone(),
                            answer: q.answer.clone(),
                        },
                    );
                }
                if rewards.iter().all(|&r| r == rewards[0]) {
                    report.zero_variance += 1;
                    record.fate = Fate::Bad(CaseType::ZeroVariance);
                    continue;
                }
                report.good += 1;
                responder_groups.push(Group {
                    uid: record.uid,
                    task: record.task,
                    prompt,
                    samples: group.into_iter().map(|r| r.ids).zip(rewards).collect(),
                });
            }
            if responder_groups.len() >= cfg.grpo.prompts_per_step {
                break;
            }
        }
        report.pass_rate_mean = mean_or_nan(pass_sum, pass_n);
        report.responder_reward_mean = mean_or_nan(reward_sum, reward_n);
        report.rule_reward_mean = mean_or_nan(rule_sum, reward_n);
        report.verifier_agreement_mean = mean_or_nan(agree_sum, agree_n);
        report.evidence_mean = mean_or_nan(evidence_sum as f64, evidence_n);
        report.memory_questions = self.state.memory.len();

        // 6. The unified batch.
        responder_groups.truncate(cfg.grpo.prompts_per_step);
        let kept: BTreeSet<u64> = responder_groups.iter().map(|g| g.uid).collect();
        let good: Vec<&QuestionerRecord> = questioners
            .iter()
            .filter(|q| q.fate == Fate::Pending && kept.contains(&q.uid))
            .collect();
        let bad: Vec<&QuestionerRecord> = questioners
            .iter()
            .filter(|q| matches!(q.fate, Fate::Bad(_)))
            .collect();
        let picked = sample_bad_cases(
            &good.iter().map(|q| q.task).collect::<Vec<_>>(),
            &bad.iter().map(|q| q.task).collect::<Vec<_>>(),
            s.bad_case_ratio,
            &mut rng,
        );
        let responder_samples: usize = responder_groups.iter().map(|g| g.samples.len()).sum();
        let verifier_pick = if s.update_verifier {
            sample_verifier_groups(
                responder_samples,
                s.verifier_update_ratio,
                s.verifier_n,
                verifier_groups.len(),
                &mut rng,
            )
        } else {
            Vec::new()
        };
        let mut roles: Vec<RoleSample> = Vec::new();
        let mut seqs: Vec<ScoredSequence> = Vec::new();
        let mut push =
            |role: Role, uid: u64, task, case, score: f64, prompt: &[u32], response: &[u32]| {
                roles.push(RoleSample {
                    role,
                    uid,
                    task,
                    case,
                    score,
                });
                seqs.push(ScoredSequence {
                    prompt: prompt.to_vec(),
                    response: response.to_vec(),
                    advantage: 0.0,
                });
            };
        for grp in &responder_groups {
            for (ids, r) in &grp.samples {
                push(
                    Role::Responder,
                    grp.uid,
                    grp.task,
                    CaseType::Good,
                    *r,
                    &grp.prompt,
                    ids,
                );
            }
        }
        for q in &good {
            push(
                Role::Questioner,
                q.uid,
                q.task,
                CaseType::Good,
                0.0,
                &q.prompt,
                &q.response,
            );
        }
        for &i in &picked {
            let q = bad[i];
            let Fate::Bad(case) = q.fate else {
                unreachable!("only bad cases are sampled")
            };
            push(
                Role::Questioner,
                q.uid,
                q.task,
                case,
                0.0,
                &q.prompt,
                &q.response,
            );
        }
        for &i in &verifier_pick {
            let grp = &verifier_groups[i];
            for (ids, r) in &grp.samples {
                push(
                    Role::Verifier,
                    grp.uid,
                    grp.task,
                    CaseType::Good,
                    *r,
                    &grp.prompt,
                    ids,
                );
            }
        }
        report.responder_samples = responder_samples;
        report.questioner_samples = good.len() + picked.len();
        report.questioner_bad_trained = picked.len();
        report.verifier_samples = verifier_pick
            .iter()
            .map(|&i| verifier_groups[i].samples.len())
            .sum();
        let advantages = spell_advantages(&roles, s.questioner_reward, s.questioner_batch_norm);
        for (seq, (a, _)) in seqs.iter_mut().zip(&advantages) {
            seq.advantage = *a;
        }
        // Samples with zero advantage add nothing but cost; the released batch keeps them,
        // and so does this one, so token-mean averages over the same tokens.
        report.loss = f64::NAN;
        report.entropy = f64::NAN;
        report.skipped = true;
        if advantages.iter().any(|(a, _)| *a != 0.0) {
            let t = Instant::now();
            let stats = self.policy.update_scored(&seqs)?;
            report.update_seconds = t.elapsed().as_secs_f64();
            report.loss = stats.loss;
            report.clip_fraction = stats.clip_fraction;
            report.entropy = stats.entropy;
            report.train_tokens = stats.train_tokens;
            report.skipped = stats.updates == 0;
        }
        self.policy.advance_step();
        if s.eval_steps > 0 && !self.eval.is_empty() && self.policy.step_count() % s.eval_steps == 0
        {
            report.eval_accuracy = Some(self.evaluate()?);
        }
        Ok(report)
    }

    /// Greedy responder accuracy (rule score) on the held-out questions.
    pub fn evaluate(&mut self) -> Result<f64> {
        if self.eval.is_empty() {
            return Ok(f64::NAN);
        }
        let mut prompts = Vec::with_capacity(self.eval.len());
        for q in &self.eval {
            let cluster = self
                .clusters
                .iter()
                .find(|c| c.id == q.cluster)
                .expect("checked on load");
            prompts.push(self.policy.encode_user(&self.prompts.responder(
                q.task,
                &cluster.text(),
                &q.question,
            ))?);
        }
        let outs = self.sample(Phase::Evaluation, &prompts, 1, 0)?;
        let correct: f64 = self
            .eval
            .iter()
            .zip(&outs)
            .map(|(q, o)| rule_score(q.task, &o[0].text, &ground_truth_text(&q.answer)).score)
            .sum();
        Ok(correct / self.eval.len() as f64)
    }

    /// Runs to `max_steps`, appending each report to `output_dir/metrics.jsonl`, checkpointing
    /// (policy, optimiser, history memory, cluster cursors) every `save_steps` and at the end,
    /// and writing the final policy to `output_dir/policy`.
    pub fn train(
        &mut self,
        mut on_step: impl FnMut(&SpellStepReport),
    ) -> Result<Vec<SpellStepReport>> {
        let out = self.config.output_dir.clone();
        let mut metrics = qforge_train::trainer::MetricsLog::open(&out)?;
        let mut reports = Vec::new();
        while self.policy.step_count() < self.config.max_steps {
            let r = self.step()?;
            metrics.append(&r)?;
            on_step(&r);
            reports.push(r);
            let step = self.policy.step_count();
            if qforge_train::trainer::step_due(step, self.config.max_steps, self.config.save_steps)
            {
                self.save_checkpoint()?;
            }
            if step == self.config.max_steps {
                self.policy.save(&out.join("policy"))?;
            }
        }
        Ok(reports)
    }

    /// `output_dir/checkpoint-STEP` with the history memory and cluster cursors beside the policy.
    pub fn save_checkpoint(&self) -> Result<std::path::PathBuf> {
        let state = serde_json::to_string(&self.state).expect("serialisable");
        self.policy.save_checkpoint_with(|dir| {
            let path = dir.join(SPELL_STATE);
            std::fs::write(&path, &state).with_path(&path)?;
            Ok(())
        })
    }
}

fn mean_or_nan(sum: f64, n: usize) -> f64 {
    if n == 0 { f64::NAN } else { sum / n as f64 }
}

/// The histogram bin of a group pass rate: 0, (0, ⅓], (⅓, ⅔), [⅔, 1), 1.
pub fn pass_rate_bin(p: f64) -> usize {
    if p <= 0.0 {
        0
    } else if p >= 1.0 {
        4
    } else if p <= 1.0 / 3.0 {
        1
    } else if p < 2.0 / 3.0 {
        2
    } else {
        3
    }
}

/// Held-out questions (JSONL of `task`, `cluster`, `question`, `answer`); each must name a
/// loaded cluster.
pub fn load_eval_questions(path: &Path, clusters: &[DocumentCluster]) -> Result<Vec<EvalQuestion>> {
    let rows = qforge_util::read_jsonl(path).map_err(|e| RlError::file(path, e))?;
    let mut out = Vec::with_capacity(rows.len());
    for (line, v) in rows {
        let bad = |m: String| RlError::from(qforge_util::RowError::new(path, line, m));
        let q: EvalQuestion = serde_json::from_value(v).map_err(|e| bad(e.to_string()))?;
        if !clusters.iter().any(|c| c.id == q.cluster) {
            return Err(bad(format!("cluster `{}` is in no corpus", q.cluster)));
        }
        out.push(q);
    }
    Ok(out)
}

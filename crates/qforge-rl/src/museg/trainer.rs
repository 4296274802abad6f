//! The MUSEG recipe: phases of GRPO on video grounding, each with its data, reward mix and
//! question template, the next starting from the last one's policy (as the released
//! `train_stage_2.sh` starts from stage 1's checkpoint). Each phase trains in its own
//! directory (`output_dir/phase-N`) with the GRPO trainer's atomic checkpoints, so a run that
//! stops anywhere, across a switch included, resumes where it was.
//!
//! Data: the released `stage_{1,2}.jsonl` with videos as frame directories under `video_root`,
//! or ColourTime videos generated from the seed (with a held-out set, an optional supervised
//! warm start and the shuffled-frames control).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use qforge_engine::{Engine, SamplingParams};
use qforge_model::vl::{ProcessorConfig, Vision, VisualInputs};
use qforge_model::{ChatOptions, Tokenizer};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::colour_time::{self, ColourTimeConfig, ColourTimeVideo};
use super::data::{TrainRecord, load_train};
use super::eval::{EvalKind, GroundingStats, answer_text, grounding_stats};
use super::reward::{RewardColumn, Segment, segment_matching};
use super::video::{VideoSampling, frame_dir, read_frames, sample_video};
use super::{MusegReward, QuestionTemplate, segments_as_answers};
use crate::error::{Result, RlError};
use crate::grpo::{GrpoConfig, GrpoStepReport, GrpoTrainer, ScoredSequence};
use crate::reward::Task;
use crate::visual::MediaSource;

/// One phase.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MusegPhase {
    /// Training JSONL (`stage_1.jsonl`); empty with `[colour_time]`.
    #[serde(default)]
    pub data: PathBuf,
    pub steps: u64,
    pub rewards: Vec<RewardColumn>,
    pub template: QuestionTemplate,
}

/// The released two phases (`scripts/train_stage_{1,2}.sh`).
pub fn released_phases() -> Vec<MusegPhase> {
    vec![
        MusegPhase {
            data: PathBuf::from("data/train/stage_1.jsonl"),
            steps: 400,
            rewards: vec![RewardColumn::Format, RewardColumn::SegmentMatching],
            template: QuestionTemplate::FrameSelectionThinking,
        },
        MusegPhase {
            data: PathBuf::from("data/train/stage_2.jsonl"),
            steps: 500,
            rewards: vec![
                RewardColumn::FormatNTimestamp,
                RewardColumn::SegmentMatching,
            ],
            template: QuestionTemplate::FrameSelectionThinkingNTimestamp,
        },
    ]
}

/// `[colour_time]`: synthetic videos instead of data files.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ColourTimeData {
    pub videos: ColourTimeConfig,
    /// Training videos (seeds drawn from the run's seed).
    pub train: usize,
    /// Held-out videos, evaluated greedily before training, every `eval_steps` and at the end.
    pub held_out: usize,
    pub eval_steps: u64,
    /// The control: every video's temporal patches shuffled (training and held-out).
    pub shuffle_frames: bool,
    /// Supervised warm start on the ideal responses before the phases (random tiny models
    /// never emit the format): at most this many steps of `warmup_batch` targets...
    pub warmup_steps: u64,
    pub warmup_batch: usize,
    pub warmup_lr: f64,
    /// ...stopped once held-out first-segment mIoU reaches this (checked every 10 steps).
    pub warmup_stop_miou: f64,
}

impl Default for ColourTimeData {
    fn default() -> Self {
        Self {
            videos: ColourTimeConfig::default(),
            train: 256,
            held_out: 32,
            eval_steps: 0,
            shuffle_frames: false,
            warmup_steps: 0,
            warmup_batch: 16,
            warmup_lr: 1e-3,
            warmup_stop_miou: 0.3,
        }
    }
}

/// A MUSEG recipe.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MusegConfig {
    /// The starting checkpoint; omitted with `[colour_time]`, a random tiny Qwen2.5-VL is
    /// written to `output_dir/random-model`.
    pub model: PathBuf,
    pub output_dir: PathBuf,
    pub seed: u64,
    /// Where the data's `video` paths resolve (each a frame directory, see [`frame_dir`]).
    pub video_root: PathBuf,
    /// The rate the frame directories were extracted at.
    pub video_fps: f64,
    /// Frame sampling and pixel budget (MUSEG's training settings).
    pub video: VideoSampling,
    /// The GRPO settings shared by every phase (`max_steps` comes from each phase).
    pub grpo: GrpoConfig,
    #[serde(rename = "phase")]
    pub phases: Vec<MusegPhase>,
    pub colour_time: Option<ColourTimeData>,
}

impl Default for MusegConfig {
    fn default() -> Self {
        Self {
            model: PathBuf::new(),
            output_dir: PathBuf::from("runs/museg"),
            seed: 42,
            video_root: PathBuf::from("videos"),
            video_fps: 2.0,
            video: VideoSampling::default(),
            grpo: museg_grpo_defaults(),
            phases: released_phases(),
            colour_time: None,
        }
    }
}

/// The released GRPO settings: G = 8 at trl's default temperature 0.9, 14 prompts a step
/// (7 GPUs × 1 × 2 accumulation), lr 1.5e-6, β = 0.04 (k3), one update per batch, the loss
/// averaged per sequence then over the batch, advantages over std + 1e-4, log-probs at
/// temperature 1, completions up to 4096 tokens, the whole model trained.
pub fn museg_grpo_defaults() -> GrpoConfig {
    GrpoConfig {
        group_size: 8,
        prompts_per_step: 14,
        max_new_tokens: 4096,
        temperature: 0.9,
        top_p: 1.0,
        lr: 1.5e-6,
        lr_warmup_ratio: 0.0,
        mini_batches: 1,
        epochs: 1,
        aggregation: "seq-mean-token-mean".into(),
        kl_coef: 0.04,
        entropy_coef: 0.0,
        max_grad_norm: 1.0,
        save_steps: 100,
        advantage_eps: 1e-4,
        temperature_in_loss: false,
        train_vision: true,
        ..GrpoConfig::default()
    }
}

impl MusegConfig {
    /// Reads a recipe (TOML) with `--set key=value` overrides; relative paths that do not
    /// exist from the working directory are read next to the recipe.
    pub fn from_recipe(path: &Path, overrides: &[String]) -> Result<Self> {
        use qforge_util::settings::{read_toml, table_into, with_sets};
        let table = read_toml(path)?;
        let mut config: Self = with_sets(table_into(table, path)?, overrides)?;
        let mut paths: Vec<&mut PathBuf> = vec![&mut config.model, &mut config.video_root];
        paths.extend(config.phases.iter_mut().map(|p| &mut p.data));
        qforge_util::settings::resolve_beside_recipe(path, paths);
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(RlError::Invalid(m));
        if self.phases.is_empty() {
            return bad("a MUSEG recipe needs at least one [[phase]]".into());
        }
        for (i, p) in self.phases.iter().enumerate() {
            if p.rewards.is_empty() {
                return bad(format!("[[phase]] {}: no rewards", i + 1));
            }
            if self.colour_time.is_none() && p.data.as_os_str().is_empty() {
                return bad(format!(
                    "[[phase]] {}: no `data` (a training JSONL) and no [colour_time]",
                    i + 1
                ));
            }
        }
        if self.grpo.group_size < 2 || self.grpo.prompts_per_step == 0 {
            return bad("[grpo] needs group_size >= 2 and prompts_per_step >= 1".into());
        }
        if !(self.video_fps > 0.0 && self.video.fps > 0.0) {
            return bad("video_fps and [video] fps must be positive".into());
        }
        Ok(())
    }

    fn phase_dir(&self, i: usize) -> PathBuf {
        self.output_dir.join(format!("phase-{}", i + 1))
    }

    /// The final policy of the run.
    pub fn final_policy(&self) -> PathBuf {
        self.phase_dir(self.phases.len() - 1).join("policy")
    }
}

/// The one-turn conversation MUSEG trains on: the video, then the templated question.
pub fn conversation(question: &str, template: QuestionTemplate) -> Vec<serde_json::Value> {
    vec![json!({"role": "user", "content": [
        {"type": "video"},
        {"type": "text", "text": template.render(question)},
    ]})]
}

/// The prompt ids of a question about `visual`, placeholders expanded, ready for the reply.
pub fn prompt_ids(
    tokenizer: &Tokenizer,
    vision: &Vision,
    question: &str,
    template: QuestionTemplate,
    visual: &VisualInputs,
) -> Result<Vec<u32>> {
    let text = tokenizer.apply_chat_template(
        &conversation(question, template),
        &ChatOptions::generation(),
    )?;
    Ok(vision.expand(&tokenizer.encode(&text, false)?, visual)?)
}

/// Greedy answers (MUSEG's evaluation: temperature 0) to prompts with their videos.
pub fn greedy_outputs(
    engine: &Engine,
    prompts: &[(Vec<u32>, Arc<VisualInputs>)],
    max_new_tokens: usize,
) -> Result<Vec<String>> {
    let requests = prompts
        .iter()
        .map(|(ids, visual)| {
            let mut r = engine.request(ids.clone(), max_new_tokens);
            r.visual = Some(visual.clone());
            r.sampling = SamplingParams {
                temperature: 0.0,
                ..SamplingParams::default()
            };
            r
        })
        .collect();
    let outputs = engine
        .generate(requests, |_| {})
        .map_err(|source| RlError::Engine {
            context: "evaluation",
            source,
        })?;
    Ok(outputs.into_iter().map(|o| o.text).collect())
}

/// Videos from frame directories, sampled as qwen-vl-utils does, by task index.
pub struct FrameDirMedia {
    pub root: PathBuf,
    pub video_fps: f64,
    pub sampling: VideoSampling,
    pub processor: ProcessorConfig,
    pub videos: Vec<String>,
}

impl MediaSource for FrameDirMedia {
    fn visual(&self, task: usize) -> Result<Option<Arc<VisualInputs>>> {
        let video = &self.videos[task];
        let dir = frame_dir(&self.root, video)?;
        let frames = read_frames(&dir)?;
        let sampled = sample_video(&self.processor, &self.sampling, &frames, self.video_fps)
            .map_err(|e| RlError::file(&dir, e))?;
        Ok(Some(Arc::new(VisualInputs {
            images: Vec::new(),
            videos: vec![(sampled.patches, sampled.second_per_grid)],
        })))
    }
}

/// Pre-processed visual inputs by task index (ColourTime).
pub struct PreparedMedia(pub Vec<Arc<VisualInputs>>);

impl MediaSource for PreparedMedia {
    fn visual(&self, task: usize) -> Result<Option<Arc<VisualInputs>>> {
        Ok(self.0.get(task).cloned())
    }
}

/// A held-out evaluation's numbers.
#[derive(Debug, Clone, Serialize)]
pub struct HeldOutReport {
    /// Steps trained in the phase (0: before it).
    pub step: u64,
    pub phase: usize,
    /// First-segment mIoU and R@IoU (`tvg`).
    pub grounding: GroundingStats,
    /// Mean segment-matching reward (global + local, in [0, 2]).
    pub segment_reward: f64,
    /// Share of outputs with a well-formed answer.
    pub answered: f64,
}

/// What the run reports as it goes.
#[derive(Debug, Clone)]
pub enum MusegEvent {
    /// A supervised warm-start step and the policy's entropy on the targets.
    Warmup {
        step: u64,
        entropy: f64,
    },
    Step {
        phase: usize,
        report: GrpoStepReport,
    },
    HeldOut(HeldOutReport),
    PhaseDone {
        phase: usize,
        policy: PathBuf,
    },
}

/// What a finished run produced.
#[derive(Debug, Clone, Serialize)]
pub struct MusegSummary {
    pub policy: PathBuf,
    pub held_out: Vec<HeldOutReport>,
}

struct ColourTimeSets {
    train: Vec<ColourTimeVideo>,
    held_out: Vec<ColourTimeVideo>,
}

fn colour_time_sets(seed: u64, data: &ColourTimeData) -> Result<ColourTimeSets> {
    let draw = |offset: u64, n: usize| -> Result<Vec<ColourTimeVideo>> {
        (0..n as u64)
            .map(|i| {
                let s = qforge_util::SplitMix(seed ^ offset)
                    .next_u64()
                    .wrapping_add(i);
                let v = ColourTimeVideo::generate(&data.videos, s)?;
                Ok(if data.shuffle_frames {
                    v.shuffled(s)
                } else {
                    v
                })
            })
            .collect()
    };
    Ok(ColourTimeSets {
        train: draw(0x7EA1, data.train)?,
        held_out: draw(0x4E1D_0u64, data.held_out)?,
    })
}

/// Runs the recipe: warm start (ColourTime), then each phase not finished yet.
pub fn run(config: &MusegConfig, mut on_event: impl FnMut(&MusegEvent)) -> Result<MusegSummary> {
    config.validate()?;
    let model = if config.model.as_os_str().is_empty() && config.colour_time.is_some() {
        // The demo: a random tiny Qwen2.5-VL with the ColourTime vocabulary.
        colour_time::write_checkpoint(&config.output_dir.join("random-model"), config.seed)?
    } else {
        qforge_model::resolve_model_path(&config.model)?
    };
    let sets = match &config.colour_time {
        Some(ct) => Some(colour_time_sets(config.seed, ct)?),
        None => None,
    };
    let mut held_out = Vec::new();
    let mut start = model.clone();
    if let (Some(ct), Some(sets)) = (&config.colour_time, &sets)
        && ct.warmup_steps > 0
    {
        start = warm_start(config, &model, ct, sets, &mut held_out, &mut on_event)?;
    }
    for (i, phase) in config.phases.iter().enumerate() {
        let dir = config.phase_dir(i);
        let policy = dir.join("policy");
        if policy.join("config.json").is_file() {
            // Finished before (a resumed run): the next phase starts from it.
            start = policy;
            continue;
        }
        let grpo = GrpoConfig {
            model: start.clone(),
            output_dir: dir.clone(),
            max_steps: phase.steps,
            // Hashed: the engine XORs the seed with small indices (see WritingRlConfig).
            seed: qforge_util::SplitMix(config.seed ^ (i as u64 + 1)).next_u64(),
            ..config.grpo.clone()
        };
        let reward = Arc::new(MusegReward {
            columns: phase.rewards.clone(),
        });
        let (tasks, media): (Vec<Task>, Arc<dyn MediaSource>) = match &sets {
            Some(sets) => {
                let processor = ProcessorConfig::from_dir(&start)?;
                let visual = sets
                    .train
                    .iter()
                    .map(|v| v.visual(&processor))
                    .collect::<Result<Vec<_>>>()?;
                let tasks = sets
                    .train
                    .iter()
                    .map(|v| task(colour_time::QUESTION, phase.template, &v.segments))
                    .collect();
                (tasks, Arc::new(PreparedMedia(visual)))
            }
            None => {
                let records = load_train(&phase.data)?;
                let tasks = records
                    .iter()
                    .map(|r| task(&r.problem, phase.template, &r.solution))
                    .collect();
                let media = FrameDirMedia {
                    root: config.video_root.clone(),
                    video_fps: config.video_fps,
                    sampling: config.video,
                    processor: ProcessorConfig::from_dir(&start)?,
                    videos: records.into_iter().map(|r: TrainRecord| r.video).collect(),
                };
                (tasks, Arc::new(media))
            }
        };
        let mut trainer = GrpoTrainer::new(grpo, tasks, reward)?.with_media(media)?;
        let eval_every = config.colour_time.as_ref().map_or(0, |c| c.eval_steps);
        if let Some(sets) = &sets
            && trainer.step_count() == 0
            && held_out.is_empty()
        {
            let r = evaluate_held_out(&trainer, &sets.held_out, i, 0)?;
            on_event(&MusegEvent::HeldOut(r.clone()));
            held_out.push(r);
        }
        let save_steps = trainer.config().save_steps;
        let mut metrics = qforge_train::trainer::MetricsLog::open(&dir)?;
        while trainer.step_count() < phase.steps {
            let report = trainer.step()?;
            metrics.append(&report)?;
            on_event(&MusegEvent::Step { phase: i, report });
            let step = trainer.step_count();
            if qforge_train::trainer::step_due(step, phase.steps, save_steps) {
                trainer.save_checkpoint()?;
            }
            if let Some(sets) = &sets
                && (step == phase.steps || (eval_every > 0 && step % eval_every == 0))
            {
                let r = evaluate_held_out(&trainer, &sets.held_out, i, step)?;
                on_event(&MusegEvent::HeldOut(r.clone()));
                held_out.push(r);
            }
        }
        trainer.save(&policy)?;
        on_event(&MusegEvent::PhaseDone {
            phase: i,
            policy: policy.clone(),
        });
        start = policy;
    }
    qforge_util::write_json_atomic(
        &config.output_dir.join("held_out.json"),
        &serde_json::to_value(&held_out).expect("serialisable"),
    )?;
    Ok(MusegSummary {
        policy: start,
        held_out,
    })
}

fn task(question: &str, template: QuestionTemplate, solution: &[Segment]) -> Task {
    Task {
        messages: conversation(question, template),
        answers: segments_as_answers(solution),
    }
}

/// Greedy answers on held-out ColourTime videos with the evaluation prompt (the phase-1
/// template, as MUSEG evaluates).
fn evaluate_held_out(
    trainer: &GrpoTrainer,
    videos: &[ColourTimeVideo],
    phase: usize,
    step: u64,
) -> Result<HeldOutReport> {
    let vision = trainer.vision().expect("a vision-language policy");
    let mut prompts = Vec::with_capacity(videos.len());
    for v in videos {
        let visual = v.visual(&vision.processor)?;
        let ids = prompt_ids(
            trainer.tokenizer(),
            vision,
            colour_time::QUESTION,
            QuestionTemplate::FrameSelectionThinking,
            &visual,
        )?;
        prompts.push((ids, visual));
    }
    let outputs = greedy_outputs(trainer.engine(), &prompts, trainer.config().max_new_tokens)?;
    Ok(held_out_report(videos, &outputs, phase, step))
}

fn held_out_report(
    videos: &[ColourTimeVideo],
    outputs: &[String],
    phase: usize,
    step: u64,
) -> HeldOutReport {
    let rows: Vec<(Vec<Segment>, String)> = videos
        .iter()
        .zip(outputs)
        .map(|(v, o)| (v.segments.clone(), answer_text(o)))
        .collect();
    let n = videos.len().max(1) as f64;
    let segment_reward = videos
        .iter()
        .zip(outputs)
        .map(|(v, o)| segment_matching(o, &v.segments))
        .sum::<f64>()
        / n;
    let answered = outputs
        .iter()
        .filter(|o| super::reward::parse_segments(o).is_some_and(|s| !s.is_empty()))
        .count() as f64
        / n;
    HeldOutReport {
        step,
        phase,
        grounding: grounding_stats(&rows, EvalKind::Tvg),
        segment_reward,
        answered,
    }
}

/// The supervised warm start: the policy learns the ideal responses (policy-gradient updates
/// with advantage 1 on target tokens, i.e. maximum likelihood), until held-out mIoU reaches
/// the stop value or the steps run out. Written to `output_dir/warmup/policy`; a finished
/// warm start is reused on resume.
fn warm_start(
    config: &MusegConfig,
    model: &Path,
    ct: &ColourTimeData,
    sets: &ColourTimeSets,
    held_out: &mut Vec<HeldOutReport>,
    on_event: &mut impl FnMut(&MusegEvent),
) -> Result<PathBuf> {
    let dir = config.output_dir.join("warmup");
    let policy = dir.join("policy");
    if policy.join("config.json").is_file() {
        return Ok(policy);
    }
    let grpo = GrpoConfig {
        model: model.to_path_buf(),
        output_dir: dir.clone(),
        lr: ct.warmup_lr,
        kl_coef: 0.0,
        aggregation: "token-mean".into(),
        temperature_in_loss: false,
        seed: config.seed,
        ..config.grpo.clone()
    };
    let mut trainer = GrpoTrainer::policy(grpo)?;
    let vision = trainer.vision().cloned().ok_or_else(|| {
        RlError::Invalid(format!(
            "{} is a text-only model; MUSEG needs a vision-language checkpoint",
            model.display()
        ))
    })?;
    let template = config
        .phases
        .first()
        .map_or(QuestionTemplate::FrameSelectionThinking, |p| p.template);
    let mut prepared = Vec::with_capacity(sets.train.len());
    for v in &sets.train {
        let visual = v.visual(&vision.processor)?;
        let ids = prompt_ids(
            trainer.tokenizer(),
            &vision,
            colour_time::QUESTION,
            template,
            &visual,
        )?;
        let mut response = trainer.tokenizer().encode(&v.target(), false)?;
        response.extend(trainer.tokenizer().eos_token_id());
        prepared.push((ids, response, visual));
    }
    let mut order: Vec<usize> = (0..prepared.len()).collect();
    let mut rng = qforge_util::SplitMix(config.seed ^ 0x5F7);
    rng.shuffle(&mut order);
    let mut cursor = 0;
    for step in 1..=ct.warmup_steps {
        let mut seqs = Vec::with_capacity(ct.warmup_batch);
        let mut visual = Vec::with_capacity(ct.warmup_batch);
        for _ in 0..ct.warmup_batch {
            if cursor == order.len() {
                cursor = 0;
                rng.shuffle(&mut order);
            }
            let (ids, response, v) = &prepared[order[cursor]];
            cursor += 1;
            seqs.push(ScoredSequence {
                prompt: ids.clone(),
                response: response.clone(),
                advantage: 1.0,
            });
            visual.push(Some(v.clone()));
        }
        let stats = trainer.update_scored_with_visual(&seqs, &visual)?;
        trainer.advance_step();
        on_event(&MusegEvent::Warmup {
            step,
            entropy: stats.entropy,
        });
        if step % 10 == 0 || step == ct.warmup_steps {
            let r = evaluate_held_out(&trainer, &sets.held_out, 0, 0)?;
            let done = r.grounding.m_iou.unwrap_or(0.0) >= ct.warmup_stop_miou;
            if done || step == ct.warmup_steps {
                on_event(&MusegEvent::HeldOut(r.clone()));
                held_out.push(r);
                break;
            }
        }
    }
    trainer.save(&policy)?;
    Ok(policy)
}

/// Greedy predictions of the embedded `engine` for evaluation queries (`media` indexed by
/// query), with the evaluation prompt (the phase-1 template, as `eval_grounding.py`).
pub fn predict_embedded(
    engine: &Engine,
    media: &dyn MediaSource,
    queries: &[(usize, &super::data::EvalRecord)],
    max_new_tokens: usize,
) -> Result<Vec<super::eval::Prediction>> {
    let vision = engine.vision().ok_or_else(|| {
        RlError::Invalid(
            "the model is text-only; MUSEG evaluation needs a vision-language checkpoint".into(),
        )
    })?;
    let mut prompts = Vec::with_capacity(queries.len());
    for (i, record) in queries {
        let visual = media
            .visual(*i)?
            .ok_or_else(|| RlError::Invalid(format!("query {i}: no video")))?;
        let ids = prompt_ids(
            engine.tokenizer(),
            vision,
            &record.question,
            QuestionTemplate::FrameSelectionThinking,
            &visual,
        )?;
        prompts.push((ids, visual));
    }
    Ok(greedy_outputs(engine, &prompts, max_new_tokens)?
        .into_iter()
        .map(super::eval::Prediction::Generation)
        .collect())
}

/// `n` held-out ColourTime videos as evaluation queries and their prepared inputs.
pub fn colour_time_queries(
    config: &ColourTimeConfig,
    n: usize,
    seed: u64,
    processor: &ProcessorConfig,
) -> Result<(Vec<super::data::EvalRecord>, PreparedMedia)> {
    let mut records = Vec::with_capacity(n);
    let mut visual = Vec::with_capacity(n);
    for i in 0..n as u64 {
        let s = seed.wrapping_add(i);
        let v = ColourTimeVideo::generate(config, s)?;
        visual.push(v.visual(processor)?);
        records.push(super::data::EvalRecord {
            video: format!("colour_time/{s}"),
            question: colour_time::QUESTION.to_string(),
            groundtruth: v.segments,
        });
    }
    Ok((records, PreparedMedia(visual)))
}

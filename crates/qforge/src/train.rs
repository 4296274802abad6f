//! `qforge train sft|dpo|rm|solopo`: the training core's trainers with a live progress bar,
//! metrics JSONL, checkpoints (resumed automatically) and a PNG of the curves.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use qforge_train::trainer::{EvalReport, Objective, StepReport, Trainer};

use qforge_train::plot::{Series, line_chart};

#[derive(clap::Subcommand, Debug)]
pub enum TrainCommand {
    /// Supervised fine-tuning (prompt tokens masked from the loss).
    Sft(Args),
    /// Direct preference optimisation against the starting model as reference.
    Dpo(Args),
    /// Bradley-Terry reward model with a `score` head (Qwen*ForSequenceClassification layout).
    Rm(Args),
    /// SoLoPO: DPO, SimPO or ORPO on short contexts plus the short-to-long reward alignment of
    /// the chosen response (data rows carry `prompt_long`; see `qforge pref solopo-data`).
    #[command(
        after_help = "The recipe holds the usual settings plus a [solopo] table:
          [solopo]
  algorithm = \"dpo\"   # dpo | simpo | orpo
  alpha = 3.0          # weight of SoLo-RA (default: dpo 3, simpo 1, orpo 1)
          penalty = \"abs\"     # abs | softplus3
  beta = 0.1           # dpo 0.1, simpo 2.5 by default; gamma (simpo) 1.375; lambda (orpo) 0.1
        `--set solopo.alpha=1` overrides the table."
    )]
    Solopo(Args),
    /// Mutual-Taught: iterations of an E-step (policy samples scored by the reward model, DPO,
    /// checkpoint selection by win rate with the stop rule) and an M-step (filtered new-over-old
    /// pairs, reward model refit from the base). Every stage is kept and resumable.
    #[command(
        after_help = "The recipe (TOML): policy, reward_model, policy_prompts (list of prompt-only JSONL files,\n\
        one per iteration), rm_prompts, selection_prompts, output_dir, iterations (2), samples (5),\n\
        temperature (0.8), top_p (0.95), max_new_tokens, win_rate_threshold (0.6), seed, and [dpo] / [rm]\n\
        tables of training settings (model, data and output_dir are filled in per iteration).\n\
        `--set dpo.lr=1e-6` overrides nested settings."
    )]
    MutualTaught(Args),
    /// QwenLong-L1: warm-up SFT, then GRPO/DAPO in curriculum phases of growing input length
    /// with difficulty-aware retrospective sampling, on the hybrid rule (+ judge) reward.
    #[command(
        name = "qwenlong-l1",
        after_help = "The recipe (TOML): model, output_dir, sft_data (optional), tasks (list of\n\
        JSONL files: prompt/messages + answer(s), L-Eval or lost-in-the-middle rows), [[phases]] with\n\
        max_input_tokens and steps, [retrospective] (threshold, top_q, mix_ratio), [sft] and [grpo]\n\
        settings, and [reward]: kind = \"docqa\" | \"docmath\" | \"choice\" | \"em\", judge_url and judge_model for the\n\
        LLM judge (any OpenAI-compatible server), used when the rule reward is below 1.\n\
        Example: examples/recipes/qwenlong_l1.toml"
    )]
    QwenlongL1(Args),
    /// WebSailor's RL stage: GRPO with DUPO over multi-turn rollouts whose tool turns run the
    /// agent's own search and visit (observations masked from the loss), on Eq. 5's reward.
    #[command(
        after_help = "The recipe (TOML): questions (list of JSONL files of question + answer), the GRPO\n\
        settings (model, output_dir, group_size, prompts_per_step, max_new_tokens, lr, filter, ...; the\n\
        paper's defaults: group 8, temperature 1, DUPO, clip 0.2/0.28, no KL), [agent] (corpus, web,\n\
        summary_url, summary_model, results), [judge] (judge_url, judge_model, judge_style; without a\n\
        judge, exact match) and [rollout] (max_turns, max_observation_tokens, max_response_tokens).\n\
        Runs resume from the newest checkpoint. Example: examples/recipes/websailor_rl.toml"
    )]
    Websailor(Args),
    /// SPELL: one policy plays questioner, responder and verifier over document clusters
    /// (history memory as curriculum, self-verification, role rewards) in one GRPO update.
    #[command(
        after_help = "The recipe (TOML): model, output_dir, max_steps, save_steps, seed, [[corpora]] (path to\n\
        JSONL clusters {id, paragraphs}, L-Eval / lost-in-the-middle rows or .txt; tasks among docmath_qa,\n\
        doc_general_qa, doc_mc; n_docs), [grpo] (group_size, prompts_per_step, max_new_tokens,\n\
        max_prompt_tokens, temperature, top_p, lr, clip_low/high, ...) and [spell] (gen_batch_size,\n\
        max_gen_batches, task_weights, questioner_reward = gaussian | reverse | rzero, bad_case_ratio,\n\
        grounding_filter, memory_size, memory_window, self_verification, verifier_n,\n\
        verifier_update_ratio, verifier_window, verifier_label = maj_cons | maj, prompts_dir,\n\
        eval_questions, eval_steps, rollout_url). Defaults are the released 7B script's. Runs resume\n\
        from the newest checkpoint with their history memory. Example: examples/recipes/spell.toml"
    )]
    Spell(Args),
    /// Writing-RL: long-form writing RL against a pairwise judge and a per-prompt ladder of
    /// references (margin-aware selection, dynamic reference scheduling, PPO with a critic).
    #[command(
        name = "writing-rl",
        after_help = "The recipe (TOML): model, prompts (JSONL {id, prompt, references: [weakest .. strongest],\n\
        criteria?}), output_dir, max_steps, save_steps, seed, [grpo] (the actor: prompts_per_step,\n\
        max_new_tokens, max_prompt_tokens, temperature, lr, lr_warmup_ratio, mini_batches, clip_low/high,\n\
        entropy_coef, group_size for GRPO), [critic] (model, lr, lr_warmup_ratio, clip_value, mini_batches),\n\
        [judge] (url, model, api_key_env, temperature, max_tokens, concurrency, retries, position =\n\
        position-disadvantage | position-advantage | both, values = {win, tie, loss}, timeout_s; without a\n\
        url, the built-in rubric judge) and [writing_rl] (algorithm = ppo | grpo, gamma, lam, kl_in_reward,\n\
        kl_coef, select, select_share, selection_samples). Defaults are the released run's. Selection\n\
        writes output_dir/selection/ and resumes; training resumes from the newest checkpoint with its\n\
        critic and ladder. Example: examples/recipes/writing_rl.toml"
    )]
    WritingRl(Args),
    /// MUSEG: timestamp-aware multi-segment video grounding RL on a Qwen2.5-VL (GRPO with video
    /// rollouts, format + segment-matching rewards, phases that switch data, rewards and prompt).
    #[command(
        after_help = "The recipe (TOML): model (a Qwen2.5-VL checkpoint), output_dir, seed, video_root (the data's\n\
        `video` paths resolve there, each a directory of frames: charades/X.mp4 is read from charades/X/),\n\
        video_fps (the rate those frames were extracted at), [video] (fps, max_frames, min_pixels,\n\
        total_pixels: qwen-vl-utils' sampling), [grpo] (group_size, prompts_per_step, max_new_tokens,\n\
        temperature, lr, kl_coef, aggregation, advantage_eps, temperature_in_loss, train_vision, save_steps)\n\
        and [[phase]] tables (data = stage_N.jsonl, steps, rewards = [\"format\" | \"format_n_timestamp\",\n\
        \"segment_matching\"], template = frame_selection_thinking | frame_selection_thinking_n_timestamp).\n\
        Defaults are the released two-stage run. With [colour_time] (train, held_out, eval_steps,\n\
        shuffle_frames, warmup_steps, warmup_batch, warmup_lr, warmup_stop_miou, videos) the videos are\n\
        generated ColourTime clips and, without a model, a random tiny Qwen2.5-VL is trained.\n\
        Each phase trains in output_dir/phase-N and resumes from its newest checkpoint; finished phases\n\
        are skipped. Examples: examples/recipes/museg.toml, examples/recipes/museg_colour_time.toml"
    )]
    Museg(Args),
    /// QwenLong-CPRS: trains a compressor (hybrid causal/bidirectional backbone, BIOE head, LM
    /// head as token critic) on JSONL samples or synthetic tasks, windows cut as at inference.
    #[command(
        after_help = "The recipe (TOML): model (a Qwen2/Qwen3 checkpoint or a compressor), data (JSONL rows\n\
        {instruction, query, context, tag, facts: [[start, end], ...] in characters, answers}) or a\n\
        [synthetic] table (tasks = [\"niah_single\", \"niah_multikey\", \"kv\", \"vt\", \"qa\"], samples, tokens,\n\
        haystack = \"noise\" | DIR of .txt essays), output_dir, window (8192), batch_size, lr, schedule,\n\
        max_steps or epochs, bidirectional_start, bi_loss_type (focal | ce), focal_gamma (2),\n\
        bi_loss_weight ([B, I, O, E]), lm_head_weight ({outside = 0.5}), ignore_lm_head, outside_drop (0.5),\n\
        save_steps, seed. Runs resume from the newest checkpoint; the result is output_dir/final.\n\
        Example: examples/recipes/cprs_needle.toml"
    )]
    Cprs(Args),
}

#[derive(clap::Args, Debug)]
#[command(
    after_help = "The recipe is a TOML file of settings (model, data, eval_data, output_dir, lr, batch_size,\n\
    grad_accum, max_steps or epochs, schedule, warmup_steps, save_steps, eval_steps, beta, loss_type, ...).\n\
    A run whose output_dir already holds checkpoints resumes from the newest one.\n\nExample:\n  \
    qforge train sft --config recipe.toml --set lr=1e-4 --set max_steps=200"
)]
pub struct Args {
    /// Recipe TOML.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Override a recipe setting (repeatable), e.g. `--set lr=2e-5`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    overrides: Vec<String>,
}

pub fn run(cmd: TrainCommand) -> Result<()> {
    let (args, objective) = match cmd {
        TrainCommand::Sft(a) => (a, Objective::Sft),
        TrainCommand::Dpo(a) => (a, Objective::Dpo),
        TrainCommand::Rm(a) => (a, Objective::Rm),
        TrainCommand::Solopo(a) => return solopo(a),
        TrainCommand::MutualTaught(a) => return mutual_taught(a),
        TrainCommand::QwenlongL1(a) => return qwenlong_l1(a),
        TrainCommand::Websailor(a) => return websailor(a),
        TrainCommand::Spell(a) => return spell(a),
        TrainCommand::WritingRl(a) => return writing_rl(a),
        TrainCommand::Museg(a) => return museg(a),
        TrainCommand::Cprs(a) => return cprs(a),
    };
    let config = qforge_train::recipe::load(args.config.as_deref(), &args.overrides)?;
    let trainer = Trainer::new(config, objective)?;
    finish(trainer, &format!("{objective:?}").to_lowercase())
}

fn solopo(args: Args) -> Result<()> {
    let (config, settings) =
        qforge_pref::SoloSettings::from_recipe(args.config.as_deref(), &args.overrides)?;
    let objective = settings.objective()?;
    eprintln!("SoLoPO: {objective:?}");
    let trainer = Trainer::new_pairwise(config, std::sync::Arc::new(objective))?;
    finish(trainer, "solopo")
}

fn qwenlong_l1(args: Args) -> Result<()> {
    let path = args
        .config
        .as_deref()
        .context("qwenlong-l1 needs --config recipe.toml")?;
    let recipe = qforge_rl::qwenlong_l1::Recipe::load(path, &args.overrides)?;
    let tasks = recipe.tasks()?;
    let reward = recipe.reward()?;
    let (config, task_files) = (&recipe.config, &recipe.task_files);
    eprintln!("{} tasks from {} files", tasks.len(), task_files.len());
    let started = Instant::now();
    let results = qforge_rl::qwenlong_l1::run(config, &tasks, reward, |phase, r| {
        eprintln!(
            "[{:>6.0}s] phase {phase} step {}: reward {:.3} acc {:.2} kept {:.2} loss {:.4} (judge failures {})",
            started.elapsed().as_secs_f64(),
            r.step,
            r.reward_mean,
            r.accuracy,
            r.kept_group_fraction,
            r.loss,
            r.reward_failures
        )
    })?;
    for r in &results {
        eprintln!(
            "phase {} (<= {} tokens): {} tasks + {} retrospective, {} truncated; final reward {:.3}; policy {}",
            r.phase,
            r.max_input_tokens,
            r.tasks,
            r.retrospective_tasks,
            r.truncated_prompts,
            r.final_reward_mean,
            r.policy.display()
        );
    }
    Ok(())
}

fn websailor(args: Args) -> Result<()> {
    use qforge_agent::websailor::agent::AgentConfig;
    use qforge_agent::websailor::rl::{WebSailorEnv, WebSailorReward, tasks};
    use qforge_agent::websailor::settings::RlRecipe;
    use qforge_rl::grpo::GrpoTrainer;
    let path = args
        .config
        .as_deref()
        .context("websailor needs --config recipe.toml")?;
    let RlRecipe {
        question_files,
        agent,
        judge,
        rollout,
        config,
    } = RlRecipe::load(path, &args.overrides)?;
    let tools = agent.tools(&crate::agent::default_corpus())?;
    let mut questions = Vec::new();
    for f in &question_files {
        questions.extend(qforge_agent::websailor::eval::load_eval_set(f)?);
    }
    let tasks = tasks(&questions, &tools, &AgentConfig::default());
    let reward = std::sync::Arc::new(WebSailorReward::new(judge.judge(&question_files[0])?)?);
    let steps = config.max_steps;
    let mut trainer = GrpoTrainer::new(config, tasks, reward)?
        .with_tools(std::sync::Arc::new(WebSailorEnv::new(tools)?), rollout);
    let bar = crate::common::progress_bar(steps, "websailor");
    trainer.train(|r| {
        bar.set_position(r.step);
        bar.set_message(format!(
            "reward {:.3} acc {:.2} turns {:.1} useful groups {}",
            r.reward_mean, r.accuracy, r.turns_mean, r.useful_groups
        ));
    })?;
    bar.finish();
    Ok(())
}

fn spell(args: Args) -> Result<()> {
    use qforge_rl::spell::{SpellConfig, SpellTrainer};
    let path = args
        .config
        .as_deref()
        .context("spell needs --config recipe.toml")?;
    let config = SpellConfig::from_recipe(path, &args.overrides)?;
    let (out, steps) = (config.output_dir.clone(), config.max_steps);
    let mut trainer = SpellTrainer::new(config)?;
    eprintln!(
        "{} clusters ({} over the prompt cap left out); starting at step {}",
        trainer.clusters().len(),
        trainer.overlong_clusters().len(),
        trainer.policy().step_count()
    );
    let bar = crate::common::progress_bar(steps, "spell");
    bar.set_position(trainer.policy().step_count());
    let reports = trainer.train(|r| {
        bar.set_position(r.step);
        bar.set_message(format!(
            "pass rate {:.2} | Q {} (bad {}) R {} V {} | loss {:.4}",
            r.pass_rate_mean,
            r.questioner_samples,
            r.questioner_bad_trained,
            r.responder_samples,
            r.verifier_samples,
            r.loss
        ));
        if let Some(acc) = r.eval_accuracy {
            bar.println(format!(
                "  eval @ step {}: held-out accuracy {acc:.3}",
                r.step
            ));
        }
    })?;
    bar.finish();
    if !reports.is_empty() {
        let series = |name, f| step_series(&reports, |r| r.step, name, f);
        line_chart(
            &out.join("curves.png"),
            "SPELL training",
            "step",
            &[
                series("responder pass rate", |r| r.pass_rate_mean),
                series("responder reward", |r| r.responder_reward_mean),
                series("verifier agreement", |r| r.verifier_agreement_mean),
                series("bad-format share", |r| {
                    let all = r.bad_format + r.bad_ground + r.zero_variance + r.good;
                    r.bad_format as f64 / all.max(1) as f64
                }),
                series("held-out accuracy", |r| r.eval_accuracy.unwrap_or(f64::NAN)),
            ],
        )?;
    }
    eprintln!(
        "policy in {} (metrics.jsonl, curves.png and checkpoints with the history memory there too)",
        out.join("policy").display()
    );
    Ok(())
}

/// One curve of a training run's per-step reports (non-finite points left out).
fn step_series<R>(
    reports: &[R],
    step: fn(&R) -> u64,
    name: &'static str,
    value: fn(&R) -> f64,
) -> Series<'static> {
    Series {
        name,
        points: reports
            .iter()
            .map(|r| (step(r) as f64, value(r)))
            .filter(|(_, y)| y.is_finite())
            .collect(),
    }
}

fn writing_rl(args: Args) -> Result<()> {
    use qforge_rl::writing_rl::trainer::judge_for;
    use qforge_rl::writing_rl::{WritingRlConfig, WritingRlTrainer, load_prompts};
    let path = args
        .config
        .as_deref()
        .context("writing-rl needs --config recipe.toml")?;
    let config = WritingRlConfig::from_recipe(path, &args.overrides)?;
    let (out, steps) = (config.output_dir.clone(), config.max_steps);
    let prompts = load_prompts(&config.prompts)?;
    let judge = judge_for(&config.judge)?;
    let judge_name = if config.judge.url.is_empty() {
        "the built-in rubric judge".to_string()
    } else {
        format!("{} at {}", config.judge.model, config.judge.url)
    };
    let mut trainer = WritingRlTrainer::new(config, prompts, judge)?;
    eprintln!(
        "{} prompts, judged by {judge_name}; starting at step {}",
        trainer.prompts().len(),
        trainer.policy().step_count()
    );
    if trainer.selected().is_empty() {
        let bar = crate::common::progress_bar(trainer.prompts().len() as u64, "margin selection");
        let kept = trainer.select(|done, _| bar.set_position(done as u64))?;
        bar.finish_and_clear();
        if !kept.is_empty() {
            eprintln!(
                "kept {} of {} prompts (margins {:.3} .. {:.3}; output_dir/selection/)",
                kept.len(),
                trainer.prompts().len(),
                kept.last().map_or(0.0, |m| m.margin),
                kept[0].margin
            );
        }
    }
    let bar = crate::common::progress_bar(steps, "writing-rl");
    bar.set_position(trainer.policy().step_count());
    let reports = trainer.train(|r| {
        bar.set_position(r.step);
        bar.set_message(format!(
            "reward {:.3} | win {:.2} tie {:.2} | rung {:.2} | value loss {:.4}",
            r.reward_mean, r.win_rate, r.tie_rate, r.ladder_rung_mean, r.value_loss
        ));
    })?;
    bar.finish();
    if !reports.is_empty() {
        let series = |name, f| step_series(&reports, |r| r.step, name, f);
        line_chart(
            &out.join("curves.png"),
            "Writing-RL training",
            "step",
            &[
                series("reward", |r| r.reward_mean),
                series("win rate", |r| r.win_rate),
                series("mean ladder rung", |r| r.ladder_rung_mean),
                series("value loss", |r| r.value_loss),
            ],
        )?;
    }
    eprintln!(
        "policy in {} (critic, metrics.jsonl, curves.png and checkpoints with the ladder there too)",
        out.join("policy").display()
    );
    Ok(())
}

fn museg(args: Args) -> Result<()> {
    use qforge_rl::museg::trainer::{MusegConfig, MusegEvent, run};
    let path = args
        .config
        .as_deref()
        .context("museg needs --config recipe.toml")?;
    let config = MusegConfig::from_recipe(path, &args.overrides)?;
    let total: u64 = config.phases.iter().map(|p| p.steps).sum();
    let bar = crate::common::progress_bar(total, "museg");
    let done_before: Vec<u64> = config
        .phases
        .iter()
        .scan(0, |acc, p| {
            let start = *acc;
            *acc += p.steps;
            Some(start)
        })
        .collect();
    let mut reports: Vec<(u64, qforge_rl::grpo::GrpoStepReport)> = Vec::new();
    let mut held_out = Vec::new();
    let summary = run(&config, |e| match e {
        MusegEvent::Warmup { step, .. } => bar.set_message(format!("warm start {step}")),
        MusegEvent::Step { phase, report } => {
            let at = done_before[*phase] + report.step;
            bar.set_position(at);
            bar.set_message(format!(
                "phase {} | reward {:.3} | kl {:.4}",
                phase + 1,
                report.reward_mean,
                report.approx_kl
            ));
            reports.push((at, report.clone()));
        }
        MusegEvent::HeldOut(r) => {
            bar.suspend(|| {
                eprintln!(
                    "held-out (phase {}, step {}): mIoU {:.3}, segment reward {:.3}, answered {:.2}",
                    r.phase + 1,
                    r.step,
                    r.grounding.m_iou.unwrap_or(0.0),
                    r.segment_reward,
                    r.answered
                )
            });
            held_out.push(r.clone());
        }
        MusegEvent::PhaseDone { phase, policy } => {
            bar.suspend(|| eprintln!("phase {} done: {}", phase + 1, policy.display()))
        }
    })?;
    bar.finish();
    if !reports.is_empty() {
        let series = |name, f: fn(&qforge_rl::grpo::GrpoStepReport) -> f64| Series {
            name,
            points: reports
                .iter()
                .map(|(x, r)| (*x as f64, f(r)))
                .filter(|(_, y)| y.is_finite())
                .collect(),
        };
        line_chart(
            &config.output_dir.join("curves.png"),
            "MUSEG training",
            "step",
            &[
                series("reward (format + segment)", |r| r.reward_mean),
                series("approx KL", |r| r.approx_kl),
            ],
        )?;
    }
    eprintln!(
        "policy in {} (per-phase metrics.jsonl and checkpoints under {}, curves.png)",
        summary.policy.display(),
        config.output_dir.display()
    );
    Ok(())
}

fn cprs(args: Args) -> Result<()> {
    use qforge_compress::train::CprsTrainer;
    let config = qforge_compress::train::CprsTrainConfig::from_recipe(
        args.config.as_deref(),
        &args.overrides,
    )?;
    let out = config.output_dir.clone();
    let mut trainer = CprsTrainer::new(config)?;
    eprintln!("{} training windows", trainer.windows());
    let bar = crate::common::progress_bar(trainer.total_steps(), "  cprs");
    bar.set_position(trainer.step());
    let mut steps = Vec::new();
    trainer.train(None, |r, _| {
        bar.set_position(r.step);
        bar.set_message(format!(
            "loss {:.4} (bio {:.4}) lr {:.2e} {:.0} tok/s",
            r.loss, r.bio_loss, r.lr, r.tokens_per_s
        ));
        steps.push((r.step as f64, r.loss));
    })?;
    bar.finish();
    let final_dir = out.join("final");
    trainer.save_compressor(&final_dir)?;
    if !steps.is_empty() {
        line_chart(
            &out.join("curves.png"),
            "CPRS training",
            "step",
            &[Series {
                name: "train loss",
                points: steps,
            }],
        )?;
    }
    eprintln!(
        "saved the compressor to {} (metrics.jsonl and curves.png in {})",
        final_dir.display(),
        out.display()
    );
    Ok(())
}

fn mutual_taught(args: Args) -> Result<()> {
    let path = args
        .config
        .as_deref()
        .context("mutual-taught needs --config recipe.toml")?;
    let config =
        qforge_pref::mutual_taught::MutualTaughtConfig::from_recipe(path, &args.overrides)?;
    let started = Instant::now();
    let results = qforge_pref::mutual_taught::run(&config, |t, stage| {
        eprintln!(
            "[{:>5.0}s] iteration {t}: {stage}",
            started.elapsed().as_secs_f64()
        )
    })?;
    for r in &results {
        eprintln!(
            "iteration {}: best win rate {:.3}{}; {} E-step pairs, M-step kept {} / dropped {}",
            r.iteration,
            r.best_win_rate,
            if r.stopped {
                " (below the threshold: stopped, previous policy kept)"
            } else {
                ""
            },
            r.e_step_pairs,
            r.m_step_pairs_kept,
            r.m_step_pairs_dropped
        );
    }
    if let Some(last) = results.last() {
        println!(
            "{}",
            serde_json::json!({"policy": last.policy_out, "reward_model": last.reward_model_out.clone().unwrap_or(last.reward_model_in.clone())})
        );
    }
    Ok(())
}

/// Trains to the end, saves `final/` and the curves.
fn finish(mut trainer: Trainer, name: &str) -> Result<()> {
    let objective = name;
    let (steps, evals) = run_with_progress(&mut trainer, name)?;
    let out = trainer.config.output_dir.clone();
    let final_dir = out.join("final");
    trainer.save_model(&final_dir)?;
    plot_run(
        &out.join("curves.png"),
        &format!("{objective} training"),
        &steps,
        &evals,
    )?;
    eprintln!(
        "saved the model to {} (metrics.jsonl and curves.png in {})",
        final_dir.display(),
        out.display()
    );
    Ok(())
}

/// Trains with an indicatif bar showing loss, lr, tokens/s and ETA.
pub fn run_with_progress(
    trainer: &mut Trainer,
    label: &str,
) -> Result<(Vec<StepReport>, Vec<EvalReport>)> {
    let total = trainer.total_steps();
    let bar = crate::common::progress_bar(total, &format!("{label:>6}"));
    bar.set_position(trainer.step());
    let started = Instant::now();
    let mut evals = Vec::new();
    let steps = trainer.train(
        |r| {
            bar.set_position(r.step);
            let acc = r
                .accuracy
                .map(|a| format!(" acc {a:.2}"))
                .unwrap_or_default();
            bar.set_message(format!(
                "loss {:.4}{acc} lr {:.2e} {:.0} tok/s",
                r.loss, r.lr, r.tokens_per_s
            ));
        },
        |e| {
            let acc = e
                .accuracy
                .map(|a| format!(", accuracy {a:.3}"))
                .unwrap_or_default();
            bar.println(format!("  eval @ step {}: loss {:.4}{acc}", e.step, e.loss));
            evals.push(e.clone());
        },
    )?;
    bar.finish_and_clear();
    eprintln!(
        "{label}: {} steps in {:.1}s",
        steps.len(),
        started.elapsed().as_secs_f64()
    );
    Ok((steps, evals))
}

pub fn plot_run(
    path: &Path,
    title: &str,
    steps: &[StepReport],
    evals: &[EvalReport],
) -> Result<()> {
    if steps.is_empty() && evals.is_empty() {
        // A resumed run that had already finished: its curves are on disk from before.
        return Ok(());
    }
    let mut series = vec![Series {
        name: "train loss",
        points: steps.iter().map(|r| (r.step as f64, r.loss)).collect(),
    }];
    if !evals.is_empty() {
        series.push(Series {
            name: "eval loss",
            points: evals.iter().map(|e| (e.step as f64, e.loss)).collect(),
        });
    }
    Ok(line_chart(path, title, "step", &series)?)
}

#[cfg(test)]
mod tests {

    /// Every recipe in examples/recipes/ parses into its trainer's settings: the command named
    /// on its first line (`# qforge train KIND --config ...`) picks the trainer.
    #[test]
    fn every_example_recipe_loads() {
        let dir = qforge_testkit::recipes_dir();
        let mut kinds = std::collections::BTreeSet::new();
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let text = std::fs::read_to_string(&path).unwrap();
            let kind = text
                .lines()
                .next()
                .and_then(|l| l.strip_prefix("# qforge train "))
                .and_then(|l| l.split_whitespace().next())
                .unwrap_or_else(|| panic!("{}: no `# qforge train KIND` line", path.display()))
                .to_string();
            let p = path.as_path();
            let loaded = match kind.as_str() {
                "sft" | "dpo" | "rm" => qforge_train::recipe::load(Some(p), &[])
                    .map(drop)
                    .map_err(anyhow::Error::from),
                "solopo" => qforge_pref::SoloSettings::from_recipe(Some(p), &[])
                    .and_then(|(_, s)| s.objective().map(drop))
                    .map_err(anyhow::Error::from),
                "mutual-taught" => {
                    qforge_pref::mutual_taught::MutualTaughtConfig::from_recipe(p, &[])
                        .map(drop)
                        .map_err(anyhow::Error::from)
                }
                "qwenlong-l1" => qforge_rl::qwenlong_l1::Recipe::load(p, &[])
                    .map(drop)
                    .map_err(anyhow::Error::from),
                "websailor" => qforge_agent::websailor::settings::RlRecipe::load(p, &[])
                    .map(drop)
                    .map_err(anyhow::Error::from),
                "spell" => qforge_rl::spell::SpellConfig::from_recipe(p, &[])
                    .map(drop)
                    .map_err(anyhow::Error::from),
                "writing-rl" => qforge_rl::writing_rl::WritingRlConfig::from_recipe(p, &[])
                    .map(drop)
                    .map_err(anyhow::Error::from),
                "museg" => qforge_rl::museg::trainer::MusegConfig::from_recipe(p, &[])
                    .map(drop)
                    .map_err(anyhow::Error::from),
                "cprs" => qforge_compress::train::CprsTrainConfig::from_recipe(Some(p), &[])
                    .map(drop)
                    .map_err(anyhow::Error::from),
                other => panic!("{}: unknown trainer `{other}`", path.display()),
            };
            if let Err(e) = loaded {
                panic!("{}: {e:#}", path.display());
            }
            kinds.insert(kind);
        }
        for trainer in [
            "sft",
            "dpo",
            "rm",
            "solopo",
            "mutual-taught",
            "qwenlong-l1",
            "websailor",
            "spell",
            "writing-rl",
            "museg",
            "cprs",
        ] {
            assert!(
                kinds.contains(trainer),
                "no example recipe for `qforge train {trainer}`"
            );
        }
    }
}

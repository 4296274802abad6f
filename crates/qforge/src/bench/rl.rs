//! `qforge bench rl-step`: one GRPO step on a small random model: rollout tokens/s, train
//! tokens/s, and the share of time in each; then DUPO against DAPO's dynamic sampling on the
//! same task, as wall time per useful (informative) group. `--recipe spell` splits a SPELL
//! step into its three roles' rollouts and the update, against a plain GRPO step; `--recipe
//! museg` prices the video in a MUSEG step.

use std::sync::Arc;

use anyhow::Result;
use candle_core::{DType, Device};
use qforge_model::{Model, ModelConfig};
use qforge_rl::grpo::{GroupFilter, GrpoConfig, GrpoStepReport, GrpoTrainer};
use qforge_rl::reward::{RewardFn, Task};
use serde_json::json;

#[derive(clap::Args, Debug, Clone)]
pub struct RlStepArgs {
    /// Steps measured per variant (after one warm-up step).
    #[arg(long, default_value_t = 3)]
    steps: u64,
    /// Fraction of rollouts the synthetic reward marks correct (sets how many groups are
    /// informative: 1 − p^G − (1−p)^G).
    #[arg(long, default_value_t = 0.08)]
    correct_rate: f64,
    #[arg(long, default_value_t = 8)]
    group_size: usize,
    #[arg(long, default_value_t = 8)]
    prompts_per_step: usize,
    #[arg(long, default_value_t = 32)]
    max_new_tokens: usize,
    /// grpo (the core step, DAPO and DUPO), spell (the self-play step by role), writing-rl
    /// (a PPO step with its critic against a GRPO step on the same number of sequences) or
    /// museg (a step with video rollouts against the same step on the question alone).
    #[arg(long, default_value = "grpo")]
    recipe: String,
    /// Run one variant in this process and print its JSON (each variant runs in its own
    /// process so peak memory is its own).
    #[arg(long, hide = true)]
    only: Option<String>,
}

/// A benchmark stand-in for a verifier: marks a fixed fraction of responses correct by hashing
/// their text, so group statistics look like a task of that difficulty.
struct HashedReward(f64);

impl RewardFn for HashedReward {
    fn score(&self, _task: &Task, response: &str) -> f64 {
        let h = response.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
        });
        f64::from(u8::from(((h >> 11) as f64 / (1u64 << 53) as f64) < self.0))
    }
}

fn measure(
    dir: &std::path::Path,
    args: &RlStepArgs,
    filter: GroupFilter,
) -> Result<Vec<GrpoStepReport>> {
    let tasks = qforge_rl::tasks::kv_retrieval(64, 6, 1, 5);
    let mut trainer = GrpoTrainer::new(
        GrpoConfig {
            model: dir.to_path_buf(),
            output_dir: dir.join(format!("{filter:?}")),
            group_size: args.group_size,
            prompts_per_step: args.prompts_per_step,
            max_new_tokens: args.max_new_tokens,
            temperature: 1.0,
            lr: 1e-5,
            max_steps: args.steps + 1,
            filter,
            max_rounds: 10,
            ..GrpoConfig::default()
        },
        tasks,
        Arc::new(HashedReward(args.correct_rate)),
    )?;
    trainer.step()?; // warm-up
    (0..args.steps).map(|_| Ok(trainer.step()?)).collect()
}

pub fn run(args: RlStepArgs) -> Result<()> {
    let root = std::env::temp_dir().join(format!("qforge-bench-rl-{}", std::process::id()));
    let dir = root.join("policy");
    if !matches!(
        args.recipe.as_str(),
        "grpo" | "spell" | "writing-rl" | "museg"
    ) {
        anyhow::bail!(
            "--recipe `{}`: grpo, spell, writing-rl or museg",
            args.recipe
        );
    }
    if args.recipe == "museg" {
        let result = museg::run(&root, &args);
        let _ = std::fs::remove_dir_all(&root);
        return result;
    }
    // A small Qwen3 (8 layers, 256 wide) over the bench tokenizer's vocabulary.
    let config = ModelConfig::from_json(json!({
        "architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "vocab_size": 384, "hidden_size": 256,
        "intermediate_size": 1024, "num_hidden_layers": 8, "num_attention_heads": 4, "num_key_value_heads": 2,
        "head_dim": 64, "max_position_embeddings": 4096, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0,
        "tie_word_embeddings": true, "hidden_act": "silu", "attention_bias": false
    }))?;
    let params = config.num_parameters();
    Model::random(config, DType::F32, &Device::Cpu, 9)?.save_pretrained(&dir, usize::MAX)?;
    qforge_model::copy_tokenizer_files(&crate::demo::demo_model_dir()?, &dir)?;
    if args.recipe == "writing-rl" {
        let result = writing::run(&root, &dir, &args, params);
        let _ = std::fs::remove_dir_all(&root);
        return result;
    }
    eprintln!(
        "[rl-step] {:.1}M parameters, {} prompts x G={} per step, <= {} new tokens",
        params as f64 / 1e6,
        args.prompts_per_step,
        args.group_size,
        args.max_new_tokens
    );
    let plain = measure(&dir, &args, GroupFilter::None)?;
    if args.recipe == "spell" {
        let result = spell::run(&root, &dir, &args, &plain);
        let _ = std::fs::remove_dir_all(&root);
        return result;
    }
    let sum = |rs: &[GrpoStepReport], f: fn(&GrpoStepReport) -> f64| rs.iter().map(f).sum::<f64>();
    let (rt, tt) = (
        sum(&plain, |r| r.rollout_seconds),
        sum(&plain, |r| r.train_seconds),
    );
    println!(
        "rl-step: rollout {:.0} tok/s, train {:.0} tok/s; time {:.0}% rollout / {:.0}% train",
        sum(&plain, |r| r.rollout_tokens as f64) / rt,
        sum(&plain, |r| r.train_tokens as f64) / tt.max(1e-9),
        100.0 * rt / (rt + tt),
        100.0 * tt / (rt + tt)
    );
    let per_group = |rs: &[GrpoStepReport]| {
        let secs = sum(rs, |r| r.rollout_seconds + r.train_seconds);
        let groups = rs.iter().map(|r| r.useful_groups).sum::<usize>();
        let rounds = rs.iter().map(|r| r.generation_rounds).sum::<usize>();
        (
            secs / groups.max(1) as f64,
            secs / rs.len().max(1) as f64,
            groups,
            rounds,
        )
    };
    let (dapo, dapo_step, dapo_groups, dapo_rounds) =
        per_group(&measure(&dir, &args, GroupFilter::Dapo)?);
    let (dupo, dupo_step, dupo_groups, dupo_rounds) =
        per_group(&measure(&dir, &args, GroupFilter::Dupo)?);
    println!(
        "DAPO: {dapo_step:.2} s/step, {dapo_rounds} generation rounds, {dapo_groups} distinct useful groups ({dapo:.2} s each)"
    );
    println!(
        "DUPO: {dupo_step:.2} s/step, {dupo_rounds} generation rounds, {dupo_groups} distinct useful groups ({dupo:.2} s each)"
    );
    println!(
        "DUPO vs DAPO: {:.2}x per step, {:.2}x per distinct useful group",
        dapo_step / dupo_step,
        dapo / dupo
    );
    let _ = std::fs::remove_dir_all(&root);
    Ok(())
}

mod spell {
    //! A SPELL step by role. The rollouts are the policy's own (real generation, real token
    //! counts, trained on as generated); only the text the loop reads is replaced by a
    //! stand-in so that, as with a trained policy, questions parse, answers are right at the
    //! `--correct-rate` and judgements are YES/NO.

    use std::path::Path;

    use anyhow::Result;
    use qforge_rl::grpo::{GrpoStepReport, GrpoTrainer, Sample};
    use qforge_rl::spell::trainer::{Phase, SampleSource};
    use qforge_rl::spell::{CorpusSettings, SpellConfig, SpellStepReport, SpellTask, SpellTrainer};

    use super::RlStepArgs;

    fn hash(s: &str) -> u64 {
        s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
        })
    }

    struct FormattedRoles {
        correct_rate: f64,
    }

    impl FormattedRoles {
        fn text(&self, phase: Phase, prompt: &str, generated: &str) -> String {
            let facts: Vec<(&str, &str)> = prompt
                .lines()
                .filter_map(|l| l.trim().split_once(" = "))
                .filter(|(k, _)| k.starts_with('k'))
                .collect();
            let h = hash(generated) ^ hash(prompt);
            match phase {
                Phase::Questioner => {
                    let (k, v) = facts[(h as usize) % facts.len().max(1)];
                    format!("{{\"question\": \"What is {k}?\", \"answer\": \"{v}\"}}")
                }
                Phase::Grounding => "The correct answer is unknown.".into(),
                Phase::Responder | Phase::Evaluation => {
                    let q = prompt
                        .rsplit("What is ")
                        .next()
                        .unwrap_or("")
                        .split('?')
                        .next()
                        .unwrap_or("");
                    let v = facts.iter().find(|(k, _)| *k == q).map_or("0", |(_, v)| v);
                    let right = ((h >> 11) as f64 / (1u64 << 53) as f64) < self.correct_rate;
                    format!("The correct answer is {}.", if right { v } else { "0" })
                }
                Phase::Verifier => {
                    let line = |tag: &str| {
                        prompt
                            .split(tag)
                            .nth(1)
                            .and_then(|r| r.lines().next())
                            .unwrap_or("")
                            .trim()
                            .to_string()
                    };
                    let same = line("A1: ") == line("A2: ");
                    if same != (h % 8 == 0) {
                        "Decision: [[YES]]"
                    } else {
                        "Decision: [[NO]]"
                    }
                    .into()
                }
            }
        }
    }

    impl SampleSource for FormattedRoles {
        fn sample(
            &mut self,
            policy: &mut GrpoTrainer,
            phase: Phase,
            prompts: &[Vec<u32>],
            n: usize,
            stream: u64,
        ) -> qforge_rl::Result<Vec<Vec<Sample>>> {
            let mut groups = policy.sample(prompts, n, stream)?;
            let tok = policy.tokenizer().clone();
            for (p, group) in prompts.iter().zip(&mut groups) {
                let prompt = tok.decode(p, false)?;
                for s in group {
                    s.text = self.text(phase, &prompt, &s.text);
                }
            }
            Ok(groups)
        }
    }

    pub fn run(
        root: &Path,
        model: &Path,
        args: &RlStepArgs,
        plain: &[GrpoStepReport],
    ) -> Result<()> {
        let prompts = root.join("prompts");
        std::fs::create_dir_all(&prompts)?;
        std::fs::write(
            prompts.join("questioner_doc_general_qa.txt"),
            "Facts:\n{context}\nAsk one question as JSON.",
        )?;
        std::fs::write(
            prompts.join("questioner_doc_general_qa_history.txt"),
            "Facts:\n{context}\nAsk a harder one.\nSeen:\n{examples}",
        )?;
        std::fs::write(
            prompts.join("responder_doc_general_qa.txt"),
            "{content}\nQ: {question}",
        )?;
        std::fs::write(
            prompts.join("verifier.txt"),
            "P: {problem}\nA1: {answer_1}\nA2: {answer_2}\nSame?",
        )?;
        let clusters = root.join("clusters.jsonl");
        let rows: Vec<String> = (0..32)
            .map(|i| {
                let ps: Vec<String> = (0..12)
                    .map(|j| format!("k{i}x{j} = {}", (i * 31 + j * 7) % 900 + 100))
                    .collect();
                serde_json::json!({"id": format!("c{i}"), "paragraphs": ps}).to_string()
            })
            .collect();
        std::fs::write(&clusters, rows.join("\n"))?;
        let mut config = SpellConfig {
            model: model.to_path_buf(),
            output_dir: root.join("spell"),
            max_steps: args.steps + 1,
            save_steps: 0,
            seed: 5,
            corpora: vec![CorpusSettings {
                path: clusters,
                tasks: vec![SpellTask::DocGeneralQa],
                n_docs: vec![5],
            }],
            ..SpellConfig::default()
        };
        config.grpo.group_size = args.group_size;
        config.grpo.prompts_per_step = args.prompts_per_step;
        config.grpo.max_new_tokens = args.max_new_tokens;
        config.grpo.temperature = 1.0;
        config.grpo.lr = 1e-5;
        config.spell.gen_batch_size = args.prompts_per_step * 2;
        config.spell.max_gen_batches = 3;
        config.spell.verifier_n = 4;
        config.spell.prompts_dir = Some(prompts);
        let mut trainer =
            SpellTrainer::new(config)?.with_source(Box::new(FormattedRoles { correct_rate: 0.5 }));
        trainer.step()?; // warm-up
        let reports: Vec<SpellStepReport> = (0..args.steps)
            .map(|_| trainer.step())
            .collect::<Result<_, _>>()?;
        let sum = |f: fn(&SpellStepReport) -> f64| reports.iter().map(f).sum::<f64>();
        let parts = [
            ("questioner", sum(|r| r.questioner_seconds)),
            ("grounding", sum(|r| r.grounding_seconds)),
            ("responder", sum(|r| r.responder_seconds)),
            ("verifier", sum(|r| r.verifier_seconds)),
            ("update", sum(|r| r.update_seconds)),
        ];
        let total: f64 = parts.iter().map(|(_, s)| s).sum();
        let n = reports.len() as f64;
        let shares: Vec<String> = parts
            .iter()
            .map(|(name, s)| format!("{name} {:.0}%", 100.0 * s / total))
            .collect();
        println!(
            "spell step: {:.2} s ({}); samples per step: questioner {:.0}, responder {:.0}, verifier {:.0}",
            total / n,
            shares.join(", "),
            sum(|r| r.questioner_samples as f64) / n,
            sum(|r| r.responder_samples as f64) / n,
            sum(|r| r.verifier_samples as f64) / n,
        );
        let grpo = plain
            .iter()
            .map(|r| r.rollout_seconds + r.train_seconds)
            .sum::<f64>()
            / plain.len().max(1) as f64;
        println!(
            "spell vs a plain GRPO step (kv-retrieval prompts, {} x G={}, same model and lengths): {:.2}x the time",
            args.prompts_per_step,
            args.group_size,
            total / n / grpo
        );
        Ok(())
    }
}

mod writing {
    //! A Writing-RL PPO step (rollouts, the rubric judge, the critic's values and update, GAE,
    //! the actor's update) against a GRPO step over the same number of sequences (P·G prompts
    //! with one rollout each, against P prompts with G each), same model and lengths; each
    //! variant in its own process so its peak RSS is its own.

    use std::path::Path;

    use anyhow::Result;
    use qforge_rl::writing_rl::data::{TOPICS, length_following_prompts};
    use qforge_rl::writing_rl::{Algorithm, WritingRlConfig, WritingRlTrainer, trainer::judge_for};

    use super::RlStepArgs;

    /// Mean seconds per step of the timed steps (after one warm-up) and the step's shares.
    fn measure(
        root: &Path,
        model: &Path,
        args: &RlStepArgs,
        algorithm: Algorithm,
    ) -> Result<serde_json::Value> {
        crate::bench::train::peak_rss_mib(true);
        let ppo = algorithm == Algorithm::Ppo;
        let prompts_per_step = if ppo {
            args.prompts_per_step * args.group_size
        } else {
            args.prompts_per_step
        };
        let topics: Vec<&str> = (0..prompts_per_step)
            .map(|i| TOPICS[i % TOPICS.len()])
            .collect();
        let mut prompts = length_following_prompts(&topics, 12, &[3, 6, 9, 11]);
        for (i, p) in prompts.iter_mut().enumerate() {
            p.id = format!("{i}");
        }
        let mut config = WritingRlConfig {
            model: model.to_path_buf(),
            prompts: root.join("unused.jsonl"),
            output_dir: root.join(format!("{algorithm:?}")),
            max_steps: args.steps + 1,
            save_steps: 0,
            seed: 5,
            ..WritingRlConfig::default()
        };
        config.grpo.prompts_per_step = prompts_per_step;
        config.grpo.group_size = args.group_size;
        config.grpo.max_new_tokens = args.max_new_tokens;
        config.grpo.mini_batches = 1;
        config.grpo.lr_warmup_ratio = 0.0;
        config.writing_rl.algorithm = algorithm;
        config.writing_rl.select = false;
        let judge = judge_for(&config.judge)?;
        let mut trainer = WritingRlTrainer::new(config, prompts, judge)?;
        trainer.step()?; // warm-up
        let reports: Vec<_> = (0..args.steps)
            .map(|_| trainer.step())
            .collect::<Result<_, _>>()?;
        let n = reports.len() as f64;
        let sum = |f: fn(&qforge_rl::writing_rl::WritingRlStepReport) -> f64| {
            reports.iter().map(f).sum::<f64>() / n
        };
        Ok(serde_json::json!({
            "rollout": sum(|r| r.rollout_seconds),
            "judge": sum(|r| r.judge_seconds),
            "train": sum(|r| r.train_seconds),
            "tokens": sum(|r| r.response_tokens_mean),
            "peak_mib": crate::bench::train::peak_rss_mib(false),
        }))
    }

    pub fn run(root: &Path, model: &Path, args: &RlStepArgs, params: usize) -> Result<()> {
        if let Some(which) = &args.only {
            let algorithm = match which.as_str() {
                "ppo" => Algorithm::Ppo,
                "grpo" => Algorithm::Grpo,
                other => anyhow::bail!("unknown variant `{other}`"),
            };
            println!("{}", measure(root, model, args, algorithm)?);
            return Ok(());
        }
        let child = |which: &str| -> Result<serde_json::Value> {
            let out = std::process::Command::new(std::env::current_exe()?)
                .args([
                    "bench",
                    "rl-step",
                    "--recipe",
                    "writing-rl",
                    "--only",
                    which,
                ])
                .args(["--steps", &args.steps.to_string()])
                .args(["--group-size", &args.group_size.to_string()])
                .args(["--prompts-per-step", &args.prompts_per_step.to_string()])
                .args(["--max-new-tokens", &args.max_new_tokens.to_string()])
                .output()?;
            anyhow::ensure!(
                out.status.success(),
                "{which} variant failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let text = String::from_utf8_lossy(&out.stdout);
            Ok(serde_json::from_str(
                text.lines().last().unwrap_or_default().trim(),
            )?)
        };
        let (ppo, grpo) = (child("ppo")?, child("grpo")?);
        let step = |v: &serde_json::Value| {
            ["rollout", "judge", "train"]
                .iter()
                .map(|k| v[k].as_f64().unwrap_or(f64::NAN))
                .sum::<f64>()
        };
        let line = |name: &str, v: &serde_json::Value| {
            format!(
                "{name} {:.2} s/step (rollout {:.2}, judge {:.3}, update {:.2}; peak RSS {})",
                step(v),
                v["rollout"].as_f64().unwrap_or(f64::NAN),
                v["judge"].as_f64().unwrap_or(f64::NAN),
                v["train"].as_f64().unwrap_or(f64::NAN),
                v["peak_mib"]
                    .as_f64()
                    .map_or("n/a".into(), |m| format!("{m:.0} MiB"))
            )
        };
        println!(
            "writing-rl ({:.1}M parameters, {} sequences a step, <= {} new tokens): {} | {}",
            params as f64 / 1e6,
            args.prompts_per_step * args.group_size,
            args.max_new_tokens,
            line("PPO + critic", &ppo),
            line("GRPO", &grpo)
        );
        println!(
            "PPO vs GRPO on the same number of sequences: {:.2}x the step time, {:.2}x the update time, {} the peak memory",
            step(&ppo) / step(&grpo),
            ppo["train"].as_f64().unwrap_or(f64::NAN) / grpo["train"].as_f64().unwrap_or(f64::NAN),
            match (ppo["peak_mib"].as_f64(), grpo["peak_mib"].as_f64()) {
                (Some(a), Some(b)) => format!("{:.2}x", a / b),
                _ => "n/a".into(),
            }
        );
        Ok(())
    }
}

mod museg {
    //! A MUSEG step on ColourTime clips (video rollouts, the tower run inside every forward of
    //! the update) against the same step with the same prompts and rewards but no video: what
    //! seeing costs, on the recipe's random tiny Qwen2.5-VL.

    use std::path::Path;
    use std::sync::Arc;

    use anyhow::Result;
    use qforge_model::vl::ProcessorConfig;
    use qforge_rl::grpo::{GrpoConfig, GrpoStepReport, GrpoTrainer};
    use qforge_rl::museg::colour_time::{
        ColourTimeConfig, ColourTimeVideo, QUESTION, write_checkpoint,
    };
    use qforge_rl::museg::trainer::{PreparedMedia, conversation, museg_grpo_defaults};
    use qforge_rl::museg::{QuestionTemplate, segments_as_answers};
    use qforge_rl::reward::Task;
    use serde_json::json;

    use super::RlStepArgs;

    fn measure(
        root: &Path,
        model: &Path,
        args: &RlStepArgs,
        videos: &[ColourTimeVideo],
        with_video: bool,
    ) -> Result<Vec<GrpoStepReport>> {
        let template = QuestionTemplate::FrameSelectionThinking;
        let tasks: Vec<Task> = videos
            .iter()
            .map(|v| Task {
                messages: if with_video {
                    conversation(QUESTION, template)
                } else {
                    vec![json!({"role": "user", "content": template.render(QUESTION)})]
                },
                answers: segments_as_answers(&v.segments),
            })
            .collect();
        // A random policy scores 0 on MUSEG's rewards and would never update: the hashed
        // stand-in makes about every group informative (MUSEG's reward itself costs
        // microseconds).
        let reward = super::HashedReward(0.5);
        let config = GrpoConfig {
            model: model.to_path_buf(),
            output_dir: root.join(if with_video { "video" } else { "text" }),
            group_size: args.group_size,
            prompts_per_step: args.prompts_per_step,
            max_new_tokens: args.max_new_tokens,
            temperature: 1.0,
            max_steps: args.steps + 1,
            save_steps: 0,
            ..museg_grpo_defaults()
        };
        let mut trainer = GrpoTrainer::new(config, tasks, Arc::new(reward))?;
        if with_video {
            let processor = ProcessorConfig::from_dir(model)?;
            let visual = videos
                .iter()
                .map(|v| v.visual(&processor))
                .collect::<Result<Vec<_>, _>>()?;
            trainer = trainer.with_media(Arc::new(PreparedMedia(visual)))?;
        }
        trainer.step()?; // warm-up
        (0..args.steps).map(|_| Ok(trainer.step()?)).collect()
    }

    pub fn run(root: &Path, args: &RlStepArgs) -> Result<()> {
        let model = write_checkpoint(&root.join("colour-time-vl"), 7)?;
        let videos = (0..args.prompts_per_step as u64 * 2)
            .map(|i| ColourTimeVideo::generate(&ColourTimeConfig::default(), i))
            .collect::<Result<Vec<_>, _>>()?;
        let tokens: f64 = videos
            .iter()
            .map(|v| v.frames.len().div_ceil(2) as f64)
            .sum::<f64>()
            / videos.len() as f64;
        let seconds = |rs: &[GrpoStepReport], f: fn(&GrpoStepReport) -> f64| {
            rs.iter().map(f).sum::<f64>() / rs.len() as f64
        };
        let video = measure(root, &model, args, &videos, true)?;
        let text = measure(root, &model, args, &videos, false)?;
        let line = |name: &str, rs: &[GrpoStepReport]| {
            format!(
                "{name} {:.2} s/step (rollout {:.2}, update {:.2})",
                seconds(rs, |r| r.rollout_seconds + r.train_seconds),
                seconds(rs, |r| r.rollout_seconds),
                seconds(rs, |r| r.train_seconds)
            )
        };
        println!(
            "museg ({} prompts x G={}, <= {} new tokens, ~{tokens:.0} video tokens a prompt): {} | {}",
            args.prompts_per_step,
            args.group_size,
            args.max_new_tokens,
            line("with video", &video),
            line("question only", &text)
        );
        let step = |rs: &[GrpoStepReport]| seconds(rs, |r| r.rollout_seconds + r.train_seconds);
        println!(
            "video vs question only: {:.2}x the step time, {:.2}x the update time",
            step(&video) / step(&text),
            seconds(&video, |r| r.train_seconds) / seconds(&text, |r| r.train_seconds)
        );
        Ok(())
    }
}

//! `qforge bench rl-step`: one GRPO step on a small random model: rollout tokens/s, train
//! tokens/s, and the share of time in each; then DUPO against DAPO's dynamic sampling on the
//! same task, as wall time per useful (informative) group.

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
    eprintln!(
        "[rl-step] {:.1}M parameters, {} prompts x G={} per step, <= {} new tokens",
        params as f64 / 1e6,
        args.prompts_per_step,
        args.group_size,
        args.max_new_tokens
    );
    let plain = measure(&dir, &args, GroupFilter::None)?;
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

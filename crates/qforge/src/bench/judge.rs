//! `qforge bench judge`: Writing-RL's pairwise judge client against a real `qforge serve` on a
//! loopback port (the built-in demo model as the judge model): judge calls per second at
//! several concurrency limits, against concurrency 1 in the same run.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use qforge_rl::writing_rl::judge::{Comparison, JudgeSettings, PairwiseJudge, Position};

#[derive(clap::Args, Debug, Clone)]
pub struct JudgeArgs {
    /// Concurrency limits to measure (comma-separated); the first is the baseline.
    #[arg(long, value_delimiter = ',', default_value = "1,8,32")]
    concurrency: Vec<usize>,
    /// Distinct comparisons judged per limit (one call each: no cache hits, no retries).
    #[arg(long, default_value_t = 64)]
    calls: usize,
    /// Tokens the judge model writes per call.
    #[arg(long, default_value_t = 16)]
    max_tokens: usize,
}

pub fn run(args: JudgeArgs) -> Result<()> {
    // The demo model with a 4096-token context: the judge template alone is ~1k of its tokens.
    let dir = std::env::temp_dir().join(format!("qforge-bench-judge-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    for entry in std::fs::read_dir(crate::demo::demo_model_dir()?)? {
        let entry = entry?;
        std::fs::copy(entry.path(), dir.join(entry.file_name()))?;
    }
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json"))?)?;
    config["max_position_embeddings"] = 4096.into();
    std::fs::write(dir.join("config.json"), config.to_string())?;
    let state = qforge_serve::AppState::for_checkpoint(
        "judge",
        &dir,
        qforge_serve::ServerConfig::default(),
    );
    let _ = std::fs::remove_dir_all(&dir);
    let state = state?;
    let url = qforge_serve::spawn_on_loopback(state)?;
    let mut remote = qforge_engine::RemoteConfig::new(&url, "judge");
    remote.retries = 0;
    remote.timeout = Duration::from_secs(600);
    let backend = Arc::new(qforge_engine::RemoteBackend::new(remote)?);
    let mut baseline = None;
    for (round, &c) in args.concurrency.iter().enumerate() {
        let judge = PairwiseJudge::new(
            backend.clone(),
            JudgeSettings {
                url: url.clone(),
                model: "judge".into(),
                concurrency: c.max(1),
                retries: 0,
                max_tokens: args.max_tokens,
                position: Position::PositionDisadvantage,
                ..JudgeSettings::default()
            },
        )?;
        let items: Vec<Comparison> = (0..args.calls)
            .map(|i| Comparison {
                prompt: format!("Write a short note about topic {round}-{i}."),
                response: format!("A short note, number {i}, about the topic."),
                reference: "A reference note about the topic.".into(),
                criteria: None,
            })
            .collect();
        let started = Instant::now();
        judge.judge(&items)?;
        let secs = started.elapsed().as_secs_f64();
        let rate = judge.counts().calls as f64 / secs;
        let base = *baseline.get_or_insert(rate);
        println!(
            "judge: concurrency {c:>3}: {rate:.1} calls/s ({} calls in {secs:.2} s), {:.2}x concurrency {}",
            judge.counts().calls,
            rate / base,
            args.concurrency[0]
        );
    }
    Ok(())
}

//! MUSEG's learning check on ColourTime (vlm.md §3.3): a random ~1M-parameter Qwen2.5-VL gets a
//! short supervised warm start (stopped at held-out mIoU 0.3), then GRPO with MUSEG's rewards
//! in two phases (`format` + `segment_matching`, then `format_n_timestamp` +
//! `segment_matching`). Held-out videos are answered greedily before and after; the control
//! run shuffles every video's temporal patches (colours no longer say when).
//!
//!     cargo run --release -p qforge-rl --example museg_colour_time -- [SEEDS [STEPS_1 [STEPS_2 [shuffled]]]]
//!
//! SEEDS is a comma list (default 1,2,3). Writes `runs/museg_colour_time/results.json`.
//!
//! Pass thresholds, fixed before the first run (vlm.md §3.3): on every seed, the held-out
//! segment-matching reward at the end is at least 0.4 above its value after the warm start, and
//! the end first-segment mIoU exceeds 0.6. Control (shuffled): the end mIoU stays below 0.4 on
//! every seed.

use std::path::PathBuf;

use qforge_rl::grpo::GrpoConfig;
use qforge_rl::museg::colour_time::write_checkpoint;
use qforge_rl::museg::trainer::MusegPhase;
use qforge_rl::museg::trainer::{
    ColourTimeData, MusegConfig, MusegEvent, museg_grpo_defaults, run,
};
use qforge_rl::museg::{QuestionTemplate, RewardColumn};
use serde_json::json;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let seeds: Vec<u64> = args
        .get(1)
        .map_or("1,2,3", String::as_str)
        .split(',')
        .map(|s| s.parse().expect("a seed"))
        .collect();
    let steps_1: u64 = args.get(2).map_or(60, |s| s.parse().expect("steps"));
    let steps_2: u64 = args.get(3).map_or(40, |s| s.parse().expect("steps"));
    let shuffled = args.get(4).is_some_and(|s| s == "shuffled");
    let root = PathBuf::from("runs/museg_colour_time");
    let mut results = Vec::new();
    for &seed in &seeds {
        let tag = format!("{}seed-{seed}", if shuffled { "shuffled-" } else { "" });
        let out = root.join(&tag);
        let model = write_checkpoint(&root.join(format!("model-{seed}")), seed).unwrap();
        let config = MusegConfig {
            model,
            output_dir: out.clone(),
            seed,
            grpo: GrpoConfig {
                group_size: 8,
                prompts_per_step: 4,
                max_new_tokens: 48,
                temperature: 1.0,
                lr: 3e-4,
                save_steps: 20,
                ..museg_grpo_defaults()
            },
            phases: vec![
                MusegPhase {
                    data: PathBuf::new(),
                    steps: steps_1,
                    rewards: vec![RewardColumn::Format, RewardColumn::SegmentMatching],
                    template: QuestionTemplate::FrameSelectionThinking,
                },
                MusegPhase {
                    data: PathBuf::new(),
                    steps: steps_2,
                    rewards: vec![
                        RewardColumn::FormatNTimestamp,
                        RewardColumn::SegmentMatching,
                    ],
                    template: QuestionTemplate::FrameSelectionThinkingNTimestamp,
                },
            ],
            colour_time: Some(ColourTimeData {
                train: 256,
                held_out: 32,
                eval_steps: 20,
                shuffle_frames: shuffled,
                warmup_steps: 300,
                warmup_batch: 16,
                warmup_lr: 1e-3,
                warmup_stop_miou: 0.3,
                ..ColourTimeData::default()
            }),
            ..MusegConfig::default()
        };
        let started = std::time::Instant::now();
        let summary = run(&config, |e| match e {
            MusegEvent::Warmup { step, entropy } if step % 10 == 0 => {
                eprintln!("[{tag}] warmup {step} entropy {entropy:.4}")
            }
            MusegEvent::Step { phase, report } => eprintln!(
                "[{tag}] phase {} step {} reward {:.3} ({:.1}s + {:.1}s)",
                phase + 1,
                report.step,
                report.reward_mean,
                report.rollout_seconds,
                report.train_seconds
            ),
            MusegEvent::HeldOut(r) => eprintln!(
                "[{tag}] held-out phase {} step {}: mIoU {:.3} segment reward {:.3} answered {:.2}",
                r.phase + 1,
                r.step,
                r.grounding.m_iou.unwrap_or(0.0),
                r.segment_reward,
                r.answered
            ),
            _ => {}
        })
        .unwrap();
        let first = summary.held_out.first().cloned().unwrap();
        let last = summary.held_out.last().cloned().unwrap();
        results.push(json!({
            "seed": seed, "shuffled": shuffled, "seconds": started.elapsed().as_secs_f64(),
            "start": first, "end": last, "curve": summary.held_out,
        }));
        println!(
            "{tag}: mIoU {:.3} -> {:.3}, segment reward {:.3} -> {:.3}",
            first.grounding.m_iou.unwrap_or(0.0),
            last.grounding.m_iou.unwrap_or(0.0),
            first.segment_reward,
            last.segment_reward
        );
    }
    std::fs::create_dir_all(&root).unwrap();
    let name = if shuffled {
        "results_shuffled.json"
    } else {
        "results.json"
    };
    std::fs::write(
        root.join(name),
        serde_json::to_string_pretty(&results).unwrap(),
    )
    .unwrap();
}

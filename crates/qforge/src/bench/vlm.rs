//! `qforge bench vlm`: Qwen2.5-VL's image path (processor + vision tower) per image at 448 x 448
//! and 1024 x 1024 and video frames/s, against transformers on CPU (tools/bench/vlm_torch.py)
//! on the same tower config and inputs, in the same run.

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor};
use qforge_model::vl::processor::{self, ProcessorConfig, RgbImage};
use qforge_model::vl::{VisionConfig, VisionTower};
use serde_json::{Value, json};

#[derive(clap::Args, Debug, Clone)]
pub struct VlmArgs {
    /// Vision blocks (Qwen2.5-VL-3B/7B have 32; fewer keeps a 2-core run short, the ratio is
    /// per block). Full-attention blocks are every 8th as released (7, 15, ...).
    #[arg(long, default_value_t = 32)]
    depth: usize,
    /// Timed repeats per case (the best is reported).
    #[arg(long, default_value_t = 2)]
    repeats: usize,
    /// Video frames in the video case (224 x 224 each).
    #[arg(long, default_value_t = 16)]
    frames: usize,
    /// Python with torch + transformers for the baseline (default: $QFORGE_TORCH_PYTHON, else
    /// python3). Without one the baseline is skipped and the run says so.
    #[arg(long)]
    python: Option<String>,
}

/// Qwen2.5-VL-3B's vision config with `depth` blocks.
fn tower_config(depth: usize) -> Value {
    json!({
        "depth": depth, "hidden_size": 1280, "intermediate_size": 3420, "num_heads": 16,
        "hidden_act": "silu", "patch_size": 14, "temporal_patch_size": 2, "spatial_merge_size": 2,
        "in_channels": 3, "window_size": 112, "tokens_per_second": 2, "out_hidden_size": 2048,
        "fullatt_block_indexes": (0..depth).filter(|b| b % 8 == 7).collect::<Vec<_>>(),
    })
}

fn random_tower(config: &VisionConfig) -> Result<VisionTower> {
    let mut tensors = std::collections::HashMap::new();
    for (i, (name, shape)) in config.expected_shapes("").into_iter().enumerate() {
        let t = if name.contains("norm") || name.contains("ln_q") {
            Tensor::ones(shape, DType::F32, &Device::Cpu)?
        } else {
            let n: usize = shape.iter().product();
            let data: Vec<f32> = (0..n)
                .map(|k| (((k * 2_654_435_761 + i * 97) % 1000) as f32 / 1000.0 - 0.5) * 0.04)
                .collect();
            Tensor::from_vec(data, shape, &Device::Cpu)?
        };
        tensors.insert(name, t);
    }
    Ok(VisionTower::from_tensors(config.clone(), tensors)?)
}

fn noise_image(h: usize, w: usize, seed: usize) -> RgbImage {
    let data = (0..h * w * 3)
        .map(|k| ((k * 2_654_435_761 + seed * 40_503) >> 7) as u8)
        .collect();
    RgbImage::new(h, w, data).expect("sized")
}

fn best_ms(repeats: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    let mut best = f64::MAX;
    for _ in 0..repeats.max(1) {
        let t = Instant::now();
        f()?;
        best = best.min(t.elapsed().as_secs_f64() * 1e3);
    }
    Ok(best)
}

pub fn run(args: VlmArgs) -> Result<()> {
    let cfg_json = tower_config(args.depth);
    let config = VisionConfig::from_json(&cfg_json)?;
    let tower = random_tower(&config)?;
    let processor_config = ProcessorConfig::default();
    let cases: Vec<(&str, usize, usize, usize)> = vec![
        ("image", 448, 448, 1),
        ("image", 1024, 1024, 1),
        ("video", 224, 224, args.frames),
    ];
    eprintln!(
        "Qwen2.5-VL-3B vision tower with {} of 32 blocks, f32, {} timed repeats per case",
        args.depth, args.repeats
    );
    let mut ours = Vec::new();
    for &(kind, h, w, frames) in &cases {
        let inputs: Vec<RgbImage> = (0..frames).map(|f| noise_image(h, w, f)).collect();
        let patches = if kind == "image" {
            processor::process_image(&processor_config, &inputs[0])?
        } else {
            processor::process_video(&processor_config, &inputs)?
        };
        let process_ms = best_ms(args.repeats, || {
            if kind == "image" {
                processor::process_image(&processor_config, &inputs[0])?;
            } else {
                processor::process_video(&processor_config, &inputs)?;
            }
            Ok(())
        })?;
        let rows = patches.rows();
        let pixels = Tensor::from_vec(
            patches.pixel_values.clone(),
            (rows, config.patch_len()),
            &Device::Cpu,
        )?;
        tower.forward(&pixels, &[patches.grid_thw])?; // warm-up
        let tower_ms = best_ms(args.repeats, || {
            tower.forward(&pixels, &[patches.grid_thw])?;
            Ok(())
        })?;
        ours.push((process_ms, tower_ms, rows));
    }
    crate::bench::train::release_memory();
    let python = args
        .python
        .clone()
        .or_else(|| std::env::var("QFORGE_TORCH_PYTHON").ok())
        .unwrap_or_else(|| "python3".into());
    let theirs = run_torch(&python, &cfg_json, &cases, args.repeats)?;
    for (i, &(kind, h, w, frames)) in cases.iter().enumerate() {
        let (process_ms, tower_ms, rows) = ours[i];
        let total = process_ms + tower_ms;
        let what = if kind == "image" {
            format!("image {h}x{w}")
        } else {
            format!("video {frames} frames of {h}x{w}")
        };
        let mut line = format!(
            "{what} ({rows} patches): qforge {total:.0} ms (processor {process_ms:.1}, tower {tower_ms:.0})"
        );
        if kind == "video" {
            line += &format!(", {:.1} frames/s", frames as f64 / (total / 1e3));
        }
        match &theirs {
            Some(t) => {
                let r = &t["results"][i];
                let (p, tw) = (
                    r["process_ms"].as_f64().unwrap_or(f64::NAN),
                    r["tower_ms"].as_f64().unwrap_or(f64::NAN),
                );
                line += &format!(
                    " | transformers (torch {}) {:.0} ms (processor {p:.1}, tower {tw:.0}) | ratio {:.2}x (processor {:.2}x, tower {:.2}x)",
                    t["torch"].as_str().unwrap_or("?"),
                    p + tw,
                    (p + tw) / total,
                    p / process_ms,
                    tw / tower_ms
                );
            }
            None => {
                line += &format!(
                    " | transformers baseline skipped: `{python}` cannot import torch and transformers"
                )
            }
        }
        println!("{line}");
    }
    println!("(ratio = transformers time / qforge time: above 1, qforge is faster)");
    Ok(())
}

fn run_torch(
    python: &str,
    config: &Value,
    cases: &[(&str, usize, usize, usize)],
    repeats: usize,
) -> Result<Option<Value>> {
    let ok = Command::new(python)
        .args(["-c", "import torch, transformers, PIL"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        return Ok(None);
    }
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tools/bench/vlm_torch.py");
    let cfg = std::env::temp_dir().join(format!("qforge-bench-vlm-{}.json", std::process::id()));
    std::fs::write(&cfg, config.to_string())?;
    let cases: Vec<Value> = cases
        .iter()
        .map(|(k, h, w, f)| json!([k, h, w, f]))
        .collect();
    let out = Command::new(python)
        .arg(&script)
        .args(["--config", cfg.to_str().unwrap_or_default()])
        .args(["--cases", &Value::Array(cases).to_string()])
        .args(["--repeats", &repeats.to_string()])
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    let _ = std::fs::remove_file(&cfg);
    if !out.status.success() {
        anyhow::bail!(
            "transformers baseline failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(Some(serde_json::from_str(
        text.trim().lines().last().unwrap_or("{}"),
    )?))
}

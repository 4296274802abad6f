//! `qforge bench solopo`: one training step of SoLo-DPO (short chosen/rejected pair plus the
//! long-context chosen only) against plain long-context DPO (chosen and rejected both with the
//! long context), time and peak memory, same model and lengths, in the same run.

use std::time::Instant;

use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use qforge_model::{Batch, Model, ModelConfig};
use qforge_pref::{Penalty, SoloAlgorithm, SoloPo};
use qforge_train::losses::{self, DpoKind};
use qforge_train::optim::{AdamW, AdamWConfig};
use qforge_train::pairwise::{DpoObjective, PairLogps, PairObjective, SeqLogps};

#[derive(clap::Args, Debug, Clone)]
pub struct SolopoArgs {
    /// Short-context prompt length in tokens.
    #[arg(long, default_value_t = 256)]
    short: usize,
    /// Long-context prompt length in tokens.
    #[arg(long, default_value_t = 2048)]
    long: usize,
    /// Response length in tokens.
    #[arg(long, default_value_t = 64)]
    response: usize,
    /// Pairs per step.
    #[arg(long, default_value_t = 2)]
    pairs: usize,
    /// Timed steps per variant (after one warm-up).
    #[arg(long, default_value_t = 3)]
    steps: usize,
    /// Run one variant in this process and print its JSON (each variant runs in its own
    /// process so peak memory is its own).
    #[arg(long, hide = true)]
    only: Option<String>,
}

/// `n` sequences of `prompt + response` random ids, and their completion masks.
fn sequences(n: usize, prompt: usize, response: usize, vocab: u32, seed: u32) -> (Batch, Tensor) {
    let rows: Vec<Vec<u32>> = (0..n as u32)
        .map(|r| {
            (0..(prompt + response) as u32)
                .map(|i| 100 + (i * 7919 + r * 104_729 + seed * 31) % (vocab - 200))
                .collect()
        })
        .collect();
    let refs: Vec<&[u32]> = rows.iter().map(Vec::as_slice).collect();
    let batch = Batch::right_padded(&refs, 0, &Device::Cpu).expect("batch");
    let mask: Vec<f32> = (0..n)
        .flat_map(|_| (0..prompt + response).map(move |i| if i >= prompt { 1.0 } else { 0.0 }))
        .collect();
    let mask = Tensor::from_vec(mask, (n, prompt + response), &Device::Cpu).expect("mask");
    (batch, mask)
}

fn logps(model: &Model, batch: &Batch, mask: &Tensor) -> Result<losses::CompletionLogps> {
    let logits = model.logits(&model.forward(batch, None)?)?;
    Ok(losses::completion_logps(
        &logits,
        &batch.input_ids,
        mask,
        1.0,
    )?)
}

fn side(lp: &losses::CompletionLogps, range: std::ops::Range<usize>) -> Result<SeqLogps> {
    let n = range.len();
    Ok(SeqLogps {
        sum: lp.sum.narrow(0, range.start, n)?,
        mean: lp.mean.narrow(0, range.start, n)?,
        len: lp.mask.sum(1)?.narrow(0, range.start, n)?,
        // A fixed reference (precomputed in real runs) costs no forward here.
        reference: Some(
            lp.sum
                .narrow(0, range.start, n)?
                .detach()
                .affine(1.0, -0.5)?,
        ),
    })
}

/// Best step time (s) and peak RSS (MiB) of one variant.
fn measure(
    config: &ModelConfig,
    args: &SolopoArgs,
    step: &dyn Fn(&Model) -> Result<Tensor>,
) -> Result<(f64, Option<f64>)> {
    crate::bench::train::peak_rss_mib(true);
    let (model, vars) =
        Model::random(config.clone(), DType::F32, &Device::Cpu, 3)?.into_trainable()?;
    let mut opt = AdamW::new(vars, AdamWConfig::default())?;
    let mut best = f64::MAX;
    for i in 0..=args.steps {
        let t = Instant::now();
        let loss = step(&model)?;
        let grads = loss.backward()?;
        opt.step(&grads, 1e-5)?;
        if i > 0 {
            best = best.min(t.elapsed().as_secs_f64());
        }
    }
    Ok((best, crate::bench::train::peak_rss_mib(false)))
}

pub fn run(args: SolopoArgs) -> Result<()> {
    let (cfg, _, _) = crate::bench::train::shape("small")?;
    let mut cfg = cfg;
    cfg["max_position_embeddings"] = (args.long + args.response + 8).max(4096).into();
    let config = ModelConfig::from_json(cfg)?;
    let vocab = config.vocab_size as u32;
    let n = args.pairs;
    eprintln!(
        "[solopo] {:.1}M parameters, {n} pairs, short {} / long {} prompt tokens, {}-token responses",
        config.num_parameters() as f64 / 1e6,
        args.short,
        args.long,
        args.response
    );
    let (short_pair, short_mask) = sequences(2 * n, args.short, args.response, vocab, 1);
    let (long_pair, long_mask) = sequences(2 * n, args.long, args.response, vocab, 2);
    let (long_chosen, long_chosen_mask) = sequences(n, args.long, args.response, vocab, 2);
    let zero = Tensor::new(0f32, &Device::Cpu)?;

    let dpo = DpoObjective {
        kind: DpoKind::Sigmoid {
            label_smoothing: 0.0,
        },
        beta: 0.1,
        rpo_alpha: 0.0,
    };
    let long_dpo = |m: &Model| -> Result<Tensor> {
        let pair = logps(m, &long_pair, &long_mask)?;
        let lp = PairLogps {
            chosen: side(&pair, 0..n)?,
            rejected: side(&pair, n..2 * n)?,
            long_chosen: None,
            chosen_nll: zero.clone(),
        };
        Ok(dpo.loss(&lp)?.loss)
    };
    let solo = SoloPo {
        algorithm: SoloAlgorithm::Dpo { beta: 0.1 },
        alpha: 3.0,
        penalty: Penalty::Abs,
        anchor_short: false,
    };
    let solo_dpo = |m: &Model| -> Result<Tensor> {
        let pair = logps(m, &short_pair, &short_mask)?;
        let long = logps(m, &long_chosen, &long_chosen_mask)?;
        let lp = PairLogps {
            chosen: side(&pair, 0..n)?,
            rejected: side(&pair, n..2 * n)?,
            long_chosen: Some(side(&long, 0..n)?),
            chosen_nll: zero.clone(),
        };
        Ok(solo.loss(&lp)?.loss)
    };
    if let Some(which) = &args.only {
        let (t, m) = match which.as_str() {
            "long" => measure(&config, &args, &long_dpo)?,
            "solo" => measure(&config, &args, &solo_dpo)?,
            other => anyhow::bail!("unknown variant `{other}`"),
        };
        println!("{}", serde_json::json!({"seconds": t, "peak_mib": m}));
        return Ok(());
    }
    let child = |which: &str| -> Result<(f64, Option<f64>)> {
        let out = std::process::Command::new(std::env::current_exe()?)
            .args(["bench", "solopo", "--only", which])
            .args([
                "--short",
                &args.short.to_string(),
                "--long",
                &args.long.to_string(),
            ])
            .args([
                "--response",
                &args.response.to_string(),
                "--pairs",
                &n.to_string(),
            ])
            .args(["--steps", &args.steps.to_string()])
            .output()?;
        anyhow::ensure!(
            out.status.success(),
            "{which} variant failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value =
            serde_json::from_str(String::from_utf8_lossy(&out.stdout).trim())?;
        Ok((
            v["seconds"].as_f64().unwrap_or(f64::NAN),
            v["peak_mib"].as_f64(),
        ))
    };
    let (t_long, m_long) = child("long")?;
    let (t_solo, m_solo) = child("solo")?;
    let mib = |m: Option<f64>| m.map_or("n/a".to_string(), |m| format!("{m:.0} MiB"));
    println!(
        "solopo: Long-DPO {:.2} s/step (peak RSS {}) | SoLo-DPO {:.2} s/step (peak RSS {}) | time saved {:.0}%, ratio {:.2}x; memory saved {}",
        t_long,
        mib(m_long),
        t_solo,
        mib(m_solo),
        100.0 * (1.0 - t_solo / t_long),
        t_long / t_solo,
        match (m_long, m_solo) {
            (Some(l), Some(s)) => format!("{:.0}%", 100.0 * (1.0 - s / l)),
            _ => "n/a".into(),
        }
    );
    let rho = (args.short + args.response) as f64 / (args.long + args.response) as f64;
    println!(
        "  analytic attention cost ratio (2N² vs (2ρ²+1)N², ρ = {rho:.2}): {:.2}x",
        2.0 / (2.0 * rho * rho + 1.0)
    );
    Ok(())
}

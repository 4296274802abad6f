//! `qforge logprobs`: per-token log-probabilities of a text (perplexity scoring).

use anyhow::{Context, Result, bail};
use candle_core::IndexOp;
use qforge_model::Batch;
use serde_json::json;

use crate::common::ModelArgs;

#[derive(clap::Args, Debug)]
#[command(
    after_help = "The first token has no log-probability (nothing precedes it).\n\
    Perplexity is exp(-mean log-probability) over the scored tokens.\n\nExamples:\n  \
    qforge logprobs --text 'The capital of France is Paris.'\n  \
    qforge logprobs -m ./ckpt --ids 17,250,99,3 --json"
)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,

    /// Text to score (tokenized as is, no chat template).
    #[arg(long, conflicts_with = "ids", required_unless_present = "ids")]
    text: Option<String>,

    /// Token ids to score, comma-separated.
    #[arg(long, value_delimiter = ',')]
    ids: Option<Vec<u32>>,

    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> Result<()> {
    let ck = args.model.load()?;
    let ids = match (&args.text, &args.ids) {
        (Some(t), _) => ck.tokenizer.encode(t, true)?,
        (None, Some(ids)) => ids.clone(),
        (None, None) => bail!("give --text or --ids"),
    };
    if ids.len() < 2 {
        bail!("need at least two tokens to score, got {}", ids.len());
    }
    let vocab = ck.model.config().vocab_size;
    if let Some(bad) = ids.iter().find(|&&t| t as usize >= vocab) {
        bail!("token id {bad} is outside the vocabulary of {vocab}");
    }
    let batch = Batch::left_padded(&[&ids], &[0], 0, ck.model.device())?;
    let logprobs = ck
        .model
        .next_token_logprobs(&batch)
        .context("scoring")?
        .i(0)?
        .to_vec1::<f32>()?;
    let total: f64 = logprobs.iter().map(|&x| x as f64).sum();
    let mean = total / logprobs.len() as f64;
    let perplexity = (-mean).exp();
    let token = |id: u32| ck.tokenizer.decode(&[id], false).unwrap_or_default();
    if args.json {
        let tokens: Vec<_> = ids
            .iter()
            .enumerate()
            .map(|(i, &id)| json!({"id": id, "token": token(id), "logprob": if i == 0 { None } else { Some(logprobs[i - 1]) }}))
            .collect();
        println!(
            "{}",
            json!({"tokens": tokens, "total_logprob": total, "mean_logprob": mean, "perplexity": perplexity})
        );
    } else {
        println!("{:>5} {:>8} {:>12}  token", "pos", "id", "logprob");
        for (i, &id) in ids.iter().enumerate() {
            let lp = if i == 0 {
                "-".to_string()
            } else {
                format!("{:.4}", logprobs[i - 1])
            };
            println!("{i:>5} {id:>8} {lp:>12}  {:?}", token(id));
        }
        println!(
            "total {total:.4}  mean {mean:.4}  perplexity {perplexity:.4}  ({} scored tokens)",
            logprobs.len()
        );
    }
    Ok(())
}

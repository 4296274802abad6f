//! `qforge logprobs`: per-token log-probabilities of a text (perplexity scoring).

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use candle_core::IndexOp;
use qforge_model::vl::vl_batch;
use qforge_model::{Batch, ChatOptions};
use serde_json::json;

use crate::common::{ModelArgs, conversation_prompt, read_conversation};

#[derive(clap::Args, Debug)]
#[command(
    after_help = "The first token has no log-probability (nothing precedes it).\n\
    Perplexity is exp(-mean log-probability) over the scored tokens.\n\n\
    --messages renders a conversation with the chat template (no generation prompt: the\n\
    conversation is scored as written). For vision-language models, OpenAI image parts\n\
    ({\"type\": \"image_url\", \"image_url\": {\"url\": ...}}) may name a data URL or a path\n\
    relative to the messages file; each placeholder is expanded as transformers' processor\n\
    expands it, and every token of the rendered sequence is printed.\n\nExamples:\n  \
    qforge logprobs --text 'The capital of France is Paris.'\n  \
    qforge logprobs -m ./ckpt --ids 17,250,99,3 --json\n  \
    qforge logprobs -m ./qwen2.5-vl --messages chat.json --json"
)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,

    /// Text to score (tokenized as is, no chat template).
    #[arg(
        long,
        conflicts_with_all = ["ids", "messages"],
        required_unless_present_any = ["ids", "messages"]
    )]
    text: Option<String>,

    /// Token ids to score, comma-separated.
    #[arg(long, value_delimiter = ',', conflicts_with = "messages")]
    ids: Option<Vec<u32>>,

    /// A conversation file (JSON array of messages, or {"messages": [...], "tools": [...]}),
    /// rendered with the chat template; image parts for vision-language models.
    #[arg(long)]
    messages: Option<PathBuf>,

    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> Result<()> {
    let ck = args.model.load()?;
    let mut visual = None;
    let ids = match (&args.text, &args.ids, &args.messages) {
        (Some(t), _, _) => ck.tokenizer.encode(t, true)?,
        (None, Some(ids), _) => ids.clone(),
        (None, None, Some(path)) => {
            let (messages, tools) = read_conversation(&path.display().to_string())?;
            let options = ChatOptions {
                add_generation_prompt: false,
                tools,
                ..ChatOptions::default()
            };
            let (ids, inputs) =
                conversation_prompt(&ck.tokenizer, ck.vision.as_ref(), &messages, &options, path)?;
            visual = ck.vision.as_ref().zip(inputs);
            ids
        }
        (None, None, None) => bail!("give --text, --ids or --messages"),
    };
    if ids.len() < 2 {
        bail!("need at least two tokens to score, got {}", ids.len());
    }
    let vocab = ck.model.config().vocab_size;
    if let Some(bad) = ids.iter().find(|&&t| t as usize >= vocab) {
        bail!("token id {bad} is outside the vocabulary of {vocab}");
    }
    let batch = match &visual {
        Some((vision, inputs)) => {
            vl_batch(
                &ck.model,
                &vision.tower,
                vision.tokens,
                &[&ids],
                inputs,
                0,
                true,
            )?
            .batch
        }
        None => Batch::left_padded(&[&ids], &[0], 0, ck.model.device())?,
    };
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

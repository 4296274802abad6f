//! `qforge compress`: QwenLong-CPRS on one context; prints the kept spans and the ratio.

use std::path::PathBuf;

use anyhow::{Context, Result};
use qforge_compress::model::Compressor;
use qforge_compress::pipeline::{CompressOptions, compress};
use qforge_compress::postprocess::Repair;

#[derive(clap::Args, Debug)]
#[command(
    after_help = "The model is a QwenLong-CPRS checkpoint directory (Qwen2 backbone with \
    `cls_head`; e.g. Tongyi-Zhiwen/QwenLong-CPRS-7B downloaded). Example:\n  qforge compress \
    --model ./QwenLong-CPRS-7B --instruction \"You are an expert for information extraction...\" \
    --query \"What is the magic number?\" --context haystack.txt --batch 4"
)]
pub struct Args {
    /// Compressor checkpoint directory.
    #[arg(long)]
    model: PathBuf,
    /// The compression instruction (system prompt).
    #[arg(long)]
    instruction: String,
    #[arg(long)]
    query: String,
    /// A UTF-8 text file.
    #[arg(long)]
    context: PathBuf,
    /// Tokens per window, prefix included (released: 8192).
    #[arg(long, default_value_t = 8192)]
    window: usize,
    /// Keep spans of more than this many tokens (released server: 4).
    #[arg(long, default_value_t = 4)]
    min_keyword_len: usize,
    /// Widen spans to whole sentences.
    #[arg(long)]
    complete_sentence: bool,
    /// Token windows even for CJK text (off: whole sentences are packed, as released).
    #[arg(long)]
    no_split_with_sent: bool,
    /// Windows per forward pass.
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Also run the backward repair pass the released code never runs.
    #[arg(long)]
    fixed_repair: bool,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// One JSON object (spans with offsets and the accounting) instead of text.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> Result<()> {
    let bytes = std::fs::read(&args.context)
        .with_context(|| format!("reading {}", args.context.display()))?;
    let context = String::from_utf8(bytes).map_err(|e| {
        anyhow::anyhow!(
            "{} is not UTF-8 (byte {})",
            args.context.display(),
            e.utf8_error().valid_up_to()
        )
    })?;
    let device = qforge_model::parse_device(&args.device)?;
    let compressor = Compressor::load(&args.model, candle_core::DType::F32, &device)
        .with_context(|| format!("loading the compressor in {}", args.model.display()))?;
    let options = CompressOptions {
        window: args.window,
        min_keyword_len: args.min_keyword_len,
        complete_sentence: args.complete_sentence,
        split_with_sent: !args.no_split_with_sent,
        repair: if args.fixed_repair {
            Repair::Fixed
        } else {
            Repair::Released
        },
        batch: args.batch,
        ..CompressOptions::default()
    };
    let started = std::time::Instant::now();
    let out = compress(
        &compressor,
        &args.instruction,
        &args.query,
        &context,
        &options,
    )?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        for s in &out.spans {
            println!("{}", s.text);
        }
    }
    eprintln!(
        "{} context tokens in {} windows -> {} kept tokens in {} spans ({}); {:.0} context tokens/s",
        out.context_tokens,
        out.windows,
        out.kept_tokens,
        out.spans.len(),
        out.ratio
            .map_or("nothing kept".to_string(), |r| format!("{r:.1}x")),
        out.context_tokens as f64 / started.elapsed().as_secs_f64()
    );
    Ok(())
}

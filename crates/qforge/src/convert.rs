//! `qforge convert`: re-save a checkpoint in Hugging Face layout (dtype change, resharding).

use std::path::PathBuf;

use anyhow::{Context, Result};

use crate::common::ModelArgs;

#[derive(clap::Args, Debug)]
#[command(
    after_help = "Example:\n  qforge convert -m ./ckpt --dtype bf16 --out ./ckpt-bf16 --max-shard-mb 2000"
)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,

    /// Output directory (created; existing weight files in it are replaced).
    #[arg(long)]
    out: PathBuf,

    /// Largest safetensors shard in MB; bigger models are split with an index file.
    #[arg(long, default_value_t = 5000)]
    max_shard_mb: usize,
}

pub fn run(args: Args) -> Result<()> {
    let mut ck = args.model.load()?;
    // An adapter given with --adapter is merged into the saved weights.
    qforge_model::merge_lora(&mut ck.model)?;
    ck.model
        .save_pretrained(&args.out, args.max_shard_mb.saturating_mul(1 << 20))
        .with_context(|| format!("saving to {}", args.out.display()))?;
    qforge_model::copy_tokenizer_files(&ck.dir, &args.out)?;
    eprintln!(
        "saved {} ({} parameters, {}) to {}",
        ck.model.config().model_type(),
        ck.model.config().num_parameters(),
        args.model.dtype,
        args.out.display()
    );
    Ok(())
}

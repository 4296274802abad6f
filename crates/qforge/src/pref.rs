//! `qforge pref solopo-data`: SoLoPO training rows from QA data with supporting passages.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use qforge_engine::Engine;
use qforge_pref::solopo_data::{
    ContextOptions, SampleOptions, build_contexts, read_qa, sample_pairs,
};

use crate::common::ModelArgs;

#[derive(clap::Subcommand, Debug)]
pub enum PrefCommand {
    /// Build SoLoPO rows (prompt, prompt_long, chosen, rejected) from QA JSONL.
    SolopoData(SolopoDataArgs),
}

#[derive(clap::Args, Debug)]
#[command(
    after_help = "Input rows: {\"question\", \"answer\" | \"answers\", \"passages\": [...supporting] \
    | MuSiQue \"paragraphs\" with is_supporting, optional \"distractors\", \"chosen\", \"rejected\"}.\n\
    Rows without chosen/rejected are labelled by sampling --model on the short context and checking \
    sub-exact-match against the answer (shortest correct = chosen, first wrong = rejected).\n\n\
    Example:\n  qforge pref solopo-data --input qa.jsonl --output solopo.jsonl --distractors 16 -m ./sft-model"
)]
pub struct SolopoDataArgs {
    #[arg(long)]
    input: PathBuf,
    #[arg(long)]
    output: PathBuf,
    /// Distractor passages per long context (own distractors first, then other examples').
    #[arg(long, default_value_t = 8)]
    distractors: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Policy that samples answers for rows without chosen/rejected.
    #[command(flatten)]
    model: ModelArgs,
    /// Samples per question (paper: 32).
    #[arg(long, default_value_t = 8)]
    samples: usize,
    /// Sampling temperature (paper: 0.85).
    #[arg(long, default_value_t = 0.85)]
    temperature: f32,
    #[arg(long, default_value_t = 128)]
    max_new_tokens: usize,
}

fn solopo_data(args: SolopoDataArgs) -> Result<()> {
    let examples = read_qa(&args.input)?;
    let contexts = build_contexts(
        &examples,
        &ContextOptions {
            distractors: args.distractors,
            seed: args.seed,
        },
    );
    let unlabelled = examples
        .iter()
        .filter(|e| e.chosen.is_none() || e.rejected.is_none())
        .count();
    if unlabelled > 0 && args.model.model.is_none() {
        bail!(
            "{unlabelled} of {} rows have no chosen/rejected: give --model to sample them",
            examples.len()
        );
    }
    let engine = if unlabelled > 0 {
        Some(Engine::from_checkpoint(args.model.load()?))
    } else {
        None
    };
    let bar = crate::common::progress_bar(examples.len() as u64, "pairs");
    let (rows, stats) = sample_pairs(
        engine.as_ref(),
        &examples,
        &contexts,
        &SampleOptions {
            samples: args.samples,
            temperature: args.temperature,
            max_new_tokens: args.max_new_tokens,
            seed: args.seed,
        },
        |done, _| bar.set_position(done as u64),
    )?;
    bar.finish_and_clear();
    let tmp = args.output.with_extension("jsonl.tmp");
    let mut file = std::io::BufWriter::new(
        std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?,
    );
    for row in &rows {
        writeln!(file, "{row}")?;
    }
    file.flush()?;
    drop(file);
    std::fs::rename(&tmp, &args.output)?;
    eprintln!(
        "wrote {} rows to {} ({} given, {} sampled; dropped: {} without a correct sample, {} without a wrong one)",
        rows.len(),
        args.output.display(),
        stats.given,
        stats.pairs,
        stats.no_correct_sample,
        stats.no_wrong_sample
    );
    Ok(())
}

pub fn run(cmd: PrefCommand) -> Result<()> {
    match cmd {
        PrefCommand::SolopoData(a) => solopo_data(a),
    }
}

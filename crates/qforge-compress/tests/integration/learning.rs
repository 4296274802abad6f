//! Training works: the tiny compressor (random weights), trained for a couple of minutes on the
//! synthetic needle task, finds the needle in held-out haystacks at a compression ratio above
//! 10x; and a killed run resumes from its checkpoint with the same losses.

use std::path::{Path, PathBuf};

use qforge_compress::eval::{Summary, evaluate};
use qforge_compress::pipeline::CompressOptions;
use qforge_compress::synthetic::{Haystack, Sample, Task, generate};
use qforge_compress::train::{CprsTrainConfig, CprsTrainer};
use qforge_model::Tokenizer;
use qforge_util::SplitMix;

fn tiny() -> PathBuf {
    qforge_testkit::fixture("cprs/tiny_compressor")
}

/// The tiny tokenizer is nearly character-level: a short instruction keeps the prefix small.
const INSTRUCTION: &str = "Extract the special magic number sentence. Tag it with 'needle'.";

fn needles(n: usize, tokens: usize, seed: u64) -> Vec<Sample> {
    let tok = Tokenizer::from_dir(&tiny()).unwrap();
    let mut rng = SplitMix(seed);
    (0..n)
        .map(|_| {
            let mut s = generate(Task::NiahSingle, &Haystack::Noise, &tok, tokens, &mut rng);
            s.instruction = INSTRUCTION.into();
            s
        })
        .collect()
}

fn write_jsonl(path: &Path, samples: &[Sample]) {
    let text: String = samples
        .iter()
        .map(|s| serde_json::to_string(s).unwrap() + "\n")
        .collect();
    std::fs::write(path, text).unwrap();
}

fn config(data: PathBuf, out: PathBuf) -> CprsTrainConfig {
    CprsTrainConfig {
        model: tiny(),
        data: Some(data),
        output_dir: out,
        window: 320,
        batch_size: 8,
        lr: 3e-3,
        schedule: "cosine".into(),
        warmup_steps: 15,
        max_steps: Some(350),
        bi_loss_weight: Some([10.0, 10.0, 1.0, 10.0]),
        seed: 7,
        ..CprsTrainConfig::default()
    }
}

#[test]
fn a_tiny_compressor_learns_to_keep_the_needle_at_over_10x() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("train.jsonl");
    write_jsonl(&data, &needles(64, 600, 1));
    let mut trainer = CprsTrainer::new(config(data, dir.path().join("run"))).unwrap();
    let held = needles(12, 600, 99);
    let options = CompressOptions {
        window: 320,
        batch: 4,
        ..CompressOptions::default()
    };
    let before =
        Summary::of(&evaluate(&trainer.compressor().unwrap(), &held, &options, |_| {}).unwrap());
    let mut losses = Vec::new();
    let last = trainer
        .train(None, |r, _| losses.push(r.loss))
        .unwrap()
        .unwrap();
    let after =
        Summary::of(&evaluate(&trainer.compressor().unwrap(), &held, &options, |_| {}).unwrap());
    eprintln!(
        "before {before:?}\nafter {after:?}\nloss {:.3} -> {:.3}",
        losses[0],
        losses[losses.len() - 1]
    );
    assert!(
        before.fact_recall < 0.2,
        "the random model does not already find needles"
    );
    assert!(
        after.fact_recall >= 0.75,
        "needle recall {}",
        after.fact_recall
    );
    assert!(after.ratio.unwrap() > 10.0, "ratio {:?}", after.ratio);
    // The checkpoint is a compressor the pipeline loads, and it behaves as the trained weights.
    let loaded = qforge_compress::model::Compressor::load(
        &last,
        candle_core::DType::F32,
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let reloaded = Summary::of(&evaluate(&loaded, &held, &options, |_| {}).unwrap());
    assert_eq!(reloaded.fact_recall, after.fact_recall);
    assert_eq!(reloaded.kept_tokens, after.kept_tokens);
}

#[test]
fn a_killed_run_resumes_with_the_same_losses() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("train.jsonl");
    write_jsonl(&data, &needles(4, 300, 5));
    let small = |out: &str| CprsTrainConfig {
        window: 192,
        batch_size: 2,
        max_steps: Some(4),
        save_steps: 2,
        ..config(data.clone(), dir.path().join(out))
    };
    let mut whole = Vec::new();
    CprsTrainer::new(small("whole"))
        .unwrap()
        .train(None, |r, _| whole.push(r.loss))
        .unwrap();
    let mut killed = CprsTrainer::new(small("killed")).unwrap();
    killed.train(Some(3), |_, _| {}).unwrap();
    drop(killed);
    let mut resumed = CprsTrainer::new(small("killed")).unwrap();
    assert_eq!(resumed.step(), 2, "resumes from checkpoint-2");
    let mut tail = Vec::new();
    resumed.train(None, |r, _| tail.push(r.loss)).unwrap();
    assert_eq!(tail.len(), 2);
    for (a, b) in tail.iter().zip(&whole[2..]) {
        assert!((a - b).abs() < 1e-5, "{tail:?} vs {:?}", &whole[2..]);
    }
}

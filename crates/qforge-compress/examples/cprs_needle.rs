//! Trains the tiny compressor on a synthetic task and prints the learning curve: span recall of
//! the gold facts, answer recall and compression ratio on 16 held-out haystacks. The settings are
//! examples/recipes/cprs_needle.toml's (with the task and haystack chosen here).
//!
//!     cargo run --release -p qforge-compress --example cprs_needle -- [STEPS] [SEED] [TASK] [HAYSTACK] [BIDIRECTIONAL_START]
//!
//! TASK is a synthetic task name (default niah_single); HAYSTACK is `noise` (default) or a
//! directory of essays such as ../shared/data/longctx/PaulGrahamEssays. BIDIRECTIONAL_START 4
//! makes every layer causal (default: the checkpoint's 2).

use qforge_compress::eval::{Summary, evaluate};
use qforge_compress::pipeline::CompressOptions;
use qforge_compress::synthetic::{Haystack, Task, generate};
use qforge_compress::train::{CprsTrainConfig, CprsTrainer, SyntheticData};
use qforge_util::SplitMix;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let steps: u64 = args.first().map_or(Ok(400), |s| s.parse())?;
    let seed: u64 = args.get(1).map_or(Ok(1), |s| s.parse())?;
    let task = args.get(2).cloned().unwrap_or_else(|| "niah_single".into());
    let hay = args.get(3).cloned().unwrap_or_else(|| "noise".into());
    // The tiny compressor has 4 layers; 4 makes it all causal (the paper's ablation baseline).
    let bidirectional_start: Option<usize> = args.get(4).map(|s| s.parse()).transpose()?;
    let model = qforge_testkit::fixture("cprs/tiny_compressor");
    let out = std::env::temp_dir().join(format!("cprs_needle_{seed}_{}", std::process::id()));
    let window = 512;
    let tokens = 1500;
    let config = CprsTrainConfig {
        model: model.clone(),
        synthetic: Some(SyntheticData {
            tasks: vec![task.clone()],
            samples: 96,
            tokens,
            haystack: hay.clone(),
        }),
        output_dir: out.clone(),
        window,
        batch_size: 8,
        lr: 2e-3,
        bi_loss_weight: Some([10.0, 10.0, 1.0, 10.0]),
        schedule: "cosine".into(),
        warmup_steps: steps / 10,
        max_steps: Some(steps),
        bidirectional_start,
        seed,
        ..CprsTrainConfig::default()
    };
    let mut trainer = CprsTrainer::new(config)?;
    println!("{} training windows", trainer.windows());
    let tok = qforge_model::Tokenizer::from_dir(&model)?;
    let held_hay = Haystack::named(&hay)?;
    let mut rng = SplitMix(seed.wrapping_add(1_000_003));
    let held: Vec<_> = (0..16)
        .map(|_| {
            generate(
                Task::parse(&task).expect("task"),
                &held_hay,
                &tok,
                tokens,
                &mut rng,
            )
        })
        .collect();
    let options = CompressOptions {
        window,
        batch: 4,
        ..CompressOptions::default()
    };
    let every = (steps / 10).max(1);
    println!("step  loss (bio part)        fact_recall  answer_recall  ratio");
    trainer.train(None, |r, t| {
        if r.step % every == 0 || r.step == r.total_steps {
            let c = t.compressor().expect("compressor");
            let s = Summary::of(&evaluate(&c, &held, &options, |_| {}).expect("eval"));
            println!(
                "{:>4}  {:.4} (bio {:.4})  {:.3}        {:.3}          {}",
                r.step,
                r.loss,
                r.bio_loss,
                s.fact_recall,
                s.answer_recall,
                s.ratio.map_or("-".into(), |x| format!("{x:.1}x"))
            );
        }
    })?;
    let c = trainer.compressor()?;
    for sample in held.iter().take(3) {
        let (_, kept) = qforge_compress::eval::score_sample(&c, sample, &options)?;
        println!("gold {:?}\nkept {kept:?}", sample.fact_texts());
    }
    std::fs::remove_dir_all(&out).ok();
    Ok(())
}

//! The synthetic tasks hold what training and evaluation read from them: every fact is a range
//! of the context that carries the answers, contexts come out near the asked length, and the
//! same seed gives the same samples.

use qforge_compress::synthetic::{Haystack, Task, generate};
use qforge_compress::windows::encode;
use qforge_model::Tokenizer;
use qforge_util::SplitMix;

fn tokenizer() -> Tokenizer {
    Tokenizer::from_dir(&qforge_testkit::fixture("cprs/tiny_compressor")).unwrap()
}

#[test]
fn facts_are_context_ranges_that_carry_the_answers() {
    let tok = tokenizer();
    let essays = Haystack::Essays(vec![
        "Startups grow fast.".into(),
        "Taste can be learned?".into(),
        "Most good ideas look bad at first!".into(),
    ]);
    for haystack in [Haystack::Noise, essays] {
        for task in Task::ALL {
            let mut rng = SplitMix(11);
            for _ in 0..4 {
                let s = generate(task, &haystack, &tok, 600, &mut rng);
                assert_eq!(s.task, task.name());
                assert!(!s.facts.is_empty() && !s.answers.is_empty());
                let chars = s.context.chars().count();
                assert!(s.facts.iter().all(|&[a, b]| a < b && b <= chars));
                let facts = s.fact_texts().join(" ");
                for answer in &s.answers {
                    assert!(
                        facts.contains(answer.as_str()),
                        "{task:?}: {answer} not in {facts}"
                    );
                }
                let n = encode(&tok, &s.context).0.len();
                assert!((450..900).contains(&n), "{task:?}: {n} tokens for 600");
            }
        }
    }
}

#[test]
fn the_same_seed_gives_the_same_samples() {
    let tok = tokenizer();
    let a = generate(Task::Vt, &Haystack::Noise, &tok, 300, &mut SplitMix(3));
    let b = generate(Task::Vt, &Haystack::Noise, &tok, 300, &mut SplitMix(3));
    assert_eq!(a, b);
    assert_eq!(
        a.facts.len(),
        5,
        "one chain of five assignments is asked for"
    );
}

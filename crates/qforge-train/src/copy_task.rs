//! Small synthetic tasks for tests, demos and the quickstart: copying a digit string.
//! SFT examples map `copy: 4 7 1` to `4 7 1`; preference pairs prefer the exact copy over the
//! reversed one (or, for odd lengths where reversing can coincide, a shifted one).

use serde_json::{Value, json};

use qforge_util::SplitMix;

fn digits(rng: &mut SplitMix, min: usize, max: usize) -> Vec<u32> {
    let n = min + rng.below(max - min + 1);
    (0..n).map(|_| rng.below(10) as u32).collect()
}

fn join(d: &[u32]) -> String {
    d.iter().map(u32::to_string).collect::<Vec<_>>().join(" ")
}

/// `{"prompt": "copy: ...\n", "completion": "..."}` lines.
pub fn copy_sft(n: usize, seed: u64) -> Vec<Value> {
    let mut rng = SplitMix(seed);
    (0..n)
        .map(|_| {
            let d = digits(&mut rng, 3, 6);
            json!({"prompt": format!("copy: {}\n", join(&d)), "completion": join(&d)})
        })
        .collect()
}

/// `{"prompt", "chosen", "rejected"}` lines whose rejected answer has one digit replaced by `x`:
/// a preference a tiny model can learn in tens of steps, so tests exercise the optimisation
/// itself (the relational near misses of [`near_miss_preferences`] need a trained copier).
pub fn copy_preferences(n: usize, seed: u64) -> Vec<Value> {
    let mut rng = SplitMix(seed);
    (0..n)
        .map(|_| {
            let d = digits(&mut rng, 3, 6);
            let mut wrong: Vec<String> = d.iter().map(u32::to_string).collect();
            let at = rng.below(wrong.len());
            wrong[at] = "x".into();
            json!({"prompt": format!("copy: {}\n", join(&d)), "chosen": join(&d), "rejected": wrong.join(" ")})
        })
        .collect()
}

/// The prompt of a copy example and the expected answer, for exact-match evaluation.
pub fn copy_eval(n: usize, seed: u64) -> Vec<(String, String)> {
    copy_sft(n, seed)
        .into_iter()
        .map(|v| {
            (
                v["prompt"].as_str().unwrap_or_default().to_string(),
                v["completion"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

/// Preference pairs against near misses, the mistakes a half-trained copier makes: the exact
/// copy is preferred over one with a digit changed, dropped or repeated.
pub fn near_miss_preferences(n: usize, seed: u64) -> Vec<Value> {
    let mut rng = SplitMix(seed);
    (0..n)
        .map(|_| {
            let d = digits(&mut rng, 3, 6);
            let mut wrong = d.clone();
            let at = rng.below(d.len());
            match rng.below(3) {
                0 => wrong[at] = (wrong[at] + 1 + rng.below(9) as u32) % 10,
                1 => {
                    wrong.remove(at);
                }
                _ => wrong.insert(at, d[at]),
            }
            json!({"prompt": format!("copy: {}\n", join(&d)), "chosen": join(&d), "rejected": join(&wrong)})
        })
        .collect()
}

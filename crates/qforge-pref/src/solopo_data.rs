//! SoLoPO training data from QA examples with supporting passages (SoLoPO, arXiv 2505.11166): the
//! short context holds the supporting passages, the long context the same passages at random
//! positions among distractors; chosen/rejected answers are given, or sampled from a policy on
//! the short context and labelled by sub-exact-match against the gold answer.

use qforge_util::WithPath;
use std::path::Path;

use qforge_engine::{Engine, SamplingParams};
use qforge_model::ChatOptions;
use qforge_util::SplitMix;
use serde::Serialize;
use serde_json::{Value, json};

use crate::error::{PrefError, Result};

/// One QA example.
#[derive(Debug, Clone, PartialEq)]
pub struct QaExample {
    pub question: String,
    pub answers: Vec<String>,
    pub supporting: Vec<String>,
    pub distractors: Vec<String>,
    pub chosen: Option<String>,
    pub rejected: Option<String>,
}

fn data_err(path: &Path, line: usize, message: impl Into<String>) -> PrefError {
    qforge_util::RowError::new(path, line, message).into()
}

/// Reads QA JSONL: `question`; `answer` (string) or `answers` (list); supporting passages as
/// `passages` (list of strings) or MuSiQue's `paragraphs` (`paragraph_text`, `is_supporting`,
/// the others becoming distractors); optional `distractors`, `chosen`, `rejected`.
pub fn read_qa(path: &Path) -> Result<Vec<QaExample>> {
    let text = std::fs::read_to_string(path).with_path(path)?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        let v: Value = serde_json::from_str(line)
            .map_err(|e| data_err(path, n, format!("invalid JSON: {e}")))?;
        let string = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
        let strings = |k: &str| -> Vec<String> {
            v.get(k)
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(Value::as_str)
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default()
        };
        let question = string("question").ok_or_else(|| data_err(path, n, "no `question`"))?;
        let answers = match string("answer") {
            Some(a) => vec![a],
            None => strings("answers"),
        };
        if answers.iter().all(|a| a.trim().is_empty()) {
            return Err(data_err(path, n, "no `answer` (or `answers`)"));
        }
        let (mut supporting, mut distractors) = (strings("passages"), strings("distractors"));
        if let Some(paragraphs) = v.get("paragraphs").and_then(Value::as_array) {
            for p in paragraphs {
                let text = p["paragraph_text"].as_str().unwrap_or_default().to_string();
                if p["is_supporting"].as_bool() == Some(true) {
                    supporting.push(text);
                } else {
                    distractors.push(text);
                }
            }
        }
        if supporting.is_empty() {
            return Err(data_err(
                path,
                n,
                "no supporting passages (`passages`, or `paragraphs` with `is_supporting`)",
            ));
        }
        let (chosen, rejected) = (string("chosen"), string("rejected"));
        if let (Some(c), Some(r)) = (&chosen, &rejected) {
            if c.trim().is_empty() || r.trim().is_empty() {
                return Err(data_err(path, n, "empty `chosen` or `rejected`"));
            }
            if c == r {
                return Err(data_err(path, n, "`chosen` and `rejected` are identical"));
            }
        }
        out.push(QaExample {
            question,
            answers,
            supporting,
            distractors,
            chosen,
            rejected,
        });
    }
    if out.is_empty() {
        return Err(data_err(path, 0, "no examples"));
    }
    Ok(out)
}

/// How contexts are assembled.
#[derive(Debug, Clone)]
pub struct ContextOptions {
    /// Distractor passages in each long context: the example's own first, then passages of
    /// other examples.
    pub distractors: usize,
    pub seed: u64,
}

/// Short and long prompts of one example.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Contexts {
    pub short: String,
    pub long: String,
}

fn prompt(passages: &[&str], question: &str) -> String {
    let docs: Vec<String> = passages
        .iter()
        .enumerate()
        .map(|(i, p)| format!("Passage {}: {p}", i + 1))
        .collect();
    format!(
        "{}\n\nAnswer the question using the passages above.\nQuestion: {question}",
        docs.join("\n\n")
    )
}

/// Builds every example's contexts; supporting passages keep their order in both.
pub fn build_contexts(examples: &[QaExample], options: &ContextOptions) -> Vec<Contexts> {
    let mut rng = SplitMix(options.seed);
    examples
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let mut pool: Vec<&str> = e.distractors.iter().map(String::as_str).collect();
            let mut others: Vec<&str> = examples
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .flat_map(|(_, o)| o.supporting.iter().chain(&o.distractors))
                .map(String::as_str)
                .collect();
            rng.shuffle(&mut others);
            pool.extend(others);
            pool.truncate(options.distractors);
            // Insert the supporting passages at random positions, in order.
            let mut long: Vec<&str> = pool;
            let mut at = 0;
            for s in &e.supporting {
                let slots = long.len() + 1 - at;
                at += rng.below(slots);
                long.insert(at, s);
                at += 1;
            }
            let short: Vec<&str> = e.supporting.iter().map(String::as_str).collect();
            Contexts {
                short: prompt(&short, &e.question),
                long: prompt(&long, &e.question),
            }
        })
        .collect()
}

/// Sub-exact-match against any gold answer (QwenLong-L1's rule: either normalised string
/// contains the other); a response that normalises to nothing never matches.
pub fn sub_em(response: &str, answers: &[String]) -> bool {
    !qforge_train::answers::normalize_answer(response).is_empty()
        && answers
            .iter()
            .any(|a| qforge_train::answers::sub_exact_match(response, a))
}

/// One training row in the preference format `qforge train solopo` reads.
pub fn training_row(c: &Contexts, chosen: &str, rejected: &str, answers: &[String]) -> Value {
    let user = |t: &str| json!([{"role": "user", "content": t}]);
    let assistant = |t: &str| json!([{"role": "assistant", "content": t}]);
    json!({
        "prompt": user(&c.short),
        "prompt_long": user(&c.long),
        "chosen": assistant(chosen),
        "rejected": assistant(rejected),
        "answers": answers,
    })
}

/// Sampling settings of [`sample_pairs`] (paper: 32 samples at temperature 0.85).
#[derive(Debug, Clone)]
pub struct SampleOptions {
    pub samples: usize,
    pub temperature: f32,
    pub max_new_tokens: usize,
    pub seed: u64,
}

/// Counts of what [`sample_pairs`] did.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct SampleStats {
    pub pairs: usize,
    pub given: usize,
    pub no_correct_sample: usize,
    pub no_wrong_sample: usize,
}

/// Chosen/rejected for every example: given ones are kept; otherwise `samples` responses are
/// drawn from `engine` (required then) on the short context, the shortest correct (sub-EM) becomes chosen and
/// the first wrong one rejected. Examples without both are dropped (counted).
pub fn sample_pairs(
    engine: Option<&Engine>,
    examples: &[QaExample],
    contexts: &[Contexts],
    options: &SampleOptions,
    mut on_progress: impl FnMut(usize, usize),
) -> Result<(Vec<Value>, SampleStats)> {
    let mut stats = SampleStats::default();
    let mut rows = Vec::new();
    for (i, (e, c)) in examples.iter().zip(contexts).enumerate() {
        on_progress(i, examples.len());
        if let (Some(ch), Some(rj)) = (&e.chosen, &e.rejected) {
            rows.push(training_row(c, ch, rj, &e.answers));
            stats.given += 1;
            continue;
        }
        let engine = engine.ok_or_else(|| {
            PrefError::Invalid(format!(
                "example {} has no chosen/rejected and no policy was given to sample them",
                i + 1
            ))
        })?;
        let tok = engine.tokenizer();
        let messages = [json!({"role": "user", "content": c.short})];
        let text = tok.apply_chat_template(&messages, &ChatOptions::generation())?;
        let ids = tok.encode(&text, false)?;
        let requests = (0..options.samples.max(2))
            .map(|k| {
                let mut r = engine.request(ids.clone(), options.max_new_tokens);
                r.sampling = SamplingParams {
                    temperature: options.temperature,
                    seed: Some(options.seed ^ ((i as u64) << 20) ^ k as u64),
                    ..SamplingParams::default()
                };
                r
            })
            .collect();
        let outs = engine.generate(requests, |_| {})?;
        let texts: Vec<String> = outs
            .into_iter()
            .map(|o| o.text.trim().to_string())
            .collect();
        let correct = texts
            .iter()
            .filter(|t| !t.is_empty() && sub_em(t, &e.answers))
            .min_by_key(|t| t.len());
        let wrong = texts
            .iter()
            .find(|t| !t.is_empty() && !sub_em(t, &e.answers));
        match (correct, wrong) {
            (Some(ch), Some(rj)) => {
                rows.push(training_row(c, ch, rj, &e.answers));
                stats.pairs += 1;
            }
            (None, _) => stats.no_correct_sample += 1,
            (_, None) => stats.no_wrong_sample += 1,
        }
    }
    on_progress(examples.len(), examples.len());
    Ok((rows, stats))
}

/// A synthetic SoLoPO task tiny models can learn (SoLoPO, arXiv 2505.11166): a key-value fact `c=456`
/// among `short_filler` one-letter filler words (`prompt`) or among `long_filler` (`prompt_long`),
/// then the question `? c=`; chosen = the value, rejected = a near miss (one digit changed).
/// Raw-text rows (no chat template).
pub fn kv_needle_pairs(n: usize, short_filler: usize, long_filler: usize, seed: u64) -> Vec<Value> {
    let mut rng = SplitMix(seed);
    let letter = |rng: &mut SplitMix| char::from(b'a' + rng.below(26) as u8).to_string();
    (0..n)
        .map(|_| {
            let key = letter(&mut rng);
            let value: Vec<u8> = (0..3).map(|_| b'0' + rng.below(10) as u8).collect();
            let mut wrong = value.clone();
            let i = rng.below(3);
            wrong[i] = b'0' + (wrong[i] - b'0' + 1 + rng.below(9) as u8) % 10;
            let (value, wrong) = (
                String::from_utf8(value).expect("digits"),
                String::from_utf8(wrong).expect("digits"),
            );
            let mut haystack = |size: usize| {
                let mut words: Vec<String> = (0..size).map(|_| letter(&mut rng)).collect();
                let at = rng.below(words.len() + 1);
                words.insert(at, format!("{key}={value}"));
                format!("{} ? {key}=", words.join(" "))
            };
            let (short, long) = (haystack(short_filler), haystack(long_filler));
            json!({"prompt": short, "prompt_long": long, "chosen": value, "rejected": wrong})
        })
        .collect()
}

/// Fraction of `rows` whose greedy continuation of the raw `field` prompt (`prompt` or
/// `prompt_long`) starts with the row's chosen answer.
pub fn chosen_exact_match(engine: &Engine, rows: &[Value], field: &str) -> Result<f64> {
    let tok = engine.tokenizer();
    let (mut requests, mut chosen) = (Vec::with_capacity(rows.len()), Vec::new());
    for r in rows {
        let text = |key: &str| {
            r[key]
                .as_str()
                .ok_or_else(|| PrefError::Invalid(format!("a row has no `{key}`")))
        };
        let (prompt, answer) = (text(field)?, text("chosen")?);
        requests.push(engine.request(
            tok.encode(prompt, false)?,
            tok.encode(answer, false)?.len() + 1,
        ));
        chosen.push(answer);
    }
    let outs = engine.generate(requests, |_| {})?;
    let hits = outs
        .iter()
        .zip(&chosen)
        .filter(|(o, c)| o.text.trim().starts_with(*c))
        .count();
    Ok(hits as f64 / rows.len().max(1) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example(i: usize) -> QaExample {
        QaExample {
            question: format!("What is the value of key {i}?"),
            answers: vec![format!("{}", 1000 + i)],
            supporting: vec![format!("The value of key {i} is {}.", 1000 + i)],
            distractors: vec![format!("Key {} is unrelated.", 50 + i)],
            chosen: None,
            rejected: None,
        }
    }

    #[test]
    fn long_contexts_hold_the_short_passages_among_distractors() {
        let examples: Vec<QaExample> = (0..5).map(example).collect();
        let ctx = build_contexts(
            &examples,
            &ContextOptions {
                distractors: 4,
                seed: 1,
            },
        );
        for (e, c) in examples.iter().zip(&ctx) {
            assert!(c.short.contains(&e.supporting[0]) && c.long.contains(&e.supporting[0]));
            assert!(c.long.contains(&e.distractors[0]), "own distractor first");
            assert!(c.long.len() > 2 * c.short.len() / 2 && c.long.len() > c.short.len());
            assert_eq!(c.long.matches("Passage ").count(), 5);
            assert!(c.short.ends_with(&e.question) && c.long.ends_with(&e.question));
        }
        // Seeded: the same contexts again.
        let again = build_contexts(
            &examples,
            &ContextOptions {
                distractors: 4,
                seed: 1,
            },
        );
        assert_eq!(ctx, again);
    }

    #[test]
    fn labelling_uses_sub_exact_match_over_every_gold_answer() {
        let gold = vec!["The Eiffel Tower".to_string(), "Tour Eiffel".to_string()];
        assert!(sub_em("It is the eiffel tower, in Paris.", &gold));
        assert!(sub_em("la tour eiffel", &gold));
        assert!(!sub_em("It is the Louvre.", &gold));
        // Empty after normalisation: "" is contained in every gold string, but is no answer.
        assert!(!sub_em("The.", &gold));
    }

    #[test]
    fn bad_rows_name_their_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("qa.jsonl");
        std::fs::write(
            &p,
            "{\"question\": \"q\", \"answer\": \"a\", \"passages\": [\"p\"]}\n\
             {\"question\": \"q\", \"answer\": \"a\", \"passages\": [\"p\"], \"chosen\": \"x\", \"rejected\": \"x\"}\n",
        )
        .unwrap();
        let err = read_qa(&p).unwrap_err().to_string();
        assert!(
            err.contains("qa.jsonl:2") && err.contains("identical"),
            "{err}"
        );
        std::fs::write(&p, "{\"question\": \"q\", \"answer\": \"a\"}\n").unwrap();
        assert!(read_qa(&p).unwrap_err().to_string().contains("supporting"));
        std::fs::write(
            &p,
            "{\"question\": \"q\", \"answer\": \"a\", \"passages\": [\"p\"], \"chosen\": \"\", \"rejected\": \"x\"}\n",
        )
        .unwrap();
        assert!(read_qa(&p).unwrap_err().to_string().contains("empty"));
    }
}

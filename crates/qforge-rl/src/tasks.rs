//! Long-context tasks: the DocQA prompt format of QwenLong-L1, a synthetic key-value retrieval
//! generator (a needle among growing haystacks, and a multi-hop variant that chains keys), a
//! compact needle-in-a-haystack task that tiny models learn in minutes, and
//! loaders for L-Eval and lost-in-the-middle files (`../shared/data/longctx/`).

use std::io::Read;
use std::path::Path;

use qforge_util::{SplitMix, WithPath};
use serde_json::{Value, json};

use crate::reward::Task;

/// QwenLong-L1's zero-shot DocQA template (`eval/*.py`).
pub fn docqa_prompt(document: &str, question: &str) -> String {
    format!(
        "Please read the following text and answer the question below.\n\n<text>\n{document}\n</text>\n\n{question}\n\nFormat your response as follows: \"Therefore, the answer is (insert answer here)\"."
    )
}

fn task(document: &str, question: &str, answers: Vec<String>) -> Task {
    Task {
        messages: vec![json!({"role": "user", "content": docqa_prompt(document, question)})],
        answers,
    }
}

fn word(rng: &mut SplitMix, len: usize) -> String {
    (0..len)
        .map(|_| char::from(b'a' + rng.below(26) as u8))
        .collect()
}

/// `n` retrieval tasks, each with `pairs` key-value facts (the haystack). With `hops` > 1 the
/// question follows a chain of that many keys (`k1 → k2 → … → value`), the chain's facts
/// scattered among the others.
pub fn kv_retrieval(n: usize, pairs: usize, hops: usize, seed: u64) -> Vec<Task> {
    let mut rng = SplitMix(seed);
    let hops = hops.max(1);
    (0..n)
        .map(|_| {
            let keys: Vec<String> = (0..pairs.max(hops)).map(|_| word(&mut rng, 6)).collect();
            let values: Vec<String> = (0..pairs.max(hops)).map(|_| word(&mut rng, 6)).collect();
            // The chain: keys[0] → keys[1] → … → values[hops−1].
            let mut facts: Vec<String> = (0..keys.len())
                .map(|i| {
                    let target = if i + 1 < hops { &keys[i + 1] } else { &values[i] };
                    format!("The value of key {} is {}.", keys[i], target)
                })
                .collect();
            rng.shuffle(&mut facts);
            let question = if hops == 1 {
                format!("What is the value of key {}?", keys[0])
            } else {
                format!(
                    "Start from key {} and follow the values as keys {} times. What value do you reach?",
                    keys[0],
                    hops - 1
                )
            };
            task(&facts.join("\n"), &question, vec![values[hops - 1].clone()])
        })
        .collect()
}

/// A needle in a haystack for tiny models: `filler` random one-letter words with one 3-digit
/// number among them at a uniformly drawn position, then `?`; the answer is the number.
pub fn needle_compact(n: usize, filler: usize, seed: u64) -> Vec<Task> {
    let mut rng = SplitMix(seed);
    (0..n)
        .map(|_| {
            let mut words: Vec<String> = (0..filler)
                .map(|_| char::from(b'a' + rng.below(26) as u8).to_string())
                .collect();
            let needle: String = (0..3)
                .map(|_| char::from(b'0' + rng.below(10) as u8))
                .collect();
            let at = rng.below(words.len() + 1);
            words.insert(at, needle.clone());
            Task {
                messages: vec![
                    json!({"role": "user", "content": format!("{} ?", words.join(" "))}),
                ],
                answers: vec![needle],
            }
        })
        .collect()
}

/// Mean `reward` of the checkpoint in `dir` answering `tasks` greedily (chat template, at most
/// `max_new_tokens`, stopping at its end-of-turn tokens): held-out accuracy for examples and
/// tests.
pub fn greedy_score(
    dir: &Path,
    tasks: &[Task],
    reward: &dyn crate::reward::RewardFn,
    max_new_tokens: usize,
) -> crate::Result<f64> {
    use qforge_model::{ChatOptions, Checkpoint};
    let ck = Checkpoint::load_dir(dir, candle_core::DType::F32, &candle_core::Device::Cpu)?;
    let engine = qforge_engine::Engine::from_checkpoint(ck);
    let tok = engine.tokenizer().clone();
    let requests = tasks
        .iter()
        .map(|t| {
            let text = tok.apply_chat_template(&t.messages, &ChatOptions::generation())?;
            Ok(engine.request(tok.encode(&text, false)?, max_new_tokens))
        })
        .collect::<crate::Result<Vec<_>>>()?;
    let outs = engine
        .generate(requests, |_| {})
        .map_err(|source| crate::RlError::Engine {
            context: "generation",
            source,
        })?;
    let items: Vec<(&Task, &str)> = tasks
        .iter()
        .zip(&outs)
        .map(|(t, o)| (t, o.text.as_str()))
        .collect();
    Ok(reward.score_batch(&items).iter().sum::<f64>() / tasks.len().max(1) as f64)
}

pub(crate) fn read_text(path: &Path) -> crate::Result<String> {
    let bytes = std::fs::read(path).with_path(path)?;
    if bytes.starts_with(&[0x1f, 0x8b]) {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut gunzip(path, &bytes)?, &mut s)
            .map_err(|e| crate::RlError::file(path, e))?;
        return Ok(s);
    }
    String::from_utf8(bytes).map_err(|_| crate::RlError::file(path, "not UTF-8"))
}

fn gunzip(path: &Path, bytes: &[u8]) -> crate::Result<std::io::Cursor<Vec<u8>>> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(bytes)
        .read_to_end(&mut out)
        .map_err(|e| crate::RlError::file(path, format!("gzip: {e}")))?;
    Ok(std::io::Cursor::new(out))
}

/// The JSON rows of a JSONL file (gzip allowed) with their 1-based line numbers; a line that
/// is not JSON is an error naming the file and line.
pub(crate) fn json_rows(path: &Path) -> crate::Result<Vec<(usize, Value)>> {
    let text = read_text(path)?;
    let mut rows = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let v = serde_json::from_str(line).map_err(|e| {
            crate::RlError::from(qforge_util::RowError::new(path, i + 1, e.to_string()))
        })?;
        rows.push((i + 1, v));
    }
    Ok(rows)
}

/// A lost-in-the-middle key-value record as its paper's prompt writes it.
pub(crate) fn kv_record_line(record: &Value) -> String {
    format!(
        "Key: \"{}\" Value: \"{}\"",
        record[0].as_str().unwrap_or(""),
        record[1].as_str().unwrap_or("")
    )
}

/// Tasks of a JSONL file (gzip allowed): rows of `prompt`/`messages` with `answer(s)`; L-Eval
/// (one document per line with `instructions` and `outputs`); or lost-in-the-middle: KV
/// retrieval (`ordered_kv_records`, `key`, `value`) or QA (`question`, `answers`, `ctxs`).
pub fn load_tasks(path: &Path) -> crate::Result<Vec<Task>> {
    let mut out = Vec::new();
    for (line, v) in json_rows(path)? {
        let bad = |m: &str| crate::RlError::from(qforge_util::RowError::new(path, line, m));
        if let Some(records) = v.get("ordered_kv_records").and_then(Value::as_array) {
            let doc: Vec<String> = records.iter().map(kv_record_line).collect();
            let key = v["key"].as_str().ok_or_else(|| bad("no `key`"))?;
            let value = v["value"].as_str().ok_or_else(|| bad("no `value`"))?;
            out.push(task(
                &doc.join("\n"),
                &format!("What is the value of key \"{key}\"?"),
                vec![value.into()],
            ));
            continue;
        }
        if let (Some(q), Some(ctxs)) = (
            v.get("question").and_then(Value::as_str),
            v.get("ctxs").and_then(Value::as_array),
        ) {
            // lost-in-the-middle QA: passages as "Document [i](Title: …) text".
            let doc: Vec<String> = ctxs
                .iter()
                .enumerate()
                .map(|(j, c)| {
                    format!(
                        "Document [{}](Title: {}) {}",
                        j + 1,
                        c["title"].as_str().unwrap_or(""),
                        c["text"].as_str().unwrap_or("")
                    )
                })
                .collect();
            let answers: Vec<String> = v["answers"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(Value::as_str)
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default();
            out.push(task(&doc.join("\n"), q, answers));
            continue;
        }
        if let Some(answers) = v
            .get("answers")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_string)
                    .collect::<Vec<_>>()
            })
            .or_else(|| {
                v.get("answer")
                    .and_then(Value::as_str)
                    .map(|a| vec![a.to_string()])
            })
            && v.get("ctxs").is_none()
        {
            // Generic task rows: `prompt` (text or messages) or `messages`, with the answers.
            let messages = match (v.get("prompt"), v.get("messages")) {
                (Some(Value::String(p)), _) => vec![json!({"role": "user", "content": p})],
                (Some(Value::Array(m)), _) | (None, Some(Value::Array(m))) => m.clone(),
                _ => return Err(bad("expected `prompt` or `messages` with `answer(s)`")),
            };
            out.push(Task { messages, answers });
            continue;
        }
        let (Some(doc), Some(qs), Some(answers)) = (
            v.get("input").and_then(Value::as_str),
            v.get("instructions").and_then(Value::as_array),
            v.get("outputs").and_then(Value::as_array),
        ) else {
            return Err(bad(
                "expected L-Eval (`input`, `instructions`, `outputs`) or lost-in-the-middle KV fields",
            ));
        };
        if qs.len() != answers.len() {
            return Err(bad("`instructions` and `outputs` differ in length"));
        }
        for (q, a) in qs.iter().zip(answers) {
            out.push(task(
                doc,
                q.as_str().unwrap_or(""),
                vec![a.as_str().unwrap_or("").to_string()],
            ));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_needle_task_holds_its_number_once_among_the_filler() {
        for t in needle_compact(50, 12, 3) {
            let text = t.messages[0]["content"].as_str().unwrap();
            let words: Vec<&str> = text.strip_suffix(" ?").unwrap().split(' ').collect();
            assert_eq!(words.len(), 13);
            let numbers: Vec<&&str> = words.iter().filter(|w| w.len() == 3).collect();
            assert_eq!(numbers, [&t.answers[0].as_str()]);
        }
    }

    #[test]
    fn single_and_multi_hop_tasks_are_answerable_from_their_text() {
        for hops in [1, 3] {
            for t in kv_retrieval(5, 12, hops, 4) {
                let prompt = t.messages[0]["content"].as_str().unwrap();
                assert!(prompt.starts_with("Please read the following text"));
                assert!(prompt.ends_with("\"Therefore, the answer is (insert answer here)\"."));
                assert_eq!(prompt.matches("The value of key").count(), 12);
                // Follow the chain by hand.
                let start = prompt
                    .split("key ")
                    .last()
                    .unwrap()
                    .split([' ', '?'])
                    .next()
                    .unwrap()
                    .to_string();
                let lookup = |k: &str| {
                    let needle = format!("The value of key {k} is ");
                    let at = prompt.find(&needle).unwrap() + needle.len();
                    prompt[at..].split('.').next().unwrap().to_string()
                };
                let mut cur = start;
                for _ in 0..hops {
                    cur = lookup(&cur);
                }
                assert_eq!(cur, t.answers[0], "hops {hops}");
            }
        }
        assert_eq!(kv_retrieval(3, 8, 1, 9), kv_retrieval(3, 8, 1, 9), "seeded");
    }

    #[test]
    fn longctx_loaders_read_both_layouts() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("leval.jsonl");
        std::fs::write(&p, "{\"input\": \"doc\", \"instructions\": [\"q1\", \"q2\"], \"outputs\": [\"a1\", \"a2\"]}\n").unwrap();
        let t = load_tasks(&p).unwrap();
        assert_eq!((t.len(), t[1].answers[0].as_str()), (2, "a2"));
        let p = d.path().join("kv.jsonl");
        std::fs::write(&p, "{\"ordered_kv_records\": [[\"k1\", \"v1\"], [\"k2\", \"v2\"]], \"key\": \"k2\", \"value\": \"v2\"}\n").unwrap();
        let t = load_tasks(&p).unwrap();
        assert!(
            t[0].messages[0]["content"]
                .as_str()
                .unwrap()
                .contains("Key: \"k2\" Value: \"v2\"")
        );
        std::fs::write(&p, "{\"input\": \"doc\"}\n").unwrap();
        assert!(
            load_tasks(&p)
                .unwrap_err()
                .to_string()
                .contains("kv.jsonl:1")
        );
    }
}

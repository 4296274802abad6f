//! Evaluation as WebSailor reports it (WebSailor, arXiv 2507.02592): the benchmark
//! loaders with their published decryption, an LLM judge through any `ChatBackend` (the short
//! Correct/Incorrect judge for GAIA and xbench, the BrowseComp grader format for BrowseComp), or
//! normalised exact match offline, and the report: pass@1 averaged over rollouts, best pass@1,
//! pass@k, tool-call statistics and termination counts.
//!
//! Loaders (chosen by extension and header):
//! - `.csv` with a `prompt` column: xbench-DeepSearch. Fields are base64, XORed with the row's
//!   `canary` bytes repeated.
//! - `.csv` with a `problem` column: BrowseComp (OpenAI's blob). Fields are base64, XORed with
//!   SHA-256(canary) repeated.
//! - `.xlsx`: BrowseComp-ZH (`Topic`, `Question`, `Answer`, `canary`), the same SHA-256 scheme.
//! - `.json`: GAIA's text-only subset as web-agent papers use it (`task_id`, `Question`, `answer`).
//! - `.jsonl`: `{"question", "answer"}` rows (the WebDancer and SailorFog samples, our own sets).

use qforge_util::WithPath;
use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use base64::Engine as _;
use qforge_engine::ChatBackend;
use qforge_engine::chat::ChatRequest;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::Digest;

use super::html::{attribute, decode_entities};
use super::runner::{Question, TrajectoryRow, read_questions};
use crate::error::{AgentError, Result};

/// Base64 text XORed with `key` repeated, back to UTF-8 (both published schemes).
pub fn xor_decrypt(cipher: &str, key: &[u8]) -> std::result::Result<String, String> {
    if key.is_empty() {
        return Err("empty key".into());
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(cipher.trim())
        .map_err(|e| format!("not base64: {e}"))?;
    let plain: Vec<u8> = bytes
        .iter()
        .zip(key.iter().cycle())
        .map(|(b, k)| b ^ k)
        .collect();
    String::from_utf8(plain).map_err(|_| "wrong key: the text is not UTF-8".to_string())
}

/// The inverse of [`xor_decrypt`] (for fixtures and for users encrypting their own sets).
pub fn xor_encrypt(plain: &str, key: &[u8]) -> String {
    let bytes: Vec<u8> = plain
        .bytes()
        .zip(key.iter().cycle())
        .map(|(b, k)| b ^ k)
        .collect();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// BrowseComp's key: SHA-256 of the password (the row's canary).
pub fn sha256_key(password: &str) -> Vec<u8> {
    sha2::Sha256::digest(password.as_bytes()).to_vec()
}

fn data_error(path: &Path, line: usize, message: impl Into<String>) -> AgentError {
    qforge_util::RowError::new(path, line, message).into()
}

/// Rows of a CSV file as header-keyed maps (1-based data line numbers for errors).
fn csv_rows(path: &Path) -> Result<Vec<(usize, BTreeMap<String, String>)>> {
    let mut reader =
        csv::Reader::from_path(path).map_err(|e| data_error(path, 1, e.to_string()))?;
    let header: Vec<String> = reader
        .headers()
        .map_err(|e| data_error(path, 1, e.to_string()))?
        .iter()
        .map(String::from)
        .collect();
    reader
        .records()
        .enumerate()
        .map(|(i, r)| {
            let r = r.map_err(|e| data_error(path, i + 2, e.to_string()))?;
            Ok((
                i + 2,
                header
                    .iter()
                    .cloned()
                    .zip(r.iter().map(String::from))
                    .collect(),
            ))
        })
        .collect()
}

/// Decrypts `fields` of header-keyed rows with a key derived from each row's canary.
fn decrypt_rows(
    path: &Path,
    rows: Vec<(usize, BTreeMap<String, String>)>,
    id_field: Option<&str>,
    question_field: &str,
    answer_field: &str,
    key_of: impl Fn(&str) -> Vec<u8>,
) -> Result<Vec<Question>> {
    rows.into_iter()
        .map(|(line, row)| {
            let get = |f: &str| {
                row.get(f)
                    .ok_or_else(|| data_error(path, line, format!("no `{f}` column")))
            };
            let key = key_of(get("canary")?);
            let open = |f: &str| -> Result<String> {
                xor_decrypt(get(f)?, &key)
                    .map_err(|e| data_error(path, line, format!("`{f}`: {e}")))
            };
            Ok(Question {
                id: match id_field {
                    Some(f) => get(f)?.clone(),
                    None => (line - 1).to_string(),
                },
                question: open(question_field)?,
                answer: Some(open(answer_field)?),
            })
        })
        .collect()
}

/// The cells of an xlsx workbook's first sheet, row by row (shared, inline and plain strings;
/// numbers as written).
pub fn read_xlsx(path: &Path) -> Result<Vec<Vec<String>>> {
    let file = std::fs::File::open(path).with_path(path)?;
    let mut zip = zip::ZipArchive::new(file)
        .map_err(|e| data_error(path, 0, format!("not an xlsx (zip) file: {e}")))?;
    let mut read = |name: &str| -> Option<String> {
        let mut entry = zip.by_name(name).ok()?;
        let mut text = String::new();
        entry.read_to_string(&mut text).ok()?;
        Some(text)
    };
    let shared: Vec<String> = read("xl/sharedStrings.xml")
        .map(|xml| elements(&xml, "si").map(text_runs).collect())
        .unwrap_or_default();
    let sheet = read("xl/worksheets/sheet1.xml")
        .ok_or_else(|| data_error(path, 0, "the workbook has no xl/worksheets/sheet1.xml"))?;
    let mut rows = Vec::new();
    for row in elements(&sheet, "row") {
        let mut cells: Vec<String> = Vec::new();
        for (attrs, body) in elements_with_attrs(row, "c") {
            let column = attribute(attrs, "r").map_or(cells.len(), column_index);
            let value = match attribute(attrs, "t") {
                Some("s") => inner(body, "v")
                    .and_then(|v| v.trim().parse::<usize>().ok())
                    .and_then(|i| shared.get(i).cloned())
                    .unwrap_or_default(),
                Some("inlineStr") => text_runs(body),
                _ => inner(body, "v").map(decode_entities).unwrap_or_default(),
            };
            if cells.len() <= column {
                cells.resize(column + 1, String::new());
            }
            cells[column] = value;
        }
        rows.push(cells);
    }
    Ok(rows)
}

/// Zero-based column of a cell reference such as `AB12`.
fn column_index(reference: &str) -> usize {
    reference
        .chars()
        .take_while(char::is_ascii_alphabetic)
        .fold(0, |n, c| {
            n * 26 + (c.to_ascii_uppercase() as usize - 'A' as usize + 1)
        })
        .saturating_sub(1)
}

/// Bodies of `<tag ...>body</tag>` elements (self-closing ones give an empty body).
fn elements<'a>(xml: &'a str, tag: &'a str) -> impl Iterator<Item = &'a str> + 'a {
    elements_with_attrs(xml, tag).map(|(_, body)| body)
}

/// (attributes, body) of each `<tag ...>body</tag>` element.
fn elements_with_attrs<'a>(
    xml: &'a str,
    tag: &'a str,
) -> impl Iterator<Item = (&'a str, &'a str)> + 'a {
    let open = format!("<{tag}");
    let close = format!("</{tag}>");
    let mut rest = xml;
    std::iter::from_fn(move || {
        loop {
            let at = rest.find(&open)?;
            let after = &rest[at + open.len()..];
            // `<c` must not match `<col`: the name ends at whitespace, `>` or `/`.
            if !after.starts_with(|c: char| c.is_whitespace() || c == '>' || c == '/') {
                rest = after;
                continue;
            }
            let gt = after.find('>')?;
            let attrs = &after[..gt];
            if attrs.ends_with('/') {
                rest = &after[gt + 1..];
                return Some((attrs.trim_end_matches('/'), ""));
            }
            let body_start = &after[gt + 1..];
            let end = body_start.find(&close)?;
            rest = &body_start[end + close.len()..];
            return Some((attrs, &body_start[..end]));
        }
    })
}

fn inner<'a>(xml: &'a str, tag: &'a str) -> Option<&'a str> {
    elements(xml, tag).next()
}

/// The text of all `<t>` runs in an element, entities decoded.
fn text_runs(xml: &str) -> String {
    elements(xml, "t").map(decode_entities).collect()
}

/// Loads an evaluation set by its extension and header (see the module docs).
pub fn load_eval_set(path: &Path) -> Result<Vec<Question>> {
    let extension = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    let questions = match extension.as_str() {
        "csv" => {
            let rows = csv_rows(path)?;
            let has = |c: &str| rows.first().is_some_and(|(_, r)| r.contains_key(c));
            if has("prompt") {
                decrypt_rows(path, rows, Some("id"), "prompt", "answer", |c| {
                    c.as_bytes().to_vec()
                })?
            } else if has("problem") {
                decrypt_rows(path, rows, None, "problem", "answer", sha256_key)?
            } else {
                return Err(data_error(
                    path,
                    1,
                    "a CSV set needs xbench's `prompt` or BrowseComp's `problem` column",
                ));
            }
        }
        "xlsx" => {
            let mut rows = read_xlsx(path)?.into_iter();
            let header = rows.next().unwrap_or_default();
            let keyed = rows
                .enumerate()
                .filter(|(_, r)| r.iter().any(|c| !c.is_empty()))
                .map(|(i, r)| (i + 2, header.iter().cloned().zip(r).collect()))
                .collect();
            decrypt_rows(path, keyed, None, "Question", "Answer", sha256_key)?
        }
        "json" => {
            let text = std::fs::read_to_string(path).with_path(path)?;
            let items: Vec<Value> = serde_json::from_str(&text)
                .map_err(|e| data_error(path, e.line(), format!("not a JSON array: {e}")))?;
            items
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    let s = |f: &str| v[f].as_str().map(String::from);
                    Ok(Question {
                        id: s("task_id").unwrap_or_else(|| (i + 1).to_string()),
                        question: s("Question").or_else(|| s("question")).ok_or_else(|| {
                            data_error(path, 0, format!("item {}: no `Question`", i + 1))
                        })?,
                        answer: s("answer").or_else(|| s("Final answer")),
                    })
                })
                .collect::<Result<_>>()?
        }
        _ => read_questions(path)?,
    };
    if let Some(q) = questions
        .iter()
        .find(|q| q.answer.as_deref().is_none_or(str::is_empty))
    {
        return Err(AgentError::Invalid(format!(
            "{}: question {} has no reference answer",
            path.display(),
            q.id
        )));
    }
    Ok(questions)
}

/// Which judge prompt a set uses (as released: BrowseComp's grader for BrowseComp, the short
/// equivalence judge for GAIA, xbench and the rest).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum JudgeStyle {
    Short,
    BrowseComp,
}

impl JudgeStyle {
    pub fn for_set(path: &Path) -> Self {
        let name = path.to_string_lossy().to_ascii_lowercase();
        if name.contains("browsecomp") || name.ends_with(".xlsx") {
            JudgeStyle::BrowseComp
        } else {
            JudgeStyle::Short
        }
    }
}

/// The judge's prompt, in our words with the released structure.
pub fn judge_prompt(style: JudgeStyle, question: &str, gold: &str, response: &str) -> String {
    match style {
        JudgeStyle::Short => format!(
            "You check answers. Decide whether the predicted answer means the same as the \
             reference answer.\n\nQuestion: {question}\n\nReference answer: {gold}\n\n\
             Predicted answer: {response}\n\nIs the predicted answer equivalent to the reference \
             answer? Reply with \"Correct\" if it is and \"Incorrect\" if it is not, and nothing else."
        ),
        JudgeStyle::BrowseComp => format!(
            "Judge whether the [response] to the [question] is correct, using the precise and \
             unambiguous [correct_answer] below.\n\n[question]: {question}\n\n[response]: {response}\n\n\
             Answer in exactly this format:\n\nextracted_final_answer: the final answer taken from \
             the [response], or None if it gives none.\n\n[correct_answer]: {gold}\n\n\
             reasoning: why the extracted answer does or does not match [correct_answer]; judge only \
             the match, do not solve the question again.\n\ncorrect: yes if the extracted answer \
             matches [correct_answer] (within a small margin for numbers), no otherwise.\n\n\
             confidence: the confidence stated in the [response] (0-100), or 100 if none."
        ),
    }
}

/// The verdict in a judge's reply: `correct: yes|no` for BrowseComp; for the short judge the
/// reply's first word, `Correct` or `Incorrect` (any case, trailing punctuation allowed; the
/// released script needs the exact word). `None`: no verdict.
pub fn parse_verdict(style: JudgeStyle, reply: &str) -> Option<bool> {
    let lower = reply.to_ascii_lowercase();
    match style {
        JudgeStyle::BrowseComp => {
            let mut rest = lower.as_str();
            while let Some(at) = rest.find("correct") {
                let after = rest[at + "correct".len()..].trim_start();
                if let Some(value) = after.strip_prefix(':') {
                    let value = value.trim_start();
                    if value.starts_with("yes") {
                        return Some(true);
                    }
                    if value.starts_with("no") {
                        return Some(false);
                    }
                }
                rest = &rest[at + "correct".len()..];
            }
            None
        }
        JudgeStyle::Short => {
            let word: String = lower
                .trim_start_matches(|c: char| !c.is_alphanumeric())
                .chars()
                .take_while(|c| c.is_alphanumeric())
                .collect();
            match word.as_str() {
                "correct" => Some(true),
                "incorrect" => Some(false),
                _ => None,
            }
        }
    }
}

/// Lowercase alphanumeric words (CJK kept): the offline exact-match comparison.
pub fn normalize_answer(text: &str) -> String {
    text.to_lowercase()
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty() && !matches!(*w, "a" | "an" | "the"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// How answers are judged.
pub enum Judge {
    /// An LLM judge; each question is asked up to `tries` times until a verdict parses.
    Llm {
        backend: std::sync::Arc<dyn ChatBackend>,
        style: JudgeStyle,
        tries: usize,
    },
    /// Normalised exact match (offline; stricter than a judge).
    ExactMatch,
}

impl Judge {
    /// `Some(correct)`, or `None` when the judge gave no verdict. A run without an answer is
    /// wrong without asking.
    pub async fn judge(&self, question: &str, gold: &str, answer: Option<&str>) -> Option<bool> {
        let Some(answer) = answer.filter(|a| !a.trim().is_empty()) else {
            return Some(false);
        };
        match self {
            Judge::ExactMatch => Some(normalize_answer(answer) == normalize_answer(gold)),
            Judge::Llm {
                backend,
                style,
                tries,
            } => {
                let request = ChatRequest {
                    messages: vec![json!({"role": "user",
                        "content": judge_prompt(*style, question, gold, answer)})],
                    temperature: Some(0.0),
                    ..ChatRequest::default()
                };
                for _ in 0..(*tries).max(1) {
                    let Ok(reply) = backend.chat(request.clone()).await else {
                        continue;
                    };
                    let text = reply.text();
                    if let Some(v) = parse_verdict(*style, &text) {
                        return Some(v);
                    }
                }
                None
            }
        }
    }
}

/// One judged run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Judgement {
    pub id: String,
    pub rollout: usize,
    /// `None`: the judge gave no verdict (counted as wrong, and reported).
    pub correct: Option<bool>,
}

/// The evaluation report (percentages as fractions in 0..1).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BenchmarkReport {
    pub questions: usize,
    pub rollouts: usize,
    /// Mean over rollouts of each rollout's accuracy (WebSailor's "pass@1").
    pub pass_at_1: f64,
    pub best_pass_at_1: f64,
    /// A question counts when any of its rollouts is right.
    pub pass_at_k: f64,
    pub per_rollout: Vec<f64>,
    pub judge_failures: usize,
    pub avg_tool_calls: f64,
    pub avg_search_calls: f64,
    pub avg_visit_calls: f64,
    pub avg_llm_calls: f64,
    /// Runs with no `<answer>`.
    pub no_answer: usize,
    pub terminations: BTreeMap<String, usize>,
}

/// Judges every row not judged yet, `concurrency` at a time, appending each verdict to the
/// JSONL cache at `cache` as it comes (a rerun asks only about the rest); returns all verdicts
/// for `rows`. `on_done` hears each new one.
pub async fn judge_rows(
    judge: &Judge,
    questions: &[Question],
    rows: &[TrajectoryRow],
    cache: &Path,
    concurrency: usize,
    mut on_done: impl FnMut(&Judgement),
) -> Result<Vec<Judgement>> {
    use futures_util::StreamExt;
    use std::io::Write;
    let mut known: Vec<Judgement> = if cache.is_file() {
        crate::error::read_jsonl(cache)?
            .into_iter()
            .filter_map(|(_, v)| serde_json::from_value(v).ok())
            .collect()
    } else {
        Vec::new()
    };
    let todo: Vec<&TrajectoryRow> = rows
        .iter()
        .filter(|r| !known.iter().any(|j| j.id == r.id && j.rollout == r.rollout))
        .collect();
    let asks: Vec<_> = todo
        .into_iter()
        .map(|row| async move {
            let q = questions.iter().find(|q| q.id == row.id);
            let question = q.map_or(row.trajectory.question.as_str(), |q| q.question.as_str());
            let gold = q
                .and_then(|q| q.answer.as_deref())
                .or(row.gold.as_deref())
                .unwrap_or("");
            let correct = judge
                .judge(question, gold, row.trajectory.answer.as_deref())
                .await;
            Judgement {
                id: row.id.clone(),
                rollout: row.rollout,
                correct,
            }
        })
        .collect();
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(cache)
        .with_path(cache)?;
    let mut stream = futures_util::stream::iter(asks).buffer_unordered(concurrency.max(1));
    while let Some(j) = stream.next().await {
        let line = format!("{}\n", serde_json::to_string(&j).expect("serialisable"));
        file.write_all(line.as_bytes()).with_path(cache)?;
        on_done(&j);
        known.push(j);
    }
    file.sync_data().with_path(cache)?;
    Ok(known
        .into_iter()
        .filter(|j| rows.iter().any(|r| r.id == j.id && r.rollout == j.rollout))
        .collect())
}

/// Tool calls of a run by tool name (the first `<tool_call>` of each assistant turn).
pub fn tool_calls_by_name(row: &TrajectoryRow) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for m in &row.trajectory.messages {
        if m["role"] != "assistant" {
            continue;
        }
        let content = m["content"].as_str().unwrap_or("");
        if let Some(Ok(call)) = qforge_rl::tools::first_tool_call(content) {
            *counts.entry(call.name).or_insert(0) += 1;
        }
    }
    counts
}

/// The report over `rows` judged by `judgements` (matched by id and rollout), for `rollouts`
/// runs of each of `questions`.
pub fn report(
    questions: &[Question],
    rollouts: usize,
    rows: &[TrajectoryRow],
    judgements: &[Judgement],
) -> BenchmarkReport {
    let verdict = |id: &str, r: usize| {
        judgements
            .iter()
            .find(|j| j.id == id && j.rollout == r)
            .and_then(|j| j.correct)
            .unwrap_or(false)
    };
    let n = questions.len().max(1) as f64;
    let per_rollout: Vec<f64> = (0..rollouts)
        .map(|r| questions.iter().filter(|q| verdict(&q.id, r)).count() as f64 / n)
        .collect();
    let pass_at_k = questions
        .iter()
        .filter(|q| (0..rollouts).any(|r| verdict(&q.id, r)))
        .count() as f64
        / n;
    let runs = rows.len().max(1) as f64;
    let mut terminations = BTreeMap::new();
    let (mut tools, mut search, mut visit, mut llm, mut no_answer) = (0, 0, 0, 0, 0);
    for row in rows {
        let by_name = tool_calls_by_name(row);
        tools += row.trajectory.tool_calls;
        search += by_name.get("search").copied().unwrap_or(0);
        visit += by_name.get("visit").copied().unwrap_or(0);
        llm += row.trajectory.llm_calls;
        no_answer += usize::from(row.trajectory.answer.is_none());
        let label = serde_json::to_value(row.trajectory.termination)
            .ok()
            .and_then(|v| v.as_str().map(String::from))
            .unwrap_or_default();
        *terminations.entry(label).or_insert(0) += 1;
    }
    BenchmarkReport {
        questions: questions.len(),
        rollouts,
        pass_at_1: per_rollout.iter().sum::<f64>() / per_rollout.len().max(1) as f64,
        best_pass_at_1: per_rollout.iter().copied().fold(0.0, f64::max),
        pass_at_k,
        per_rollout,
        judge_failures: judgements.iter().filter(|j| j.correct.is_none()).count(),
        avg_tool_calls: tools as f64 / runs,
        avg_search_calls: search as f64 / runs,
        avg_visit_calls: visit as f64 / runs,
        avg_llm_calls: llm as f64 / runs,
        no_answer,
        terminations,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_published_schemes_round_trip() {
        let key = sha256_key("canary GUID 1234");
        assert_eq!(key.len(), 32);
        let text = "京都は794年から1868年まで首都だった — a long answer, longer than the key.";
        assert_eq!(xor_decrypt(&xor_encrypt(text, &key), &key).unwrap(), text);
        let canary = b"BENCHMARK DATA SHOULD NEVER APPEAR";
        assert_eq!(
            xor_decrypt(&xor_encrypt("答案", canary), canary).unwrap(),
            "答案"
        );
        assert!(
            xor_decrypt("!!!", canary)
                .unwrap_err()
                .contains("not base64")
        );
        // SHA-256 of "abc" (FIPS 180-2 test vector).
        assert_eq!(sha256_key("abc")[..4], [0xba, 0x78, 0x16, 0xbf]);
    }

    #[test]
    fn verdicts_parse_in_both_styles() {
        use JudgeStyle::*;
        assert_eq!(parse_verdict(Short, "Correct"), Some(true));
        assert_eq!(
            parse_verdict(Short, "**Incorrect.** The years differ."),
            Some(false)
        );
        assert_eq!(parse_verdict(Short, "I think so"), None);
        let bc = "extracted_final_answer: Kyoto\nreasoning: matches\ncorrect: yes\nconfidence: 90";
        assert_eq!(parse_verdict(BrowseComp, bc), Some(true));
        assert_eq!(parse_verdict(BrowseComp, "Correct: No"), Some(false));
        assert_eq!(parse_verdict(BrowseComp, "the answer is correct"), None);
    }

    #[test]
    fn exact_match_ignores_case_punctuation_and_articles() {
        assert_eq!(
            normalize_answer("The Kyoto, Japan."),
            normalize_answer("kyoto japan")
        );
        assert_ne!(normalize_answer("Kyoto"), normalize_answer("Nara"));
    }

    #[test]
    fn cell_references_name_columns() {
        assert_eq!(column_index("A1"), 0);
        assert_eq!(column_index("D7"), 3);
        assert_eq!(column_index("AB12"), 27);
        assert_eq!(attribute(r#"r="B2" s="1" t="s""#, "t"), Some("s"));
        assert_eq!(attribute(r#"r="B2""#, "t"), None);
    }
}

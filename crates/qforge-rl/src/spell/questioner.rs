//! Reading the questioner's output: the closing JSON record (`spell_dataset.get_record`) and the
//! per-task checks of `RaySPELLTrainer._parse_{docmath_qa,doc_mc,doc_general_qa}`.

use serde_json::{Map, Value};

use super::SpellTask;
use super::reward::{
    PyValue, docmath_normalize, parse_choice, parse_docmath_answer, parse_docqa_answer,
};

/// What the questioner's output became.
#[derive(Debug, Clone, PartialEq)]
pub enum QuestionerOutput {
    /// A usable question and the answer the responder is scored against.
    Question { question: String, answer: String },
    /// Not a JSON record, or a record missing or mistyping a field: a `bad_format` case.
    BadFormat(String),
    /// Well-formed but unusable (zero or unparsable number, over-long answer): dropped without
    /// penalty, as released.
    Invalid(String),
    /// The thinking never closed (the released "Empty"): dropped without penalty.
    Unfinished,
}

/// The text after the last `</think>` (the dataset's `extract_solution`): "Empty" when a think
/// block never closed.
pub fn after_think(response: &str) -> Option<&str> {
    if response.contains("<think>") && !response.contains("</think>") {
        return None;
    }
    Some(
        response
            .rsplit("</think>")
            .next()
            .unwrap_or(response)
            .trim(),
    )
}

/// `get_record`: the last ```` ```json ```` block that parses (a parsed non-object gives an
/// empty record), else the whole answer as JSON; control characters other than tab and
/// newlines removed first. `None` for an unfinished think block.
pub fn json_record(response: &str) -> Option<Map<String, Value>> {
    let text = after_think(response)?;
    let text: String = text
        .chars()
        .filter(|&c| c as u32 >= 32 || matches!(c, '\n' | '\r' | '\t'))
        .collect();
    let mut blocks = Vec::new();
    let mut rest = text.as_str();
    while let Some(at) = rest.find("```json") {
        let body = &rest[at + "```json".len()..];
        let Some(end) = body.find("```") else {
            break;
        };
        blocks.push(&body[..end]);
        rest = &body[end + 3..];
    }
    for block in blocks.iter().rev() {
        if let Ok(v) = serde_json::from_str::<Value>(block.trim()) {
            return Some(match v {
                Value::Object(m) => m,
                _ => Map::new(),
            });
        }
    }
    match serde_json::from_str::<Value>(&text) {
        Ok(Value::Object(m)) => Some(m),
        _ => Some(Map::new()),
    }
}

/// Python's `str()` of a JSON value as the released code formats it.
fn python_str(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Bool(b) => if *b { "True" } else { "False" }.into(),
        Value::Null => "None".into(),
        Value::Number(n) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => i.to_string(),
            (None, Some(f)) => super::reward::python_float_repr(f),
            _ => n.to_string(),
        },
        other => other.to_string(),
    }
}

/// The responder's multiple-choice question (LongBench-v2's format).
pub fn multiple_choice_question(question: &str, options: [&str; 4]) -> String {
    format!(
        "What is the correct answer to this question: {question}\nChoices:\n(A) {}\n(B) {}\n(C) {}\n(D) {}\n",
        options[0], options[1], options[2], options[3]
    )
}

/// Parses and checks a questioner's output for `task`. `answer_tokens` counts an answer's
/// tokens (general QA answers over `max_answer_tokens` are invalid).
pub fn parse_questioner_output(
    task: SpellTask,
    response: &str,
    answer_tokens: &dyn Fn(&str) -> usize,
    max_answer_tokens: usize,
) -> QuestionerOutput {
    let Some(record) = json_record(response) else {
        return QuestionerOutput::Unfinished;
    };
    let bad = |why: &str| QuestionerOutput::BadFormat(why.to_string());
    let Some(Value::String(question)) = record.get("question") else {
        return bad("no string `question`");
    };
    match task {
        SpellTask::DocmathQa => {
            let answer = match record.get("answer") {
                Some(v @ (Value::String(_) | Value::Number(_) | Value::Bool(_))) => v,
                _ => return bad("no string or number `answer`"),
            };
            let raw = python_str(answer);
            let gold = parse_docmath_answer(&raw)
                .filter(|s| !s.is_empty())
                .unwrap_or(raw);
            let value = docmath_normalize(&gold);
            // `int(x) == 999999999 or float(x) == 0.0` on the normalised value; a string or
            // tuple fails `int()` and is invalid too.
            let usable = match value {
                PyValue::Int(i) => i != 0 && i != super::reward::UNPARSABLE,
                PyValue::Float(f) => {
                    f.is_finite() && f != 0.0 && f.trunc() as i128 != super::reward::UNPARSABLE
                }
                PyValue::Bool(b) => b,
                PyValue::Other => false,
            };
            if !usable {
                return QuestionerOutput::Invalid(format!(
                    "answer `{gold}` is not a non-zero number"
                ));
            }
            QuestionerOutput::Question {
                question: question.clone(),
                answer: value.python_str(),
            }
        }
        SpellTask::DocMc => {
            let Some(Value::String(answer)) = record.get("answer") else {
                return bad("no string `answer`");
            };
            let Some(Value::Object(options)) = record.get("options") else {
                return bad("no `options` object");
            };
            let mut texts = [String::new(), String::new(), String::new(), String::new()];
            for (slot, key) in texts.iter_mut().zip(["A", "B", "C", "D"]) {
                let Some(v) = options.get(key) else {
                    return bad("options lack one of A-D");
                };
                *slot = python_str(v);
            }
            let gold = parse_choice(answer)
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| answer.clone());
            if !matches!(gold.as_str(), "A" | "B" | "C" | "D") {
                return bad("answer is not one of A-D");
            }
            QuestionerOutput::Question {
                question: multiple_choice_question(
                    question,
                    [&texts[0], &texts[1], &texts[2], &texts[3]],
                ),
                answer: gold,
            }
        }
        SpellTask::DocGeneralQa => {
            let Some(Value::String(answer)) = record.get("answer") else {
                return bad("no string `answer`");
            };
            if answer.is_empty() {
                return bad("empty `answer`");
            }
            let gold = parse_docqa_answer(answer)
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| answer.clone());
            if answer_tokens(&gold) > max_answer_tokens {
                return QuestionerOutput::Invalid(format!(
                    "answer over {max_answer_tokens} tokens"
                ));
            }
            QuestionerOutput::Question {
                question: question.clone(),
                answer: gold,
            }
        }
    }
}
